"""`synthetic` (alias `mixed-genre`): a deterministic mixed-genre catalogue and long histories.

It plants what MUFASA is built to find, so that each part of the model has signal:

Items. Latent topics, each with sub-topics; an item has a topic, a sub-topic, a latent vector
near its sub-topic centre, and one of three genres (post, news, micro video). Each genre
exposes its own subset of modalities (GENRE_MODALITIES) through genre-specific random maps of
the latent vector plus noise, so raw modality vectors of one topic do not line up across
genres: the title anchor (genre-free) is what can align them (the MFL's job). A share of items
carries a conflicting modality (generated from another topic), a missing modality, or a
vague / missing title.

Users. Each consumes contiguous interest blocks (runs of one topic, geometric lengths); a block
is one of the user's few core topics with probability p_core (weighted), else exploration;
inside a core topic the user prefers one sub-topic; the next item keeps the previous item's
sub-topic with probability p_stick (recency); the block before last comes back with
probability p_return; one core topic is replaced now and then (drift). So the next item depends
on the recent window, on the long-term core blocks, and on the sub-topic inside them.

Legend: T topics, S sub-topics per topic, N items, D latent dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

from mufasa_cli.data.sources.base import RawDataset, RawModality
from mufasa_cli.data.sources.vocab import ADJECTIVES, DETAILS, GENRE_TEMPLATES, TOPICS, VAGUE_TITLES
from mufasa_cli.data.text import MAX_TITLE_SHARED

GENRES = ("post", "news", "micro_video")
GENRE_SHARE = (0.35, 0.25, 0.40)
GENRE_MODALITIES: dict[str, tuple[str, ...]] = {
    "post": ("title", "image", "category"),
    "news": ("title", "image", "subtitles"),
    "micro_video": ("title", "frames", "audio", "subtitles", "category"),
}
MODALITY_DIMS = {"image": 48, "frames": 64, "audio": 32, "subtitles": 48}  # + title, category
# Modalities that may be the conflicting or the missing one (title and category are labels).
PERCEPTUAL = ("image", "frames", "audio", "subtitles")


@dataclass(frozen=True)
class SyntheticConfig:
    num_topics: int
    num_subtopics: int
    num_items: int
    num_users: int  # training-role users
    num_zero_shot_users: int
    min_len: int
    max_len: int
    mean_block_len: float = 6.0
    num_core_topics: int = 3
    p_core: float = 0.7
    p_preferred: float = 0.75
    p_stick: float = 0.8
    p_return: float = 0.15
    p_drift: float = 0.04
    p_conflict: float = 0.10
    p_missing_modality: float = 0.10
    p_vague_title: float = 0.05
    p_missing_title: float = 0.03
    p_category_noise: float = 0.10
    latent_dim: int = 32
    title_dim: int = 64
    item_noise: float = 0.35  # spread of items around their sub-topic centre
    modality_noise: float = 0.5
    title_noise: float = 0.15

    def __post_init__(self) -> None:
        if not 1 <= self.num_topics <= len(TOPICS):
            raise ValueError(f"num_topics must be in 1..{len(TOPICS)}")
        if not 1 <= self.num_subtopics <= 6:
            raise ValueError("num_subtopics must be in 1..6")
        if self.num_items < self.num_topics * self.num_subtopics:
            raise ValueError("num_items must be at least num_topics * num_subtopics")
        if not 2 <= self.min_len <= self.max_len:
            raise ValueError("need 2 <= min_len <= max_len")
        if self.mean_block_len < 2:
            raise ValueError("mean_block_len must be >= 2")


PRESETS: dict[str, SyntheticConfig] = {
    "tiny": SyntheticConfig(
        num_topics=6,
        num_subtopics=3,
        num_items=240,
        num_users=48,
        num_zero_shot_users=12,
        min_len=24,
        max_len=40,
    ),
    "small": SyntheticConfig(  # recipes/paper.sh's quick run
        num_topics=12,
        num_subtopics=4,
        num_items=1500,
        num_users=400,
        num_zero_shot_users=100,
        min_len=100,
        max_len=160,
    ),
    "default": SyntheticConfig(
        num_topics=24,
        num_subtopics=4,
        num_items=6000,
        num_users=1500,
        num_zero_shot_users=200,
        min_len=150,
        max_len=260,
    ),
    "large": SyntheticConfig(
        num_topics=32,
        num_subtopics=6,
        num_items=40000,
        num_users=2000,
        num_zero_shot_users=200,
        min_len=1000,
        max_len=1600,
        mean_block_len=8.0,
    ),
}


def preset_config(preset: str, zero_shot_users: int | None = None) -> SyntheticConfig:
    cfg = PRESETS[preset]
    return cfg if zero_shot_users is None else replace(cfg, num_zero_shot_users=zero_shot_users)


# ---------------------------------------------------------------- helpers


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _zipf_weights(rng: np.random.Generator, n: int, s: float = 1.0) -> np.ndarray:
    w = 1.0 / np.arange(1, n + 1) ** s
    return rng.permutation(w / w.sum())


def _choice(rng: np.random.Generator, cdf: np.ndarray) -> int:
    return int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))


# ---------------------------------------------------------------- items


@dataclass
class _Catalogue:
    topic: np.ndarray  # (N,) int
    subtopic: np.ndarray  # (N,) int
    genre: np.ndarray  # (N,) int
    latent: np.ndarray  # (N, D)
    pools: list[list[np.ndarray]]  # [t][s] -> item indices
    pool_cdfs: list[list[np.ndarray]]  # popularity CDF inside each pool
    topic_cdf: np.ndarray


def _make_catalogue(cfg: SyntheticConfig, rng: np.random.Generator) -> _Catalogue:
    T, S, N, D = cfg.num_topics, cfg.num_subtopics, cfg.num_items, cfg.latent_dim
    topic_centres = _unit_rows(rng.standard_normal((T, D))) * 2.0
    sub_centres = topic_centres[:, None, :] + _unit_rows(rng.standard_normal((T, S, D)))  # (T, S, D)
    topic_p = _zipf_weights(rng, T, 0.6)
    # every (topic, sub-topic) pool gets at least one item, the rest follow topic popularity
    topic = np.concatenate([np.repeat(np.arange(T), S), rng.choice(T, N - T * S, p=topic_p)])
    subtopic = np.concatenate([np.tile(np.arange(S), T), rng.integers(0, S, N - T * S)])
    order = rng.permutation(N)
    topic, subtopic = topic[order], subtopic[order]
    genre = rng.choice(len(GENRES), N, p=GENRE_SHARE)
    latent = sub_centres[topic, subtopic] + cfg.item_noise * rng.standard_normal((N, D))
    pools, cdfs = [], []
    for t in range(T):
        pools.append([])
        cdfs.append([])
        for s in range(S):
            idx = np.flatnonzero((topic == t) & (subtopic == s))
            pools[t].append(idx)
            cdfs[t].append(np.cumsum(_zipf_weights(rng, len(idx), 0.8)))
    return _Catalogue(topic, subtopic, genre, latent, pools, cdfs, np.cumsum(topic_p))


def _make_titles(
    cfg: SyntheticConfig, cat: _Catalogue, rng: np.random.Generator
) -> tuple[list[str | None], np.ndarray, np.ndarray, list[str]]:
    """Title text, title vectors (N, title_dim), has_title (N,), title kind per item."""
    N = len(cat.topic)
    proj = rng.standard_normal((cfg.latent_dim, cfg.title_dim)) / np.sqrt(cfg.latent_dim)
    vectors = cat.latent @ proj + cfg.title_noise * rng.standard_normal((N, cfg.title_dim))
    vague_vectors = rng.standard_normal((len(VAGUE_TITLES), cfg.title_dim))
    u = rng.random(N)
    kind = np.where(
        u < cfg.p_missing_title, "missing", np.where(u < cfg.p_missing_title + cfg.p_vague_title, "vague", "ok")
    )
    titles: list[str | None] = []
    pool = max(1, min(len(VAGUE_TITLES), int((kind == "vague").sum()) // MAX_TITLE_SHARED))
    n_vague_seen = 0
    for i in range(N):
        if kind[i] == "missing":
            titles.append(None)
            continue
        if kind[i] == "vague":  # round-robin over a pool small enough that each is shared
            k = n_vague_seen % pool
            n_vague_seen += 1
            titles.append(VAGUE_TITLES[k])
            vectors[i] = vague_vectors[k] + 0.05 * rng.standard_normal(cfg.title_dim)
            continue
        _, subs, nouns = TOPICS[cat.topic[i]]
        templates = GENRE_TEMPLATES[GENRES[cat.genre[i]]]
        titles.append(
            templates[int(rng.integers(len(templates)))].format(
                sub=subs[cat.subtopic[i]],
                noun=nouns[int(rng.integers(len(nouns)))],
                adj=ADJECTIVES[int(rng.integers(len(ADJECTIVES)))],
                detail=DETAILS[int(rng.integers(len(DETAILS)))],
            )
        )
    vectors[kind == "missing"] = 0.0
    return titles, _unit_rows(vectors).astype(np.float32), kind != "missing", list(kind)


def _make_modalities(
    cfg: SyntheticConfig, cat: _Catalogue, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray, list[str | None], list[str | None]]:
    """values[m] (N, d_m), present[m] (N,) bool, category label (N,), conflict / missing name per item."""
    N, T = len(cat.topic), cfg.num_topics
    exposed = {m: np.array([m in GENRE_MODALITIES[g] for g in GENRES]) for m in (*PERCEPTUAL, "category")}
    present = {m: exposed[m][cat.genre] for m in exposed}
    # conflicting modality: one exposed perceptual modality drawn from another topic's item
    conflict: list[str | None] = [None] * N
    missing: list[str | None] = [None] * N
    source_latent = {m: cat.latent.copy() for m in PERCEPTUAL}
    conflict_draw, missing_draw = rng.random(N), rng.random(N)
    for i in range(N):
        options = [m for m in PERCEPTUAL if present[m][i]]
        if conflict_draw[i] < cfg.p_conflict:
            m = options[int(rng.integers(len(options)))]
            other = int(rng.integers(N))
            while cat.topic[other] == cat.topic[i]:
                other = int(rng.integers(N))
            source_latent[m][i] = cat.latent[other]
            conflict[i] = m
        if missing_draw[i] < cfg.p_missing_modality:
            candidates = [m for m in options if m != conflict[i]] or options
            m = candidates[int(rng.integers(len(candidates)))]
            present[m][i] = False
            missing[i] = m
    values: dict[str, np.ndarray] = {}
    for m, dim in MODALITY_DIMS.items():
        maps = rng.standard_normal((len(GENRES), cfg.latent_dim, dim)) / np.sqrt(cfg.latent_dim)
        v = np.einsum("nd,nde->ne", source_latent[m], maps[cat.genre])
        v += cfg.modality_noise * rng.standard_normal((N, dim))
        values[m] = np.where(present[m][:, None], v, 0.0).astype(np.float32)
    noisy = rng.random(N) < cfg.p_category_noise
    category = np.where(noisy, rng.integers(0, T, N), cat.topic)
    values["category"] = np.where(present["category"][:, None], np.eye(T, dtype=np.float32)[category], 0.0)
    return values, present, category, conflict, missing


# ---------------------------------------------------------------- users


def _make_sequence(
    cfg: SyntheticConfig, cat: _Catalogue, rng: np.random.Generator
) -> tuple[list[int], list[int], list[float]]:
    """One user's items, block index of each, and timestamps (seconds)."""
    T, S = cfg.num_topics, cfg.num_subtopics
    length = int(rng.integers(cfg.min_len, cfg.max_len + 1))
    k = min(cfg.num_core_topics, T)
    core = list(rng.choice(T, k, replace=False, p=np.diff(cat.topic_cdf, prepend=0.0)))
    core_w = rng.dirichlet(np.full(k, 2.0))
    preferred = {t: int(rng.integers(S)) for t in core}
    items: list[int] = []
    blocks: list[int] = []
    times: list[float] = []
    block_topics: list[int] = []
    now = float(rng.integers(1_600_000_000, 1_650_000_000))
    while len(items) < length:
        if rng.random() < cfg.p_drift:  # drift: one core topic is replaced
            j = int(rng.integers(k))
            new = _choice(rng, cat.topic_cdf)
            if new not in core:
                preferred.pop(core[j], None)
                core[j] = new
                preferred[new] = int(rng.integers(S))
        prev = block_topics[-1] if block_topics else -1
        if len(block_topics) >= 2 and block_topics[-2] != prev and rng.random() < cfg.p_return:
            topic = block_topics[-2]
        elif rng.random() < cfg.p_core and (k > 1 or core[0] != prev):
            options = [j for j in range(k) if core[j] != prev]
            topic = core[options[_choice(rng, np.cumsum(core_w[options]))]]
        else:
            topic = _choice(rng, cat.topic_cdf)
        if topic == prev:  # a block is a maximal run of one topic
            topic = (topic + 1 + int(rng.integers(T - 1))) % T if T > 1 else topic
        size = min(1 + int(rng.geometric(1.0 / (cfg.mean_block_len - 1))), length - len(items))
        is_core = topic in preferred
        sub = -1
        now += rng.exponential(86_400.0)
        for _ in range(size):
            if sub < 0 or rng.random() >= cfg.p_stick:
                sub = preferred[topic] if is_core and rng.random() < cfg.p_preferred else int(rng.integers(S))
            pool = cat.pools[topic][sub]
            items.append(int(pool[_choice(rng, cat.pool_cdfs[topic][sub])]))
            blocks.append(len(block_topics))
            times.append(round(now))
            now += rng.exponential(120.0) + 1.0
        block_topics.append(topic)
    return items, blocks, times


