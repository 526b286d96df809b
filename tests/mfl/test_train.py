"""fuse-train end to end: artifacts, no leakage into LightGCN, CF reuse, resume after SIGKILL."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest

from mufasa_cli import artifacts
from tests.conftest import folder_digest, invoke, write

FAST = ("--epochs", "3", "--cf-epochs", "5")


@pytest.fixture(scope="module")
def fused(tmp_path_factory):
    run = tmp_path_factory.mktemp("fuse") / "run"
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--out", run).exit_code == 0
    result = invoke("fuse-train", run, *FAST)
    assert result.exit_code == 0, result.output
    return run, result


def test_fuse_train_writes_z_for_every_item_and_a_manifest(fused):
    run, result = fused
    manifest = artifacts.verify_stage(run / "fuse")
    items = pl.read_parquet(run / "data/items.parquet")
    z = artifacts.load_tensors(run / "fuse/fused.safetensors", {"z": ("float32", (items.height, 64))})["z"]
    assert np.isfinite(z).all()
    cf = artifacts.load_tensors(
        run / "fuse/cf.safetensors", {"item_cf": ("float32", (items.height, 64)), "has_cf": ("bool", (items.height,))}
    )
    cold = items["is_cold"].to_numpy()
    assert (cf["has_cf"] == ~cold).all() and not cf["item_cf"][cold].any()
    assert np.abs(z[cold]).sum() > 0  # cold items get a fused vector from their content
    assert manifest["inputs"]["data"]["manifest_sha256"] == artifacts.sha256_file(run / "data/manifest.json")
    assert manifest["config"]["mfl"]["loss_weights"] == [0.5, 0.25, 0.15, 0.1]
    diag = manifest["diagnostics"]
    assert {"title_retrieval", "cos_z_c", "uniformity", "alignment", "effective_rank", "cross_genre_topic_P@10"} <= set(
        diag
    )
    for text in (
        "LightGCN",
        "valid HR@10",
        "L_title (eq. 1)",
        "L_fus-cl (eq. 4)",
        "title retrieval",
        "effective rank",
        "Cross-genre",
    ):
        assert text in result.stdout
    assert not (run / ".fuse.ckpt").exists()  # checkpoints go once the stage succeeded
    start, end = manifest["mfl"]["losses_start"], manifest["mfl"]["losses_end"]
    assert end["total"] < start["total"]


def test_refit_reuses_cf_and_without_switches_losses_off(fused, tmp_path):
    run, _ = fused
    result = invoke("fuse-train", run, *FAST, "--force", "--without", "cons", "--without", "fuscl")
    assert result.exit_code == 0, result.output
    m = artifacts.read_manifest(run / "fuse")
    assert "reused_from" in m["cf"]
    assert m["mfl"]["weights"]["cons"] == 0 and m["mfl"]["weights"]["fuscl"] == 0
    assert "cons" not in m["mfl"]["losses_end"]


def test_no_valid_test_or_zero_shot_interaction_reaches_lightgcn(tmp_path):
    """Item 'T' occurs only as one user's test target: LightGCN must never see it."""
    rows = ["user,item,ts"]
    for u in range(12):
        seq = [f"i{(u + k) % 6}" for k in range(5)] + (["T"] if u == 0 else [f"i{u % 6}"])
        rows += [f"u{u},{it},{k}" for k, it in enumerate(seq)]
    write(tmp_path / "c/inter.csv", "\n".join(rows) + "\n")
    write(
        tmp_path / "c/items.csv",
        "item,title\n" + "".join(f"{i},item {i} title words\n" for i in ["T"] + [f"i{k}" for k in range(6)]),
    )
    write(
        tmp_path / "c/schema.yaml",
        "interactions: {path: inter.csv, user: user, item: item, timestamp: ts}\nitems: {path: items.csv, item: item, title: title}\n",
    )
    run = tmp_path / "run"
    r = invoke(
        "prepare",
        "custom",
        "--source",
        tmp_path / "c",
        "--out",
        run,
        "--zero-shot-users",
        "0",
        "--text-encoder",
        "minilm",
    )
    assert r.exit_code == 0, r.output
    assert invoke("fuse-train", run, *FAST).exit_code == 0
    items = pl.read_parquet(run / "data/items.parquet")
    has_cf = artifacts.load_tensors(run / "fuse/cf.safetensors", {})["has_cf"]
    t = items.filter(pl.col("raw_id") == "T")["item"][0]
    assert not has_cf[t]
    # the planted item still gets a fused vector through its title
    z = artifacts.load_tensors(run / "fuse/fused.safetensors", {})["z"]
    assert np.abs(z[t]).sum() > 0


