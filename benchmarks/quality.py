"""MUFASA against its baselines on one dataset, over several seeds: mean ± std of the test
metrics and a paired significance test, written as a markdown table.

For each seed s, in RUN/seed<s>/ (the data is prepared once, in seed0, and copied, so every
seed ranks the same split):
    mufasa fuse-train --seed s  ->  align-train --seed s  ->  embed  ->
    mufasa eval --protocol loo --compare BASELINES --seed s
Every model is selected on validation alone (each stage early-stops on valid NDCG@10); the test
targets are read once per trained model, by that seed's `eval`. A stage whose folder is already
complete is reused, so an interrupted run picks up where it stopped. A reused stage is not
checked against the recipe: after changing the recipe, pass `--force` (redoes all) or delete
the stages it touches.

The table: mean ± sample std over the seeds of each model's test HR@10, NDCG@10, HR@20 and
NDCG@20, best mean bold, second underlined. Significance: each user's metric is averaged over
the seeds, then MUFASA is compared with the strongest baseline (by mean NDCG@10) by a paired
test over users (t-test, or Wilcoxon with --test wilcoxon); `*` marks MUFASA's cells that are
higher with p < 0.05, and the p-values are printed. The target line checks MUFASA's mean test
NDCG@10 against 1.10 × the best baseline's.

    python benchmarks/quality.py ml-100k --source ../shared/data/ml-100k --jobs 2
    python benchmarks/quality.py microlens --source ../shared/data/microlens-50k
    python benchmarks/quality.py synthetic --preset tiny --seeds 0,1 --recipe R.yaml   # the test's run

Writes RUN/quality.md (the table) and RUN/quality.json (means, stds, per-seed values,
p-values, the training time of every stage and baseline from their manifests), or RUN/quality-keep-seen.* with --keep-seen (a --compare other than the default
adds -vs-BASELINES to the names); prints the table. With
--keep-seen on a finished run only `eval` runs again (the trained models are reused).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mufasa_cli.eval.run import eval_dir

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20")  # one target (loo); several (zero-shot): Recall@k


def columns(result: dict) -> tuple[str, ...]:
    """The table's columns for an eval result: HR@k for one target per user, Recall@k for several."""
    return tuple(c.replace("HR@", "Recall@") for c in COLUMNS) if "Recall@10" in result["metrics"] else COLUMNS


MAIN = "NDCG@10"
TARGET = 1.10  # MUFASA's mean test NDCG@10 against the best baseline's
BASELINES = "sasrec,dssm,youtube,lightgcn,mmgcn"
# dataset -> (prepare subcommand, recipe): as benchmarks/pipeline.sh and recipes/paper.sh
DATASETS = {
    "synthetic": ("synthetic", "synthetic.yaml"),
    "ml-100k": ("recbole", "ml-100k.yaml"),
    "ml-1m": ("movielens", "ml-1m.yaml"),
    "microlens": ("microlens", "microlens.yaml"),
}


class StageFailed(RuntimeError):
    pass


