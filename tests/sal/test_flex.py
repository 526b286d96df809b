"""The FlexAttention path (kernel "flex", the GPU path for objective `all`) against the
reference. FlexAttention runs forward only on CPU, so here the forward is compared; its
training (backward) is compared on CUDA only, where the test skips without a GPU."""

import warnings

import pytest
import torch

from mufasa_cli.sal import flex
from mufasa_cli.sal.config import SALConfig
from mufasa_cli.sal.model import SALEncoder

pytestmark = pytest.mark.skipif(not flex.available(), reason="this torch has no FlexAttention")
D, H, Z = 16, 2, 12
SETTINGS = [
    {"block_size": 4, "num_selected": 2, "window": 0},
    {"block_size": 8, "num_selected": 3, "window": 12},
]


def _model(selection, setting, device="cpu"):
    torch.manual_seed(0)
    cfg = SALConfig(d_model=D, num_heads=H, max_len=300, objective="all", selection=selection, **setting)
    return SALEncoder(Z, cfg).to(device)


def _batch(device="cpu"):
    lengths = torch.tensor([1, 3, 4, 5, 150, 257], device=device)  # 257: past two FlexAttention tiles
    L = int(lengths.max())
    z = torch.randn(len(lengths), L, Z, generator=torch.Generator().manual_seed(1)).to(device)
    return z, lengths, torch.arange(L, device=device).expand(len(lengths), L).contiguous()


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("selection", ["query", "query_block"])
def test_flex_forward_equals_the_reference(selection, setting, monkeypatch):
    calls = []
    real = flex._attend
    monkeypatch.setattr(flex, "_attend", lambda *a: calls.append(1) or real(*a))
    model = _model(selection, setting)
    z, lengths, qpos = _batch()
    outs = {}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FlexAttention's eager-mode notice on CPU
        for kernel in ("reference", "flex"):
            model.kernel = kernel
            outs[kernel] = model.encode(z, lengths, qpos)
    (u_ref, ex_ref), (u_flex, ex_flex) = outs["reference"], outs["flex"]
    torch.testing.assert_close(u_flex, u_ref, rtol=1e-5, atol=1e-5)
    assert len(calls) == 3  # window, block and selective each went through FlexAttention
    assert torch.equal(ex_flex.selected_valid, ex_ref.selected_valid)
    ok = ex_ref.selected_valid
    assert torch.equal(ex_flex.selected_blocks[ok], ex_ref.selected_blocks[ok])


def test_flex_falls_back_to_fast_for_one_query_per_user():
    model = _model("query", SETTINGS[0])
    z, lengths, _ = _batch()
    with torch.no_grad():
        model.kernel = "flex"
        u_flex, _ = model.users(z, lengths)
        model.kernel = "reference"
        u_ref, _ = model.users(z, lengths)
    torch.testing.assert_close(u_flex, u_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention trains on CUDA only")
@pytest.mark.parametrize("selection", ["query", "query_block"])
def test_flex_training_step_equals_the_reference_on_cuda(selection):
    model = _model(selection, SETTINGS[0], "cuda")
    z, lengths, qpos = _batch("cuda")
    results = {}
    for kernel in ("reference", "flex"):
        model.kernel = kernel
        model.zero_grad(set_to_none=True)
        u, _ = model.encode(z, lengths, qpos)
        u.pow(3).sum().backward()
        results[kernel] = (u.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    torch.testing.assert_close(results["flex"][0], results["reference"][0], rtol=1e-4, atol=1e-4)
    for name, grad in results["reference"][1].items():
        torch.testing.assert_close(results["flex"][1][name], grad, rtol=1e-3, atol=1e-4, msg=name)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        u, _ = model.encode(z, lengths, qpos)
    torch.testing.assert_close(u.float(), results["reference"][0], rtol=0.05, atol=0.05)
