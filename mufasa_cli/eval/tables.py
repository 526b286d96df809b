"""The paper's tables as data, and as Markdown, CSV and LaTeX text.

`eval` and `ablate` write these files into their folders, `mufasa report` writes them again
from the saved metrics alone, and the terminal table (cli/render.py) draws the same rows, so
every format shows the same numbers and marks. The functions are pure: text in, text out.

Marks: in an eval table `*` is MUFASA significantly better (p < 0.05, two-sided paired test per
user) than the strongest baseline, `†` significantly worse. In an ablation table each
variant is tested against the full model: `†` the variant is significantly worse (the part
it removes matters), `*` significantly better.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass, field

from mufasa_cli.eval import DISPLAY_NAMES

ALPHA = 0.05
BETTER, WORSE = "*", "†"


@dataclass
class Row:
    label: str
    values: list[float]
    marks: list[str]  # BETTER, WORSE or "" per column
    params: int | None = None  # learnable parameters (eval tables)


@dataclass
class TableData:
    title: str
    first: str  # the label column's header: Model or Variant
    columns: list[str]
    rows: list[Row]
    footnotes: list[str] = field(default_factory=list)

    def order(self, i: int) -> list[float]:
        """Column i's distinct values, best (highest) first."""
        return sorted({r.values[i] for r in self.rows}, reverse=True)


def table_columns(result: Mapping) -> list[str]:
    """The paper's columns: Table 2 (HR/NDCG @10/@20) for one target, Table 3 (R@k) for several."""
    ks = result["ks"]
    if any(m.startswith("Recall@") for m in result["metrics"]):
        return [f"Recall@{k}" for k in ks] + [f"NDCG@{k}" for k in ks if k in (10, 20)]
    return [f"{m}@{k}" for k in ks if k in (10, 20) for m in ("HR", "NDCG")] or [f"HR@{ks[0]}", f"NDCG@{ks[0]}"]


def emphasize(text: str, value: float, ranks: list[float], bold: str, under: str) -> str:
    """A table cell: `bold` for the column's best value, `under` for its second; ranks are the
    column's distinct values, best first."""
    if value == ranks[0]:
        return bold.format(text)
    if len(ranks) > 1 and value == ranks[1]:
        return under.format(text)
    return text


def model_label(name: str, params: int) -> str:
    shown = DISPLAY_NAMES.get(name, name)
    return f"{shown}-{params / 1e6:.1f}M" if params >= 50_000 else f"{shown}-{params / 1e6:.2f}M"


def mark(p: float | None, ours: float, theirs: float) -> str:
    """BETTER or WORSE when p < ALPHA (by the sign of ours - theirs), else ""."""
    if p is None or p >= ALPHA or ours == theirs:
        return ""
    return BETTER if ours > theirs else WORSE


def _test_name(test: str) -> str:
    return {"ttest": "t-test", "wilcoxon": "Wilcoxon signed-rank test"}.get(test, test)


def model_names(result: Mapping) -> list[str]:
    """The models in table order: MUFASA, then the baselines as --compare named them
    (metrics.json stores its keys sorted, so the order is saved beside them)."""
    return list(result.get("model_order") or result["models"])


def eval_title(result: Mapping) -> str:
    split = ", global-time split" if result.get("split") == "global-time" else ""
    seen = ", seen items kept" if result["keep_seen"] else ", seen items masked"
    return f"{result['protocol']}{split}: {result['cases']:,} users, {result['pairs']:,} targets{seen}"


def eval_table(result: Mapping) -> TableData:
    """Table 2 (loo) or 3 (zero-shot) from an eval result (metrics.json)."""
    cols = table_columns(result)
    strongest = result["strongest_baseline"]
    rows = []
    for name in model_names(result):
        m = result["models"][name]
        marks = [
            mark(result["p_values"].get(c), m["mean"][c], result["models"][strongest]["mean"][c])
            if name == "mufasa" and strongest
            else ""
            for c in cols
        ]
        rows.append(Row(model_label(name, m["params"]), [m["mean"][c] for c in cols], marks, m["params"]))
    notes = []
    if strongest:
        notes.append(
            f"{BETTER} / {WORSE}: MUFASA significantly better / worse (p < {ALPHA:g}, two-sided paired "
            f"{_test_name(result['test'])} over users) than the strongest baseline "
            f"({DISPLAY_NAMES.get(strongest, strongest)}, by {result['main_metric']})."
        )
    for name, why in result["skipped"].items():
        notes.append(f"{DISPLAY_NAMES.get(name, name)} not evaluated: {why}.")
    return TableData(eval_title(result), "Model", cols, rows, notes)


