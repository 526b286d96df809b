"""What every source returns (RawDataset) and the readers they share.

A source turns files into raw tables keyed by the dataset's own ids; prepare.py does the
rest (dedupe, filters, ids, splits, titles, features) the same way for every source.
Readers report bad input as DataSchemaError naming file and line; under
`--on-bad-rows skip` a malformed row is counted instead.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
from safetensors import SafetensorError
from safetensors.numpy import load_file

from mufasa_cli.errors import DataSchemaError

BadRowPolicy = Literal["fail", "skip"]


@dataclass
class RawModality:
    """Feature rows keyed by raw item id: ids (n,) str, values (n, d) float32, all finite."""

    ids: list[str]
    values: np.ndarray
    source: str  # file (or generator) it came from, for messages


@dataclass
class RawDataset:
    """A source's output, before ids, filters and splits.

    interactions: raw_user str, raw_item str, timestamp f64, in file order.
    items: raw_item str, title str|null, genre str, category str|null (+ source-specific
    extra columns, carried through to items.parquet).
    """

    interactions: pl.DataFrame
    items: pl.DataFrame
    genres: list[str]
    modalities: dict[str, RawModality] = field(default_factory=dict)
    # Title anchor vectors the source already has (synthetic); otherwise the text encoder makes them.
    title_vectors: RawModality | None = None
    # Users the source itself holds out as zero-shot (synthetic); otherwise sampled in prepare.
    zero_shot_users: list[str] | None = None
    # The title text is also fed to the MFL as a modality (a real item whose title is
    # its only text still gets it as a modality as well as the anchor).
    title_as_modality: bool = True
    # Keep item rows that have no interaction in the catalogue (synthetic: every generated item
    # is a candidate); real datasets keep only interacted items, as their published counts do.
    keep_items_without_interactions: bool = False
    # False when the source has only an order (timestamps are positions): no global time split.
    has_timestamps: bool = True
    inputs: dict[str, str] = field(default_factory=dict)  # source file -> sha256
    interactions_file: str = ""  # the file the interactions came from, for messages
    notes: dict[str, object] = field(default_factory=dict)  # counts for the summary/manifest


class BadRows:
    """Applies --on-bad-rows: raise on the first bad row, or count them per file."""

    def __init__(self, policy: BadRowPolicy):
        self.policy = policy
        self.counts: dict[str, int] = {}
        self.first: dict[str, str] = {}

    def bad(self, path: Path | str, line: int | None, reason: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        if self.policy == "fail":
            raise DataSchemaError(f"{where}: {reason} (use --on-bad-rows skip to drop such rows)")
        key = str(path)
        self.counts[key] = self.counts.get(key, 0) + 1
        self.first.setdefault(key, f"{where}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# ---------------------------------------------------------------- files


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise DataSchemaError(f"{path}: file not found ({what})")
    return path


def find_one(folders: list[Path], patterns: list[str], what: str, required: bool = True) -> Path | None:
    """First file matching any glob pattern, searching folders in order."""
    for folder in folders:
        for pattern in patterns:
            hits = sorted(folder.glob(pattern))
            if hits:
                return hits[0]
    if required:
        where = ", ".join(str(f) for f in folders)
        raise DataSchemaError(f"{where}: no file matching {' or '.join(patterns)} ({what})")
    return None


def read_text(path: Path, encoding: str = "utf-8") -> str:
    """Whole file as text; a non-UTF-8 byte is reported with its line number."""
    data = require_file(path, "input").read_bytes()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataSchemaError(
            f"{path}:{line}: not valid {encoding.upper()} text (byte 0x{data[e.start]:02x}); "
            f"re-encode the file as {encoding.upper()}"
        ) from None
    return text.removeprefix("\ufeff")


def iter_split_lines(text: str, sep: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for non-empty lines split on a plain separator (no quoting)."""
    for i, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            yield i, line.split(sep)


def iter_csv(text: str, delimiter: str = ",", path: Path | str = "") -> Iterator[tuple[int, list[str]]]:
    """(first line number, fields) of each CSV record; quoted fields may span lines, and a
    field may be as long as the text (the csv module's default limit is 131,072 characters)."""
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, skipinitialspace=True)
    prev = 0
    try:
        for row in reader:
            start, prev = prev + 1, reader.line_num
            if row and any(f.strip() for f in row):
                yield start, row
    except csv.Error as e:
        raise DataSchemaError(f"{path}:{reader.line_num}: {e}" if path else f"line {reader.line_num}: {e}") from None


def parse_float(value: str) -> float | None:
    try:
        v = float(value)
    except ValueError:
        return None
    return v if np.isfinite(v) else None


# ---------------------------------------------------------------- feature matrices


