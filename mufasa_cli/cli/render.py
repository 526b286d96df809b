"""Everything the CLI shows: rich tables, progress bars, error lines. The core never prints."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

out = Console()
err = Console(stderr=True)


def error_line(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


def warning_line(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress() -> Iterator[Callable[[str, int, int], None]]:
    """Yield on_progress(task, done, total): one bar per task name, on stderr, started on the
    first report (so a stage that fails early prints nothing but its error)."""
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    tasks: dict[str, int] = {}

    def on_progress(name: str, done: int, total: int) -> None:
        if not tasks:
            bars.start()
        if name not in tasks:
            tasks[name] = bars.add_task(name, total=total)
        bars.update(tasks[name], completed=done, total=total)

    try:
        yield on_progress
    finally:
        if tasks:
            bars.stop()


def _int(n: object) -> str:
    return f"{n:,}" if isinstance(n, int) else str(n)


def prepare_summary(dataset: str, counts: Mapping, manifest: Mapping) -> None:
    """Table 1 of the paper, modality coverage per genre, splits and what was dropped."""
    t1 = Table(title="Table 1: dataset statistics", title_justify="left")
    for col in ("Dataset", "User", "Item", "Inter.", "Avg", "Sps"):
        t1.add_column(col, justify="right" if col != "Dataset" else "left")
    t1.add_row(
        dataset,
        _int(counts["users"]),
        _int(counts["items"]),
        _int(counts["interactions"]),
        f"{counts['avg_length']:.2f}",
        f"{100 * counts['sparsity']:.2f}%",
    )
    out.print(t1)

    coverage: Mapping[str, Mapping[str, float]] = counts["modality_coverage"]
    modalities = sorted({m for per in coverage.values() for m in per})
    dims = counts.get("modality_dims", {})
    cov = Table(title="Modality coverage per genre (share of items with the modality)", title_justify="left")
    cov.add_column("genre")
    cov.add_column("items", justify="right")
    for m in modalities:
        cov.add_column(m, justify="right")
    for genre, per in coverage.items():
        cov.add_row(
            genre, _int(counts["items_by_genre"][genre]), *[f"{100 * per.get(m, 0.0):.0f}%" for m in modalities]
        )
    cov.add_row("[dim]dimension[/]", "", *[f"[dim]{dims.get(m, '?')}[/]" for m in modalities])
    out.print(cov)

    sp = Table(title="Splits and data quality", title_justify="left", show_header=False)
    sp.add_column("what")
    sp.add_column("value", justify="right")
    roles = counts["users_by_role"]
    splits = counts["interactions_by_split"]
    sp.add_row("users: train / zero-shot", f"{_int(roles['train'])} / {_int(roles['zero_shot'])}")
    sp.add_row(
        "interactions: train / valid / test / zero-shot history",
        " / ".join(_int(splits[s]) for s in ("train", "valid", "test", "history")),
    )
    sp.add_row(
        "title anchor",
        f"{manifest['title_encoder']} ({manifest['title_dim']}d)"
        if manifest["title_dim"]
        else "none: MFL title losses off",
    )
    sp.add_row(
        "titles present / title_ok",
        f"{100 * counts['titles_present_share']:.1f}% / {100 * counts['title_ok_share']:.1f}%",
    )
    sp.add_row(
        "cold items (no train interaction) / planted",
        f"{_int(counts['cold_items'])} / {_int(counts['cold_items_planted'])}",
    )
    for key, label in (
        ("duplicates_dropped", "exact duplicate rows dropped"),
        ("short_users_dropped", "users below --min-seq-len dropped"),
        ("truncated_interactions", "interactions cut by --max-seq-len"),
        ("users_dropped_by_cold_items", "users left without train items by --cold-items"),
        ("bad_rows_skipped", "bad rows skipped"),
        ("items_without_item_rows", "items with no title/item row"),
        ("item_rows_without_interactions", "item rows with no interaction (not in catalogue)"),
    ):
        if counts.get(key):
            sp.add_row(label, _int(counts[key]))
    for key, value in counts.items():
        if key.endswith("_rejected_title_mismatch") and value:
            sp.add_row(
                f"{key.removesuffix('_rows_rejected_title_mismatch')} rows not joined: titles disagree across files",
                _int(value),
            )
    sp.add_row("wall time", f"{manifest['wall_time_s']:.1f} s")
    out.print(sp)
