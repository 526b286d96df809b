"""mufasa report: every table file again, byte for byte, from the saved metrics alone."""

import json
import shutil

import pytest

from tests.conftest import folder_digest, invoke


@pytest.fixture(scope="module")
def evaluated(fused_tiny, tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(fused_tiny, run)
    assert invoke("align-train", run, "--epochs", "2").exit_code == 0
    assert invoke("embed", run).exit_code == 0
    assert invoke("eval", run, "--compare", "lightgcn", "--slices").exit_code == 0
    assert invoke("eval", run, "--compare", "lightgcn", "--keep-seen").exit_code == 0
    result = invoke("ablate", run, "--without", "window", "--protocol", "loo")
    assert result.exit_code == 0, result.output
    return run


def test_report_rewrites_every_table_byte_for_byte_without_training(evaluated, tmp_path, monkeypatch):
    from mufasa_cli.eval import run as eval_run

    def no_scoring(*a, **k):
        raise AssertionError("report must not score")

    monkeypatch.setattr(eval_run, "score", no_scoring)
    before = {s: folder_digest(evaluated / s) for s in ("eval", "ablate", "align", "embed")}
    out = tmp_path / "out"
    result = invoke("report", evaluated, "--out", out, "--format", "md", "--no-plots")
    assert result.exit_code == 0, result.output
    assert {s: folder_digest(evaluated / s) for s in before} == before
    for name in ("tables.md", "tables.csv", "tables.tex", "slices.md", "slices.csv"):
        assert (out / "eval-loo" / name).read_bytes() == (evaluated / "eval" / "loo" / name).read_bytes(), name
    for name in ("tables.md", "tables.csv", "tables.tex"):
        assert (out / "eval-loo-keep-seen" / name).read_bytes() == (
            evaluated / "eval/loo-keep-seen" / name
        ).read_bytes()
    for ext in ("md", "csv", "tex"):
        assert (out / "ablate-loo" / f"tables.{ext}").read_bytes() == (
            evaluated / "ablate" / f"tables-loo.{ext}"
        ).read_bytes()
    # stdout carries the tables in the asked format, the listing goes to stderr
    assert result.stdout.startswith("Table 1: dataset statistics") and "| MUFASA" in result.stdout
    assert "Table 5: ablations (loo)" in result.stdout
    table1 = (out / "data" / "tables.csv").read_text().splitlines()
    assert table1[0] == "dataset,users,items,interactions,avg_length,sparsity" and table1[1].startswith(
        "synthetic (tiny),"
    )
    assert (out / "data" / "tables.tex").read_text().count(r"\toprule") == 1
    assert str(out / "eval-loo" / "tables.tex") in result.stderr


def test_report_draws_plots_and_lists_them_with_format_none(evaluated, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    result = invoke("report", evaluated, "--out", out, "--format", "none")
    assert result.exit_code == 0, result.output
    png = out / "eval-loo" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(png) in result.stdout and "Table" not in result.stdout
    again = tmp_path / "again"
    assert invoke("report", evaluated, "--out", again, "--format", "none").exit_code == 0
    assert (again / "eval-loo" / "curves.png").read_bytes() == png.read_bytes()  # seeded bands: the same plot


def test_ablation_rows_carry_a_test_against_the_full_model(evaluated):
    record = json.loads((evaluated / "ablate" / "tables-loo.json").read_text())
    p = record["p_values"]["table5"]
    assert set(p) == {"MUFASA", "w/o window attention"}
    assert all(v == 1.0 for v in p["MUFASA"].values())  # the full model against itself
    assert all(0 <= v <= 1 for v in p["w/o window attention"].values())
    assert record["full"] == record["table5"]["MUFASA"]
    assert "significantly worse / better than the full model" in (evaluated / "ablate" / "tables-loo.md").read_text()


def test_report_on_a_run_without_results_says_what_to_run(fused_tiny):
    result = invoke("report", fused_tiny)
    assert result.exit_code == 2 and "no finished eval or ablate to report (run mufasa eval first)" in result.stderr
