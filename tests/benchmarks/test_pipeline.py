"""benchmarks/pipeline.sh on tiny synthetic with one epoch per stage: the table's form only."""

import datetime
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "pipeline.sh"


@pytest.mark.skipif(not Path("/usr/bin/time").exists() or not shutil.which("mufasa"), reason="needs GNU time")
def test_pipeline_benchmark_prints_each_stage_with_wall_time_and_peak_memory(tmp_path):
    results = tmp_path / "results"
    env = {**os.environ, "PRESET": "tiny", "EXTRA_FUSE": "--epochs 1 --cf-epochs 2", "EXTRA_ALIGN": "--epochs 1"}
    env["RESULTS"] = str(results)
    out = subprocess.run(
        ["bash", SCRIPT, "synthetic", tmp_path / "run"], capture_output=True, text=True, env=env, check=True
    ).stdout
    lines = out.splitlines()
    written = results / f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d}-pipeline-synthetic.md"
    assert lines.pop() == f"wrote {written}"
    text = written.read_text()  # the table as printed, with the command that made it
    assert "PRESET=tiny" in text and "bash benchmarks/pipeline.sh synthetic" in text
    assert "\n".join(lines) in text
    assert lines[1].split() == ["stage", "wall_s", "peak_rss_mb", "cpu_s"]
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in lines[2:]}
    assert list(rows) == ["prepare", "fuse-train", "align-train", "embed", "eval", "total"]
    for name, (wall, rss, cpu) in rows.items():
        assert wall > 0 and rss > 0 and cpu > 0, name
    assert rows["total"][0] == pytest.approx(sum(rows[n][0] for n in list(rows)[:-1]), abs=0.2)
    assert rows["total"][1] == max(rows[n][1] for n in list(rows)[:-1])
    assert (tmp_path / "run" / "eval").is_dir()


def test_pipeline_benchmark_refuses_an_unknown_dataset():
    result = subprocess.run(["bash", SCRIPT, "nope"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown dataset 'nope'" in result.stderr
