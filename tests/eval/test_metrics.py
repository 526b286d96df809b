"""Ranking metrics by hand: known ranks -> values written as formulas; masking, ties, chunks."""

import math

import numpy as np
import pytest
import torch

from mufasa_cli.eval.run import paired_p
from mufasa_cli.metrics.ranking import csr, per_user_metrics, target_ranks


def test_single_target_metrics_by_hand():
    ranks = np.array([0, 3, 12])  # three users, one target each
    m = per_user_metrics(ranks, np.array([0, 1, 2]), 3, [5, 10])
    np.testing.assert_allclose(m["HR@5"], [1, 1, 0])
    np.testing.assert_allclose(m["NDCG@5"], [1 / math.log2(2), 1 / math.log2(5), 0])
    np.testing.assert_allclose(m["NDCG@10"], [1.0, 1 / math.log2(5), 0])
    np.testing.assert_allclose(m["MRR"], [1, 1 / 4, 1 / 13])


def test_several_targets_recall_and_ndcg_by_hand():
    # user 0: targets at ranks 0, 4, 30; user 1: ranks 1, 2, 3
    ranks = np.array([0, 4, 30, 1, 2, 3])
    owner = np.array([0, 0, 0, 1, 1, 1])
    m = per_user_metrics(ranks, owner, 2, [5, 50])
    np.testing.assert_allclose(m["Recall@5"], [2 / 3, 1.0])
    np.testing.assert_allclose(m["Recall@50"], [1.0, 1.0])
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    np.testing.assert_allclose(m["NDCG@5"][0], (1 + 1 / math.log2(6)) / idcg)
    np.testing.assert_allclose(m["NDCG@5"][1], (1 / math.log2(3) + 1 / math.log2(4) + 1 / math.log2(5)) / idcg)
    assert "MRR" not in m and "HR@5" not in m


def test_seen_items_are_masked_and_ties_count_against_the_target():
    items = torch.tensor([[1.0], [3.0], [2.0], [2.0], [0.0]])  # scores = item values for a user of 1.0
    users = lambda rows: torch.ones(len(rows), 1)  # noqa: E731
    # target item 2 (score 2): item 1 scores higher, item 3 ties -> rank 2
    assert target_ranks(users, items, np.array([0]), np.array([2])).tolist() == [2]
    # item 1 seen and masked -> rank 1 (the tie still counts)
    indptr, seen = csr(np.array([0]), np.array([1]), 1)
    assert target_ranks(users, items, np.array([0]), np.array([2]), indptr, seen).tolist() == [1]
    # the target itself in the seen list stays a candidate
    indptr, seen = csr(np.array([0, 0]), np.array([1, 2]), 1)
    assert target_ranks(users, items, np.array([0]), np.array([2]), indptr, seen).tolist() == [1]


def test_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(0)
    U, N = 37, 50
    user_vecs, items = torch.randn(U, 8, generator=g), torch.randn(N, 8, generator=g)
    targets = torch.randint(0, N, (U,), generator=g).numpy()
    seen_users = np.repeat(np.arange(U), 5)
    indptr, seen = csr(seen_users, torch.randint(0, N, (U * 5,), generator=g).numpy(), U)
    fn = lambda rows: user_vecs[torch.as_tensor(rows)]  # noqa: E731
    whole = target_ranks(fn, items, np.arange(U), targets, indptr, seen, chunk=U)
    for chunk in (1, 7, 16):
        np.testing.assert_array_equal(target_ranks(fn, items, np.arange(U), targets, indptr, seen, chunk=chunk), whole)


def test_paired_tests_on_constructed_data():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    assert paired_p(base + 0.05 + rng.normal(0, 0.01, 200), base, "ttest") < 1e-6
    assert paired_p(base + 0.05 + rng.normal(0, 0.01, 200), base, "wilcoxon") < 1e-6
    assert paired_p(base + rng.normal(0, 0.01, 200), base, "ttest") > 0.05
    assert paired_p(base, base.copy(), "ttest") == 1.0
    # a hand-checkable t-test: differences 1, 2, 3 -> t = mean / (sd / sqrt(n)) = 2 / (1 / sqrt 3)
    from scipy import stats

    p = paired_p(np.array([1.0, 2.0, 3.0]), np.zeros(3), "ttest")
    assert p == pytest.approx(2 * stats.t.sf(2 * math.sqrt(3), df=2))