# ---------------------------------------------------------------- source


def generate(cfg: SyntheticConfig, seed: int, on_progress: Callable[[int, int], None] | None = None) -> RawDataset:
    rng = np.random.default_rng(seed)
    cat = _make_catalogue(cfg, rng)
    titles, title_vecs, has_title, title_kind = _make_titles(cfg, cat, rng)
    values, present, category, conflict, missing = _make_modalities(cfg, cat, rng)
    N = cfg.num_items
    raw_items = [f"i{i:06d}" for i in range(N)]
    topic_names = [TOPICS[t][0] for t in range(cfg.num_topics)]
    items = pl.DataFrame(
        {
            "raw_item": raw_items,
            "title": titles,
            "genre": [GENRES[g] for g in cat.genre],
            "category": [topic_names[c] if present["category"][i] else None for i, c in enumerate(category)],
            # ground truth, for diagnostics (cross-genre same-topic retrieval) and tests
            "topic": cat.topic.astype(np.int64),
            "subtopic": cat.subtopic.astype(np.int64),
            "title_kind": title_kind,
            "conflict_modality": pl.Series(conflict, dtype=pl.String),
            "missing_modality": pl.Series(missing, dtype=pl.String),
        },
        schema_overrides={"title": pl.String, "category": pl.String},
    )

    def keyed(mask: np.ndarray, matrix: np.ndarray, name: str) -> RawModality:
        idx = np.flatnonzero(mask)
        return RawModality([raw_items[i] for i in idx], matrix[idx], f"synthetic:{name}")

    modalities = {}  # the title modality is the anchor itself, added by prepare when one is used
    for m in ("image", "frames", "audio", "subtitles", "category"):
        modalities[m] = keyed(present[m], values[m], m)

    num_users = cfg.num_users + cfg.num_zero_shot_users
    users, item_col, block_col, time_col = [], [], [], []
    for u in range(num_users):
        seq, blocks, times = _make_sequence(cfg, cat, rng)
        raw_user = f"u{u:06d}"
        users.extend([raw_user] * len(seq))
        item_col.extend(raw_items[i] for i in seq)
        block_col.extend(blocks)
        time_col.extend(times)
        if on_progress is not None:
            on_progress(u + 1, num_users)
    interactions = pl.DataFrame(
        {
            "raw_user": users,
            "raw_item": item_col,
            "timestamp": pl.Series(time_col, dtype=pl.Float64),
            "block": pl.Series(block_col, dtype=pl.Int64),  # ground-truth interest block
        }
    )
    zero_shot = [f"u{u:06d}" for u in range(cfg.num_users, num_users)]
    return RawDataset(
        interactions=interactions,
        items=items,
        genres=list(GENRES),
        modalities=modalities,
        title_vectors=keyed(has_title, title_vecs, "title"),
        zero_shot_users=zero_shot,
        title_as_modality=True,
        keep_items_without_interactions=True,
        notes={"preset_config": cfg.__dict__},
    )
