"""benchmarks/quality.py: the seed summary by hand, and a tiny synthetic run end to end."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from tests.conftest import BENCHMARKS, load_benchmark

SCRIPT = BENCHMARKS / "quality.py"


def _result(per_user: dict[str, list[float]], params: dict[str, int]) -> dict:
    """An eval result whose four columns all hold the same per-user values."""
    cols = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")
    return {
        "users": [0, 1, 2, 3],
        "keep_seen": False,
        "protocol": "loo",
        "metrics": [*cols, "MRR"],
        "models": {n: {"params": params[n], "mean": {c: float(np.mean(v)) for c in cols}} for n, v in per_user.items()},
        "per_user": {n: {c: v for c in cols} for n, v in per_user.items()},
    }


def test_summary_means_stds_and_the_paired_test_over_seed_averaged_users():
    q = load_benchmark("quality")
    params = {"mufasa": 300_000, "sasrec": 1_300_000, "dssm": 40_000}
    results = {
        0: _result({"mufasa": [1, 0, 0.5, 0], "sasrec": [0, 0, 0.5, 0], "dssm": [0, 0, 0, 0]}, params),
        1: _result({"mufasa": [1, 0.5, 0, 0], "sasrec": [0.5, 0, 0, 0], "dssm": [0, 0, 0.25, 0]}, params),
    }
    s = q.summarize(results, "ttest")
    # MUFASA's per-seed means 0.375 and 0.375; SASRec's 0.125 and 0.125; DSSM's 0 and 0.0625
    assert s["models"]["mufasa"]["mean"]["NDCG@10"] == pytest.approx(0.375)
    assert s["models"]["mufasa"]["std"]["NDCG@10"] == pytest.approx(0.0)
    assert s["models"]["dssm"]["mean"]["HR@20"] == pytest.approx(0.03125)
    assert s["models"]["dssm"]["std"]["HR@20"] == pytest.approx(0.0625 / math.sqrt(2))  # |a-b| / sqrt(2)
    assert s["models"]["dssm"]["per_seed"]["HR@20"] == [0.0, 0.0625]
    assert s["strongest_baseline"] == "sasrec"
    assert s["ratio"] == pytest.approx(3.0) and s["target_met"]
    # seed-averaged users: MUFASA [1, .25, .25, 0], SASRec [.25, 0, .25, 0]; differences [.75, .25, 0, 0]
    d = np.array([0.75, 0.25, 0.0, 0.0])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(4))
    assert s["p_values"]["NDCG@10"] == pytest.approx(2 * stats.t.sf(t, 3))
    text = q.markdown(s, "toy")
    labels = [line.split(" |")[0] for line in text.splitlines() if line.startswith("| ") and "M | " in line]
    assert labels == ["| MUFASA-0.3M", "| SASRec-1.3M", "| DSSM-0.04M"]  # MUFASA first, then eval's order
    row = next(line for line in text.splitlines() if line.startswith("| MUFASA-0.3M"))
    assert "**0.3750 ± 0.0000**" in row and "*" not in row.replace("**", "")  # p ≈ 0.27: no star
    assert "<u>0.1250 ± 0.0000</u>" in next(line for line in text.splitlines() if line.startswith("| SASRec-1.3M"))
    assert "3.00× — met" in text


def test_summary_refuses_seeds_that_evaluated_other_users():
    q = load_benchmark("quality")
    params = {"mufasa": 1, "sasrec": 1}
    a = _result({"mufasa": [1, 0, 0, 0], "sasrec": [0, 0, 0, 0]}, params)
    b = {**a, "users": [0, 1, 2, 5]}
    with pytest.raises(ValueError, match="seed 1 evaluated other users"):
        q.summarize({0: a, 1: b}, "ttest")


def test_quality_benchmark_on_tiny_synthetic_writes_the_table_and_reuses_finished_stages(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "fuse:\n  cf: {train: {epochs: 2}}\n  mfl: {train: {epochs: 1}}\nalign:\n  train: {epochs: 1}\n"
        "  train_all: {epochs: 1}\nbaselines:\n  sasrec: {max_len: 10, train: {epochs: 1}}\n"
    )
    out = tmp_path / "q"
    args = [sys.executable, str(SCRIPT), "synthetic", "--preset", "tiny", "--seeds", "0,1", "--recipe", str(recipe)]
    args += ["--compare", "sasrec,lightgcn", "--out", str(out), "--jobs", "2", "--results", str(tmp_path / "res")]
    args += ["--protocols", "loo,zero-shot", "--slices", "--threads", "1"]
    first = subprocess.run(args, capture_output=True, text=True, cwd=SCRIPT.parents[1])
    assert first.returncode == 0, first.stderr[-2000:]
    table = (out / "quality-vs-sasrec-lightgcn.md").read_text()
    assert table in first.stdout
    # another recipe than recipes/synthetic.yaml: the file names it (r.yaml -> -r)
    dated = list((tmp_path / "res").glob("*-quality-vs-sasrec-lightgcn-synthetic-r.md"))
    assert len(dated) == 1 and dated[0].read_text() == table
    assert "benchmarks/quality.py synthetic" in table and "Recipe: " in table
    for label in ("| MUFASA-", "| SASRec-", "| LightGCN-"):
        assert label in table, label
    summary = json.loads((out / "quality-vs-sasrec-lightgcn.json").read_text())
    assert summary["seeds"] == [0, 1] and set(summary["walls_s"]["0"]) == {
        "fuse",
        "align",
        "embed",
        "eval",
        "eval zero-shot",
    }
    zero_shot = summary["protocols"]["zero-shot"]  # a second table: Recall@k, no transductive LightGCN
    assert zero_shot["columns"][0] == "Recall@10" and set(zero_shot["models"]) == {"mufasa", "sasrec"}
    assert "`zero-shot`" in table and "| Recall@10 |" in table
    assert set(summary["train_s"]["1"]) == {"data", "fuse", "align", "embed", "sasrec"}
    for seed in (0, 1):
        metrics = json.loads((out / f"seed{seed}" / "eval" / "loo" / "metrics.json").read_text())
        for name in ("mufasa", "sasrec", "lightgcn"):
            got = summary["models"][name]["per_seed"]["NDCG@10"][seed]
            assert got == metrics["models"][name]["mean"]["NDCG@10"]
        kinds = {sl["kind"] for sl in metrics["slices"]}  # --slices reached eval
        assert {"history", "popularity"} <= kinds, kinds
    m = summary["models"]["sasrec"]
    assert m["std"]["HR@10"] == pytest.approx(float(np.std(m["per_seed"]["HR@10"], ddof=1)))
    assert set(summary["p_values"]) == {"HR@10", "NDCG@10", "HR@20", "NDCG@20"}
    # the same split for both seeds: seed1's data is seed0's
    a, b = (json.loads((out / f"seed{s}" / "data" / "manifest.json").read_text()) for s in (0, 1))
    assert a["outputs"] == b["outputs"]
    again = subprocess.run(args, capture_output=True, text=True, cwd=SCRIPT.parents[1])
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((out / "quality-vs-sasrec-lightgcn.json").read_text())
    assert summary["walls_s"] == {"0": {}, "1": {}}  # nothing re-run
    assert (out / "quality-vs-sasrec-lightgcn.md").read_text() == table
    seen = subprocess.run([*args, "--keep-seen"], capture_output=True, text=True, cwd=SCRIPT.parents[1])
    assert seen.returncode == 0, seen.stderr[-2000:]
    kept = json.loads((out / "quality-keep-seen-vs-sasrec-lightgcn.json").read_text())
    assert kept["keep_seen"] and set(kept["walls_s"]["0"]) == {"eval", "eval zero-shot"}  # only eval ran again
    assert "seen items kept" in (out / "quality-keep-seen-vs-sasrec-lightgcn.md").read_text()
    assert (out / "quality-vs-sasrec-lightgcn.md").read_text() == table


def test_quality_benchmark_needs_a_source_for_real_data(tmp_path):
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "ml-100k", "--out", str(tmp_path / "q")], capture_output=True, text=True
    )
    assert out.returncode != 0 and "ml-100k needs --source" in out.stderr


def test_one_seed_prints_means_without_a_spread():
    q = load_benchmark("quality")
    params = {"mufasa": 300_000, "sasrec": 1_300_000}
    s = q.summarize({0: _result({"mufasa": [1, 0, 0.5, 0], "sasrec": [0, 0, 0.5, 0]}, params)}, "ttest")
    text = q.markdown(s, "toy")
    assert "one seed (0): no spread" in text and "±" not in text
    assert "| MUFASA-0.3M | **0.3750** |" in text