def _mufasa(args: list[str], log: Path, threads: int) -> float:
    """Run one `mufasa` command (its output appended to log); return its wall seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "COLUMNS": "200"}
    started = time.perf_counter()
    with log.open("a") as f:
        f.write(f"$ mufasa {' '.join(args)}\n")
        f.flush()
        code = subprocess.run([sys.executable, "-m", "mufasa_cli", *args], stdout=f, stderr=f, env=env).returncode
    if code:
        tail = log.read_text().splitlines()[-3:]
        raise StageFailed(f"mufasa {args[0]} failed (exit {code}); {log}: " + " | ".join(tail))
    return time.perf_counter() - started


def _done(folder: Path) -> bool:
    return (folder / "manifest.json").is_file()


def run_seed(run: Path, seed: int, opts: argparse.Namespace, threads: int) -> dict[str, float]:
    """fuse-train -> align-train -> embed -> eval for one seed; returns {stage: wall seconds} of
    the stages run now (reused ones are absent)."""
    log = run / "quality.log"
    recipe = ["--recipe", str(opts.recipe)]
    walls = {}
    stages = [
        ("fuse", ["fuse-train", str(run), *recipe, "--seed", str(seed), "--force", *opts.extra_fuse.split()]),
        ("align", ["align-train", str(run), *recipe, "--seed", str(seed), "--force", *opts.extra_align.split()]),
        ("embed", ["embed", str(run), "--force"]),
    ]
    stale = opts.force
    for name, args in stages:
        if stale or not _done(run / name):
            walls[name] = _mufasa(args, log, threads)
            stale = True  # everything downstream is redone too
    for protocol in opts.protocols:
        metrics = eval_dir(run, protocol, opts.keep_seen) / "metrics.json"
        if stale or not metrics.is_file() or not _covers(metrics, opts):
            args = ["eval", str(run), "--protocol", protocol, "--compare", opts.compare, *recipe, "--seed", str(seed)]
            args += ["--test", opts.test, "--format", "json", "--force", *(["--keep-seen"] if opts.keep_seen else [])]
            args += ["--slices"] if opts.slices else []
            args += ["--retrain"] if opts.force and protocol == opts.protocols[0] else []
            walls["eval" if protocol == "loo" else f"eval {protocol}"] = _mufasa(args, log, threads)
    return walls


def _names(compare: str) -> list[str]:
    """The baselines of a comma-separated --compare."""
    return [c.strip() for c in compare.split(",") if c.strip()]


def _covers(metrics: Path, opts: argparse.Namespace) -> bool:
    """Whether an existing eval result is the one asked for (same models and masking)."""
    result = json.loads(metrics.read_text())
    wanted = {"mufasa", *_names(opts.compare)}
    wanted = wanted - set(result["skipped"])  # transductive baselines sit out zero-shot
    return set(result["models"]) == wanted and result["keep_seen"] == opts.keep_seen and result["test"] == opts.test


def stage_walls(run: Path) -> dict[str, float]:
    """Wall seconds of each stage and baseline training, as their manifests recorded them
    (whenever they ran: this call or an earlier one)."""
    from mufasa_cli import artifacts

    folders = [run / n for n in ("data", "fuse", "align", "embed")]
    folders += sorted((run / "baselines").glob("*")) if (run / "baselines").is_dir() else []
    walls = {}
    for folder in folders:
        if _done(folder):
            wall = artifacts.read_manifest(folder).get("wall_time_s")
            if wall is not None:
                walls[folder.name] = round(float(wall), 1)
    return walls


def _row_order(name: str) -> tuple[int, str]:
    """MUFASA first, then the baselines in the order of `mufasa eval`'s tables."""
    from mufasa_cli.eval import DISPLAY_NAMES

    names = list(DISPLAY_NAMES)
    return (names.index(name) if name in names else len(names), name)


def summarize(results: dict[int, dict], test: str) -> dict:
    """Means, stds and per-seed values of every model; the paired test of MUFASA against the
    strongest baseline over users, each user's metric averaged over the seeds."""
    seeds = sorted(results)
    cols = columns(results[seeds[0]])
    models = sorted(results[seeds[0]]["models"], key=_row_order)
    users = results[seeds[0]]["users"]
    for s in seeds[1:]:
        if results[s]["users"] != users or sorted(results[s]["models"], key=_row_order) != models:
            raise ValueError(f"seed {s} evaluated other users or models than seed {seeds[0]}")
    table = {}
    for name in models:
        per_seed = {c: [results[s]["models"][name]["mean"][c] for s in seeds] for c in cols}
        table[name] = {
            "params": results[seeds[0]]["models"][name]["params"],
            "mean": {c: float(np.mean(v)) for c, v in per_seed.items()},
            "std": {c: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for c, v in per_seed.items()},
            "per_seed": per_seed,
        }
    baselines = [n for n in models if n != "mufasa"]
    strongest = max(baselines, key=lambda n: table[n]["mean"][MAIN]) if baselines else None
    p_values = {}
    if strongest:
        from mufasa_cli.eval.run import paired_p

        for c in cols:
            ours = np.mean([results[s]["per_user"]["mufasa"][c] for s in seeds], axis=0)
            theirs = np.mean([results[s]["per_user"][strongest][c] for s in seeds], axis=0)
            p_values[c] = paired_p(ours, theirs, test)
    best = table[strongest]["mean"][MAIN] if strongest else 0.0
    ratio = table["mufasa"]["mean"][MAIN] / best if best > 0 else None  # none without a scoring baseline
    return {
        "seeds": seeds,
        "users": len(users),
        "keep_seen": results[seeds[0]]["keep_seen"],
        "protocol": results[seeds[0]]["protocol"],
        "columns": list(cols),
        "test": test,
        "models": table,
        "strongest_baseline": strongest,
        "p_values": p_values,
        "ratio": ratio,
        "target": TARGET,
        "target_met": ratio is not None and ratio >= TARGET,
    }


