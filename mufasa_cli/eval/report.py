"""`mufasa report`: the tables and plots of a run's finished evals and ablations, rendered again
from their saved metrics alone (RUN/eval/*/metrics.json, RUN/ablate/tables-*.json): nothing is
trained or scored. The table files are byte-identical to the ones eval and ablate wrote (the
same functions, eval/tables.py, make both).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from mufasa_cli import artifacts
from mufasa_cli.errors import ArtifactError
from mufasa_cli.eval.tables import (
    TableData,
    ablation_files,
    ablation_tables,
    eval_files,
    eval_table,
    table1_files,
)


@dataclass
class Section:
    """One finished eval or ablate: where it came from, its tables, the files it renders to."""

    name: str  # eval-loo, eval-loo-keep-seen, ablate-zero-shot
    source: Path
    tables: list[TableData]
    files: dict[str, str]  # file name -> text
    result: dict | None = None  # an eval's metrics.json (plots are drawn from it)
    written: list[Path] = field(default_factory=list)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: unreadable ({type(e).__name__}); re-run the command that wrote it") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: a JSON object expected")
    return data


def collect(run_dir: Path) -> list[Section]:
    """Table 1 (from data/manifest.json), every finished eval (its folder verified against its
    manifest) and ablate of the run."""
    sections = []
    if (run_dir / "data" / artifacts.MANIFEST).is_file():
        manifest = artifacts.read_manifest(run_dir / "data")
        try:
            files = table1_files(manifest["config"], manifest["counts"])
        except (KeyError, TypeError) as e:
            raise ArtifactError(f"{run_dir / 'data' / artifacts.MANIFEST}: no dataset counts ({e})") from None
        sections.append(Section("data", run_dir / "data" / artifacts.MANIFEST, [], files))
    for folder in sorted(p for p in (run_dir / "eval").glob("*") if p.is_dir() and not p.name.startswith(".")):
        artifacts.verify_stage(folder)
        result = _read_json(folder / "metrics.json")
        try:
            tables, files = [eval_table(result)], eval_files(result)
        except (KeyError, TypeError, IndexError) as e:
            raise ArtifactError(f"{folder / 'metrics.json'}: not an eval result ({type(e).__name__}: {e})") from None
        sections.append(Section(f"eval-{folder.name}", folder / "metrics.json", tables, files, result))
    for path in sorted((run_dir / "ablate").glob("tables-*.json")):
        record = _read_json(path)
        try:
            tables = ablation_tables(record)
            files = {f"tables.{ext}": text for ext, text in ablation_files(record).items()}
        except (KeyError, TypeError, IndexError) as e:
            raise ArtifactError(f"{path}: not an ablate record ({type(e).__name__}: {e})") from None
        sections.append(Section(f"ablate-{path.stem.removeprefix('tables-')}", path, tables, files))
    if not [s for s in sections if s.name != "data"]:
        raise ArtifactError(f"{run_dir}: no finished eval or ablate to report (run mufasa eval first)")
    return sections


def write_report(run_dir: Path, out_dir: Path, plots: bool) -> list[Section]:
    """Write every section's table files (and, with `plots`, each eval's curves.png) into
    out_dir/<section>/, each file atomically; returns the sections with what was written."""
    sections = collect(run_dir)
    for s in sections:
        folder = out_dir / s.name
        for name, text in s.files.items():
            artifacts.atomic_write_bytes(folder / name, text.encode())
            s.written.append(folder / name)
        if plots and s.result is not None:
            from mufasa_cli.eval.plot import plot_curves

            s.written.append(plot_curves(s.result, folder / "curves.png"))
    return sections
