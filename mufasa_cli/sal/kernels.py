"""How a SAL layer's branches are computed: three implementations of one interface.

SALLayer.mix (model.py) is the one orchestration: window, then block (which also ranks the
blocks), then selective over the blocks the ranking picked, then the gate. It calls the ops of
the kernel chosen when the layer was built; each op has one signature in every kernel and
returns its output with the explanation fields it produced:

    window(layer, x)            -> (B, Q, D), fields
    blocks(layer, x)            -> (B, Q, D), Blocks, fields
    selective(layer, x, blocks) -> (B, Q, D), fields
    full(layer, x)              -> (B, Q, D)          (attention "full", the ablation)

- Reference: the plain gather + matmul of attention.py, for checking.
- Fast: the same results by fast.py. Dense causal queries (objective `all`) project every
  item once; sparse queries (one per user) project only what they gather, and with one query
  per user the block keys are projected query-side.
- Flex: dense causal queries through FlexAttention masks (flex.py); anything else as Fast.

Legend: B users, Q queries per user, L history length, nB blocks, D model width.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from mufasa_cli.sal import fast, flex
from mufasa_cli.sal.attention import (
    attend,
    block_attention,
    block_items,
    block_vectors,
    gather_items,
    select_blocks,
    selected_positions,
    selective_attention,
    visible_blocks,
    window_attention,
    window_bias,
    window_positions,
)

if TYPE_CHECKING:
    from mufasa_cli.sal.model import QKV, SALLayer

Fields = dict[str, torch.Tensor]


@dataclass
class Inputs:
    """What one layer's branches read: the history rows h (B, L, D), the query rows q (B, Q, D)
    at positions qpos (B, Q), the lengths (B,), and whether every position is a query with the
    history row as its query row (q is h: the dense causal ops project h alone)."""

    h: torch.Tensor
    q: torch.Tensor
    lengths: torch.Tensor
    qpos: torch.Tensor
    dense: bool


@dataclass
class Blocks:
    """What the block op leaves for the selective op."""

    mask: torch.Tensor  # (B, nB) real blocks
    visible: torch.Tensor | None = None  # (B, Q', nB) blocks visible to the ranking queries
    weights: torch.Tensor | None = None  # (B, Q', nB) a_block of the ranking queries
    vectors: torch.Tensor | None = None  # (B, nB, D) block vectors (eq. 8)
    attend: Callable | None = None  # (query, visible, qpos) -> (output, weights) with the block projections
    q: torch.Tensor | None = None  # flex: the block branch's projected queries and keys
    k: torch.Tensor | None = None


class Reference:
    name = "reference"

    def full(self, layer: SALLayer, x: Inputs) -> torch.Tensor:
        p, upto = layer.full, _upto(x)
        return attend(p.q(x.q), p.k(x.h), p.v(x.h), upto, layer.cfg.num_heads)[0]

    def window(self, layer: SALLayer, x: Inputs) -> tuple[torch.Tensor, Fields]:
        p, windows = layer.proj["window"], layer.windows(x.qpos)
        out, w = window_attention(
            p.q(x.q), p.k(x.h), p.v(x.h), x.qpos, windows, layer.cfg.num_heads, layer.window_recency
        )
        return out, {"window_positions": window_positions(x.qpos, windows)[0], "window_weights": w.mean(1)}

    def blocks(self, layer: SALLayer, x: Inputs) -> tuple[torch.Tensor, Blocks, Fields]:
        cfg, p = layer.cfg, layer.proj["block"]
        vectors, mask = block_vectors(x.h, x.lengths, cfg.block_size, layer.phi)  # eq. 8
        visible = visible_blocks(mask, x.qpos, cfg.block_size, layer.causal)
        bias = layer.block_bias(x.qpos, mask.shape[1])
        out, a = block_attention(p.q(x.q), p.k(vectors), p.v(vectors), visible, cfg.num_heads, bias)
        return out, Blocks(mask, visible, a, vectors), {"block_weights": a}

    def selective(self, layer: SALLayer, x: Inputs, blocks: Blocks) -> tuple[torch.Tensor, Fields]:
        cfg, H = layer.cfg, layer.cfg.num_heads
        a_block, visible = blocks.weights, blocks.visible
        if cfg.selection == "query_block":  # every query ranks by its query block's first query
            q_lead, visible = layer.leaders(x.h, x.qpos, blocks.mask)
            p = layer.proj["block"]
            bias = layer.block_bias(x.qpos, blocks.mask.shape[1])  # a leader is in its queries' block
            a_block = block_attention(p.q(q_lead), p.k(blocks.vectors), p.v(blocks.vectors), visible, H, bias)[1]
        p = layer.proj["selective"]
        idx, valid = select_blocks(a_block, visible, cfg.num_selected)  # eq. 10
        out, pos, w = selective_attention(p.q(x.q), p.k(x.h), p.v(x.h), x.qpos, idx, valid, cfg.block_size, H)
        return out, {
            "selected_blocks": idx,
            "selected_valid": valid,
            "selective_positions": pos,
            "selective_weights": w,
        }


class Fast(Reference):
    name = "fast"

    def full(self, layer: SALLayer, x: Inputs) -> torch.Tensor:
        p = layer.full
        return fast.attend_shared(p.q(x.q), p.k(x.h), p.v(x.h), _upto(x), layer.cfg.num_heads)[0]

    def window(self, layer: SALLayer, x: Inputs) -> tuple[torch.Tensor, Fields]:
        p, windows, H = layer.proj["window"], layer.windows(x.qpos), layer.cfg.num_heads
        if x.dense:
            return fast.band_window_attention(x.h, _maps(p), windows, H, layer.window_recency), {}
        pos, valid = window_positions(x.qpos, windows)
        near = gather_items(x.h, pos)  # (B, Q, W, D)
        bias = window_bias(layer.window_recency, x.qpos, pos)
        out, w = fast.attend_per_query(p.q(x.q), p.k(near), p.v(near), valid, H, bias)
        return out, {"window_weights": w, "window_positions": pos}

    def blocks(self, layer: SALLayer, x: Inputs) -> tuple[torch.Tensor, Blocks, Fields]:
        cfg, H, b = layer.cfg, layer.cfg.num_heads, layer.cfg.block_size
        p = layer.proj["block"]
        shared = cfg.selection == "query_block"
        # one query per user (last, embed): project the query, not every block
        query_side = x.qpos.shape[1] == 1 and layer.phi is not None
        vectors = None
        # attend_blocks(query rows, their visible blocks, their positions) -> (out, weights)
        if query_side:
            items, mask = block_items(x.h, x.lengths, b)

            def attend_blocks(query: torch.Tensor, visible: torch.Tensor, qpos: torch.Tensor):
                bias = layer.block_bias(qpos, items.shape[1])
                w_k, w_v = p.k.weight, p.v.weight
                return fast.query_side_block_attention(p.q(query), items, visible, layer.phi, w_k, w_v, H, bias)
        else:
            vectors, mask = block_vectors(x.h, x.lengths, b, layer.phi)  # eq. 8

            def attend_blocks(query: torch.Tensor, visible: torch.Tensor, qpos: torch.Tensor):
                bias = layer.block_bias(qpos, vectors.shape[1])
                return fast.attend_shared(p.q(query), p.k(vectors), p.v(vectors), visible, H, bias)

        if x.dense and layer.causal and not query_side:
            # a_block of every query, or with shared selection of each query block's first
            every = b if shared else 1
            out, weights = fast.causal_block_attention(
                x.h, p.q.weight, p.k(vectors), p.v(vectors), mask, b, H, every, slope=layer.block_recency
            )
            visible = visible_blocks(mask, x.qpos[:, ::every], b, layer.causal)
        else:
            visible = visible_blocks(mask, x.qpos, b, layer.causal)
            out, w = attend_blocks(x.q, visible, x.qpos)
            weights = w.mean(1)
        return out, Blocks(mask, visible, weights, vectors, attend_blocks), {"block_weights": weights}

    def selective(self, layer: SALLayer, x: Inputs, blocks: Blocks) -> tuple[torch.Tensor, Fields]:
        cfg, H, b = layer.cfg, layer.cfg.num_heads, layer.cfg.block_size
        shared = cfg.selection == "query_block"
        a_block, visible = blocks.weights, blocks.visible  # shared and dense: already per query block
        if shared and not x.dense:
            q_lead, visible = layer.leaders(x.h, x.qpos, blocks.mask)
            a_block = blocks.attend(q_lead, visible, x.qpos)[1].mean(1)  # a leader is in its queries' block
        p = layer.proj["selective"]
        idx, valid = fast.select_blocks(a_block, visible, cfg.num_selected)  # eq. 10
        if shared and x.dense:  # gather once per query block
            out = fast.shared_selective_attention(x.h, _maps(p), idx, valid, b, H)
            L = x.h.shape[1]
            return out, {"selected_blocks": _per_query(idx, b, L), "selected_valid": _per_query(valid, b, L)}
        pos, item_ok = selected_positions(idx, valid, x.qpos, b)
        if x.dense:
            keys, values = fast.gather_blocks(p.k(x.h), idx, b), fast.gather_blocks(p.v(x.h), idx, b)
        else:
            picked = fast.gather_blocks(x.h, idx, b)  # (B, Q, k*b, D)
            keys, values = p.k(picked), p.v(picked)
        out, w = fast.attend_per_query(p.q(x.q), keys, values, item_ok, H)
        return out, {
            "selected_blocks": idx,
            "selected_valid": valid,
            "selective_weights": w,
            "selective_positions": pos,
        }


class Flex(Fast):
    name = "flex"
    full = Reference.full  # attention "full" was never a FlexAttention path

    @staticmethod
    def _masks(layer: SALLayer, x: Inputs) -> bool:
        """FlexAttention serves dense causal queries without the recency bias (cfg.recency);
        anything else goes the Fast way."""
        return layer.causal and x.dense and not layer.cfg.recency

    def window(self, layer: SALLayer, x: Inputs) -> tuple[torch.Tensor, Fields]:
        if not self._masks(layer, x):
            return super().window(layer, x)
        p = layer.proj["window"]
        return flex.window_attention(p.q(x.q), p.k(x.h), p.v(x.h), layer.windows(x.qpos), layer.cfg.num_heads), {}

    def blocks(self, layer: SALLayer, x: Inputs) -> tuple[torch.Tensor, Blocks, Fields]:
        if not self._masks(layer, x):
            return super().blocks(layer, x)
        cfg, p = layer.cfg, layer.proj["block"]
        vectors, mask = block_vectors(x.h, x.lengths, cfg.block_size, layer.phi)  # eq. 8
        q_block, k_block = p.q(x.q), p.k(vectors)
        out = flex.block_attention(q_block, k_block, p.v(vectors), mask, cfg.block_size, cfg.num_heads)
        return out, Blocks(mask, vectors=vectors, q=q_block, k=k_block), {}

    def selective(self, layer: SALLayer, x: Inputs, blocks: Blocks) -> tuple[torch.Tensor, Fields]:
        if not self._masks(layer, x):
            return super().selective(layer, x, blocks)
        cfg, H, b = layer.cfg, layer.cfg.num_heads, layer.cfg.block_size
        every = b if cfg.selection == "query_block" else 1  # rank at each query / query block's first
        a_block = flex.block_weights(blocks.q[:, ::every], blocks.k, blocks.mask, x.qpos[0, ::every], b, H)
        visible = visible_blocks(blocks.mask, x.qpos[:, ::every], b, layer.causal)
        idx, valid = fast.select_blocks(a_block, visible, cfg.num_selected)  # eq. 10
        p = layer.proj["selective"]
        out = flex.selective_attention(p.q(x.q), p.k(x.h), p.v(x.h), idx, valid, b, H, every)
        L = x.h.shape[1]
        return out, {
            "block_weights": a_block,
            "selected_blocks": _per_query(idx, every, L),
            "selected_valid": _per_query(valid, every, L),
        }


class Compiled(Fast):
    """The fast ops; SALEncoder.encode runs them through torch.compile (Inductor fuses them)."""

    name = "compiled"


KERNEL_OPS: dict[str, Reference] = {k.name: k for k in (Reference(), Fast(), Compiled(), Flex())}


def _maps(p: QKV) -> fast.Maps:
    """The weights of a branch's W^Q, W^K, W^V, for the dense causal functions of fast.py,
    which project the history rows themselves (dense queries are the history rows: x.q is x.h)."""
    return p.q.weight, p.k.weight, p.v.weight


def _upto(x: Inputs) -> torch.Tensor:
    """(B, Q, L): the history items each query may see (itself and everything before)."""
    return torch.arange(x.h.shape[1], device=x.h.device) <= x.qpos[..., None]


def _per_query(t: torch.Tensor, every: int, L: int) -> torch.Tensor:
    """Per-query-block values repeated for each of the block's queries, cut to L."""
    return t.repeat_interleave(every, 1)[:, :L]
