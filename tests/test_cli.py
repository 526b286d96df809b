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


COMMANDS = ("prepare", "fuse-train", "align-train", "embed", "eval", "ablate", "report")


def _help(*args):
    from typer.testing import CliRunner

    from mufasa_cli.cli.app import app

    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "160", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return result.stdout


def test_help_shows_values_not_python_types_and_one_default_style():
    import re

    for command in COMMANDS:
        text = _help(command)
        for leak in ("<bool>  ", "<list[", "<str>", "<int>", "<float>", "(default:"):
            options = [line for line in text.splitlines() if line.startswith("│ --") and "--help" not in line]
            rows = [line for line in options if leak in line]
            assert not rows, (command, leak, rows)
    align = _help("align-train")
    assert re.search(r"--objective\s+last\|all", align) and re.search(
        r"--kernel\s+auto\|fast\|compiled\|reference\|flex", align
    )
    assert "[default: (recipe)]" in align  # --epochs, --lr: the recipe's value
    assert re.search(r"--protocol\s+loo\|zero-shot\|cold-start", _help("eval"))
    assert re.search(r"--format\s+table\|md\|csv\|tex\|json", _help("eval"))


def test_the_command_list_reads_in_80_columns():
    from typer.testing import CliRunner

    from mufasa_cli.cli.app import app

    text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "80", "TERM": "dumb"}).stdout
    listed = [line for line in text.splitlines() if any(f"│ {c} " in line for c in COMMANDS)]
    assert len(listed) == len(COMMANDS)
    assert all(len(line) <= 80 for line in text.splitlines())


def test_prepare_without_a_dataset_prints_its_usage():
    result = invoke("prepare")
    assert result.exit_code == 2 and "Usage: mufasa prepare" in result.output and "Missing argument" in result.output
