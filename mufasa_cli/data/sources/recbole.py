"""`recbole`: RecBole atomic files, any dataset (`NAME.inter`, optional `NAME.item`).

Typed headers (`field:type`, type one of token, token_seq, float, float_seq), tab-separated.
Interactions: `user_id`, `item_id` (or the first token field whose name contains user/item),
`timestamp` when present (else file order). Items: the first field whose name contains
`title` or `name` is the title; a field named class/genre/genres/category/categories/tags is
the category (multi-hot modality `category`); a field whose name contains `year` becomes the
`year` modality; any other float_seq field is a dense modality of its own name, any other
token_seq/token field a multi-hot one, any float field a scalar one.
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
    find_one,
    multi_hot,
    parse_float,
    read_text,
    standardised,
)
from mufasa_cli.data.sources.movielens import movie_modalities
from mufasa_cli.errors import DataSchemaError

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")
CATEGORY_FIELDS = ("class", "genre", "genres", "category", "categories", "tags")


def _read_atomic(path: Path, bad: BadRows) -> tuple[list[tuple[str, str]], list[tuple[int, list[str]]]]:
    """Header as (name, type) pairs and the data rows with their line numbers."""
    lines = read_text(path).splitlines()
    if not lines:
        raise DataSchemaError(f"{path}: empty file")
    header = []
    for raw in lines[0].split("\t"):
        name, _, ftype = raw.strip().partition(":")
        if ftype not in FIELD_TYPES:
            raise DataSchemaError(f"{path}:1: header field {raw!r} needs a type, one of {', '.join(FIELD_TYPES)}")
        header.append((name, ftype))
    rows = []
    for i, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            bad.bad(path, i, f"expected {len(header)} tab-separated fields, got {len(fields)}")
            continue
        rows.append((i, fields))
    return header, rows


def _pick(header: list[tuple[str, str]], exact: str, contains: str, path: Path) -> int:
    names = [n for n, _ in header]
    if exact in names:
        return names.index(exact)
    for j, (n, t) in enumerate(header):
        if contains in n and t == "token":
            return j
    raise DataSchemaError(f"{path}: no {exact} field in header {[f'{n}:{t}' for n, t in header]}")


def load(source: Path, bad: BadRows) -> RawDataset:
    inter_path = source if source.is_file() else find_one([source], ["*.inter"], "RecBole .inter file")
    name = inter_path.stem
    item_path = inter_path.with_suffix(".item")
    header, rows = _read_atomic(inter_path, bad)
    u_col = _pick(header, "user_id", "user", inter_path)
    i_col = _pick(header, "item_id", "item", inter_path)
    names = [n for n, _ in header]
    t_col = names.index("timestamp") if "timestamp" in names else None
    users, items, times = [], [], []
    for line, f in rows:
        u, i = f[u_col].strip(), f[i_col].strip()
        t = parse_float(f[t_col]) if t_col is not None else float(len(times))
        if not u or not i or t is None:
            bad.bad(inter_path, line, f"empty id or unparsable timestamp in {f!r}")
            continue
        users.append(u)
        items.append(i)
        times.append(t)
    interactions = pl.DataFrame(
        {"raw_user": users, "raw_item": items, "timestamp": times},
        schema={"raw_user": pl.String, "raw_item": pl.String, "timestamp": pl.Float64},
    )
    inputs = {str(inter_path): sha256_file(inter_path)}
    item_field = header[i_col][0]
    ids: list[str] = []
    titles: list[str | None] = []
    categories: list[list[str]] = []
    modalities: dict[str, RawModality] = {}
    if item_path.is_file():
        inputs[str(item_path)] = sha256_file(item_path)
        iheader, irows = _read_atomic(item_path, bad)
        inames = [n for n, _ in iheader]
        if item_field not in inames:
            raise DataSchemaError(f"{item_path}: no {item_field} field in header {inames}")
        key = inames.index(item_field)
        title_col = next((j for j, n in enumerate(inames) if ("title" in n or "name" in n) and j != key), None)
        cat_col = next((j for j, n in enumerate(inames) if n in CATEGORY_FIELDS), None)
        ids = [f[key].strip() for _, f in irows]
        if title_col is not None:
            titles = [f[title_col].strip() or None for _, f in irows]
        if cat_col is not None:
            categories = [f[cat_col].split() for _, f in irows]
        years: list[float | None] = [None] * len(ids)
        for j, (fname, ftype) in enumerate(iheader):
            if j in (key, title_col, cat_col):
                continue
            values = [f[j].strip() for _, f in irows]
            if "year" in fname:
                years = [parse_float(v) for v in values]
            elif ftype == "float_seq":
                dense = _dense(fname, ids, values, irows, item_path, bad)
                if dense.ids:
                    modalities[fname] = dense
            elif ftype in ("token_seq", "token"):
                present = [k for k, v in enumerate(values) if v]
                _, hot = multi_hot([values[k].split() if ftype == "token_seq" else [values[k]] for k in present])
                modalities[fname] = RawModality([ids[k] for k in present], hot, str(item_path))
            else:  # float
                present = [k for k, v in enumerate(values) if parse_float(v) is not None]
                x = np.array([[parse_float(values[k])] for k in present])
                modalities[fname] = RawModality([ids[k] for k in present], standardised(x), str(item_path))
        modalities.update(movie_modalities(ids, categories or [[] for _ in ids], years, str(item_path)))
    items = pl.DataFrame(
        {
            "raw_item": ids,
            "title": titles or [None] * len(ids),
            "genre": [name] * len(ids),
            "category": ["|".join(c) or None for c in categories] if categories else [None] * len(ids),
        },
        schema={"raw_item": pl.String, "title": pl.String, "genre": pl.String, "category": pl.String},
    )
    return RawDataset(
        interactions,
        items,
        [name],
        modalities,
        inputs=inputs,
        has_timestamps=t_col is not None,
        interactions_file=str(inter_path),
    )


def _dense(
    fname: str, ids: list[str], values: list[str], rows: list[tuple[int, list[str]]], path: Path, bad: BadRows
) -> RawModality:
    keep_ids, vecs, dim = [], [], None
    for k, v in enumerate(values):
        if not v:
            continue
        vec = [parse_float(x) for x in v.split()]
        if None in vec:
            bad.bad(path, rows[k][0], f"{fname}: non-numeric or NaN/inf value")
            continue
        if dim is None:
            dim = len(vec)
        if len(vec) != dim:
            raise DataSchemaError(f"{path}:{rows[k][0]}: {fname} has {len(vec)} values, earlier rows have {dim}")
        keep_ids.append(ids[k])
        vecs.append(vec)
    return RawModality(keep_ids, np.array(vecs, dtype=np.float32).reshape(len(vecs), dim or 0), str(path))
