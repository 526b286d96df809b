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

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mufasa_cli import artifacts
from mufasa_cli.config import AlignConfig, RecipeError, TrainConfig
from mufasa_cli.data.sequences import load_sequences, split_for_training
from mufasa_cli.losses import Negatives, full_softmax_loss, in_batch, item_log_q, sampled_softmax_loss, uniform
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
    model = Aligner(SALEncoder(z_np.shape[1], cfg.sal), cfg.tau, cfg.learn_tau, fusion, ids_for).to(device)
    model.sal.kernel = kernel
    frozen_z = torch.as_tensor(z_np, device=device)
    log_p = item_log_q(trained, N).to(device)
    train_cfg = train_config(cfg)
    make = all_batches if cfg.sal.objective == "all" else last_batches
    batches = make(data, train_cfg.batch_size, cfg.sal.max_len, device, cfg.length_pool)

    def item_vectors(items: torch.Tensor, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(unique items, their content z) for the ids in `items`; z recomputed when finetuning."""
        unique = torch.unique(items)
        if fusion is None:
            return unique, frozen_z[unique]
        return unique, mb.encode(fusion, unique, train)

    def step(batch):
        ids, lengths, qpos, targets = batch
        real = targets >= 0
        if cfg.full_softmax:  # every item a column: the catalogue's z (and e) each step
            extra = torch.arange(N, device=device)
        else:
            extra = torch.randint(0, N, (cfg.uniform_negatives,), device=device)
        unique, content = item_vectors(torch.cat([ids.flatten(), targets[real], extra]), True)
        z_u = model.with_ids(content, unique)
        local = lambda x: torch.searchsorted(unique, x)  # noqa: E731  item id -> row of z_u
        out, _ = model.sal.encode(z_u[local(ids)], lengths, qpos)
        u, t = out[real], targets[real]  # (R, D), (R,)
        e_all = model.sal.items(z_u)
        if cfg.full_softmax:  # exact softmax over the catalogue: no sampling, so no correction
            loss = full_softmax_loss(u, e_all, t, model.tau())
        else:
            loss = sampled_loss(u, t, e_all, local, extra)
        shown = {"softmax": loss.item()}
        if fusion is not None and cfg.mfl_weight > 0:
            batch_items = torch.unique(torch.cat([ids.flatten(), t]))  # eq. 5 on the batch's items
            aux, mfl_parts = mb.loss(fusion, batch_items, True, z=content[local(batch_items)])
            loss = loss + cfg.mfl_weight * aux
            shown["mfl"] = mfl_parts["total"]
        if cfg.learn_tau:
            shown["tau"] = model.tau().item()
        return loss, shown

    def sampled_loss(u, t, e_all, local, extra) -> torch.Tensor:
        """In-batch softmax with logQ correction, plus the uniform draws `extra` as columns."""
        e = e_all[local(t)]
        if cfg.sal.objective == "all" and len(t) > cfg.in_batch_negatives:
            cols = torch.randperm(len(t), device=device)[: cfg.in_batch_negatives]
        else:
            cols = torch.arange(len(t), device=device)
        parts = [in_batch(e[cols], t[cols], log_p)]
        if cfg.uniform_negatives:
            drawn, counts = torch.unique(extra, return_counts=True)  # a column per item, not per draw
            parts.append(uniform(e_all[local(drawn)], drawn, N, counts))
        own = log_p[t] + math.log(len(cols))  # the positive's in-batch correction
        return sampled_softmax_loss(u, e, t, own, Negatives.cat(parts), model.tau())

    seen = history_csr(data.valid_hist)

    @torch.no_grad()
    def current_z() -> torch.Tensor:
        z = frozen_z if fusion is None else torch.as_tensor(mb.embed_all(fusion)[0], device=device)
        return model.with_ids(z)

    def valid_metrics() -> dict[str, float]:
        z = current_z()
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
            artifacts.save_tensors(tmp / FUSED_FILE, {"z": current_z().cpu().numpy()})

    return train_stage(
        run_dir,
        STAGE,
        name="sal",
        model=model,
        train=train_cfg,
        seed=seed,
        steps_per_epoch=max(1, -(-len(data.train_seqs) // train_cfg.batch_size)),
        batches=batches,
        step_loss=step,
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


def train_config(cfg: AlignConfig) -> TrainConfig:
    """The training schedule of the configured objective."""
    return cfg.train_all if cfg.sal.objective == "all" else cfg.train
