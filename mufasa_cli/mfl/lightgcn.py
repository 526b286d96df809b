"""LightGCN (He et al., SIGIR 2020) with BPR: the collaborative embeddings c_i of eq. 2.

Trained on train interactions of train-role users only: no valid, test or zero-shot
interaction reaches the graph. Items without a train interaction get no CF vector.

Legend: U users, N items, D embedding dim, K propagation layers, B batch.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def normalized_adjacency(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int) -> torch.Tensor:
    """D^-1/2 A D^-1/2 of the bipartite graph, (U+N, U+N) sparse; repeated pairs count once."""
    pairs = np.unique(np.stack([users, items], axis=1), axis=0)
    u, i = pairs[:, 0], pairs[:, 1] + num_users
    rows = np.concatenate([u, i])
    cols = np.concatenate([i, u])
    n = num_users + num_items
    deg = np.bincount(rows, minlength=n).astype(np.float64)
    inv_sqrt = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1)), 0.0)
    values = inv_sqrt[rows] * inv_sqrt[cols]
    index = torch.as_tensor(np.stack([rows, cols]), dtype=torch.int64)
    adj = torch.sparse_coo_tensor(index, torch.as_tensor(values, dtype=torch.float32), (n, n), check_invariants=True)
    with warnings.catch_warnings():  # "sparse CSR support is in beta": CSR matmul is what we need
        warnings.simplefilter("ignore", UserWarning)
        return adj.coalesce().to_sparse_csr()


class _SymmetricSpMM(torch.autograd.Function):
    """A @ X for a symmetric sparse A: the backward pass is A @ grad (no transpose needed)."""

    @staticmethod
    def forward(ctx, adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adjacency = adjacency
        return adjacency @ x

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, ctx.adjacency @ grad


class LightGCN(nn.Module):
    def __init__(self, num_users: int, num_items: int, dim: int, num_layers: int, adjacency: torch.Tensor):
        super().__init__()
        self.num_users, self.num_items, self.num_layers = num_users, num_items, num_layers
        self.embedding = nn.Embedding(num_users + num_items, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.adjacency = adjacency  # not a parameter, not in the state dict

    def propagate(self) -> torch.Tensor:
        """Mean of the layer-0..K embeddings: (U+N, D)."""
        e = self.embedding.weight
        total = e
        for _ in range(self.num_layers):
            e = _SymmetricSpMM.apply(self.adjacency, e)
            total = total + e
        return total / (self.num_layers + 1)

    def bpr_loss(
        self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, reg: float
    ) -> tuple[torch.Tensor, dict]:
        """users, pos, neg: (B,) int64 (item ids 0..N-1)."""
        out = self.propagate()
        u, p, n = out[users], out[self.num_users + pos], out[self.num_users + neg]
        bpr = -F.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
        e0 = self.embedding.weight
        l2 = (
            e0[users].pow(2).sum() + e0[self.num_users + pos].pow(2).sum() + e0[self.num_users + neg].pow(2).sum()
        ) / (2 * len(users))
        return bpr + reg * l2, {"bpr": bpr.item()}

    @torch.no_grad()
    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.propagate()
        return out[: self.num_users], out[self.num_users :]


def sample_negatives(
    rng: np.random.Generator, users: np.ndarray, num_items: int, positive_keys: np.ndarray
) -> np.ndarray:
    """Uniform negatives that the user has no train interaction with (positive_keys: sorted u*N+i)."""
    neg = rng.integers(0, num_items, len(users))
    for _ in range(100):  # redraw clashes; a user who saw almost every item may keep a few
        keys = users.astype(np.int64) * num_items + neg
        pos = np.searchsorted(positive_keys, keys)
        clash = (pos < len(positive_keys)) & (positive_keys[np.minimum(pos, len(positive_keys) - 1)] == keys)
        if not clash.any():
            break
        neg[clash] = rng.integers(0, num_items, int(clash.sum()))
    return neg
