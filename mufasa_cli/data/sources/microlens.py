"""`microlens`: MicroLens-50k/100k/1M as distributed.

Files, searched in the --source folders in the order given (the first folder that has a
kind of file wins):
- interactions: `*_pairs.csv` (user,item,timestamp; header optional) or `*_pairs.tsv`
  (user TAB space-separated items in time order: timestamps are positions)
- titles: `*_titles.csv` (CSV with header item,title) or `*_title_en.csv` (no header,
  `item, title` split at the first comma)
- optional: `tags_to_summary.csv` (video_id, tag -> category), `*likes_and_views.txt`
  (item TAB likes TAB views -> a popularity modality), `features/*.npz|*.npy|*.safetensors`
  (extracted image/video/audio features keyed by item id)

Side files found in another folder than the titles are joined only where that folder's own
titles agree with the titles used (MicroLens-50k and -100k share ids, but not every row
agrees): disagreeing rows are left out and counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from mufasa_cli.artifacts import sha256_file
from mufasa_cli.data.sources.base import (
    BadRows,
    RawDataset,
    RawModality,
    feature_files_in,
    find_one,
    iter_csv,
    iter_split_lines,
    load_feature_files,
    multi_hot,
    parse_float,
    read_text,
    standardised,
)
from mufasa_cli.data.text import normalise_title
from mufasa_cli.errors import DataSchemaError

GENRE = "micro_video"


def _read_pairs(path: Path, bad: BadRows) -> pl.DataFrame:
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    text = read_text(path)
    if path.suffix == ".tsv":
        for line, fields in iter_split_lines(text, "\t"):
            if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
                bad.bad(path, line, "expected 'user<TAB>item item ...'")
                continue
            seq = fields[1].split()
            users.extend([fields[0].strip()] * len(seq))
            items.extend(seq)
            times.extend(float(i) for i in range(len(seq)))
    else:
        for line, fields in iter_csv(text, ",", path):
            if len(fields) != 3:
                bad.bad(path, line, f"expected 3 fields user,item,timestamp, got {len(fields)}")
                continue
            t = parse_float(fields[2])
            if t is None:
                if line == 1:  # header
                    continue
                bad.bad(path, line, f"timestamp {fields[2]!r} is not a number")
                continue
            u, i = fields[0].strip(), fields[1].strip()
            if not u or not i:
                bad.bad(path, line, "empty user or item id")
                continue
            users.append(u)
            items.append(i)
            times.append(t)
    return pl.DataFrame(
        {"raw_user": users, "raw_item": items, "timestamp": times},
        schema={"raw_user": pl.String, "raw_item": pl.String, "timestamp": pl.Float64},
    )


def _read_titles(path: Path, bad: BadRows) -> dict[str, str]:
    text = read_text(path)
    titles: dict[str, str] = {}
    if path.name.endswith("_title_en.csv"):
        rows = (
            (line, line_text.split(",", 1)) for line, line_text in enumerate(text.splitlines(), 1) if line_text.strip()
        )
    else:
        rows = iter_csv(text, ",", path)
    for line, fields in rows:
        if len(fields) < 2 or not fields[0].strip():
            bad.bad(path, line, "expected 'item,title'")
            continue
        item, title = fields[0].strip(), ",".join(fields[1:]).strip()
        if line == 1 and item.lower() in ("item", "item_id", "video_id", "videoid"):
            continue  # header
        titles.setdefault(item, title)
    return titles


def _read_keyed(path: Path, sep: str, n_values: int, bad: BadRows) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    rows = iter_csv(read_text(path), sep, path) if sep == "," else iter_split_lines(read_text(path), sep)
    for line, fields in rows:
        fields = [f.strip() for f in fields]
        if line == 1 and parse_float(fields[0]) is None:
            continue  # header
        if len(fields) != 1 + n_values or not fields[0]:
            bad.bad(path, line, f"expected {1 + n_values} fields, got {len(fields)}")
            continue
        out.setdefault(fields[0], fields[1:])
    return out


def _titles_agree(a: str, b: str) -> bool:
    """True when the shorter title's words mostly occur in the longer one (files may truncate)."""
    ta, tb = normalise_title(a).split(), normalise_title(b).split()
    short, long_ = (ta, tb) if len(ta) <= len(tb) else (tb, ta)
    if not short:
        return False
    return sum(t in set(long_) for t in short) >= 0.5 * len(short)


