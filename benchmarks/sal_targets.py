"""Where a SAL's validation NDCG@10 comes from on synthetic data: targets that continue the
user's current interest block against targets that start a new block (ground truth from
the generator's `block` column), the latter split by whether the new block's topic is one
of the user's three most frequent topics (a long-term interest) or not.

Short-term signal (the window) predicts a continuing block; only long-term signal (blocks,
selection) can rank a new block's item. Each RUN must be a synthetic run with align/.

    python benchmarks/sal_targets.py runs/a runs/b ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl
import torch

from mufasa_cli.data.sequences import load_sequences
from mufasa_cli.metrics.ranking import history_csr, hit_rate, ndcg, target_ranks
from mufasa_cli.sal.embed import user_embeddings
from mufasa_cli.sal.files import load_sal, load_z


def target_groups(run: Path) -> tuple[list[np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Valid histories and targets of train users, and boolean masks of the target groups."""
    inter = pl.read_parquet(run / "data/interactions.parquet").sort(["user", "pos"])
    if "block" not in inter.columns:
        raise SystemExit(f"{run}: no ground-truth block column (not a synthetic run)")
    topic = pl.read_parquet(run / "data/items.parquet").sort("item")["topic"].to_numpy()
    seqs = load_sequences(run / "data")
    block = inter["block"].to_numpy()
    hist, target, new, core = [], [], [], []
    for u in np.flatnonzero(seqs.roles == "train"):
        s, e = seqs.indptr[u], seqs.indptr[u + 1]
        items, splits, blocks = seqs.items[s:e], seqs.splits[s:e], block[s:e]
        train, valid = items[splits == "train"], np.flatnonzero(splits == "valid")
        if not len(train) or not len(valid):
            continue
        hist.append(train)
        target.append(items[valid[0]])
        new.append(blocks[valid[0]] != blocks[splits == "train"][-1])
        values, counts = np.unique(topic[train], return_counts=True)
        core.append(topic[items[valid[0]]] in set(values[np.argsort(-counts, kind="stable")[:3]]))
    new, core = np.array(new), np.array(core)
    groups = {"all": np.ones_like(new), "continue block": ~new, "new block": new}
    groups |= {"new block, core topic": new & core, "new block, other topic": new & ~core}
    return hist, np.array(target), groups


def ranks_of(run: Path, hist: list[np.ndarray], target: np.ndarray) -> np.ndarray:
    model, _ = load_sal(run, torch.device("cpu"))
    z = torch.as_tensor(load_z(run)[0])
    users = user_embeddings(model, z, hist, model.cfg.max_len)
    with torch.no_grad():
        items = model.items(z)
    seen = history_csr(hist)
    return target_ranks(lambda rows: users[torch.as_tensor(rows)], items, np.arange(len(hist)), target, *seen)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    args = p.parse_args(argv)
    hist, target, groups = target_groups(args.runs[0])
    print("groups: " + "; ".join(f"{name} {int(mask.sum())}" for name, mask in groups.items()))
    print(f"{'run':<28}" + "".join(f"{name:>24}" for name in groups))
    print(f"{'':<28}" + "".join(f"{'NDCG@10 / HR@100 / med':>24}" for _ in groups))
    for run in args.runs:
        r = ranks_of(run, hist, target)
        n, h = ndcg(r, 10), hit_rate(r, 100)
        cells = [f"{n[m].mean():.3f} / {h[m].mean():.3f} / {np.median(r[m]):.0f}" for m in groups.values()]
        print(f"{run.name:<28}" + "".join(f"{c:>24}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
