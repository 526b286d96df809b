"""The fast path (sal/fast.py, kernel "fast") equals the reference (attention.py) in outputs,
selections and gradients: every branch, both objectives, both selection rules, edge lengths
(1, b-1, b, b+1, not a multiple of the query block), padding; plus the pieces one by one."""

import pytest
import torch

from mufasa_cli.errors import RecipeError
from mufasa_cli.sal import attention as A
from mufasa_cli.sal import fast
from mufasa_cli.sal.config import SALConfig
from mufasa_cli.sal.model import SALEncoder

D, H, Z = 16, 2, 12
SETTINGS = [
    {"block_size": 4, "num_selected": 2, "window": 0},  # the paper's window protocol (4 / 8)
    {"block_size": 4, "num_selected": 3, "window": 3},
    {"block_size": 8, "num_selected": 8, "window": 16},  # window > block, more blocks than exist
]
b = 4
EDGE_LENGTHS = [1, b - 1, b, b + 1, 33, 37]  # 37: neither blocks nor query blocks divide it


def _run(model, kernel, z, lengths, qpos, seed=1):
    """Outputs, parameter gradients of a fixed random projection of them, and the explanation."""
    model.kernel = kernel
    model.zero_grad(set_to_none=True)
    u, ex = model.encode(z, lengths, qpos)
    weights = torch.randn(u.shape, generator=torch.Generator().manual_seed(seed), dtype=u.dtype)
    (u * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return u.detach(), grads, ex


def _model(objective, selection="query", dtype=torch.float64, **setting):
    torch.manual_seed(0)
    cfg = SALConfig(d_model=D, num_heads=H, max_len=64, objective=objective, selection=selection, **setting)
    return SALEncoder(Z, cfg).to(dtype)


def _queries(objective, lengths, L):
    if objective == "all":
        return torch.arange(L).expand(len(lengths), L).contiguous()
    return (lengths - 1)[:, None]


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize(("objective", "selection"), [("last", "query"), ("all", "query"), ("all", "query_block")])
def test_fast_equals_reference_outputs_gradients_and_selection(setting, objective, selection):
    model = _model(objective, selection, **setting)
    lengths = torch.tensor(EDGE_LENGTHS)  # one batch: padding of every kind
    L = int(lengths.max())
    z = torch.randn(len(lengths), L, Z, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    qpos = _queries(objective, lengths, L)
    u_ref, g_ref, ex_ref = _run(model, "reference", z, lengths, qpos)
    u_fast, g_fast, ex_fast = _run(model, "fast", z, lengths, qpos)
    torch.testing.assert_close(u_fast, u_ref, rtol=1e-10, atol=1e-12)
    assert g_ref.keys() == g_fast.keys() and g_ref
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], rtol=1e-9, atol=1e-11, msg=name)
    valid = ex_ref.selected_valid
    assert torch.equal(ex_fast.selected_valid, valid)
    assert torch.equal(ex_fast.selected_blocks[valid], ex_ref.selected_blocks[valid])


@pytest.mark.parametrize("objective", ["last", "all"])
def test_fast_equals_reference_in_float32_with_the_gate_and_without_branches(objective):
    for without in [(), ("window",), ("block",), ("selective",), ("window", "selective")]:
        model = _model(objective, dtype=torch.float32, without=without, **SETTINGS[0])
        lengths = torch.tensor([1, 5, 20])
        z = torch.randn(3, 20, Z, generator=torch.Generator().manual_seed(3))
        qpos = _queries(objective, lengths, 20)
        u_ref, g_ref, _ = _run(model, "reference", z, lengths, qpos)
        u_fast, g_fast, _ = _run(model, "fast", z, lengths, qpos)
        torch.testing.assert_close(u_fast, u_ref, rtol=1e-5, atol=1e-6)
        for name in g_ref:
            torch.testing.assert_close(g_fast[name], g_ref[name], rtol=1e-4, atol=1e-5, msg=f"{without} {name}")


