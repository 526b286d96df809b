"""The recency biases on the window and block scores (cfg.recency, beyond the paper):
hand-checked values, slope 0 is the paper's model, reference = fast = flex fallback in outputs
and gradients (the slopes' included), and a steep slope makes eq. 10 select the most recent
blocks."""

import math

import pytest
import torch

from mufasa_cli.sal import attention as A
from mufasa_cli.sal import fast
from mufasa_cli.sal.config import SALConfig
from mufasa_cli.sal.model import SALEncoder

D, H, Z, b = 16, 2, 12, 4


def test_recency_bias_is_minus_the_slope_times_the_block_distance():
    slope = torch.tensor([0.5, -1.0])
    qpos = torch.tensor([[0, 5, 9]])  # query blocks 0, 1, 2
    bias = A.recency_bias(slope, qpos, num_blocks=3, block_size=b)
    distance = torch.tensor([[0.0, -1, -2], [1, 0, -1], [2, 1, 0]])
    assert bias.shape == (1, 2, 3, 3)
    torch.testing.assert_close(bias[0, 0], -0.5 * distance)
    torch.testing.assert_close(bias[0, 1], distance)


def test_equal_scores_are_weighted_by_the_recency_alone():
    """q = 0: every block scores 0, so the weights are softmax(-s * distance). A query in block
    2 sees blocks 0 and 1 (distances 2, 1); s = ln 2 gives them 1/3 and 2/3."""
    q = torch.zeros(1, 1, D)
    k, v = torch.randn(1, 3, D), torch.randn(1, 3, D)
    visible = torch.tensor([[[True, True, False]]])
    bias = A.recency_bias(torch.full((H,), math.log(2)), torch.tensor([[9]]), 3, b)
    z, a = A.block_attention(q, k, v, visible, H, bias)
    torch.testing.assert_close(a, torch.tensor([[[1 / 3, 2 / 3, 0.0]]]))
    torch.testing.assert_close(z[0, 0], v[0, 0] / 3 + 2 * v[0, 1] / 3)


def test_equal_window_scores_are_weighted_by_the_recency_alone():
    """q = 0: the query at position 1 with W = 2 sees positions 0 and 1 (distances 1, 0);
    s = ln 2 weighs them 1/3 and 2/3."""
    q = torch.zeros(1, 1, D)
    k, v = torch.randn(1, 2, D), torch.randn(1, 2, D)
    slope = torch.full((H,), math.log(2))
    z, w = A.window_attention(q, k, v, torch.tensor([[1]]), torch.tensor([[2]]), H, slope)
    torch.testing.assert_close(w, torch.tensor([1 / 3, 2 / 3]).expand(1, H, 1, 2))
    torch.testing.assert_close(z[0, 0], v[0, 0] / 3 + 2 * v[0, 1] / 3)
    assert A.window_bias(None, torch.tensor([[1]]), torch.tensor([[[0, 1]]])) is None


def _model(objective, selection="query", recency=True, phi="linear"):
    torch.manual_seed(0)
    cfg = SALConfig(
        d_model=D,
        num_heads=H,
        max_len=64,
        objective=objective,
        selection=selection,
        block_size=b,
        num_selected=2,
        recency=recency,
        phi=phi,
    )
    return SALEncoder(Z, cfg).to(torch.float64)


def _slopes(model, block, window=(0.5, -0.4)):
    with torch.no_grad():
        for layer in model.layers:
            layer.block_recency.copy_(torch.tensor(block, dtype=torch.float64))
            layer.window_recency.copy_(torch.tensor(window, dtype=torch.float64))


