"""SASRec on item ids (Kang & McAuley, ICDM 2018), the strong variant: cross-entropy over
all items at every position (Klenitskiy & Vasilev, RecSys 2023), as RecBole trains it.

Trained on the train split of train-role users, cut into windows of max_len + 1 items so that
every train item after a user's first is a target once, early-stopped on leave-one-out valid NDCG@10
(full ranking, train items masked); cached under RUN/baselines/sasrec/. A user's vector is
the last position's hidden state over their most recent max_len items; item vectors are the
(tied) item embeddings, so score = dot product, like every model `eval` compares. SASRec is
inductive over users: it embeds zero-shot users from their history too. Cold items keep
their untrained random embeddings (SASRec has no content to reach them).

Legend: B users, L max_len, N items, D width.
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
from mufasa_cli.config import SASRecConfig, restore
from mufasa_cli.data.sequences import training_windows
from mufasa_cli.errors import ArtifactError
from mufasa_cli.losses import full_softmax_loss
from mufasa_cli.metrics.ranking import history_csr, target_ranks, top10
from mufasa_cli.runtime.loop import OnStep, seed_everything

NAME = "sasrec"
WEIGHTS = "model.safetensors"


EPS = 1e-12  # RecBole's LayerNorm epsilon


class Block(nn.Module):
    """One post-LN transformer layer as RecBole's SASRec has it: attention (dropout on its
    weights and its output), then dense -> GELU -> dense -> dropout, each with a residual and a
    LayerNorm (no dropout after the activation, unlike torch's TransformerEncoderLayer)."""

    def __init__(self, cfg: SASRecConfig):
        super().__init__()
        D, p = cfg.d_model, cfg.dropout
        self.attn = nn.MultiheadAttention(D, cfg.num_heads, dropout=p, batch_first=True)
        self.up, self.down = nn.Linear(D, cfg.inner), nn.Linear(cfg.inner, D)
        self.norm1, self.norm2 = nn.LayerNorm(D, eps=EPS), nn.LayerNorm(D, eps=EPS)
        self.drop1, self.drop2 = nn.Dropout(p), nn.Dropout(p)

    def forward(self, x: torch.Tensor, blocked: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """x (B, L, D) -> (B, L, D); with last_only, (B, 1, D): the last position alone is
        queried (its keys and values are still every position), the same numbers as [:, -1:]."""
        q, blocked = (x[:, -1:], blocked[:, -1:]) if last_only else (x, blocked)
        a = self.attn(q, x, x, attn_mask=blocked, need_weights=False)[0]
        x = self.norm1(q + self.drop1(a))
        return self.norm2(x + self.drop2(self.down(F.gelu(self.up(x)))))


class SASRec(nn.Module):
    def __init__(self, num_items: int, cfg: SASRecConfig):
        super().__init__()
        D = cfg.d_model
        self.cfg, self.pad = cfg, num_items  # id N pads
        self.items = nn.Embedding(num_items + 1, D, padding_idx=num_items)
        self.position = nn.Embedding(cfg.max_len, D)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(D, eps=EPS)
        self.drop = nn.Dropout(cfg.dropout)
        # RecBole's initialisation: every weight matrix N(0, 0.02), biases 0
        for name, w in self.named_parameters():
            if "norm" in name:
                continue
            nn.init.zeros_(w) if name.endswith("bias") else nn.init.normal_(w, std=0.02)
        with torch.no_grad():
            self.items.weight[num_items].zero_()

    def forward(self, ids: torch.Tensor, last_only: bool = False) -> torch.Tensor:
        """ids (B, L), left-padded with the pad id -> hidden states (B, L, D); causal. With
        last_only, (B, 1, D): the last position's state alone, the last layer computing only
        that query (what one-target samples and user vectors need)."""
        B, L = ids.shape
        x = self.items(ids) + self.position(torch.arange(L, device=ids.device))
        x = self.drop(self.norm(x))
        # True = may not attend: later positions, and padding keys other than the query itself
        # (a padding query then attends to itself only: no all-masked row, so no NaN)
        at = torch.arange(L, device=ids.device)
        later = at[None, :] > at[:, None]  # (L, L)
        pad_key = (ids == self.pad)[:, None, :] & (at[None, :] != at[:, None])  # (B, L, L)
        blocked = (later | pad_key).repeat_interleave(self.cfg.num_heads, dim=0)  # (B*H, L, L)
        for i, layer in enumerate(self.layers):
            x = layer(x, blocked, last_only=last_only and i == len(self.layers) - 1)
        return x

    def item_vectors(self) -> torch.Tensor:
        return self.items.weight[: self.pad]


def left_pad(histories: list[np.ndarray], max_len: int, pad: int) -> torch.Tensor:
    """The most recent max_len items of each history, left-padded, (B, L)."""
    out = np.full((len(histories), max_len), pad, dtype=np.int64)
    for i, h in enumerate(histories):
        h = h[-max_len:]
        if len(h):
            out[i, max_len - len(h) :] = h
    return torch.as_tensor(out)


@torch.no_grad()
def user_vectors(model: SASRec, histories: list[np.ndarray], chunk: int = 512) -> torch.Tensor:
    model.eval()
    device = model.items.weight.device
    out = []
    for s in range(0, len(histories), chunk):
        ids = left_pad(histories[s : s + chunk], model.cfg.max_len, model.pad).to(device)
        out.append(model(ids, last_only=True)[:, -1])
    return torch.cat(out) if out else torch.zeros(0, model.cfg.d_model)


def train(
    run_dir: Path,
    cfg: SASRecConfig,
    *,
    seqs,
    num_items: int,
    seed: int,
    device: torch.device,
    resume: bool,
    on_step: OnStep | None = None,
) -> dict:
    """Train and write RUN/baselines/sasrec/ (weights + manifest); returns the manifest."""
    started = time.perf_counter()
    data_record = artifacts.input_record(run_dir / "data")  # the data/ the caller read, recorded now
    from mufasa_cli.data.sequences import split_for_training

    split = split_for_training(seqs, num_items, run_dir / "data")  # the same users and targets as align-train
    train_seqs, valid_hist, valid_target = split.train_seqs, split.valid_hist, split.valid_target
    seed_everything(seed)
    model = SASRec(num_items, cfg).to(device)
    L, pad = cfg.max_len, num_items

    windows = training_windows(train_seqs, L, cfg.stride or L)
    one_target = cfg.stride == 1  # each window owns its last target only, at the last position

    def owned_targets(window: np.ndarray, first: int) -> np.ndarray:
        t = window[1:].copy()
        t[:first] = pad  # targets an overlapping later window owns
        return t

    def batches(rng: np.random.Generator):
        order = rng.permutation(len(windows))
        for s in range(0, len(order), cfg.train.batch_size):
            chunk = [windows[r] for r in order[s : s + cfg.train.batch_size]]
            inputs = left_pad([w[:-1] for w, _ in chunk], L, pad)
            targets = left_pad([owned_targets(w, first) for w, first in chunk], L, pad)
            yield inputs.to(device), targets.to(device)

    def step(batch):
        inputs, targets = batch
        if one_target:
            targets = targets[:, -1:]
        h = model(inputs, last_only=one_target)  # (B, L, D), or (B, 1, D)
        real = targets != pad
        # cross-entropy over the catalogue, (R, N) logits in chunks that fit the loss's budget
        loss = full_softmax_loss(h[real], model.item_vectors(), targets[real], 1.0)
        return loss, {"ce": loss.item()}

    seen = () if cfg.valid_keep_seen else history_csr(valid_hist)

    def valid_metrics() -> dict[str, float]:
        users = user_vectors(model, valid_hist)
        ranks = target_ranks(
            lambda rows: users[torch.as_tensor(rows, device=device)],
            model.item_vectors().detach(),
            np.arange(len(valid_hist)),
            np.array(valid_target),
            *seen,
        )
        return top10(ranks)

    def files(tmp: Path) -> None:
        state = {k: v.detach().cpu().contiguous().numpy() for k, v in model.state_dict().items()}
        artifacts.save_tensors(tmp / WEIGHTS, state, {"config": asdict(cfg), "num_items": num_items})

    return train_baseline(
        run_dir,
        NAME,
        cfg,
        data_record,
        model=model,
        seed=seed,
        steps_per_epoch=max(1, -(-len(windows) // cfg.train.batch_size)),
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


def load(run_dir: Path, device: torch.device) -> tuple[SASRec, int]:
    folder = run_dir / "baselines" / NAME
    artifacts.verify_stage(folder)
    artifacts.check_not_stale(folder, run_dir)
    meta = artifacts.tensor_metadata(folder / WEIGHTS)
    cfg = restore(SASRecConfig(), meta["config"], str(folder / WEIGHTS))
    model = SASRec(int(meta["num_items"]), cfg)
    state = artifacts.load_tensors(folder / WEIGHTS, {})
    try:
        model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    except RuntimeError:
        raise ArtifactError(
            f"{folder / WEIGHTS}: weights do not fit this SASRec and data; train it again (--retrain)"
        ) from None
    params = sum(p.numel() for p in model.parameters())
    return model.to(device).eval(), params
