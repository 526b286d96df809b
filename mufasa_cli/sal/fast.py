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
  branches are autograd functions that take the history rows h and their maps W^Q, W^K, W^V
  and keep only h, the maps and their output (the window also its small weights); they
  work through slices of query rows, each projecting and gathering only what it reads, and
  the backward pass does the same again and adds each slice's gradients into d_h, as
  FlashAttention does with its blocks. No projection of the whole history, no (B, H, L, nB/2)
  block weights and no k-fold gathered keys exist in either pass, and the branch outputs the
  gate keeps are the ones the functions keep: at L = 8,192 the peak of live tensors in a
  forward + backward step equals full causal SDPA's (`benchmarks/attention.py`).
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


Maps = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # the (D, D) weights of a branch's W^Q, W^K, W^V (no bias)


def project_heads(h: torch.Tensor, w: torch.Tensor, num_heads: int, scale: float = 1.0) -> torch.Tensor:
    """The rows h (B, L, D) through the bias-free map w (D, D), times scale, split into heads:
    (B, H, L, dh). The dense causal autograd functions below call it inside their forward and
    backward passes: they keep h and w, not the projections, and compute them again for the
    backward pass (a (B*L, D) x (D, D) matmul each, cheap beside the attention)."""
    y = F.linear(h, w)
    return heads(y.mul_(scale) if scale != 1.0 else y, num_heads)