@pytest.mark.parametrize("attention", ["full", "mean"])
def test_fast_kernel_leaves_the_full_and_mean_variants_unchanged(attention):
    model = _model("all", attention=attention)
    lengths = torch.tensor([3, 9])
    z = torch.randn(2, 9, Z, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    qpos = _queries("all", lengths, 9)
    torch.testing.assert_close(_run(model, "fast", z, lengths, qpos)[0], _run(model, "reference", z, lengths, qpos)[0])


@pytest.mark.parametrize("selection", ["query", "query_block"])
def test_dense_causal_output_at_the_last_item_equals_the_one_query_embedding(selection):
    """Training (`all`, every position) and embedding (one query at the last item) agree, and a
    query's output never depends on later items, query block sharing included."""
    model = _model("all", selection, **SETTINGS[0])
    lengths = torch.tensor([37, 9, 4])
    z = torch.randn(3, 37, Z, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    for kernel in ("reference", "fast"):
        model.kernel = kernel
        with torch.no_grad():
            every, _ = model.encode(z, lengths, _queries("all", lengths, 37))
            one, _ = model.users(z, lengths)
            torch.testing.assert_close(one, every[torch.arange(3), lengths - 1])
            later = z.clone()
            later[:, 21:] = torch.randn(3, 16, Z, dtype=torch.float64) * 5
            edited, _ = model.encode(later, lengths, _queries("all", lengths, 37))
            torch.testing.assert_close(edited[:, :21], every[:, :21])


def test_query_block_selection_needs_the_causal_objective():
    with pytest.raises(RecipeError, match="query_block needs --objective all"):
        SALConfig(selection="query_block")
    with pytest.raises(RecipeError, match="--selection 'per'"):
        SALConfig(objective="all", selection="per")


def test_masked_softmax_rows_without_keys_are_zero_and_keep_finite_gradients():
    scores = torch.tensor([[1.0, 2.0, 3.0], [5.0, 6.0, 7.0]], requires_grad=True)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    w = fast.masked_softmax(scores, mask)
    e1, e3 = torch.exp(torch.tensor(1.0)), torch.exp(torch.tensor(3.0))
    torch.testing.assert_close(w[0], torch.stack([e1 / (e1 + e3), torch.tensor(0.0), e3 / (e1 + e3)]))
    assert torch.equal(w[1], torch.zeros(3))
    (w * torch.arange(3.0)).sum().backward()
    assert torch.isfinite(scores.grad).all() and torch.equal(scores.grad[1], torch.zeros(3))


def test_select_blocks_matches_the_reference_order_including_ties():
    a = torch.tensor([[0.2, 0.5, 0.5, 0.0, 0.3, 0.5], [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])
    visible = torch.tensor([[True, True, True, False, True, True], [True, True, False, False, False, False]])
    for k in (1, 3, 6, 9):
        idx_ref, ok_ref = A.select_blocks(a, visible, k)
        idx, ok = fast.select_blocks(a, visible, k)
        assert torch.equal(idx, idx_ref) and torch.equal(ok, ok_ref), k
    assert fast.select_blocks(a, visible, 3)[0][0].tolist() == [5, 2, 1]  # ties: the more recent first


def _rows_and_maps(g: torch.Generator, L: int, users: int = 2) -> list[torch.Tensor]:
    """History rows h (users, L, D) and the (D, D) weights of W^Q, W^K, W^V, float64, with gradients."""
    shapes = [(users, L, D), (D, D), (D, D), (D, D)]
    return [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]


def _projected(h, *maps):
    """q, k, v = h W^T for each map, as the reference takes them."""
    return [h @ w.T for w in maps]


@pytest.mark.parametrize("slice_floats", [1, 1 << 20])  # one chunk per slice; all in one
@pytest.mark.parametrize("L", [1, 3, 8, 9, 23])
def test_band_window_equals_the_gathered_window(monkeypatch, L, slice_floats):
    """Outputs and gradients (recomputed slice by slice in the backward pass)."""
    monkeypatch.setattr(fast._BandWindow, "SLICE_FLOATS", slice_floats)
    g = torch.Generator().manual_seed(L)
    x = _rows_and_maps(g, L)  # h and W^Q, W^K, W^V: the function projects h itself
    qpos = torch.arange(L).expand(2, L)
    for windows in (A.paper_window_sizes(qpos + 1), torch.full((2, L), 3), torch.randint(1, 6, (2, L), generator=g)):
        ref, _ = A.window_attention(*_projected(*x), qpos, windows, H)
        out = fast.band_window_attention(x[0], x[1:], windows, H)
        torch.testing.assert_close(out, ref)
        d_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
        for got, want in zip(torch.autograd.grad(out, x, d_out), torch.autograd.grad(ref, x, d_out), strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("chunk", [2, 4, 8, 512])
def test_chunked_causal_block_attention_equals_the_masked_dense_one(chunk):
    g = torch.Generator().manual_seed(chunk)
    L, nB = 23, 6  # the last block is partial; positions 0..b-2 see no block (zero rows)
    h, w_q = _rows_and_maps(g, L)[:2]  # the function projects the queries h W^Q itself
    k, v = (torch.randn(2, nB, D, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    block_mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])  # user 2: 3 blocks
    qpos = torch.arange(L).expand(2, L)
    visible = A.visible_blocks(block_mask, qpos, b, causal=True)
    x = [h, w_q, k, v]
    ref, ref_a = A.block_attention(h @ w_q.T, k, v, visible, H)
    d_out = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, x, d_out)
    for every in (1, 2) if chunk == 2 else (1, 4):
        out, a = fast.causal_block_attention(*x, block_mask, b, H, every=every, chunk=chunk)
        torch.testing.assert_close(out, ref)
        torch.testing.assert_close(a, ref_a[:, ::every])
        assert not a.requires_grad  # eq. 10 only ranks the weights
        # the backward pass recomputes the weights chunk by chunk: the same gradients
        for got, want in zip(torch.autograd.grad(out, x, d_out), ref_grads, strict=True):
            torch.testing.assert_close(got, want)


def test_chunked_causal_block_attention_passes_gradcheck():
    g = torch.Generator().manual_seed(3)
    L, nB = 11, 3
    shapes = [(1, L, D), (D, D), (1, nB, D), (1, nB, D)]  # h, W^Q, block keys, block values
    x = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    block_mask = torch.tensor([[True, True, True]])
    assert torch.autograd.gradcheck(lambda *t: fast.causal_block_attention(*t, block_mask, b, H, chunk=4)[0], x)


@pytest.mark.parametrize("group_floats", [1, 1 << 21])  # one query group per slice; all in one
def test_shared_selective_attends_exactly_the_items_of_the_query_blocks_selection(monkeypatch, group_floats):
    """Outputs and gradients (its backward pass gathers the blocks again) equal per-query
    attention over the selected items; a query block with no selected block gets 0."""
    monkeypatch.setattr(fast._SelectedBlocks, "GROUP_FLOATS", group_floats)
    g = torch.Generator().manual_seed(7)
    L = 14  # query blocks 0..3, the last partial
    x = _rows_and_maps(g, L)  # h and W^Q, W^K, W^V: the function projects h itself
    q, k, v = _projected(*x)
    idx = torch.tensor([[[0, 1], [0, 1], [1, 0], [2, 0]], [[0, 0], [0, 1], [0, 1], [2, 1]]])  # (2, nG, 2)
    ok = torch.tensor(
        [
            [[False, False], [True, False], [True, True], [True, False]],
            [[False, False], [True, False], [True, True], [True, True]],
        ]
    )
    out = fast.shared_selective_attention(x[0], x[1:], idx, ok, b, H)
    ref = torch.zeros_like(out)
    for u in range(2):
        for t in range(L):
            g_ = t // b
            picked = zip(idx[u, g_], ok[u, g_], strict=True)
            pos = torch.tensor([int(j) * b + i for j, keep in picked if keep for i in range(b)], dtype=torch.long)
            if not len(pos):
                assert torch.equal(out[u, t], torch.zeros(D, dtype=torch.float64))
                continue
            one = torch.ones(1, 1, len(pos), dtype=torch.bool)
            ref[u, t] = A.attend(q[u : u + 1, t : t + 1], k[u : u + 1, pos], v[u : u + 1, pos], one, H)[0][0, 0]
    torch.testing.assert_close(out, ref)
    d_out = torch.randn(out.shape, generator=g, dtype=torch.float64)
    for got, want in zip(torch.autograd.grad(out, x, d_out), torch.autograd.grad(ref, x, d_out), strict=True):
        torch.testing.assert_close(got, want)


def test_query_side_block_attention_equals_attention_over_the_projected_block_vectors():
    """Projecting the queries through W_K and phi (instead of phi, W_K, W_V over every block)
    gives the same z_long, block weights and gradients; a query that sees no block gets 0."""
    g = torch.Generator().manual_seed(8)
    lengths = torch.tensor([9, 3, 16])
    L, Q = 16, 3
    h = torch.randn(3, L, D, generator=g, dtype=torch.float64, requires_grad=True)
    q = torch.randn(3, Q, D, generator=g, dtype=torch.float64, requires_grad=True)
    phi = torch.nn.Linear(b * D, D).to(torch.float64)
    proj = SALEncoder(Z, SALConfig(d_model=D, num_heads=H)).proj["block"].to(torch.float64)
    qpos = torch.tensor([[8, 3, 0], [2, 0, 1], [15, 7, 4]])
    visible = A.visible_blocks(A.block_vectors(h, lengths, b, phi)[1], qpos, b, causal=True)
    assert not visible[1, 1].any()  # user 2's query at position 0 sees no complete block

    def both():
        blocks, _ = A.block_vectors(h, lengths, b, phi)
        ref = fast.attend_shared(q, proj.k(blocks), proj.v(blocks), visible, H)
        x, _ = A.block_items(h, lengths, b)
        return ref, fast.query_side_block_attention(q, x, visible, phi, proj.k.weight, proj.v.weight, H)

    (ref, ref_w), (out, w) = both()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w, ref_w, rtol=1e-10, atol=1e-12)
    assert torch.equal(out[1, 1], torch.zeros(D, dtype=torch.float64))
    weights = torch.randn(out.shape, generator=g, dtype=torch.float64)
    params = [h, q, phi.weight, phi.bias, proj.k.weight, proj.v.weight]
    grads_ref = torch.autograd.grad((ref * weights).sum(), params)
    grads = torch.autograd.grad((both()[1][0] * weights).sum(), params)
    for name, gr, gf in zip(["h", "q", "phi.weight", "phi.bias", "W_K", "W_V"], grads_ref, grads, strict=True):
        torch.testing.assert_close(gf, gr, rtol=1e-9, atol=1e-11, msg=name)
