"""Faults a careful user meets: non-finite flags, a second writer on one run folder, commands
that must train the way the run was trained, leftovers of a killed stage, malformed manifests,
interrupted and resumed trainings, SIGTERM."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from mufasa_cli import artifacts
from tests.conftest import folder_digest, invoke, write

RECIPE = """\
fuse:
  mfl: {train: {epochs: 1}}
  cf: {train: {epochs: 2}}
align:
  sal: {objective: last}
  train: {epochs: 2, eval_every: 1}
baselines:
  dssm: {train: {epochs: 2, lr: 3e-3}}
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run trained through embed with a recipe (recorded in RUN/recipe.yaml)."""
    root = tmp_path_factory.mktemp("reliability")
    recipe = write(root / "r.yaml", RECIPE)
    run = root / "run"
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--out", run).exit_code == 0
    assert invoke("fuse-train", run, "--recipe", recipe).exit_code == 0
    result = invoke("align-train", run, "--recipe", recipe, "--lr", "0.002")
    assert result.exit_code == 0, result.output
    assert invoke("embed", run).exit_code == 0
    return run, recipe


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst, symlinks=True)
    return dst


def _one_line_error(result, code=2):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error:") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
@pytest.mark.parametrize("stage", ["fuse-train", "align-train"])
def test_non_finite_flags_are_refused_up_front(trained, stage, value):
    run, _ = trained
    before = folder_digest(run)
    err = _one_line_error(invoke(stage, run, "--lr", value, "--force"))
    assert "lr must be a finite number" in err or "lr must be > 0" in err
    assert folder_digest(run) == before


def test_a_diverging_run_saves_no_non_finite_checkpoint(trained, tmp_path):
    run = _copy(trained[0], tmp_path)
    err = _one_line_error(invoke("align-train", run, "--lr", "1e30", "--epochs", "3", "--force"))
    assert "sal: " in err and ("NaN/inf" in err or "is nan" in err or "is inf" in err or "overflows" in err)
    ckpt = run / ".align.ckpt" / "sal.pt"
    if ckpt.exists():  # whatever was saved holds finite weights only
        import torch

        state = torch.load(ckpt, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
        assert "--resume with a lower learning rate" in err


def test_one_writer_per_run_folder(trained):
    run, recipe = trained
    before = folder_digest(run)
    with artifacts.run_lock(run, "align-train"):
        for args in (
            ("align-train", run, "--force"),
            ("prepare", "synthetic", "--preset", "tiny", "--out", run, "--force"),
            ("eval", run, "--compare", "", "--force"),
            ("embed", run, "--force"),
        ):
            err = _one_line_error(invoke(*args))
            assert f"{run}: in use by pid {os.getpid()} (mufasa align-train)" in err
        assert invoke("embed", run, "--explain", "0").exit_code == 0  # reading needs no lock
    assert folder_digest(run) == before
    assert (run / ".lock").read_text() == ""  # released: nobody holds it


def test_eval_trains_baselines_with_the_recipe_the_run_recorded(trained, tmp_path):
    run = _copy(trained[0], tmp_path)
    recorded = (run / "recipe.yaml").read_text()
    assert "written by mufasa align-train" in recorded or "mufasa align-train" in recorded
    from mufasa_cli.config import load_recipe

    rec = load_recipe(str(run / "recipe.yaml"))
    assert rec.align.train.lr == 0.002 and rec.align.train.epochs == 2  # the flag, and the recipe's value
    assert rec.baselines.dssm.train.lr == 0.003  # 3e-3 in the recipe: read as a float
    result = invoke("eval", run, "--compare", "dssm")  # no --recipe
    assert result.exit_code == 0, result.output
    assert "using the recipe" in result.stderr
    manifest = json.loads((run / "baselines" / "dssm" / "manifest.json").read_text())
    assert manifest["config"]["train"]["epochs"] == 2 and manifest["epochs_run"] <= 2
    # the cached baseline fits the recorded recipe: not retrained by a later eval
    again = invoke("eval", run, "--compare", "dssm", "--force")
    assert again.exit_code == 0 and "trained dssm" not in again.output
    # --recipe that differs from the record: used, with a notice
    other = write(tmp_path / "other.yaml", "baselines: {dssm: {train: {epochs: 1}}}\n")
    third = invoke("eval", run, "--compare", "dssm", "--force", "--recipe", other)
    assert third.exit_code == 0 and "replaces the baselines settings" in third.stderr


def test_leftovers_of_a_killed_stage_are_cleaned_by_its_next_run(trained, tmp_path):
    run = _copy(trained[0], tmp_path)
    (run / ".embed.tmp-killed").mkdir()
    (run / ".embed.old-killed").mkdir()
    (run / ".embed.tmp-killed" / "users.safetensors").write_bytes(b"half")
    assert invoke("embed", run, "--force").exit_code == 0
    assert not list(run.glob(".embed.*"))


def test_a_kill_between_the_final_renames_puts_the_previous_version_back(trained, tmp_path):
    run = _copy(trained[0], tmp_path)
    before = folder_digest(run / "embed")
    os.rename(run / "embed", run / ".embed.old-killed")
    (run / ".embed.tmp-killed").mkdir()
    removed = artifacts.clean_leftovers(run / "embed")
    assert [p.name for p in removed] == [".embed.tmp-killed"]
    assert folder_digest(run / "embed") == before


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2]", "not a manifest (a JSON object expected, got list)"),
        ('{"format_version": 1, "outputs": {"x.parquet": {"bytes": 3}}}', "output 'x.parquet' has no sha256"),
        ('{"format_version": 1, "outputs": [1]}', "'outputs' must be a JSON object"),
    ],
)
def test_a_manifest_of_the_wrong_shape_is_named(trained, tmp_path, content, message):
    run = _copy(trained[0], tmp_path)
    (run / "data" / "manifest.json").write_text(content)
    err = _one_line_error(invoke("fuse-train", run, "--force"))
    assert f"{run / 'data' / 'manifest.json'}: {message}" in err


def test_embed_users_with_no_known_item(trained, tmp_path):
    import polars as pl

    run = _copy(trained[0], tmp_path)
    users = tmp_path / "users.parquet"
    pl.DataFrame({"user": ["a", "a"], "item": ["nope", "never"]}).write_parquet(users)
    err = _one_line_error(invoke("embed", run, "--users", users, "--force"))
    assert f"{users}: no row names an item of this run" in err and "'nope'" in err


def test_an_interrupted_training_is_resumed_with_a_notice_and_discarding_it_is_said(trained, tmp_path, monkeypatch):
    from mufasa_cli.runtime import loop

    run = _copy(trained[0], tmp_path)
    saves = {"n": 0}
    real_save = loop._save

    def save_then_interrupt(path, state):
        real_save(path, state)
        saves["n"] += 1
        if saves["n"] == 1:
            raise KeyboardInterrupt  # Ctrl-C right after LightGCN's first checkpoint

    monkeypatch.setattr(loop, "_save", save_then_interrupt)
    result = invoke("fuse-train", run, "--cf-epochs", "3", "--epochs", "1", "--retrain-cf", "--force")
    assert result.exit_code == 130 and "interrupted" in result.stderr
    monkeypatch.setattr(loop, "_save", real_save)
    resumed = invoke("fuse-train", run, "--cf-epochs", "3", "--epochs", "1", "--retrain-cf", "--force", "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "LightGCN resumed from its checkpoint after epoch 1" in resumed.stderr
    (run / ".fuse.ckpt").mkdir()
    (run / ".fuse.ckpt" / "mfl.pt").write_bytes(b"x")
    fresh = invoke("fuse-train", run, "--epochs", "1", "--cf-epochs", "2", "--force")
    assert fresh.exit_code == 0 and "starting over: the checkpoint of an interrupted run" in fresh.stderr


def test_sigterm_stops_a_stage_like_ctrl_c(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "mufasa_cli", "prepare", "synthetic", "--preset", "large", "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not ((run / ".lock").is_file() and (run / ".lock").read_text()):
        time.sleep(0.05)  # the lock holds the pid once the stage has started
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err, err
    left = sorted(p.name for p in run.iterdir()) if run.exists() else []
    assert "data" not in left and not [n for n in left if n.startswith(".data.")], (left, err)


@pytest.mark.parametrize("command", ["fuse-train", "align-train", "eval", "ablate"])
def test_a_negative_seed_is_refused(trained, command):
    run, _ = trained
    assert "--seed -1: must be >= 0" in _one_line_error(invoke(command, run, "--seed", "-1"))


def test_resume_at_a_lower_learning_rate_is_allowed_and_recorded(trained, tmp_path, monkeypatch):
    from mufasa_cli.runtime import loop

    run, recipe = trained
    run = _copy(run, tmp_path)
    real_save = loop._save

    def save_then_interrupt(path, state):
        real_save(path, state)
        raise KeyboardInterrupt  # after the first epoch's checkpoint

    monkeypatch.setattr(loop, "_save", save_then_interrupt)
    args = ("align-train", run, "--recipe", recipe, "--force")
    assert invoke(*args, "--lr", "0.002").exit_code == 130
    monkeypatch.setattr(loop, "_save", real_save)
    other = invoke(*args, "--resume", "--lr", "0.001", "--epochs", "3")  # another schedule: refused
    assert "only the learning rate may change on --resume" in _one_line_error(other)
    resumed = invoke(*args, "--resume", "--lr", "0.001")
    assert resumed.exit_code == 0, resumed.output
    assert "SAL resumed from its checkpoint after epoch 1, learning rate 0.002 -> 0.001" in resumed.stderr
    manifest = json.loads((run / "align" / "manifest.json").read_text())
    assert manifest["lr_override"] == {"from": 0.002, "to": 0.001, "after_epoch": 1}
    assert manifest["config"]["train"]["lr"] == 0.001


def test_eval_without_embeddings_trains_no_baseline(fused_tiny, tmp_path):
    run = _copy(fused_tiny, tmp_path)
    err = _one_line_error(invoke("eval", run, "--compare", "sasrec"))
    assert f"{run / 'embed' / 'manifest.json'}: missing" in err
    assert not (run / "baselines").exists()


def test_progress_without_a_terminal_is_one_line_per_epoch(trained, tmp_path):
    run = _copy(trained[0], tmp_path)
    # objective last on tiny: one step an epoch; CliRunner: stderr is no terminal
    result = invoke("align-train", run, "--recipe", trained[1], "--epochs", "3", "--force")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("sal epoch")]
    assert [line.split(":")[0].split(" softmax")[0] for line in lines] == [
        "sal epoch 1/3",
        "sal epoch 2/3",
        "sal epoch 3/3",
    ]
    assert all("elapsed, about" in line and "left" in line for line in lines)


def test_fuse_train_flags_an_epoch_cap_reached_while_improving(trained, tmp_path):
    run = _copy(trained[0], tmp_path)
    result = invoke("fuse-train", run, "--epochs", "1", "--cf-epochs", "2", "--force")
    assert result.exit_code == 0, result.output
    assert "the MFL reached its epoch cap (1) while validation still improved" in result.stderr


def test_ablate_defaults_to_loo_without_zero_shot_users_and_takes_comma_lists(tmp_path):
    src = tmp_path / "c"
    inter = "user,item\n" + "".join(f"u{u},i{(u * 3 + i) % 12}\n" for u in range(20) for i in range(6))
    write(src / "inter.csv", inter)
    write(src / "schema.yaml", "interactions: {path: inter.csv, user: user, item: item}\nfeatures: {f: f.npy}\n")
    import numpy as np

    np.save(src / "f.npy", np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32))
    np.save(src / "f.ids.npy", np.array([f"i{i}" for i in range(12)]))
    run = tmp_path / "run"
    assert invoke("prepare", "custom", "--source", src, "--out", run, "--text-encoder", "none").exit_code == 0
    assert invoke("fuse-train", run, "--epochs", "1", "--cf-epochs", "2").exit_code == 0
    assert invoke("align-train", run, "--epochs", "1").exit_code == 0
    assert invoke("embed", run).exit_code == 0
    zero = invoke("eval", run, "--protocol", "zero-shot", "--compare", "")
    assert "the run has no zero-shot users (prepare --zero-shot-users N); use --protocol loo" in _one_line_error(zero)
    result = invoke("ablate", run, "--without", "window,block", "--format", "csv")
    assert result.exit_code == 0, result.output
    assert (run / "ablate" / "tables-loo.json").is_file() and (run / "ablate" / "w-o-block").is_dir()
    assert "w/o window attention" in result.stdout and "w/o block attention" in result.stdout


def test_set_reaches_a_setting_without_a_flag_and_is_recorded(trained, tmp_path):
    run = _copy(trained[0], tmp_path)
    # in_batch_negatives has no flag of its own: --set reaches it all the same
    args = ("--set", "align.sal.block_size=4", "--set", "align.in_batch_negatives=64")
    result = invoke("align-train", run, "--epochs", "1", *args, "--force")
    assert result.exit_code == 0, result.output
    manifest = json.loads((run / "align" / "manifest.json").read_text())
    assert manifest["config"]["sal"]["block_size"] == 4 and manifest["config"]["in_batch_negatives"] == 64
    from mufasa_cli.config import load_recipe

    assert load_recipe(str(run / "recipe.yaml")).align.sal.block_size == 4
    err = _one_line_error(invoke("align-train", run, "--set", "align.sal.blok=4", "--force"))
    assert "unknown key 'blok'" in err
