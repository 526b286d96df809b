"""Tune MUFASA and its baselines with the same budget, on validation alone, and write the
recipe that the pipeline then uses.

Each model gets the same number of configurations (--budget). The search is coordinate-wise
from the base recipe's configuration: the axes of the model's SPACE are visited in order, every
other value of an axis is tried from the best configuration so far (the values of one axis in
parallel, --jobs), and the best is kept when it beats the incumbent's validation NDCG@10. A
configuration that reaches its epoch cap before early stopping ends it (not converged) is
trained again with twice the epochs (up to EXTENSIONS times; the extension is the same configuration, so it does not count against the
budget): a baseline stopped while improving is under-trained, and its score would not count.
Test targets are never read: every score here is the stage's own validation NDCG@10
(leave-one-out valid item, full ranking, train items masked), written in its manifest.

    python benchmarks/tune.py synthetic --preset small --jobs 2
    python benchmarks/tune.py ml-100k --source ../shared/data/ml-100k --models mufasa,sasrec

Writes RUN/tuning/<model>.json (every configuration tried, its validation metrics, epochs, wall
time, and the chosen one), RUN/tuning/recipe.yaml (the base recipe with each model's chosen
configuration) and benchmarks/results/<date>-tune-<dataset>.md (the table and the command).
A trial whose folder already holds a finished stage is read, not trained again, so an
interrupted search resumes where it stopped.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {  # dataset -> (prepare subcommand, base recipe)
    "synthetic": ("synthetic", "synthetic-small.yaml"),
    "ml-100k": ("recbole", "ml-100k.yaml"),
    "ml-1m": ("movielens", "ml-1m.yaml"),
    "microlens": ("microlens", "microlens.yaml"),
}
EXTENSIONS = 2  # times a configuration improving at its cap is retrained with twice the epochs

# Axes in the order they are searched, each with the values tried. Keys are dotted paths in the
# model's recipe section (align for MUFASA, baselines.<name> for a baseline); `{train}` is the
# schedule the configuration trains with (align: train_all under objective all, else train).
SPACE: dict[str, list[tuple[str, list]]] = {
    "mufasa": [
        ("item_ids", [False, True]),
        ("full_softmax", [False, True]),
        ("sal.objective", ["last", "all"]),
        ("sal.layers", [1, 2, 3]),  # stacked layers need objective all: set with them (COUPLED)
        ("{train}.lr", [1e-3, 2e-3, 3e-3]),
        ("sal.dropout", [0.0, 0.2, 0.5]),
        ("sal.d_model", [64, 128]),
        ("finetune_mfl", [False, True]),
        ("id_dropout", [0.0, 0.5]),  # with item ids only: trying it sets them too (COUPLED)
        ("sal.max_len", [50, 200, 1024]),  # the most recent items read (and trained on, objective all)
        ("sal.num_selected", [4, 8]),  # k: blocks attended item by item
        ("sal.positions", [0, 64]),  # learned position rows; later positions share the last
        # SASRec's training: windows of 51 items every 50 (COUPLED: max_len 50, and 20 windows a
        # batch, about the targets of 8 users a batch on ml-100k)
        ("stride", [0, 50]),
        ("learn_tau", [False, True]),  # the softmax temperature trained with the model
        ("mfl_weight", [0.5, 0.2]),  # the MFL's own losses, kept while it is fine-tuned
        ("sal.recency", [False, True]),  # learned recency biases on the window and block scores
    ],
    "sasrec": [
        ("num_layers", [1, 2, 3, 4]),
        ("train.lr", [1e-3, 2e-3, 3e-3]),
        ("dropout", [0.2, 0.35, 0.5]),
        ("d_model", [64, 128]),
        ("max_len", [50, 200]),
        ("train.weight_decay", [0.0, 0.1]),  # a regulariser, as MUFASA's id dropout is
        ("num_heads", [1, 2, 4]),
        ("inner", [128, 256, 512]),
        ("stride", [5, 10]),  # windows every 5 items: every target with >= max_len - 4 items of context
        ("train.lr", [5e-4, 1e-3]),  # below the first lr axis, whose lowest value was chosen
        ("num_layers", [1, 2]),  # two blocks again, at the width and heads chosen since
        ("d_model", [128, 256]),  # wider again, as 64 -> 128 was chosen
        ("dropout", [0.5, 0.3]),  # at the width and heads chosen since
        ("train.weight_decay", [0.0, 0.01]),  # a lighter one than 0.1
        # so that SASRec has as many configurations to try as MUFASA (21)
    ],
    "dssm": [
        ("train.lr", [1e-3, 3e-3]),
        ("d_model", [64, 128]),
        ("hidden", [128, 256]),
        ("tau", [0.05, 0.1, 0.2]),
    ],
}
# A value that only exists together with another: trying it sets that one too.
COUPLED = {
    ("mufasa", "sal.layers"): lambda v: {"sal.objective": "all"} if v > 1 else {},
    ("mufasa", "id_dropout"): lambda v: {"item_ids": True} if v else {},
    ("mufasa", "stride"): lambda v: {"sal.objective": "all", "sal.max_len": v, "train_all.batch_size": 20} if v else {},
}
MAIN = "NDCG@10"


def _section(recipe: dict, model: str) -> dict:
    if model == "mufasa":
        return recipe.setdefault("align", {})
    return recipe.setdefault("baselines", {}).setdefault(model, {})


def _schedule(model: str, config: dict, defaults: dict) -> str:
    if model != "mufasa":
        return "train"
    objective = _get(config, "sal.objective", _get(defaults, "sal.objective", "last"))
    return "train_all" if objective == "all" else "train"


def _get(d: dict, path: str, default=None):
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


def _set(d: dict, path: str, value) -> None:
    parts = path.split(".")
    for part in parts[:-1]:
        d = d.setdefault(part, {})
    d[parts[-1]] = value


def _resolved(model: str, section: dict) -> dict:
    """The section with every searched key filled in from the product's defaults."""
    from dataclasses import asdict

    from mufasa_cli.config import load_recipe

    recipe = load_recipe(None)
    defaults = asdict(recipe.align if model == "mufasa" else getattr(recipe.baselines, model))
    full = copy.deepcopy(section)
    for path, _ in SPACE[model]:
        path = path.replace("{train}", _schedule(model, full, defaults))
        if _get(full, path) is None:
            _set(full, path, _get(defaults, path))
    if model == "mufasa":  # both schedules, so that switching objective keeps the recipe's own
        for sched in ("train", "train_all"):
            for key, value in defaults[sched].items():
                full.setdefault(sched, {}).setdefault(key, value)
    return full


