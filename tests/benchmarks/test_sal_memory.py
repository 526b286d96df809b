"""The memory benchmark runs in a tiny mode; its output format only, no timing assertions."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sal_memory.py"


def test_sal_memory_benchmark_tiny_json():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--lengths", "16", "32", "--batch", "2", "--attention", "sparse", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(out)
    assert [r["L"] for r in rows] == [16, 32]
    assert {"attention", "peak_mb_above_base", "memory_ratio", "L_ratio", "seconds"} <= set(rows[0])
    assert rows[0]["L_ratio"] == 1.0 and rows[1]["L_ratio"] == 2.0
