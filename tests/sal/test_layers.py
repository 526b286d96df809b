"""Stacked SAL layers (sal.layers > 1, beyond the paper): the kernels agree, every output is
causal, padding is ignored, one layer is the paper's model, and old one-layer weights load."""

import pytest
import torch

from mufasa_cli.errors import RecipeError
from mufasa_cli.sal.config import SALConfig
from mufasa_cli.sal.model import SALEncoder, upgrade_state

ZD, D, b = 6, 8, 4
EDGE_LENGTHS = [1, b - 1, b, b + 1, 13]


def _model(layers=2, **kw):
    torch.manual_seed(0)
    cfg = SALConfig(d_model=D, num_heads=2, block_size=b, num_selected=2, objective="all", layers=layers, **kw)
    return SALEncoder(ZD, cfg).to(torch.float64)


def _batch(lengths, seed=0):
    lengths = torch.tensor(lengths)
    L = int(lengths.max())
    z = torch.randn(len(lengths), L, ZD, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return z, lengths, torch.arange(L).expand(len(lengths), L).contiguous()


def test_stacked_layers_need_objective_all():
    with pytest.raises(RecipeError, match="objective all"):
        SALConfig(layers=2, objective="last")
    with pytest.raises(RecipeError, match="layers must be > 0"):
        SALConfig(layers=0)


def test_one_layer_is_the_papers_model():
    model = SALEncoder(ZD, SALConfig(d_model=D, num_heads=2, block_size=b, num_selected=2))
    assert model.norm is None and not hasattr(model.layers[0], "ffn")
    names = {n.split(".")[2] for n, _ in model.named_parameters() if n.startswith("layers.0.")}
    assert names == {"proj", "phi", "gate", "out"}


@pytest.mark.parametrize("selection", ["query", "query_block"])
def test_fast_equals_reference_with_stacked_layers(selection):
    model = _model(layers=3, selection=selection)
    z, lengths, qpos = _batch(EDGE_LENGTHS)
    outs, grads = {}, {}
    for kernel in ("reference", "fast"):
        model.kernel = kernel
        model.zero_grad(set_to_none=True)
        u, _ = model.encode(z, lengths, qpos)
        (u * torch.linspace(-1, 1, u.numel(), dtype=u.dtype).view_as(u)).sum().backward()
        outs[kernel] = u.detach()
        grads[kernel] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    torch.testing.assert_close(outs["fast"], outs["reference"], rtol=1e-10, atol=1e-12)
    assert grads["fast"].keys() == grads["reference"].keys()
    assert any(n.startswith("layers.2.ffn") for n in grads["fast"])
    for name in grads["reference"]:
        torch.testing.assert_close(grads["fast"][name], grads["reference"][name], rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("length", EDGE_LENGTHS)
def test_stacked_outputs_are_causal(length):
    # editing items after position p leaves every output at positions <= p unchanged
    model = _model(layers=2).eval()
    z, lengths, qpos = _batch([length])
    u, _ = model.encode(z, lengths, qpos)
    for p in range(length - 1):
        edited = z.clone()
        edited[:, p + 1 :] = torch.randn_like(edited[:, p + 1 :]) * 10
        v, _ = model.encode(edited, lengths, qpos)
        torch.testing.assert_close(v[:, : p + 1], u[:, : p + 1])


def test_user_vector_is_the_last_dense_output_and_ignores_padding():
    model = _model(layers=2).eval()
    z, lengths, qpos = _batch([1, 5, 13])
    every, _ = model.encode(z, lengths, qpos)
    u, _ = model.users(z, lengths)
    torch.testing.assert_close(u, every[torch.arange(3), lengths - 1])
    padded = torch.cat([z, torch.randn(3, 4, ZD, dtype=z.dtype) * 100], 1)
    torch.testing.assert_close(model.users(padded, lengths)[0], u)


def test_old_one_layer_weights_load_under_the_new_names():
    model = SALEncoder(ZD, SALConfig(d_model=D, num_heads=2, block_size=b, num_selected=2))
    old = {k.removeprefix("layers.0."): v for k, v in model.state_dict().items()}
    assert "proj.window.q.weight" in old and "out.bias" in old
    fresh = SALEncoder(ZD, SALConfig(d_model=D, num_heads=2, block_size=b, num_selected=2))
    fresh.load_state_dict(upgrade_state(old))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v)