def markdown(summary: dict, title: str) -> str:
    from mufasa_cli.eval import DISPLAY_NAMES
    from mufasa_cli.eval.tables import emphasize, model_label

    table = summary["models"]
    cols = summary["columns"]
    order = {c: sorted({round(m["mean"][c], 4) for m in table.values()}, reverse=True) for c in cols}
    strongest = summary["strongest_baseline"]

    def cell(name: str, c: str) -> str:
        m = table[name]
        mean = round(m["mean"][c], 4)
        text = f"{mean:.4f} ± {m['std'][c]:.4f}" if len(summary["seeds"]) > 1 else f"{mean:.4f}"
        if name == "mufasa" and strongest and summary["p_values"][c] < 0.05 and mean > table[strongest]["mean"][c]:
            text += "*"
        return emphasize(text, mean, order[c], "**{}**", "<u>{}</u>")

    seen = "seen items kept" if summary["keep_seen"] else "seen items masked"
    seeds = ", ".join(map(str, summary["seeds"]))
    spread = f"mean ± std over seeds {seeds}" if len(summary["seeds"]) > 1 else f"one seed ({seeds}): no spread"
    lines = [
        f"{title}: test, `{summary['protocol']}`, {summary['users']:,} users, {seen}, {spread}",
        "",
        "| Model | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for name in table:
        lines.append(
            f"| {model_label(name, table[name]['params'])} | " + " | ".join(cell(name, c) for c in cols) + " |"
        )
    if strongest:
        best = DISPLAY_NAMES.get(strongest, strongest)
        ps = ", ".join(f"{c} {summary['p_values'][c]:.2g}" for c in cols)
        lines += [
            "",
            f"Paired {summary['test']} of MUFASA against the strongest baseline ({best}), each user's metric "
            f"averaged over the seeds: p = {ps}. `*`: MUFASA higher with p < 0.05.",
        ]
        if summary["ratio"] is not None:
            verdict = "met" if summary["target_met"] else "missed"
            lines.append(
                f"Target: MUFASA's mean test {MAIN} ≥ {TARGET:.2f} × the best baseline's ({best}): "
                f"{summary['ratio']:.2f}× — {verdict}."
            )
    return "\n".join(lines) + "\n"


def prepare(opts: argparse.Namespace, first: Path) -> None:
    command, _ = DATASETS[opts.dataset]
    args = ["prepare", command, "--out", str(first), "--force"]
    if opts.dataset == "synthetic":
        args += ["--preset", opts.preset]
    else:
        if opts.source is None:
            raise SystemExit(f"benchmarks/quality.py: {opts.dataset} needs --source (the dataset's folder)")
        args += ["--source", str(opts.source)]
    first.parent.mkdir(parents=True, exist_ok=True)
    _mufasa(args, first.parent / "prepare.log", os.cpu_count() or 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--source", type=Path, help="the dataset's folder (all but synthetic)")
    parser.add_argument("--preset", default="default", help="synthetic preset (default: default)")
    parser.add_argument("--out", type=Path, help="run folder (default: runs/quality-DATASET)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated (default: 0,1,2)")
    parser.add_argument("--recipe", type=Path, help="recipe YAML (default: recipes/DATASET.yaml)")
    parser.add_argument("--compare", default=BASELINES, help=f"baselines (default: {BASELINES})")
    parser.add_argument("--keep-seen", action="store_true", help="score seen items too (RecBole's protocol)")
    parser.add_argument(
        "--slices", action="store_true", help="eval --slices too: every slice of every seed in its metrics.json"
    )
    parser.add_argument(
        "--protocols", default="loo", help="comma-separated: loo, zero-shot (synthetic); a table each (default: loo)"
    )
    parser.add_argument("--test", default="ttest", choices=("ttest", "wilcoxon"))
    parser.add_argument("--extra-fuse", default="", help='extra fuse-train flags, e.g. "--epochs 1"')
    parser.add_argument("--extra-align", default="", help='extra align-train flags, e.g. "--objective all"')
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once, cores shared among them")
    parser.add_argument("--threads", type=int, help="torch threads per seed (default: the cores shared among --jobs)")
    parser.add_argument("--force", action="store_true", help="redo every stage, even complete ones")
    parser.add_argument(
        "--results",
        type=Path,
        default=ROOT / "benchmarks" / "results",
        help="folder for the dated copy of the table (default: benchmarks/results)",
    )
    opts = parser.parse_args(argv)
    opts.protocols = [p.strip() for p in opts.protocols.split(",") if p.strip()]
    if not opts.protocols or not set(opts.protocols) <= {"loo", "zero-shot"}:
        parser.error(f"--protocols {','.join(opts.protocols)!r}: choose from loo, zero-shot")
    seeds = [int(s) for s in opts.seeds.split(",") if s.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        parser.error(f"--seeds {opts.seeds!r}: give distinct integers")
    own_recipe = (ROOT / "recipes" / DATASETS[opts.dataset][1]).resolve()
    opts.recipe = (opts.recipe or own_recipe).resolve()
    if not opts.recipe.is_file():
        parser.error(f"--recipe {opts.recipe}: no such file")
    out = opts.out or Path("runs") / f"quality-{opts.dataset}"
    out.mkdir(parents=True, exist_ok=True)
    runs = {s: out / f"seed{s}" for s in seeds}
    first = runs[seeds[0]]
    if opts.force or not _done(first / "data"):
        prepare(opts, first)
    for s in seeds[1:]:  # the same split for every seed
        if opts.force or not _done(runs[s] / "data"):
            shutil.rmtree(runs[s] / "data", ignore_errors=True)
            shutil.copytree(first / "data", runs[s] / "data")
    jobs = max(1, min(opts.jobs, len(seeds)))
    threads = opts.threads or max(1, (os.cpu_count() or 1) // jobs)
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(jobs) as pool:
            walls = dict(zip(seeds, pool.map(lambda s: run_seed(runs[s], s, opts, threads), seeds), strict=True))
    except StageFailed as e:
        print(f"benchmarks/quality.py: {e}", file=sys.stderr)
        return 1
    summaries = {}
    for protocol in opts.protocols:
        results = {
            s: json.loads((eval_dir(runs[s], protocol, opts.keep_seen) / "metrics.json").read_text()) for s in seeds
        }
        summaries[protocol] = summarize(results, opts.test)
    summary = dict(summaries[opts.protocols[0]])  # the first protocol's at the top level, as before
    if len(opts.protocols) > 1:
        summary["protocols"] = summaries
    summary["train_s"] = {str(s): stage_walls(runs[s]) for s in seeds}
    summary["walls_s"] = {str(s): {k: round(v, 1) for k, v in w.items()} for s, w in walls.items()}
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    summary["command"] = " ".join(["python", "benchmarks/quality.py", *(argv if argv is not None else sys.argv[1:])])
    summary["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    title = f"{opts.dataset} ({summary['date']}, {os.cpu_count()} CPU cores)"
    text = "\n".join(markdown(summaries[p], title) for p in opts.protocols)
    recipe = opts.recipe.relative_to(ROOT) if opts.recipe.is_relative_to(ROOT) else opts.recipe
    text = f"`{summary['command']}`\n\nRecipe: `{recipe}`; seeds {opts.seeds}.\n\n" + text
    stem = "quality-keep-seen" if opts.keep_seen else "quality"
    if _names(opts.compare) != _names(BASELINES):  # a subset: its own file, beside the full one
        stem += "-vs-" + "-".join(_names(opts.compare))
    (out / f"{stem}.md").write_text(text)
    opts.results.mkdir(parents=True, exist_ok=True)
    # another recipe than the dataset's: its own dated file, beside the recipe's
    named = "" if opts.recipe == own_recipe else f"-{opts.recipe.stem}"
    (opts.results / f"{summary['date']}-{stem}-{opts.dataset}{named}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(text, end="")
    print(f"wrote {out / stem}.md and {out / stem}.json ({summary['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
