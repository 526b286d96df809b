"""How a training stage ends, for every trainer: fit, the final validation, the stage folder
written atomically with its manifest, the epoch checkpoints removed.

`train_stage` is the whole of it for a stage with one training (the SAL, SASRec, the two-tower
baselines, MMGCN); `write_stage` is its second half, for fuse-train, whose stage holds two
trainings (LightGCN, then the MFL).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mufasa_cli import artifacts
from mufasa_cli.config import TrainConfig
from mufasa_cli.runtime import dist
from mufasa_cli.runtime.loop import FitResult, OnStep, fit

MAIN_METRIC = "NDCG@10"  # early stopping and model choice: validation NDCG@10, higher is better


def write_stage(
    run_dir: Path,
    stage: str,
    *,
    files: Callable[[Path], dict | None],
    config: dict,
    seed: int | None,
    inputs: dict,
    counts: dict,
    started: float,
    extra: dict,
    checkpoints: Path | None,
    force: bool,
) -> dict:
    """RUN/<stage>/ written atomically: files(tmp) saves the stage's files (and may return more
    manifest entries), then the manifest; the stage's checkpoint folder is removed after."""
    with artifacts.stage_writer(run_dir / stage, force=force) as tmp:
        more = files(tmp) or {}
        manifest = artifacts.write_manifest(
            tmp,
            stage=stage,
            config=config,
            seed=seed,
            inputs=inputs,
            counts=counts,
            wall_time_s=time.perf_counter() - started,
            extra={**extra, **more},
        )
    if checkpoints is not None:
        shutil.rmtree(checkpoints, ignore_errors=True)
    return manifest


def train_stage(
    run_dir: Path,
    stage: str,
    *,
    name: str,
    model: nn.Module,
    train: TrainConfig,
    seed: int,
    steps_per_epoch: int,
    batches: Callable[[np.random.Generator], Iterable[Any]],
    step_loss: Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
    validate: Callable[[], dict[str, float]],
    checkpoint: Path,
    fingerprint: dict,
    resume: bool,
    on_step: OnStep | None,
    files: Callable[[Path], dict | None],
    config: dict,
    inputs: dict,
    counts: Callable[[], dict] | dict,
    started: float,
    device: torch.device,
    force: bool,
    extra: Callable[[], dict] | None = None,
) -> dict:
    """Train `model` (runtime.loop.fit, early-stopped on validate()[MAIN_METRIC]), validate it
    once more with its best weights, and write RUN/<stage>/ (write_stage) with the validation
    metrics and the training summary in the manifest. `extra()` and `counts` (or `counts()`)
    are read after training. Returns the manifest; {} on the ranks other than 0 under torchrun
    (rank 0 writes)."""
    result: FitResult = fit(
        name=name,
        model=model,
        cfg=train,
        seed=seed,
        steps_per_epoch=steps_per_epoch,
        batches=batches,
        step_loss=step_loss,
        validate=lambda: validate()[MAIN_METRIC],
        checkpoint=checkpoint,
        fingerprint=fingerprint,
        resume=resume,
        on_step=on_step,
    )
    model.eval()
    metrics = validate()
    if not dist.is_main():  # every rank holds the same weights; rank 0 writes them
        return {}
    return write_stage(
        run_dir,
        stage,
        files=files,
        config=config,
        seed=seed,
        inputs=inputs,
        counts=counts() if callable(counts) else counts,
        started=started,
        extra={"device": str(device), **(extra() if extra else {}), "valid": metrics, **result.summary()},
        checkpoints=checkpoint.parent,
        force=force,
    )
