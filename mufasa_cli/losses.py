"""Sampled softmax between user and item vectors, shared by the SAL and the two-tower baselines.

Row i scores its positive e_i against a set of negative columns:
logit(i, j) = u_i . e_j / tau - log c_j, with c_j the expected number of times item j is drawn
as a column by its sampler (the logQ correction of Yi et al., RecSys 2019: popular items turn
up as negatives more often, so their logits are discounted by how often they are drawn). The
positive gets the same correction as it would as a column of the in-batch sampler. Negatives:
- in-batch: the batch's own targets, drawn from the training stream: c_j = S * p_j for S
  columns, p_j item j's share of the stream;
- uniform: M items drawn uniformly from the catalogue of N: c_j = M / N.
A negative that is the row's own target item (an accidental hit) is masked out.
Beyond the paper, full_softmax_loss uses every item of the catalogue as a column instead.

Legend: R rows (queries), S in-batch columns, M uniform columns, D width, N items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass
class Negatives:
    emb: torch.Tensor  # (C, D)
    items: torch.Tensor  # (C,) item ids
    log_count: torch.Tensor  # (C,) log expected draws of each column's item

    @staticmethod
    def cat(parts: list[Negatives]) -> Negatives:
        return Negatives(*(torch.cat([getattr(p, f) for p in parts]) for f in ("emb", "items", "log_count")))


def in_batch(e: torch.Tensor, items: torch.Tensor, log_p: torch.Tensor) -> Negatives:
    """The batch's target items as negatives: e (S, D), items (S,), log_p (N,) stream log shares."""
    return Negatives(e, items, log_p[items] + math.log(len(items)))


def uniform(e: torch.Tensor, items: torch.Tensor, num_items: int, counts: torch.Tensor | None = None) -> Negatives:
    """Items drawn uniformly from the catalogue: e (M, D), items (M,), one column a draw.
    counts (M,): the items are distinct and item j was drawn counts_j times (torch.unique of
    the draws): one column each, worth counts_j columns (log c_j = log(M / N) - log counts_j,
    since m equal columns add m exp(logit) to the softmax), the same loss with fewer columns."""
    draws = len(items) if counts is None else int(counts.sum())
    log_count = torch.full((len(items),), math.log(draws / num_items), device=e.device)
    return Negatives(e, items, log_count if counts is None else log_count - counts.to(e.dtype).log())


def sampled_softmax_loss(
    u: torch.Tensor,
    e: torch.Tensor,
    targets: torch.Tensor,
    log_count: torch.Tensor,
    negatives: Negatives,
    tau: float | torch.Tensor,
) -> torch.Tensor:
    """u: (R, D) users; e: (R, D) their target items' embeddings; targets: (R,) item ids;
    log_count: (R,) the log correction of each target item; negatives: C columns."""
    assert u.shape == e.shape and targets.shape == log_count.shape == u.shape[:1], (u.shape, e.shape, targets.shape)
    assert negatives.emb.shape[1] == u.shape[1], (negatives.emb.shape, u.shape)
    # Cross-entropy with the positive as column 0, in as few passes over the (R, C) logits as
    # there can be: tau folded into u, the correction into the matmul, the hits masked in place
    # (addmm's backward does not read its output), and no (R, 1 + C) concatenation.
    scaled = u / tau
    positive = (scaled * e).sum(-1) - log_count  # (R,)
    neg = torch.addmm(-negatives.log_count[None, :], scaled, negatives.emb.T)  # (R, C)
    neg.masked_fill_(negatives.items[None, :] == targets[:, None], -torch.inf)  # accidental hits
    top = torch.maximum(positive, neg.amax(1)).detach()  # finite, as the positive is
    total = (positive - top).exp() + (neg - top[:, None]).exp().sum(1)
    return (top + total.log() - positive).mean()


# Logits held at once by the chunked exact softmax: 2^24 floats (64 MB in float32).
LOGIT_BUDGET = 1 << 24


def full_softmax_loss(
    u: torch.Tensor, e_all: torch.Tensor, targets: torch.Tensor, tau: float | torch.Tensor, budget: int = LOGIT_BUDGET
):
    """Exact softmax over the catalogue (beyond the paper; SASRec's cross-entropy): every item
    a column, so nothing is sampled and nothing corrected. u: (R, D); e_all: (N, D); targets: (R,).
    When the (R, N) logits exceed `budget` floats, rows go through in chunks that fit it and
    the backward pass recomputes each chunk's logits (ChunkedCrossEntropy): the same loss and
    gradients, memory bounded by the budget instead of growing with R x N."""
    assert u.shape[1] == e_all.shape[1] and targets.shape == u.shape[:1], (u.shape, e_all.shape, targets.shape)
    scaled = u / tau  # tau folded into u (R, D), not applied to the (R, N) logits
    if u.shape[0] * e_all.shape[0] <= budget:
        return F.cross_entropy(scaled @ e_all.T, targets)
    return ChunkedCrossEntropy.apply(scaled, e_all, targets, max(1, budget // e_all.shape[0]))


class ChunkedCrossEntropy(torch.autograd.Function):
    """mean_r [logsumexp_j (u_r . e_j) - u_r . e_{t_r}], `rows` rows of logits at a time.
    Forward keeps only each row's log-sum-exp; backward recomputes the chunk's softmax p and
    uses (p - onehot(t)) / R for both gradients: du = g e, de = g^T u."""

    @staticmethod
    def forward(ctx, u: torch.Tensor, e_all: torch.Tensor, targets: torch.Tensor, rows: int):
        lse = torch.cat([torch.logsumexp(part @ e_all.T, 1) for part in u.split(rows)])
        positive = (u * e_all[targets]).sum(1)
        ctx.save_for_backward(u, e_all, targets, lse)
        ctx.rows = rows
        return (lse - positive).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        u, e_all, targets, lse = ctx.saved_tensors
        scale = grad / u.shape[0]
        du = torch.empty_like(u)
        de = torch.zeros_like(e_all)
        for start in range(0, u.shape[0], ctx.rows):
            part = slice(start, start + ctx.rows)
            g = (u[part] @ e_all.T - lse[part, None]).exp_()  # the chunk's softmax
            g[torch.arange(g.shape[0], device=g.device), targets[part]] -= 1.0
            g.mul_(scale)
            du[part] = g @ e_all
            de.addmm_(g.T, u[part])
        return du, de, None, None


def item_log_q(train_items: torch.Tensor, num_items: int) -> torch.Tensor:
    """log of each item's share of the training stream, (N,); unseen items get the floor 1/T."""
    counts = torch.bincount(train_items, minlength=num_items).float()
    return torch.log(counts.clamp(min=1.0) / max(len(train_items), 1))
