import math

import pytest
import torch
from torch.nn import functional as F

from mufasa_cli.losses import (
    ChunkedCrossEntropy,
    Negatives,
    full_softmax_loss,
    in_batch,
    item_log_q,
    sampled_softmax_loss,
    uniform,
)


def _in_batch_loss(u, e, targets, log_p, tau):
    """The `last` objective's loss: the batch's targets are the negatives."""
    neg = in_batch(e, targets, log_p)
    return sampled_softmax_loss(u, e, targets, neg.log_count, neg, tau)


def test_sampled_softmax_with_logq_by_hand_on_3_users():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1, 2])
    log_p = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    # logits[i][j] = u_i . e_j - log q_j (the shared log 3 of "3 columns" cancels)
    s = [[1, 0, 0], [0, 1, 1], [1, 1, 1]]
    lq = [math.log(0.5), math.log(0.25), math.log(0.25)]
    expected = 0.0
    for i in range(3):
        row = [s[i][j] - lq[j] for j in range(3)]
        expected += -(row[i] - math.log(sum(math.exp(x) for x in row)))
    assert _in_batch_loss(u, e, targets, log_p, 1.0).item() == pytest.approx(expected / 3, rel=1e-6)
    # temperature divides the dot products only
    row0 = [2 * s[0][j] - lq[j] for j in range(3)]
    one = _in_batch_loss(u[:1].expand(3, 2), e, targets, log_p, 0.5)
    row1 = [2 * s[0][j] - lq[j] for j in range(3)]
    by_hand = sum(-(r[i] - math.log(sum(math.exp(x) for x in r))) for i, r in enumerate([row0, row1, row1])) / 3
    assert one.item() == pytest.approx(by_hand, rel=1e-6)


def test_accidental_hits_are_masked():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    targets = torch.tensor([7, 8, 7])  # users 0 and 2 share target item 7
    log_p = torch.zeros(9)
    # row 0: column 2 is item 7 again -> masked: softmax over columns {0, 1}
    row0 = -(1 - math.log(math.exp(1) + math.exp(0)))
    # row 1: no hit: columns 0, 1, 2 -> logits 0, 1, 0
    row1 = -(1 - math.log(1 + math.e + 1))
    # row 2: column 0 is item 7 -> masked: columns {1, 2} -> logits 1, 1
    row2 = -(1 - math.log(2 * math.e))
    loss = _in_batch_loss(u, e, targets, log_p, 1.0)
    assert loss.item() == pytest.approx((row0 + row1 + row2) / 3, rel=1e-6)


def test_uniform_negatives_join_as_columns_with_their_own_correction_and_hits_are_masked():
    u = torch.tensor([[1.0, 0.0]])
    e = torch.tensor([[1.0, 0.0]])
    targets = torch.tensor([3])
    log_p = torch.log(torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0 + 1e-9]))
    neg = Negatives.cat(
        [in_batch(e, targets, log_p), uniform(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([4, 3]), 8)]
    )
    # in-batch column: item 3 itself -> masked; uniform: c = 2/8 for items 4 and 3 (3 masked)
    # positive: 1/0.5 - log(1 * 0.25); item 4: 0/0.5 - log(0.25)
    loss = sampled_softmax_loss(u, e, targets, neg.log_count[:1], neg, 0.5)
    pos, other = 2 - math.log(0.25), 0 - math.log(0.25)
    assert loss.item() == pytest.approx(-(pos - math.log(math.exp(pos) + math.exp(other))), rel=1e-6)


def test_item_log_q():
    lq = item_log_q(torch.tensor([0, 0, 1, 2]), 4)
    torch.testing.assert_close(lq, torch.log(torch.tensor([0.5, 0.25, 0.25, 0.25])))


