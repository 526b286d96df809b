"""`mufasa eval`: score models on one protocol, per user, with significance against the
strongest baseline.

Every model is reduced to user vectors for the protocol's cases and item vectors for the
whole catalogue, scored by dot product in chunks of users (metrics/ranking.py: memory bounded
by chunk x items, ties pessimistic, results independent of the chunk size).

Models today: `mufasa` (RUN/embed), `lightgcn` (RUN/fuse/cf.safetensors: the CF embeddings
the MFL was trained against; it has no vector for a user outside its graph, so it does not
take part in `zero-shot`), `sasrec` (baselines/sasrec.py), `dssm` and `youtube`
(baselines/two_tower.py) and `mmgcn` (baselines/mmgcn.py); the last four are trained here
when missing.

Legend: C cases, P (user, target) pairs, N items, D width.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mufasa_cli import artifacts
from mufasa_cli.config import saved_as
from mufasa_cli.data import schema
from mufasa_cli.errors import ArtifactError, MufasaError
from mufasa_cli.eval import DISPLAY_NAMES  # noqa: F401  (re-exported for callers)
from mufasa_cli.eval.protocols import Cases, build_cases
from mufasa_cli.eval.slices import compute_slices
from mufasa_cli.metrics.ranking import history_csr, per_user_metrics, target_ranks

BASELINES = ("lightgcn", "sasrec", "dssm", "youtube", "mmgcn")
TRAINED_HERE = ("sasrec", "dssm", "youtube", "mmgcn")  # eval trains these (cached under RUN/baselines/) when missing
TRANSDUCTIVE = ("lightgcn", "dssm", "mmgcn")  # no vector for a user outside training: not in zero-shot
DEFAULT_KS = (5, 10, 20, 50, 100)
TESTS = ("ttest", "wilcoxon")


@dataclass
class Vectors:
    users: torch.Tensor  # (C, D) rows aligned with the cases
    items: torch.Tensor  # (N, D)
    params: int  # learnable parameters behind them


def mufasa_vectors(run_dir: Path, cases: Cases) -> Vectors:
    embed_dir = run_dir / "embed"
    artifacts.verify_stage(embed_dir)
    artifacts.check_not_stale(embed_dir)
    u = artifacts.load_tensors(
        embed_dir / "users.safetensors", {"user": ("int64", (None,)), "emb": ("float32", (None, None))}
    )
    e = artifacts.load_tensors(embed_dir / "items.safetensors", {"emb": ("float32", (None, None))})["emb"]
    row = {int(x): i for i, x in enumerate(u["user"])}
    missing = [int(x) for x in cases.users if int(x) not in row]
    if missing:
        raise ArtifactError(
            f"{embed_dir / 'users.safetensors'}: no embedding for user {missing[0]} (re-run mufasa embed)"
        )
    params = _count(run_dir / "align" / "sal.safetensors")
    ids = run_dir / "align" / "item_ids.safetensors"
    if ids.is_file():  # align-train --item-ids: one trained vector per item trained on
        t = artifacts.load_tensors(ids, {})
        params += int(t["has_id"].sum()) * t["emb"].shape[1]
    for mfl in (run_dir / "align" / "mfl.safetensors", run_dir / "fuse" / "mfl.safetensors"):
        if mfl.is_file():  # finetuned in align/, else fuse/'s; none for the w/o-MFL ablation
            params += _count(mfl)
            break
    return Vectors(torch.as_tensor(u["emb"][[row[int(x)] for x in cases.users]]), torch.as_tensor(e), params)


def lightgcn_vectors(run_dir: Path, cases: Cases) -> Vectors:
    fuse_dir = run_dir / "fuse"
    artifacts.verify_stage(fuse_dir)
    t = artifacts.load_tensors(fuse_dir / "cf.safetensors", {})
    if "user_cf" not in t:
        raise ArtifactError(f"{fuse_dir / 'cf.safetensors'}: no user embeddings (re-run fuse-train --retrain-cf)")
    params = int(t["user_cf"].size + t["item_cf"].size)
    return Vectors(torch.as_tensor(t["user_cf"][cases.users]), torch.as_tensor(t["item_cf"]), params)


def sasrec_vectors(run_dir: Path, cases: Cases) -> Vectors:
    from mufasa_cli.baselines import sasrec

    model, params = sasrec.load(run_dir, torch.device("cpu"))
    with torch.no_grad():
        return Vectors(sasrec.user_vectors(model, cases.histories), model.item_vectors().detach().clone(), params)


def two_tower_vectors(name: str):
    def vectors(run_dir: Path, cases: Cases) -> Vectors:
        from mufasa_cli.baselines import two_tower

        model, cfg, params = two_tower.load(name, run_dir)
        with torch.no_grad():
            if name == "dssm":
                users = model.users(torch.as_tensor(cases.users))
            else:
                users = two_tower.youtube_users(model, cases.histories, cfg.max_len)
            return Vectors(users, model.item_vectors(), params)

    return vectors


def mmgcn_vectors(run_dir: Path, cases: Cases) -> Vectors:
    from mufasa_cli.baselines import mmgcn

    users, items, params = mmgcn.load(run_dir)
    return Vectors(torch.as_tensor(users[cases.users]), torch.as_tensor(items), params)


def ensure_baselines(
    run_dir: Path,
    names: list[str],
    recipe,
    *,
    seed: int,
    device: torch.device,
    retrain: bool,
    resume: bool = False,
    on_step=None,
    jobs: int = 1,
    on_done=None,
) -> dict[str, dict]:
    """Train the baselines in `names` that RUN/baselines/ lacks (or holds stale, or `retrain`),
    from the last epoch checkpoint of an interrupted run when `resume`, `jobs` at a time
    (runtime.pool: trainings sent to worker processes get no on_step; on_done(done, total)
    counts them); returns {name: manifest} of those trained now."""
    from mufasa_cli.baselines import mmgcn, sasrec, two_tower
    from mufasa_cli.data.sequences import load_sequences
    from mufasa_cli.runtime.pool import run_calls

    calls, todo = [], []
    seqs, num_items = None, 0
    for name in names:
        if name not in TRAINED_HERE:
            continue
        folder = run_dir / "baselines" / name
        if not retrain:
            try:
                manifest = artifacts.verify_stage(folder)
                artifacts.check_not_stale(folder, run_dir)
                if saved_as(getattr(recipe.baselines, name), manifest.get("config"), str(folder)):
                    continue
            except ArtifactError:
                pass
        if seqs is None:  # read data/ once, for the first baseline that needs training
            data_dir = run_dir / "data"
            artifacts.verify_stage(data_dir)
            seqs = load_sequences(data_dir)
            num_items = artifacts.load_table(data_dir / schema.ITEMS_FILE, schema.ITEM_COLUMNS).height
        cfg = getattr(recipe.baselines, name)
        common = dict(seqs=seqs, num_items=num_items, seed=seed, device=device, resume=resume, on_step=on_step)
        if name == "sasrec":
            calls.append((sasrec.train, (run_dir, cfg), common))
        elif name == "mmgcn":
            calls.append((mmgcn.train, (run_dir, cfg), common))
        else:
            calls.append((two_tower.train, (name, run_dir, cfg), common))
        todo.append(name)
    return dict(zip(todo, run_calls(calls, jobs, on_done), strict=True))


def _count(path: Path) -> int:
    return int(sum(v.size for v in artifacts.load_tensors(path, {}).values()))


def score(
    cases: Cases, vectors: Vectors, ks: list[int], keep_seen: bool, chunk: int = 1024
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-case metrics and the (P,) rank of every (case, target) pair among all items, the
    case's history masked unless keep_seen."""
    exclude = () if keep_seen else history_csr(cases.histories)
    ranks = target_ranks(
        lambda rows: vectors.users[torch.as_tensor(rows)],
        vectors.items,
        cases.pair_owner,
        cases.pair_target,
        *exclude,
        chunk=chunk,
    )
    return per_user_metrics(ranks, cases.pair_owner, len(cases), ks), ranks