def _key(model: str, section: dict) -> str:
    return json.dumps(section, sort_keys=True)


class Search:
    """One model's coordinate search; trials run as `mufasa` subprocesses in their own folders."""

    def __init__(self, model: str, base: dict, opts: argparse.Namespace, lock: threading.Lock):
        self.model, self.base, self.opts, self.lock = model, base, opts, lock
        self.folder = opts.run / "tuning" / model
        self.trials: list[dict] = []
        self.seen: dict[str, dict] = {}

    def run(self) -> dict:
        best = self.trial(_resolved(self.model, _section(copy.deepcopy(self.base), self.model)))
        for axis, values in SPACE[self.model]:
            if len(self.trials) >= self.opts.budget:
                break
            if axis in self.opts.skip:
                continue
            path = axis.replace("{train}", _schedule(self.model, best["config"], {}))
            candidates = []
            for v in values:
                config = copy.deepcopy(best["config"])
                _set(config, path, v)
                for other, value in COUPLED.get((self.model, axis), lambda v: {})(v).items():
                    _set(config, other, value)
                if _key(self.model, config) not in self.seen and self.valid(config, f"{path}={v}"):
                    candidates.append(config)
            candidates = candidates[: self.opts.budget - len(self.trials)]
            with ThreadPoolExecutor(max(1, self.opts.jobs)) as pool:
                done = list(pool.map(self.trial, candidates))
            for t in done:
                if t["valid"][MAIN] > best["valid"][MAIN]:
                    best = t
        if self.opts.confirm:
            best = self.confirm()
        result = {
            "model": self.model,
            "budget": self.opts.budget,
            "space": [[a, v] for a, v in SPACE[self.model]],
            "trials": self.trials,
            "best": best["trial"],
            "best_config": best["config"],
            "best_valid": best["valid"],
        }
        if self.opts.confirm:
            result.update(confirm_seeds=self.opts.confirm_seeds, best_valid_mean=best["valid_mean"])
        (self.opts.run / "tuning" / f"{self.model}.json").write_text(json.dumps(result, indent=1) + "\n")
        return result

    def confirm(self) -> dict:
        """The --confirm best trials by their search seed's validation, each trained again with
        every --confirm-seeds seed (its own fuse stage for MUFASA, the same data and validation
        targets); the one with the best mean validation over all the seeds is chosen. A single
        seed's score differs from the next seed's by about its standard error (0.008 NDCG@10 on
        ml-100k), more than most steps of a search, so the search's own pick is a near-tie."""
        ranked = sorted(self.trials, key=lambda t: -t["valid"][MAIN])[: self.opts.confirm]
        runs = [(t, seed) for t in ranked for seed in self.opts.confirm_seeds]
        with ThreadPoolExecutor(max(1, self.opts.jobs)) as pool:
            done = list(pool.map(lambda ts: self._confirm_one(*ts), runs))
        for (t, seed), manifest in zip(runs, done, strict=True):
            t.setdefault("seeds", {})[str(seed)] = {
                "valid": manifest["valid"],
                "best_epoch": manifest["best_epoch"],
                "epochs_run": manifest["epochs_run"],
                "wall_s": round(manifest["wall_time_s"], 1),
            }
        for t in ranked:
            scores = [t["valid"], *(t["seeds"][str(s)]["valid"] for s in self.opts.confirm_seeds)]
            t["valid_mean"] = {m: sum(v[m] for v in scores) / len(scores) for m in t["valid"]}
            print(f"{self.model} #{t['trial']}: mean valid {MAIN} over seeds {t['valid_mean'][MAIN]:.4f}", flush=True)
        return max(ranked, key=lambda t: t["valid_mean"][MAIN])

    def _confirm_one(self, trial: dict, seed: int) -> dict:
        sched = _schedule(self.model, trial["config"], {})
        folder = self.folder / str(trial["trial"]) / f"seed{seed}"
        return self._train(folder, trial["config"], _get(trial["config"], f"{sched}.epochs"), seed)

    def valid(self, config: dict, change: str) -> bool:
        """Whether the recipe with this configuration loads (e.g. stacked layers need objective
        all); an invalid one is skipped, and does not count against the budget."""
        from mufasa_cli.config import Recipe, RecipeError, restore

        recipe = copy.deepcopy(self.base)
        _section(recipe, self.model).clear()
        _section(recipe, self.model).update(copy.deepcopy(config))
        try:
            restore(Recipe(), recipe, "recipe")
        except RecipeError as e:
            print(f"{self.model}: skipped {change} ({e})", flush=True)
            return False
        return True

    def trial(self, config: dict) -> dict:
        with self.lock:
            index = len(self.trials)
            record = {"trial": index, "config": config}
            self.trials.append(record)
            self.seen[_key(self.model, config)] = record
        folder = self.folder / str(index)
        sched = _schedule(self.model, config, {})
        epochs = _get(config, f"{sched}.epochs")
        record["extended"] = 0
        while True:  # each cap in its own folder, so that a resumed search finds every one
            manifest = self._train(folder / f"epochs{epochs}" if record["extended"] else folder, config, epochs)
            if not manifest.get("improving_at_cap") or record["extended"] >= EXTENSIONS or epochs is None:
                break
            epochs *= 2
            record["extended"] += 1
        _set(record["config"], f"{sched}.epochs", epochs)  # what it trained with
        with self.lock:  # a later candidate that differs only by the longer cap is this one
            self.seen[_key(self.model, record["config"])] = record
        record.update(
            valid=manifest["valid"],
            best_epoch=manifest["best_epoch"],
            epochs_run=manifest["epochs_run"],
            stopped_early=manifest["stopped_early"],
            improving_at_cap=manifest.get("improving_at_cap", False),
            wall_s=round(manifest["wall_time_s"], 1),
        )
        print(
            f"{self.model} #{index}: valid {MAIN} {record['valid'][MAIN]:.4f}, best epoch "
            f"{record['best_epoch']}/{record['epochs_run']}, {record['wall_s']:.0f} s  {_diff(self.model, config, self.trials[0]['config'])}",
            flush=True,
        )
        return record

    def _train(self, folder: Path, config: dict, epochs, seed: int | None = None) -> dict:
        """Train one configuration into `folder` (data and fuse copied from the seed's
        shared folder) and return its stage manifest."""
        seed = self.opts.seed if seed is None else seed
        shared = self.opts.run if seed == self.opts.seed else seed_folder(self.opts, seed)
        recipe = copy.deepcopy(self.base)
        section = _section(recipe, self.model)
        section.clear()
        section.update(copy.deepcopy(config))
        if epochs is not None:
            _set(section, f"{_schedule(self.model, config, {})}.epochs", epochs)
        stage = folder / ("align" if self.model == "mufasa" else f"baselines/{self.model}")
        path = folder / "trial.yaml"  # not recipe.yaml: that name is the run's own record (align-train writes it)
        text = yaml.safe_dump(recipe, sort_keys=False)
        if (stage / "manifest.json").is_file() and path.is_file() and _same_recipe(path.read_text(), recipe):
            return json.loads((stage / "manifest.json").read_text())  # finished by an earlier call
        folder.mkdir(parents=True, exist_ok=True)
        for part in ("data", "fuse") if self.model == "mufasa" else ("data",):
            if not (folder / part).is_dir():
                shutil.copytree(shared / part, folder / part)
        path.write_text(text)
        seed = str(seed)
        if self.model == "mufasa":
            args = ["-m", "mufasa_cli", "align-train", str(folder), "--recipe", str(path), "--seed", seed, "--force"]
        else:
            args = [str(Path(__file__).resolve()), "--train-baseline", self.model, str(folder), str(path), seed]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.opts.threads), "MKL_NUM_THREADS": str(self.opts.threads)}
        with (folder / "train.log").open("a") as log:
            code = subprocess.run([sys.executable, *args], stdout=log, stderr=log, env=env).returncode
        if code:
            raise SystemExit(f"benchmarks/tune.py: {self.model} trial in {folder} failed; see {folder / 'train.log'}")
        return json.loads((stage / "manifest.json").read_text())


