"""`align-train` and `embed`: the SAL trained on the MFL vectors, then user/item embeddings.

Objective `last` (the paper): each epoch, every training user's train sequence is cut at a
random point; the items before the cut are the history, the item at the cut the target; the
batch's targets are the negatives. Objective `all`: every position of a user's train
sequence is a causal query whose target is the next item; a sample of the batch's targets
(at most `in_batch_negatives`) are the negatives. Either may add uniform negatives.
Early stopping on leave-one-out validation NDCG@10 by full ranking over all items (the
user's train items masked): history = all train items, target = the valid item.

z, the fused item vectors, is frozen by default. With `finetune_mfl` the fusion network of
RUN/fuse is trained too: each step encodes the batch's items afresh and adds its four losses
(eq. 5) on them, weighted by `mfl_weight`; the new z is written to RUN/align/fused.safetensors
and `embed` uses it. With `item_ids` (beyond the paper) every item trained on gets a
trainable vector, zero at the start, added to its z; the sum is what the SAL reads and what is
written to RUN/align/fused.safetensors, the vectors themselves to RUN/align/item_ids.safetensors.

Legend: U users, N items, L history length, R queries in a batch, d_z fused width, D SAL width.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mufasa_cli import artifacts
from mufasa_cli.config import AlignConfig, RecipeError
from mufasa_cli.data.sequences import load_sequences, split_for_training
from mufasa_cli.losses import item_log_q
from mufasa_cli.metrics.ranking import history_csr, target_ranks, top10
from mufasa_cli.mfl.train import FUSED_FILE, MFL_FILE, load_mfl
from mufasa_cli.runtime import dist
from mufasa_cli.runtime.loop import OnStep, seed_everything
from mufasa_cli.runtime.stage import train_stage
from mufasa_cli.sal.aligner import Aligner
from mufasa_cli.sal.batches import all_batches, last_batches
from mufasa_cli.sal.embed import user_embeddings
from mufasa_cli.sal.files import IDS_FILE, SAL_FILE, STAGE, fuse_z
from mufasa_cli.sal.model import SALEncoder, resolve_kernel


def run_align(
    run_dir: Path,
    cfg: AlignConfig,
    *,
    seed: int,
    device: torch.device,
    resume: bool,
    force: bool,
    on_step: OnStep | None = None,
    kernel: str = "auto",
) -> dict:
    started = time.perf_counter()
    kernel = resolve_kernel(kernel)
    device = dist.setup(device)  # under torchrun: join the process group, one device per rank
    if kernel == "flex" and device.type != "cuda":
        raise RecipeError("--kernel flex trains on CUDA only (FlexAttention has no CPU backward); use fast")
    out_dir = run_dir / STAGE
    artifacts.check_writable(out_dir, force)
    data_dir = run_dir / "data"
    artifacts.verify_stage(data_dir)
    data_record = artifacts.input_record(data_dir)  # recorded from what is read, not at the end
    z_np, fuse_record = fuse_z(run_dir)
    data = split_for_training(load_sequences(data_dir), len(z_np), data_dir)
    N = data.num_items
    seed_everything(seed)
    fusion, mb = load_mfl(run_dir, device) if cfg.finetune_mfl else (None, None)
    trained = torch.as_tensor(np.concatenate(data.train_seqs))  # every train interaction's item
    ids_for = None
    if cfg.item_ids:  # the items trained on; cold ones keep their content z
        ids_for = torch.zeros(N, dtype=torch.bool)
        ids_for[trained] = True
    log_p = item_log_q(trained, N)
    z = torch.as_tensor(z_np)
    model = Aligner(SALEncoder(z_np.shape[1], cfg.sal, kernel), cfg, z, log_p, fusion, mb, ids_for).to(device)
    train_cfg = cfg.training()
    if cfg.sal.objective == "all":
        batches = all_batches(data, train_cfg.batch_size, cfg.sal.max_len, device, cfg.length_pool, cfg.window_stride)
    else:
        batches = last_batches(data, train_cfg.batch_size, cfg.sal.max_len, device, cfg.length_pool)

    seen = history_csr(data.valid_hist)

    def valid_metrics() -> dict[str, float]:
        z = model.current_z()
        users = user_embeddings(model.sal, z, data.valid_hist, cfg.sal.max_len)
        with torch.no_grad():
            items = model.sal.items(z)
        ranks = target_ranks(
            lambda rows: users[torch.as_tensor(rows, device=device)],
            items,
            np.arange(len(data.valid_hist)),
            data.valid_target,
            *seen,
        )
        return top10(ranks)

    def files(tmp: Path) -> None:
        state = {k: v.detach().cpu().contiguous().numpy() for k, v in model.sal.state_dict().items()}
        artifacts.save_tensors(
            tmp / SAL_FILE, state, {"config": asdict(cfg.sal), "z_dim": int(z_np.shape[1]), "tau": model.tau().item()}
        )
        if fusion is not None:
            fstate = {k: v.detach().cpu().contiguous().numpy() for k, v in fusion.state_dict().items()}
            meta = artifacts.tensor_metadata(run_dir / "fuse" / MFL_FILE)
            artifacts.save_tensors(tmp / MFL_FILE, fstate, meta)
        if model.ids is not None:
            ids = (model.ids * model.has_id).detach().cpu().numpy()
            artifacts.save_tensors(tmp / IDS_FILE, {"emb": ids, "has_id": model.has_id[:, 0].bool().cpu().numpy()})
        if fusion is not None or model.ids is not None:
            artifacts.save_tensors(tmp / FUSED_FILE, {"z": model.current_z().cpu().numpy()})

    return train_stage(
        run_dir,
        STAGE,
        name="sal",
        model=model,
        train=train_cfg,
        seed=seed,
        # the schedule's horizon: an epoch's batches of users, or of windows with a stride
        steps_per_epoch=max(1, -(-batches.units // train_cfg.batch_size)),
        batches=batches,
        step_loss=model,
        validate=valid_metrics,
        checkpoint=run_dir / f".{STAGE}.ckpt" / "sal.pt",
        fingerprint={"align": asdict(cfg), "fuse": fuse_record},
        resume=resume,
        on_step=on_step,
        files=files,
        config=asdict(cfg),
        inputs={"fuse": fuse_record, "data": data_record},
        counts={"train_users": len(data.train_seqs), "valid_users": len(data.valid_hist), "items": N},
        started=started,
        device=device,
        force=force,
        extra=lambda: {
            "world_size": dist.world(),
            "kernel": kernel,
            "objective": cfg.sal.objective,
            "tau": model.tau().item(),
        },
    )