def ablation_table(title: str, saved: Mapping, key: str) -> TableData:
    """Table 5 or 6 from ablate's saved tables (tables-PROTOCOL.json, section `key`): one row
    per variant, each tested against the full model (RUN itself, `saved["full"]`)."""
    cols, full = saved["columns"], saved.get("full")
    p_values = saved.get("p_values", {}).get(key, {})
    rows = []
    for label, means in saved[key].items():
        marks = [mark(p_values.get(label, {}).get(c), means[c], full[c]) if full else "" for c in cols]
        rows.append(Row(label, [means[c] for c in cols], marks))
    notes = []
    if full and p_values:
        notes.append(
            f"{WORSE} / {BETTER}: the variant is significantly worse / better than the full model (p < {ALPHA:g}, "
            f"two-sided paired {_test_name(saved.get('test', 'ttest'))} over users)."
        )
    return TableData(f"{title} ({saved['protocol']})", "Variant", cols, rows, notes)


# ---------------------------------------------------------------- text formats


def to_markdown(t: TableData) -> str:
    lines = [t.title, "", f"| {t.first} | " + " | ".join(t.columns) + " |", "|---|" + "---|" * len(t.columns)]
    orders = [t.order(i) for i in range(len(t.columns))]
    for r in t.rows:
        cells = [
            emphasize(f"{v:.4f}{m}", v, orders[i], "**{}**", "<u>{}</u>")
            for i, (v, m) in enumerate(zip(r.values, r.marks, strict=True))
        ]
        lines.append(f"| {r.label} | " + " | ".join(cells) + " |")
    if t.footnotes:
        lines += [""] + t.footnotes
    return "\n".join(lines) + "\n"


