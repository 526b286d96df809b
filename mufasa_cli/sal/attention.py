"""The three SAL branches and the gate (paper section 3.2, eqs. 6-12), reference path.

Plain batched torch (gather + matmul). Every function takes Q queries per user: their vectors
q (B, Q, D) and their positions qpos (B, Q) in the history. The paper's `last` objective is
Q = 1 with qpos = length - 1; the `all` objective (every position a causal query, the NSA
formulation) is Q = L with qpos = 0..L-1. A query sees only items at positions <= qpos, so
padding (right of the last real item) is never attended. Blocks: with `causal`, a query sees
only the blocks complete at its position (its own partial block is the window's); without,
it also sees the block holding it (the paper's one-query protocol, whose last block may be
partial).

No (B, L, L) tensor is built: the window gathers W items per query, the block branch scores
L/b block vectors, the selective branch gathers k*b items, so memory per query is
O(W + L/b + k*b). A branch with nothing to attend to returns zeros, never NaN.

Legend: B users, Q queries per user, L history length, D model width, H heads, b block size,
nB = ceil(L/b) blocks, W window, k selected blocks, S keys per query.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def paper_window_sizes(history_lengths: torch.Tensor) -> torch.Tensor:
    """The paper's protocol: W = 8 when the history (up to the query) is longer than 30, else 4."""
    return torch.where(history_lengths > 30, 8, 4)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    num_heads: int,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention of each query over its S keys.

    q: (B, Q, D); k, v: (B, S, D) shared by the queries, or (B, Q, S, D) per query;
    mask: (B, Q, S) bool, True = may attend; bias: added to the scaled scores, broadcastable
    to (B, H, Q, S), or None.
    Returns (out (B, Q, D), weights (B, H, Q, S)); a query with no key gets out = 0, weights = 0.
    """
    B, Q, D = q.shape
    H, dh = num_heads, D // num_heads
    qh = q.view(B, Q, H, dh).transpose(1, 2)  # (B, H, Q, dh)
    if k.dim() == 3:
        S = k.shape[1]
        kh = k.view(B, S, H, dh).transpose(1, 2)  # (B, H, S, dh)
        vh = v.view(B, S, H, dh).transpose(1, 2)
        scores = qh @ kh.transpose(-1, -2)  # (B, H, Q, S)
    else:
        S = k.shape[2]
        kh = k.view(B, Q, S, H, dh).permute(0, 3, 1, 2, 4)  # (B, H, Q, S, dh)
        vh = v.view(B, Q, S, H, dh).permute(0, 3, 1, 2, 4)
        scores = (qh[..., None, :] @ kh.transpose(-1, -2)).squeeze(-2)  # (B, H, Q, S)
    scores = scores / math.sqrt(dh)
    if bias is not None:
        scores = scores + bias
    scores = scores.masked_fill(~mask[:, None], -torch.inf)
    any_key = mask.any(-1)[:, None, :, None]  # (B, 1, Q, 1)
    weights = torch.softmax(torch.where(any_key, scores, torch.zeros_like(scores)), dim=-1)
    weights = torch.where(any_key, weights, torch.zeros_like(weights))  # (B, H, Q, S)
    out = weights @ vh if k.dim() == 3 else (weights[..., None, :] @ vh).squeeze(-2)  # (B, H, Q, dh)
    return out.transpose(1, 2).reshape(B, Q, D), weights


def gather_items(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, L, D), positions (B, Q, S) -> (B, Q, S, D)."""
    return x[torch.arange(len(x), device=x.device)[:, None, None], positions]


