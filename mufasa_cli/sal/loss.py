"""The SAL training loss: in-batch sampled softmax between users and their target items.

logit(i, j) = u_i . e_j / tau - log Q(item_j), Q the item's frequency in the training stream
(the logQ correction of Yi et al., RecSys 2019: popular items appear as in-batch negatives
more often, so their logits are discounted by how often they are sampled). A column whose
item is the row's own target but sits in another row (an accidental hit) is masked out.
Optional extra negatives (e.g. uniform samples) join as more columns, masked the same way.

Legend: B users in the batch, M extra negatives, D width.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def sampled_softmax_loss(
    u: torch.Tensor,
    e: torch.Tensor,
    targets: torch.Tensor,
    log_q: torch.Tensor,
    tau: float | torch.Tensor,
    extra_e: torch.Tensor | None = None,
    extra_items: torch.Tensor | None = None,
    extra_log_q: torch.Tensor | None = None,
) -> torch.Tensor:
    """u: (B, D) users; e: (B, D) their target items' embeddings; targets: (B,) item ids;
    log_q: (B,) log sampling probability of each target item; extra_*: (M, D), (M,), (M,)."""
    assert u.shape == e.shape and targets.shape == log_q.shape == u.shape[:1], (
        u.shape,
        e.shape,
        targets.shape,
        log_q.shape,
    )
    columns, col_items, col_log_q = e, targets, log_q
    if extra_e is not None:
        assert extra_items is not None and extra_log_q is not None and extra_e.shape[1] == u.shape[1]
        columns = torch.cat([e, extra_e])
        col_items = torch.cat([targets, extra_items])
        col_log_q = torch.cat([log_q, extra_log_q])
    logits = u @ columns.T / tau - col_log_q[None, :]  # (B, B+M)
    B = len(u)
    own = torch.arange(B, device=u.device)
    hit = col_items[None, :] == targets[:, None]  # (B, B+M)
    hit[own, own] = False  # the positive itself stays
    logits = logits.masked_fill(hit, -torch.inf)
    return F.cross_entropy(logits, own)


def item_log_q(train_items: torch.Tensor, num_items: int) -> torch.Tensor:
    """log of each item's share of the training stream, (N,); unseen items get the floor 1/T."""
    counts = torch.bincount(train_items, minlength=num_items).float()
    return torch.log(counts.clamp(min=1.0) / max(len(train_items), 1))