def _load_feature_file(path: Path, row_ids: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(ids, emb) from .npz (ids, emb), .safetensors (ids, emb) or .npy (+ <stem>.ids.npy); with
    `row_ids` the file's rows are those items in order and only `emb` (or the .npy) is read."""
    keys = ("emb",) if row_ids is not None else ("ids", "emb")
    try:
        if path.suffix in (".npz", ".safetensors"):
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in keys if k in z.files}
            else:
                arrays = {k: v for k, v in load_file(path).items() if k in keys}
            missing = [k for k in keys if k not in arrays]
            if missing:
                kind = "arrays" if path.suffix == ".npz" else "tensors"
                raise DataSchemaError(f"{path}: {kind} {missing} missing (need {' and '.join(map(repr, keys))})")
            emb, ids = arrays["emb"], arrays.get("ids")
        else:
            ids = None
            if row_ids is None:
                ids_path = path.with_name(path.name.removesuffix(".npy") + ".ids.npy")
                if not ids_path.is_file():
                    raise DataSchemaError(f"{path}: needs {ids_path.name} beside it with the item id of each row")
                ids = np.load(ids_path, allow_pickle=False)
            emb = np.load(path, allow_pickle=False)
    except (OSError, ValueError, SafetensorError) as e:
        raise DataSchemaError(f"{path}: unreadable feature file ({e})") from None
    if row_ids is None:
        return ids, emb
    if len(emb) != len(row_ids):
        raise DataSchemaError(
            f"{path}: {len(emb)} feature rows but {len(row_ids)} items (rows: items needs one row per item row, in order)"
        )
    return np.array(row_ids), emb


def load_feature_files(
    named_paths: list[tuple[str, Path]], bad: BadRows, row_ids: dict[Path, list[str]] | None = None
) -> dict[str, RawModality]:
    """Load (modality name, file) pairs; several files of one modality concatenate. A file in
    `row_ids` has no ids of its own: its rows are those items, in order.

    Rows with NaN/inf are bad rows (skip: the item simply lacks that modality).
    """
    parts: dict[str, list[tuple[Path, np.ndarray, np.ndarray]]] = {}
    for modality, path in named_paths:
        ids, emb = _load_feature_file(path, (row_ids or {}).get(path))
        if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.number):
            raise DataSchemaError(f"{path}: features must be a 2-D numeric matrix, got shape {emb.shape} {emb.dtype}")
        if ids.ndim != 1 or len(ids) != len(emb):
            raise DataSchemaError(f"{path}: {len(ids)} ids for {len(emb)} feature rows")
        parts.setdefault(modality, []).append((path, ids, emb))
    out: dict[str, RawModality] = {}
    for name, chunks in parts.items():
        dim = chunks[0][2].shape[1]
        for path, _, emb in chunks[1:]:
            if emb.shape[1] != dim:
                raise DataSchemaError(
                    f"{path}: modality {name!r} has dimension {emb.shape[1]} here but {dim} in {chunks[0][0]}"
                )
        keep_ids: list[str] = []
        keep_rows: list[np.ndarray] = []
        for path, ids, emb in chunks:
            emb = emb.astype(np.float32)
            finite = np.isfinite(emb).all(axis=1)
            for r in np.flatnonzero(~finite):
                bad.bad(path, None, f"row {r} (item {ids[r]}) contains NaN or inf")
            keep_ids.extend(str(i) for i in ids[finite])
            keep_rows.append(emb[finite])
        dup = next((i for i, n in Counter(keep_ids).items() if n > 1), None)
        if dup is not None:
            raise DataSchemaError(f"{chunks[0][0]}: item {dup} has more than one {name!r} feature row")
        out[name] = RawModality(keep_ids, np.concatenate(keep_rows), ", ".join(str(c[0]) for c in chunks))
    return out


FEATURE_PATTERNS = ("*.npz", "*.npy", "*.safetensors")


def feature_files_in(folder: Path) -> list[tuple[str, Path]]:
    """Feature files of a folder, named by modality: the file name up to its first dot."""
    paths = sorted(p for pat in FEATURE_PATTERNS for p in folder.glob(pat) if not p.name.endswith(".ids.npy"))
    return [(p.name.split(".")[0], p) for p in paths]


# ---------------------------------------------------------------- tables with headers


