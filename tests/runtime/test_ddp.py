"""fuse-train and align-train under torchrun: 2 CPU processes with gloo on tiny synthetic."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mufasa_cli import artifacts
from mufasa_cli.runtime import dist

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")


def torchrun(*args) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*cmd, "-m", "mufasa_cli", *map(str, args)], capture_output=True, text=True, env=env)


def test_two_processes_train_both_stages_and_only_rank_0_writes_and_prints(tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(tiny_run / "data", run / "data", target_is_directory=True)
    fused = torchrun("fuse-train", run, "--epochs", "3", "--cf-epochs", "5")
    assert fused.returncode == 0, fused.stderr[-2000:]
    aligned = torchrun("align-train", run, "--epochs", "4", "--batch-size", "8")
    assert aligned.returncode == 0, aligned.stderr[-2000:]
    assert aligned.stdout.count("wrote") == 1  # one rank printed
    for stage in ("fuse", "align"):
        manifest = artifacts.verify_stage(run / stage)
        assert manifest["world_size"] == 2
        assert not (run / f".{stage}.ckpt").exists()
    mfl = json.loads((run / "fuse/manifest.json").read_text())["history"]["mfl"]
    assert mfl[-1]["total"] < mfl[0]["total"]  # the loss falls
    sal = artifacts.read_manifest(run / "align")["history"]
    assert min(row["softmax"] for row in sal[1:]) < sal[0]["softmax"]
    assert torchrun("embed", run).returncode == 0 and artifacts.verify_stage(run / "embed")


def test_shard_splits_the_epoch_and_pads_the_last_round(monkeypatch):
    monkeypatch.setattr(dist, "world", lambda: 3)
    got = {}
    for r in range(3):
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        got[r] = list(dist.shard(iter(range(7))))
    assert got == {0: [0, 3, 6], 1: [1, 4, 0], 2: [2, 5, 1]}
    monkeypatch.setattr(dist, "rank", lambda: 1)
    assert list(dist.shard(iter([9]))) == [9]  # fewer batches than ranks: everyone trains on what there is
    assert list(dist.shard(iter([]))) == []


def test_without_torchrun_everything_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert not dist.launched() and dist.world() == 1 and dist.is_main()
    assert dist.setup(torch.device("cpu")) == torch.device("cpu")
    assert list(dist.shard(iter([1, 2]))) == [1, 2]
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.tensor([1.0, 2.0])
    dist.average_gradients([p])
    assert p.grad.tolist() == [1.0, 2.0]
