"""SASRec: causal, padding-safe (no NaN from all-padding rows), and its loss falls on tiny data."""

import numpy as np
import torch
from torch.nn import functional as F

from mufasa_cli.baselines.sasrec import SASRec, left_pad
from mufasa_cli.config import SASRecConfig, TrainConfig

CFG = SASRecConfig(d_model=16, num_layers=2, num_heads=2, inner=32, dropout=0.0, max_len=6)


def test_left_padding_and_no_nan_for_short_histories():
    torch.manual_seed(0)
    model = SASRec(10, CFG).eval()
    ids = left_pad([np.array([1, 2]), np.array([3]), np.arange(9) % 10], 6, 10)
    assert ids.tolist()[0] == [10, 10, 10, 10, 1, 2] and ids.tolist()[2] == [3, 4, 5, 6, 7, 8]
    with torch.no_grad():
        h = model(ids)
    assert torch.isfinite(h).all()
    # real positions never read the padding: garbage in the padding slots changes nothing there
    with torch.no_grad():
        model.items.weight[10] = torch.randn(16) * 100
        again = model(ids)
    torch.testing.assert_close(again[0, 4:], h[0, 4:])
    torch.testing.assert_close(again[2], h[2])


def test_causal_outputs_ignore_later_items():
    torch.manual_seed(0)
    model = SASRec(10, CFG).eval()
    a = left_pad([np.array([1, 2, 3, 4])], 6, 10)
    b = left_pad([np.array([1, 2, 3, 9])], 6, 10)
    with torch.no_grad():
        ha, hb = model(a), model(b)
    torch.testing.assert_close(ha[0, :5], hb[0, :5])
    assert not torch.allclose(ha[0, 5], hb[0, 5])


def test_cross_entropy_falls_on_a_repeating_pattern():
    torch.manual_seed(0)
    model = SASRec(
        8, SASRecConfig(d_model=16, num_layers=1, num_heads=2, inner=32, dropout=0.0, max_len=6, train=TrainConfig())
    )
    seqs = [np.array([(s + i) % 8 for i in range(7)]) for s in range(8)]  # next = current + 1
    inputs = left_pad([q[:-1] for q in seqs], 6, 8)
    targets = left_pad([q[1:] for q in seqs], 6, 8)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        h = model(inputs)
        loss = F.cross_entropy(h.reshape(-1, 16) @ model.item_vectors().T, targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def test_training_windows_make_every_item_after_the_first_a_target_once():
    from mufasa_cli.data.sequences import training_windows

    seq = np.arange(12)
    windows = training_windows([seq, np.array([7, 8]), np.array([5])], 5)
    assert [w.tolist() for w, _ in windows] == [[6, 7, 8, 9, 10, 11], [1, 2, 3, 4, 5, 6], [0, 1], [7, 8]]
    assert [first for _, first in windows] == [0, 0, 0, 0]
    targets = sorted(t for w, _ in windows[:3] for t in w[1:].tolist())
    assert targets == list(range(1, 12))


def test_overlapping_windows_own_each_target_once_with_long_context():
    from mufasa_cli.data.sequences import training_windows

    seq = np.arange(12)  # item i at index i, so targets are their own context length
    windows = training_windows([seq], 5, stride=2)
    assert [(w.tolist(), first) for w, first in windows] == [
        ([6, 7, 8, 9, 10, 11], 3),  # owns 10, 11
        ([4, 5, 6, 7, 8, 9], 3),  # owns 8, 9
        ([2, 3, 4, 5, 6, 7], 3),  # owns 6, 7
        ([0, 1, 2, 3, 4, 5], 3),  # owns 4, 5
        ([0, 1, 2, 3], 1),  # owns 2, 3: 1 belongs to the last window
        ([0, 1], 0),  # owns 1
    ]
    owned = [t for w, first in windows for t in w[1:][first:].tolist()]
    assert sorted(owned) == list(range(1, 12))
    # every owned target beyond the sequence start sees at least max_len + 1 - stride = 4 items
    for w, first in windows:
        for j in range(first, len(w) - 1):
            assert j + 1 >= 4 or w[0] == 0


def test_last_only_equals_the_last_position_of_the_full_forward_with_gradients():
    torch.manual_seed(0)
    model = SASRec(10, CFG).eval()
    ids = left_pad([np.array([1, 2]), np.array([3]), np.arange(9) % 10, np.array([4, 5, 6, 7, 8, 9])], 6, 10)
    full = model(ids)[:, -1:]
    (g_full,) = torch.autograd.grad(full.square().sum(), model.items.weight)
    last = model(ids, last_only=True)
    (g_last,) = torch.autograd.grad(last.square().sum(), model.items.weight)
    assert last.shape == (4, 1, 16)
    torch.testing.assert_close(last, full)
    torch.testing.assert_close(g_last, g_full)


def test_stride_one_windows_are_one_target_samples_at_the_last_position():
    from mufasa_cli.data.sequences import training_windows

    seq = np.arange(9)
    windows = training_windows([seq], 4, stride=1)
    # one window per target 1..8, each ending at its target with up to 4 items of context
    assert [w.tolist() for w, _ in windows][:3] == [[4, 5, 6, 7, 8], [3, 4, 5, 6, 7], [2, 3, 4, 5, 6]]
    assert [w[-1] for w, _ in windows] == list(range(8, 0, -1))
    # the window owns its last target only: that target sits at the last input position
    assert all(first == len(w) - 2 for w, first in windows)


def test_one_target_training_runs_end_to_end_and_its_loss_falls(tiny_run, tmp_path):
    import shutil

    from mufasa_cli import artifacts
    from mufasa_cli.baselines import sasrec
    from mufasa_cli.data import schema
    from mufasa_cli.data.sequences import load_sequences

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "data", run / "data")
    cfg = SASRecConfig(
        d_model=16, num_heads=2, inner=32, max_len=8, stride=1, train=TrainConfig(epochs=4, batch_size=64, lr=3e-3)
    )
    num_items = artifacts.load_table(run / "data" / schema.ITEMS_FILE, schema.ITEM_COLUMNS).height
    m = sasrec.train(
        run,
        cfg,
        seqs=load_sequences(run / "data"),
        num_items=num_items,
        seed=0,
        device=torch.device("cpu"),
        resume=False,
    )
    ce = [h["ce"] for h in m["history"]]
    assert m["config"]["stride"] == 1 and len(ce) == 4
    assert ce[-1] < ce[0]
    model, _ = sasrec.load(run, torch.device("cpu"))
    assert model.cfg.stride == 1
