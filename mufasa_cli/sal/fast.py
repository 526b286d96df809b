"""The SAL branches, fast path: the same functions as `attention.py` (the reference), computed
with fewer copies. Results equal the reference's to float rounding (tests/sal/test_fast.py).

Where the time of the reference goes (profile of objective `all`, L = 8192, 2 users): copies
made by permuting per-query keys for tiny batched matmuls, a full sort for top-k, two
full-size `where`s per softmax, and gathers / scatters of single items. What this path does
instead:
- Masking: one masked_fill with the dtype's minimum instead of -inf plus two `where`s; only
  when some row has no key at all is there a multiply by "the row has a key" (such a row gets
  weights 0, never NaN).
- Per-query keys (window and selective): scores as a broadcast multiply-and-sum over the
  head dimension in the (B, Q, S, H, dh) layout the gather yields: no permute, no copy.
- Dense causal queries (objective `all`, every position a query): the window branch is
  banded attention. Queries in chunks of c = W_max attend to their chunk and the previous
  one (2c keys) through one batched matmul, masked to each query's W; nothing is gathered.
- Sparse queries (objective `last`, embed: one query per user): the window and selective
  branches gather the history vectors h first and project only what was gathered (the K/V
  maps are linear, so project-then-gather = gather-then-project): W + k*b projected rows per
  user instead of L.
- Memory of the dense causal path (objective `all`): the block, shared selective and window
  branches are autograd functions that keep their inputs and outputs (the window also its
  small weights) and recompute the rest in the backward pass: block weights chunk by chunk,
  selected blocks and key chunks gathered again, slice by slice, so that no (B, H, L, nB/2)
  weights or k-fold gathered keys stay alive.
- Selected blocks are gathered whole (rows of b*D floats) instead of item by item, and top-k
  is a `topk` over integer keys that encode (weight, block index), so ties go to the more
  recent block exactly as the reference's stable sort does.

Legend: B users, Q queries per user, L history length, D model width, H heads, dh = D / H,
b block size, nB blocks, W window, c chunk, S keys per query, kk selected blocks.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from mufasa_cli.sal.attention import block_distance


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax over `dim` of the keys that `mask` allows (broadcastable to scores); rows with no
    allowed key get zeros."""
    lowest = torch.finfo(scores.dtype).min
    weights = torch.softmax(scores.masked_fill(~mask, lowest), dim=dim)
    has_key = mask.any(dim, keepdim=True)
    if bool(has_key.all()):  # the common case: no second score-sized tensor to keep for backward
        return weights
    return weights * has_key.to(weights.dtype)