def _same_recipe(text: str, recipe: dict) -> bool:
    """Whether a trial folder's recipe file trains what `recipe` does: the same settings once
    defaults are filled in, so that a key added to the search later (at its default) does not
    retrain the trials an earlier search finished."""
    from mufasa_cli.config import Recipe, RecipeError, restore

    try:
        return restore(Recipe(), yaml.safe_load(text), "recipe") == restore(Recipe(), recipe, "recipe")
    except (RecipeError, yaml.YAMLError):
        return False


def _diff(model: str, config: dict, base: dict) -> str:
    """The searched keys where `config` differs from `base` (the base recipe's configuration)."""
    out = []
    for path in dict.fromkeys(p for p, _ in SPACE[model]):  # an axis searched twice is named once
        path = path.replace("{train}", _schedule(model, config, {}))
        if _get(config, path) != _get(base, path):
            out.append(f"{path}={_get(config, path)}")
    return " ".join(out)


def train_baseline(name: str, run: Path, recipe: Path, seed: int) -> None:
    """Worker: train one baseline into RUN/baselines/<name> (validation only, no test)."""
    import torch

    from mufasa_cli.config import load_recipe
    from mufasa_cli.eval.run import ensure_baselines

    ensure_baselines(run, [name], load_recipe(str(recipe)), seed=seed, device=torch.device("cpu"), retrain=True)


