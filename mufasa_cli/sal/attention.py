"""The three SAL branches and the gate (paper section 3.2, eqs. 6-12), reference path.

Plain batched torch (gather + matmul) for one query per user, the paper's `last` objective:
the query is the last item of each history. Histories are right-padded, (B, L, D), with
their lengths (B,) >= 1; padding is excluded by masks built from the lengths, never by ids.
No (B, L, L) tensor is built: the window gathers W items, the block branch works on L/b
block vectors, the selective branch gathers k*b items, so memory grows linearly in L.
A branch with nothing to attend to returns zeros, never NaN.

Legend: B users, L history length, D model width, H heads, b block size, nB = ceil(L/b)
blocks, W window, k selected blocks.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def paper_window_sizes(lengths: torch.Tensor) -> torch.Tensor:
    """The paper's protocol: W = 8 when the history is longer than 30 items, else 4."""
    return torch.where(lengths > 30, 8, 4)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention of one query per row over S keys.

    q: (B, D); k, v: (B, S, D); mask: (B, S) bool, True = may attend.
    Returns (out (B, D), weights (B, H, S)); a row with no key gives out = 0, weights = 0.
    """
    B, S, D = k.shape
    H = num_heads
    qh = q.view(B, H, 1, D // H)  # (B, H, 1, D/H)
    kh = k.view(B, S, H, D // H).transpose(1, 2)  # (B, H, S, D/H)
    vh = v.view(B, S, H, D // H).transpose(1, 2)  # (B, H, S, D/H)
    scores = (qh @ kh.transpose(-1, -2)).squeeze(2) / math.sqrt(D // H)  # (B, H, S)
    scores = scores.masked_fill(~mask[:, None, :], -torch.inf)
    any_key = mask.any(1)[:, None, None]  # (B, 1, 1)
    weights = torch.softmax(torch.where(any_key, scores, torch.zeros_like(scores)), dim=-1)
    weights = torch.where(any_key, weights, torch.zeros_like(weights))  # (B, H, S)
    out = (weights[:, :, None, :] @ vh).squeeze(2)  # (B, H, D/H)
    return out.reshape(B, D), weights


def last_items(h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """h_L for each user: (B, D)."""
    return h[torch.arange(len(h), device=h.device), lengths - 1]


def window_positions(lengths: torch.Tensor, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of each user's last W items (ending at the query item) and their validity.

    lengths, windows: (B,) int64 -> positions (B, Wmax) int64 (clamped to 0), valid (B, Wmax) bool.
    """
    w_max = int(windows.max())
    offsets = torch.arange(w_max, device=lengths.device)  # (Wmax,)
    pos = (lengths - windows)[:, None] + offsets[None, :]  # (B, Wmax)
    valid = (offsets[None, :] < windows[:, None]) & (pos >= 0)
    return torch.minimum(pos, lengths[:, None] - 1).clamp(min=0), valid


def gather_items(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, L, D), positions (B, S) -> (B, S, D)."""
    return x.gather(1, positions[..., None].expand(-1, -1, x.shape[-1]))


def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor, windows: torch.Tensor, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eqs. 6-7: attention over the last W items. q (B, D) projected query; k, v (B, L, D)."""
    pos, valid = window_positions(lengths, windows)
    return attend(q, gather_items(k, pos), gather_items(v, pos), valid, num_heads)


def block_layout(lengths: torch.Tensor, max_len: int, block_size: int) -> tuple[int, torch.Tensor]:
    """(number of blocks nB, block validity (B, nB) bool): block j holds items [j*b, (j+1)*b)."""
    num_blocks = -(-max_len // block_size)
    starts = torch.arange(num_blocks, device=lengths.device) * block_size
    return num_blocks, starts[None, :] < lengths[:, None]


def block_vectors(
    h: torch.Tensor, lengths: torch.Tensor, block_size: int, phi: nn.Linear | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8: b_j = phi(items of block j). phi: Linear(b*D -> D) over the block's items laid
    side by side (padding slots zero), or None for mean pooling over the block's real items.

    h: (B, L, D) -> blocks (B, nB, D), block_mask (B, nB) bool.
    """
    B, L, D = h.shape
    num_blocks, block_mask = block_layout(lengths, L, block_size)
    item_mask = torch.arange(L, device=h.device)[None, :] < lengths[:, None]  # (B, L)
    x = torch.where(item_mask[..., None], h, torch.zeros_like(h))
    pad = num_blocks * block_size - L
    x = F.pad(x, (0, 0, 0, pad)).view(B, num_blocks, block_size, D)  # (B, nB, b, D)
    if phi is None:
        counts = F.pad(item_mask, (0, pad)).view(B, num_blocks, block_size).sum(-1, keepdim=True)  # (B, nB, 1)
        blocks = x.sum(2) / counts.clamp(min=1)
    else:
        blocks = phi(x.reshape(B, num_blocks, block_size * D))
    return torch.where(block_mask[..., None], blocks, torch.zeros_like(blocks)), block_mask


def block_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor, num_heads: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 9: attention over block vectors. Returns z_long (B, D) and a_block (B, nB), the
    block weights averaged over heads (what eq. 10 ranks)."""
    z, weights = attend(q, k, v, block_mask, num_heads)
    return z, weights.mean(1)


def select_blocks(a_block: torch.Tensor, block_mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 10: the top-k blocks by weight; ties go to the more recent block (deterministic).

    Returns indices (B, k') and validity (B, k') with k' = min(k, nB); a user with fewer than
    k real blocks gets invalid slots.
    """
    B, nB = a_block.shape
    kk = min(k, nB)
    scores = a_block.masked_fill(~block_mask, -1.0)
    reversed_scores = scores.flip(1)  # a stable sort of the reversed row puts later blocks first on ties
    order = torch.sort(reversed_scores, dim=1, descending=True, stable=True).indices[:, :kk]
    idx = nB - 1 - order
    return idx, block_mask.gather(1, idx)


def selected_positions(
    idx: torch.Tensor, selected: torch.Tensor, lengths: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Item positions of the selected blocks, concatenated (eq. 11): (B, k*b) and validity."""
    offsets = torch.arange(block_size, device=idx.device)
    pos = (idx[..., None] * block_size + offsets).flatten(1)  # (B, k*b)
    valid = selected.repeat_interleave(block_size, dim=1) & (pos < lengths[:, None])
    return pos.clamp(max=max(int(lengths.max()) - 1, 0)), valid


def selective_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lengths: torch.Tensor,
    idx: torch.Tensor,
    selected: torch.Tensor,
    block_size: int,
    num_heads: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eqs. 11-12: item-level attention inside the selected blocks.

    Returns z_core (B, D), the item positions (B, k*b) and their weights averaged over heads.
    """
    pos, valid = selected_positions(idx, selected, lengths, block_size)
    z, weights = attend(q, gather_items(k, pos), gather_items(v, pos), valid, num_heads)
    return z, pos, weights.mean(1)


def gate(q: torch.Tensor, branches: list[torch.Tensor], gate_proj: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-branch sigmoid gates from the query: sum_m g_m z_m. Returns (B, D) and gates (B, M)."""
    g = torch.sigmoid(gate_proj(q))  # (B, M)
    return (torch.stack(branches, dim=1) * g[..., None]).sum(1), g
