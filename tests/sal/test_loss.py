import math

import pytest
import torch

from mufasa_cli.sal.loss import item_log_q, sampled_softmax_loss


def test_sampled_softmax_with_logq_by_hand_on_3_users():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    targets = torch.tensor([10, 11, 12])
    log_q = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    tau = 1.0
    # logits[i][j] = u_i . e_j - log q_j
    s = [[1, 0, 0], [0, 1, 1], [1, 1, 1]]
    lq = [math.log(0.5), math.log(0.25), math.log(0.25)]
    expected = 0.0
    for i in range(3):
        row = [s[i][j] - lq[j] for j in range(3)]
        expected += -(row[i] - math.log(sum(math.exp(x) for x in row)))
    assert sampled_softmax_loss(u, e, targets, log_q, tau).item() == pytest.approx(expected / 3, rel=1e-6)


def test_accidental_hits_are_masked():
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    targets = torch.tensor([7, 8, 7])  # users 0 and 2 share target item 7
    log_q = torch.zeros(3)
    # row 0: column 2 is item 7 again -> masked: softmax over columns {0, 1}
    row0 = -(1 - math.log(math.exp(1) + math.exp(0)))
    # row 1: no hit: columns 0, 1, 2 -> logits 0, 1, 0
    row1 = -(1 - math.log(1 + math.e + 1))
    # row 2: column 0 is item 7 -> masked: columns {1, 2} -> logits 1, 1
    row2 = -(1 - math.log(2 * math.e))
    loss = sampled_softmax_loss(u, e, targets, log_q, 1.0)
    assert loss.item() == pytest.approx((row0 + row1 + row2) / 3, rel=1e-6)


def test_extra_negatives_join_as_columns_and_hits_are_masked():
    u = torch.tensor([[1.0, 0.0]])
    e = torch.tensor([[1.0, 0.0]])
    extra = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = sampled_softmax_loss(
        u, e, torch.tensor([3]), torch.zeros(1), 0.5, extra, torch.tensor([4, 3]), torch.zeros(2)
    )
    # columns: target (logit 2), item 4 (logit 0), item 3 again (masked)
    assert loss.item() == pytest.approx(-(2 - math.log(math.exp(2) + 1)), rel=1e-6)


def test_item_log_q():
    lq = item_log_q(torch.tensor([0, 0, 1, 2]), 4)
    torch.testing.assert_close(lq, torch.log(torch.tensor([0.5, 0.25, 0.25, 0.25])))
