"""align-train and embed end to end on tiny synthetic (objective `last`)."""

import numpy as np
import polars as pl
import pytest

from mufasa_cli import artifacts
from tests.conftest import invoke


@pytest.fixture(scope="module")
def aligned(tmp_path_factory):
    run = tmp_path_factory.mktemp("align") / "run"
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--out", run).exit_code == 0
    assert invoke("fuse-train", run, "--epochs", "2", "--cf-epochs", "5").exit_code == 0
    result = invoke("align-train", run, "--epochs", "3")
    assert result.exit_code == 0, result.output
    return run, result


def test_align_train_writes_weights_and_validation_metrics(aligned):
    run, result = aligned
    m = artifacts.verify_stage(run / "align")
    assert 0.0 <= m["valid"]["NDCG@10"] <= m["valid"]["HR@10"] <= 1.0
    assert m["inputs"]["fuse"]["manifest_sha256"] == artifacts.sha256_file(run / "fuse/manifest.json")
    assert "valid HR@10" in result.stdout and not (run / ".align.ckpt").exists()


def test_embed_covers_train_and_zero_shot_users_and_every_item(aligned):
    run, _ = aligned
    result = invoke("embed", run)
    assert result.exit_code == 0, result.output
    users = pl.read_parquet(run / "data/users.parquet")
    items = pl.read_parquet(run / "data/items.parquet")
    u = artifacts.load_tensors(
        run / "embed/users.safetensors", {"user": ("int64", ("U",)), "emb": ("float32", ("U", 64))}
    )
    e = artifacts.load_tensors(run / "embed/items.safetensors", {"emb": ("float32", (items.height, 64))})
    assert sorted(u["user"].tolist()) == users["user"].to_list()
    assert np.isfinite(u["emb"]).all() and np.isfinite(e["emb"]).all()
    m = artifacts.read_manifest(run / "embed")
    assert m["counts"]["zero_shot_users"] == (users["role"] == "zero_shot").sum()


@pytest.mark.parametrize("flags", [("--attention", "full"), ("--attention", "mean"), ("--without", "selective")])
def test_variants_train(aligned, flags, tmp_path):
    run, _ = aligned
    result = invoke("align-train", run, "--epochs", "1", "--force", *flags)
    assert result.exit_code == 0, result.output
    assert artifacts.read_manifest(run / "align")["config"]["sal"]["attention"] == (
        flags[1] if flags[0] == "--attention" else "sparse"
    )


def test_stale_fuse_is_refused(tmp_path):
    run = tmp_path / "run"
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--out", run).exit_code == 0
    assert invoke("fuse-train", run, "--epochs", "1", "--cf-epochs", "5").exit_code == 0
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--seed", "3", "--out", run, "--force").exit_code == 0
    result = invoke("align-train", run, "--epochs", "1")
    assert result.exit_code == 2 and "fuse is stale" in result.stderr


def test_bad_flags(aligned):
    run, _ = aligned
    result = invoke("align-train", run, "--force", "--attention", "dense")
    assert result.exit_code == 2 and "--attention 'dense'" in result.stderr
    result = invoke("embed", run / "nope")
    assert result.exit_code == 2 and "manifest.json: missing" in result.stderr
