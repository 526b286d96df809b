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

from mufasa_cli.eval import DISPLAY_NAMES
from mufasa_cli.eval.tables import TableData, emphasize, model_names, render_all, slices_csv, slices_markdown

out = Console()
err = Console(stderr=True)
show_progress = True  # off on the ranks other than 0 under torchrun


def error_line(message: str) -> None:
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


def warning_line(message: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


def notice_line(message: str) -> None:
    err.print(f"[cyan]note:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)


def resume_notices(label: str, summary: Mapping) -> None:
    """Say that a training continued an interrupted run (and at which learning rate)."""
    after = summary.get("resumed_after_epoch")
    if after is None:
        return
    lr = summary.get("lr_override")
    with_lr = f", learning rate {lr['from']:g} -> {lr['to']:g}" if lr else ""
    notice_line(f"{label} resumed from its checkpoint after epoch {after}{with_lr}")


@contextlib.contextmanager
def progress() -> Iterator[Callable[..., None]]:
    """Yield on_progress(task, done, total, text=None, boundary=False): one bar per task, on
    stderr, started on the first report (so a stage that fails early prints nothing but its
    error). `text` replaces the bar's label, for running numbers such as losses. When stderr is
    not a terminal (a log file, a pipe) there are no bars: one line per `boundary` report (a
    training's epoch) or per tenth of the task, with the elapsed time and an estimate of the
    rest."""
    if not err.is_terminal:
        yield _line_progress()
        return
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

    def on_progress(name: str, done: int, total: int, text: str | None = None, boundary: bool = False) -> None:
        if not show_progress:
            return
        if not tasks:
            bars.start()
        if name not in tasks:
            tasks[name] = bars.add_task(name, total=total)
        bars.update(tasks[name], completed=done, total=total, description=text or name)

    try:
        yield on_progress
    finally:
        if tasks:
            bars.stop()


def _line_progress() -> Callable[..., None]:
    """on_progress for a stderr that is not a terminal: plain lines, never more than one per
    tenth of a task unless the caller marks a boundary."""
    import time

    opened = time.monotonic()
    started: dict[str, float] = {}
    shown: dict[str, int] = {}

    def on_progress(name: str, done: int, total: int, text: str | None = None, boundary: bool = False) -> None:
        if not show_progress or total <= 0:
            return
        now = time.monotonic()
        t0 = started.setdefault(name, now if done == 0 else opened)  # first heard of after some work
        tenth = done * 10 // total
        if not boundary and done < total and tenth <= shown.get(name, 0):
            return
        shown[name] = tenth
        elapsed = now - t0
        eta = elapsed / done * (total - done) if done else 0.0
        err.print(
            f"{text or name}: {done:,}/{total:,} ({100 * done / total:.0f}%), {_clock(elapsed)} elapsed, "
            f"about {_clock(eta)} left",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )

    return on_progress


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"


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
    if "global_time_cutoffs" in counts:
        c_valid, c_test = counts["global_time_cutoffs"]
        sp.add_row("split: global time cutoffs (valid / test)", f"{c_valid:g} / {c_test:g}")
        sp.add_row(
            "dropped: interactions after a target / users with nothing before the cutoff",
            f"{_int(counts['interactions_dropped_after_target'])} / "
            f"{_int(counts['users_dropped_no_train_before_cutoff'])}",
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


def training_progress(on_progress: Callable[..., None]) -> Callable:
    """on_step for runtime.loop.fit, drawn as one bar per trainer over all its epochs (the cap:
    early stopping may end it sooner, so the estimate is an upper bound)."""

    def on_step(name: str, epoch: int, epochs: int, step: int, steps: int, losses: Mapping[str, float]) -> None:
        shown = " ".join(f"{k}={v:.3f}" for k, v in losses.items())
        on_progress(
            name, epoch * steps + step, epochs * steps, f"{name} epoch {epoch + 1}/{epochs} {shown}", step == steps
        )

    return on_step


def _f(x: object, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if isinstance(x, float) else ("-" if x is None else str(x))


def fuse_summary(manifest: Mapping) -> None:
    cf, mfl, diag = manifest["cf"], manifest["mfl"], manifest["diagnostics"]
    resume_notices("LightGCN", cf)
    resume_notices("MFL", mfl)
    for label, part, key, flag in (
        ("LightGCN", cf, "fuse.cf.train.epochs", "--cf-epochs"),
        ("the MFL", mfl, "fuse.mfl.train.epochs", "--epochs"),
    ):
        if part.get("improving_at_cap"):
            warning_line(
                f"{label} reached its epoch cap ({part['epochs_run']}) while validation still improved: it may be "
                f"under-trained; raise {key} in the recipe or {flag}"
            )
    src = f" (reused {cf['reused_from']})" if "reused_from" in cf else ""
    out.print(
        f"LightGCN{src}: valid HR@10 {cf['valid_hr@10']:.4f}  NDCG@10 {cf['valid_ndcg@10']:.4f}  "
        f"best epoch {cf['best_epoch']}/{cf['epochs_run']}  items with CF {cf['items_with_cf']:,}",
        highlight=False,
    )
    losses = Table(title="MFL losses (all items, eval mode): start -> end", title_justify="left")
    for col in ("loss", "weight", "start", "end"):
        losses.add_column(col, justify="left" if col == "loss" else "right")
    names = {
        "title": "L_title (eq. 1)",
        "cf": "L_cf (eq. 2)",
        "cons": "L_cons (eq. 3)",
        "fuscl": "L_fus-cl (eq. 4)",
        "total": "L_MFL (eq. 5)",
    }
    for key, label in names.items():
        weight = mfl["weights"].get(key, 1.0 if key == "total" else 0.0)
        start, end = mfl["losses_start"].get(key), mfl["losses_end"].get(key)
        losses.add_row(
            label, _f(weight, 2), _f(start, 4) if start is not None else "off", _f(end, 4) if end is not None else "off"
        )
    out.print(losses)
    d = Table(title="Fusion diagnostics", title_justify="left", show_header=False)
    d.add_column("what")
    d.add_column("value", justify="right")
    if "title_retrieval" in diag:
        tr = diag["title_retrieval"]
        d.add_row("title retrieval z -> t: R@1 / R@10", f"{tr['R@1']:.3f} / {tr['R@10']:.3f}")
        d.add_row("alignment E||z - t||^2 (normalised, lower is closer)", _f(diag["alignment"]))
    if "cos_z_c" in diag:
        d.add_row("mean cos(z, c) over items with CF", _f(diag["cos_z_c"]))
    d.add_row("uniformity log E exp(-2||z_i - z_j||^2) (lower is more uniform)", _f(diag["uniformity"]))
    d.add_row(f"effective rank of z (of {diag['z_dim']})", _f(diag["effective_rank"], 1))
    d.add_row(
        "best epoch / epochs run / early stop",
        f"{mfl['best_epoch']} / {mfl['epochs_run']} / {'yes' if mfl['stopped_early'] else 'no'}",
    )
    out.print(d)
    if "cross_genre_topic_P@10" in diag:
        x = Table(title="Cross-genre same-topic retrieval (synthetic ground truth)", title_justify="left")
        x.add_column("representation")
        x.add_column("P@10", justify="right")
        rows = diag["cross_genre_topic_P@10"]
        best = max(rows.values())
        for name, value in rows.items():
            x.add_row(name, f"[bold]{value:.3f}[/]" if value == best else f"{value:.3f}")
        out.print(x)


def _title(text: str, width: int = 48) -> str:
    text = text or "(no title)"
    return escape(text if len(text) <= width else text[: width - 1] + "…")


def _items_table(title: str, rows: list[Mapping]) -> Table:
    t = Table(title=title, title_justify="left")
    t.add_column("position", justify="right")
    t.add_column("item")
    t.add_column("title")
    t.add_column("weight", justify="right")
    for r in rows:
        t.add_row(str(r["position"]), escape(str(r["item"])), _title(r["title"]), f"{r['weight']:.3f}")
    return t


def explanation(ex: Mapping, max_blocks: int = 10) -> None:
    """`embed --explain USER`: what the SAL attended to for one user."""
    out.print(
        f"user {escape(str(ex['user']))} ({ex['role']}): reads the last {ex['read']:,} of {ex['history_length']:,} "
        f"items; attention {ex['attention']}, objective {ex['objective']}",
        highlight=False,
    )
    if "gates" in ex:
        out.print(
            "gates: " + "  ".join(f"{name} {value:.3f}" for name, value in ex["gates"].items()),
            highlight=False,
        )
    if "recency" in ex:  # the learned slopes of the recency biases, per head (first layer)
        out.print(
            "recency slopes per head (score lost per position or block back): "
            + "  ".join(f"{name} {' '.join(f'{s:.3f}' for s in slopes)}" for name, slopes in ex["recency"].items()),
            highlight=False,
        )
    if not ex["branches"]:
        out.print(f"({ex['attention']} attention has no sparse branches to show)", highlight=False)
    if ex.get("blocks"):
        t = Table(
            title=f"Interest blocks by block-attention weight (top {min(max_blocks, len(ex['blocks']))} "
            f"of {len(ex['blocks'])}; * = selected for item-level attention)",
            title_justify="left",
        )
        for col, justify in (("block", "right"), ("positions", "right"), ("weight", "right"), ("", "left")):
            t.add_column(col, justify=justify)
        t.add_column("items")
        for blk in ex["blocks"][:max_blocks]:
            first, last = blk["positions"]
            titles = "; ".join(_title(x, 28) for x in blk["titles"][:3]) + ("; …" if len(blk["titles"]) > 3 else "")
            t.add_row(
                str(blk["block"]), f"{first}-{last}", f"{blk['weight']:.3f}", "*" if blk["selected"] else "", titles
            )
        out.print(t)
    if ex.get("window"):
        out.print(_items_table("Window branch (short-term interest)", ex["window"]))
    if ex.get("selective"):
        out.print(_items_table("Selective branch: top items of the selected blocks (core interest)", ex["selective"]))
    r = Table(title="Top recommendations (unseen items by u . e)", title_justify="left")
    r.add_column("item")
    r.add_column("title")
    r.add_column("score", justify="right")
    for row in ex["recommendations"]:
        r.add_row(escape(str(row["item"])), _title(row["title"]), f"{row['score']:.3f}")
    out.print(r)


def external_users(report: Mapping) -> None:
    """`embed --users FILE`: what was embedded from the file and what was not."""
    out.print(f"embedded {report['users']:,} users of {report['file']}", highlight=False)
    if report["unknown_item_rows"]:
        examples = ", ".join(map(str, report["unknown_examples"]))
        warning_line(
            f"{report['file']}: {report['unknown_item_rows']:,} rows name {report['unknown_items']:,} items not in "
            f"the catalogue (e.g. {examples}); they were skipped"
        )
    if report["users_without_known_items"]:
        examples = ", ".join(map(str, report["users_without_known_items_examples"]))
        warning_line(
            f"{report['file']}: {report['users_without_known_items']:,} users have no known item and got no "
            f"embedding (e.g. {examples})"
        )


def print_tables(tables: list[TableData], fmt: str) -> None:
    """Tables on stdout: rich tables with their footnotes (table), or the text of the files
    eval, ablate and report write (md, csv, tex)."""
    if fmt != "table":
        out.print(render_all(tables, fmt), end="", markup=False, highlight=False, soft_wrap=True, emoji=False)
        return
    for n, t in enumerate(tables):
        if n:
            out.print()
        table = Table(title=t.title, title_justify="left")
        table.add_column(t.first)
        for c in t.columns:
            table.add_column(c, justify="right")
        orders = [t.order(i) for i in range(len(t.columns))]
        for r in t.rows:
            cells = [
                emphasize(f"{v:.4f}{m}", v, orders[i], "[bold]{}[/]", "[underline]{}[/]")
                for i, (v, m) in enumerate(zip(r.values, r.marks, strict=True))
            ]
            table.add_row(escape(r.label), *cells)
        out.print(table)
        for note in t.footnotes:
            out.print(note, highlight=False, soft_wrap=True, markup=False)


def eval_json(result: Mapping) -> None:
    import json

    out.print_json(json.dumps({k: v for k, v in result.items() if k not in ("per_user", "users")}))


def slice_table(result: Mapping, fmt: str) -> None:
    """eval --slices: the main metric per slice and model (terminal), or every metric per slice
    and model (md: the paper's columns, csv: every metric of metrics.json)."""
    if fmt in ("md", "csv"):
        text = slices_markdown(result) if fmt == "md" else slices_csv(result)
        out.print("\n" + text if fmt == "md" else text, end="", markup=False, highlight=False, soft_wrap=True)
        return
    names = model_names(result)
    labels = [DISPLAY_NAMES.get(n, n) for n in names]
    seen = "seen items kept" if result["keep_seen"] else "seen items masked"
    main = result["main_metric"]
    t = Table(title=f"{result['protocol']} {main} by slice ({seen})", title_justify="left")
    for c in ("Slice", "Users", "Targets", *labels):
        t.add_column(c, justify="left" if c == "Slice" else "right", no_wrap=c == "Slice")
    for r in result["slices"]:
        values = [r["models"][n][main] for n in names]
        order = sorted(set(values), reverse=True)
        t.add_row(
            _slice_label(r),
            f"{r['cases']:,}",
            f"{r['pairs']:,}",
            *[emphasize(f"{v:.4f}", v, order, "[bold]{}[/]", "[underline]{}[/]") for v in values],
        )
    out.print(t)
    out.print("every metric per slice: slices.md / slices.csv beside metrics.json", highlight=False)


def _slice_label(row: Mapping) -> str:
    """A short row label: `len Q1 [4,4]`, `pop head`, `repeat` / `new`."""
    prefix = {"history": "len ", "popularity": "pop "}.get(row["kind"], "")
    return prefix + row["name"].replace(", ", ",")