def paired_p(ours: np.ndarray, theirs: np.ndarray, test: str) -> float:
    """Two-sided p-value of a paired test over per-user metrics (1.0 when they never differ)."""
    from scipy import stats

    if np.allclose(ours, theirs):
        return 1.0
    result = stats.ttest_rel(ours, theirs) if test == "ttest" else stats.wilcoxon(ours, theirs)
    return float(result.pvalue)


def run_eval(
    run_dir: Path,
    *,
    protocol: str,
    compare: list[str],
    ks: list[int],
    keep_seen: bool,
    test: str,
    chunk: int = 1024,
    slices: bool = False,
) -> dict:
    """Every model's per-case metrics on `protocol`, means, p-values against the strongest
    baseline, and with `slices` the means on each slice of the pairs (eval/slices.py)."""
    started = time.perf_counter()
    unknown = [m for m in compare if m not in BASELINES]
    if unknown:
        raise MufasaError(f"--compare {unknown[0]!r}: choose from {', '.join(BASELINES)}")
    data_dir = run_dir / "data"
    data_manifest = artifacts.verify_stage(data_dir)
    split = data_manifest.get("config", {}).get("split", "loo")
    cases = build_cases(data_dir, protocol)
    if not len(cases):
        hint = {
            "zero-shot": "the run has no zero-shot users (prepare --zero-shot-users N); use --protocol loo",
            "cold-start": "no test target is a cold item (prepare --cold-items F); use --protocol loo",
        }.get(protocol, "no user with a target for this protocol")
        raise MufasaError(f"{data_dir}: no {protocol} case: {hint}")
    models: dict[str, dict] = {}
    loaders = {
        "mufasa": mufasa_vectors,
        "lightgcn": lightgcn_vectors,
        "sasrec": sasrec_vectors,
        "dssm": two_tower_vectors("dssm"),
        "youtube": two_tower_vectors("youtube"),
        "mmgcn": mmgcn_vectors,
    }
    skipped, ranks = {}, {}
    for name in ["mufasa", *compare]:
        if name in TRANSDUCTIVE and protocol == "zero-shot":
            skipped[name] = "no vector for users outside its training graph"
            continue
        vectors = loaders[name](run_dir, cases)
        per_user, ranks[name] = score(cases, vectors, ks, keep_seen, chunk)
        models[name] = {"params": vectors.params, "per_user": per_user}
    metrics = list(models["mufasa"]["per_user"])
    means = {name: {k: float(v.mean()) for k, v in m["per_user"].items()} for name, m in models.items()}
    main = "NDCG@10" if "NDCG@10" in metrics else metrics[0]
    baselines = [n for n in models if n != "mufasa"]
    strongest = max(baselines, key=lambda n: means[n][main]) if baselines else None
    p_values = {}
    if strongest:
        for k in metrics:
            p_values[k] = paired_p(models["mufasa"]["per_user"][k], models[strongest]["per_user"][k], test)
    result = {
        "protocol": protocol,
        "split": split,
        "keep_seen": keep_seen,
        "ks": ks,
        "cases": len(cases),
        "pairs": len(cases.pair_target),
        "metrics": metrics,
        "main_metric": main,
        "models": {n: {"params": m["params"], "mean": means[n]} for n, m in models.items()},
        "model_order": list(models),
        "skipped": skipped,
        "strongest_baseline": strongest,
        "test": test,
        "p_values": p_values,
        "per_user": {n: {k: v.tolist() for k, v in m["per_user"].items()} for n, m in models.items()},
        "users": cases.users.tolist(),
    }
    if slices:
        result["slices"] = compute_slices(
            cases.histories, cases.pair_owner, cases.pair_target, train_counts(data_dir), ranks, ks
        )
    result["wall_time_s"] = round(time.perf_counter() - started, 2)
    return result


