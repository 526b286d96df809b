"""benchmarks/attention.py in its tiny mode: the output's form, never its timings."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "attention.py"


def test_attention_benchmark_reports_every_point_with_ratios_against_sdpa():
    args = ["--tiny", "--json", "--settings", "default"]
    out = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    assert report["device"] == "cpu" and report["copy_gb_per_s"] > 0
    rows = report["rows"]
    points = {(r["objective"], r["L"], r["variant"]) for r in rows}
    variants = {"last": ("sal", "sal_fast", "sdpa", "mean"), "all": ("sal", "sal_fast", "sal_shared", "sdpa", "mean")}
    assert points == {(o, 24, v) for o in ("last", "all") for v in variants[o]}
    for r in rows:
        assert r["fits"] and r["seconds"] > 0 and r["B"] == max(1, 64 // r["L"])
        assert r["speedup_vs_sdpa"] > 0
        # the peak of live tensors (profiler memory events) is measured at every point
        assert r["tensor_peak_mb"] > 0 and r["tensor_memory_vs_sdpa"] > 0
        if r["variant"] == "sdpa":
            assert r["speedup_vs_sdpa"] == 1.0 and r["tensor_memory_vs_sdpa"] == 1.0
    (embed,) = report["embed"]
    assert embed["fits"] and embed["L"] == 24 and embed["B"] == 4 and embed["history_bytes"] == 4 * 24 * 64 * 4
    assert embed["of_bound"] == pytest.approx(embed["gb_per_s"] / report["copy_gb_per_s"])


def test_attention_benchmark_prints_a_table():
    out = subprocess.run(
        [sys.executable, SCRIPT, "--tiny", "--settings", "long", "--objectives", "all", "--variants", "sal", "sdpa"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = out.splitlines()
    assert lines[1].split() == [
        "setting",
        "objective",
        "L",
        "B",
        "variant",
        "seconds",
        "peak",
        "MB",
        "tensor",
        "MB",
        "speedup",
        "memory",
        "tensors",
    ]
    assert sum(line.startswith("long") for line in lines) == 3  # sal, sdpa; one embed row
    assert "copy-bandwidth bound" in out and "plain torch copy" in lines[-1]