def test_loss_matches_cross_entropy_over_the_concatenated_logits_with_gradients():
    """The pass-saving form equals F.cross_entropy over [positive, negatives] (the textbook
    form), values and gradients, with accidental hits among the columns."""
    g = torch.Generator().manual_seed(0)
    R, C, D = 7, 11, 5
    u = torch.randn(R, D, generator=g, dtype=torch.float64, requires_grad=True)
    e = torch.randn(R, D, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 6, (R,), generator=g)
    items = torch.randint(0, 6, (C,), generator=g)
    neg = Negatives(torch.randn(C, D, generator=g, dtype=torch.float64), items, torch.randn(C, generator=g).double())
    own = torch.randn(R, generator=g, dtype=torch.float64)
    loss = sampled_softmax_loss(u, e, targets, own, neg, 0.3)
    (grad,) = torch.autograd.grad(loss, u)
    pos = (u * e).sum(-1) / 0.3 - own
    cols = (u @ neg.emb.T / 0.3 - neg.log_count).masked_fill(items[None] == targets[:, None], -torch.inf)
    ref = torch.nn.functional.cross_entropy(torch.cat([pos[:, None], cols], 1), torch.zeros(R, dtype=torch.long))
    (ref_grad,) = torch.autograd.grad(ref, u)
    assert bool((items[None] == targets[:, None]).any())  # the case has hits
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)


def test_a_row_whose_every_column_is_a_hit_costs_nothing_and_has_finite_gradients():
    u = torch.tensor([[1.0, 2.0]], requires_grad=True)
    neg = Negatives(torch.tensor([[0.5, 0.5], [1.0, 0.0]]), torch.tensor([3, 3]), torch.zeros(2))
    loss = sampled_softmax_loss(u, torch.tensor([[1.0, 0.0]]), torch.tensor([3]), torch.zeros(1), neg, 1.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(u.grad).all()


def test_uniform_draws_merged_with_their_counts_give_the_same_loss():
    # draws 2, 5, 2, 2, 7 from 10 items: three columns of item 2 = one column worth 3
    g = torch.Generator().manual_seed(1)
    table = torch.randn(10, 4, generator=g)
    u, e, targets = torch.randn(3, 4, generator=g), table[[1, 5, 0]], torch.tensor([1, 5, 0])
    draws = torch.tensor([2, 5, 2, 2, 7])
    drawn, counts = torch.unique(draws, return_counts=True)
    each = sampled_softmax_loss(u, e, targets, torch.zeros(3), uniform(table[draws], draws, 10), 0.5)
    merged = sampled_softmax_loss(u, e, targets, torch.zeros(3), uniform(table[drawn], drawn, 10, counts), 0.5)
    torch.testing.assert_close(each, merged)
    # c_j = M / N per draw: 5 / 10 for each of the five columns; merged, item 2 gets log(0.5) - log 3
    torch.testing.assert_close(uniform(table[drawn], drawn, 10, counts).log_count[0], torch.tensor(math.log(0.5 / 3)))


def test_full_softmax_by_hand_on_2_users_and_3_items():
    # u . e: row 0 scores (1, 0, 0), row 1 scores (0, 1, 0.5); tau 0.5 doubles them
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.5]])
    targets = torch.tensor([0, 2])
    row0 = -2 + math.log(math.exp(2) + 1 + 1)
    row1 = -1 + math.log(1 + math.exp(2) + math.exp(1))
    assert full_softmax_loss(u, e, targets, 0.5).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # rows one at a time (budget of 3 logits = one row of 3 items): the same number
    assert full_softmax_loss(u, e, targets, 0.5, budget=3).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


@pytest.mark.parametrize("budget", [1, 7 * 11, 7 * 11 * 4, 10**9])  # chunks of 1, 7, 28 rows; no chunking
def test_chunked_full_softmax_matches_cross_entropy_with_gradients(budget):
    g = torch.Generator().manual_seed(3)
    u = torch.randn(50, 8, generator=g, requires_grad=True)
    e = torch.randn(11, 8, generator=g, requires_grad=True)
    log_tau = torch.tensor(-0.7, requires_grad=True)  # a learned temperature gets its gradient too
    targets = torch.randint(0, 11, (50,), generator=g)
    ref = F.cross_entropy(u @ e.T / log_tau.exp(), targets)
    ref_grads = torch.autograd.grad(ref, (u, e, log_tau))
    out = full_softmax_loss(u, e, targets, log_tau.exp(), budget=budget)
    torch.testing.assert_close(out, ref)
    for got, want in zip(torch.autograd.grad(out, (u, e, log_tau)), ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_chunked_cross_entropy_gradcheck():
    g = torch.Generator().manual_seed(4)
    u = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    e = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.tensor([0, 3, 3, 1, 2])
    assert torch.autograd.gradcheck(lambda a, b: ChunkedCrossEntropy.apply(a, b, targets, 2), (u, e))
