"""The SAL branches for dense causal queries (objective `all`) through FlexAttention block
masks: the GPU path. Each branch is one `flex_attention` call whose mask says which keys a
query may see, so the kernel skips every tile of the (L x keys) score matrix that the mask
leaves empty and never stores the scores:
- window: key t for query p when 0 <= p - t < W_p;
- block: block vector j for query p when block j holds a real item and is complete at p;
- selective: item t for query p when t's block is among p's selected blocks (the chosen
  table: per query, or per query block with `selection: query_block`) and t <= p.
The block weights that rank the blocks (eq. 10) are not differentiated (top-k is discrete),
so they are recomputed without gradients: only for each query block's first query under
`query_block`, in query chunks for every query otherwise.

FlexAttention has a backward only on CUDA (torch 2.13); on CPU it runs forward only, in
eager mode, and that is how tests/sal/test_flex.py checks this path against the reference.
On CUDA it is compiled (`torch.compile(flex_attention)`). **No GPU run has been made**: the
CUDA training path is untested, which is why `--kernel auto` never picks it.

Legend: B users, H heads, L history length, dh head width, b block size, nB blocks,
nG query blocks, kk selected blocks.
"""

from __future__ import annotations

import functools
import math

import torch

from mufasa_cli.sal.attention import visible_blocks
from mufasa_cli.sal.fast import heads, masked_softmax, merge_heads

TILE = 128  # FlexAttention's tile (BLOCK_SIZE); the masks are exact below it


def available() -> bool:
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _flex_attention(device_type: str):
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False) if device_type == "cuda" else flex_attention


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask_mod, scale: float) -> torch.Tensor:
    """flex_attention of q (B, H, Lq, dh) over k, v (B, H, Lk, dh) under mask_mod; a query with
    no key gets zeros."""
    from torch.nn.attention.flex_attention import create_block_mask

    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    block_mask = create_block_mask(mask_mod, B, None, Lq, Lk, device=q.device, BLOCK_SIZE=TILE)
    return _flex_attention(q.device.type)(q, k, v, block_mask=block_mask, scale=scale)


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, windows: torch.Tensor, num_heads: int):
    """Eqs. 6-7 for dense causal queries. q, k, v: (B, L, D), windows (B, L) -> (B, L, D)."""
    L, dh = q.shape[1], q.shape[2] // num_heads

    def mask_mod(b, h, qi, ki):
        return (qi >= ki) & (qi - ki < windows[b, qi])

    out = _attend(heads(q, num_heads), heads(k, num_heads), heads(v, num_heads), mask_mod, 1 / math.sqrt(dh))
    return merge_heads(out, L)


def block_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask: torch.Tensor, block_size: int, num_heads: int
) -> torch.Tensor:
    """Eq. 9 for dense causal queries over block vectors k, v (B, nB, D): z_long (B, L, D)."""
    L, dh = q.shape[1], q.shape[2] // num_heads

    def mask_mod(b, h, qi, ki):
        return ((ki + 1) * block_size - 1 <= qi) & block_mask[b, ki]

    out = _attend(heads(q, num_heads), heads(k, num_heads), heads(v, num_heads), mask_mod, 1 / math.sqrt(dh))
    return merge_heads(out, L)


@torch.no_grad()
def block_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    block_mask: torch.Tensor,
    positions: torch.Tensor,
    block_size: int,
    num_heads: int,
    chunk: int = 1024,
) -> torch.Tensor:
    """a_block (B, P, nB), the block weights averaged over heads, for the queries q (B, P, D) at
    `positions` (P,) only, in chunks: what top-k ranks, without gradients."""
    B, P, D = q.shape
    dh = D // num_heads
    kh = heads(k, num_heads)
    out = []
    for start in range(0, P, chunk):
        qh = heads(q[:, start : start + chunk] / math.sqrt(dh), num_heads)
        visible = visible_blocks(block_mask, positions[start : start + chunk].expand(B, -1), block_size, causal=True)
        out.append(masked_softmax(qh @ kh.transpose(-1, -2), visible[:, None]).mean(1))
    return torch.cat(out, 1)


def selective_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    selected: torch.Tensor,
    block_size: int,
    num_heads: int,
    group: int,
) -> torch.Tensor:
    """Eqs. 11-12 for dense causal queries: query p attends to the items (at or before p) of
    the blocks idx[:, p // group] (B, L / group, kk) that are valid. group = 1: each query its
    own selection; group = b: one per query block. q, k, v: (B, L, D) -> (B, L, D)."""
    B, L, D = q.shape
    nB = -(-L // block_size)
    dh = D // num_heads
    chosen = torch.zeros(B, idx.shape[1], nB + 1, dtype=torch.bool, device=q.device)
    chosen.scatter_(2, torch.where(selected, idx, nB), True)  # invalid slots land in column nB
    chosen = chosen[..., :nB].contiguous()  # (B, L / group, nB)

    def mask_mod(b, h, qi, ki):
        return (ki <= qi) & chosen[b, qi // group, ki // block_size]

    out = _attend(heads(q, num_heads), heads(k, num_heads), heads(v, num_heads), mask_mod, 1 / math.sqrt(dh))
    return merge_heads(out, L)
