"""What the sequence baselines share."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from mufasa_cli.runtime.stage import train_stage


def training_windows(seqs: list[np.ndarray], max_len: int, stride: int | None = None) -> list[tuple[np.ndarray, int]]:
    """Cut each train sequence into windows of at most max_len + 1 items (max_len inputs, each
    predicting the next), ending at its last item and then every `stride` items earlier
    (default max_len: windows do not overlap). Returns (window, first): the window's targets
    from `first` on are its own, so that every item after the first is a target exactly once
    however long the sequence (as RecBole's per-interaction samples cover every target). A
    smaller stride gives every target at least max_len + 1 - stride items of context, at
    max_len / stride times the cost; windows with no target are dropped."""
    stride = max_len if stride is None else stride
    out = []
    for s in seqs:
        for end in range(len(s), 1, -stride):
            start = max(0, end - max_len - 1)
            first = 0 if end - stride <= 1 else max(0, end - stride - start - 1)
            out.append((s[start:end], first))
    return out


def train_baseline(run_dir: Path, name: str, cfg: Any, data_record: dict, **train: Any) -> dict:
    """runtime.stage.train_stage for a baseline: RUN/baselines/NAME/ (always replaced: the cache
    decides when to retrain), its checkpoints in RUN/baselines/.NAME.ckpt/, fingerprinted and
    recorded by its config and the data/ it read. `train` holds the rest: model, batches,
    step_loss, validate, files, counts, …"""
    settings = asdict(cfg)
    return train_stage(
        run_dir,
        f"baselines/{name}",
        name=name,
        train=cfg.train,
        checkpoint=run_dir / "baselines" / f".{name}.ckpt" / "model.pt",
        fingerprint={"config": settings, "data": data_record},
        config=settings,
        inputs={"data": data_record},
        force=True,
        **train,
    )
