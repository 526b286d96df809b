"""The four MFL losses, one function per equation of the paper (section 3.1).

Each takes a batch of N items. s(a, b) is cosine similarity. Functions assert shapes on
entry and return a 0-d tensor; a loss with nothing to compute (no title_ok item, no CF
item) returns an exact zero that still carries a graph, so weights can be combined freely.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _zero(like: torch.Tensor) -> torch.Tensor:
    return like.sum() * 0.0


def title_infonce(z_title: torch.Tensor, t: torch.Tensor, ok: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 1: -log exp(s(z_i,t_i)/tau) / sum_j exp(s(z_i,t_j)/tau), mean over title_ok items.

    z_title: (N, d_t) the fused vectors mapped to the title width; t: (N, d_t) title anchors;
    ok: (N,) bool. Items without a usable title take no part, as query or as negative.
    """
    assert z_title.shape == t.shape and ok.shape == z_title.shape[:1], (z_title.shape, t.shape, ok.shape)
    if int(ok.sum()) < 2:
        return _zero(z_title)
    logits = F.normalize(z_title[ok], dim=-1) @ F.normalize(t[ok], dim=-1).T / tau  # (n, n)
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


def cf_mse(z: torch.Tensor, c: torch.Tensor, has_cf: torch.Tensor) -> torch.Tensor:
    """Eq. 2: (1/N) sum_i ||z_i - c_i||^2 over the items that have a CF vector."""
    assert z.shape == c.shape and has_cf.shape == z.shape[:1], (z.shape, c.shape, has_cf.shape)
    if not bool(has_cf.any()):
        return _zero(z)
    return (z[has_cf] - c[has_cf]).pow(2).sum(-1).mean()


def title_consistency(z: torch.Tensor, t: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Eq. 3: mean over pairs i != j of (C(z_i, z_j) - C(t_i, t_j))^2, title_ok pairs only.

    z: (N, d) and t: (N, d_t) may differ in width: only their cosine geometry is compared.
    """
    assert z.shape[0] == t.shape[0] == ok.shape[0], (z.shape, t.shape, ok.shape)
    n = int(ok.sum())
    if n < 2:
        return _zero(z)
    zn, tn = F.normalize(z[ok], dim=-1), F.normalize(t[ok], dim=-1)
    diff = zn @ zn.T - tn @ tn.T  # (n, n)
    off = ~torch.eye(n, dtype=torch.bool, device=z.device)
    return diff[off].pow(2).mean()


def fusion_infonce(z: torch.Tensor, noise: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 4: -log exp(s(z_i, z~_i)/tau) / sum_k exp(s(z_i, z~_k)/tau), z~_k = z_k + eps_k.

    noise: (N, d) the draws eps ~ N(0, sigma^2 I), passed in so the loss is a pure function.
    """
    assert z.shape == noise.shape, (z.shape, noise.shape)
    if len(z) < 2:
        return _zero(z)
    logits = F.normalize(z, dim=-1) @ F.normalize(z + noise, dim=-1).T / tau  # (N, N)
    return F.cross_entropy(logits, torch.arange(len(z), device=z.device))
