"""Run-directory artifacts: manifests, atomic writes, validation on read, staleness.

A run directory holds one folder per stage (data/, fuse/, align/, ...). Every stage folder
has a manifest.json recording what produced it and a sha256 for each file in it. Stages are
written folder-at-a-time: everything goes into a hidden temp folder beside the final one,
files are fsynced, and the temp folder is renamed into place only when the stage succeeded,
so an interrupted or failed stage never leaves a half-written folder and never touches the
previous good one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from mufasa_cli import __version__
from mufasa_cli.errors import ArtifactError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_HASH_CHUNK = 1 << 20


# ---------------------------------------------------------------- small helpers


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory (directory fsync makes renames inside it durable)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file in the same folder + fsync + rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        _fsync_path(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------- one writer per run folder

LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: Path, command: str, *, create: bool = False) -> Iterator[None]:
    """Hold an exclusive OS lock on RUN/.lock for the whole of a command that writes into the
    run folder; a second writer fails at once with a message naming the holder's pid and
    command. The lock is released by the OS when the process ends, however it ends (kill -9
    included), so it never goes stale. `create` makes the folder (prepare); otherwise a
    missing folder is not locked (the stage reports what is missing); a folder made here is
    removed again if the command left nothing else in it. Under torchrun only
    rank 0 locks; the other ranks write nothing. Where the OS has no flock (Windows), no lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    if os.environ.get("RANK", "0") != "0" or (not run_dir.is_dir() and not create):
        yield
        return
    made = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "another process"
            raise ArtifactError(
                f"{run_dir}: in use by {holder}; wait for it to finish (one command writes a run folder at a time)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} (mufasa {command})".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        if made and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:  # a failed first command
            (run_dir / LOCK_FILE).unlink()
            run_dir.rmdir()
        os.close(fd)  # closing the descriptor releases the lock


# ---------------------------------------------------------------- folder-level atomic stage writes


def check_writable(stage_dir: Path, force: bool) -> None:
    """Refuse to replace an existing stage folder unless forced (checked before any work)."""
    if stage_dir.exists() and not force:
        raise ArtifactError(f"{stage_dir} already exists; pass --force to replace it")
    if stage_dir.exists() and not stage_dir.is_dir():
        raise ArtifactError(f"{stage_dir} exists and is not a folder")


def clean_leftovers(stage_dir: Path) -> list[Path]:
    """Remove the hidden .NAME.tmp-* / .NAME.old-* folders a killed stage_writer left beside
    `stage_dir` (called by the next writer of that stage, which holds the run lock, so no
    other process is filling them). A kill between the two final renames leaves no stage_dir
    and the previous version under .old-*: that version is put back first. Returns what was
    removed."""
    parent, name = stage_dir.parent, stage_dir.name
    if not parent.is_dir():
        return []
    olds = sorted(parent.glob(f".{name}.old-*"))
    if not stage_dir.exists() and len(olds) == 1 and (olds[0] / MANIFEST).is_file():
        os.rename(olds[0], stage_dir)
        olds = []
    removed = [p for p in [*parent.glob(f".{name}.tmp-*"), *olds] if p.is_dir()]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


@contextlib.contextmanager
def stage_writer(stage_dir: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temp folder to fill; on success it replaces `stage_dir` in one rename.

    On any exception the temp folder is removed and an existing `stage_dir` is untouched.
    Leftovers of a stage killed before it could clean up are dealt with first (see
    clean_leftovers).
    """
    clean_leftovers(stage_dir)
    check_writable(stage_dir, force)
    stage_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{stage_dir.name}.tmp-", dir=stage_dir.parent))
    try:
        yield tmp
        mask = _umask()  # temp files and folders are private; the stage gets normal permissions
        for f in [tmp, *tmp.rglob("*")]:
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)
            if f.is_file():
                _fsync_path(f)
        _fsync_path(tmp)
        if stage_dir.exists():
            # Two renames: the old folder moves aside first, so a crash between them leaves
            # the complete new folder under its temp name and the old one under .old-*.
            old = Path(tempfile.mkdtemp(prefix=f".{stage_dir.name}.old-", dir=stage_dir.parent))
            old.rmdir()
            os.rename(stage_dir, old)
            os.rename(tmp, stage_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, stage_dir)
        _fsync_path(stage_dir.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# ---------------------------------------------------------------- writing artifacts


def save_tensors(path: Path, tensors: Mapping[str, np.ndarray], metadata: dict | None = None) -> None:
    """safetensors file; metadata goes under one key as sorted JSON so that the bytes are
    reproducible (safetensors writes its metadata map in no fixed order)."""
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    meta = {"mufasa": json.dumps(metadata, sort_keys=True)} if metadata else None
    save_file(arrays, str(path), metadata=meta)


def tensor_metadata(path: Path) -> dict:
    """The metadata dict given to save_tensors."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        meta = f.metadata() or {}
    return json.loads(meta["mufasa"]) if "mufasa" in meta else {}


def save_table(path: Path, df: pl.DataFrame) -> None:
    df.write_parquet(path, compression="zstd", statistics=False)


def _describe_outputs(folder: Path) -> dict[str, dict]:
    outputs: dict[str, dict] = {}
    for f in sorted(folder.rglob("*")):
        if not f.is_file() or f.name == MANIFEST:
            continue
        rel = f.relative_to(folder).as_posix()
        entry: dict[str, Any] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        if f.suffix == ".safetensors":
            entry["tensors"] = {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in load_file(f).items()}
        outputs[rel] = entry
    return outputs


def write_manifest(
    folder: Path,
    *,
    stage: str,
    config: Mapping[str, Any],
    seed: int | None,
    inputs: Mapping[str, Any],
    counts: Mapping[str, Any],
    wall_time_s: float,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """Write folder/manifest.json describing every other file in `folder`; return it."""
    manifest = {
        "format_version": FORMAT_VERSION,
        "stage": stage,
        "tool": "mufasa",
        "tool_version": __version__,
        "created_unix": round(time.time(), 3),
        "python": platform.python_version(),
        "config": dict(config),
        "seed": seed,
        "inputs": dict(inputs),
        "outputs": _describe_outputs(folder),
        "counts": dict(counts),
        "wall_time_s": round(wall_time_s, 3),
        **(dict(extra) if extra else {}),
    }
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest


# ---------------------------------------------------------------- reading and validating


def read_manifest(stage_dir: Path) -> dict:
    path = stage_dir / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (run the stage that writes {stage_dir.name}/ first)")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{path}: not a manifest (a JSON object expected, got {type(manifest).__name__})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format_version {manifest.get('format_version')!r}, this mufasa reads {FORMAT_VERSION}"
        )
    _check_manifest_shape(path, manifest)
    return manifest


def _check_manifest_shape(path: Path, manifest: dict) -> None:
    """The parts of a manifest that later stages read: a valid-JSON file of another shape is
    an error naming the file and the key, not a crash."""
    for key in ("outputs", "inputs", "config", "counts"):
        if not isinstance(manifest.get(key, {}), dict):
            raise ArtifactError(f"{path}: {key!r} must be a JSON object")
    for rel, entry in manifest.get("outputs", {}).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            raise ArtifactError(f"{path}: output {rel!r} has no sha256")
    for name, rec in manifest.get("inputs", {}).items():
        if isinstance(rec, dict) and "manifest_sha256" in rec and not isinstance(rec.get("path"), str):
            raise ArtifactError(f"{path}: input {name!r} has no path")


def verify_stage(stage_dir: Path, *, check_sha: bool = True) -> dict:
    """Check every file the manifest lists exists (and matches its sha256); return the manifest."""
    manifest = read_manifest(stage_dir)
    for rel, entry in manifest.get("outputs", {}).items():
        path = stage_dir / rel
        if not path.is_file():
            raise ArtifactError(f"{path}: missing (listed in {stage_dir / MANIFEST})")
        if check_sha and sha256_file(path) != entry["sha256"]:
            raise ArtifactError(f"{path}: sha256 mismatch, the file changed after it was written")
    return manifest


def manifest_sha(stage_dir: Path) -> str:
    path = stage_dir / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (run the stage that writes {stage_dir.name}/ first)")
    return sha256_file(path)


def input_record(stage_dir: Path) -> dict:
    """What a downstream manifest stores about one upstream stage, for the staleness check."""
    return {"path": stage_dir.name, "manifest_sha256": manifest_sha(stage_dir)}


def check_not_stale(stage_dir: Path, run_dir: Path | None = None) -> None:
    """Raise if an upstream stage recorded in stage_dir's manifest was rebuilt since it ran.
    Upstream paths are relative to run_dir (default: stage_dir's parent)."""
    manifest = read_manifest(stage_dir)
    for name, rec in manifest.get("inputs", {}).items():
        if not isinstance(rec, dict) or "manifest_sha256" not in rec:
            continue
        upstream = (run_dir or stage_dir.parent) / rec["path"]
        if manifest_sha(upstream) != rec["manifest_sha256"]:
            raise ArtifactError(
                f"{stage_dir} is stale: {upstream} ({name}) was rebuilt after it; "
                f"re-run the stage that writes {stage_dir.name}/ or pass --force"
            )


TensorSpec = tuple[str, tuple[int | str | None, ...]]  # (dtype, shape); str dims bind by name


def load_tensors(
    path: Path, expect: Mapping[str, TensorSpec], dims: dict[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Load a safetensors file and check the expected tensors' dtype and shape.

    Shape entries: an int must match, a str names a dimension that must agree across every
    tensor checked with the same `dims` dict, None matches anything.
    """
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{path}: unreadable safetensors file ({e})") from None
    check_tensors(path, tensors, expect, dims)
    return tensors


def check_tensors(
    path: Path, tensors: Mapping[str, np.ndarray], expect: Mapping[str, TensorSpec], dims: dict[str, int] | None = None
) -> None:
    """The dtype/shape check of load_tensors, for tensors already loaded from `path`."""
    dims = {} if dims is None else dims
    for name, (dtype, shape) in expect.items():
        if name not in tensors:
            raise ArtifactError(f"{path}: tensor {name!r} missing")
        t = tensors[name]
        if str(t.dtype) != dtype:
            raise ArtifactError(f"{path}: tensor {name!r} has dtype {t.dtype}, expected {dtype}")
        if len(t.shape) != len(shape):
            raise ArtifactError(f"{path}: tensor {name!r} has shape {list(t.shape)}, expected rank {len(shape)}")
        for got, want in zip(t.shape, shape, strict=True):
            if want is None:
                continue
            if isinstance(want, str):
                want = dims.setdefault(want, got)
            if got != want:
                raise ArtifactError(
                    f"{path}: tensor {name!r} has shape {list(t.shape)}, expected {list(shape)} with {dims}"
                )


def load_table(path: Path, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """Read a parquet table and check that the contract's columns exist with their dtypes."""
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    try:
        df = pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as e:
        raise ArtifactError(f"{path}: unreadable parquet file ({e})") from None
    for col, dtype in schema.items():
        if col not in df.columns:
            raise ArtifactError(f"{path}: column {col!r} missing")
        if df.schema[col] != dtype:
            raise ArtifactError(f"{path}: column {col!r} has dtype {df.schema[col]}, expected {dtype}")
    return df
