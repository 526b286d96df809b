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
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

from mufasa_cli import artifacts
from mufasa_cli.config import AlignConfig, RecipeError, SALConfig, TrainConfig, restore
from mufasa_cli.data import schema
from mufasa_cli.errors import DataSchemaError
from mufasa_cli.metrics.ranking import history_csr, target_ranks, top10
from mufasa_cli.mfl.fusion import FusionNetwork
from mufasa_cli.mfl.train import FUSED_FILE, MFL_FILE, load_mfl
from mufasa_cli.runtime import dist
from mufasa_cli.runtime.loop import OnStep, fit, seed_everything
from mufasa_cli.sal.loss import Negatives, full_softmax_loss, in_batch, item_log_q, sampled_softmax_loss, uniform
from mufasa_cli.sal.model import SALEncoder, resolve_kernel, upgrade_state

STAGE = "align"
SAL_FILE = "sal.safetensors"
USERS_FILE, ITEMS_FILE = "users.safetensors", "items.safetensors"
IDS_FILE = "item_ids.safetensors"
EXTERNAL_FILE, EXTERNAL_TABLE = "external.safetensors", "external.parquet"
TAU_RANGE = (0.01, 1.0)


@dataclass
class Sequences:
    """Each user's items in order, with the split of each, as one flat array + offsets."""

    items: np.ndarray  # (T,) int64
    splits: np.ndarray  # (T,) str
    indptr: np.ndarray  # (U+1,)
    roles: np.ndarray  # (U,) str
    raw_ids: np.ndarray  # (U,) str

    def of(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        s, e = self.indptr[user], self.indptr[user + 1]
        return self.items[s:e], self.splits[s:e]

    def embed_history(self, user: int) -> np.ndarray:
        """What a user's embedding reads: every item but the test targets."""
        items, splits = self.of(user)
        return items[splits != "test"]


def load_sequences(data_dir: Path) -> Sequences:
    inter = artifacts.load_table(data_dir / schema.INTERACTIONS_FILE, schema.INTERACTION_COLUMNS).sort(["user", "pos"])
    users = artifacts.load_table(data_dir / schema.USERS_FILE, schema.USER_COLUMNS).sort("user")
    counts = np.bincount(inter["user"].to_numpy(), minlength=users.height)
    return Sequences(
        items=np.array(inter["item"]),
        splits=np.array(inter["split"].to_list()),
        indptr=np.concatenate([[0], np.cumsum(counts)]),
        roles=np.array(users["role"].to_list()),
        raw_ids=np.array(users["raw_id"].to_list()),
    )


def load_z(run_dir: Path) -> tuple[np.ndarray, dict]:
    """Fused item vectors: RUN/align's when the MFL was finetuned there, else RUN/fuse's
    (refusing a fuse/ built from an older data/)."""
    tuned = run_dir / STAGE / FUSED_FILE
    if tuned.is_file():
        return artifacts.load_tensors(tuned, {"z": ("float32", (None, None))})["z"], artifacts.input_record(
            tuned.parent
        )
    return _fuse_z(run_dir)


def pad(histories: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) item ids (the most recent max_len of each) and lengths (B,)."""
    cut = [h[-max_len:] for h in histories]
    lengths = np.array([len(h) for h in cut], dtype=np.int64)
    out = np.zeros((len(cut), max(int(lengths.max()), 1)), dtype=np.int64)
    for i, h in enumerate(cut):
        out[i, : len(h)] = h
    return torch.as_tensor(out), torch.as_tensor(lengths)


EMBED_TOKENS = 1 << 14  # history positions per embedding batch


@torch.no_grad()
def user_embeddings(
    model: SALEncoder, z: torch.Tensor, histories: list[np.ndarray], max_len: int, tokens: int = EMBED_TOKENS
) -> torch.Tensor:
    """u (U, D) for each history (its most recent max_len items), in the order given.

    Users go in order of length, in batches of about `tokens` padded positions: little
    padding, and each (B, L, D) tensor small enough (4 MB at D = 64) that the allocator
    reuses its memory batch after batch. Tensors of tens of MB are fresh pages from the OS
    every time, and faulting them in cost more than the arithmetic (README, attention
    benchmark).
    """
    model.eval()
    tower = model.hist_tower(z)  # A_hist once per item, not once per history position
    out = torch.zeros(len(histories), model.cfg.d_model, device=z.device, dtype=z.dtype)
    sizes = np.array([max(min(len(h), max_len), 1) for h in histories], dtype=np.int64)
    order = np.argsort(sizes, kind="stable")
    s = 0
    while s < len(order):
        # sorted by length, a batch of n pads to its n-th history: the most n with n * that <= tokens
        longest = sizes[order[s : s + tokens]]
        count = max(1, int((longest * np.arange(1, len(longest) + 1) <= tokens).sum()))
        rows_of = order[s : s + count]
        ids, lengths = pad([histories[i] for i in rows_of], max_len)
        rows = tower.index_select(0, ids.to(z.device).flatten()).view(*ids.shape, -1)  # (B, L, D)
        out[torch.as_tensor(rows_of, device=z.device)] = model.users(rows, lengths.to(z.device), towered=True)[0]
        s += count
    return out


class Aligner(nn.Module):
    """What align-train optimises: the SAL, log(tau), the fusion network when finetuned, and
    the item-id vectors (N, d_z) when `item_ids`, kept at zero for the items in `ids_for`."""

    def __init__(
        self,
        sal: SALEncoder,
        tau: float,
        learn_tau: bool,
        fusion: FusionNetwork | None,
        ids_for: torch.Tensor | None = None,
    ):
        super().__init__()
        self.sal = sal
        self.fusion = fusion
        self.ids = None
        if ids_for is not None:  # (N,) bool: which items get a vector
            self.ids = nn.Parameter(torch.zeros(len(ids_for), sal.item_tower[0].in_features))
            self.register_buffer("has_id", ids_for.float()[:, None])
        log_tau = torch.tensor(math.log(tau))
        if learn_tau:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    def tau(self) -> torch.Tensor:
        return self.log_tau.clamp(math.log(TAU_RANGE[0]), math.log(TAU_RANGE[1])).exp()

    def with_ids(self, z: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """z of `items` (all items when None) plus their id vectors, when there are any."""
        if self.ids is None:
            return z
        if items is None:
            return z + self.ids * self.has_id
        return z + self.ids[items] * self.has_id[items]


@dataclass
class TrainData:
    train_seqs: list[np.ndarray]  # each training user's train items (>= 2)
    valid_hist: list[np.ndarray]
    valid_target: np.ndarray
    num_items: int

    def sizes(self, max_len: int) -> np.ndarray:
        """Each training user's history length within max_len: its targets under objective `all`."""
        return np.array([min(len(q) - 1, max_len) for q in self.train_seqs])


def split_for_training(seqs: Sequences, num_items: int, data_dir: Path) -> TrainData:
    train_seqs, valid_hist, valid_target = [], [], []
    for u in np.flatnonzero(seqs.roles == "train"):
        items, splits = seqs.of(int(u))
        tr = items[splits == "train"]
        if len(tr) >= 2:
            train_seqs.append(tr)
        va = items[splits == "valid"]
        if len(tr) >= 1 and len(va):
            valid_hist.append(tr)
            valid_target.append(int(va[0]))
    if not train_seqs:
        raise DataSchemaError(f"{data_dir}: no training user has two train interactions to learn from")
    return TrainData(train_seqs, valid_hist, np.array(valid_target, dtype=np.int64), num_items)


def user_batches(
    rng: np.random.Generator, lengths: np.ndarray, bs: int, pool: int, targets: np.ndarray | None = None
) -> list[np.ndarray]:
    """The users (rows of `lengths`) of each batch of an epoch: shuffled, cut into batches of
    bs. With pool > 0, each run of pool * bs shuffled users is sorted by length and cut into
    as many batches as bs users a batch would give, each with about the same number of
    `targets` (per user; default 1 each, i.e. bs users a batch); the batches are shuffled
    again. A batch then pads its histories to a length close to each of its own (random
    batches of short histories are mostly padding), and every target weighs about the same
    in its step's mean loss, as in random batches."""
    order = rng.permutation(len(lengths))
    if pool <= 0:
        return [order[s : s + bs] for s in range(0, len(order), bs)]
    cut = []
    for part in np.split(order, range(pool * bs, len(order), pool * bs)):
        part = part[np.argsort(lengths[part], kind="stable")]
        if targets is None:
            ends = range(bs, len(part), bs)
        else:  # the batch ends where the running total of targets crosses each 1/n of the pool's
            total = np.cumsum(targets[part])
            n = -(-len(part) // bs)
            ends = np.searchsorted(total, total[-1] * np.arange(1, n) / n, side="right")
        cut += [b for b in np.split(part, ends) if len(b)]
    return [cut[i] for i in rng.permutation(len(cut))]


def last_batches(data: TrainData, bs: int, max_len: int, device: torch.device, pool: int = 0):
    """Objective `last`: one random cut per user; yields (ids, lengths, qpos (B, 1), targets (B, 1))."""
    sizes = data.sizes(max_len)

    def batches(rng: np.random.Generator):
        for rows in user_batches(rng, sizes, bs, pool):
            if len(rows) < 2:
                continue
            hist, targets = [], []
            for r in rows:
                seq = data.train_seqs[r]
                cut = int(rng.integers(1, len(seq)))  # history seq[:cut], target seq[cut]
                hist.append(seq[:cut])
                targets.append(seq[cut])
            ids, lengths = pad(hist, max_len)
            t = torch.as_tensor(np.array(targets))[:, None]
            yield ids.to(device), lengths.to(device), (lengths - 1)[:, None].to(device), t.to(device)

    return batches


def all_batches(data: TrainData, bs: int, max_len: int, device: torch.device, pool: int = 0):
    """Objective `all`: every position of the most recent max_len + 1 train items is a query
    for the next item; yields (ids, lengths, qpos (B, L), targets (B, L), -1 = no query)."""
    sizes = data.sizes(max_len)

    def batches(rng: np.random.Generator):
        for rows in user_batches(rng, sizes, bs, pool, targets=sizes):
            seqs = [data.train_seqs[r][-(max_len + 1) :] for r in rows]
            ids, lengths = pad([q[:-1] for q in seqs], max_len)
            targets = torch.full(ids.shape, -1, dtype=torch.long)
            for i, q in enumerate(seqs):
                targets[i, : len(q) - 1] = torch.as_tensor(q[1:])
            if int((targets >= 0).sum()) < 2:
                continue
            # every position a query, padding too (no target there, so no loss): the fast
            # kernel's dense causal path, whose outputs at real positions are the same
            qpos = torch.arange(ids.shape[1]).expand(len(seqs), -1)
            yield ids.to(device), lengths.to(device), qpos.to(device), targets.to(device)

    return batches


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
    z_np, fuse_record = _fuse_z(run_dir)
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

    result = fit(
        name="sal",
        model=model,
        cfg=train_cfg,
        seed=seed,
        steps_per_epoch=max(1, -(-len(data.train_seqs) // train_cfg.batch_size)),
        batches=batches,
        step_loss=step,
        validate=lambda: valid_metrics()["NDCG@10"],
        checkpoint=run_dir / f".{STAGE}.ckpt" / "sal.pt",
        fingerprint={"align": asdict(cfg), "fuse": fuse_record},
        resume=resume,
        on_step=on_step,
    )
    model.eval()
    metrics = valid_metrics()
    tau = model.tau().item()
    if not dist.is_main():  # every rank holds the same weights; rank 0 writes them
        return {}
    with artifacts.stage_writer(out_dir, force=force) as tmp:
        state = {k: v.detach().cpu().contiguous().numpy() for k, v in model.sal.state_dict().items()}
        artifacts.save_tensors(
            tmp / SAL_FILE, state, {"config": asdict(cfg.sal), "z_dim": int(z_np.shape[1]), "tau": tau}
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
        manifest = artifacts.write_manifest(
            tmp,
            stage=STAGE,
            config=asdict(cfg),
            seed=seed,
            inputs={"fuse": fuse_record, "data": data_record},
            counts={"train_users": len(data.train_seqs), "valid_users": len(data.valid_hist), "items": N},
            wall_time_s=time.perf_counter() - started,
            extra={
                "device": str(device),
                "world_size": dist.world(),
                "kernel": kernel,
                "objective": cfg.sal.objective,
                "tau": tau,
                "valid": metrics,
                **result.summary(),
            },
        )
    shutil.rmtree(run_dir / f".{STAGE}.ckpt", ignore_errors=True)
    return manifest


def train_config(cfg: AlignConfig) -> TrainConfig:
    """The training schedule of the configured objective."""
    return cfg.train_all if cfg.sal.objective == "all" else cfg.train


def _fuse_z(run_dir: Path) -> tuple[np.ndarray, dict]:
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
    model = SALEncoder(int(meta["z_dim"]), cfg)
    state = artifacts.load_tensors(align_dir / SAL_FILE, {})
    model.load_state_dict(upgrade_state({k: torch.as_tensor(v) for k, v in state.items()}))
    model.kernel = resolve_kernel(kernel)
    return model.to(device).eval(), manifest


# ---------------------------------------------------------------- embed


def read_external_users(path: Path, items: pl.DataFrame) -> tuple[list[str], list[np.ndarray], dict]:
    """Sequences from a parquet file of (user, item[, timestamp | pos]) rows with raw ids, in
    order of timestamp/pos when given, else file order. Unknown item ids are dropped and
    reported; users left with no known item get no embedding and are reported."""
    if not path.is_file():
        raise DataSchemaError(f"{path}: no such file")
    try:
        table = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for a file that is not parquet
        raise DataSchemaError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    for col in ("user", "item"):
        if col not in table.columns:
            raise DataSchemaError(f"{path}: missing column {col!r} (columns: {', '.join(table.columns)})")
    order = next((c for c in ("timestamp", "pos") if c in table.columns), None)
    table = table.with_columns(pl.col("user").cast(pl.String), pl.col("item").cast(pl.String)).with_row_index("_row")
    if table["user"].null_count() or table["item"].null_count():
        raise DataSchemaError(f"{path}: null user or item id")
    table = table.sort(["user", order, "_row"] if order else ["user", "_row"], maintain_order=True)
    lookup = dict(zip(items["raw_id"].to_list(), items["item"].to_list(), strict=True))
    mapped = table.with_columns(pl.col("item").replace_strict(lookup, default=-1, return_dtype=pl.Int64).alias("_id"))
    unknown = mapped.filter(pl.col("_id") < 0)
    users, histories, empty = [], [], []
    for (user,), rows in mapped.filter(pl.col("_id") >= 0).group_by("user", maintain_order=True):
        users.append(user)
        histories.append(rows["_id"].to_numpy().astype(np.int64))
    known = set(users)
    empty = sorted(set(table["user"].unique().to_list()) - known)
    if not users:
        examples = ", ".join(repr(x) for x in unknown["item"].unique(maintain_order=True).head(3).to_list())
        raise DataSchemaError(
            f"{path}: no row names an item of this run ({table.height} rows"
            + (f"; unknown items such as {examples}" if examples else "")
            + "); item ids must be the dataset's raw ids"
        )
    report = {
        "file": str(path),
        "users": len(users),
        "rows": table.height,
        "unknown_item_rows": unknown.height,
        "unknown_items": unknown["item"].n_unique(),
        "unknown_examples": unknown["item"].unique(maintain_order=True).head(5).to_list(),
        "users_without_known_items": len(empty),
        "users_without_known_items_examples": empty[:5],
    }
    return users, histories, report


def run_embed(
    run_dir: Path, *, device: torch.device, force: bool, users_file: Path | None = None, kernel: str = "auto"
) -> dict:
    """User embeddings (train users: history up to the test target; zero-shot users: their
    history without the targets; users of `users_file`) and item embeddings for all items
    (cold ones through their z)."""
    started = time.perf_counter()
    out_dir = run_dir / "embed"
    artifacts.check_writable(out_dir, force)
    align_record = artifacts.input_record(run_dir / STAGE)  # what is read, recorded before reading it
    model, _ = load_sal(run_dir, device, kernel)
    z_np, _ = load_z(run_dir)
    z = torch.as_tensor(z_np, device=device)
    seqs = load_sequences(run_dir / "data")
    external = None
    if users_file is not None:
        items = artifacts.load_table(run_dir / "data" / schema.ITEMS_FILE, schema.ITEM_COLUMNS)
        external = read_external_users(users_file, items)
    users, histories = [], []
    for u in range(len(seqs.roles)):
        hist = seqs.embed_history(u)
        if len(hist):
            users.append(u)
            histories.append(hist)
    user_emb = user_embeddings(model, z, histories, model.cfg.max_len).cpu().numpy()
    with torch.no_grad():
        item_emb = model.items(z).cpu().numpy()
    roles = seqs.roles[users]
    counts = {
        "users": len(users),
        "train_users": int((roles == "train").sum()),
        "zero_shot_users": int((roles == "zero_shot").sum()),
        "items": len(item_emb),
        "dim": int(item_emb.shape[1]),
    }
    with artifacts.stage_writer(out_dir, force=force) as tmp:
        artifacts.save_tensors(tmp / USERS_FILE, {"user": np.array(users, dtype=np.int64), "emb": user_emb})
        artifacts.save_tensors(tmp / ITEMS_FILE, {"emb": item_emb})
        extra = {}
        if external is not None:
            ext_users, ext_hist, report = external
            ext_emb = user_embeddings(model, z, ext_hist, model.cfg.max_len).cpu().numpy()
            artifacts.save_tensors(tmp / EXTERNAL_FILE, {"emb": ext_emb.reshape(len(ext_users), -1)})
            table = pl.DataFrame(
                {"user": ext_users, "row": np.arange(len(ext_users)), "length": [len(h) for h in ext_hist]},
                schema={"user": pl.String, "row": pl.Int64, "length": pl.Int64},
            )
            artifacts.save_table(tmp / EXTERNAL_TABLE, table)
            counts["external_users"] = len(ext_users)
            extra["external"] = report
        manifest = artifacts.write_manifest(
            tmp,
            stage="embed",
            config={
                "max_len": model.cfg.max_len,
                "users_file": str(users_file) if users_file else None,
                "kernel": model.kernel,
            },
            seed=None,
            inputs={"align": align_record},
            counts=counts,
            wall_time_s=time.perf_counter() - started,
            extra=extra,
        )
    return manifest


def find_user(seqs: Sequences, user: str, data_dir: Path) -> int:
    """A user by raw id, or by internal index when no raw id matches."""
    hits = np.flatnonzero(seqs.raw_ids == user)
    if len(hits):
        return int(hits[0])
    if user.isdigit() and int(user) < len(seqs.roles):
        return int(user)
    raise DataSchemaError(f"user {user!r} is not in {data_dir / schema.USERS_FILE} (neither a raw id nor an index)")


@torch.no_grad()
def explain(run_dir: Path, user: str, *, device: torch.device, top: int = 5, kernel: str = "auto") -> dict:
    """Why the SAL embeds `user` as it does: the history it reads (every item but the test
    targets, the most recent max_len), the interest blocks with their block-attention weights,
    the selected blocks, the gates, the top-weighted items of each branch, and the top
    recommendations (unseen items by u . e), each with its title."""
    model, manifest = load_sal(run_dir, device, kernel)
    data_dir = run_dir / "data"
    z = torch.as_tensor(load_z(run_dir)[0], device=device)
    seqs = load_sequences(data_dir)
    index = find_user(seqs, user, data_dir)
    full = seqs.embed_history(index)
    if not len(full):
        raise DataSchemaError(f"user {user!r} has no history to embed")
    hist = full[-model.cfg.max_len :]
    offset = len(full) - len(hist)  # position in `hist` + offset = position in the user's sequence
    items = artifacts.load_table(data_dir / schema.ITEMS_FILE, schema.ITEM_COLUMNS).sort("item")
    titles = items["title"].fill_null("").to_list()
    raw = items["raw_id"].to_list()

    def item_row(pos: int, weight: float) -> dict:
        it = int(hist[pos])
        return {"position": pos + offset, "item": raw[it], "title": titles[it], "weight": weight}

    ids, lengths = pad([hist], model.cfg.max_len)
    u, ex = model.users(z[ids.to(device)], lengths.to(device))
    cfg = model.cfg
    out: dict = {
        "user": seqs.raw_ids[index],
        "role": str(seqs.roles[index]),
        "history_length": len(full),
        "read": len(hist),
        "attention": cfg.attention,
        "objective": cfg.objective,
        "branches": list(model.branches),
        "valid": manifest.get("valid"),
    }
    if ex.gates is not None:
        out["gates"] = dict(zip(model.branches, ex.gates[0, 0].tolist(), strict=True))
    if ex.window_weights is not None:
        pos, w = ex.window_positions[0, 0].tolist(), ex.window_weights[0, 0].tolist()
        out["window"] = [item_row(p, wt) for p, wt in zip(pos, w, strict=True) if p >= 0 and wt > 0]
    if ex.block_weights is not None:
        a = ex.block_weights[0, 0]
        selected = set()
        if ex.selected_blocks is not None:
            selected = {int(j) for j, ok in zip(ex.selected_blocks[0, 0], ex.selected_valid[0, 0], strict=True) if ok}
        b = cfg.block_size
        blocks = []
        for j in torch.argsort(a, descending=True, stable=True).tolist():
            if a[j] <= 0:
                continue
            span = range(j * b, min((j + 1) * b, len(hist)))
            blocks.append(
                {
                    "block": j,
                    "positions": [span[0] + offset, span[-1] + offset],
                    "weight": float(a[j]),
                    "selected": j in selected,
                    "titles": [titles[int(hist[p])] for p in span],
                }
            )
        out["blocks"] = blocks
    if ex.selective_weights is not None:
        w = ex.selective_weights[0, 0]
        pos = ex.selective_positions[0, 0]
        order = [i for i in torch.argsort(w, descending=True, stable=True).tolist() if w[i] > 0][:top]
        out["selective"] = [item_row(int(pos[i]), float(w[i])) for i in order]
    scores = model.items(z) @ u[0]
    scores[torch.as_tensor(np.unique(full), device=device)] = -torch.inf
    best = torch.topk(scores, min(top, int(torch.isfinite(scores).sum()))).indices.tolist()
    out["recommendations"] = [{"item": raw[i], "title": titles[i], "score": float(scores[i])} for i in best]
    return out
