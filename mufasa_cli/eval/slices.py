"""`eval --slices`: every metric on subsets of the (user, target) pairs, to see where a model
wins or loses.

Three kinds of slice, each a boolean mask over the protocol's pairs:
- `history`: the length of the history the user vector reads (train + valid items for `loo`),
  cut at its quartiles over the protocol's cases (`Q1` shortest ... `Q4` longest), plus
  `>=50` and `>=200` when some case has that many items (these overlap the quartiles);
- `popularity`: the target's number of training interactions (split `train`). Items sorted
  from most to least interacted cover the training interactions cumulatively: `head` is the
  most popular items up to the first 20% of interactions, `tail` the least popular items in
  the last 20%, `torso` those between, `cold` the items with none;
- `repeat`: whether the user interacted with the target before (it is in the history the
  user vector reads) or the target is `new`. Under the default protocol earlier items are
  masked but the target never is, so a repeat target competes only with unseen items; with
  `--keep-seen` it competes with everything.

A slice's metric is the protocol's per-user metric restricted to the slice's pairs (for
`zero-shot`: Recall@k and NDCG@k over the user's targets in the slice), averaged over the
users with at least one pair in it; the pairs keep the ranks they had in the whole
protocol. Slices with no pair are left out.

Legend: C cases (users), P (user, target) pairs, N items.
"""

from __future__ import annotations

import numpy as np

from mufasa_cli.metrics.ranking import per_user_metrics

KINDS = ("history", "popularity", "repeat")
HEAD_SHARE, TAIL_SHARE = 0.2, 0.2
LONG_HISTORIES = (50, 200)


def popularity_groups(train_counts: np.ndarray) -> np.ndarray:
    """(N,) labels head / torso / tail / cold from each item's training interactions (N,).

    An item belongs to the group where its interactions start in the cumulative share of
    all training interactions, items taken from most to least interacted (ties by item id):
    head from 0 to 20%, torso from 20% to 80%, tail from 80%."""
    counts = np.asarray(train_counts, dtype=np.int64)
    labels = np.full(len(counts), "cold", dtype=object)
    total = counts.sum()
    if total == 0:
        return labels
    order = np.lexsort((np.arange(len(counts)), -counts))  # most interacted first, then by id
    start = (np.cumsum(counts[order]) - counts[order]) / total  # share of interactions before each
    group = np.where(start < HEAD_SHARE, "head", np.where(start < 1 - TAIL_SHARE, "torso", "tail"))
    labels[order] = group
    labels[counts == 0] = "cold"
    return labels


def history_masks(lengths: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(name, (C,) bool) per history-length slice: quartiles of `lengths`, then >=50, >=200."""
    lengths = np.asarray(lengths)
    if not len(lengths):
        return []
    q1, q2, q3 = np.quantile(lengths, [0.25, 0.5, 0.75], method="lower")
    bounds = [(lengths.min(), q1), (q1 + 1, q2), (q2 + 1, q3), (q3 + 1, lengths.max())]
    out = []
    for i, (lo, hi) in enumerate(bounds, start=1):
        mask = (lengths >= lo) & (lengths <= hi)
        if mask.any():
            out.append((f"Q{i} [{int(lo)}, {int(hi)}]", mask))
    out += [(f">={n}", lengths >= n) for n in LONG_HISTORIES if (lengths >= n).any()]
    return out


def pair_masks(
    histories: list[np.ndarray], owner: np.ndarray, target: np.ndarray, train_counts: np.ndarray
) -> list[tuple[str, str, np.ndarray]]:
    """(kind, name, (P,) bool) for every slice that holds at least one pair."""
    lengths = np.array([len(h) for h in histories])
    out = [("history", name, mask[owner]) for name, mask in history_masks(lengths)]
    groups = popularity_groups(train_counts)[target]
    out += [("popularity", g, groups == g) for g in ("head", "torso", "tail", "cold")]
    repeat = np.array([t in set(histories[o].tolist()) for o, t in zip(owner, target, strict=True)], dtype=bool)
    out += [("repeat", "repeat", repeat), ("repeat", "new", ~repeat)]
    return [(kind, name, mask) for kind, name, mask in out if mask.any()]


def slice_metrics(
    ranks: np.ndarray, owner: np.ndarray, ks: list[int], mask: np.ndarray, single: bool
) -> tuple[dict[str, float], int]:
    """Mean of each per-user metric over the users with pairs in `mask` (P,), their other
    pairs left out; and the number of those users. `single`: the protocol has one target per
    user (HR@k, NDCG@k, MRR), else Recall@k, NDCG@k."""
    users, local = np.unique(owner[mask], return_inverse=True)
    per_user = per_user_metrics(ranks[mask], local, len(users), ks, single=single)
    return {k: float(v.mean()) for k, v in per_user.items()}, len(users)


def compute_slices(
    histories: list[np.ndarray],
    owner: np.ndarray,
    target: np.ndarray,
    train_counts: np.ndarray,
    ranks_by_model: dict[str, np.ndarray],
    ks: list[int],
) -> list[dict]:
    """One record per non-empty slice: kind, name, cases (users), pairs, and each model's mean
    of every metric on it."""
    single = bool((np.bincount(owner, minlength=len(histories)) == 1).all())
    rows = []
    for kind, name, mask in pair_masks(histories, owner, target, train_counts):
        models, cases = {}, 0
        for model, ranks in ranks_by_model.items():
            models[model], cases = slice_metrics(ranks, owner, ks, mask, single)
        rows.append({"kind": kind, "name": name, "cases": cases, "pairs": int(mask.sum()), "models": models})
    return rows
