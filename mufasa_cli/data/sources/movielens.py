"""`movielens`: GroupLens ml-100k (`u.data`, `u.item`), ml-1m (`ratings.dat`, `movies.dat`) and
the current CSV layout of ml-latest-small, ml-25m, ml-32m (`ratings.csv`, `movies.csv` with
`|`-separated genres, optional `tags.csv`).

The first two are latin-1 text, the CSV layout UTF-8 with a header. Every rating counts as an interaction (no rating threshold), as in
the peers' protocol. Modalities: the title text (as anchor and modality), genres (multi-hot,
`category`) and release year (`year`: z-scored year + decade one-hot); with `tags.csv`, the
users' tags as a multi-hot `tags` modality (the 2,000 most used, lower-cased).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl

from mufasa_cli.artifacts import sha256_file
from mufasa_cli.data.sources.base import (
    BadRows,
    RawDataset,
    RawModality,
    iter_split_lines,
    multi_hot_modality,
    parse_float,
    read_header_table,
    read_interactions,
    read_text,
    year_features,
)
from mufasa_cli.errors import DataSchemaError

GENRE = "movie"
ML100K_GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
_YEAR_IN_TITLE = re.compile(r"\s*\((\d{4})\)\s*$")
_YEAR_IN_DATE = re.compile(r"(\d{4})\s*$")


def _split_title(title: str) -> tuple[str, float | None]:
    m = _YEAR_IN_TITLE.search(title)
    if m is None:
        return title.strip(), None
    return title[: m.start()].strip(), float(m.group(1))


def _ratings(path: Path, sep: str, bad: BadRows) -> pl.DataFrame:
    users, items, times = [], [], []
    for line, fields in iter_split_lines(read_text(path, "latin-1"), sep):
        if len(fields) != 4:
            bad.bad(path, line, f"expected 4 fields user{sep}item{sep}rating{sep}timestamp, got {len(fields)}")
            continue
        t = parse_float(fields[3])
        if t is None or not fields[0].strip() or not fields[1].strip():
            bad.bad(path, line, f"unparsable row {sep.join(fields)!r}")
            continue
        users.append(fields[0].strip())
        items.append(fields[1].strip())
        times.append(t)
    return pl.DataFrame(
        {"raw_user": users, "raw_item": items, "timestamp": times},
        schema={"raw_user": pl.String, "raw_item": pl.String, "timestamp": pl.Float64},
    )


def _movies_100k(path: Path, bad: BadRows) -> tuple[list[str], list[str], list[list[str]], list[float | None]]:
    ids, titles, genres, years = [], [], [], []
    for line, f in iter_split_lines(read_text(path, "latin-1"), "|"):
        if len(f) != 5 + len(ML100K_GENRES) or not f[0].strip():
            bad.bad(path, line, f"expected {5 + len(ML100K_GENRES)} '|'-separated fields, got {len(f)}")
            continue
        title, year = _split_title(f[1])
        m = _YEAR_IN_DATE.search(f[2])
        ids.append(f[0].strip())
        titles.append(title)
        years.append(float(m.group(1)) if m else year)
        genres.append([g for g, flag in zip(ML100K_GENRES, f[5:], strict=True) if flag.strip() == "1"])
    return ids, titles, genres, years


def _movies_1m(path: Path, bad: BadRows) -> tuple[list[str], list[str], list[list[str]], list[float | None]]:
    ids, titles, genres, years = [], [], [], []
    for line, f in iter_split_lines(read_text(path, "latin-1"), "::"):
        if len(f) != 3 or not f[0].strip():
            bad.bad(path, line, f"expected MovieID::Title::Genres, got {len(f)} fields")
            continue
        title, year = _split_title(f[1])
        ids.append(f[0].strip())
        titles.append(title)
        years.append(year)
        genres.append([g for g in f[2].strip().split("|") if g])
    return ids, titles, genres, years


def _movies_csv(path: Path, bad: BadRows) -> tuple[list[str], list[str], list[list[str]], list[float | None]]:
    t = read_header_table(path, ["movieId", "title"], bad, optional=("genres",))
    ids, titles, genres, years = [], [], [], []
    for k, raw_id in enumerate(t["movieId"]):
        title, year = _split_title(t["title"][k])
        ids.append(raw_id)
        titles.append(title)
        years.append(year)
        listed = t["genres"][k] if "genres" in t else ""
        genres.append([g for g in listed.split("|") if g and g != "(no genres listed)"])
    return ids, titles, genres, years


def _tags_csv(path: Path, bad: BadRows) -> RawModality | None:
    t = read_header_table(path, ["movieId", "tag"], bad)
    per_movie: dict[str, list[str]] = {}
    for movie, tag in zip(t["movieId"], t["tag"], strict=True):
        per_movie.setdefault(movie, []).append(tag.strip().lower())
    ids = sorted(per_movie)
    return multi_hot_modality(ids, [per_movie[i] for i in ids], str(path))


def _load_csv_layout(folder: Path, bad: BadRows) -> RawDataset:
    ratings_path, movies_path, tags_path = folder / "ratings.csv", folder / "movies.csv", folder / "tags.csv"
    if not movies_path.is_file():
        raise DataSchemaError(f"{movies_path}: file not found (movie titles and genres)")
    interactions = read_interactions(ratings_path, "userId", "movieId", "timestamp", bad)
    ids, titles, genres, years = _movies_csv(movies_path, bad)
    modalities = movie_modalities(ids, genres, years, str(movies_path))
    inputs = [ratings_path, movies_path]
    if tags_path.is_file():
        tags = _tags_csv(tags_path, bad)
        if tags is not None:
            modalities["tags"] = tags
        inputs.append(tags_path)
    return RawDataset(
        interactions,
        _items_table(ids, titles, genres),
        [GENRE],
        modalities=modalities,
        inputs={str(p): sha256_file(p) for p in inputs},
        interactions_file=str(ratings_path),
    )


def _items_table(ids: list[str], titles: list[str], genres: list[list[str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "raw_item": ids,
            "title": titles,
            "genre": [GENRE] * len(ids),
            "category": ["|".join(g) or None for g in genres],
        },
        schema={"raw_item": pl.String, "title": pl.String, "genre": pl.String, "category": pl.String},
    )


def load(folder: Path, bad: BadRows) -> RawDataset:
    if (folder / "ratings.csv").is_file():
        return _load_csv_layout(folder, bad)
    if (folder / "u.data").is_file():
        ratings_path, movies_path, sep, reader = folder / "u.data", folder / "u.item", "\t", _movies_100k
    elif (folder / "ratings.dat").is_file():
        ratings_path, movies_path, sep, reader = folder / "ratings.dat", folder / "movies.dat", "::", _movies_1m
    else:
        raise DataSchemaError(
            f"{folder}: none of u.data (ml-100k), ratings.dat (ml-1m) or ratings.csv (ml-latest, ml-25m, ml-32m) found"
        )
    if not movies_path.is_file():
        raise DataSchemaError(f"{movies_path}: file not found (movie titles and genres)")
    interactions = _ratings(ratings_path, sep, bad)
    ids, titles, genres, years = reader(movies_path, bad)
    return RawDataset(
        interactions,
        _items_table(ids, titles, genres),
        [GENRE],
        modalities=movie_modalities(ids, genres, years, str(movies_path)),
        inputs={str(p): sha256_file(p) for p in (ratings_path, movies_path)},
        interactions_file=str(ratings_path),
    )


def movie_modalities(
    ids: list[str], genres: list[list[str]], years: list[float | None], source: str
) -> dict[str, RawModality]:
    """`category` (multi-hot genres) and `year` modalities, shared with the RecBole reader."""
    out: dict[str, RawModality] = {}
    category = multi_hot_modality(ids, genres, source)
    if category is not None:
        out["category"] = category
    with_year = [i for i, y in enumerate(years) if y is not None]
    if with_year:
        out["year"] = RawModality(
            [ids[i] for i in with_year], year_features(np.array([years[i] for i in with_year])), source
        )
    return out