def test_zero_shot_users_never_reach_lightgcn(tmp_path):
    run = tmp_path / "run"
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--out", run).exit_code == 0
    from mufasa_cli.mfl.train import load_data

    data = load_data(run)
    users = pl.read_parquet(run / "data/users.parquet")
    zero_shot = set(users.filter(pl.col("role") == "zero_shot")["user"].to_list())
    assert zero_shot and not zero_shot & set(data.train_users.tolist())
    inter = pl.read_parquet(run / "data/interactions.parquet")
    assert len(data.train_users) == inter.filter(pl.col("split") == "train").height


def test_bad_input_leaves_the_old_fuse_untouched(fused, tmp_path):
    run, _ = fused
    before = folder_digest(run / "fuse")
    result = invoke("fuse-train", run, "--force", "--loss-weights", "1,2")
    assert result.exit_code == 2 and "need four weights" in result.stderr
    result = invoke("fuse-train", run, "--force", "--loss-weights", "a,b,c,d")
    assert result.exit_code == 2 and "--loss-weights 'a,b,c,d'" in result.stderr
    result = invoke("fuse-train", tmp_path / "nothing")
    assert result.exit_code == 2 and "manifest.json: missing" in result.stderr
    result = invoke("fuse-train", run)
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert folder_digest(run / "fuse") == before


def test_corrupt_data_is_refused(tmp_path):
    run = tmp_path / "run"
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--out", run).exit_code == 0
    with open(run / "data/features.safetensors", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    result = invoke("fuse-train", run, *FAST)
    assert result.exit_code == 2 and "features.safetensors: sha256 mismatch" in result.stderr


def _fuse_cmd(run, *extra):
    return [
        sys.executable,
        "-m",
        "mufasa_cli",
        "fuse-train",
        str(run),
        "--epochs",
        "40",
        "--cf-epochs",
        "10",
        "--batch-size",
        "32",
        *extra,
    ]


def test_sigkill_mid_training_then_resume_matches_an_uninterrupted_run(tmp_path):
    runs = {}
    for name in ("ref", "killed"):
        runs[name] = tmp_path / name
        assert invoke("prepare", "synthetic", "--preset", "tiny", "--out", runs[name]).exit_code == 0
    env = {**os.environ, "MUFASA_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run(_fuse_cmd(runs["ref"]), check=True, capture_output=True, env=env)

    proc = subprocess.Popen(_fuse_cmd(runs["killed"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpt = runs["killed"] / ".fuse.ckpt" / "mfl.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # into a later epoch
    if proc.poll() is not None:
        pytest.fail("training finished before it could be killed; make the run longer")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (runs["killed"] / "fuse").exists() and ckpt.exists()

    done = subprocess.run(_fuse_cmd(runs["killed"], "--resume"), capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    z_ref = artifacts.load_tensors(runs["ref"] / "fuse/fused.safetensors", {})["z"]
    z_res = artifacts.load_tensors(runs["killed"] / "fuse/fused.safetensors", {})["z"]
    # the same trajectory up to the summation order of threaded kernels (differences of 2e-6 seen)
    np.testing.assert_allclose(z_res, z_ref, rtol=1e-4, atol=1e-4)
    m_ref, m_res = (artifacts.read_manifest(r / "fuse") for r in runs.values())
    assert m_res["mfl"]["losses_end"] == pytest.approx(m_ref["mfl"]["losses_end"], rel=1e-4)
