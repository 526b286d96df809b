"""align-train's batches: users cut into batches (optionally of similar history length), and
the (ids, lengths, query positions, targets) of each objective.

Legend: B users in a batch, L padded history length.
"""

from __future__ import annotations

import numpy as np
import torch

from mufasa_cli.data.sequences import TrainData, pad, training_windows


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

    batches.units = len(sizes)  # one cut per user: an epoch's batches cut the users
    return batches


def all_batches(data: TrainData, bs: int, max_len: int, device: torch.device, pool: int = 0, stride: int = 0):
    """Objective `all`: every position of the most recent max_len + 1 train items is a query
    for the next item; yields (ids, lengths, qpos (B, L), targets (B, L), -1 = no query).
    stride > 0: each user's train items cut into windows of max_len + 1 ending every `stride`
    items (data.sequences.training_windows, as SASRec trains), each target trained once, in
    the window that gives it the most context; a batch holds bs windows."""
    if stride:
        windows = training_windows(data.train_seqs, max_len, stride)
        units = [w for w, _ in windows]
        firsts = np.array([f for _, f in windows])
    else:
        units = [q[-(max_len + 1) :] for q in data.train_seqs]
        firsts = np.zeros(len(units), dtype=np.int64)
    sizes = np.array([len(q) - 1 for q in units]) - firsts  # targets of each unit

    def batches(rng: np.random.Generator):
        for rows in user_batches(rng, sizes, bs, pool, targets=sizes):
            seqs = [units[r] for r in rows]
            ids, lengths = pad([q[:-1] for q in seqs], max_len)
            targets = torch.full(ids.shape, -1, dtype=torch.long)
            for i, (q, r) in enumerate(zip(seqs, rows, strict=True)):
                targets[i, firsts[r] : len(q) - 1] = torch.as_tensor(q[firsts[r] + 1 :])
            if int((targets >= 0).sum()) < 2:
                continue
            # every position a query, padding too (no target there, so no loss): the fast
            # kernel's dense causal path, whose outputs at real positions are the same
            qpos = torch.arange(ids.shape[1]).expand(len(seqs), -1)
            yield ids.to(device), lengths.to(device), qpos.to(device), targets.to(device)

    batches.units = len(units)  # users, or windows with a stride: what an epoch's batches cut
    return batches