def to_csv(t: TableData) -> str:
    """Numeric columns (6 decimals); each metric's significance mark in its own `<metric> sig` column."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    with_params = any(r.params is not None for r in t.rows)
    w.writerow(
        [t.first.lower(), *(["params"] if with_params else []), *[x for c in t.columns for x in (c, f"{c} sig")]]
    )
    for r in t.rows:
        cells = [x for v, m in zip(r.values, r.marks, strict=True) for x in (f"{v:.6f}", m)]
        w.writerow([r.label, *([r.params] if with_params else []), *cells])
    return buf.getvalue()


def _tex_escape(text: str) -> str:
    out = text
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        out = out.replace(a, b)
    return out.replace(WORSE, r"$^{\dagger}$")


def to_latex(t: TableData) -> str:
    """A booktabs table: best bold, second underlined, marks as superscripts."""
    orders = [t.order(i) for i in range(len(t.columns))]
    sup = {BETTER: r"$^{*}$", WORSE: r"$^{\dagger}$", "": ""}
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\caption{" + _tex_escape(t.title) + "}",
        r"\begin{tabular}{l" + "r" * len(t.columns) + "}",
        r"\toprule",
        f"{t.first} & " + " & ".join(_tex_escape(c) for c in t.columns) + r" \\",
        r"\midrule",
    ]
    for r in t.rows:
        cells = [
            emphasize(f"{v:.4f}", v, orders[i], r"\textbf{{{}}}", r"\underline{{{}}}") + sup[m]
            for i, (v, m) in enumerate(zip(r.values, r.marks, strict=True))
        ]
        lines.append(f"{_tex_escape(r.label)} & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if t.footnotes:
        notes = " ".join(_tex_escape(n).replace(f"{BETTER} / ", r"$^{*}$ / ", 1) for n in t.footnotes)
        lines.append(r"\par\smallskip{\footnotesize " + notes + "}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


RENDER = {"md": to_markdown, "csv": to_csv, "tex": to_latex}


def render_all(tables: list[TableData], fmt: str) -> str:
    """Several tables in one text: blank-line separated (md, tex) or one after another (csv)."""
    return ("\n" if fmt != "csv" else "").join(RENDER[fmt](t) for t in tables)


# ---------------------------------------------------------------- slices


def slices_markdown(result: Mapping) -> str:
    """eval --slices: the paper's columns per slice and model."""
    names = model_names(result)
    cols = table_columns(result)
    seen = "seen items kept" if result["keep_seen"] else "seen items masked"
    lines = [
        f"{result['protocol']} by slice ({seen})",
        "",
        "| Slice | Users | Targets | Model | " + " | ".join(cols) + " |",
        "|---|---|---|---|" + "---|" * len(cols),
    ]
    for r in result["slices"]:
        order = {c: sorted({r["models"][n][c] for n in names}, reverse=True) for c in cols}
        for n in names:
            cells = [
                emphasize(f"{r['models'][n][c]:.4f}", r["models"][n][c], order[c], "**{}**", "<u>{}</u>") for c in cols
            ]
            label = DISPLAY_NAMES.get(n, n)
            lines.append(
                f"| {r['kind']}: {r['name']} | {r['cases']} | {r['pairs']} | {label} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def slices_csv(result: Mapping) -> str:
    """eval --slices: every metric of metrics.json per slice and model."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    metrics = result["metrics"]
    w.writerow(["kind", "slice", "users", "targets", "model", *metrics])
    for r in result["slices"]:
        for n in model_names(result):
            w.writerow(
                [r["kind"], r["name"], r["cases"], r["pairs"], DISPLAY_NAMES.get(n, n)]
                + [f"{r['models'][n][m]:.6f}" for m in metrics]
            )
    return buf.getvalue()


def eval_files(result: Mapping) -> dict[str, str]:
    """The table files of one eval folder: name -> text."""
    t = eval_table(result)
    files = {f"tables.{ext}": RENDER[ext](t) for ext in RENDER}
    if "slices" in result:
        files["slices.md"], files["slices.csv"] = slices_markdown(result), slices_csv(result)
    return files


ABLATION_TITLES = {"table5": "Table 5: ablations", "table6": "Table 6: history length x attention"}


def ablation_tables(saved: Mapping) -> list[TableData]:
    return [ablation_table(title, saved, key) for key, title in ABLATION_TITLES.items() if saved.get(key)]


def ablation_files(saved: Mapping) -> dict[str, str]:
    """The table files of one ablate protocol: extension -> text (Tables 5 and 6 together)."""
    tables = ablation_tables(saved)
    return {ext: render_all(tables, ext) for ext in RENDER}


# ---------------------------------------------------------------- Table 1


def dataset_label(config: Mapping) -> str:
    """Table 1's dataset name from data/manifest.json's config."""
    if config.get("dataset") == "synthetic":
        return f"synthetic ({config.get('preset') or 'default'})"
    return str(config.get("dataset", "?"))


def table1_files(config: Mapping, counts: Mapping) -> dict[str, str]:
    """Table 1 (dataset statistics) from data/manifest.json, as tables.md, .csv and .tex."""
    label = dataset_label(config)
    cells = [
        f"{counts['users']:,}",
        f"{counts['items']:,}",
        f"{counts['interactions']:,}",
        f"{counts['avg_length']:.2f}",
        f"{100 * counts['sparsity']:.2f}%",
    ]
    head = ["Dataset", "User", "Item", "Inter.", "Avg", "Sps"]
    md = "Table 1: dataset statistics\n\n| " + " | ".join(head) + " |\n|---|" + "---|" * 5 + "\n"
    md += f"| {label} | " + " | ".join(cells) + " |\n"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["dataset", "users", "items", "interactions", "avg_length", "sparsity"])
    w.writerow(
        [
            label,
            counts["users"],
            counts["items"],
            counts["interactions"],
            f"{counts['avg_length']:.6f}",
            f"{counts['sparsity']:.6f}",
        ]
    )
    tex = (
        "\n".join(
            [
                r"\begin{table}[t]",
                r"\centering",
                r"\caption{Dataset statistics}",
                r"\begin{tabular}{lrrrrr}",
                r"\toprule",
                " & ".join(head) + r" \\",
                r"\midrule",
                _tex_escape(label) + " & " + " & ".join(c.replace("%", r"\%") for c in cells) + r" \\",
                r"\bottomrule",
                r"\end{tabular}",
                r"\end{table}",
            ]
        )
        + "\n"
    )
    return {"tables.md": md, "tables.csv": buf.getvalue(), "tables.tex": tex}
