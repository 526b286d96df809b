"""`mufasa ablate` end to end on tiny synthetic: Table 5 and Table 6 rows, variants in their
own folders, the full model's stages untouched."""

import json

import pytest

from tests.conftest import folder_digest, invoke


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    base = tmp_path_factory.mktemp("ablate")
    run = base / "run"
    recipe = base / "r.yaml"
    recipe.write_text("fuse:\n  cf: {train: {epochs: 2}}\n  mfl: {train: {epochs: 1}}\nalign:\n  train: {epochs: 1}\n")
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--out", run).exit_code == 0
    assert invoke("fuse-train", run, "--recipe", recipe).exit_code == 0
    assert invoke("align-train", run, "--recipe", recipe).exit_code == 0
    assert invoke("embed", run).exit_code == 0
    return run, recipe


def test_ablate_prints_tables_5_and_6_and_leaves_the_full_model_alone(full):
    run, recipe = full
    before = {s: folder_digest(run / s) for s in ("data", "fuse", "align", "embed")}
    result = invoke(
        "ablate",
        run,
        "--recipe",
        recipe,
        "--without",
        "window",
        "--without",
        "mfl",
        "--without",
        "cons",
        "--without",
        "sal",
        "--history-len",
        "8",
        "--attention",
        "sparse",
        "--protocol",
        "loo",
        "--format",
        "csv",
    )
    assert result.exit_code == 0, result.output
    labels = [line.split(",")[0] for line in result.stdout.splitlines()]
    for label in ("MUFASA", "w/o window attention", "w/o MFL", "w/o L_cons", "w/o SAL", "8 / sparse"):
        assert label in labels, label
    assert {s: folder_digest(run / s) for s in before} == before
    variant = run / "ablate" / "w-o-window"
    assert (variant / "data").is_symlink() and (variant / "fuse").is_symlink() and (variant / "embed").is_dir()
    assert not (run / "ablate" / "w-o-cons" / "fuse").is_symlink()  # the MFL was retrained there
    tables = json.loads((run / "ablate" / "tables-loo.json").read_text())
    assert set(tables["table5"]) == {"MUFASA", "w/o window attention", "w/o MFL", "w/o L_cons", "w/o SAL"}
    assert tables["table5"]["MUFASA"]["HR@10"] >= 0 and list(tables["table6"]) == ["8 / sparse"]


def test_table_6_reuses_the_cell_the_full_model_already_is(full):
    run, recipe = full
    args = ("ablate", run, "--recipe", recipe, "--history-len", "full", "--attention", "sparse,mean")
    result = invoke(*args, "--protocol", "loo", "--format", "csv", "--force")
    assert result.exit_code == 0, result.output
    assert not (run / "ablate" / "len-full-sparse").exists()  # RUN itself: same settings, same seed
    assert (run / "ablate" / "len-full-mean" / "embed").is_dir()
    tables = json.loads((run / "ablate" / "tables-loo.json").read_text())
    full_model = invoke("eval", run, "--format", "json", "--force")
    assert full_model.exit_code == 0
    assert tables["table6"]["full / sparse"] == json.loads(full_model.stdout)["models"]["mufasa"]["mean"]
    # another seed is another model: trained, not reused
    assert invoke(*args, "--seed", "1", "--protocol", "loo", "--force").exit_code == 0
    assert (run / "ablate" / "len-full-sparse" / "embed").is_dir()


def test_variants_side_by_side_give_the_same_tables_as_one_after_another(full, tmp_path):
    import shutil

    import torch

    run, recipe = full
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True, ignore=shutil.ignore_patterns("ablate"))
    args = ["--recipe", recipe, "--without", "window", "--without", "cons", "--history-len", "8"]
    args += ["--attention", "sparse,mean", "--protocol", "loo"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the workers get 1 thread each too: the same arithmetic
    try:
        one = invoke("ablate", run, *args, "--jobs", "1", "--force")
        two = invoke("ablate", copy, *args, "--jobs", "2")
    finally:
        torch.set_num_threads(threads)
    assert one.exit_code == 0, one.output
    assert two.exit_code == 0, two.output
    assert (copy / "ablate" / "w-o-cons" / "embed").is_dir() and (copy / "ablate" / "len-8-mean" / "embed").is_dir()
    tables = [json.loads((r / "ablate" / "tables-loo.json").read_text()) for r in (run, copy)]
    assert tables[0] == tables[1]


def test_ablate_refuses_to_overwrite_without_force_and_uses_the_runs_recipe(full, tmp_path):
    import shutil

    run, recipe = full
    copy = tmp_path / "run"
    shutil.copytree(run, copy, symlinks=True, ignore=shutil.ignore_patterns("ablate"))
    args = ["--without", "window", "--protocol", "loo", "--format", "json"]
    first = invoke("ablate", copy, *args)  # no --recipe: the one RUN/recipe.yaml records
    assert first.exit_code == 0, first.output
    assert f"using the recipe {copy / 'recipe.yaml'} records" in first.stderr
    before = folder_digest(copy / "ablate")
    again = invoke("ablate", copy, "--without", "cons", "--protocol", "loo")  # w-o-cons is new, the table file not
    assert again.exit_code == 2 and "tables-loo.json already exists; pass --force" in again.stderr
    assert folder_digest(copy / "ablate") == before
    # the same variant trained from the --recipe file: the same numbers
    same = invoke("ablate", copy, *args, "--recipe", recipe, "--force")
    assert same.exit_code == 0, same.output
    assert "notice" not in same.stderr and "replaces" not in same.stderr
    assert json.loads(same.stdout) == json.loads(first.stdout)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--without", "attention"), "--without 'attention'"),
        (("--history-len", "ten"), "--history-len 'ten'"),
        ((), "name --without parts"),
        (("--without", "sal", "--protocol", "x"), "--protocol 'x'"),
        (("--without", "cf", "--without", "cf"), "--without 'cf': named more than once"),
        (("--history-len", "8,8"), "--history-len: a value is named more than once"),
        (("--without", "cf", "--jobs", "0"), "--jobs 0"),
    ],
)
def test_bad_ablate_flags(full, args, message):
    run, _ = full
    result = invoke("ablate", run, *args)
    assert result.exit_code == 2 and message in result.stderr
