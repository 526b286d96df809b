"""Each SAL branch equals dense attention under its mask; padding, edge lengths, ties, no NaN.

Most tests use the paper's one query per user (Q = 1 at the last item) through the wrappers
below; the causal tests give every position a query."""

import math

import pytest
import torch

from mufasa_cli.sal import attention as A
from mufasa_cli.sal.attention import block_vectors, gate, paper_window_sizes

D, H, b = 8, 2, 4


def dense(q, k, v, positions, heads=H):
    """Plain attention of q (D,) over rows `positions` of k, v (L, D), head by head."""
    if not positions:
        return torch.zeros(D)
    ks, vs = k[positions], v[positions]
    outs = []
    dh = D // heads
    for h in range(heads):
        sl = slice(h * dh, (h + 1) * dh)
        w = torch.softmax(ks[:, sl] @ q[sl] / math.sqrt(dh), dim=0)
        outs.append(w @ vs[:, sl])
    return torch.cat(outs)


def _inputs(lengths, L=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    L = L or int(lengths.max())
    q = torch.randn(len(lengths), D, generator=g)
    k = torch.randn(len(lengths), L, D, generator=g)
    v = torch.randn(len(lengths), L, D, generator=g)
    return q, k, v, lengths


def last(lengths):
    return (lengths - 1)[:, None]


def window_attention(q, k, v, lengths, W, heads):
    out, w = A.window_attention(q[:, None], k, v, last(lengths), W[:, None], heads)
    return out[:, 0], w[:, :, 0]


def block_attention(q, bk, bv, mask, heads, lengths=None):
    visible = mask[:, None, :]  # the last query sees every block, the partial last one included
    out, a = A.block_attention(q[:, None], bk, bv, visible, heads)
    return out[:, 0], a[:, 0]


def select_blocks(a, mask, k):
    return A.select_blocks(a, mask, k)


def selective_attention(q, k, v, lengths, idx, sel, block, heads):
    out, pos, w = A.selective_attention(q[:, None], k, v, last(lengths), idx[:, None], sel[:, None], block, heads)
    return out[:, 0], pos[:, 0], w[:, 0]


def attend(q, k, v, mask, heads):
    out, w = A.attend(q[:, None], k, v, mask[:, None], heads)
    return out[:, 0], w[:, :, 0]


EDGE = [1, b - 1, b, b + 1, 7, 13]


def test_window_covers_the_last_w_items_and_window_ge_l_is_full_attention():
    q, k, v, lengths = _inputs(EDGE)
    W = torch.tensor([3] * len(EDGE))
    out, _ = window_attention(q, k, v, lengths, W, H)
    for i, n in enumerate(EDGE):
        torch.testing.assert_close(out[i], dense(q[i], k[i], v[i], list(range(max(0, n - 3), n))))
    big = torch.tensor([50] * len(EDGE))
    out, _ = window_attention(q, k, v, lengths, big, H)
    for i, n in enumerate(EDGE):
        torch.testing.assert_close(out[i], dense(q[i], k[i], v[i], list(range(n))))


def test_windows_of_different_sizes_in_one_batch():
    q, k, v, lengths = _inputs([5, 40])  # the paper's protocol: W = 4 and W = 8
    W = paper_window_sizes(lengths)
    out, _ = window_attention(q, k, v, lengths, W, H)
    torch.testing.assert_close(out[0], dense(q[0], k[0], v[0], [1, 2, 3, 4]))
    torch.testing.assert_close(out[1], dense(q[1], k[1], v[1], list(range(32, 40))))


def test_paper_window_protocol():
    assert paper_window_sizes(torch.tensor([5, 30, 31, 500])).tolist() == [4, 4, 8, 8]


def test_mean_phi_block_branch_equals_attention_over_block_means_by_hand():
    q, k, v, lengths = _inputs(EDGE)
    blocks_k, mask = block_vectors(k, lengths, b, None)
    blocks_v, _ = block_vectors(v, lengths, b, None)
    out, a = block_attention(q, blocks_k, blocks_v, mask, H)
    for i, n in enumerate(EDGE):
        means_k = torch.stack([k[i, s : min(s + b, n)].mean(0) for s in range(0, n, b)])
        means_v = torch.stack([v[i, s : min(s + b, n)].mean(0) for s in range(0, n, b)])
        torch.testing.assert_close(out[i], dense(q[i], means_k, means_v, list(range(len(means_k)))))
        assert mask[i].sum() == -(-n // b)
        torch.testing.assert_close(a[i].sum(), torch.tensor(1.0))


def test_linear_phi_sees_only_real_items():
    torch.manual_seed(0)
    phi = torch.nn.Linear(b * D, D)
    _, k, _, lengths = _inputs([6], L=6)
    padded = torch.cat([k, torch.randn(1, 5, D) * 100], dim=1)  # garbage padding
    a, _ = block_vectors(k, lengths, b, phi)
    c, _ = block_vectors(padded, lengths, b, phi)
    torch.testing.assert_close(a, c[:, : a.shape[1]])
    # the partial second block = phi of its 2 items followed by zeros
    expected = phi(torch.cat([k[0, 4:6].flatten(), torch.zeros(2 * D)]))
    torch.testing.assert_close(a[0, 1], expected)


def test_selecting_all_blocks_is_item_attention_over_the_whole_history():
    q, k, v, lengths = _inputs(EDGE)
    _, mask = block_vectors(k, lengths, b, None)
    a = torch.rand(mask.shape)
    idx, sel = select_blocks(a, mask, k=100)
    out, pos, w = selective_attention(q, k, v, lengths, idx, sel, b, H)
    for i, n in enumerate(EDGE):
        torch.testing.assert_close(out[i], dense(q[i], k[i], v[i], list(range(n))))
        torch.testing.assert_close(w[i].sum(), torch.tensor(1.0))


def test_selective_attends_exactly_the_items_of_the_top_k_blocks():
    q, k, v, lengths = _inputs([13])
    _, mask = block_vectors(k, lengths, b, None)  # 4 blocks: 0-3, 4-7, 8-11, 12
    a = torch.tensor([[0.1, 0.5, 0.05, 0.35]])
    idx, sel = select_blocks(a, mask, k=2)
    assert idx.tolist() == [[1, 3]] and sel.all()
    out, _, _ = selective_attention(q, k, v, lengths, idx, sel, b, H)
    torch.testing.assert_close(out[0], dense(q[0], k[0], v[0], [4, 5, 6, 7, 12]))


def test_top_k_ties_go_to_the_more_recent_block_and_padding_is_never_selected():
    mask = torch.tensor([[True, True, True, False]])
    idx, sel = select_blocks(torch.tensor([[0.25, 0.25, 0.25, 0.25]]), mask, k=2)
    assert idx.tolist() == [[2, 1]]
    idx, sel = select_blocks(torch.tensor([[0.5, 0.5, 0.0, 0.0]]), mask, k=4)
    assert sel.tolist() == [[True, True, True, False]] and idx[0, 3] == 3


def test_padding_invariance_across_the_whole_layer():
    q, k, v, lengths = _inputs([5, 9])
    extra = torch.randn(2, 7, D) * 50
    k2, v2 = torch.cat([k, extra], 1), torch.cat([v, extra], 1)
    W = torch.tensor([4, 4])
    torch.testing.assert_close(
        window_attention(q, k, v, lengths, W, H)[0], window_attention(q, k2, v2, lengths, W, H)[0]
    )
    bk, m = block_vectors(k, lengths, b, None)
    bk2, m2 = block_vectors(k2, lengths, b, None)
    bv, _ = block_vectors(v, lengths, b, None)
    bv2, _ = block_vectors(v2, lengths, b, None)
    z1, a1 = block_attention(q, bk, bv, m, H)
    z2, a2 = block_attention(q, bk2, bv2, m2, H)
    torch.testing.assert_close(z1, z2)
    idx1, s1 = select_blocks(a1, m, 2)
    idx2, s2 = select_blocks(a2, m2, 2)
    torch.testing.assert_close(
        selective_attention(q, k, v, lengths, idx1, s1, b, H)[0],
        selective_attention(q, k2, v2, lengths, idx2, s2, b, H)[0],
    )


def test_empty_branches_give_zeros_not_nan():
    q = torch.randn(2, D, requires_grad=True)
    k = torch.randn(2, 3, D)
    out, w = attend(q, k, k, torch.zeros(2, 3, dtype=torch.bool), H)
    assert torch.equal(out, torch.zeros(2, D)) and torch.equal(w, torch.zeros(2, H, 3))
    out.sum().backward()
    assert torch.isfinite(q.grad).all()
    idx, sel = select_blocks(torch.rand(2, 3), torch.ones(2, 3, dtype=torch.bool), k=0)
    z, _, _ = selective_attention(q, k, k, torch.tensor([3, 3]), idx, sel, b, H)
    assert torch.equal(z, torch.zeros(2, D))


@pytest.mark.parametrize("n", [1, b - 1, b, b + 1, 8 - 1])
def test_edge_lengths_finite_and_gradients_flow(n):
    q, k, v, lengths = _inputs([n], L=n + 3)
    k.requires_grad_(True)
    W = paper_window_sizes(lengths)
    zw, _ = window_attention(q, k, v, lengths, W, H)
    bk, m = block_vectors(k, lengths, b, None)
    bv, _ = block_vectors(v, lengths, b, None)
    zl, a = block_attention(q, bk, bv, m, H)
    idx, s = select_blocks(a, m, 2)
    zc, _, _ = selective_attention(q, k, v, lengths, idx, s, b, H)
    torch.manual_seed(0)
    u, g = gate(q, [zw, zl, zc], torch.nn.Linear(D, 3))
    assert torch.isfinite(u).all() and ((g > 0) & (g < 1)).all()
    u.sum().backward()
    assert torch.isfinite(k.grad).all()
    assert k.grad[0, n:].abs().sum() == 0  # padding gets no gradient


def test_causal_queries_see_their_window_and_only_the_blocks_complete_at_them():
    q1, k, v, lengths = _inputs([13])
    L = 13
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, L, D, generator=g)  # one query per position
    qpos = torch.arange(L)[None, :]
    out, _ = A.window_attention(q, k, v, qpos, torch.full((1, L), 3), H)
    for t in range(L):
        torch.testing.assert_close(out[0, t], dense(q[0, t], k[0], v[0], list(range(max(0, t - 2), t + 1))))
    bk, mask = block_vectors(k, lengths, b, None)
    bv, _ = block_vectors(v, lengths, b, None)
    visible = A.visible_blocks(mask, qpos, b, causal=True)
    z, a = A.block_attention(q, bk, bv, visible, H)
    idx, sel = A.select_blocks(a, visible, k=100)
    zc, _, _ = A.selective_attention(q, k, v, qpos, idx, sel, b, H)
    for t in range(L):
        complete = (t + 1) // b  # blocks 0 .. complete-1 end at or before t
        assert visible[0, t].tolist() == [j < complete for j in range(4)]
        torch.testing.assert_close(z[0, t], dense(q[0, t], bk[0], bv[0], list(range(complete))))
        # every visible block selected = item attention over the complete blocks' items
        torch.testing.assert_close(zc[0, t], dense(q[0, t], k[0], v[0], list(range(complete * b))))
    # the non-causal rule (the paper's last query) also sees the query's own partial block
    own = A.visible_blocks(mask, qpos, b, causal=False)
    assert own[0, 12].tolist() == [True] * 4 and own[0, 3].tolist() == [True, False, False, False]


def test_causal_block_vectors_of_complete_blocks_ignore_later_items():
    _, k, _, lengths = _inputs([13])
    torch.manual_seed(0)
    phi = torch.nn.Linear(b * D, D)
    edited = k.clone()
    edited[0, 9:] = torch.randn(4, D) * 10  # items after the second block
    a, _ = block_vectors(k, lengths, b, phi)
    c, _ = block_vectors(edited, lengths, b, phi)
    torch.testing.assert_close(a[:, :2], c[:, :2])
