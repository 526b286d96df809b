"""The align stage's files and their loaders: the fused item vectors z it reads (RUN/fuse, or
RUN/align's own when the MFL was finetuned), and the trained SAL."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mufasa_cli import artifacts
from mufasa_cli.config import restore
from mufasa_cli.mfl.train import FUSED_FILE
from mufasa_cli.sal.config import SALConfig
from mufasa_cli.sal.model import SALEncoder, upgrade_state

STAGE = "align"
SAL_FILE = "sal.safetensors"
USERS_FILE, ITEMS_FILE = "users.safetensors", "items.safetensors"
IDS_FILE = "item_ids.safetensors"
EXTERNAL_FILE, EXTERNAL_TABLE = "external.safetensors", "external.parquet"


def load_z(run_dir: Path) -> tuple[np.ndarray, dict]:
    """Fused item vectors: RUN/align's when the MFL was finetuned there, else RUN/fuse's
    (refusing a fuse/ built from an older data/)."""
    tuned = run_dir / STAGE / FUSED_FILE
    if tuned.is_file():
        return artifacts.load_tensors(tuned, {"z": ("float32", (None, None))})["z"], artifacts.input_record(
            tuned.parent
        )
    return fuse_z(run_dir)


def fuse_z(run_dir: Path) -> tuple[np.ndarray, dict]:
    """align-train always starts from RUN/fuse's z, never from an earlier finetuned align/."""
    fuse_dir = run_dir / "fuse"
    artifacts.verify_stage(fuse_dir)
    artifacts.check_not_stale(fuse_dir)
    z = artifacts.load_tensors(fuse_dir / FUSED_FILE, {"z": ("float32", (None, None))})["z"]
    return z, artifacts.input_record(fuse_dir)


def load_sal(run_dir: Path, device: torch.device, kernel: str = "auto") -> tuple[SALEncoder, dict]:
    align_dir = run_dir / STAGE
    manifest = artifacts.verify_stage(align_dir)
    artifacts.check_not_stale(align_dir)
    meta = artifacts.tensor_metadata(align_dir / SAL_FILE)
    cfg = restore(SALConfig(), meta["config"], str(align_dir / SAL_FILE))
    model = SALEncoder(int(meta["z_dim"]), cfg, kernel)
    state = artifacts.load_tensors(align_dir / SAL_FILE, {})
    model.load_state_dict(upgrade_state({k: torch.as_tensor(v) for k, v in state.items()}))
    return model.to(device).eval(), manifest