def read_header_table(
    path: Path,
    columns: list[str],
    bad: BadRows,
    delimiter: str = ",",
    optional: tuple[str, ...] = (),
    lines: list[int] | None = None,
) -> dict[str, list[str]]:
    """Named columns of a CSV/TSV with a header (or a parquet file), as strings.

    Missing required columns raise; a row with the wrong number of fields or an empty
    required field is a bad row (named by line number). `lines`, when given, receives the
    line number of each row returned (CSV/TSV; parquet rows have none).
    """
    if path.suffix == ".parquet":
        try:
            df = pl.read_parquet(require_file(path, "table"))
        except pl.exceptions.PolarsError as e:
            raise DataSchemaError(f"{path}: unreadable parquet file ({e})") from None
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataSchemaError(f"{path}: missing columns {missing} (has {_shown(df.columns)})")
        wanted = columns + [c for c in optional if c in df.columns]
        df = df.select([pl.col(c).cast(pl.String) for c in wanted]).with_row_index("_row")
        nulls = df.filter(pl.any_horizontal([pl.col(c).is_null() | (pl.col(c) == "") for c in columns]))
        for r in nulls["_row"].to_list():
            bad.bad(path, None, f"row {r}: empty value in a required column of {columns}")
        df = df.filter(~pl.col("_row").is_in(nulls["_row"].implode()))
        return {c: df[c].to_list() for c in wanted}
    rows = iter_csv(read_text(path), delimiter, path)
    first = next(rows, None)
    if first is None:
        raise DataSchemaError(f"{path}: empty file")
    header = [h.strip() for h in first[1]]
    missing = [c for c in columns if c not in header]
    if missing:
        raise DataSchemaError(f"{path}: missing columns {missing} (header has {_shown(header)})")
    wanted = columns + [c for c in optional if c in header]
    at = [header.index(c) for c in wanted]
    req = set(range(len(columns)))
    out: dict[str, list[str]] = {c: [] for c in wanted}
    for line, fields in rows:
        if len(fields) != len(header):
            bad.bad(path, line, f"expected {len(header)} fields, got {len(fields)}")
            continue
        values = [fields[i].strip() for i in at]
        if any(not values[j] for j in req):
            bad.bad(path, line, f"empty value in a required column of {columns}")
            continue
        for c, v in zip(wanted, values, strict=True):
            out[c].append(v)
        if lines is not None:
            lines.append(line)
    return out


def _shown(names: list[str], most: int = 12, width: int = 40) -> str:
    """Column names for a message: at most `most`, each cut to `width` characters (a file that is
    not a table must not be echoed whole)."""
    cut = [n if len(n) <= width else n[: width - 1] + "…" for n in names[:most]]
    return str(cut)[:-1] + (f", … {len(names) - most} more]" if len(names) > most else "]")


def read_interactions(
    path: Path, user: str, item: str, timestamp: str | None, bad: BadRows, delimiter: str = ","
) -> pl.DataFrame:
    """raw_user, raw_item, timestamp (file order without a timestamp column) from a table with a
    header; rows with an unparsable timestamp are bad rows, named by line."""
    lines: list[int] = []
    cols = [user, item] + ([timestamp] if timestamp else [])
    table = read_header_table(path, cols, bad, delimiter, lines=lines)
    times, ok = timestamps_or_order(table[timestamp] if timestamp else None, len(table[user]), path, bad, lines or None)
    return pl.DataFrame(
        {"raw_user": table[user], "raw_item": table[item], "timestamp": times},
        schema={"raw_user": pl.String, "raw_item": pl.String, "timestamp": pl.Float64},
    ).filter(pl.Series(ok, dtype=pl.Boolean))


def timestamps_or_order(
    values: list[str] | None, n: int, path: Path, bad: BadRows, lines: list[int] | None = None
) -> tuple[list[float], list[bool]]:
    """Parsed timestamps (unparsable ones are bad rows), or file order when there are none."""
    if values is None:
        return [float(i) for i in range(n)], [True] * n
    out, ok = [], []
    for i, v in enumerate(values):
        t = parse_float(v)
        if t is None:
            bad.bad(path, lines[i] if lines else None, f"timestamp {v!r} is not a number")
        out.append(t if t is not None else 0.0)
        ok.append(t is not None)
    return out, ok


# ---------------------------------------------------------------- side-information encoders


def multi_hot(token_lists: list[list[str]], max_vocab: int = 2000) -> tuple[list[str], np.ndarray]:
    """(vocabulary, (n, V) float32): most frequent tokens first, ties by name."""
    freq = Counter(t for tokens in token_lists for t in tokens)
    vocab = [t for t, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:max_vocab]]
    col = {t: j for j, t in enumerate(vocab)}
    out = np.zeros((len(token_lists), len(vocab)), dtype=np.float32)
    for i, tokens in enumerate(token_lists):
        for t in tokens:
            if t in col:
                out[i, col[t]] = 1.0
    return vocab, out


def multi_hot_modality(ids: list[str], token_lists: list[list[str]], source: str) -> RawModality | None:
    """A multi-hot modality (categories, genres, tags) over the items whose list is not empty;
    None when every list is."""
    have = [i for i, tokens in enumerate(token_lists) if tokens]
    if not have:
        return None
    _, hot = multi_hot([token_lists[i] for i in have])
    return RawModality([ids[i] for i in have], hot, source)


def year_features(years: np.ndarray) -> np.ndarray:
    """(n, 1 + decades) float32 for finite years: z-scored year and a one-hot decade."""
    mean, std = years.mean(), max(float(years.std()), 1.0)
    decades = (years // 10).astype(np.int64)
    lo = int(decades.min())
    onehot = np.zeros((len(years), int(decades.max()) - lo + 1), dtype=np.float32)
    onehot[np.arange(len(years)), decades - lo] = 1.0
    return np.concatenate([((years - mean) / std)[:, None].astype(np.float32), onehot], axis=1)


def standardised(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return ((x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-9)).astype(np.float32)
