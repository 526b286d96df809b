"""Users' item sequences and their splits, read from RUN/data: what the SAL, the sequential
baselines and eval all read.

Legend: U users, T interactions, B a batch of histories, L their padded length.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mufasa_cli import artifacts
from mufasa_cli.data import schema
from mufasa_cli.errors import DataSchemaError


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


def pad(histories: list[np.ndarray], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (B, L) item ids (the most recent max_len of each) and lengths (B,)."""
    cut = [h[-max_len:] for h in histories]
    lengths = np.array([len(h) for h in cut], dtype=np.int64)
    out = np.zeros((len(cut), max(int(lengths.max()), 1)), dtype=np.int64)
    for i, h in enumerate(cut):
        out[i, : len(h)] = h
    return torch.as_tensor(out), torch.as_tensor(lengths)


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


def training_windows(seqs: list[np.ndarray], max_len: int, stride: int | None = None) -> list[tuple[np.ndarray, int]]:
    """Cut each train sequence into windows of at most max_len + 1 items (max_len inputs, each
    predicting the next), ending at its last item and then every `stride` items earlier
    (default max_len: windows do not overlap). Returns (window, first): the window's targets
    from `first` on are its own, so that every item after the first is a target exactly once
    however long the sequence (as RecBole's per-interaction samples cover every target). A
    smaller stride gives every target at least max_len + 1 - stride items of context, at
    max_len / stride times the cost; windows with no target are dropped."""
    stride = max_len if stride is None else stride
    out = []
    for s in seqs:
        for end in range(len(s), 1, -stride):
            start = max(0, end - max_len - 1)
            first = 0 if end - stride <= 1 else max(0, end - stride - start - 1)
            out.append((s[start:end], first))
    return out
