"""MMGCN (Wei et al., ACM MM 2019): multi-modal graph convolution for micro-video
recommendation, on the train interactions of train-role users.

Per modality m (every modality of data/features.safetensors):
item nodes start from LeakyReLU(P_m x_i^m), user nodes from a learned preference u^m; each
layer aggregates the neighbours through the normalised bipartite adjacency,
agg = LeakyReLU(W_m (A h)), and combines with the node's own representation and its id
embedding: h' = LeakyReLU(C_m h + id) + agg. The final representations are summed over the
modalities; score = user . item; BPR with sampled negatives, early-stopped on valid NDCG@10.
The paper's concatenation/element-wise combination choice is taken as element-wise sum.
Cold items (no edge) keep a representation from their own features. Users outside the
graph have none, so MMGCN sits out `zero-shot`.

Legend: U users, N items, D width, M modalities, T train interactions.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from mufasa_cli import artifacts
from mufasa_cli.baselines.common import train_baseline
from mufasa_cli.baselines.two_tower import modality_features
from mufasa_cli.config import MMGCNConfig, restore
from mufasa_cli.errors import ArtifactError, DataSchemaError
from mufasa_cli.metrics.ranking import history_csr, target_ranks, top10
from mufasa_cli.mfl.lightgcn import _SymmetricSpMM, normalized_adjacency, sample_negatives
from mufasa_cli.runtime.loop import OnStep, seed_everything

NAME = "mmgcn"
WEIGHTS = "model.safetensors"


class ModalityGCN(nn.Module):
    def __init__(self, num_users: int, feature_dim: int, cfg: MMGCNConfig):
        super().__init__()
        D = cfg.d_model
        self.preference = nn.Parameter(torch.randn(num_users, D) * 0.1)
        self.project = nn.Linear(feature_dim, D)
        self.aggregate = nn.ModuleList(nn.Linear(D, D) for _ in range(cfg.num_layers))
        self.combine = nn.ModuleList(nn.Linear(D, D) for _ in range(cfg.num_layers))

    def forward(self, features: torch.Tensor, ids: torch.Tensor, adjacency: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.preference, F.leaky_relu(self.project(features))])  # (U+N, D)
        for agg, comb in zip(self.aggregate, self.combine, strict=True):
            neighbours = F.leaky_relu(agg(_SymmetricSpMM.apply(adjacency, h)))
            h = F.leaky_relu(comb(h) + ids) + neighbours
        return h


class MMGCN(nn.Module):
    def __init__(self, num_users: int, num_items: int, features: dict[str, torch.Tensor], cfg: MMGCNConfig):
        super().__init__()
        self.num_users, self.cfg = num_users, cfg
        self.names = sorted(features)
        for i, name in enumerate(self.names):
            self.register_buffer(f"x{i}", features[name])
        self.ids = nn.Embedding(num_users + num_items, cfg.d_model)
        nn.init.normal_(self.ids.weight, std=0.1)
        self.gcn = nn.ModuleList(ModalityGCN(num_users, features[n].shape[1], cfg) for n in self.names)
        self.adjacency: torch.Tensor | None = None  # set before use; not in the state dict

    def propagate(self) -> torch.Tensor:
        assert self.adjacency is not None
        return sum(g(getattr(self, f"x{i}"), self.ids.weight, self.adjacency) for i, g in enumerate(self.gcn))

    def bpr_loss(self, users, pos, neg) -> tuple[torch.Tensor, dict]:
        out = self.propagate()
        u, p, n = out[users], out[self.num_users + pos], out[self.num_users + neg]
        bpr = -F.logsigmoid((u * p).sum(-1) - (u * n).sum(-1)).mean()
        e = self.ids.weight
        l2 = (e[users].pow(2).sum() + e[self.num_users + pos].pow(2).sum() + e[self.num_users + neg].pow(2).sum()) / (
            2 * len(users)
        )
        return bpr + self.cfg.reg * l2, {"bpr": bpr.item()}

    @torch.no_grad()
    def split(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.propagate()
        return out[: self.num_users], out[self.num_users :]


def _graph(seqs) -> tuple[np.ndarray, np.ndarray, list[int], list[np.ndarray], list[int]]:
    users, items, valid_users, valid_hist, valid_target = [], [], [], [], []
    for u in np.flatnonzero(seqs.roles == "train"):
        its, splits = seqs.of(int(u))
        tr = its[splits == "train"]
        users.append(np.full(len(tr), u))
        items.append(tr)
        va = its[splits == "valid"]
        if len(tr) and len(va):
            valid_users.append(int(u))
            valid_hist.append(tr)
            valid_target.append(int(va[0]))
    return np.concatenate(users), np.concatenate(items), valid_users, valid_hist, valid_target


def train(
    run_dir: Path,
    cfg: MMGCNConfig,
    *,
    seqs,
    num_items: int,
    seed: int,
    device: torch.device,
    resume: bool = False,
    on_step: OnStep | None = None,
) -> dict:
    started = time.perf_counter()
    data_dir = run_dir / "data"
    data_record = artifacts.input_record(data_dir)  # the data/ the caller read, recorded now
    features = modality_features(data_dir)
    if not features:
        raise DataSchemaError(f"{data_dir}: MMGCN needs item features; this run has none")
    U = len(seqs.roles)
    train_users, train_items, valid_users, valid_hist, valid_target = _graph(seqs)
    if not len(train_users):
        raise DataSchemaError(f"{data_dir}: no train interaction for MMGCN")
    seed_everything(seed)
    model = MMGCN(U, num_items, features, cfg).to(device)
    model.adjacency = normalized_adjacency(train_users, train_items, U, num_items).to(device)
    pos_keys = np.unique(train_users.astype(np.int64) * num_items + train_items)
    bs, T = cfg.train.batch_size, len(train_users)

    def batches(rng: np.random.Generator):
        order = rng.permutation(T)
        for s in range(0, T, bs):
            idx = order[s : s + bs]
            neg = sample_negatives(rng, train_users[idx], num_items, pos_keys)
            yield (torch.as_tensor(x, device=device) for x in (train_users[idx], train_items[idx], neg))

    seen = history_csr(valid_hist)

    def valid_metrics() -> dict[str, float]:
        model.eval()
        users, items = model.split()
        rows = torch.as_tensor(valid_users, device=device)
        ranks = target_ranks(
            lambda r: users[rows[torch.as_tensor(r, device=device)]],
            items,
            np.arange(len(valid_users)),
            np.array(valid_target),
            *seen,
        )
        return top10(ranks)

    def files(tmp: Path) -> None:
        users, items = model.split()
        params = sum(p.numel() for p in model.parameters())
        # the propagated vectors are what eval scores; the graph is not needed again
        artifacts.save_tensors(
            tmp / WEIGHTS,
            {"users": users.cpu().numpy(), "items": items.cpu().numpy()},
            {"config": asdict(cfg), "params": params, "modalities": model.names},
        )

    return train_baseline(
        run_dir,
        NAME,
        cfg,
        data_record,
        model=model,
        seed=seed,
        steps_per_epoch=-(-T // bs),
        batches=batches,
        step_loss=lambda b: model.bpr_loss(*b),
        validate=valid_metrics,
        resume=resume,
        on_step=on_step,
        files=files,
        counts={"train_interactions": T, "valid_users": len(valid_users), "items": num_items},
        started=started,
        device=device,
    )


def load(run_dir: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """(user vectors (U, D), item vectors (N, D), learnable parameters)."""
    folder = run_dir / "baselines" / NAME
    artifacts.verify_stage(folder)
    artifacts.check_not_stale(folder, run_dir)
    meta = artifacts.tensor_metadata(folder / WEIGHTS)
    restore(MMGCNConfig(), meta["config"], str(folder / WEIGHTS))  # refuses a file from another version
    t = artifacts.load_tensors(folder / WEIGHTS, {"users": ("float32", (None, "D")), "items": ("float32", (None, "D"))})
    if "params" not in meta:
        raise ArtifactError(f"{folder / WEIGHTS}: no parameter count in its metadata")
    return t["users"], t["items"], int(meta["params"])
