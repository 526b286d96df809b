"""The SAL's settings (paper section 3.2), beside the model that reads them (sal/model.py).
Light: no torch, so the CLI and the recipe loader import it at start."""

from __future__ import annotations

from dataclasses import dataclass

from mufasa_cli.checks import positive as _positive
from mufasa_cli.errors import RecipeError

OBJECTIVES = ("last", "all")
BRANCHES = ("window", "block", "selective")
SELECTIONS = ("query", "query_block")


@dataclass(frozen=True)
class SALConfig:
    """The Sparse Attention-based Alignment Layer (paper section 3.2)."""

    d_model: int = 64
    num_heads: int = 2
    block_size: int = 8  # b: items per interest block (eq. 8)
    num_selected: int = 4  # k: blocks attended item by item (eq. 10)
    window: int = 0  # W; 0 = the paper's protocol (8 if the history is longer than 30, else 4)
    phi: str = "linear"  # block aggregator of eq. 8: linear or mean
    attention: str = "sparse"  # sparse (the three branches), full (one level over all items), mean
    without: tuple[str, ...] = ()  # branches switched off (ablations)
    max_len: int = 1024
    # beyond the paper: learned position rows; positions past the last row share it (objective all
    # counts from the start, so a long history's recent items share one row instead of rows that
    # only the few longest users train; last counts from the end, so old items share it).
    # 0 = one row per position up to max_len
    positions: int = 0
    objective: str = "last"  # last: one query per user (the paper); all: every position a causal query
    # which queries pick the selected blocks: query (each its own top-k, the paper) or query_block
    # (objective all: the queries of each query block of b positions share the top-k of the block's
    # first query, NSA-style grouping; causal, and what makes the fast path gather once per block)
    selection: str = "query"
    # beyond the paper: dropout on the history rows h (item + position) while training, as
    # SASRec's embedding dropout (and, with stacked layers, on each sublayer's output); 0 = none
    # (the paper names no regulariser)
    dropout: float = 0.0
    # beyond the paper: SAL layers stacked as pre-norm residual blocks, each its three branches
    # and gate followed by a feed-forward sublayer of ffn_mult * d_model units (objective all);
    # 1 = the paper's single layer, u = Out(gate mix) + h_query
    layers: int = 1
    ffn_mult: int = 4
    # beyond the paper: learned recency biases, ALiBi-style, on the window scores (eqs. 6-7: head
    # e adds -s_e * (query position - key position)) and on the block scores (eq. 9: -s'_e * (the
    # query's block - j)), the slopes learned from 0 (the paper's scores); the block bias also
    # steers which blocks eq. 10 selects. The flex kernel runs it the fast way
    recency: bool = False

    def __post_init__(self) -> None:
        _positive(self, "d_model", "num_heads", "block_size", "num_selected", "max_len", "layers", "ffn_mult")
        if not 0 <= self.dropout < 1:
            raise RecipeError(f"--dropout {self.dropout}: must be in [0, 1)")
        if self.d_model % self.num_heads:
            raise RecipeError(f"d_model {self.d_model} must be divisible by num_heads {self.num_heads}")
        if not 0 <= self.positions <= self.max_len:
            raise RecipeError(f"positions {self.positions}: must be in [0, max_len {self.max_len}] (0 = max_len)")
        if self.window < 0:
            raise RecipeError(f"window {self.window}: must be >= 0 (0 = the paper's protocol)")
        if self.phi not in ("linear", "mean"):
            raise RecipeError(f"phi {self.phi!r}: choose linear or mean")
        if self.attention not in ("sparse", "full", "mean"):
            raise RecipeError(f"--attention {self.attention!r}: choose sparse, full or mean")
        bad = [w for w in self.without if w not in BRANCHES]
        if bad:
            raise RecipeError(f"--without {bad[0]!r}: choose from {', '.join(BRANCHES)}")
        if len(set(self.without)) == len(BRANCHES):
            raise RecipeError("--without: at least one branch must stay")
        if self.objective not in OBJECTIVES:
            raise RecipeError(f"--objective {self.objective!r}: choose {' or '.join(OBJECTIVES)}")
        if self.selection not in SELECTIONS:
            raise RecipeError(f"--selection {self.selection!r}: choose {' or '.join(SELECTIONS)}")
        if self.layers > 1 and self.objective != "all":
            raise RecipeError(f"sal.layers {self.layers} needs --objective all (each layer's keys are causal outputs)")
        if self.selection == "query_block" and self.objective != "all":
            raise RecipeError("--selection query_block needs --objective all (query blocks of causal queries)")
