"""The SAL encoder: item tower, history tower, the three branches, the gate (objective `last`).

Item tower e_i = A_item(z_i). History h_t = A_hist(z_{i_t}) + a position embedding counted
from the end of the sequence (the most recent item is position 0). The query is the last
history item h_L. Each branch has its own W^Q, W^K, W^V (multi-head); sigmoid gates from the
query weigh the branch outputs; u = Out(sum_m g_m z_m) + h_L.

Variants (for the ablations and the paper's Table 6): attention = "full" replaces the
branches by one attention over every history item; "mean" by mean pooling of the history;
`without` drops branches from the gate.

Legend: B users, L history length, D model width, d_z fused item width, N items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mufasa_cli.config import BRANCHES, SALConfig
from mufasa_cli.sal.attention import (
    attend,
    block_attention,
    block_vectors,
    gate,
    last_items,
    paper_window_sizes,
    select_blocks,
    selective_attention,
    window_attention,
)


@dataclass
class Explanation:
    """What one forward pass attended to, for `embed --explain` and tests."""

    block_weights: torch.Tensor | None = None  # (B, nB)
    selected_blocks: torch.Tensor | None = None  # (B, k)
    selected_valid: torch.Tensor | None = None  # (B, k)
    window_weights: torch.Tensor | None = None  # (B, H, W)
    selective_positions: torch.Tensor | None = None  # (B, k*b)
    selective_weights: torch.Tensor | None = None  # (B, k*b)
    gates: torch.Tensor | None = None  # (B, branches)


class QKV(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))


class SALEncoder(nn.Module):
    def __init__(self, z_dim: int, cfg: SALConfig):
        super().__init__()
        D = cfg.d_model
        self.cfg = cfg
        self.item_tower = nn.Sequential(nn.Linear(z_dim, D), nn.LayerNorm(D))
        self.hist_tower = nn.Sequential(nn.Linear(z_dim, D), nn.LayerNorm(D))
        self.position = nn.Embedding(cfg.max_len, D)
        nn.init.normal_(self.position.weight, std=0.02)
        self.branches = [b for b in BRANCHES if b not in cfg.without] if cfg.attention == "sparse" else []
        # block attention also ranks the blocks that the selective branch reads, so it exists
        # whenever either branch does; `without block` only drops z_long from the gate
        self.uses_blocks = bool({"block", "selective"} & set(self.branches))
        names = [b for b in BRANCHES if b in self.branches or (b == "block" and self.uses_blocks)]
        self.proj = nn.ModuleDict({b: QKV(D) for b in names})
        self.full = QKV(D) if cfg.attention == "full" else None
        self.phi = nn.Linear(cfg.block_size * D, D) if self.uses_blocks and cfg.phi == "linear" else None
        self.gate = nn.Linear(D, len(self.branches)) if self.branches else None
        self.out = nn.Linear(D, D)

    def items(self, z: torch.Tensor) -> torch.Tensor:
        """e = A_item(z): (N, d_z) -> (N, D)."""
        return self.item_tower(z)

    def history(self, z_hist: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, L, d_z) right-padded fused vectors -> h (B, L, D) with positions from the end."""
        B, L, _ = z_hist.shape
        from_end = (lengths[:, None] - 1 - torch.arange(L, device=z_hist.device)[None, :]).clamp(min=0)
        return self.hist_tower(z_hist) + self.position(from_end.clamp(max=self.cfg.max_len - 1))

    def users(self, z_hist: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, Explanation]:
        """u (B, D) for the histories z_hist (B, L, d_z) with lengths (B,) >= 1."""
        cfg, H = self.cfg, self.cfg.num_heads
        h = self.history(z_hist, lengths)
        q = last_items(h, lengths)  # (B, D)
        ex = Explanation()
        B, L, D = h.shape
        if cfg.attention == "mean":
            mask = (torch.arange(L, device=h.device)[None, :] < lengths[:, None]).float()
            pooled = (h * mask[..., None]).sum(1) / lengths[:, None]
            return self.out(pooled) + q, ex
        if cfg.attention == "full":
            p = self.full
            mask = torch.arange(L, device=h.device)[None, :] < lengths[:, None]
            z, _ = attend(p.q(q), p.k(h), p.v(h), mask, H)
            return self.out(z) + q, ex
        outs: dict[str, torch.Tensor] = {}
        if "window" in self.branches:
            p = self.proj["window"]
            windows = torch.full_like(lengths, cfg.window) if cfg.window else paper_window_sizes(lengths)
            outs["window"], ex.window_weights = window_attention(p.q(q), p.k(h), p.v(h), lengths, windows, H)
        if self.uses_blocks:
            p = self.proj["block"]
            blocks, block_mask = block_vectors(h, lengths, cfg.block_size, self.phi)  # eq. 8
            outs["block"], ex.block_weights = block_attention(p.q(q), p.k(blocks), p.v(blocks), block_mask, H)
        if "selective" in self.branches:
            p = self.proj["selective"]
            idx, valid = select_blocks(ex.block_weights, block_mask, cfg.num_selected)  # eq. 10
            ex.selected_blocks, ex.selected_valid = idx, valid
            outs["selective"], ex.selective_positions, ex.selective_weights = selective_attention(
                p.q(q), p.k(h), p.v(h), lengths, idx, valid, cfg.block_size, H
            )
        outs = [outs[b] for b in self.branches]
        mixed, ex.gates = gate(q, outs, self.gate)
        return self.out(mixed) + q, ex