def project_heads_backward(
    h: torch.Tensor, w: torch.Tensor, d_y: torch.Tensor, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """project_heads' gradients: d_y (B, H, >= L, dh), the gradient of its output (rows past L
    ignored) -> (d_h (B, L, D), d_w (D, D))."""
    B, L, D = h.shape
    d = merge_heads(d_y, L)
    if scale != 1.0:
        d = d * scale  # not in place: with one head merge_heads returns a view of d_y
    return d @ w, d.view(B * L, D).T @ h.reshape(B * L, D)


def project_maps(h: torch.Tensor, maps: Maps, num_heads: int) -> list[torch.Tensor]:
    """q, k, v of the rows h (B, L, D) in heads, q scaled by 1 / sqrt(dh): 3 x (B, H, L, dh)."""
    scale = 1 / math.sqrt(h.shape[-1] // num_heads)
    return [project_heads(h, w, num_heads, s) for w, s in zip(maps, (scale, 1.0, 1.0), strict=True)]


def maps_backward(h: torch.Tensor, maps: Maps, d_ys: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """project_maps' gradients: d_ys, the gradients of q, k, v in heads (B, H, >= L, dh) ->
    (d_h (B, L, D), the maps' gradients). Empties d_ys as it goes, so that a caller who holds
    no other reference frees each gradient once it is used."""
    scale = 1 / math.sqrt(h.shape[-1] // (d_ys[0].shape[1]))
    d_h, d_maps = None, []
    for w, s in zip(maps, (scale, 1.0, 1.0), strict=True):
        part, d_w = project_heads_backward(h, w, d_ys.pop(0), s)  # popped: each freed once used
        d_h = part if d_h is None else d_h.add_(part)
        d_maps.append(d_w)
    return d_h, d_maps


def row_dots(d_out: torch.Tensor, out: torch.Tensor, num_heads: int) -> torch.Tensor:
    """sum_j w_j dw_j of each query row and head (softmax backward), from an attention output
    (B, L, D) and its gradient: (d_out * out) summed over each head's dh -> (B, H, L, 1)."""
    B, L, D = out.shape
    return (d_out * out).view(B, L, num_heads, D // num_heads).sum(-1).transpose(1, 2).unsqueeze(-1)


def band_window_attention(
    h: torch.Tensor,
    maps: Maps,
    windows: torch.Tensor,
    num_heads: int,
    slope: torch.Tensor | None = None,
) -> torch.Tensor:
    """The window branch (eqs. 6-7) for dense causal queries, every history row its own query:
    query p attends to the items p - W_p + 1 .. p. Queries in chunks of c = W_max attend to their
    chunk and the previous one (2c keys) through one batched matmul, masked to each query's W;
    the chunks go in slices (`_BandWindow`). h (B, L, D) the history rows, maps the branch's
    W^Q, W^K, W^V, windows (B, L) -> (B, L, D); slope (H,): the recency bias of cfg.recency
    (`attention.window_bias`, with its gradient), or None."""
    c = max(int(windows.max()), 1)
    return _BandWindow.apply(h, *maps, windows, c, slope, num_heads)


class _BandWindow(torch.autograd.Function):
    """Banded attention over chunks of c positions: query chunk i attends to key chunks i-1 and
    i, masked to each query's window. The chunks go in slices of about SLICE_FLOATS scores,
    each projecting only its own rows of h (its query chunks and the key chunk before them), so
    that no projection of the whole history exists, in either pass. Keeps h, the maps, the
    output and the (small) weights; the backward pass projects each slice's rows again and
    adds their gradients into d_h slice by slice, as FlashAttention does with its blocks."""

    SLICE_FLOATS = 1 << 15

    @staticmethod
    def _slices(h, c, num_heads):
        """(first, end) query chunks of each slice."""
        B, L, _ = h.shape
        nC = -(-L // c)
        step = max(1, _BandWindow.SLICE_FLOATS // (B * num_heads * c * 2 * c))
        return [(s, min(s + step, nC)) for s in range(0, nC, step)]

    @staticmethod
    def _local(h, maps, c, s, e, num_heads):
        """The slice's rows: positions (s-1)*c .. e*c of h (key chunks s-1 .. e-1, which hold its
        query chunks s .. e-1), projected: q (scaled), k, v 3 x (B, H, (e-s+1)*c, dh), zero rows
        left of position 0 and past the end; and the first position taken from h."""
        L = h.shape[1]
        lo, hi = (s - 1) * c, e * c
        first = max(lo, 0)
        pad = (0, 0, first - lo, hi - min(hi, L))
        return [F.pad(y, pad) for y in project_maps(h[:, first : min(hi, L)], maps, num_heads)], first

    @staticmethod
    def _weights(q, k, windows, c, s, e, slope=None):
        """Query chunks s..e-1 of the slice's rows (`_local`): (weights (B, H, n, c, 2c) and
        the 2c keys of each chunk (B, H, n, 2c, dh))."""
        B, H, _, dh = q.shape
        n = e - s
        keys = _BandWindow._chunk_pairs(k, c)
        distance = _BandWindow._distance(c, q.device)
        left = torch.arange(2 * c, device=q.device) < c  # keys of the previous chunk
        first = (torch.arange(s, e, device=q.device) == 0)[:, None, None] & left  # keys left of position 0
        mask = (distance >= 0) & (distance < windows[:, :, s:e]) & ~first  # (B, 1, n, c, 2c)
        scores = q[:, :, c:].view(B, H, n, c, dh) @ keys.transpose(-1, -2)
        if slope is not None:  # the recency bias -slope_e * distance
            scores = scores - slope.view(1, H, 1, 1, 1) * distance.to(scores.dtype)
        return masked_softmax(scores, mask), keys

    @staticmethod
    def _distance(c, device):
        """Query position - key position (c, 2c), for a chunk's queries and its 2c keys."""
        return torch.arange(c, device=device)[:, None] + c - torch.arange(2 * c, device=device)

    @staticmethod
    def _chunk_pairs(x, c):
        """x (B, H, (n+1)*c, dh) cut into chunks -> the rows of chunks i-1 and i for i = 1..n: (B, H, n, 2c, dh)."""
        B, H, rows, dh = x.shape
        xc = x.view(B, H, rows // c, c, dh)
        return torch.cat([xc[:, :, :-1], xc[:, :, 1:]], dim=3)

    @staticmethod
    def _queries(x, c, s, e, num_heads):
        """Rows s*c .. e*c of x (B, L, D) in heads, zero rows past L: (B, H, e-s, c, dh)."""
        B, L, D = x.shape
        part = heads(x[:, s * c : min(e * c, L)], num_heads)
        return F.pad(part, (0, 0, 0, e * c - min(e * c, L))).view(B, num_heads, e - s, c, D // num_heads)

    @staticmethod
    def forward(ctx, h, w_q, w_k, w_v, windows, c, slope, num_heads):
        B, L, D = h.shape
        nC = -(-L // c)
        w = F.pad(windows, (0, nC * c - L)).view(B, 1, nC, c, 1)  # padded queries: window 0, no key
        out = h.new_empty(B, L, D)
        all_weights = []  # (B, H, n, c, 2c) per slice: 2c / dh times the size of q
        for s, e in _BandWindow._slices(h, c, num_heads):
            (q, k, v), _ = _BandWindow._local(h, (w_q, w_k, w_v), c, s, e, num_heads)
            weights, _ = _BandWindow._weights(q, k, w, c, s, e, slope)
            part = weights @ _BandWindow._chunk_pairs(v, c)  # (B, H, n, c, dh)
            out[:, s * c : e * c] = merge_heads(part.view(B, num_heads, -1, D // num_heads), min(e * c, L) - s * c)
            all_weights.append(weights)
        ctx.save_for_backward(h, w_q, w_k, w_v, w, out, *all_weights)
        ctx.c, ctx.with_slope, ctx.num_heads = c, slope is not None, num_heads
        return out

    @staticmethod
    def backward(ctx, d_out):
        h, w_q, w_k, w_v, windows, out, *all_weights = ctx.saved_tensors
        c, H = ctx.c, ctx.num_heads
        maps = (w_q, w_k, w_v)
        B, L, D = h.shape
        dh = D // H
        d_h, d_maps = torch.zeros_like(h), [torch.zeros_like(w) for w in maps]
        d_slope = h.new_zeros(H) if ctx.with_slope else None
        distance = _BandWindow._distance(c, h.device).to(h.dtype)
        for (s, e), weights in zip(_BandWindow._slices(h, c, H), all_weights, strict=True):
            n = e - s
            (q, k, v), first = _BandWindow._local(h, maps, c, s, e, H)
            keys = _BandWindow._chunk_pairs(k, c)
            g = _BandWindow._queries(d_out, c, s, e, H)  # (B, H, n, c, dh)
            rows = slice(s * c, min(e * c, L))
            delta = F.pad(row_dots(d_out[:, rows], out[:, rows], H), (0, 0, 0, e * c - rows.stop))
            d_s = (g @ _BandWindow._chunk_pairs(v, c).transpose(-1, -2)).sub_(delta.view(B, H, n, c, 1)).mul_(weights)
            if d_slope is not None:  # score -= slope_e * distance
                d_slope -= (d_s * distance).sum((0, 2, 3, 4))
            # keys 0..c-1 of chunk i are rows of chunk i-1, keys c..2c-1 rows of chunk i
            d_kv = []
            for part in (d_s.transpose(-1, -2) @ q[:, :, c:].view(B, H, n, c, dh), weights.transpose(-1, -2) @ g):
                chunks = part.new_zeros(B, H, n + 1, c, dh)
                chunks[:, :, :-1] += part[:, :, :, :c]
                chunks[:, :, 1:] += part[:, :, :, c:]
                d_kv.append(chunks.view(B, H, -1, dh)[:, :, first - (s - 1) * c :])  # from `first` on
            d_q = (d_s @ keys).view(B, H, -1, dh)  # query rows s*c .. e*c
            del q, k, v, keys, g, d_s  # the slice's projections: freed before their gradients
            # q of rows s*c.. (scaled in project_maps), k and v of rows first..
            for m, at, d_y in ((0, rows.start, d_q), (1, first, d_kv[0]), (2, first, d_kv[1])):
                part_h, d_w = project_heads_backward(h[:, at : rows.stop], maps[m], d_y, 1 / math.sqrt(dh) if m == 0 else 1.0)
                d_h[:, at : rows.stop] += part_h
                d_maps[m] += d_w
        return d_h, *d_maps, None, None, d_slope, None


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
    h: torch.Tensor,
    maps: Maps,
    idx: torch.Tensor,
    selected: torch.Tensor,
    block_size: int,
    num_heads: int,
) -> torch.Tensor:
    """The selective branch (eqs. 11-12) for dense causal queries, every history row its own
    query, whose query blocks share their selection: query block g (positions g*b .. g*b+b-1)
    attends to the items of the blocks idx[:, g] (B, nG, kk), all complete before its first
    query, so no item needs a per-query mask. Each query block gathers its blocks' rows of h
    whole (rows of b*D floats) and projects them (the K/V maps are linear, so gather-then-project
    = project-then-gather), and its b queries score them in one batched matmul; query blocks go
    in slices (`_SelectedBlocks`), so that neither what is gathered nor any projection of the
    whole history exists, in either pass. h (B, L, D) the history rows, maps the branch's W^Q,
    W^K, W^V -> (B, L, D)."""
    B, L, _ = h.shape
    nG = idx.shape[1]
    rows = (torch.arange(B, device=h.device)[:, None, None] * nG + idx).flatten()  # (B * nG * kk,) rows of the block table
    return _SelectedBlocks.apply(h, *maps, rows, selected.reshape(B * nG, -1), block_size, num_heads)


class _SelectedBlocks(torch.autograd.Function):
    """Attention of each query block (b queries) over the items of its kk gathered blocks, as
    batched matmuls with one batch entry per (user, query block) and head. h is read as a
    block table (B*nG, b*D), zero rows past L; rows (B*nG*kk,) are the table rows of each query
    block's slots, ok (B*nG, kk) which slots hold a block. Keeps h, the maps and the output
    only, and goes through the query blocks in slices of about GROUP_FLOATS gathered and scored
    floats; the backward pass gathers and projects each slice again and adds its gradients
    into d_h (index_add for the gathered rows)."""

    GROUP_FLOATS = 1 << 18

    @staticmethod
    def _table(x, b):
        """x (B, L, D) as a block table (B * nG, b * D), zero rows past L (a copy only then)."""
        B, L, D = x.shape
        pad = -L % b
        return (F.pad(x, (0, 0, 0, pad)) if pad else x).reshape(-1, b * D)

    @staticmethod
    def _slices(groups, kk, b, D):
        step = max(1, _SelectedBlocks.GROUP_FLOATS // (kk * b * (3 * D + b)))
        return [(s, min(s + step, groups)) for s in range(0, groups, step)]

    @staticmethod
    def _attend(table, maps, rows, ok, s, e, b, H):
        """Query blocks s..e-1: their query rows of h (n, b, D), gathered rows (n, kk*b, D),
        q (scaled), k, v in heads (n, H, b | kk*b, dh) and the weights (n, H, b, kk*b); a query
        block with no selected block gets weights 0."""
        n, kk = e - s, ok.shape[-1]
        D = table.shape[1] // b
        dh = D // H
        own = table[s:e].view(n, b, D)
        picked = table.index_select(0, rows[s * kk : e * kk]).view(n, kk * b, D)
        split = lambda x: x.view(n, -1, H, dh).transpose(1, 2)  # noqa: E731  (n, H, ., dh)
        q = split(F.linear(own, maps[0]).mul_(1 / math.sqrt(dh)))
        k, v = split(F.linear(picked, maps[1])), split(F.linear(picked, maps[2]))
        scores = q @ k.transpose(-1, -2)  # (n, H, b, kk*b)
        scores.view(n, H, b, kk, b).masked_fill_(~ok[s:e, None, None, :, None], torch.finfo(table.dtype).min)
        weights = torch.softmax(scores, -1)
        empty = torch.nonzero(~ok[s:e].any(-1)).flatten()  # query blocks before the first complete block
        if len(empty):
            weights.index_fill_(0, empty, 0.0)
        return own, picked, q, k, v, weights

    @staticmethod
    def forward(ctx, h, w_q, w_k, w_v, rows, ok, b, num_heads):
        B, L, D = h.shape
        table = _SelectedBlocks._table(h, b)
        out = h.new_empty(len(table), b, D)
        for s, e in _SelectedBlocks._slices(len(table), ok.shape[-1], b, D):
            *_, v, weights = _SelectedBlocks._attend(table, (w_q, w_k, w_v), rows, ok, s, e, b, num_heads)
            out[s:e] = (weights @ v).transpose(1, 2).reshape(e - s, b, D)
        out = out.view(B, -1, D)[:, :L]
        ctx.save_for_backward(h, w_q, w_k, w_v, rows, ok, out)
        ctx.b, ctx.num_heads = b, num_heads
        return out

    @staticmethod
    def backward(ctx, d_out):
        h, w_q, w_k, w_v, rows, ok, out = ctx.saved_tensors
        b, H = ctx.b, ctx.num_heads
        maps = (w_q, w_k, w_v)
        B, L, D = h.shape
        kk, dh = ok.shape[-1], D // H
        table = _SelectedBlocks._table(h, b)
        d_table = torch.zeros_like(table)
        d_out, out = (_SelectedBlocks._table(x, b) for x in (d_out, out))
        d_maps = [torch.zeros_like(w) for w in maps]
        for s, e in _SelectedBlocks._slices(len(table), kk, b, D):
            n = e - s
            own, picked, q, k, v, weights = _SelectedBlocks._attend(table, maps, rows, ok, s, e, b, H)
            g = d_out[s:e].view(n, b, H, dh).transpose(1, 2)  # (n, H, b, dh)
            delta = (g * out[s:e].view(n, b, H, dh).transpose(1, 2)).sum(-1, keepdim=True)  # sum_j w_j dw_j of each row
            d_s = (g @ v.transpose(-1, -2)).sub_(delta).mul_(weights)  # softmax backward
            merge = lambda x: x.transpose(1, 2).reshape(n, -1, D)  # noqa: E731  (n, H, ., dh) -> (n, ., D)
            d_q = merge(d_s @ k).mul_(1 / math.sqrt(dh))  # (n, b, D)
            d_k, d_v = merge(d_s.transpose(-1, -2) @ q), merge(weights.transpose(-1, -2) @ g)  # (n, kk*b, D)
            d_table[s:e] += (d_q @ w_q).view(n, -1)
            d_picked = d_k @ w_k + d_v @ w_v
            d_table.index_add_(0, rows[s * kk : e * kk], d_picked.view(n * kk, -1))
            for total, d_y, x in zip(d_maps, (d_q, d_k, d_v), (own, picked, picked), strict=True):
                total += d_y.reshape(-1, D).T @ x.reshape(-1, D)
        return d_table.view(B, -1, D)[:, :L], *d_maps, None, None, None, None


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
    h: torch.Tensor,
    w_q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_mask: torch.Tensor,
    block_size: int,
    num_heads: int,
    every: int = 1,
    chunk: int = 128,
    slope: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The block branch (eq. 9) for dense causal queries, every history row its own query:
    query p sees block j when j holds a real item and is complete at p ((j+1)*b - 1 <= p).
    Queries go in chunks of `chunk` positions, each scoring only the blocks complete by its
    last query, so the blocks that no query of a chunk can see (about half of them) are never
    scored.

    Memory (recomputation, as in FlashAttention): the backward pass recomputes each chunk's
    weights from q and k instead of keeping the (B, H, L, nB / 2) weights, the largest
    activation of the `all` objective, for the price of one more chunk-sized matmul and
    softmax; and each chunk projects its own queries from h, which it keeps anyway, so that no
    projection of the whole history exists.

    h: (B, L, D) the history rows, w_q (D, D) the branch's W^Q; k, v: (B, nB, D) block keys
    and values; block_mask (B, nB); slope (H,): the recency bias of cfg.recency
    (`attention.recency_bias`, with its gradient), or None.
    Returns z_long (B, L, D) and a_block, the weights averaged over heads, at positions
    0, every, 2*every, ... (B, ceil(L/every), nB), without a gradient (eq. 10 only ranks
    them); `every` divides `chunk`.
    """
    H = num_heads
    chunk = max(every, chunk // every * every)
    return _ChunkedBlockAttention.apply(h, w_q, heads(k, H), heads(v, H), block_mask, block_size, chunk, every, slope)


class _ChunkedBlockAttention(torch.autograd.Function):
    """softmax(q k^T, causal block mask) v over query chunks, q = h W^Q scaled, each chunk
    projecting its own queries, keeping only h, W^Q, k, v and the output: backward projects
    each chunk's queries again, recomputes its weights and writes its rows of d_h.
    kh, vh (B, H, nB, dh), slope (H,) or None: the recency bias -slope_e * (p // b - j) on the
    scores."""

    @staticmethod
    def _weights(qh, kh, block_mask, block_size, start, end, slope=None):
        """The weights (B, H, end-start, nb) of the chunk's queries qh (B, H, end-start, dh),
        positions start..end-1, over the nb blocks complete by its last
        query, nb, and with slope the blocks' distances (end-start, nb) from each query
        (`attention.block_distance`; the scores got -slope_e * distance), else None. A row with
        no visible block gets weights 0. The causal mask touches only the blocks that complete
        inside the chunk: every query of the chunk sees the ones before."""
        nb = min(kh.shape[2], end // block_size)
        scores = qh @ kh[:, :, :nb].transpose(-1, -2)
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
    def forward(ctx, h, w_q, kh, vh, block_mask, block_size, chunk, every, slope):
        B, L, D = h.shape
        H, nB = kh.shape[1], kh.shape[2]
        scale = 1 / math.sqrt(D // H)
        out = h.new_empty(B, L, D)
        a_block = []
        for start in range(0, L, chunk):
            end = min(start + chunk, L)
            qh = project_heads(h[:, start:end], w_q, H, scale)  # this chunk's queries only
            w, nb, _ = _ChunkedBlockAttention._weights(qh, kh, block_mask, block_size, start, end, slope)
            out[:, start:end] = merge_heads(w @ vh[:, :, :nb], end - start)
            a_block.append(F.pad(w[:, :, ::every].mean(1), (0, nB - nb)))
        ctx.save_for_backward(h, w_q, kh, vh, block_mask, out, slope)
        ctx.block_size, ctx.chunk = block_size, chunk
        a_block = torch.cat(a_block, 1)
        ctx.mark_non_differentiable(a_block)
        ctx.set_materialize_grads(False)  # no (B, L/every, nB) zeros for a_block's gradient
        return out, a_block

    @staticmethod
    def backward(ctx, d_out, _):
        h, w_q, kh, vh, block_mask, out, slope = ctx.saved_tensors
        if d_out is None:  # z_long unused (grads are not materialised)
            return (None,) * 9
        B, L, D = h.shape
        H = kh.shape[1]
        scale = 1 / math.sqrt(D // H)
        d_h, d_w_q, d_k, d_v = torch.empty_like(h), torch.zeros_like(w_q), torch.zeros_like(kh), torch.zeros_like(vh)
        d_slope = None if slope is None else torch.zeros_like(slope)
        for start in range(0, L, ctx.chunk):
            end = min(start + ctx.chunk, L)
            rows = h[:, start:end]
            qh = project_heads(rows, w_q, H, scale)
            w, nb, distance = _ChunkedBlockAttention._weights(qh, kh, block_mask, ctx.block_size, start, end, slope)
            g = heads(d_out[:, start:end], H)
            delta = row_dots(d_out[:, start:end], out[:, start:end], H)  # sum_j w_j dw_j of each row
            d_v[:, :, :nb] += w.transpose(-1, -2) @ g
            d_s = (g @ vh[:, :, :nb].transpose(-1, -2)).sub_(delta).mul_(w)  # softmax backward
            d_k[:, :, :nb] += d_s.transpose(-1, -2) @ qh
            if d_slope is not None:  # score -= slope_e * distance: d slope_e = -sum d_s * distance
                d_slope -= (d_s.sum(0) * distance).sum((-2, -1))
            d_h[:, start:end], d_w = project_heads_backward(rows, w_q, d_s @ kh[:, :, :nb], scale)
            d_w_q += d_w
        return d_h, d_w_q, d_k, d_v, None, None, None, None, d_slope
