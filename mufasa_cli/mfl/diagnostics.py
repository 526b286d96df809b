"""Did fusion work? Numbers for the fuse-train summary and manifest.

- title retrieval: R@1 / R@10 of z -> t over title_ok items (z mapped to the title width);
- cos(z, c): mean cosine of z with its (scaled) CF vector over items that have one;
- alignment and uniformity (Wang & Isola, ICML 2020) of normalised vectors: alignment is
  E||f(z_i) - t_i||^2 between z (title width) and its own title; uniformity is
  log E exp(-2 ||z_i - z_j||^2) over pairs of items (lower is more uniform);
- effective rank (Roy & Vetterli 2007) of z: exp of the entropy of its normalised singular
  values; a collapsed space has a small one;
- on synthetic data (ground-truth topics): cross-genre same-topic retrieval, the paper's
  cross-genre claim: for each item, its 10 nearest items of *other* genres by cosine; P@10 is
  the share of them with the item's topic (many items share a topic, so precision, not recall,
  is the informative number). Reported for z, the title anchor, each raw modality (over items
  that have it), the projected concatenation of all raw modalities (standardised, absent ones
  zero, PCA to z's width; no MFL losses), and the CF vectors.
"""

from __future__ import annotations

import numpy as np

K = 10
_SAMPLE = 4000


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def title_retrieval(z_title: np.ndarray, t: np.ndarray, ok: np.ndarray, chunk: int = 2048) -> dict[str, float]:
    q, c = _unit(z_title[ok]), _unit(t[ok])
    n = len(q)
    if n < 2:
        return {"R@1": float("nan"), "R@10": float("nan")}
    ranks = np.empty(n, dtype=np.int64)
    for s in range(0, n, chunk):
        sim = q[s : s + chunk] @ c.T
        own = sim[np.arange(len(sim)), np.arange(s, s + len(sim))]
        ranks[s : s + chunk] = (sim > own[:, None]).sum(1)
    return {"R@1": float((ranks < 1).mean()), "R@10": float((ranks < 10).mean())}


def effective_rank(z: np.ndarray) -> float:
    s = np.linalg.svd(z - z.mean(0), compute_uv=False)
    p = s / max(s.sum(), 1e-12)
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def uniformity(z: np.ndarray, rng: np.random.Generator) -> float:
    x = _unit(z[rng.permutation(len(z))[:_SAMPLE]])
    sq = np.maximum(2.0 - 2.0 * (x @ x.T), 0.0)
    off = ~np.eye(len(x), dtype=bool)
    return float(np.log(np.exp(-2.0 * sq[off]).mean()))


def alignment(z_title: np.ndarray, t: np.ndarray, ok: np.ndarray) -> float:
    return float(((_unit(z_title[ok]) - _unit(t[ok])) ** 2).sum(1).mean()) if ok.any() else float("nan")


def cross_genre_topic_precision(
    v: np.ndarray,
    mask: np.ndarray,
    genre: np.ndarray,
    topic: np.ndarray,
    k: int = K,
    chunk: int = 2048,
    max_queries: int = 8000,
) -> float | None:
    """Mean share of same-topic items among each item's k nearest items of other genres.
    Catalogues above max_queries items average over an evenly spaced subset of queries
    (every item stays a candidate): the cost is queries x items."""
    idx = np.flatnonzero(mask)
    if len(np.unique(genre[idx])) < 2:
        return None
    x, g, tp = _unit(v[idx]), genre[idx], topic[idx]
    queries = (
        np.linspace(0, len(idx) - 1, max_queries).astype(np.int64) if len(idx) > max_queries else np.arange(len(idx))
    )
    hits = []
    for s in range(0, len(queries), chunk):
        q = queries[s : s + chunk]
        sim = x[q] @ x.T
        sim[g[q, None] == g[None, :]] = -np.inf
        kk = min(k, int((g != g[q[0]]).sum()))
        top = np.argpartition(-sim, kk - 1, axis=1)[:, :kk]
        hits.append((tp[top] == tp[q, None]).mean(1))
    return float(np.concatenate(hits).mean())


def projected_concat(modalities: dict[str, np.ndarray], present: np.ndarray, dim: int) -> np.ndarray:
    """Standardised raw modalities, concatenated (absent ones zero), PCA to `dim`."""
    parts = []
    for j, v in enumerate(modalities.values()):
        m = present[:, j]
        mu = v[m].mean(0) if m.any() else 0.0
        sd = v[m].std(0) + 1e-6 if m.any() else 1.0
        parts.append(np.where(m[:, None], (v - mu) / sd / np.sqrt(v.shape[1]), 0.0))
    x = np.concatenate(parts, axis=1)
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return x @ vt[: min(dim, vt.shape[0])].T


def summarize(
    z: np.ndarray, z_title: np.ndarray | None, data, cf_scaled: np.ndarray, has_cf: np.ndarray, seed: int
) -> dict:
    rng = np.random.default_rng(seed)
    out: dict = {"effective_rank": effective_rank(z), "z_dim": int(z.shape[1]), "uniformity": uniformity(z, rng)}
    if has_cf.any():
        out["cos_z_c"] = float((_unit(z[has_cf]) * _unit(cf_scaled[has_cf])).sum(1).mean())
    if z_title is not None and data.title is not None:
        out["title_retrieval"] = title_retrieval(z_title, data.title, data.title_ok)
        out["alignment"] = alignment(z_title, data.title, data.title_ok)
    if data.topic is not None:
        everyone = np.ones(len(z), dtype=bool)
        rows = {"z (MFL)": cross_genre_topic_precision(z, everyone, data.genre, data.topic)}
        if data.title is not None:
            rows["title anchor"] = cross_genre_topic_precision(
                data.title, np.linalg.norm(data.title, axis=1) > 0, data.genre, data.topic
            )
        for j, (name, v) in enumerate(data.modalities.items()):
            if name != "title":
                rows[name] = cross_genre_topic_precision(v, data.present[:, j], data.genre, data.topic)
        rows["concat + PCA (no MFL)"] = cross_genre_topic_precision(
            projected_concat(data.modalities, data.present, z.shape[1]), everyone, data.genre, data.topic
        )
        rows["CF (LightGCN)"] = cross_genre_topic_precision(cf_scaled, has_cf, data.genre, data.topic)
        out["cross_genre_topic_P@10"] = {k: v for k, v in rows.items() if v is not None}
    return out