def attend_shared(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    num_heads: int,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention.attend` with keys shared by the queries: q (B, Q, D), k, v (B, S, D), mask
    (B, Q, S), bias broadcastable to (B, H, Q, S) or None.
    Returns (out (B, Q, D), weights (B, H, Q, S))."""
    B, Q, D = q.shape
    S, H = k.shape[1], num_heads
    split = lambda x, n: x.view(B, n, H, D // H).transpose(1, 2)  # noqa: E731  (B, H, n, dh)
    scores = split(q / math.sqrt(D // H), Q) @ split(k, S).transpose(-1, -2)  # (B, H, Q, S)
    if bias is not None:
        scores = scores + bias
    weights = masked_softmax(scores, mask[:, None])
    return (weights @ split(v, S)).transpose(1, 2).reshape(B, Q, D), weights


def attend_per_query(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    num_heads: int,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention.attend` with keys per query: q (B, Q, D), k, v (B, Q, S, D), mask (B, Q, S),
    bias (B, H, Q, S) or None. Returns (out (B, Q, D), weights averaged over heads (B, Q, S))."""
    B, Q, S, D = k.shape
    H, dh, n = num_heads, D // num_heads, B * Q
    # Two batched matmuls over the n = B * Q queries, on k and v as they are (n, S, D): q goes
    # in as an (H, D) block-diagonal matrix (row h holds q's head h in head h's columns), so
    # its product with k^T is every head's scores at once, and weights @ v holds each head's
    # output on its diagonal block. H times the multiply-adds of a per-head product, but no
    # (n, S, H, dh) product tensor: elementwise q * k and weights * v wrote and re-read one
    # each, forward and backward, and cost twice the time (attention benchmark, per-query keys).
    eye = torch.eye(H, dtype=q.dtype, device=q.device).view(1, H, H, 1)
    q_blocks = ((q / math.sqrt(dh)).reshape(n, H, 1, dh) * eye).view(n, H, D)
    scores = torch.bmm(q_blocks, k.reshape(n, S, D).transpose(1, 2))  # (n, H, S)
    if bias is not None:  # (B, H, Q, S)
        scores = scores + bias.transpose(1, 2).reshape(n, H, S)
    weights = masked_softmax(scores, mask.reshape(n, 1, S))
    full = torch.bmm(weights, v.reshape(n, S, D)).view(n, H, H, dh)  # [., h, h'] = head h's weights on head h''s values
    out = torch.diagonal(full, dim1=1, dim2=2).transpose(1, 2)  # (n, H, dh)
    return out.reshape(B, Q, D), weights.mean(1).view(B, Q, S)


def dense_queries(qpos: torch.Tensor, length: int) -> bool:
    """Whether every position 0..L-1 is a query, in order (objective `all`)."""
    return qpos.shape[1] == length and bool(torch.equal(qpos, torch.arange(length, device=qpos.device).expand_as(qpos)))


def heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, D) -> (B, H, L, dh), contiguous: one copy, so that later slices feed matmuls without one."""
    B, L, D = x.shape
    return x.view(B, L, num_heads, D // num_heads).transpose(1, 2).contiguous()


def merge_heads(x: torch.Tensor, length: int) -> torch.Tensor:
    """(B, H, >= L, dh) -> (B, L, D)."""
    B, H, _, dh = x.shape
    return x[:, :, :length].transpose(1, 2).reshape(B, length, H * dh)


def band_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    windows: torch.Tensor,
    num_heads: int,
    slope: torch.Tensor | None = None,
) -> torch.Tensor:
    """The window branch (eqs. 6-7) for dense causal queries: query p attends to the items
    p - W_p + 1 .. p. Queries in chunks of c = W_max attend to their chunk and the previous
    one (2c keys) through one batched matmul, masked to each query's W; the chunks go in
    slices (`_BandWindow`). q, k, v: (B, L, D), windows (B, L) -> (B, L, D); slope (H,): the
    recency bias of cfg.recency (`attention.window_bias`, with its gradient), or None."""
    B, L, D = q.shape
    H, dh = num_heads, D // num_heads
    c = max(int(windows.max()), 1)
    nC = -(-L // c)
    # chunk -1 (left of position 0) and the tail padding: zero rows, masked out
    padded = lambda x: F.pad(heads(x, H), (0, 0, c, nC * c - L))  # noqa: E731  (B, H, (nC + 1) * c, dh)
    w = F.pad(windows, (0, nC * c - L)).view(B, 1, nC, c, 1)  # padded queries: window 0, no key
    out = _BandWindow.apply(padded(q / math.sqrt(dh)), padded(k), padded(v), w, c, slope)  # (B, H, (nC + 1) * c, dh)
    return merge_heads(out[:, :, c:], L)


class _BandWindow(torch.autograd.Function):
    """Banded attention over chunks: chunk i of the queries (rows (i+1)*c .. of the padded
    (B, H, (nC+1)*c, dh) tensors) attends to key chunks i-1 and i, masked to each query's
    window w (B, 1, nC, c, 1). Slices of chunks of about SLICE_FLOATS scores each; saves its
    inputs, output and weights, and gathers the key chunks again in the backward pass."""

    SLICE_FLOATS = 1 << 20

    @staticmethod
    def _slices(qp, c):
        B, H, rows, _ = qp.shape
        nC = rows // c - 1
        step = max(1, _BandWindow.SLICE_FLOATS // (B * H * c * 2 * c))
        return [(s, min(s + step, nC)) for s in range(0, nC, step)]

    @staticmethod
    def _weights(qp, kp, vp, w, c, s, e, slope=None):
        """Query chunks s..e-1: (weights (B, H, n, c, 2c), their 2c keys and values (B, H, n, 2c, dh))."""
        B, H, _, dh = qp.shape
        n = e - s
        q = qp[:, :, (s + 1) * c : (e + 1) * c].view(B, H, n, c, dh)

        keys = _BandWindow._chunk_pairs(kp, c, s, e)
        distance = _BandWindow._distance(c, qp.device)
        left = torch.arange(2 * c, device=qp.device) < c  # keys of the previous chunk
        first = (torch.arange(s, e, device=qp.device) == 0)[:, None, None] & left  # keys left of position 0
        mask = (distance >= 0) & (distance < w[:, :, s:e]) & ~first  # (B, 1, n, c, 2c)
        scores = q @ keys.transpose(-1, -2)
        if slope is not None:  # the recency bias -slope_e * distance
            scores = scores - slope.view(1, H, 1, 1, 1) * distance.to(scores.dtype)
        return masked_softmax(scores, mask), keys, _BandWindow._chunk_pairs(vp, c, s, e)

    @staticmethod
    def _distance(c, device):
        """Query position - key position (c, 2c), for a chunk's queries and its 2c keys."""
        return torch.arange(c, device=device)[:, None] + c - torch.arange(2 * c, device=device)

    @staticmethod
    def _chunk_pairs(x, c, s, e):
        """For chunks s..e-1 of x (B, H, (nC+1)*c, dh), the rows of chunks i-1 and i: (B, H, n, 2c, dh)."""
        B, H, _, dh = x.shape
        xc = x[:, :, s * c : (e + 1) * c].view(B, H, e - s + 1, c, dh)
        return torch.cat([xc[:, :, :-1], xc[:, :, 1:]], dim=3)

    @staticmethod
    def forward(ctx, qp, kp, vp, w, c, slope):
        B, H, _, dh = qp.shape
        out = torch.zeros_like(qp)
        all_weights = []  # (B, H, n, c, 2c) per slice: 2c / dh times the size of q
        for s, e in _BandWindow._slices(qp, c):
            weights, _, values = _BandWindow._weights(qp, kp, vp, w, c, s, e, slope)
            out[:, :, (s + 1) * c : (e + 1) * c] = (weights @ values).view(B, H, -1, dh)
            all_weights.append(weights)
        ctx.save_for_backward(qp, kp, vp, out, *all_weights)
        ctx.c, ctx.with_slope = c, slope is not None
        return out

    @staticmethod
    def backward(ctx, d_out):
        qp, kp, vp, out, *all_weights = ctx.saved_tensors
        c = ctx.c
        B, H, _, dh = qp.shape
        d_q, d_k, d_v = torch.zeros_like(qp), torch.zeros_like(kp), torch.zeros_like(vp)
        d_slope = qp.new_zeros(H) if ctx.with_slope else None
        distance = _BandWindow._distance(c, qp.device).to(qp.dtype)
        delta = (d_out * out).sum(-1, keepdim=True)  # sum_j w_j dw_j of each row
        for (s, e), weights in zip(_BandWindow._slices(qp, c), all_weights, strict=True):
            n = e - s
            keys, values = _BandWindow._chunk_pairs(kp, c, s, e), _BandWindow._chunk_pairs(vp, c, s, e)
            rows = slice((s + 1) * c, (e + 1) * c)
            g = d_out[:, :, rows].view(B, H, n, c, dh)
            d_s = (g @ values.transpose(-1, -2)).sub_(delta[:, :, rows].view(B, H, n, c, 1)).mul_(weights)
            d_q[:, :, rows] = (d_s @ keys).view(B, H, -1, dh)
            if d_slope is not None:  # score -= slope_e * distance
                d_slope -= (d_s * distance).sum((0, 2, 3, 4))
            q = qp[:, :, rows].view(B, H, n, c, dh)
            for grad, part in ((d_k, d_s.transpose(-1, -2) @ q), (d_v, weights.transpose(-1, -2) @ g)):
                # keys 0..c-1 of chunk i are rows of chunk i-1, keys c..2c-1 rows of chunk i
                chunks = grad[:, :, s * c : (e + 1) * c].view(B, H, n + 1, c, dh)
                chunks[:, :, :-1] += part[:, :, :, :c]
                chunks[:, :, 1:] += part[:, :, :, c:]
        return d_q, d_k, d_v, None, None, d_slope


def select_blocks(a_block: torch.Tensor, visible: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`attention.select_blocks` by `topk` over int64 keys weight_bits * nB + index: a_block >= 0,
    so its float32 bit pattern orders like its value; the index breaks ties toward the more
    recent block; invisible blocks get keys below every visible one, recent first."""
    nB = a_block.shape[-1]
    kk = min(k, nB)
    index = torch.arange(nB, device=a_block.device)
    # invisible blocks weigh -1: one negative bit pattern below every visible block's, so
    # they order by index alone
    bits = a_block.detach().float().masked_fill(~visible, -1.0).view(torch.int32).long()
    keys = bits.mul_(nB).add_(index)
    idx = torch.topk(keys, kk, dim=-1).indices
    return idx, visible.gather(-1, idx)


def gather_blocks(x: torch.Tensor, idx: torch.Tensor, block_size: int) -> torch.Tensor:
    """The items of the blocks idx (B, Q, kk) of x (B, L, D), whole blocks at a time: (B, Q, kk*b, D)."""
    B, L, D = x.shape
    nB = -(-L // block_size)
    pad = nB * block_size - L
    rows = (F.pad(x, (0, 0, 0, pad)) if pad else x).reshape(B * nB, block_size * D)
    # one index_select over the flat block table: its backward is an index_add, where
    # rows[users, idx] would backpropagate through an accumulating index_put, several times slower
    flat = (torch.arange(B, device=x.device)[:, None, None] * nB + idx).flatten()
    picked = rows.index_select(0, flat)  # (B * Q * kk, b*D)
    return picked.view(B, idx.shape[1], idx.shape[2] * block_size, D)


def shared_selective_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    idx: torch.Tensor,
    selected: torch.Tensor,
    block_size: int,
    num_heads: int,
) -> torch.Tensor:
    """The selective branch (eqs. 11-12) for dense causal queries whose query blocks share
    their selection: query block g (positions g*b .. g*b+b-1) attends to the items of the
    blocks idx[:, g] (B, nG, kk), all complete before its first query, so no item needs a
    per-query mask. The blocks are gathered once per query block, already split into heads,
    and scored by one batched matmul of its b queries; the backward pass gathers them again
    instead of keeping them (kk times the size of k and of v). q, k, v: (B, L, D) -> (B, L, D)."""
    B, L, D = q.shape
    H, dh, b = num_heads, D // num_heads, block_size
    nG = idx.shape[1]
    # row (user, head, block) of the (B * H * nG, b * dh) block table, for every selected slot
    user_head = torch.arange(B * H, device=q.device).view(B, H, 1, 1) * nG
    rows = (user_head + idx[:, None]).flatten()  # (B * H * nG * kk,)
    table = lambda x: F.pad(heads(x, H), (0, 0, 0, nG * b - L)).view(B * H * nG, b * dh)  # noqa: E731
    qg = table(q / math.sqrt(dh)).view(B * H * nG, b, dh)
    ok = selected[:, None].expand(B, H, *selected.shape[1:]).reshape(B * H * nG, 1, -1)  # (B*H*nG, 1, kk)
    out = _SelectedBlocks.apply(qg, table(k), table(v), rows, ok, b)  # (B*H*nG, b, dh)
    return merge_heads(out.view(B, H, nG * b, dh), L)


class _SelectedBlocks(torch.autograd.Function):
    """Attention of each query group (b queries) over the items of its kk gathered blocks, as
    3-D batched matmuls (one batch entry per user, head and group): qg (G, b, dh); k_table,
    v_table (G, b*dh) with G = B*H*nG; rows (G*kk,) the table rows of each group's slots;
    ok (G, 1, kk) which slots hold a block. Saves its inputs and output only, and goes through
    the groups in slices of about GROUP_FLOATS gathered and scored floats, so that what it
    gathers never piles up (kk times the size of k and v, twice over in the backward pass)."""

    GROUP_FLOATS = 1 << 21

    @staticmethod
    def _slices(qg, ok):
        G, b, dh = qg.shape
        S = ok.shape[-1] * b
        step = max(1, _SelectedBlocks.GROUP_FLOATS // (S * (2 * dh + 2 * b)))
        return [(s, min(s + step, G)) for s in range(0, G, step)]

    @staticmethod
    def _gathered(qg, k_table, v_table, rows, ok, s, e):
        """For groups s..e-1: (weights (n, b, S), keys, values (n, S, dh)); a group with no
        block gets weights 0."""
        n, (_, b, dh) = e - s, qg.shape
        kk = ok.shape[-1]
        picked = rows[s * kk : e * kk]
        keys = k_table.index_select(0, picked).view(n, -1, dh)
        values = v_table.index_select(0, picked).view(n, -1, dh)
        scores = torch.bmm(qg[s:e], keys.transpose(1, 2))  # (n, b, S)
        scores.view(n, b, kk, b).masked_fill_(~ok[s:e, ..., None], torch.finfo(qg.dtype).min)
        weights = torch.softmax(scores, -1)
        empty = torch.nonzero(~ok[s:e].any(-1).flatten()).flatten()  # groups before the first complete block
        if len(empty):
            weights.index_fill_(0, empty, 0.0)
        return weights, keys, values

    @staticmethod
    def forward(ctx, qg, k_table, v_table, rows, ok, b):
        out = torch.empty_like(qg)
        for s, e in _SelectedBlocks._slices(qg, ok):
            weights, _, values = _SelectedBlocks._gathered(qg, k_table, v_table, rows, ok, s, e)
            torch.bmm(weights, values, out=out[s:e])
        ctx.save_for_backward(qg, k_table, v_table, rows, ok, out)
        return out

    @staticmethod
    def backward(ctx, d_out):
        qg, k_table, v_table, rows, ok, out = ctx.saved_tensors
        kk = ok.shape[-1]
        d_q, d_k_table, d_v_table = torch.empty_like(qg), torch.zeros_like(k_table), torch.zeros_like(v_table)
        delta = (d_out * out).sum(-1, keepdim=True)  # (G, b, 1): sum_j w_j dw_j of each row
        for s, e in _SelectedBlocks._slices(qg, ok):
            weights, keys, values = _SelectedBlocks._gathered(qg, k_table, v_table, rows, ok, s, e)
            g, picked = d_out[s:e], rows[s * kk : e * kk]
            d_v_table.index_add_(0, picked, torch.bmm(weights.transpose(1, 2), g).view(len(picked), -1))
            d_s = torch.bmm(g, values.transpose(1, 2)).sub_(delta[s:e]).mul_(weights)  # softmax backward
            torch.bmm(d_s, keys, out=d_q[s:e])
            d_k_table.index_add_(0, picked, torch.bmm(d_s.transpose(1, 2), qg[s:e]).view(len(picked), -1))
        return d_q, d_k_table, d_v_table, None, None, None


def query_side_block_attention(
    q: torch.Tensor,
    x: torch.Tensor,
    visible: torch.Tensor,
    phi: torch.nn.Linear,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    num_heads: int,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block branch (eqs. 8-9) for a few queries per user (objective `last`, embed), with
    the projections moved to the query side. The block vector phi(x_j) = W_phi x_j + c and
    its key W_K phi(x_j) are linear in the block's items x_j, so for head e
        score_j = q_e . W_K,e (W_phi x_j + c) = (W_phi^T W_K,e^T q_e) . x_j + const,
    and the constant is the same for every block, so the softmax drops it; the output is
        sum_j a_j W_V,e (W_phi x_j + c) = W_V,e (W_phi (sum_j a_j x_j) + (sum_j a_j) c).
    Per query that reads each history item twice (H * L * D multiply-adds each) instead of
    running phi, W_K and W_V over every block (L * D * D + 2 * nB * D * D), which no query of
    a one-query batch shares.

    q: (B, Q, D) projected queries; x: (B, nB, b, D) the blocks' items (`attention.block_items`);
    visible (B, Q, nB); w_k, w_v: (D, D) weights of W_K, W_V (no bias); bias: added to the
    scores, broadcastable to (B, H, Q, nB), or None.
    Returns (z_long (B, Q, D), weights (B, H, Q, nB)), equal to attend_shared's on phi(x).
    """
    B, Q, D = q.shape
    nB, H = x.shape[1], num_heads
    dh = D // H
    qh = (q / math.sqrt(dh)).view(B, Q, H, 1, dh)
    q_item = (qh @ w_k.view(H, dh, D)).squeeze(-2) @ phi.weight  # (B, Q, H, b*D): W_phi^T W_K,e^T q_e
    flat = x.reshape(B, nB, -1)  # (B, nB, b*D)
    scores = (q_item.view(B, Q * H, -1) @ flat.transpose(1, 2)).view(B, Q, H, nB).transpose(1, 2)  # (B, H, Q, nB)
    if bias is not None:
        scores = scores + bias
    weights = masked_softmax(scores, visible[:, None])
    pooled = weights.transpose(1, 2).reshape(B, Q * H, nB) @ flat  # (B, Q*H, b*D): sum_j a_j x_j
    mass = weights.sum(-1).transpose(1, 2)[..., None]  # (B, Q, H, 1): 1, or 0 for a query with no block
    y = F.linear(pooled.view(B, Q, H, -1), phi.weight) + mass * phi.bias  # (B, Q, H, D)
    out = (y[..., None, :] @ w_v.view(H, dh, D).transpose(1, 2)).squeeze(-2)  # (B, Q, H, dh)
    return out.reshape(B, Q, D), weights


def causal_block_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: int,
    num_heads: int,
    every: int = 1,
    chunk: int = 512,
    slope: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block branch (eq. 9) for dense causal queries: query p sees block j when j holds a
    real item and is complete at p ((j+1)*b - 1 <= p). Queries go in chunks of `chunk`
    positions, each scoring only the blocks complete by its last query, so the blocks that no
    query of a chunk can see (about half of them) are never scored.

    Memory (recomputation, as in FlashAttention): the backward pass recomputes each chunk's
    weights from q and k instead of keeping the (B, H, L, nB / 2) weights, the largest
    activation of the `all` objective, for the price of one more chunk-sized matmul and
    softmax.

    q: (B, L, D); k, v: (B, nB, D) block vectors; block_mask (B, nB); slope (H,): the
    recency bias of cfg.recency (`attention.recency_bias`, with its gradient), or None.
    Returns z_long (B, L, D) and a_block, the weights averaged over heads, at positions
    0, every, 2*every, ... (B, ceil(L/every), nB), without a gradient (eq. 10 only ranks
    them); `every` divides `chunk`.
    """
    B, L, D = q.shape
    H = num_heads
    chunk = max(every, chunk // every * every)
    qh = heads(q / math.sqrt(D // H), H)  # (B, H, L, dh), the scale folded into q
    out, a_block = _ChunkedBlockAttention.apply(
        qh, heads(k, H), heads(v, H), block_mask, block_size, chunk, every, slope
    )
    return merge_heads(out, L), a_block


class _ChunkedBlockAttention(torch.autograd.Function):
    """softmax(q k^T, causal block mask) v over query chunks, saving only q, k, v and the
    output: backward recomputes each chunk's weights. qh (B, H, L, dh) scaled, kh, vh (B, H, nB, dh),
    slope (H,) or None: the recency bias -slope_e * (p // b - j) on the scores."""

    @staticmethod
    def _weights(qh, kh, block_mask, block_size, start, end, slope=None):
        """The chunk's weights (B, H, end-start, nb) over the nb blocks complete by its last
        query, nb, and with slope the blocks' distances (end-start, nb) from each query
        (`attention.block_distance`; the scores got -slope_e * distance), else None. A row with
        no visible block gets weights 0. The causal mask touches only the blocks that complete
        inside the chunk: every query of the chunk sees the ones before."""
        nb = min(kh.shape[2], end // block_size)
        scores = qh[:, :, start:end] @ kh[:, :, :nb].transpose(-1, -2)
        distance = None
        if slope is not None:
            distance = block_distance(torch.arange(start, end, device=qh.device), nb, block_size).to(qh.dtype)
            scores.sub_(slope[:, None, None] * distance)  # (H, 1, 1) * (end-start, nb)
        lowest = torch.finfo(qh.dtype).min
        seen_by_all = min(nb, (start + 1) // block_size)  # blocks complete at the chunk's first query
        pos = torch.arange(start, end, device=qh.device)
        if nb > seen_by_all:
            last_item = torch.arange(seen_by_all, nb, device=qh.device) * block_size + block_size - 1
            scores[..., seen_by_all:].masked_fill_(last_item > pos[:, None], lowest)  # (end-start, nb-seen_by_all)
        real = block_mask[:, :nb]
        if not bool(real.all()):  # padding blocks: no query sees them
            scores.masked_fill_(~real[:, None, None, :], lowest)
        weights = torch.softmax(scores, -1)
        # a row has a key when some real block is complete at its query
        real_before = F.pad(real.cumsum(-1), (1, 0))  # (B, nb + 1): real blocks among the first j
        has_key = real_before[:, ((pos + 1) // block_size).clamp(max=nb)] > 0  # (B, end-start)
        if not bool(has_key.all()):
            weights.mul_(has_key[:, None, :, None])
        return weights, nb, distance

    @staticmethod
    def forward(ctx, qh, kh, vh, block_mask, block_size, chunk, every, slope):
        B, H, L, dh = qh.shape
        nB = kh.shape[2]
        out = qh.new_empty(B, H, L, dh)
        a_block = []
        for start in range(0, L, chunk):
            end = min(start + chunk, L)
            w, nb, _ = _ChunkedBlockAttention._weights(qh, kh, block_mask, block_size, start, end, slope)
            torch.matmul(w, vh[:, :, :nb], out=out[:, :, start:end])
            a_block.append(F.pad(w[:, :, ::every].mean(1), (0, nB - nb)))
        ctx.save_for_backward(qh, kh, vh, block_mask, out, slope)
        ctx.block_size, ctx.chunk = block_size, chunk
        a_block = torch.cat(a_block, 1)
        ctx.mark_non_differentiable(a_block)
        return out, a_block

    @staticmethod
    def backward(ctx, d_out, _):
        qh, kh, vh, block_mask, out, slope = ctx.saved_tensors
        L = qh.shape[2]
        # every chunk writes its rows of d_q, so no zero fill
        d_q, d_k, d_v = torch.empty_like(qh), torch.zeros_like(kh), torch.zeros_like(vh)
        d_slope = None if slope is None else torch.zeros_like(slope)
        delta = (d_out * out).sum(-1, keepdim=True)  # (B, H, L, 1): sum_j w_j dw_j of each row
        for start in range(0, L, ctx.chunk):
            end = min(start + ctx.chunk, L)
            w, nb, distance = _ChunkedBlockAttention._weights(qh, kh, block_mask, ctx.block_size, start, end, slope)
            g = d_out[:, :, start:end]
            d_v[:, :, :nb] += w.transpose(-1, -2) @ g
            d_s = (g @ vh[:, :, :nb].transpose(-1, -2)).sub_(delta[:, :, start:end]).mul_(w)  # softmax backward
            torch.matmul(d_s, kh[:, :, :nb], out=d_q[:, :, start:end])
            d_k[:, :, :nb] += d_s.transpose(-1, -2) @ qh[:, :, start:end]
            if d_slope is not None:  # score -= slope_e * distance: d slope_e = -sum d_s * distance
                d_slope -= (d_s.sum(0) * distance).sum((-2, -1))
        return d_q, d_k, d_v, None, None, None, None, d_slope
