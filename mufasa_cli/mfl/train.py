"""`fuse-train`: LightGCN CF embeddings, then the MFL trained with its four losses.

Reads RUN/data, writes RUN/fuse (cf.safetensors, mfl.safetensors, fused.safetensors,
manifest.json with the resolved config and diagnostics). Checkpoints live in RUN/.fuse.ckpt
until the stage succeeds; `resume=True` continues from them after an interruption.

Legend: U users, N items, M modalities, d CF/z width, d_t title width.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import torch

from mufasa_cli import artifacts
from mufasa_cli.config import FuseConfig, LightGCNConfig, MFLConfig, restore
from mufasa_cli.data import schema
from mufasa_cli.errors import ArtifactError, DataSchemaError
from mufasa_cli.metrics.ranking import csr, hit_rate, ndcg, target_ranks
from mufasa_cli.mfl import diagnostics
from mufasa_cli.mfl.fusion import FusionNetwork
from mufasa_cli.mfl.lightgcn import LightGCN, normalized_adjacency, sample_negatives
from mufasa_cli.mfl.losses import cf_mse, fusion_infonce, title_consistency, title_infonce
from mufasa_cli.runtime import dist
from mufasa_cli.runtime.loop import OnStep, epoch_seed, fit, seed_everything
from mufasa_cli.runtime.stage import write_stage

STAGE = "fuse"
CF_FILE, MFL_FILE, FUSED_FILE = "cf.safetensors", "mfl.safetensors", "fused.safetensors"
VALID_SAMPLE = 5000  # validation users ranked for LightGCN's early stopping


# ---------------------------------------------------------------- inputs


@dataclass
class FuseData:
    num_users: int
    num_items: int
    train_users: np.ndarray  # (T,) train split of train-role users
    train_items: np.ndarray
    valid_users: np.ndarray  # one valid target per train-role user
    valid_items: np.ndarray
    modalities: dict[str, np.ndarray]  # name -> (N, d_m) float32
    present: np.ndarray  # (N, M) bool
    title: np.ndarray | None  # (N, d_t) anchor
    title_ok: np.ndarray  # (N,) bool
    genre: np.ndarray  # (N,) int64
    genres: list[str]
    topic: np.ndarray | None  # synthetic ground truth, for diagnostics
    data_record: dict


def load_data(run_dir: Path) -> FuseData:
    data_dir = run_dir / "data"
    manifest = artifacts.verify_stage(data_dir)
    items = artifacts.load_table(data_dir / schema.ITEMS_FILE, schema.ITEM_COLUMNS)
    inter = artifacts.load_table(data_dir / schema.INTERACTIONS_FILE, schema.INTERACTION_COLUMNS)
    users = artifacts.load_table(data_dir / schema.USERS_FILE, schema.USER_COLUMNS)
    N = items.height
    feats = artifacts.load_tensors(data_dir / schema.FEATURES_FILE, {schema.GENRE_KEY: ("int64", (N,))})
    names = sorted(k.removeprefix(schema.MODALITY_PREFIX) for k in feats if k.startswith(schema.MODALITY_PREFIX))
    if not names:
        raise DataSchemaError(
            f"{data_dir / schema.FEATURES_FILE}: no modality to fuse; prepare with a title encoder "
            "(--text-encoder minilm) or with feature matrices"
        )
    spec = {}
    for m in names:
        spec[schema.MODALITY_PREFIX + m] = ("float32", (N, None))
        spec[schema.MASK_PREFIX + m] = ("bool", (N,))
    if schema.TITLE_KEY in feats:
        spec[schema.TITLE_KEY] = ("float32", (N, None))
    artifacts.check_tensors(data_dir / schema.FEATURES_FILE, feats, spec)
    train_role = users.filter(pl.col("role") == "train")["user"]
    mine = inter.filter(pl.col("user").is_in(train_role.implode()))
    train = mine.filter(pl.col("split") == "train")
    valid = mine.filter(pl.col("split") == "valid")
    return FuseData(
        num_users=users.height,
        num_items=N,
        train_users=np.array(train["user"]),  # np.array copies: polars' views are read-only
        train_items=np.array(train["item"]),
        valid_users=np.array(valid["user"]),
        valid_items=np.array(valid["item"]),
        modalities={m: feats[schema.MODALITY_PREFIX + m] for m in names},
        present=np.stack([feats[schema.MASK_PREFIX + m] for m in names], axis=1),
        title=feats.get(schema.TITLE_KEY),
        title_ok=items["title_ok"].to_numpy() & (schema.TITLE_KEY in feats),
        genre=feats[schema.GENRE_KEY],
        genres=list(manifest.get("genres", [])),
        topic=items["topic"].to_numpy() if "topic" in items.columns else None,
        data_record=artifacts.input_record(data_dir),
    )


# ---------------------------------------------------------------- LightGCN


@dataclass
class CFResult:
    item_cf: np.ndarray  # (N, d)
    has_cf: np.ndarray  # (N,) bool
    user_cf: np.ndarray  # (U, d)
    report: dict


def train_cf(
    data: FuseData,
    cfg: LightGCNConfig,
    seed: int,
    device: torch.device,
    ckpt_dir: Path,
    resume: bool,
    on_step: OnStep | None,
) -> CFResult:
    seed_everything(seed)
    U, N = data.num_users, data.num_items
    adj = normalized_adjacency(data.train_users, data.train_items, U, N).to(device)
    model = LightGCN(U, N, cfg.dim, cfg.num_layers, adj).to(device)
    pos_keys = np.unique(data.train_users.astype(np.int64) * N + data.train_items)
    seen = csr(data.train_users, data.train_items, U)
    bs = cfg.train.batch_size
    T = len(data.train_users)

    def batches(rng: np.random.Generator):
        order = rng.permutation(T)
        for s in range(0, T, bs):
            idx = order[s : s + bs]
            u = data.train_users[idx]
            neg = sample_negatives(rng, u, N, pos_keys)
            yield (torch.as_tensor(x, device=device) for x in (u, data.train_items[idx], neg))

    def step(batch):
        u, p, n = batch
        return model.bpr_loss(u, p, n, cfg.reg)

    # early stopping ranks a fixed seeded sample of validation users (full ranking costs
    # users x items per evaluation); the final sanity line ranks every validation user
    sample = np.sort(np.random.default_rng(seed).permutation(len(data.valid_users))[:VALID_SAMPLE])

    def valid_metrics(rows: np.ndarray | None = None) -> tuple[float, float]:
        user_emb, item_emb = model.split()
        users = data.valid_users if rows is None else data.valid_users[rows]
        items = data.valid_items if rows is None else data.valid_items[rows]
        ranks = target_ranks(lambda u: user_emb[torch.as_tensor(u, device=device)], item_emb, users, items, *seen)
        return float(hit_rate(ranks, 10).mean()), float(ndcg(ranks, 10).mean())

    result = fit(
        name="lightgcn",
        model=model,
        cfg=cfg.train,
        seed=seed,
        steps_per_epoch=-(-T // bs),
        batches=batches,
        step_loss=step,
        validate=lambda: valid_metrics(sample)[1],
        checkpoint=ckpt_dir / "lightgcn.pt",
        fingerprint={"config": asdict(cfg), "data": data.data_record},
        resume=resume,
        on_step=on_step,
    )
    hr, nd = valid_metrics()
    user_emb, item_emb = model.split()
    has_cf = np.zeros(N, dtype=bool)
    has_cf[data.train_items] = True
    item_cf = item_emb.cpu().numpy()
    item_cf[~has_cf] = 0.0
    report = {
        "valid_hr@10": hr,
        "valid_ndcg@10": nd,
        **result.summary(),
        "wall_time_s": round(result.wall_time_s, 2),
        "items_with_cf": int(has_cf.sum()),
    }
    return CFResult(item_cf.astype(np.float32), has_cf, user_emb.cpu().numpy().astype(np.float32), report)


# ---------------------------------------------------------------- MFL


class MFLBatches:
    """Item tensors on the device, and the loss of eq. 5 on a batch of item indices."""

    def __init__(self, data: FuseData, item_cf: np.ndarray, has_cf: np.ndarray, cfg: MFLConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        t = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
        self.features = [t(v) for v in data.modalities.values()]
        self.present = t(data.present)
        self.genre = t(data.genre)
        norms = np.linalg.norm(item_cf[has_cf], axis=1)
        mean_norm = float(norms.mean()) if len(norms) else 0.0
        # c / cf_scale has mean norm cfg.cf_norm: L_cf weighs the same whatever LightGCN's norms
        self.cf_scale = mean_norm / cfg.cf_norm if cfg.cf_norm > 0 and mean_norm > 0 else 1.0
        self.cf = t(item_cf / self.cf_scale)
        self.has_cf = t(has_cf)
        self.title = t(data.title) if data.title is not None else None
        self.title_ok = t(data.title_ok)
        self.weights = {name: cfg.weight(name) for name in ("title", "cf", "cons", "fuscl")}
        if self.title is None:
            self.weights["title"] = self.weights["cons"] = 0.0

    def encode(self, model: FusionNetwork, idx: torch.Tensor, train: bool) -> torch.Tensor:
        present = self.present[idx]
        if train and self.cfg.modality_dropout > 0:
            keep = torch.rand(present.shape, device=self.device) >= self.cfg.modality_dropout
            dropped = present & keep
            present = torch.where(dropped.any(1, keepdim=True), dropped, present)  # keep at least one
        return model([f[idx] for f in self.features], present, self.genre[idx])

    def loss(
        self, model: FusionNetwork, idx: torch.Tensor, train: bool, z: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Eq. 5 on items idx; z: their fused vectors when the caller already has them."""
        z = self.encode(model, idx, train) if z is None else z
        w, parts = self.weights, {}
        total = z.sum() * 0.0
        if w["title"] > 0:
            lt = title_infonce(model.title_head(z), self.title[idx], self.title_ok[idx], self.cfg.tau)
            total, parts["title"] = total + w["title"] * lt, lt.item()
        if w["cf"] > 0:
            lc = cf_mse(z, self.cf[idx], self.has_cf[idx])
            total, parts["cf"] = total + w["cf"] * lc, lc.item()
        if w["cons"] > 0:
            ls = title_consistency(z, self.title[idx], self.title_ok[idx])
            total, parts["cons"] = total + w["cons"] * ls, ls.item()
        if w["fuscl"] > 0:
            lf = fusion_infonce(z, torch.randn_like(z) * self.cfg.sigma, self.cfg.tau)
            total, parts["fuscl"] = total + w["fuscl"] * lf, lf.item()
        parts["total"] = total.item()
        return total, parts

    @torch.no_grad()
    def mean_losses(self, model: FusionNetwork, items: np.ndarray, seed: int) -> dict[str, float]:
        """Loss components over fixed batches of `items` in eval mode (a deterministic estimate)."""
        model.eval()
        torch.manual_seed(seed)
        sums: dict[str, float] = {}
        n = 0
        for s in range(0, len(items), self.cfg.train.batch_size):
            _, parts = self.loss(
                model, torch.as_tensor(items[s : s + self.cfg.train.batch_size], device=self.device), False
            )
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
        return {k: v / max(n, 1) for k, v in sums.items()}

    @torch.no_grad()
    def embed_all(self, model: FusionNetwork, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray | None]:
        """(z (N, d), z mapped to the title width (N, d_t) or None)."""
        model.eval()
        zs, heads = [], []
        N = len(self.genre)
        for s in range(0, N, chunk):
            z = self.encode(model, torch.arange(s, min(s + chunk, N), device=self.device), False)
            zs.append(z.cpu())
            heads.append(model.title_head(z).cpu())
        z = torch.cat(zs).numpy()
        return z, (torch.cat(heads).numpy() if self.title is not None else None)


