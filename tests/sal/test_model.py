import pytest
import torch

from mufasa_cli.errors import RecipeError
from mufasa_cli.sal.config import SALConfig
from mufasa_cli.sal.model import SALEncoder

ZD = 6


def _hist(lengths, L=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(lengths)
    return torch.randn(len(lengths), L or int(lengths.max()), ZD, generator=g), lengths


VARIANTS = [("full", ()), ("mean", ())] + [
    ("sparse", w) for w in [(), ("window",), ("block",), ("selective",), ("block", "selective")]
]


def _model(**kw):
    torch.manual_seed(0)
    return SALEncoder(ZD, SALConfig(d_model=8, num_heads=2, block_size=4, num_selected=2, **kw))


@pytest.mark.parametrize("objective", ["last", "all"])
@pytest.mark.parametrize(("attention", "without"), VARIANTS)
def test_every_variant_runs_is_finite_and_ignores_padding(attention, without, objective):
    model = _model(without=without, attention=attention, objective=objective)
    z, lengths = _hist([1, 3, 4, 5, 17])
    u, ex = model.users(z, lengths)
    assert u.shape == (5, 8) and torch.isfinite(u).all()
    padded = torch.cat([z, torch.randn(5, 6, ZD) * 100], 1)
    torch.testing.assert_close(model.users(padded, lengths)[0], u)
    if attention == "sparse":
        assert ex.gates.shape == (5, 1, 3 - len(without))
    u.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_without_block_still_selects_blocks():
    torch.manual_seed(0)
    model = SALEncoder(ZD, SALConfig(d_model=8, num_heads=2, block_size=4, num_selected=2, without=("block",)))
    z, lengths = _hist([17])
    _, ex = model.users(z, lengths)
    assert ex.block_weights is not None and ex.selected_blocks.shape == (1, 1, 2)
    assert ex.gates.shape == (1, 1, 2)  # window and selective only


def test_the_query_is_the_last_real_item():
    torch.manual_seed(0)
    model = SALEncoder(ZD, SALConfig(d_model=8, num_heads=2, block_size=4, attention="mean"))
    z, lengths = _hist([3, 3])
    z[1, :2] = z[0, :2]  # same first two items, different last item
    u, _ = model.users(z, lengths)
    assert not torch.allclose(u[0], u[1])
    z[1] = z[0]
    u, _ = model.users(z, lengths)
    torch.testing.assert_close(u[0], u[1])


@pytest.mark.parametrize(("attention", "without"), VARIANTS)
def test_objective_all_is_causal_and_its_last_query_is_the_user(attention, without):
    model = _model(without=without, attention=attention, objective="all", window=3)
    z, lengths = _hist([17, 9, 1], L=17)
    qpos = torch.minimum(torch.arange(17)[None, :], lengths[:, None] - 1)
    out, _ = model.encode(z, lengths, qpos)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[torch.arange(3), lengths - 1], model.users(z, lengths)[0])
    for t in [0, 3, 4, 7, 8, 12]:  # block edges for b = 4, and the window's
        edited = z.clone()
        edited[0, t + 1 :] = torch.randn(16 - t, ZD) * 10
        again, _ = model.encode(edited, lengths, qpos)
        torch.testing.assert_close(again[0, : t + 1], out[0, : t + 1])
        assert not torch.allclose(again[0, t + 1 :], out[0, t + 1 :])
    torch.testing.assert_close(again[1:], out[1:])  # other users untouched


def test_objective_last_sees_the_partial_last_block_and_all_does_not():
    z, lengths = _hist([6])  # blocks of 4: one complete, one partial (items 4, 5)
    last, causal = _model(objective="last"), _model(objective="all")
    _, ex = last.users(z, lengths)
    assert ex.block_weights[0, 0].gt(0).tolist() == [True, True]
    _, ex = causal.users(z, lengths)
    assert ex.block_weights[0, 0].gt(0).tolist() == [True, False]


def test_items_tower_shape():
    model = SALEncoder(ZD, SALConfig(d_model=8, num_heads=2))
    assert model.items(torch.randn(5, ZD)).shape == (5, 8)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention": "sparse2"}, "--attention"),
        ({"without": ("windows",)}, "--without 'windows'"),
        ({"without": ("window", "block", "selective")}, "at least one branch"),
        ({"phi": "max"}, "phi"),
        ({"d_model": 10, "num_heads": 4}, "divisible"),
        ({"objective": "next"}, "--objective 'next'"),
        ({"dropout": 1.0}, "--dropout 1.0"),
        ({"dropout": -0.1}, "--dropout -0.1"),
        ({"positions": 2000}, "positions 2000"),
        ({"positions": -1}, "positions -1"),
    ],
)
def test_sal_config_rejects_bad_values(kwargs, message):
    with pytest.raises(RecipeError, match=message):
        SALConfig(**kwargs)


@pytest.mark.parametrize("objective", ["last", "all"])
def test_dropout_scales_kept_history_entries_in_training_and_is_off_in_eval(objective):
    plain, dropped = _model(objective=objective), _model(objective=objective, dropout=0.5)
    z, lengths = _hist([5, 3], L=5)
    expected = plain.history(z, lengths)
    torch.manual_seed(1)
    h = dropped.train().history(z, lengths)
    zeroed = h == 0
    assert 0 < zeroed.float().mean() < 1  # p = 0.5 of 80 entries: some of each
    # the kept entries are scaled by 1 / (1 - p) = 2
    torch.testing.assert_close(h[~zeroed], 2 * expected[~zeroed])
    dropped.eval()
    torch.testing.assert_close(dropped.history(z, lengths), expected)
    for kernel in ("reference", "fast"):
        plain.kernel = dropped.kernel = kernel
        torch.testing.assert_close(dropped.users(z, lengths)[0], plain.eval().users(z, lengths)[0])


@pytest.mark.parametrize("objective", ["last", "all"])
def test_positions_past_the_last_row_share_it(objective):
    """positions P: the position added at index t is row min(t, P - 1), t counted from the start
    (objective all) or from the end (last); h - A_hist(z) is that row, hand-checked per index."""
    model = _model(objective=objective, positions=3).eval()
    assert model.position.weight.shape == (3, 8)
    z, lengths = _hist([5, 2], L=5)
    added = model.history(z, lengths) - model.hist_tower(z)
    table = model.position.weight
    for user, n in enumerate([5, 2]):
        for t in range(n):
            index = t if objective == "all" else n - 1 - t
            torch.testing.assert_close(added[user, t], table[min(index, 2)])
    # the cap changes nothing for positions below it
    full = _model(objective=objective)
    with torch.no_grad():
        full.position.weight[:3] = table
    capped = full.history(z, lengths) - full.hist_tower(z)
    for user, n in enumerate([5, 2]):
        index = torch.arange(n) if objective == "all" else n - 1 - torch.arange(n)
        below = index < 3
        torch.testing.assert_close(capped[user, :n][below], added[user, :n][below])