def markdown(results: dict[str, dict], opts: argparse.Namespace, command: str) -> str:
    lines = [
        f"# Tuning on {opts.dataset} ({dt.date.today()}): validation {MAIN}, budget {opts.budget} per model",
        "",
        f"`{command}`",
        "",
        f"Base recipe: `{opts.recipe.relative_to(ROOT) if opts.recipe.is_relative_to(ROOT) else opts.recipe}`; "
        f"seed {opts.seed}; coordinate search from the base configuration (benchmarks/tune.py). "
        "A configuration that reached its epoch cap before early stopping was retrained with twice the epochs "
        f"(up to {EXTENSIONS} times). Test was not read.",
        "",
    ]
    if opts.confirm:
        lines[-1:-1] = [
            f"Then the {opts.confirm} best configurations of each model by seed {opts.seed}'s validation were "
            f"trained again with seeds {', '.join(map(str, opts.confirm_seeds))}, and the best mean over the seeds "
            "was chosen (--confirm).",
        ]
    for model, r in results.items():
        chosen = (
            f"mean valid {MAIN} {r['best_valid_mean'][MAIN]:.4f} over seeds"
            if "best_valid_mean" in r
            else f"valid {MAIN} {r['best_valid'][MAIN]:.4f}"
        )
        lines += [
            f"## {model}: best #{r['best']}, {chosen}",
            "",
            "| # | changed from the base recipe | valid HR@10 | valid NDCG@10 | best epoch / run | cap before early stop | s |",
            "|---|---|---|---|---|---|---|",
        ]
        for t in r["trials"]:
            mark = "**" if t["trial"] == r["best"] else ""
            extended = f" (extended {t['extended']}x)" if t["extended"] else ""
            lines.append(
                f"| {mark}{t['trial']}{mark} | {_diff(model, t['config'], r['trials'][0]['config']) or '(base recipe)'} | {t['valid']['HR@10']:.4f} | "
                f"{mark}{t['valid'][MAIN]:.4f}{mark} | {t['best_epoch']} / {t['epochs_run']} | "
                f"{'yes' if t['improving_at_cap'] else 'no'}{extended} | {t['wall_s']:.0f} |"
            )
        lines.append("")
        confirmed = [t for t in r["trials"] if "valid_mean" in t]
        if confirmed:
            seeds = [str(opts.seed), *map(str, r["confirm_seeds"])]
            lines += [
                f"Confirmation, valid {MAIN} per seed:",
                "",
                f"| # | {' | '.join(f'seed {x}' for x in seeds)} | mean |",
                "|---" * (len(seeds) + 2) + "|",
            ]
            for t in sorted(confirmed, key=lambda t: -t["valid_mean"][MAIN]):
                mark = "**" if t["trial"] == r["best"] else ""
                per_seed = [t["valid"][MAIN], *(t["seeds"][x]["valid"][MAIN] for x in seeds[1:])]
                cells = " | ".join(f"{v:.4f}" for v in per_seed)
                lines.append(f"| {mark}{t['trial']}{mark} | {cells} | {mark}{t['valid_mean'][MAIN]:.4f}{mark} |")
            lines.append("")
    return "\n".join(lines)