def build_fusion(data: FuseData, cf_dim: int, cfg: MFLConfig) -> FusionNetwork:
    dims = {m: v.shape[1] for m, v in data.modalities.items()}
    title_dim = data.title.shape[1] if data.title is not None else None
    return FusionNetwork(dims, max(len(data.genres), int(data.genre.max()) + 1), cf_dim, title_dim, cfg)


def train_mfl(
    data: FuseData,
    cf: CFResult,
    cfg: MFLConfig,
    seed: int,
    device: torch.device,
    ckpt_dir: Path,
    resume: bool,
    on_step: OnStep | None,
) -> tuple[FusionNetwork, MFLBatches, dict]:
    seed_everything(seed)
    model = build_fusion(data, cf.item_cf.shape[1], cfg).to(device)
    mb = MFLBatches(data, cf.item_cf, cf.has_cf, cfg, device)
    order = np.random.default_rng(epoch_seed(seed, 0, salt=3)).permutation(data.num_items)
    n_val = max(2, int(round(cfg.val_fraction * data.num_items)))
    val_items, train_items = np.sort(order[:n_val]), order[n_val:]
    all_items = np.arange(data.num_items)
    start = mb.mean_losses(model, all_items, seed)
    bs = cfg.train.batch_size

    def batches(rng: np.random.Generator):
        perm = rng.permutation(train_items)
        for s in range(0, len(perm), bs):
            if len(perm) - s >= 2:  # a contrastive batch needs two items
                yield torch.as_tensor(perm[s : s + bs], device=device)

    result = fit(
        name="mfl",
        model=model,
        cfg=cfg.train,
        seed=seed,
        steps_per_epoch=max(1, -(-len(train_items) // bs)),
        batches=batches,
        step_loss=lambda idx: mb.loss(model, idx, True),
        validate=lambda: -mb.mean_losses(model, val_items, epoch_seed(seed, 0, salt=4))["total"],
        checkpoint=ckpt_dir / "mfl.pt",
        fingerprint={"config": asdict(cfg), "data": data.data_record, "cf_scale": mb.cf_scale},
        resume=resume,
        on_step=on_step,
    )
    end = mb.mean_losses(model, all_items, seed)
    report = {
        "losses_start": start,
        "losses_end": end,
        "weights": mb.weights,
        "cf_scale": mb.cf_scale,
        **result.summary(),
        "valid_items": int(n_val),
        "wall_time_s": round(result.wall_time_s, 2),
    }
    return model, mb, report


# ---------------------------------------------------------------- the stage


def load_mfl(run_dir: Path, device: torch.device) -> tuple[FusionNetwork, MFLBatches]:
    """The trained fusion network of RUN/fuse and its item tensors, to train on (`align-train
    --finetune-mfl`)."""
    fuse_dir = run_dir / STAGE
    manifest = artifacts.verify_stage(fuse_dir)
    data = load_data(run_dir)
    meta = artifacts.tensor_metadata(fuse_dir / MFL_FILE)
    if meta.get("modalities") != list(data.modalities):
        raise ArtifactError(
            f"{fuse_dir / MFL_FILE}: trained on modalities {meta.get('modalities')}, data has {list(data.modalities)}"
        )
    cfg = restore(MFLConfig(), meta["config"], str(fuse_dir / MFL_FILE))
    cf_dim = manifest["config"]["cf"]["dim"]
    cf = artifacts.load_tensors(
        fuse_dir / CF_FILE, {"item_cf": ("float32", (data.num_items, cf_dim)), "has_cf": ("bool", (data.num_items,))}
    )
    model = build_fusion(data, cf_dim, cfg)
    state = artifacts.load_tensors(fuse_dir / MFL_FILE, {})
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    return model.to(device), MFLBatches(data, cf["item_cf"], cf["has_cf"], cfg, device)


def _reusable_cf(run_dir: Path, data: FuseData, cfg: LightGCNConfig) -> CFResult | None:
    """fuse/cf.safetensors from an earlier run on the same data and LightGCN config, if any."""
    old = run_dir / STAGE
    try:
        manifest = artifacts.verify_stage(old)
    except ArtifactError:
        return None
    if manifest.get("inputs", {}).get("data") != data.data_record or manifest.get("config", {}).get("cf") != asdict(
        cfg
    ):
        return None
    t = artifacts.load_tensors(
        old / CF_FILE, {"item_cf": ("float32", (data.num_items, cfg.dim)), "has_cf": ("bool", (data.num_items,))}
    )
    user_cf = t.get("user_cf", np.zeros((data.num_users, cfg.dim), np.float32))
    return CFResult(t["item_cf"], t["has_cf"], user_cf, {**manifest["cf"], "reused_from": str(old / CF_FILE)})


def run(
    run_dir: Path,
    cfg: FuseConfig,
    *,
    seed: int,
    device: torch.device,
    retrain_cf: bool,
    resume: bool,
    force: bool,
    on_step: OnStep | None = None,
) -> dict:
    started = time.perf_counter()
    device = dist.setup(device)  # under torchrun: join the process group, one device per rank
    out_dir = run_dir / STAGE
    artifacts.check_writable(out_dir, force)
    data = load_data(run_dir)
    ckpt_dir = run_dir / f".{STAGE}.ckpt"
    ckpt_dir.mkdir(parents=True, exist_ok=True)

    cf = None if retrain_cf else _reusable_cf(run_dir, data, cfg.cf)
    cf_ckpt = ckpt_dir / CF_FILE
    if cf is None and resume and cf_ckpt.is_file():
        t = artifacts.load_tensors(cf_ckpt, {"item_cf": ("float32", (data.num_items, cfg.cf.dim))})
        cf = CFResult(t["item_cf"], t["has_cf"], t["user_cf"], json.loads(artifacts.tensor_metadata(cf_ckpt)["report"]))
    if cf is None:
        cf = train_cf(data, cfg.cf, seed, device, ckpt_dir, resume, on_step)
        if dist.is_main():
            artifacts.save_tensors(
                cf_ckpt,
                {"item_cf": cf.item_cf, "has_cf": cf.has_cf, "user_cf": cf.user_cf},
                {"report": json.dumps(cf.report)},
            )
    model, mb, mfl_report = train_mfl(data, cf, cfg.mfl, seed, device, ckpt_dir, resume, on_step)
    z, z_title = mb.embed_all(model)
    diag = diagnostics.summarize(z, z_title, data, cf.item_cf / mb.cf_scale, cf.has_cf, seed)
    if not dist.is_main():  # every rank holds the same weights; rank 0 writes them
        return {}

    def files(tmp: Path) -> None:
        artifacts.save_tensors(tmp / CF_FILE, {"item_cf": cf.item_cf, "has_cf": cf.has_cf, "user_cf": cf.user_cf})
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        artifacts.save_tensors(
            tmp / MFL_FILE,
            {k: v.numpy() for k, v in state.items()},
            {"config": asdict(cfg.mfl), "modalities": list(data.modalities), "cf_scale": mb.cf_scale},
        )
        artifacts.save_tensors(tmp / FUSED_FILE, {"z": z})

    return write_stage(
        run_dir,
        STAGE,
        files=files,
        config=asdict(cfg),
        seed=seed,
        inputs={"data": data.data_record},
        counts={
            "items": data.num_items,
            "modalities": len(data.modalities),
            "train_interactions": len(data.train_users),
        },
        started=started,
        extra={
            "device": str(device),
            "world_size": dist.world(),
            "modalities": list(data.modalities),
            "cf": {k: v for k, v in cf.report.items() if k != "history"},
            "mfl": {k: v for k, v in mfl_report.items() if k != "history"},
            "diagnostics": diag,
            "history": {"lightgcn": cf.report.get("history", []), "mfl": mfl_report["history"]},
        },
        checkpoints=ckpt_dir,
        force=force,
    )
