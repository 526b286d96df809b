"""`align-train` and `embed`: the SAL trained on frozen MFL vectors, then user/item embeddings.

Objective `last` (the paper): each epoch, every training user's train sequence is cut at a
random point; the items before the cut are the history, the item at the cut the target.
Early stopping on leave-one-out validation NDCG@10 by full ranking over all items (the
user's train items masked): history = all train items, target = the valid item.

Legend: U users, N items, L history length, d_z fused width, D SAL width.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from mufasa_cli import artifacts
from mufasa_cli.config import SALConfig, TrainConfig
from mufasa_cli.data import schema
from mufasa_cli.errors import DataSchemaError
from mufasa_cli.metrics.ranking import csr, hit_rate, ndcg, target_ranks
from mufasa_cli.mfl.train import FUSED_FILE
from mufasa_cli.runtime.loop import OnStep, fit, seed_everything
from mufasa_cli.sal.loss import item_log_q, sampled_softmax_loss
from mufasa_cli.sal.model import SALEncoder

STAGE = "align"
SAL_FILE = "sal.safetensors"
USERS_FILE, ITEMS_FILE = "users.safetensors", "items.safetensors"


@dataclass
class Sequences:
    """Each user's items in order, with the split of each, as one flat array + offsets."""

    items: np.ndarray  # (T,) int64
    splits: np.ndarray  # (T,) str
    indptr: np.ndarray  # (U+1,)
    roles: np.ndarray  # (U,) str

    def of(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.indptr[user], self.indptr[user + 1]
        return self.items[s:e], self.splits[s:e]


def load_sequences(data_dir: Path) -> Sequences:
    inter = artifacts.load_table(data_dir / schema.INTERACTIONS_FILE, schema.INTERACTION_COLUMNS).sort(["user", "pos"])
    users = artifacts.load_table(data_dir / schema.USERS_FILE, schema.USER_COLUMNS).sort("user")
    counts = np.bincount(inter["user"].to_numpy(), minlength=users.height)
    return Sequences(
        items=np.array(inter["item"]),
        splits=np.array(inter["split"].to_list()),
        indptr=np.concatenate([[0], np.cumsum(counts)]),
        roles=np.array(users["role"].to_list()),
    )


def load_z(run_dir: Path) -> tuple[np.ndarray, dict]:
    """Fused item vectors from RUN/fuse, refusing a fuse/ built from an older data/."""
    fuse_dir = run_dir / "fuse"
    artifacts.verify_stage(fuse_dir)
    artifacts.check_not_stale(fuse_dir)
    z = artifacts.load_tensors(fuse_dir / FUSED_FILE, {"z": ("float32", (None, None))})["z"]
    return z, artifacts.input_record(fuse_dir)


def pad(histories: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) item ids (the most recent max_len of each) and lengths (B,)."""
    cut = [h[-max_len:] for h in histories]
    lengths = np.array([len(h) for h in cut], dtype=np.int64)
    out = np.zeros((len(cut), max(int(lengths.max()), 1)), dtype=np.int64)
    for i, h in enumerate(cut):
        out[i, : len(h)] = h
    return torch.as_tensor(out), torch.as_tensor(lengths)


@torch.no_grad()
def user_embeddings(
    model: SALEncoder, z: torch.Tensor, histories: list[np.ndarray], max_len: int, chunk: int = 256
) -> torch.Tensor:
    model.eval()
    out = []
    for s in range(0, len(histories), chunk):
        ids, lengths = pad(histories[s : s + chunk], max_len)
        out.append(model.users(z[ids], lengths)[0])
    return torch.cat(out) if out else torch.zeros(0, model.cfg.d_model)


def run_align(
    run_dir: Path,
    cfg: SALConfig,
    train_cfg: TrainConfig,
    *,
    tau: float,
    seed: int,
    device: torch.device,
    resume: bool,
    force: bool,
    on_step: OnStep | None = None,
) -> dict:
    started = time.perf_counter()
    out_dir = run_dir / STAGE
    artifacts.check_writable(out_dir, force)
    data_dir = run_dir / "data"
    artifacts.verify_stage(data_dir)
    z_np, fuse_record = load_z(run_dir)
    seqs = load_sequences(data_dir)
    N = len(z_np)
    z = torch.as_tensor(z_np, device=device)
    seed_everything(seed)
    model = SALEncoder(z.shape[1], cfg).to(device)

    train_users, train_seqs, valid_hist, valid_target, valid_users = [], [], [], [], []
    for u in np.flatnonzero(seqs.roles == "train"):
        items, splits = seqs.of(int(u))
        tr = items[splits == "train"]
        if len(tr) >= 2:
            train_users.append(int(u))
            train_seqs.append(tr)
        va = items[splits == "valid"]
        if len(tr) >= 1 and len(va):
            valid_users.append(int(u))
            valid_hist.append(tr)
            valid_target.append(int(va[0]))
    if not train_seqs:
        raise DataSchemaError(f"{data_dir}: no training user has two train interactions to learn from")
    all_train = np.concatenate(train_seqs)
    log_q = item_log_q(torch.as_tensor(all_train), N).to(device)
    seen = csr(
        np.repeat(np.arange(len(valid_users)), [len(h) for h in valid_hist]),
        np.concatenate(valid_hist),
        len(valid_users),
    )
    bs = train_cfg.batch_size

    def batches(rng: np.random.Generator):
        order = rng.permutation(len(train_seqs))
        for s in range(0, len(order), bs):
            rows = order[s : s + bs]
            if len(rows) < 2:
                continue
            hist, targets = [], []
            for r in rows:
                seq = train_seqs[r]
                cut = int(rng.integers(1, len(seq)))  # history seq[:cut], target seq[cut]
                hist.append(seq[:cut])
                targets.append(seq[cut])
            ids, lengths = pad(hist, cfg.max_len)
            yield ids.to(device), lengths.to(device), torch.as_tensor(np.array(targets), device=device)

    def step(batch):
        ids, lengths, targets = batch
        u, _ = model.users(z[ids], lengths)
        e = model.items(z[targets])
        loss = sampled_softmax_loss(u, e, targets, log_q[targets], tau)
        return loss, {"softmax": loss.item()}

    def valid_metrics() -> dict[str, float]:
        users = user_embeddings(model, z, valid_hist, cfg.max_len)
        items = model.items(z)
        ranks = target_ranks(
            lambda rows: users[torch.as_tensor(rows)], items, np.arange(len(valid_users)), np.array(valid_target), *seen
        )
        return {"HR@10": float(hit_rate(ranks, 10).mean()), "NDCG@10": float(ndcg(ranks, 10).mean())}

    result = fit(
        name="sal",
        model=model,
        cfg=train_cfg,
        seed=seed,
        steps_per_epoch=max(1, -(-len(train_seqs) // bs)),
        batches=batches,
        step_loss=step,
        validate=lambda: valid_metrics()["NDCG@10"],
        checkpoint=run_dir / f".{STAGE}.ckpt" / "sal.pt",
        fingerprint={"sal": asdict(cfg), "tau": tau, "fuse": fuse_record},
        resume=resume,
        on_step=on_step,
    )
    with torch.no_grad():
        metrics = valid_metrics()
    with artifacts.stage_writer(out_dir, force=force) as tmp:
        state = {k: v.detach().cpu().contiguous().numpy() for k, v in model.state_dict().items()}
        artifacts.save_tensors(tmp / SAL_FILE, state, {"config": asdict(cfg), "z_dim": int(z.shape[1]), "tau": tau})
        manifest = artifacts.write_manifest(
            tmp,
            stage=STAGE,
            config={"sal": asdict(cfg), "train": asdict(train_cfg), "tau": tau, "objective": "last"},
            seed=seed,
            inputs={"fuse": fuse_record, "data": artifacts.input_record(data_dir)},
            counts={"train_users": len(train_seqs), "valid_users": len(valid_users), "items": N},
            wall_time_s=time.perf_counter() - started,
            extra={
                "device": str(device),
                "valid": metrics,
                "best_epoch": result.best_epoch + 1,
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                "history": result.history,
            },
        )
    shutil.rmtree(run_dir / f".{STAGE}.ckpt", ignore_errors=True)
    return manifest


def load_sal(run_dir: Path, device: torch.device) -> tuple[SALEncoder, dict]:
    align_dir = run_dir / STAGE
    manifest = artifacts.verify_stage(align_dir)
    artifacts.check_not_stale(align_dir)
    meta = artifacts.tensor_metadata(align_dir / SAL_FILE)
    cfg = SALConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()})
    model = SALEncoder(int(meta["z_dim"]), cfg)
    state = artifacts.load_tensors(align_dir / SAL_FILE, {})
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    return model.to(device).eval(), manifest


def run_embed(run_dir: Path, *, device: torch.device, force: bool) -> dict:
    """User embeddings (train users: history up to the test target; zero-shot users: their
    history without the targets) and item embeddings for all items (cold ones through z)."""
    started = time.perf_counter()
    out_dir = run_dir / "embed"
    artifacts.check_writable(out_dir, force)
    model, _ = load_sal(run_dir, device)
    z_np, _ = load_z(run_dir)
    z = torch.as_tensor(z_np, device=device)
    seqs = load_sequences(run_dir / "data")
    users, histories = [], []
    for u in range(len(seqs.roles)):
        items, splits = seqs.of(u)
        hist = items[splits != "test"]
        if len(hist):
            users.append(u)
            histories.append(hist)
    with torch.no_grad():
        user_emb = user_embeddings(model, z, histories, model.cfg.max_len).cpu().numpy()
        item_emb = model.items(z).cpu().numpy()
    roles = seqs.roles[users]
    with artifacts.stage_writer(out_dir, force=force) as tmp:
        artifacts.save_tensors(tmp / USERS_FILE, {"user": np.array(users, dtype=np.int64), "emb": user_emb})
        artifacts.save_tensors(tmp / ITEMS_FILE, {"emb": item_emb})
        manifest = artifacts.write_manifest(
            tmp,
            stage="embed",
            config={"max_len": model.cfg.max_len},
            seed=None,
            inputs={"align": artifacts.input_record(run_dir / STAGE)},
            counts={
                "users": len(users),
                "train_users": int((roles == "train").sum()),
                "zero_shot_users": int((roles == "zero_shot").sum()),
                "items": len(item_emb),
                "dim": int(item_emb.shape[1]),
            },
            wall_time_s=time.perf_counter() - started,
        )
    return manifest
