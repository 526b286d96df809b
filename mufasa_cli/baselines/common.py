"""What the sequence baselines share."""

from __future__ import annotations

import numpy as np


def training_windows(seqs: list[np.ndarray], max_len: int) -> list[np.ndarray]:
    """Cut each train sequence into windows of at most max_len + 1 items (max_len inputs, each
    predicting the next), ending at its last item and then every max_len items earlier, so
    that every item after the first is a target exactly once however long the sequence (as
    RecBole's per-interaction samples cover every target); windows with no target are dropped."""
    out = []
    for s in seqs:
        for end in range(len(s), 1, -max_len):
            out.append(s[max(0, end - max_len - 1) : end])
    return out
