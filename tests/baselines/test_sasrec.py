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
    from mufasa_cli.baselines.common import training_windows

    seq = np.arange(12)
    windows = training_windows([seq, np.array([7, 8]), np.array([5])], 5)
    assert [w.tolist() for w, _ in windows] == [[6, 7, 8, 9, 10, 11], [1, 2, 3, 4, 5, 6], [0, 1], [7, 8]]
    assert [first for _, first in windows] == [0, 0, 0, 0]
    targets = sorted(t for w, _ in windows[:3] for t in w[1:].tolist())
    assert targets == list(range(1, 12))


def test_overlapping_windows_own_each_target_once_with_long_context():
    from mufasa_cli.baselines.common import training_windows

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
