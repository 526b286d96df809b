"""Dataset sources: each turns its files into a RawDataset (see base.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mufasa_cli.config import PrepareConfig
from mufasa_cli.data.sources import custom, microlens, movielens, recbole, synthetic
from mufasa_cli.data.sources.base import BadRows, RawDataset
from mufasa_cli.errors import DataSchemaError, RecipeError


def check_flags(cfg: PrepareConfig) -> None:
    """Flag combinations that make no sense for the dataset fail before any work."""
    if cfg.dataset == "synthetic":
        if cfg.sources:
            raise RecipeError("synthetic is generated; --source does not apply to it")
        if cfg.preset is not None and cfg.preset not in synthetic.PRESETS:
            raise RecipeError(f"--preset {cfg.preset!r}: choose one of {', '.join(synthetic.PRESETS)}")
        return
    if cfg.preset is not None:
        raise RecipeError(f"--preset applies to the synthetic dataset only, not {cfg.dataset}")
    if not cfg.sources:
        raise RecipeError(f"{cfg.dataset} needs --source PATH pointing at its downloaded files")
    if len(cfg.sources) > 1 and cfg.dataset != "microlens":
        raise RecipeError(f"{cfg.dataset} takes one --source (several are allowed for microlens only)")
    for s in cfg.sources:
        if not Path(s).exists():
            raise DataSchemaError(f"{s}: no such file or folder (--source)")


def load_source(cfg: PrepareConfig, bad: BadRows, on_progress: Callable[[int, int], None] | None = None) -> RawDataset:
    """The source's raw tables; call check_flags(cfg) first (prepare.run does, before any work).
    A source with no interaction left to read is refused, naming its file."""
    raw = _load(cfg, bad, on_progress)
    if raw.interactions.height == 0:
        skipped = f" ({bad.total} bad rows skipped)" if bad.total else ""
        raise DataSchemaError(f"{raw.interactions_file or cfg.sources[0]}: no interactions to read{skipped}")
    return raw


def _load(cfg: PrepareConfig, bad: BadRows, on_progress: Callable[[int, int], None] | None) -> RawDataset:
    sources = [Path(s) for s in cfg.sources]
    match cfg.dataset:
        case "synthetic":
            return synthetic.generate(
                synthetic.preset_config(cfg.preset or "default", cfg.zero_shot_users), cfg.seed, on_progress
            )
        case "microlens":
            return microlens.load(sources, bad)
        case "movielens":
            return movielens.load(sources[0], bad)
        case "recbole":
            return recbole.load(sources[0], bad)
        case "custom":
            return custom.load(sources[0], bad)
    raise RecipeError(f"unknown dataset {cfg.dataset!r}")
