"""What the sequence baselines share."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from mufasa_cli.runtime.stage import train_stage


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
