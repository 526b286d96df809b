"""Two-tower baselines trained with the in-batch sampled softmax (logQ-corrected, accidental
hits masked) on unit-length vectors, early-stopped on leave-one-out valid NDCG@10.

- DSSM (Huang et al., CIKM 2013), on ids as sequential-recommendation papers run it: a user-id
  tower and an item-id tower (embedding -> MLP). Trained on (user, item) train pairs. It has
  no vector for a user it never trained on, so it does not take part in `zero-shot`.
- YouTube DNN (Covington et al., RecSys 2016): the user vector is an MLP over the mean of the
  history's item-id embeddings and the mean of their content features (every modality of
  data/features.safetensors, concatenated); the output items are an id embedding table.
  Trained at every position of the train sequences (the mean over each prefix, by cumulative
  sums); inductive over users, so it embeds zero-shot users from their history.

Legend: B users or pairs in a batch, L history length, N items, D width, F content width.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mufasa_cli import artifacts
from mufasa_cli.baselines.common import train_baseline
from mufasa_cli.config import TwoTowerConfig, restore
from mufasa_cli.data import schema
from mufasa_cli.data.sequences import training_windows
from mufasa_cli.errors import ArtifactError, DataSchemaError
from mufasa_cli.losses import in_batch, item_log_q, sampled_softmax_loss
from mufasa_cli.metrics.ranking import history_csr, target_ranks, top10
from mufasa_cli.runtime.loop import OnStep, seed_everything

WEIGHTS = "model.safetensors"


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class DSSM(nn.Module):
    def __init__(self, num_users: int, num_items: int, cfg: TwoTowerConfig):
        super().__init__()
        D = cfg.d_model
        self.user, self.item = nn.Embedding(num_users, D), nn.Embedding(num_items, D)
        self.user_mlp, self.item_mlp = _mlp(D, cfg.hidden, D), _mlp(D, cfg.hidden, D)
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)

    def users(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.user_mlp(self.user(ids)), dim=-1)

    def item_vectors(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        e = self.item.weight if ids is None else self.item(ids)
        return F.normalize(self.item_mlp(e), dim=-1)


class YouTubeDNN(nn.Module):
    def __init__(self, num_items: int, content: torch.Tensor | None, cfg: TwoTowerConfig):
        super().__init__()
        D = cfg.d_model
        self.pad = num_items
        self.hist = nn.Embedding(num_items + 1, D, padding_idx=num_items)
        self.register_buffer("content", content if content is not None else torch.zeros(num_items, 0))
        width = self.content.shape[1]
        self.content_proj = nn.Linear(width, D) if width else None
        self.mlp = _mlp(2 * D if width else D, cfg.hidden, D)
        self.out = nn.Embedding(num_items, D)
        nn.init.normal_(self.hist.weight, std=0.1)
        nn.init.normal_(self.out.weight, std=0.1)
        with torch.no_grad():
            self.hist.weight[num_items].zero_()

    def prefix_users(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) right-padded with the pad id -> (B, L, D): the user after each prefix."""
        real = (ids != self.pad).float()[..., None]  # (B, L, 1)
        count = real.cumsum(1).clamp(min=1.0)
        parts = [self.hist(ids).cumsum(1) / count]
        if self.content_proj is not None:
            c = self.content_proj(self.content[ids.clamp(max=self.pad - 1)]) * real
            parts.append(c.cumsum(1) / count)
        return F.normalize(self.mlp(torch.cat(parts, -1)), dim=-1)

    def item_vectors(self, ids: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(self.out.weight if ids is None else self.out(ids), dim=-1)


def modality_features(data_dir: Path) -> dict[str, torch.Tensor]:
    """Every modality matrix of the items (the title's among them), by name: (N, d_m) each."""
    feats = artifacts.load_tensors(data_dir / schema.FEATURES_FILE, {})
    keys = sorted(k for k in feats if k.startswith(schema.MODALITY_PREFIX))
    return {k.removeprefix(schema.MODALITY_PREFIX): torch.as_tensor(feats[k].astype(np.float32)) for k in keys}


def content_features(data_dir: Path) -> torch.Tensor | None:
    """Every modality vector of each item, concatenated: (N, F)."""
    parts = modality_features(data_dir)
    return torch.cat([parts[k] for k in sorted(parts)], dim=1) if parts else None


def right_pad(seqs: list[np.ndarray], max_len: int, pad: int) -> torch.Tensor:
    out = np.full((len(seqs), max(max(len(s) for s in seqs), 1)), pad, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return torch.as_tensor(out)


def youtube_users(model: YouTubeDNN, histories: list[np.ndarray], max_len: int, chunk: int = 512) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for s in range(0, len(histories), chunk):
            part = [h[-max_len:] for h in histories[s : s + chunk]]
            ids = right_pad(part, max_len, model.pad)
            h = model.prefix_users(ids)
            out.append(h[torch.arange(len(part)), torch.as_tensor([len(p) - 1 for p in part])])
    return torch.cat(out) if out else torch.zeros(0, model.out.weight.shape[1])


def train(
    name: str,
    run_dir: Path,
    cfg: TwoTowerConfig,
    *,
    seqs,
    num_items: int,
    seed: int,
    device: torch.device,
    resume: bool = False,
    on_step: OnStep | None = None,
) -> dict:
    """Train `dssm` or `youtube` and write RUN/baselines/NAME/."""
    started = time.perf_counter()
    data_dir = run_dir / "data"
    data_record = artifacts.input_record(data_dir)  # the data/ the caller read, recorded now
    train_users, train_seqs, valid_users, valid_hist, valid_target = [], [], [], [], []
    for u in np.flatnonzero(seqs.roles == "train"):
        items, splits = seqs.of(int(u))
        tr = items[splits == "train"]
        if len(tr) >= (1 if name == "dssm" else 2):
            train_users.append(int(u))
            train_seqs.append(tr)
        va = items[splits == "valid"]
        if len(tr) and len(va):
            valid_users.append(int(u))
            valid_hist.append(tr)
            valid_target.append(int(va[0]))
    if not train_seqs:
        raise DataSchemaError(f"{data_dir}: no training user to learn {name} from")
    seed_everything(seed)
    log_p = item_log_q(torch.as_tensor(np.concatenate(train_seqs)), num_items).to(device)
    bs = cfg.train.batch_size
    if name == "dssm":
        model = DSSM(len(seqs.roles), num_items, cfg).to(device)
        pair_users = torch.as_tensor(np.repeat(train_users, [len(s) for s in train_seqs]))
        pair_items = torch.as_tensor(np.concatenate(train_seqs))
        steps = -(-len(pair_users) // bs)

        def batches(rng: np.random.Generator):
            order = torch.as_tensor(rng.permutation(len(pair_users)))
            for s in range(0, len(order), bs):
                rows = order[s : s + bs]
                if len(rows) >= 2:
                    yield pair_users[rows].to(device), pair_items[rows].to(device)

        def user_and_target(batch):
            users, items = batch
            return model.users(users), items

        def valid_vectors():
            return model.users(torch.as_tensor(valid_users, device=device))
    else:
        content = content_features(data_dir)
        model = YouTubeDNN(num_items, content, cfg).to(device)
        windows = [w for w, _ in training_windows(train_seqs, cfg.max_len)]
        steps = -(-len(windows) // bs)

        def batches(rng: np.random.Generator):
            order = rng.permutation(len(windows))
            for s in range(0, len(order), bs):
                chunk = [windows[r] for r in order[s : s + bs]]
                inputs = right_pad([c[:-1] for c in chunk], cfg.max_len, num_items)
                targets = right_pad([c[1:] for c in chunk], cfg.max_len, -1)
                yield inputs.to(device), targets.to(device)

        def user_and_target(batch):
            inputs, targets = batch
            real = targets >= 0
            return model.prefix_users(inputs)[real], targets[real]

        def valid_vectors():
            return youtube_users(model, valid_hist, cfg.max_len).to(device)

    def step(batch):
        u, t = user_and_target(batch)
        e = model.item_vectors(t)
        cols = torch.randperm(len(t), device=device)[: cfg.negatives]
        negatives = in_batch(e[cols], t[cols], log_p)
        loss = sampled_softmax_loss(u, e, t, log_p[t] + math.log(len(cols)), negatives, cfg.tau)
        return loss, {"softmax": loss.item()}

    seen = history_csr(valid_hist)

    def valid_metrics() -> dict[str, float]:
        model.eval()
        with torch.no_grad():
            users, items = valid_vectors(), model.item_vectors()
        ranks = target_ranks(
            lambda rows: users[torch.as_tensor(rows, device=device)],
            items,
            np.arange(len(valid_hist)),
            np.array(valid_target),
            *seen,
        )
        return top10(ranks)

    def files(tmp: Path) -> None:
        state = {k: v.detach().cpu().contiguous().numpy() for k, v in model.state_dict().items() if k != "content"}
        meta = {"config": asdict(cfg), "num_items": num_items, "num_users": len(seqs.roles)}
        artifacts.save_tensors(tmp / WEIGHTS, state, meta)

    return train_baseline(
        run_dir,
        name,
        cfg,
        data_record,
        model=model,
        seed=seed,
        steps_per_epoch=max(1, steps),
        batches=batches,
        step_loss=step,
        validate=valid_metrics,
        resume=resume,
        on_step=on_step,
        files=files,
        counts={"train_users": len(train_seqs), "valid_users": len(valid_hist), "items": num_items},
        started=started,
        device=device,
    )


def load(name: str, run_dir: Path) -> tuple[nn.Module, TwoTowerConfig, int]:
    folder = run_dir / "baselines" / name
    artifacts.verify_stage(folder)
    artifacts.check_not_stale(folder, run_dir)
    meta = artifacts.tensor_metadata(folder / WEIGHTS)
    cfg = restore(TwoTowerConfig(), meta["config"], str(folder / WEIGHTS))
    if name == "dssm":
        model: nn.Module = DSSM(int(meta["num_users"]), int(meta["num_items"]), cfg)
    else:
        model = YouTubeDNN(int(meta["num_items"]), content_features(run_dir / "data"), cfg)
    state = {k: torch.as_tensor(v) for k, v in artifacts.load_tensors(folder / WEIGHTS, {}).items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)  # content comes from data/, not the file
    except RuntimeError:
        missing, unexpected = ["(shapes differ)"], []
    if unexpected or set(missing) - {"content"}:
        raise ArtifactError(f"{folder / WEIGHTS}: weights do not fit this {name} and data; train it again (--retrain)")
    params = sum(p.numel() for p in model.parameters())
    return model.eval(), cfg, params