def _inputs(objective):
    lengths = torch.tensor([1, b - 1, b, b + 1, 33, 37])
    L = int(lengths.max())
    z = torch.randn(len(lengths), L, Z, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    qpos = torch.arange(L).expand(len(lengths), L).contiguous() if objective == "all" else (lengths - 1)[:, None]
    return z, lengths, qpos


def _run(model, kernel, z, lengths, qpos):
    model.kernel = kernel
    model.zero_grad(set_to_none=True)
    u, ex = model.encode(z, lengths, qpos)
    weights = torch.randn(u.shape, generator=torch.Generator().manual_seed(1), dtype=u.dtype)
    (u * weights).sum().backward()
    return u.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, ex


@pytest.mark.parametrize(("objective", "selection"), [("last", "query"), ("all", "query"), ("all", "query_block")])
def test_slope_zero_is_the_model_without_recency(objective, selection):
    z, lengths, qpos = _inputs(objective)
    off, on = _model(objective, selection, recency=False), _model(objective, selection)
    on.load_state_dict({**off.state_dict(), **{k: v for k, v in on.state_dict().items() if "recency" in k}})
    for kernel in ("reference", "fast"):
        torch.testing.assert_close(_run(on, kernel, z, lengths, qpos)[0], _run(off, kernel, z, lengths, qpos)[0])


@pytest.mark.parametrize("phi", ["linear", "mean"])
@pytest.mark.parametrize(("objective", "selection"), [("last", "query"), ("all", "query"), ("all", "query_block")])
def test_fast_equals_reference_with_recency_including_the_slopes_gradient(objective, selection, phi):
    """Objective all: the banded window and the chunked causal block attention; last: the
    gathered window and the query-side block attention (phi linear) or attend_shared (phi
    mean); query_block: the leaders rank with the bias too."""
    model = _model(objective, selection, phi=phi)
    _slopes(model, [0.3, -0.2])
    z, lengths, qpos = _inputs(objective)
    u_ref, g_ref, ex_ref = _run(model, "reference", z, lengths, qpos)
    u_fast, g_fast, ex_fast = _run(model, "fast", z, lengths, qpos)
    torch.testing.assert_close(u_fast, u_ref, rtol=1e-10, atol=1e-12)
    assert g_ref.keys() == g_fast.keys()
    for slopes in ("layers.0.block_recency", "layers.0.window_recency"):
        assert g_ref[slopes].abs().sum() > 0
    for name in g_ref:
        torch.testing.assert_close(g_fast[name], g_ref[name], rtol=1e-9, atol=1e-11, msg=name)
    valid = ex_ref.selected_valid
    assert torch.equal(ex_fast.selected_valid, valid)
    assert torch.equal(ex_fast.selected_blocks[valid], ex_ref.selected_blocks[valid])


def test_flex_kernel_runs_a_recency_layer_the_fast_way():
    model = _model("all")
    _slopes(model, [0.3, -0.2])
    z, lengths, qpos = _inputs("all")
    u_flex, g_flex, _ = _run(model, "flex", z, lengths, qpos)
    u_fast, g_fast, _ = _run(model, "fast", z, lengths, qpos)
    torch.testing.assert_close(u_flex, u_fast)
    for name in g_fast:
        torch.testing.assert_close(g_flex[name], g_fast[name], msg=name)


def test_banded_window_attention_with_a_slope_passes_gradcheck():
    g = torch.Generator().manual_seed(4)
    shapes = [(2, 11, D), (D, D), (D, D), (D, D)]  # h, W^Q, W^K, W^V
    x = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    slope = torch.tensor([0.4, -0.3], dtype=torch.float64, requires_grad=True)
    windows = torch.randint(1, 5, (2, 11), generator=g)

    def out(h, w_q, w_k, w_v, s):
        return fast.band_window_attention(h, (w_q, w_k, w_v), windows, H, s)

    assert torch.autograd.gradcheck(out, (*x, slope))


def test_chunked_block_attention_with_a_slope_passes_gradcheck():
    g = torch.Generator().manual_seed(3)
    L, nB = 11, 3
    shapes = [(1, L, D), (D, D), (1, nB, D), (1, nB, D)]  # h, W^Q, block keys, block values
    x = [torch.randn(s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    slope = torch.tensor([0.4, -0.3], dtype=torch.float64, requires_grad=True)
    block_mask = torch.tensor([[True, True, True]])

    def out(h, w_q, k, v, s):
        return fast.causal_block_attention(h, w_q, k, v, block_mask, b, H, chunk=4, slope=s)[0]

    assert torch.autograd.gradcheck(out, (*x, slope))


@pytest.mark.parametrize(("objective", "kernel"), [("last", "reference"), ("last", "fast"), ("all", "fast")])
def test_a_steep_slope_selects_the_most_recent_visible_blocks(objective, kernel):
    model = _model(objective)
    _slopes(model, [50.0, 50.0], [0.0, 0.0])
    model.kernel = kernel
    lengths = torch.tensor([37, 21])
    z = torch.randn(2, 37, Z, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    qpos = (lengths - 1)[:, None] if objective == "last" else torch.arange(37).expand(2, 37).contiguous()
    with torch.no_grad():
        _, ex = model.encode(z, lengths, qpos)
    last = (lengths - 1) if objective == "last" else torch.tensor([36, 20])
    col = 0 if objective == "last" else last
    picked = ex.selected_blocks[torch.arange(2), col].sort(-1).values
    # the query at position p sees the complete blocks before p // b (last: its own partial one too)
    newest = last // b - (0 if objective == "last" else 1)
    want = torch.stack([newest - 1, newest], -1)
    assert torch.equal(picked, want)