def train_counts(data_dir: Path) -> np.ndarray:
    """(N,) each item's number of training interactions (split `train`)."""
    num_items = artifacts.load_table(data_dir / schema.ITEMS_FILE, schema.ITEM_COLUMNS).height
    inter = artifacts.load_table(data_dir / schema.INTERACTIONS_FILE, schema.INTERACTION_COLUMNS)
    trained = inter.filter(inter["split"] == "train")["item"].to_numpy()
    return np.bincount(trained, minlength=num_items)


def eval_dir(run_dir: Path, protocol: str, keep_seen: bool) -> Path:
    """RUN/eval/PROTOCOL, or RUN/eval/PROTOCOL-keep-seen: masked and kept results side by side."""
    return run_dir / "eval" / (f"{protocol}-keep-seen" if keep_seen else protocol)


def write_eval(run_dir: Path, result: dict, force: bool) -> Path:
    """RUN/eval/<protocol>[-keep-seen]/ with metrics.json (means, p-values and per-user arrays)
    and the tables as tables.md, tables.csv and tables.tex (slices.md / slices.csv with slices)."""
    from mufasa_cli.eval.tables import eval_files

    out = eval_dir(run_dir, result["protocol"], result["keep_seen"])
    with artifacts.stage_writer(out, force=force) as tmp:
        # compact: the per-user arrays hold one number per case and metric
        artifacts.atomic_write_bytes(tmp / "metrics.json", json.dumps(result, sort_keys=True).encode() + b"\n")
        for name, text in eval_files(result).items():
            artifacts.atomic_write_bytes(tmp / name, text.encode())
        artifacts.write_manifest(
            tmp,
            stage="eval",
            config={k: result[k] for k in ("protocol", "split", "keep_seen", "ks", "test")},
            seed=None,
            inputs={
                s: artifacts.input_record(run_dir / s) for s in ("data", "fuse", "embed") if (run_dir / s).is_dir()
            },
            counts={"cases": result["cases"], "pairs": result["pairs"], "models": len(result["models"])},
            wall_time_s=result["wall_time_s"],
        )
    return out
