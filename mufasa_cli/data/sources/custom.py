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
      text: {path: text.npy, rows: items}   # rows in the items file's order: no ids needed

A `category` column holds `|`-separated lists (`drama|crime`); it becomes a multi-hot
`category` modality, as the movielens and microlens sources make one.

--source is the YAML file or a folder holding schema.yaml.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import yaml

from mufasa_cli import yaml_strict
from mufasa_cli.artifacts import sha256_file
from mufasa_cli.data.sources.base import (
    BadRows,
    RawDataset,
    load_feature_files,
    multi_hot_modality,
    read_header_table,
    read_interactions,
    read_text,
    require_file,
)
from mufasa_cli.errors import DataSchemaError

SECTIONS = {
    "interactions": ({"path", "user", "item"}, {"timestamp"}),
    "items": ({"path", "item"}, {"title", "genre", "category"}),
}
DEFAULT_GENRE = "item"


def _schema(source: Path) -> tuple[Path, dict]:
    """The schema, checked: known sections and keys, every value a string (a column name or a
    path; a number is read as its text), no key twice."""
    path = source / "schema.yaml" if source.is_dir() else source
    require_file(path, "custom dataset schema")
    try:
        spec = yaml_strict.load(read_text(path))
    except yaml.YAMLError as e:
        raise DataSchemaError(f"{path}: not valid YAML ({yaml_strict.describe(e)})") from None
    if not isinstance(spec, dict):
        raise DataSchemaError(f"{path}: expected a mapping with 'interactions' (and optional 'items', 'features')")
    unknown = set(spec) - {"interactions", "items", "features"}
    if unknown:
        raise DataSchemaError(f"{path}: unknown keys {sorted(map(str, unknown))}")
    if "interactions" not in spec:
        raise DataSchemaError(f"{path}: 'interactions' section missing")
    for section, (required, optional) in SECTIONS.items():
        if section not in spec:
            continue
        body = spec[section]
        if not isinstance(body, dict):
            raise DataSchemaError(f"{path}: '{section}' must be a mapping of keys {sorted(required | optional)}")
        missing, extra = required - set(body), set(body) - required - optional
        if missing:
            raise DataSchemaError(f"{path}: '{section}' needs keys {sorted(missing)}")
        if extra:
            raise DataSchemaError(f"{path}: unknown keys in '{section}': {sorted(map(str, extra))}")
        spec[section] = {k: _text(path, f"{section}.{k}", v) for k, v in body.items()}
    features = spec.get("features")
    if "features" in spec and not isinstance(features, dict):
        raise DataSchemaError(f"{path}: 'features' must map modality names to files")
    if features:
        spec["features"] = {_text(path, "features", k): _feature(path, str(k), v, spec) for k, v in features.items()}
    return path, spec


def _feature(path: Path, name: str, value: object, spec: dict) -> dict[str, str]:
    """A features entry: a file path, or {path: FILE, rows: items | ids}."""
    if not isinstance(value, dict):
        return {"path": _text(path, f"features.{name}", value), "rows": "ids"}
    extra = set(value) - {"path", "rows"}
    if extra or "path" not in value:
        raise DataSchemaError(f"{path}: features.{name} takes keys path and rows (got {sorted(map(str, value))})")
    rows = _text(path, f"features.{name}.rows", value.get("rows", "ids"))
    if rows not in ("ids", "items"):
        raise DataSchemaError(f"{path}: features.{name}.rows {rows!r}: choose items (the items file's order) or ids")
    if rows == "items" and "items" not in spec:
        raise DataSchemaError(f"{path}: features.{name}.rows items needs an 'items' section")
    return {"path": _text(path, f"features.{name}.path", value["path"]), "rows": rows}


def _text(path: Path, where: str, value: object) -> str:
    """A schema value that names a column or a file: a non-empty string (numbers as their text)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float) or str(value).strip() == "":
        shown = "nothing" if value is None else f"a {type(value).__name__}"
        raise DataSchemaError(f"{path}: {where} must be a column name or file path (one string), got {shown}")
    return str(value)


def _inside(schema_path: Path, where: str, rel: str, what: str) -> Path:
    """A file the schema names, which must lie inside the schema's folder (after following
    links and '..'); the file is not opened otherwise, so nothing of it is shown."""
    base = schema_path.parent.resolve()
    target = (base / rel).resolve()
    if not target.is_relative_to(base):
        raise DataSchemaError(
            f"{schema_path}: {where} {rel!r} points outside the schema's folder {base}; "
            "put the file beside schema.yaml (or in a folder below it)"
        )
    return require_file(schema_path.parent / rel, what)


def _delimiter(path: Path) -> str:
    return "\t" if path.suffix in (".tsv", ".txt") else ","


def load(source: Path, bad: BadRows) -> RawDataset:
    schema_path, spec = _schema(source)
    inputs = {str(schema_path): sha256_file(schema_path)}

    it = spec["interactions"]
    ipath = _inside(schema_path, "interactions.path", it["path"], "interactions")
    inputs[str(ipath)] = sha256_file(ipath)
    interactions = read_interactions(ipath, it["user"], it["item"], it.get("timestamp"), bad, _delimiter(ipath))

    genres = [DEFAULT_GENRE]
    item_rows: list[str] | None = None  # the items file's ids in file order (row-aligned features)
    items = pl.DataFrame(schema={"raw_item": pl.String, "title": pl.String, "genre": pl.String, "category": pl.String})
    if "items" in spec:
        st = spec["items"]
        tpath = _inside(schema_path, "items.path", st["path"], "items")
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
        if not bad.counts.get(str(tpath)):  # rows skipped: a row-aligned matrix cannot be matched to them
            item_rows = t[st["item"]]

    feature_paths: list[tuple[str, Path]] = []
    row_ids: dict[Path, list[str]] = {}
    for name, entry in (spec.get("features") or {}).items():
        p = _inside(schema_path, f"features.{name}", entry["path"], f"features for modality {name!r}")
        feature_paths.append((str(name), p))
        inputs[str(p)] = sha256_file(p)
        if entry["rows"] == "items":
            if item_rows is None:
                raise DataSchemaError(f"{p}: rows: items, but rows of {tpath} were skipped as bad; fix them first")
            row_ids[p] = item_rows
    modalities = load_feature_files(feature_paths, bad, row_ids)
    if "items" in spec and "category" in spec["items"] and "category" not in modalities:
        lists = [[c.strip() for c in (v or "").split("|") if c.strip()] for v in items["category"]]
        category = multi_hot_modality(items["raw_item"].to_list(), lists, str(tpath))
        if category is not None:
            modalities["category"] = category
    return RawDataset(
        interactions,
        items,
        genres,
        modalities,
        inputs=inputs,
        has_timestamps="timestamp" in it,
        interactions_file=str(ipath),
    )
