"""The command line as a user meets it: help, version, and one end-to-end prepare."""

import json

import polars as pl

from mufasa_cli import __version__, artifacts
from mufasa_cli.data import schema
from tests.conftest import invoke


def test_help_lists_only_real_commands():
    result = invoke("--help")
    assert result.exit_code == 0
    assert "prepare" in result.stdout and "--debug" in result.stdout and "--version" in result.stdout
    assert invoke("prepare", "--help").exit_code == 0


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"mufasa {__version__}"


def test_prepare_synthetic_tiny_end_to_end(tiny_run):
    data = tiny_run / "data"
    manifest = artifacts.verify_stage(data)  # every listed file exists with its sha256
    assert manifest["stage"] == "data" and manifest["config"]["preset"] == "tiny"
    assert manifest["title_encoder"] == "synthetic" and manifest["title_losses"] == "on"
    assert set(manifest["outputs"]) == {
        schema.ITEMS_FILE,
        schema.INTERACTIONS_FILE,
        schema.USERS_FILE,
        schema.FEATURES_FILE,
    }
    items = artifacts.load_table(data / schema.ITEMS_FILE, schema.ITEM_COLUMNS)
    inter = artifacts.load_table(data / schema.INTERACTIONS_FILE, schema.INTERACTION_COLUMNS)
    users = artifacts.load_table(data / schema.USERS_FILE, schema.USER_COLUMNS)
    N, U = items.height, users.height
    assert items["item"].to_list() == list(range(N)) and users["user"].to_list() == list(range(U))
    assert set(inter["split"].unique()) <= set(schema.SPLITS)
    assert users["length"].sum() == inter.height
    dims: dict = {}
    feats = artifacts.load_tensors(
        data / schema.FEATURES_FILE,
        {
            "title": ("float32", ("N", None)),
            "genre": ("int64", ("N",)),
            "modality.image": ("float32", ("N", 48)),
            "mask.image": ("bool", ("N",)),
        },
        dims,
    )
    assert dims["N"] == N
    # an absent modality is all zeros
    assert not feats["modality.image"][~feats["mask.image"]].any()
    counts = manifest["counts"]
    assert counts["users"] == U and counts["items"] == N and counts["interactions"] == inter.height
    assert json.loads((data / "manifest.json").read_text())["inputs"] == {"files": {}}
    assert artifacts.tensor_metadata(data / schema.FEATURES_FILE)["genres"] == "post,news,micro_video"
    # interactions are sorted by user then position
    assert inter.select(pl.col("user").diff().min()).item() >= 0


def test_prepare_prints_table1(tmp_path):
    result = invoke("prepare", "mixed-genre", "--preset", "tiny", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    for text in ("Table 1", "User", "Item", "Inter.", "Avg", "Sps", "Modality coverage", "micro_video", "title_ok"):
        assert text in result.stdout


def test_missing_text_extra_says_how_to_install(tmp_path, monkeypatch):
    from mufasa_cli.data import text

    monkeypatch.setattr(text, "text_extra_installed", lambda: False)
    result = invoke("prepare", "synthetic", "--preset", "tiny", "--text-encoder", "minilm", "--out", tmp_path / "r")
    assert result.exit_code == 2
    assert "pip install 'mufasa-cli[text]'" in result.stderr