def load(folders: list[Path], bad: BadRows) -> RawDataset:
    for f in folders:
        if not f.is_dir():
            raise DataSchemaError(f"{f}: not a folder (--source must point at the MicroLens files' folder)")
    pairs = find_one(folders, ["*_pairs.csv", "*_pairs.tsv"], "MicroLens interactions")
    title_path = find_one(folders, ["*_titles.csv", "*_title_en.csv"], "MicroLens titles", required=False)
    tags_path = find_one(folders, ["tags_to_summary.csv"], "categories", required=False)
    likes_path = find_one(folders, ["*likes_and_views.txt"], "likes and views", required=False)
    inputs = {str(p): sha256_file(p) for p in (pairs, title_path, tags_path, likes_path) if p is not None}

    interactions = _read_pairs(pairs, bad)
    titles = _read_titles(title_path, bad) if title_path else {}
    notes: dict[str, object] = {}

    def checked(side: dict[str, list[str]], path: Path, what: str) -> dict[str, list[str]]:
        """Keep side rows only where the side file's folder agrees on the item's title."""
        if title_path is None or path.parent == title_path.parent:
            return side
        other_path = find_one([path.parent], ["*_titles.csv", "*_title_en.csv"], "titles", required=False)
        if other_path is None:
            return side
        other = _read_titles(other_path, BadRows("skip"))
        inputs[str(other_path)] = sha256_file(other_path)
        rejected = {i for i in side if i in titles and i in other and not _titles_agree(titles[i], other[i])}
        notes[f"{what}_rows_rejected_title_mismatch"] = len(rejected)
        return {i: v for i, v in side.items() if i not in rejected}

    modalities: dict[str, RawModality] = {}
    category: dict[str, str] = {}
    if tags_path is not None:
        tags = checked(_read_keyed(tags_path, ",", 1, bad), tags_path, "category")
        category = {i: v[0] for i, v in tags.items() if v[0]}
        ids = sorted(category)
        _, onehot = multi_hot([[category[i]] for i in ids])
        modalities["category"] = RawModality(ids, onehot, str(tags_path))
    if likes_path is not None:
        rows = checked(_read_keyed(likes_path, "\t", 2, bad), likes_path, "popularity")
        ids, values = [], []
        for i, (likes, views) in rows.items():
            lv = (parse_float(likes), parse_float(views))
            if None in lv or min(lv) < 0:
                bad.bad(likes_path, None, f"item {i}: likes/views {likes!r}, {views!r} are not counts")
                continue
            ids.append(i)
            values.append(np.log1p(lv))
        if ids:
            modalities["popularity"] = RawModality(ids, standardised(np.array(values)), str(likes_path))
    feature_paths = [p for f in folders for p in feature_files_in(f / "features")]
    inputs.update({str(p): sha256_file(p) for _, p in feature_paths})
    modalities.update(load_feature_files(feature_paths, bad))

    item_ids = sorted(set(titles) | set(category))
    items = pl.DataFrame(
        {
            "raw_item": item_ids,
            "title": [titles.get(i) for i in item_ids],
            "genre": [GENRE] * len(item_ids),
            "category": [category.get(i) for i in item_ids],
        },
        schema={"raw_item": pl.String, "title": pl.String, "genre": pl.String, "category": pl.String},
    )
    return RawDataset(
        interactions,
        items,
        [GENRE],
        modalities,
        inputs=inputs,
        notes=notes,
        has_timestamps=pairs.suffix != ".tsv",
        interactions_file=str(pairs),
    )
