"""The real datasets in ../shared/data, prepared end to end (skipped when absent)."""

import json

import polars as pl

from tests.conftest import invoke


def test_ml100k_recbole_atomic_files(shared_data, tmp_path):
    result = invoke("prepare", "recbole", "--source", shared_data / "ml-100k", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    users = pl.read_parquet(tmp_path / "r/data/users.parquet")
    items = pl.read_parquet(tmp_path / "r/data/items.parquet")
    inter = pl.read_parquet(tmp_path / "r/data/interactions.parquet")
    assert (users.height, items.height, inter.height) == (943, 1682, 100_000)
    assert "943" in result.stdout and "1,682" in result.stdout and "100,000" in result.stdout
    assert items.filter(pl.col("raw_id") == "1")["title"][0] == "Toy Story"
    assert (inter.group_by("split").len().sort("split")["len"].to_list()) == [943, 98_114, 943]  # test, train, valid


def test_microlens_50k(shared_data, tmp_path):
    result = invoke(
        "prepare",
        "microlens",
        "--source",
        shared_data / "microlens-50k",
        "--out",
        tmp_path / "r",
        "--text-encoder",
        "none",
    )
    assert result.exit_code == 0, result.output
    users = pl.read_parquet(tmp_path / "r/data/users.parquet")
    items = pl.read_parquet(tmp_path / "r/data/items.parquet")
    inter = pl.read_parquet(tmp_path / "r/data/interactions.parquet")
    assert (users.height, items.height, inter.height) == (50_000, 19_220, 359_708)
    assert items["title"].null_count() == 0


def test_microlens_50k_with_100k_side_files(shared_data, tmp_path):
    result = invoke(
        "prepare",
        "microlens",
        "--source",
        shared_data / "microlens-50k",
        "--source",
        shared_data / "microlens-100k",
        "--out",
        tmp_path / "r",
        "--text-encoder",
        "none",
        "--zero-shot-users",
        "200",
    )
    assert result.exit_code == 0, result.output
    items = pl.read_parquet(tmp_path / "r/data/items.parquet")
    assert items.height == 19_220  # the 518 side-only ids do not enter the catalogue
    # categories joined for most items; rows whose two title files disagree are left out, counted
    assert 0.9 < items["category"].is_not_null().mean() < 1.0
    manifest = json.loads((tmp_path / "r/data/manifest.json").read_text())
    rejected = manifest["counts"]["category_rows_rejected_title_mismatch"]
    assert 0 < rejected < 500 and "not joined" in result.stdout
    users = pl.read_parquet(tmp_path / "r/data/users.parquet")
    assert (users["role"] == "zero_shot").sum() == 200
