"""--kernel compiled: the fast ops through torch.compile give the reference's outputs and
gradients; without a C++ compiler it runs as fast, with one notice."""

import pytest
import torch

from mufasa_cli.sal import model as sal_model
from mufasa_cli.sal.config import SALConfig
from mufasa_cli.sal.model import SALEncoder, resolve_kernel

needs_compiler = pytest.mark.skipif(not sal_model.compiler_available(), reason="no C++ compiler for Inductor")


@needs_compiler
def test_compiled_equals_reference_outputs_and_gradients():
    # objective all, the path the compiled kernel is for (the only test here that compiles:
    # Inductor takes about a minute and a half on 2 cores for the forward and backward)
    objective = "all"
    torch.manual_seed(0)
    cfg = SALConfig(d_model=16, num_heads=2, block_size=4, num_selected=2, max_len=24, objective=objective)
    ref = SALEncoder(8, cfg, "reference").double()
    comp = SALEncoder(8, cfg, "compiled").double()
    comp.load_state_dict(ref.state_dict())
    z = torch.randn(3, 21, 8, dtype=torch.float64)
    lengths = torch.tensor([21, 13, 5])
    qpos = torch.arange(21).expand(3, -1) if objective == "all" else (lengths - 1)[:, None]
    outs = []
    for m in (ref, comp):
        out, _ = m.encode(z, lengths, qpos)
        real = (qpos < lengths[:, None]) if objective == "all" else torch.ones_like(qpos, dtype=torch.bool)
        (out[real] ** 2).sum().backward()
        outs.append((out[real].detach(), {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-9, atol=1e-9)
    assert outs[1][1].keys() == outs[0][1].keys()
    for k in outs[0][1]:
        torch.testing.assert_close(outs[1][1][k], outs[0][1][k], rtol=1e-8, atol=1e-9, msg=k)
    assert comp.kernel == "compiled"


def test_without_a_compiler_compiled_runs_as_fast_with_one_notice(monkeypatch, tmp_path):
    monkeypatch.setattr(sal_model, "compiler_available", lambda: False)
    assert resolve_kernel("compiled") == "fast"
    assert SALEncoder(8, SALConfig(d_model=16), "compiled").kernel == "fast"
    from tests.conftest import invoke

    result = invoke("align-train", tmp_path / "missing", "--kernel", "compiled")
    assert "--kernel compiled: no C++ compiler found" in result.stderr
    assert result.stderr.count("no C++ compiler") == 1
