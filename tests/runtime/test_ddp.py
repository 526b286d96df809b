"""fuse-train and align-train under torchrun: 2 CPU processes with gloo on tiny synthetic."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from mufasa_cli import artifacts
from mufasa_cli.runtime import dist

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch without distributed")


def _command(*args) -> tuple[list[str], dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return [*cmd, "-m", "mufasa_cli", *map(str, args)], {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args) -> subprocess.CompletedProcess:
    cmd, env = _command(*args)
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def _fused_copy(tiny_run, run):
    run.mkdir()
    os.symlink(tiny_run / "data", run / "data", target_is_directory=True)
    fused = torchrun("fuse-train", run, "--epochs", "3", "--cf-epochs", "5")
    assert fused.returncode == 0, fused.stderr[-2000:]
    return run


def test_two_processes_train_both_stages_and_only_rank_0_writes_and_prints(tiny_run, tmp_path):
    run = _fused_copy(tiny_run, tmp_path / "run")
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
    from mufasa_cli.runtime.loop import _runner

    step = lambda batch: (batch, {})  # noqa: E731
    assert _runner(torch.nn.Linear(2, 1), step) is step  # one process: the step itself, no DDP


def test_a_killed_two_process_run_resumes_from_its_checkpoint(tiny_run, tmp_path):
    run = _fused_copy(tiny_run, tmp_path / "run")
    flags = ("align-train", run, "--epochs", "60", "--batch-size", "2")
    cmd, env = _command(*flags)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoint = run / ".align.ckpt" / "sal.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher ...
    subprocess.run(["pkill", "-9", "-f", f"align-train {run} "], check=False)  # ... and its workers (own sessions)
    proc.wait()
    time.sleep(0.5)
    assert checkpoint.is_file() and not (run / "align").exists()
    resumed = torchrun(*flags, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    manifest = artifacts.verify_stage(run / "align")
    assert manifest["resumed_after_epoch"] >= 1 and manifest["world_size"] == 2