def training_seconds(results: dict[str, dict]) -> float:
    """Wall seconds of every training the search ran, confirmation seeds included."""
    return sum(
        t["wall_s"] + sum(x["wall_s"] for x in t.get("seeds", {}).values())
        for r in results.values()
        for t in r["trials"]
    )


def seed_folder(opts: argparse.Namespace, seed: int) -> Path:
    """The shared data/ and fuse/ of a --confirm-seeds seed."""
    return opts.run / "tuning" / f"seed{seed}"


def prepare(opts: argparse.Namespace) -> None:
    """data/ and fuse/ once, shared (copied) by every trial; with --confirm, a fuse/ per
    confirmation seed beside a copy of the same data/ (same split, same validation targets)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    command, _ = DATASETS[opts.dataset]
    if not (opts.run / "data" / "manifest.json").is_file():
        args = ["prepare", command, "--out", str(opts.run), "--force"]
        if opts.dataset == "synthetic":
            args += ["--preset", opts.preset]
        else:
            if opts.source is None:
                raise SystemExit(f"benchmarks/tune.py: {opts.dataset} needs --source (the dataset's folder)")
            args += ["--source", str(opts.source)]
        subprocess.run([sys.executable, "-m", "mufasa_cli", *args], check=True, env=env)
    if "mufasa" in opts.models and not (opts.run / "fuse" / "manifest.json").is_file():
        args = ["fuse-train", str(opts.run), "--recipe", str(opts.recipe), "--seed", str(opts.seed), "--force"]
        subprocess.run([sys.executable, "-m", "mufasa_cli", *args], check=True, env=env)
    for seed in opts.confirm_seeds if opts.confirm else []:
        folder = seed_folder(opts, seed)
        if not (folder / "data").is_dir():
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copytree(opts.run / "data", folder / "data.tmp")
            (folder / "data.tmp").rename(folder / "data")
        if "mufasa" in opts.models and not (folder / "fuse" / "manifest.json").is_file():
            args = ["fuse-train", str(folder), "--recipe", str(opts.recipe), "--seed", str(seed), "--force"]
            subprocess.run([sys.executable, "-m", "mufasa_cli", *args], check=True, env=env)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--train-baseline"]:
        name, run, recipe, seed = argv[1:5]
        train_baseline(name, Path(run), Path(recipe), int(seed))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(DATASETS))
    parser.add_argument("--source", type=Path, help="the dataset's folder (all but synthetic)")
    parser.add_argument("--preset", default="small", help="synthetic preset (default: small, the main job's)")
    parser.add_argument("--run", type=Path, help="run folder (default: runs/tune-DATASET)")
    parser.add_argument("--recipe", type=Path, help="base recipe (default: the dataset's in recipes/)")
    parser.add_argument("--models", default="mufasa,sasrec", help=f"comma-separated, of {', '.join(SPACE)}")
    parser.add_argument("--budget", type=int, default=10, help="configurations per model (default: 10)")
    parser.add_argument("--jobs", type=int, default=2, help="trainings at once in all (default: 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, help="torch threads per training (default: the cores shared among the trainings)"
    )
    parser.add_argument(
        "--skip", default="", help="axes not searched, comma-separated (e.g. max_len where every history is short)"
    )
    parser.add_argument(
        "--confirm",
        type=int,
        default=0,
        help="after the search, train its N best configurations with every --confirm-seeds seed too and "
        "choose by the mean validation over all seeds (default: 0, off); the same N for every model",
    )
    parser.add_argument("--confirm-seeds", default="1,2", help="comma-separated seeds for --confirm (default: 1,2)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    opts = parser.parse_args(argv)
    opts.models = [m.strip() for m in opts.models.split(",") if m.strip()]
    opts.skip = {a.strip() for a in opts.skip.split(",") if a.strip()}
    try:
        opts.confirm_seeds = [int(x) for x in opts.confirm_seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--confirm-seeds {opts.confirm_seeds!r}: expected comma-separated integers, e.g. 1,2")
    if opts.confirm < 0 or opts.seed in opts.confirm_seeds or len(set(opts.confirm_seeds)) < len(opts.confirm_seeds):
        parser.error("--confirm must be >= 0 and --confirm-seeds distinct seeds other than --seed")
    if opts.confirm and not opts.confirm_seeds:
        parser.error("--confirm needs at least one seed in --confirm-seeds")
    bad = [m for m in opts.models if m not in SPACE]
    if bad or opts.budget < 1 or opts.jobs < 1:
        parser.error(
            f"--models {bad[0]!r}: choose from {', '.join(SPACE)}" if bad else "--budget and --jobs must be >= 1"
        )
    opts.recipe = (opts.recipe or ROOT / "recipes" / DATASETS[opts.dataset][1]).resolve()
    opts.run = (opts.run or Path("runs") / f"tune-{opts.dataset}").resolve()
    opts.run.mkdir(parents=True, exist_ok=True)
    (opts.run / "tuning").mkdir(exist_ok=True)
    # the jobs are shared by the models' searches; each training gets the cores of one job
    opts.jobs = max(1, opts.jobs // len(opts.models))
    opts.threads = opts.threads or max(1, (os.cpu_count() or 1) // (opts.jobs * len(opts.models)))
    started = time.perf_counter()
    prepare(opts)
    base = yaml.safe_load(opts.recipe.read_text()) or {}
    lock = threading.Lock()
    with ThreadPoolExecutor(len(opts.models)) as pool:
        results = dict(
            zip(opts.models, pool.map(lambda m: Search(m, base, opts, lock).run(), opts.models), strict=True)
        )
    tuned = copy.deepcopy(base)
    for model, r in results.items():
        section = _section(tuned, model)
        section.clear()
        section.update(r["best_config"])
    (opts.run / "tuning" / "recipe.yaml").write_text(yaml.safe_dump(tuned, sort_keys=False))
    command = " ".join(["python", "benchmarks/tune.py", *argv])
    text = (
        markdown(results, opts, command) + f"\nTraining time of the trials: {training_seconds(results):.0f} s"
        f" (one thread each); this call: {time.perf_counter() - started:.0f} s on {os.cpu_count()} cores"
        " (trials finished by an earlier call are reused).\n"
    )
    opts.results.mkdir(parents=True, exist_ok=True)
    out = opts.results / f"{dt.date.today()}-tune-{opts.dataset}.md"
    out.write_text(text)
    print(text)
    print(f"wrote {opts.run / 'tuning'} and {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