def window_positions(qpos: torch.Tensor, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of the W items ending at each query (the query included) and their validity.

    qpos, windows: (B, Q) -> positions (B, Q, Wmax) clamped to [0, qpos], valid (B, Q, Wmax).
    """
    w_max = max(int(windows.max()), 1)
    offsets = torch.arange(w_max, device=qpos.device)
    pos = (qpos - windows + 1)[..., None] + offsets  # (B, Q, Wmax)
    valid = (offsets < windows[..., None]) & (pos >= 0)
    return torch.minimum(pos, qpos[..., None]).clamp(min=0), valid


def window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qpos: torch.Tensor,
    windows: torch.Tensor,
    num_heads: int,
    slope: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 6-7: attention over the last W items up to each query. k, v: (B, L, D); slope
    (H,): a recency bias -slope_e * (qpos - key position) on head e's scores, or None."""
    pos, valid = window_positions(qpos, windows)
    return attend(q, gather_items(k, pos), gather_items(v, pos), valid, num_heads, window_bias(slope, qpos, pos))


def window_bias(slope: torch.Tensor | None, qpos: torch.Tensor, pos: torch.Tensor) -> torch.Tensor | None:
    """The recency bias of cfg.recency (beyond the paper) on the window scores: -slope_e *
    (qpos - pos) for head e. slope (H,) or None, qpos (B, Q), pos (B, Q, W) -> (B, H, Q, W) or None."""
    if slope is None:
        return None
    return -slope[:, None, None] * (qpos[..., None] - pos)[:, None].to(slope.dtype)


def block_vectors(
    h: torch.Tensor, lengths: torch.Tensor, block_size: int, phi: nn.Linear | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8: b_j = phi(items of block j), block j = items [j*b, (j+1)*b). phi: Linear(b*D -> D)
    over the block's items laid side by side (padding slots zero), or None for mean pooling
    over the block's real items.

    h: (B, L, D) -> blocks (B, nB, D), block_mask (B, nB) bool (the block holds a real item).
    """
    x, block_mask = block_items(h, lengths, block_size)
    B, num_blocks, _, D = x.shape
    if phi is None:
        item_mask = torch.arange(num_blocks * block_size, device=h.device)[None, :] < lengths[:, None]
        counts = item_mask.view(B, num_blocks, block_size).sum(-1, keepdim=True)  # (B, nB, 1)
        blocks = x.sum(2) / counts.clamp(min=1)
    else:
        blocks = phi(x.reshape(B, num_blocks, block_size * D))
    return torch.where(block_mask[..., None], blocks, torch.zeros_like(blocks)), block_mask


def block_items(h: torch.Tensor, lengths: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The items of each block side by side, padding slots zero: h (B, L, D) -> x (B, nB, b, D)
    and block_mask (B, nB) bool (the block holds a real item)."""
    B, L, D = h.shape
    num_blocks = -(-L // block_size)
    item_mask = torch.arange(L, device=h.device)[None, :] < lengths[:, None]  # (B, L)
    block_mask = torch.arange(num_blocks, device=h.device)[None, :] * block_size < lengths[:, None]
    x = h if bool(item_mask.all()) else h * item_mask[..., None].to(h.dtype)  # padding slots zero
    pad = num_blocks * block_size - L
    return (F.pad(x, (0, 0, 0, pad)) if pad else x).view(B, num_blocks, block_size, D), block_mask


def visible_blocks(block_mask: torch.Tensor, qpos: torch.Tensor, block_size: int, causal: bool) -> torch.Tensor:
    """Which blocks each query may see: (B, nB), (B, Q) -> (B, Q, nB).

    causal: blocks complete at the query (last item <= qpos); else also the query's own block.
    """
    starts = torch.arange(block_mask.shape[1], device=qpos.device) * block_size  # (nB,)
    edge = starts + block_size - 1 if causal else starts
    return block_mask[:, None, :] & (edge <= qpos[..., None])


def block_distance(qpos: torch.Tensor, num_blocks: int, block_size: int) -> torch.Tensor:
    """How many blocks back block j is from the query's: qpos // b - j. qpos (...) -> (..., nB).
    Blocks the query sees are at distance >= 1 (causal) or >= 0 (its own partial block,
    objective last)."""
    return (qpos // block_size)[..., None] - torch.arange(num_blocks, device=qpos.device)


def recency_bias(slope: torch.Tensor, qpos: torch.Tensor, num_blocks: int, block_size: int) -> torch.Tensor:
    """The recency bias of cfg.recency (beyond the paper): -slope_e * block_distance for head
    e. slope (H,), qpos (B, Q) -> (B, H, Q, nB)."""
    return -slope[:, None, None] * block_distance(qpos, num_blocks, block_size)[:, None].to(slope.dtype)


def block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    visible: torch.Tensor,
    num_heads: int,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9: attention over block vectors k, v (B, nB, D), with an optional score bias
    (recency_bias). Returns z_long (B, Q, D) and a_block (B, Q, nB), the block weights
    averaged over heads (what eq. 10 ranks)."""
    z, weights = attend(q, k, v, visible, num_heads, bias)
    return z, weights.mean(1)


def select_blocks(a_block: torch.Tensor, visible: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10: the top-k visible blocks by weight; ties go to the more recent block.

    a_block, visible: (..., nB). Returns indices (..., k') and validity (..., k') with
    k' = min(k, nB); a query with fewer than k visible blocks gets invalid slots.
    """
    nB = a_block.shape[-1]
    kk = min(k, nB)
    scores = a_block.masked_fill(~visible, -1.0)
    # a stable sort of the reversed row puts later blocks first on ties
    order = torch.sort(scores.flip(-1), dim=-1, descending=True, stable=True).indices[..., :kk]
    idx = nB - 1 - order
    return idx, visible.gather(-1, idx)


def selected_positions(
    idx: torch.Tensor, selected: torch.Tensor, qpos: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Item positions of the selected blocks, concatenated (eq. 11): (B, Q, k*b) and validity."""
    offsets = torch.arange(block_size, device=idx.device)
    pos = (idx[..., None] * block_size + offsets).flatten(-2)  # (B, Q, k*b)
    valid = selected.repeat_interleave(block_size, dim=-1) & (pos <= qpos[..., None])
    return torch.minimum(pos, qpos[..., None]).clamp(min=0), valid


def selective_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    qpos: torch.Tensor,
    idx: torch.Tensor,
    selected: torch.Tensor,
    block_size: int,
    num_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eqs. 11-12: item-level attention inside the selected blocks. k, v: (B, L, D).

    Returns z_core (B, Q, D), the item positions (B, Q, k*b) and their weights averaged over heads.
    """
    pos, valid = selected_positions(idx, selected, qpos, block_size)
    z, weights = attend(q, gather_items(k, pos), gather_items(v, pos), valid, num_heads)
    return z, pos, weights.mean(1)


def gate(q: torch.Tensor, branches: list[torch.Tensor], gate_proj: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-branch sigmoid gates from the query: sum_m g_m z_m. q, z_m: (..., D) -> (..., D), gates (..., M)."""
    g = torch.sigmoid(gate_proj(q))  # (..., M)
    mixed = branches[0] * g[..., :1]
    for m, z in enumerate(branches[1:], start=1):  # no (..., M, D) stack to build and keep
        mixed = torch.addcmul(mixed, z, g[..., m : m + 1])
    return mixed, g
