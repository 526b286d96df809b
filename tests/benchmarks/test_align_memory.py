"""The align-train memory benchmark in a tiny mode: its output format only, no memory assertions."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "align_memory.py"


def test_align_memory_benchmark_tiny_json(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--preset", "tiny", "--max-lens", "8", "16", "--work", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=SCRIPT.parents[1],
    ).stdout
    rows = json.loads(out[out.index("[") :])
    assert [r["max_len"] for r in rows] == [8, 16]
    assert rows[0]["valid_history_mean"] <= 8 < rows[1]["valid_history_mean"] <= 16
    assert rows[0]["growth_mb"] == 0 and rows[1]["peak_rss_mb"] > 0 and rows[1]["len_ratio"] > 1
