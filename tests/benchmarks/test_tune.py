"""benchmarks/tune.py: the same budget per model, coordinate search on validation, records and
the tuned recipe (a tiny synthetic run, budget 2)."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from mufasa_cli.config import load_recipe

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tune.py"


def test_tune_gives_each_model_the_budget_and_writes_records_and_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "fuse:\n  cf: {train: {epochs: 2}}\n  mfl: {train: {epochs: 1}}\n"
        "align:\n  train: {epochs: 1}\n  train_all: {epochs: 1}\n"
        "baselines:\n  sasrec: {max_len: 10, train: {epochs: 1}}\n"
    )
    run, res = tmp_path / "run", tmp_path / "res"
    args = [sys.executable, str(SCRIPT), "synthetic", "--preset", "tiny", "--recipe", str(recipe), "--budget", "2"]
    args += ["--run", str(run), "--results", str(res), "--jobs", "2"]
    done = subprocess.run(args, capture_output=True, text=True, cwd=SCRIPT.parents[1])
    assert done.returncode == 0, done.stderr[-2000:]
    for model in ("mufasa", "sasrec"):
        record = json.loads((run / "tuning" / f"{model}.json").read_text())
        assert len(record["trials"]) == 2 and record["budget"] == 2
        scores = [t["valid"]["NDCG@10"] for t in record["trials"]]
        assert record["best_valid"]["NDCG@10"] == max(scores)
        assert record["best_config"] == record["trials"][record["best"]]["config"]
        for t in record["trials"]:  # validation and its epochs only: test is never read
            assert set(t["valid"]) == {"HR@10", "NDCG@10"} and t["epochs_run"] >= 1
    # the first axes: MUFASA's item ids, SASRec's layers
    mufasa = json.loads((run / "tuning" / "mufasa.json").read_text())
    # the base (built-in default: item ids on), then the axis' other value
    assert [t["config"]["item_ids"] for t in mufasa["trials"]] == [True, False]
    tuned = yaml.safe_load((run / "tuning" / "recipe.yaml").read_text())
    assert tuned["align"] == mufasa["best_config"]
    load_recipe(str(run / "tuning" / "recipe.yaml"))  # a valid recipe
    table = next(res.glob("*-tune-synthetic.md")).read_text()
    assert "benchmarks/tune.py synthetic" in table and "## mufasa" in table and "## sasrec" in table
    # a second call reads the finished trials instead of training them again; with --confirm it
    # then trains the 2 best of each model with seed 1 and chooses by the mean over both seeds
    again = subprocess.run(
        [*args, "--confirm", "2", "--confirm-seeds", "1"], capture_output=True, text=True, cwd=SCRIPT.parents[1]
    )
    assert again.returncode == 0, again.stderr[-2000:]
    confirmed = json.loads((run / "tuning" / "mufasa.json").read_text())
    searched = ("trial", "config", "valid", "best_epoch", "epochs_run")
    assert [{k: t[k] for k in searched} for t in confirmed["trials"]] == [
        {k: t[k] for k in searched} for t in mufasa["trials"]
    ]
    assert (run / "tuning" / "seed1" / "fuse" / "manifest.json").is_file()  # MUFASA's own fuse for seed 1
    for model in ("mufasa", "sasrec"):
        record = json.loads((run / "tuning" / f"{model}.json").read_text())
        assert record["confirm_seeds"] == [1]
        for t in record["trials"]:  # both trials are the 2 best: each has seed 1 and the mean of the two
            one = t["seeds"]["1"]["valid"]["NDCG@10"]
            assert t["valid_mean"]["NDCG@10"] == (t["valid"]["NDCG@10"] + one) / 2
            assert (run / "tuning" / model / str(t["trial"]) / "seed1" / "trial.yaml").is_file()
        means = [t["valid_mean"]["NDCG@10"] for t in record["trials"]]
        assert record["best_valid_mean"]["NDCG@10"] == max(means)
        assert record["best_config"] == record["trials"][record["best"]]["config"]
    assert yaml.safe_load((run / "tuning" / "recipe.yaml").read_text())["align"] == confirmed["best_config"]
    table = sorted(res.glob("*-tune-synthetic.md"))[-1].read_text()
    assert (
        "--confirm 2" in table
        and "Confirmation, valid NDCG@10 per seed" in table
        and "| seed 0 | seed 1 | mean |" in table
    )


def test_confirm_seeds_are_checked():
    for bad in (["--confirm", "-1"], ["--confirm", "2", "--confirm-seeds", "0,1"], ["--confirm-seeds", "1,x"]):
        done = subprocess.run(
            [sys.executable, str(SCRIPT), "synthetic", *bad], capture_output=True, text=True, cwd=SCRIPT.parents[1]
        )
        assert done.returncode == 2 and "--confirm" in done.stderr, done.stderr


def _tune_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tune", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_resumed_search_reuses_a_trial_whose_recipe_differs_only_by_a_default():
    tune = _tune_module()
    text = "align:\n  item_ids: true\n  sal: {objective: all}\n"
    same = {"align": {"item_ids": True, "id_dropout": 0.0, "sal": {"objective": "all", "layers": 1}}}
    assert tune._same_recipe(text, same)  # a key added later, at its default: the same training
    assert not tune._same_recipe(text, {"align": {"item_ids": True, "id_dropout": 0.5, "sal": {"objective": "all"}}})
    assert not tune._same_recipe("align: [", same)  # an unreadable file is retrained, not trusted


def test_trying_id_dropout_switches_item_ids_on():
    tune = _tune_module()
    assert tune.COUPLED[("mufasa", "id_dropout")](0.5) == {"item_ids": True}
    assert tune.COUPLED[("mufasa", "id_dropout")](0.0) == {}
    axes = [a for a, _ in tune.SPACE["mufasa"]]
    assert axes.index("id_dropout") > axes.index("finetune_mfl")  # searched after the earlier axes
    for model in ("mufasa", "sasrec"):  # the same number of configurations in each space
        assert 1 + sum(len(values) - 1 for _, values in tune.SPACE[model]) == 21
