"""The target-group diagnostic on a tiny synthetic run: the groups partition the targets."""

import subprocess
import sys
from pathlib import Path

from tests.conftest import invoke

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sal_targets.py"


def test_sal_targets_splits_continue_and_new_block_targets(tmp_path):
    run = tmp_path / "run"
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--out", run).exit_code == 0
    assert invoke("fuse-train", run, "--epochs", "1", "--cf-epochs", "2").exit_code == 0
    assert invoke("align-train", run, "--epochs", "1").exit_code == 0
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(run)], capture_output=True, text=True, check=True, cwd=SCRIPT.parents[1]
    ).stdout
    counts = dict(part.rsplit(" ", 1) for part in out.splitlines()[0].removeprefix("groups: ").split("; "))
    counts = {k: int(v) for k, v in counts.items()}
    assert counts["all"] == counts["continue block"] + counts["new block"] > 0
    assert counts["new block"] == counts["new block, core topic"] + counts["new block, other topic"]
    assert out.splitlines()[-1].startswith("run ")
