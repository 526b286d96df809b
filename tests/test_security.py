"""A run folder or a dataset received from someone else must not run code, nor make mufasa read
(or print) files outside it."""

import os
import shutil

import pytest
import torch

from mufasa_cli.runtime.loop import CheckpointMismatch, load_checkpoint
from tests.conftest import folder_digest, invoke, write


class _Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _checkpoint_with_payload(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: None for k in ("epoch", "model", "optimizer", "scheduler", "best_metric", "best_epoch")}
    torch.save({**state, "fingerprint": _Payload(marker), "bad_evals": 0, "best_state": None, "history": []}, path)


def test_loading_a_checkpoint_with_a_pickle_payload_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    _checkpoint_with_payload(tmp_path / "model.pt", marker)
    with pytest.raises(CheckpointMismatch, match=r"model\.pt: not a readable mufasa checkpoint.*nothing in it was run"):
        load_checkpoint(tmp_path / "model.pt")
    assert not marker.exists()
    # the same payload unpickled the unsafe way does run: the test's payload is real
    torch.load(tmp_path / "model.pt", weights_only=False)
    assert marker.exists()


def test_resume_from_a_planted_checkpoint_is_refused_without_running_it(fused_tiny, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fused_tiny, run)
    marker = tmp_path / "ran"
    ckpt = run / ".align.ckpt" / "sal.pt"
    _checkpoint_with_payload(ckpt, marker)
    before = folder_digest(run)
    result = invoke("align-train", run, "--resume", "--epochs", "1")
    assert result.exit_code == 2, result.output
    assert not marker.exists()
    assert f"{ckpt}: not a readable mufasa checkpoint" in result.stderr and "Traceback" not in result.output
    assert folder_digest(run) == before
    ckpt.write_bytes(b"\x80\x04 truncated garbage")  # a corrupt checkpoint is named the same way
    result = invoke("align-train", run, "--resume", "--epochs", "1")
    assert result.exit_code == 2 and f"{ckpt}: not a readable mufasa checkpoint" in result.stderr


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_schema_paths_stay_inside_the_schema_folder_and_nothing_is_echoed(tmp_path, how):
    secret = write(tmp_path / "secret.csv", "SECRET-LINE,user,item\nTOKEN,1,2\n")
    src = tmp_path / "dataset"
    rel = {"dotdot": "../secret.csv", "absolute": str(secret), "symlink": "inter.csv"}[how]
    if how == "symlink":
        src.mkdir()
        (src / "inter.csv").symlink_to(secret)
    write(src / "schema.yaml", f"interactions: {{path: '{rel}', user: user, item: item}}\n")
    result = invoke("prepare", "custom", "--source", src, "--out", tmp_path / "r")
    assert result.exit_code == 2, result.output
    assert "points outside the schema's folder" in result.stderr and "interactions.path" in result.stderr
    assert "SECRET" not in result.output and "TOKEN" not in result.output
    assert not (tmp_path / "r").exists()


def test_features_paths_are_confined_too(tmp_path):
    write(tmp_path / "dataset" / "inter.csv", "user,item\nu1,i1\nu1,i2\nu1,i3\n")
    write(
        tmp_path / "dataset" / "schema.yaml",
        "interactions: {path: inter.csv, user: user, item: item}\nfeatures: {image: ../x.npz}\n",
    )
    result = invoke("prepare", "custom", "--source", tmp_path / "dataset", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "features.image '../x.npz' points outside" in result.stderr
