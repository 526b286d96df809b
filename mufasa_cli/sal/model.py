"""The SAL encoder: item tower, history tower, the three branches, the gate.

Item tower e_i = A_item(z_i). History h_t = A_hist(z_{i_t}) + a position embedding. Queries are
history items: objective `last` (the paper) has one query per user, the last item, and counts
positions from the end of the sequence (the most recent item is position 0); objective `all`
makes every position a causal query and counts positions from the start, so that an earlier
query's output never depends on later items. Each branch has its own W^Q, W^K, W^V (multi-head);
sigmoid gates from the query weigh the branch outputs; u = Out(sum_m g_m z_m) + h_query.
u and e are L2-normalised, so u . e is a cosine and the softmax temperature sets the logit scale
(unnormalised, tau = 0.07 gave initial losses above 200 and many wasted epochs).

Beyond the paper, cfg.layers > 1 stacks SAL layers (SALLayer) as pre-norm residual blocks:
x = h; each layer adds Out(mix(LN(x))) and then a feed-forward FFN(LN(x)) to x, every position a
causal query (objective `all`); u = LN(x) at the query, unit length.

Variants (for the ablations and the paper's Table 6): attention = "full" replaces the
branches by one attention over every history item up to the query; "mean" by mean pooling of
those items; `without` drops branches from the gate.

Legend: B users, Q queries per user, L history length, D model width, d_z fused item width,
N items.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from mufasa_cli.errors import RecipeError
from mufasa_cli.sal import fast
from mufasa_cli.sal.attention import gate, paper_window_sizes, recency_bias, visible_blocks
from mufasa_cli.sal.config import BRANCHES, SALConfig
from mufasa_cli.sal.kernels import KERNEL_OPS, Inputs

KERNELS = ("auto", "reference", "fast", "compiled", "flex")


def resolve_kernel(kernel: str) -> str:
    """auto -> fast: it computes every configuration, on CPU and CUDA alike, to the reference's
    results (tests/sal/test_fast.py); reference stays for checking it. compiled is fast through
    torch.compile (Inductor), fast where no C++ compiler is found (compiler_available). flex
    (FlexAttention, the GPU path for objective `all`) is never picked by auto: no GPU run has
    checked it."""
    if kernel not in KERNELS:
        raise RecipeError(f"--kernel {kernel!r}: choose {', '.join(KERNELS)}")
    if kernel == "compiled" and not compiler_available():
        return "fast"
    return "fast" if kernel == "auto" else kernel


def compiler_available() -> bool:
    """Whether torch.compile's CPU backend can build its C++ kernels here: a C++ compiler on
    the PATH (CXX, or c++ / g++ / clang++)."""
    import os
    import shutil

    return any(shutil.which(c) for c in (os.environ.get("CXX", ""), "c++", "g++", "clang++") if c)


@dataclass
class Explanation:
    """What one forward pass attended to, for `embed --explain` and tests."""

    block_weights: torch.Tensor | None = None  # (B, Q, nB)
    selected_blocks: torch.Tensor | None = None  # (B, Q, k)
    selected_valid: torch.Tensor | None = None  # (B, Q, k)
    window_positions: torch.Tensor | None = None  # (B, Q, W)
    window_weights: torch.Tensor | None = None  # (B, Q, W), averaged over heads
    selective_positions: torch.Tensor | None = None  # (B, Q, k*b)
    selective_weights: torch.Tensor | None = None  # (B, Q, k*b)
    gates: torch.Tensor | None = None  # (B, Q, branches)


class QKV(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.q, self.k, self.v = (nn.Linear(dim, dim, bias=False) for _ in range(3))


class SALLayer(nn.Module):
    """One SAL layer: the three branches and the gate (or, for the ablations, full attention or
    mean pooling over the history) mixing a history into one vector per query.

    mix() returns that vector before the output projection `out`; the encoder adds it to its
    residual stream. Stacked layers (cfg.layers > 1, beyond the paper) are pre-norm residual
    blocks, each with a feed-forward sublayer (`ffn`) and the LayerNorms `norm1`, `norm2`."""

    def __init__(self, cfg: SALConfig, stacked: bool = False, kernel: str = "auto"):
        super().__init__()
        D = cfg.d_model
        self.cfg = cfg
        self.branches = [b for b in BRANCHES if b not in cfg.without] if cfg.attention == "sparse" else []
        # block attention also ranks the blocks that the selective branch reads, so it exists
        # whenever either branch does; `without block` only drops z_long from the gate
        self.uses_blocks = bool({"block", "selective"} & set(self.branches))
        names = [b for b in BRANCHES if b in self.branches or (b == "block" and self.uses_blocks)]
        self.proj = nn.ModuleDict({b: QKV(D) for b in names})
        self.full = QKV(D) if cfg.attention == "full" else None
        self.phi = nn.Linear(cfg.block_size * D, D) if self.uses_blocks and cfg.phi == "linear" else None
        self.gate = nn.Linear(D, len(self.branches)) if self.branches else None
        # beyond the paper (cfg.recency): each head's recency slope on the window and block scores, from 0
        slopes = lambda used: nn.Parameter(torch.zeros(cfg.num_heads)) if cfg.recency and used else None  # noqa: E731
        self.window_recency = slopes("window" in self.branches)
        self.block_recency = slopes(self.uses_blocks)
        self.out = nn.Linear(D, D)
        self.causal = cfg.objective == "all"
        self.kernel = kernel  # chooses self.ops (kernels.py): same results, not saved
        if stacked:
            self.norm1, self.norm2 = nn.LayerNorm(D), nn.LayerNorm(D)
            self.ffn = nn.Sequential(nn.Linear(D, cfg.ffn_mult * D), nn.GELU(), nn.Linear(cfg.ffn_mult * D, D))

    @property
    def kernel(self) -> str:
        """How the branches are computed (KERNELS): same results, not saved."""
        return self.ops.name

    @kernel.setter
    def kernel(self, kernel: str) -> None:
        self.ops = KERNEL_OPS[resolve_kernel(kernel)]  # compiled: the fast ops, compiled by the encoder

    def mix(
        self, h: torch.Tensor, q: torch.Tensor, lengths: torch.Tensor, qpos: torch.Tensor
    ) -> tuple[torch.Tensor, Explanation]:
        """h (B, L, D) the history rows, q (B, Q, D) the query rows at positions qpos (B, Q) ->
        the mixed branch outputs (B, Q, D) and what they attended to. The one orchestration
        of the branches; the kernel's ops (kernels.py) compute each."""
        cfg = self.cfg
        B, L, D = h.shape
        if cfg.attention == "mean":
            real = (torch.arange(L, device=h.device)[None, :] < lengths[:, None]).to(h.dtype)
            running = (h * real[..., None]).cumsum(1)  # (B, L, D)
            mean = running[torch.arange(B, device=h.device)[:, None], qpos] / (qpos + 1)[..., None].to(h.dtype)
            return mean, Explanation()
        # dense: every history row is its own query (q is h), the fast kernel's causal paths
        x = Inputs(h, q, lengths, qpos, q is h and fast.dense_queries(qpos, L))
        if cfg.attention == "full":
            return self.ops.full(self, x), Explanation()
        outs: dict[str, torch.Tensor] = {}
        fields: dict[str, torch.Tensor] = {}
        if "window" in self.branches:
            outs["window"], more = self.ops.window(self, x)
            fields.update(more)
        if self.uses_blocks:  # the block op also ranks the blocks the selective branch reads
            outs["block"], blocks, more = self.ops.blocks(self, x)
            fields.update(more)
        if "selective" in self.branches:
            outs["selective"], more = self.ops.selective(self, x, blocks)
            fields.update(more)
        mixed, gates = gate(q, [outs[b] for b in self.branches], self.gate)
        return mixed, Explanation(gates=gates, **fields)

    def block_bias(self, qpos: torch.Tensor, num_blocks: int) -> torch.Tensor | None:
        """The recency bias (B, H, Q, nB) on the block scores of queries at qpos (B, Q), or None
        without cfg.recency (attention.recency_bias)."""
        if self.block_recency is None:
            return None
        return recency_bias(self.block_recency, qpos, num_blocks, self.cfg.block_size)

    def windows(self, qpos: torch.Tensor) -> torch.Tensor:
        """Each query's window W: cfg.window, or the paper's protocol when it is 0."""
        return torch.full_like(qpos, self.cfg.window) if self.cfg.window else paper_window_sizes(qpos + 1)

    def leaders(
        self, h: torch.Tensor, qpos: torch.Tensor, block_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """selection query_block: for each query, its query block's first query, whose top-k it
        uses: that query's vector (B, Q, D) and the blocks visible to it (B, Q, nB)."""
        lead = qpos // self.cfg.block_size * self.cfg.block_size
        q_lead = h[torch.arange(len(h), device=h.device)[:, None], lead]
        return q_lead, visible_blocks(block_mask, lead, self.cfg.block_size, self.causal)


class SALEncoder(nn.Module):
    """The SAL: item and history towers, positions, and cfg.layers SAL layers whose branches
    are computed by `kernel` (auto = fast; reference, flex), chosen here and changeable
    later through `.kernel` (parity checks switch it on one set of weights)."""

    def __init__(self, z_dim: int, cfg: SALConfig, kernel: str = "auto"):
        super().__init__()
        D = cfg.d_model
        self.cfg = cfg
        self.item_tower = nn.Sequential(nn.Linear(z_dim, D), nn.LayerNorm(D))
        self.hist_tower = nn.Sequential(nn.Linear(z_dim, D), nn.LayerNorm(D))
        self.position = nn.Embedding(cfg.positions or cfg.max_len, D)
        nn.init.normal_(self.position.weight, std=0.02)
        self.drop = nn.Dropout(cfg.dropout)  # on h while training; the identity in eval mode
        stacked = cfg.layers > 1
        self.layers = nn.ModuleList(SALLayer(cfg, stacked, kernel) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(D) if stacked else None  # the stack's final pre-norm
        self.causal = cfg.objective == "all"
        self._compiled = None  # encode() through torch.compile, built on first use (kernel compiled)

    # the first layer's parts, under the names of the one-layer model of the paper
    branches = property(lambda self: self.layers[0].branches)
    uses_blocks = property(lambda self: self.layers[0].uses_blocks)
    proj = property(lambda self: self.layers[0].proj)
    full = property(lambda self: self.layers[0].full)

    @property
    def kernel(self) -> str:
        """How the branches are computed (KERNELS): same results, not saved."""
        return self.layers[0].kernel

    @kernel.setter
    def kernel(self, kernel: str) -> None:
        for layer in self.layers:
            layer.kernel = kernel
        self._compiled = None  # built on the first encode() with the compiled kernel

    def items(self, z: torch.Tensor) -> torch.Tensor:
        """e = A_item(z), unit length: (N, d_z) -> (N, D)."""
        return F.normalize(self.item_tower(z), dim=-1)

    def history(self, z_hist: torch.Tensor, lengths: torch.Tensor, towered: bool = False) -> torch.Tensor:
        """(B, L, d_z) right-padded fused vectors -> h (B, L, D) with their position embeddings.
        towered: z_hist already holds A_hist(z) (B, L, D), e.g. rows of A_hist applied once
        to the catalogue, which costs N rows instead of B * L when histories repeat items.
        In training mode, cfg.dropout zeroes entries of h (queries and keys alike)."""
        B, L, _ = z_hist.shape
        h = z_hist if towered else self.hist_tower(z_hist)
        table = self.position.weight
        last = table.shape[0] - 1  # positions past the last row share it (cfg.positions)
        if self.causal:  # counted from the start: the same row for every user, broadcast
            at = torch.arange(L, device=h.device).clamp(max=last)
            return self.drop(h + table[at])
        at = torch.arange(L, device=h.device)[None, :]
        pos = (lengths[:, None] - 1 - at).clamp(min=0, max=last)  # counted from the end
        return self.drop(table.index_select(0, pos.flatten()).view(B, L, -1).add_(h))  # add into the fresh rows

    def users(
        self, z_hist: torch.Tensor, lengths: torch.Tensor, towered: bool = False
    ) -> tuple[torch.Tensor, Explanation]:
        """u (B, D) for the histories z_hist (B, L, d_z) with lengths (B,) >= 1: the output at
        the last item, under the rule the model was trained with."""
        u, ex = self.encode(z_hist, lengths, (lengths - 1)[:, None], towered)
        return u[:, 0], ex

    def encode(
        self, z_hist: torch.Tensor, lengths: torch.Tensor, qpos: torch.Tensor, towered: bool = False
    ) -> tuple[torch.Tensor, Explanation]:
        """The outputs (B, Q, D) at query positions qpos (B, Q); see _encode. With the compiled
        kernel through torch.compile: the first call compiles for its shapes (20-90 s on 2 CPU
        cores), a call with other shapes compiles once more with dynamic shapes, after which
        new history lengths reuse it."""
        if self.kernel != "compiled":
            return self._encode(z_hist, lengths, qpos, towered)
        if self._compiled is None:
            import logging

            torch._logging.set_logs(dynamo=logging.ERROR, inductor=logging.ERROR)  # graph-break notes are noise here
            self._compiled = torch.compile(self._encode)
        return self._compiled(z_hist, lengths, qpos, towered)

    def _encode(
        self, z_hist: torch.Tensor, lengths: torch.Tensor, qpos: torch.Tensor, towered: bool = False
    ) -> tuple[torch.Tensor, Explanation]:
        """The outputs (B, Q, D) at query positions qpos (B, Q), each < its user's length; with
        objective `all`, qpos may be every position 0..L-1 for every user, padding included
        (what training passes, so that the fast kernel takes its dense path): a query past a
        user's last item attends to padding, and its output means nothing.

        One layer (the paper): u = Out(mix(h)) + h_query. Stacked layers (beyond the paper):
        x = h; each layer adds Out(mix(LN(x))) and then FFN(LN(x)) to x, every position a causal
        query but in the last layer, which computes only the queries asked for; u = LN(x)."""
        h = self.history(z_hist, lengths, towered)
        B, L, D = h.shape
        rows = torch.arange(B, device=h.device)[:, None]
        dense = fast.dense_queries(qpos, L)  # every position a query: no gather to undo
        if self.norm is None:
            q = h if dense else h[rows, qpos]  # (B, Q, D)
            mixed, ex = self.layers[0].mix(h, q, lengths, qpos)
            return self.finish(mixed, q), ex
        every = torch.arange(L, device=h.device).expand(B, L)
        x = h
        for layer in self.layers[:-1]:
            y = layer.norm1(x)
            x = x + self.drop(layer.out(layer.mix(y, y, lengths, every)[0]))
            x = x + self.drop(layer.ffn(layer.norm2(x)))
        last = self.layers[-1]
        y = last.norm1(x)
        xq, yq = (x, y) if dense else (x[rows, qpos], y[rows, qpos])
        mixed, ex = last.mix(y, yq, lengths, qpos)
        xq = xq + self.drop(last.out(mixed))
        xq = xq + self.drop(last.ffn(last.norm2(xq)))
        return F.normalize(self.norm(xq), dim=-1), ex

    def finish(self, mixed: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """The paper's one layer: u = Out(mixed) + q, unit length like e: scores u . e are
        cosines, so tau sets their scale."""
        return F.normalize(self.layers[0].out(mixed) + q, dim=-1)


def upgrade_state(state: dict) -> dict:
    """A state dict saved before layers were stacked (proj.*, phi.*, gate.*, out.*, full.* at
    the top) under the names of today's one-layer model (layers.0.*)."""
    moved = ("proj.", "phi.", "gate.", "out.", "full.")
    return {(f"layers.0.{k}" if k.startswith(moved) else k): v for k, v in state.items()}
