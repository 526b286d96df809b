"""Each MFL loss against a value computed by hand on 2-3 items."""

import math

import pytest
import torch

from mufasa_cli.mfl.losses import cf_mse, fusion_infonce, title_consistency, title_infonce

T = torch.tensor
ALL = T([True, True])


def test_title_infonce_two_orthogonal_items():
    # z_i = t_i, orthogonal: s = [[1, 0], [0, 1]] -> loss = -log(e^{1/tau} / (e^{1/tau} + e^0)) = log(1 + e^{-1/tau})
    z = T([[1.0, 0.0], [0.0, 2.0]])  # scale does not matter: cosine
    t = T([[3.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    assert title_infonce(z, t, ALL, tau).item() == pytest.approx(math.log(1 + math.exp(-1 / tau)), rel=1e-6)


def test_title_infonce_general_2x2():
    # s(z1,t1)=cos 45deg, s(z1,t2)=cos 45deg -> row 1: log 2; row 2: z2 = t2 exactly, s(z2,t1)=0
    z = T([[1.0, 1.0], [0.0, 1.0]])
    t = T([[1.0, 0.0], [0.0, 1.0]])
    tau = 1.0
    c = 1 / math.sqrt(2)
    row1 = -math.log(math.exp(c) / (math.exp(c) + math.exp(c)))
    row2 = -math.log(math.exp(1) / (math.exp(0) + math.exp(1)))
    assert title_infonce(z, t, ALL, tau).item() == pytest.approx((row1 + row2) / 2, rel=1e-6)


def test_title_infonce_excludes_title_not_ok_items():
    z = T([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    t = T([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # item 3's title is bad and would be a hard negative
    ok = T([True, True, False])
    expected = math.log(1 + math.exp(-1 / 0.5))
    assert title_infonce(z, t, ok, 0.5).item() == pytest.approx(expected, rel=1e-6)
    assert title_infonce(z, t, T([True, False, False]), 0.5).item() == 0.0  # nothing to contrast


def test_cf_mse_only_items_with_cf():
    z = T([[1.0, 2.0], [0.0, 0.0], [5.0, 5.0]])
    c = T([[0.0, 0.0], [1.0, 1.0], [-9.0, -9.0]])
    has = T([True, True, False])
    # (1^2 + 2^2 + 1^2 + 1^2) / 2 items
    assert cf_mse(z, c, has).item() == pytest.approx((5 + 2) / 2)
    assert cf_mse(z, c, T([False, False, False])).item() == 0.0


def test_title_consistency_by_hand_and_zero_under_title_geometry():
    z = T([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    t = T([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    ok = T([True, True, True])
    c = 1 / math.sqrt(2)
    # pairs (1,2): (c - 1)^2, (1,3): (0 - 0)^2, (2,3): (c - 0)^2, each counted twice over 6 ordered pairs
    expected = 2 * ((c - 1) ** 2 + 0 + c**2) / 6
    assert title_consistency(z, t, ok).item() == pytest.approx(expected, rel=1e-6)
    # z with the titles' geometry (a rotation and scaling of t, other width) gives exactly zero
    rot = torch.linalg.qr(torch.randn(5, 5))[0][:, :2]  # (5, 2) orthonormal columns
    t5 = torch.randn(4, 2)
    z5 = 3.0 * t5 @ rot.T
    assert title_consistency(z5, t5, torch.ones(4, dtype=torch.bool)).item() == pytest.approx(0.0, abs=1e-10)
    # title_ok = false items take no part
    assert title_consistency(z, t, T([True, False, True])).item() == pytest.approx(0.0, abs=1e-12)


def test_fusion_infonce_by_hand():
    z = T([[1.0, 0.0], [0.0, 1.0]])
    noise = T([[0.0, 1.0], [0.0, 0.0]])  # z~_1 = (1, 1), z~_2 = (0, 1)
    tau = 1.0
    c = 1 / math.sqrt(2)
    # s(z1, z~1) = c, s(z1, z~2) = 0; s(z2, z~1) = c, s(z2, z~2) = 1
    row1 = -math.log(math.exp(c) / (math.exp(c) + math.exp(0.0)))
    row2 = -math.log(math.exp(1.0) / (math.exp(c) + math.exp(1.0)))
    assert fusion_infonce(z, noise, tau).item() == pytest.approx((row1 + row2) / 2, rel=1e-6)


def test_losses_assert_shapes():
    with pytest.raises(AssertionError):
        cf_mse(torch.zeros(2, 3), torch.zeros(2, 4), ALL)
    with pytest.raises(AssertionError):
        title_infonce(torch.zeros(2, 3), torch.zeros(3, 3), ALL, 0.1)
