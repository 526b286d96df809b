"""Full-catalogue ranking metrics, computed in chunks of users so memory stays bounded.

rank = the number of other candidate items whose score is >= the target's (ties count
against the target: pessimistic), so 0 is the best rank. HR@k = [rank < k],
NDCG@k = [rank < k] / log2(rank + 2) for a single target.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


def target_ranks(
    user_vectors: Callable[[np.ndarray], torch.Tensor],
    item_vectors: torch.Tensor,
    users: np.ndarray,
    targets: np.ndarray,
    exclude_indptr: np.ndarray | None = None,
    exclude_items: np.ndarray | None = None,
    chunk: int = 1024,
) -> np.ndarray:
    """Pessimistic 0-based rank of each user's target among all items.

    user_vectors(user ids) -> (b, D) scores item_vectors (N, D) by dot product. The items
    exclude_items[exclude_indptr[u]:exclude_indptr[u+1]] (e.g. already seen) are not
    candidates for user u, except the target itself.
    """
    ranks = np.empty(len(users), dtype=np.int64)
    device = item_vectors.device
    for start in range(0, len(users), chunk):
        sel = slice(start, start + chunk)
        u = users[sel]
        t = torch.as_tensor(np.array(targets[sel]), device=device)
        scores = user_vectors(u) @ item_vectors.T  # (b, N)
        target_score = scores.gather(1, t[:, None])  # before exclusion: a repeated target still counts
        if exclude_indptr is not None:
            rows, cols = _excluded(u, exclude_indptr, exclude_items)
            scores[torch.as_tensor(rows, device=device), torch.as_tensor(cols, device=device)] = -torch.inf
        scores.scatter_(1, t[:, None], -torch.inf)  # the target does not outrank itself
        ranks[sel] = (scores >= target_score).sum(1).cpu().numpy()
    return ranks


def _excluded(users: np.ndarray, indptr: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts, ends = indptr[users], indptr[users + 1]
    counts = ends - starts
    rows = np.repeat(np.arange(len(users)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return rows, items[np.repeat(starts, counts) + offsets]


def hit_rate(ranks: np.ndarray, k: int) -> np.ndarray:
    return (ranks < k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def history_csr(histories: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The exclusion lists of target_ranks for rows 0..len(histories)-1: each row's history."""
    items = np.concatenate(histories) if histories else np.zeros(0, np.int64)
    return csr(np.repeat(np.arange(len(histories)), [len(h) for h in histories]), items, len(histories))


def top10(ranks: np.ndarray) -> dict[str, float]:
    """The early-stopping pair every trainer reports: mean HR@10 and NDCG@10."""
    return {"HR@10": float(hit_rate(ranks, 10).mean()), "NDCG@10": float(ndcg(ranks, 10).mean())}


def csr(users: np.ndarray, items: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, items) grouping `items` by user, for the exclusion lists."""
    order = np.argsort(users, kind="stable")
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.add.at(indptr, users + 1, 1)
    return np.cumsum(indptr), items[order]


def mrr(ranks: np.ndarray) -> np.ndarray:
    """Reciprocal rank of a single target, untruncated."""
    return 1.0 / (ranks + 1.0)


def per_user_metrics(
    ranks: np.ndarray, owner: np.ndarray, num_users: int, ks: list[int], single: bool | None = None
) -> dict[str, np.ndarray]:
    """Per-user metrics from the ranks of each (user, target) pair; owner[i] = the pair's user
    row in [0, num_users). Each target is ranked among the candidates, the user's other targets
    included, so rank < k means "in the top-k list".

    One target per user: HR@k, NDCG@k, MRR. Several: Recall@k = hits / targets and
    NDCG@k = sum over hits of 1/log2(rank + 2), over the ideal sum_{i < min(k, targets)} 1/log2(i + 2).
    `single` forces one of the two (for a subset of a protocol's pairs); by default, one target
    for every user means single.
    """
    counts = np.bincount(owner, minlength=num_users)
    out: dict[str, np.ndarray] = {}
    if single is None:
        single = bool((counts == 1).all())
    for k in ks:
        hits = np.bincount(owner, weights=hit_rate(ranks, k), minlength=num_users)
        dcg = np.bincount(owner, weights=ndcg(ranks, k), minlength=num_users)
        ideal_terms = 1.0 / np.log2(np.arange(max(k, 1)) + 2.0)
        idcg = np.cumsum(ideal_terms)[np.minimum(counts, k) - 1]
        if single:
            out[f"HR@{k}"] = hits
            out[f"NDCG@{k}"] = dcg
        else:
            out[f"Recall@{k}"] = hits / counts
            out[f"NDCG@{k}"] = dcg / idcg
    if single:
        out["MRR"] = mrr(ranks)[np.argsort(owner, kind="stable")]
    return out
