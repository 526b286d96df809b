"""DSSM and YouTube DNN: prefix pooling by hand, padding, and the loss falls on tiny data."""

import numpy as np
import torch
from torch.nn import functional as F

from mufasa_cli.baselines.two_tower import DSSM, YouTubeDNN, right_pad, youtube_users
from mufasa_cli.config import TwoTowerConfig
from mufasa_cli.losses import in_batch, sampled_softmax_loss

CFG = TwoTowerConfig(d_model=8, hidden=16, max_len=5, tau=0.1)


def test_youtube_prefix_users_pool_each_prefix_by_hand():
    torch.manual_seed(0)
    content = torch.randn(6, 3)
    model = YouTubeDNN(6, content, CFG).eval()
    ids = right_pad([np.array([1, 4, 2]), np.array([5])], 5, 6)
    with torch.no_grad():
        h = model.prefix_users(ids)
        for t in range(3):
            items = torch.tensor([1, 4, 2][: t + 1])
            pooled = torch.cat([model.hist(items).mean(0), model.content_proj(content[items]).mean(0)])
            torch.testing.assert_close(h[0, t], F.normalize(model.mlp(pooled), dim=-1))
        # the padded user's vector ignores the padding; youtube_users reads the last real prefix
        torch.testing.assert_close(youtube_users(model, [np.array([5])], 5)[0], h[1, 0])
        torch.testing.assert_close(youtube_users(model, [np.array([9, 9, 1, 4, 2])[2:]], 5)[0], h[0, 2])


def _fit(model, step, n=80):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(n):
        loss = step()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_dssm_loss_falls_on_tiny_data():
    torch.manual_seed(0)
    model = DSSM(6, 6, CFG)
    users, items = torch.arange(6), torch.tensor([1, 2, 3, 4, 5, 0])  # user u likes item u + 1
    log_p = torch.full((6,), -np.log(6.0))

    def step():
        u, e = model.users(users), model.item_vectors(items)
        return sampled_softmax_loss(u, e, items, log_p[items], in_batch(e, items, log_p), 0.1)

    losses = _fit(model, step)
    assert losses[-1] < 0.3 * losses[0]


def test_youtube_loss_falls_on_tiny_data():
    torch.manual_seed(0)
    model = YouTubeDNN(6, torch.randn(6, 3), CFG)
    seqs = [np.array([(s + i) % 6 for i in range(5)]) for s in range(6)]
    inputs = right_pad([q[:-1] for q in seqs], 5, 6)
    targets = right_pad([q[1:] for q in seqs], 5, -1)
    log_p = torch.full((6,), -np.log(6.0))

    def step():
        real = targets >= 0
        u, t = model.prefix_users(inputs)[real], targets[real]
        e = model.item_vectors(t)
        return sampled_softmax_loss(u, e, t, log_p[t], in_batch(e, t, log_p), 0.1)

    losses = _fit(model, step, 120)
    assert losses[-1] < 0.5 * losses[0]
