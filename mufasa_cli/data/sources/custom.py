"""`custom`: interactions and items in parquet/CSV/TSV described by a small YAML schema.

    # schema.yaml (paths relative to this file)
    interactions:
      path: interactions.csv      # .csv, .tsv or .parquet, with a header
      user: user_id
      item: item_id
      timestamp: ts               # optional: file order when absent
    items:                        # optional
      path: items.parquet
      item: item_id
      title: title                # optional
      genre: genre                # optional (one genre for all items when absent)
      category: category          # optional
    features:                     # optional: modality name -> .npz / .npy (+ .ids.npy) / .safetensors
      image: image.npz

--source is the YAML file or a folder holding schema.yaml.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import yaml

from mufasa_cli.artifacts import sha256_file
from mufasa_cli.data.sources.base import (
    BadRows,
    RawDataset,
    load_feature_files,
    read_header_table,
    read_text,
    require_file,
    timestamps_or_order,
)
from mufasa_cli.errors import DataSchemaError

SECTIONS = {
    "interactions": ({"path", "user", "item"}, {"timestamp"}),
    "items": ({"path", "item"}, {"title", "genre", "category"}),
}
DEFAULT_GENRE = "item"


def _schema(source: Path) -> tuple[Path, dict]:
    path = source / "schema.yaml" if source.is_dir() else source
    require_file(path, "custom dataset schema")
    try:
        spec = yaml.safe_load(read_text(path))
    except yaml.YAMLError as e:
        raise DataSchemaError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(spec, dict):
        raise DataSchemaError(f"{path}: expected a mapping with 'interactions' (and optional 'items', 'features')")
    unknown = set(spec) - {"interactions", "items", "features"}
    if unknown:
        raise DataSchemaError(f"{path}: unknown keys {sorted(unknown)}")
    if "interactions" not in spec:
        raise DataSchemaError(f"{path}: 'interactions' section missing")
    for section, (required, optional) in SECTIONS.items():
        body = spec.get(section)
        if body is None:
            continue
        if not isinstance(body, dict):
            raise DataSchemaError(f"{path}: '{section}' must be a mapping")
        missing, extra = required - set(body), set(body) - required - optional
        if missing:
            raise DataSchemaError(f"{path}: '{section}' needs keys {sorted(missing)}")
        if extra:
            raise DataSchemaError(f"{path}: unknown keys in '{section}': {sorted(extra)}")
    if "features" in spec and not isinstance(spec["features"], dict):
        raise DataSchemaError(f"{path}: 'features' must map modality names to files")
    return path, spec


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix in (".tsv", ".txt") else ","


def load(source: Path, bad: BadRows) -> RawDataset:
    schema_path, spec = _schema(source)
    base = schema_path.parent
    inputs = {str(schema_path): sha256_file(schema_path)}

    it = spec["interactions"]
    ipath = require_file(base / it["path"], "interactions")
    inputs[str(ipath)] = sha256_file(ipath)
    cols = [it["user"], it["item"]] + ([it["timestamp"]] if "timestamp" in it else [])
    table = read_header_table(ipath, cols, bad, _delimiter(ipath))
    n = len(table[it["user"]])
    times, ok = timestamps_or_order(table.get(it.get("timestamp", "")), n, ipath, bad)
    interactions = pl.DataFrame(
        {"raw_user": table[it["user"]], "raw_item": table[it["item"]], "timestamp": times},
        schema={"raw_user": pl.String, "raw_item": pl.String, "timestamp": pl.Float64},
    ).filter(pl.Series(ok))

    genres = [DEFAULT_GENRE]
    items = pl.DataFrame(schema={"raw_item": pl.String, "title": pl.String, "genre": pl.String, "category": pl.String})
    if "items" in spec:
        st = spec["items"]
        tpath = require_file(base / st["path"], "items")
        inputs[str(tpath)] = sha256_file(tpath)
        optional = tuple(st[k] for k in ("title", "genre", "category") if k in st)
        t = read_header_table(tpath, [st["item"]], bad, _delimiter(tpath), optional=optional)
        m = len(t[st["item"]])

        def col(key: str, default: str | None) -> list[str | None]:
            return [v or default for v in t[st[key]]] if key in st else [default] * m

        items = pl.DataFrame(
            {
                "raw_item": t[st["item"]],
                "title": col("title", None),
                "genre": col("genre", DEFAULT_GENRE),
                "category": col("category", None),
            },
            schema={"raw_item": pl.String, "title": pl.String, "genre": pl.String, "category": pl.String},
        )
        genres = sorted(set(items["genre"].to_list())) or genres

    feature_paths: list[tuple[str, Path]] = []
    for name, rel in (spec.get("features") or {}).items():
        p = require_file(base / str(rel), f"features for modality {name!r}")
        feature_paths.append((str(name), p))
        inputs[str(p)] = sha256_file(p)
    modalities = load_feature_files(feature_paths, bad)
    return RawDataset(interactions, items, genres, modalities, inputs=inputs, has_timestamps="timestamp" in it)
