"""eval --slices: the slice definitions and their metrics by hand, and the CLI end to end."""

import json
import math

import numpy as np
import pytest

from mufasa_cli.eval.slices import compute_slices, history_masks, pair_masks, popularity_groups, slice_metrics
from tests.conftest import invoke


def test_popularity_groups_cut_the_cumulative_share_of_interactions():
    # 20 interactions; from most to least interacted the shares before each item are
    # 0, 0.5, 0.75, 0.9: head < 0.2, torso < 0.8, tail after; no interaction = cold
    counts = np.array([3, 10, 0, 5, 2])
    assert popularity_groups(counts).tolist() == ["torso", "head", "cold", "torso", "tail"]
    assert popularity_groups(np.zeros(3, dtype=int)).tolist() == ["cold"] * 3


def test_history_masks_are_quartiles_then_long_histories():
    lengths = np.array([1, 2, 3, 4, 5, 6, 7, 60])
    names = [name for name, _ in history_masks(lengths)]
    # lower quantiles of 8 values: 2, 4, 6
    assert names == ["Q1 [1, 2]", "Q2 [3, 4]", "Q3 [5, 6]", "Q4 [7, 60]", ">=50"]
    masks = dict(history_masks(lengths))
    assert masks["Q4 [7, 60]"].tolist() == [False] * 6 + [True, True]
    assert masks[">=50"].sum() == 1


def test_one_target_slices_are_hr_and_ndcg_of_their_users():
    ranks = np.array([0, 1, 5, 20])
    owner = np.arange(4)
    means, users = slice_metrics(ranks, owner, [10], np.array([True, True, False, False]), single=True)
    assert users == 2
    assert means["HR@10"] == 1.0
    assert means["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert means["MRR"] == pytest.approx((1 + 1 / 2) / 2)


def test_several_target_slices_restrict_recall_and_ndcg_to_the_slice():
    # user 0 has targets at ranks 0 and 3, user 1 one at rank 1; the slice holds the last two
    ranks, owner = np.array([0, 3, 1]), np.array([0, 0, 1])
    means, users = slice_metrics(ranks, owner, [2, 10], np.array([False, True, True]), single=False)
    assert users == 2
    assert means["Recall@2"] == pytest.approx((0 + 1) / 2)
    assert means["Recall@10"] == 1.0
    assert means["NDCG@10"] == pytest.approx((1 / math.log2(5) + 1 / math.log2(3)) / 2)


def test_pair_masks_find_repeats_and_popularity():
    histories = [np.array([0, 1, 2]), np.array([3]), np.array([1, 1, 4, 0])]
    owner, target = np.array([0, 1, 2]), np.array([1, 4, 2])
    counts = np.array([10, 5, 3, 2, 0])  # head 0; torso 1, 2; tail 3; cold 4
    masks = {(k, n): m.tolist() for k, n, m in pair_masks(histories, owner, target, counts)}
    assert masks[("repeat", "repeat")] == [True, False, False]
    assert masks[("repeat", "new")] == [False, True, True]
    assert masks[("popularity", "torso")] == [True, False, True]
    assert masks[("popularity", "cold")] == [False, True, False]
    assert ("popularity", "head") not in masks  # no target is a head item: slice left out


def test_compute_slices_counts_users_and_pairs_per_model():
    histories = [np.array([0, 1]), np.array([2, 3, 4])]
    owner, target = np.array([0, 1]), np.array([1, 0])
    ranks = {"a": np.array([0, 9]), "b": np.array([3, 0])}
    rows = {(r["kind"], r["name"]): r for r in compute_slices(histories, owner, target, np.ones(5), ranks, [10])}
    repeat = rows[("repeat", "repeat")]  # user 0's target 1 is in its history
    assert (repeat["cases"], repeat["pairs"]) == (1, 1)
    assert repeat["models"]["a"]["NDCG@10"] == 1.0
    assert repeat["models"]["b"]["NDCG@10"] == pytest.approx(1 / math.log2(5))
    assert rows[("repeat", "new")]["models"]["a"]["NDCG@10"] == pytest.approx(1 / math.log2(11))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    run = tmp_path_factory.mktemp("slices") / "run"
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--out", run).exit_code == 0
    assert invoke("fuse-train", run, "--epochs", "1", "--cf-epochs", "3").exit_code == 0
    assert invoke("align-train", run, "--epochs", "2").exit_code == 0
    assert invoke("embed", run).exit_code == 0
    return run


def test_eval_slices_writes_every_metric_per_slice_and_model(embedded):
    result = invoke("eval", embedded, "--compare", "lightgcn", "--slices")
    assert result.exit_code == 0, result.output
    assert "NDCG@10 by slice" in result.stdout
    m = json.loads((embedded / "eval/loo/metrics.json").read_text())
    kinds = {s["kind"] for s in m["slices"]}
    assert kinds == {"history", "popularity", "repeat"}
    # the history quartiles partition the users; repeat and new partition the targets
    quartiles = [s for s in m["slices"] if s["kind"] == "history" and s["name"].startswith("Q")]
    assert sum(s["cases"] for s in quartiles) == m["cases"]
    repeat = [s for s in m["slices"] if s["kind"] == "repeat"]
    assert sum(s["pairs"] for s in repeat) == m["pairs"]
    # a slice's mean is the mean of the per-user values over its users
    per_user = np.array(m["per_user"]["mufasa"]["NDCG@10"])
    weighted = sum(s["cases"] * s["models"]["mufasa"]["NDCG@10"] for s in quartiles)
    assert weighted == pytest.approx(per_user.sum())
    for s in m["slices"]:
        assert set(s["models"]) == {"mufasa", "lightgcn"}
        assert set(s["models"]["mufasa"]) == set(m["metrics"])


def test_eval_slices_csv_and_zero_shot(embedded):
    result = invoke("eval", embedded, "--protocol", "zero-shot", "--compare", "", "--slices", "--format", "csv")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = "kind,slice,users,targets,model,"
    assert any(line.startswith(header) for line in lines)
    m = json.loads((embedded / "eval/zero-shot/metrics.json").read_text())
    repeat = [s for s in m["slices"] if s["kind"] == "repeat"]
    assert sum(s["pairs"] for s in repeat) == m["pairs"] == 3 * m["cases"]
    assert all("Recall@10" in s["models"]["mufasa"] for s in m["slices"])
