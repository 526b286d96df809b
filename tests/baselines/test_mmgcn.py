"""MMGCN: finite, cold items get a representation from their features, BPR falls on tiny data."""

import numpy as np
import torch

from mufasa_cli.baselines.mmgcn import MMGCN
from mufasa_cli.config import MMGCNConfig
from mufasa_cli.mfl.lightgcn import normalized_adjacency

CFG = MMGCNConfig(d_model=8, num_layers=2)


def _model():
    torch.manual_seed(0)
    features = {"a": torch.randn(6, 5), "b": torch.randn(6, 3)}
    model = MMGCN(4, 6, features, CFG)
    users, items = np.array([0, 0, 1, 2, 3, 3]), np.array([0, 1, 2, 3, 4, 0])  # item 5 is cold
    model.adjacency = normalized_adjacency(users, items, 4, 6)
    return model, features


def test_cold_items_get_vectors_from_their_features():
    model, features = _model()
    u, i = model.split()
    assert u.shape == (4, 8) and i.shape == (6, 8) and torch.isfinite(i).all()
    with torch.no_grad():
        features["a"][5] += 1.0
        model.x0.copy_(features["a"])
    _, again = model.split()
    assert not torch.allclose(again[5], i[5])  # the cold item's own features move it
    torch.testing.assert_close(again[:5], i[:5])  # item 5 has no edge: no other item moves


def test_bpr_falls_on_tiny_data():
    model, _ = _model()
    users, pos, neg = torch.tensor([0, 0, 1, 2, 3]), torch.tensor([0, 1, 2, 3, 4]), torch.tensor([3, 4, 0, 1, 2])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        loss, _ = model.bpr_loss(users, pos, neg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
