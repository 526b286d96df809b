"""The ceiling of the `synthetic` data: test metrics of the generator's own next-item law.

The generator (mufasa_cli/data/sources/synthetic.py) draws each user's next item from a known
law: the block goes on (same topic) or a new one starts (a return, a core topic or any topic),
the sub-topic sticks or is redrawn (the user's preferred one in a core topic), and the item is
drawn by popularity inside its (topic, sub-topic) pool. This script replays the generator with
the same seed, checks that it reproduces every sequence of RUN/data exactly, keeps each user's
hidden state before each target (core topics and their weights, preferred sub-topics, the
current block's topic, run length and sub-topic), and scores every item by its probability
under that law. The result is what a model that knew each user's hidden preferences could
reach (drift, which no history reveals in advance, is left out): a ceiling, not a baseline.
Ranked like `mufasa eval` (full catalogue, earlier items masked unless --keep-seen, ties
pessimistic).

    python benchmarks/synthetic_oracle.py runs/paper-synthetic            # preset read from data/manifest.json

Prints loo HR@10 / NDCG@10 and zero-shot Recall@10 / NDCG@10 of the oracle, and with --compare
the same run's eval/*/metrics.json means beside them. Writes benchmarks/results/<date>-synthetic-oracle-<preset>.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

import numpy as np

from mufasa_cli.data.sources import synthetic as syn
from mufasa_cli.eval.protocols import build_cases
from mufasa_cli.metrics.ranking import history_csr, per_user_metrics

ROOT = Path(__file__).resolve().parents[1]


def replay(cfg: syn.SyntheticConfig, seed: int):
    """The catalogue and, per user, (items, hidden state after each item) as generate() draws them."""
    rng = np.random.default_rng(seed)
    cat = syn._make_catalogue(cfg, rng)
    syn._make_titles(cfg, cat, rng)
    syn._make_modalities(cfg, cat, rng)
    users = []
    for _ in range(cfg.num_users + cfg.num_zero_shot_users):
        users.append(_sequence(cfg, cat, rng))
    return cat, users


def _sequence(cfg: syn.SyntheticConfig, cat, rng: np.random.Generator):
    """syn._make_sequence, draw for draw, also recording the state after each item."""
    T, S = cfg.num_topics, cfg.num_subtopics
    length = int(rng.integers(cfg.min_len, cfg.max_len + 1))
    k = min(cfg.num_core_topics, T)
    core = list(rng.choice(T, k, replace=False, p=np.diff(cat.topic_cdf, prepend=0.0)))
    core_w = rng.dirichlet(np.full(k, 2.0))
    preferred = {t: int(rng.integers(S)) for t in core}
    items, states, block_topics = [], [], []
    rng.integers(1_600_000_000, 1_650_000_000)  # the clock
    while len(items) < length:
        if rng.random() < cfg.p_drift:
            j = int(rng.integers(k))
            new = syn._choice(rng, cat.topic_cdf)
            if new not in core:
                preferred.pop(core[j], None)
                core[j] = new
                preferred[new] = int(rng.integers(S))
        prev = block_topics[-1] if block_topics else -1
        if len(block_topics) >= 2 and block_topics[-2] != prev and rng.random() < cfg.p_return:
            topic = block_topics[-2]
        elif rng.random() < cfg.p_core and (k > 1 or core[0] != prev):
            options = [j for j in range(k) if core[j] != prev]
            topic = core[options[syn._choice(rng, np.cumsum(core_w[options]))]]
        else:
            topic = syn._choice(rng, cat.topic_cdf)
        if topic == prev:
            topic = (topic + 1 + int(rng.integers(T - 1))) % T if T > 1 else topic
        size = min(1 + int(rng.geometric(1.0 / (cfg.mean_block_len - 1))), length - len(items))
        is_core = topic in preferred
        sub = -1
        rng.exponential(86_400.0)
        block_topics.append(topic)
        for run in range(1, size + 1):
            if sub < 0 or rng.random() >= cfg.p_stick:
                sub = preferred[topic] if is_core and rng.random() < cfg.p_preferred else int(rng.integers(S))
            pool = cat.pools[topic][sub]
            items.append(int(pool[syn._choice(rng, cat.pool_cdfs[topic][sub])]))
            rng.exponential(120.0)
            states.append(
                {
                    "core": list(core),
                    "core_w": core_w.copy(),
                    "preferred": dict(preferred),
                    "blocks": list(block_topics),
                    "run": run,
                    "sub": sub,
                }
            )
    return items, states


def next_item_law(cfg: syn.SyntheticConfig, cat, state: dict) -> np.ndarray:
    """P(next item) (N,) after the state's item, by the generator's law (no drift)."""
    T, S = cfg.num_topics, cfg.num_subtopics
    topic_p = np.diff(cat.topic_cdf, prepend=0.0)
    pool_p = [[np.diff(c, prepend=0.0) / c[-1] for c in row] for row in cat.pool_cdfs]
    prev, preferred = state["blocks"][-1], state["preferred"]
    # block length: 1 + geometric(1 / (mean - 1)) >= 2, so a block of one item always goes on
    p_go_on = 1.0 if state["run"] == 1 else 1.0 - 1.0 / (cfg.mean_block_len - 1)
    subs = np.zeros((T, S))  # P(next item's topic, sub-topic)

    def first_sub(topic: int) -> np.ndarray:
        p = np.full(S, 1.0 / S)
        if topic in preferred:
            p = (1 - cfg.p_preferred) * p
            p[preferred[topic]] += cfg.p_preferred
        return p

    stay = np.zeros(S)
    stay[state["sub"]] = cfg.p_stick
    subs[prev] += p_go_on * (stay + (1 - cfg.p_stick) * first_sub(prev))
    # a new block: a return, a core topic other than the current, or any topic (shifted off prev)
    new_topic = np.zeros(T)
    blocks = state["blocks"]
    p_ret = cfg.p_return if len(blocks) >= 2 and blocks[-2] != prev else 0.0
    if p_ret:
        new_topic[blocks[-2]] += p_ret
    core, w = state["core"], state["core_w"]
    options = [j for j in range(len(core)) if core[j] != prev]
    p_core = cfg.p_core if (len(core) > 1 or core[0] != prev) else 0.0
    for j in options:
        new_topic[core[j]] += (1 - p_ret) * p_core * w[j] / w[options].sum()
    anything = (1 - p_ret) * (1 - p_core) * topic_p
    new_topic += anything
    shifted = new_topic[prev]  # drawn equal to the current topic: moved to one of the others
    new_topic[prev] = 0.0
    new_topic += shifted / (T - 1) * (np.arange(T) != prev)
    for t in range(T):
        subs[t] += (1 - p_go_on) * new_topic[t] * first_sub(t)
    law = np.zeros(len(cat.topic))
    for t in range(T):
        for s in range(S):
            law[cat.pools[t][s]] += subs[t, s] * pool_p[t][s]
    return law


def sample_next(cfg: syn.SyntheticConfig, cat, state: dict, rng: np.random.Generator) -> tuple[int, dict]:
    """One draw of the next item from the law of next_item_law, and the state after it."""
    T, S = cfg.num_topics, cfg.num_subtopics
    prev, preferred, blocks = state["blocks"][-1], state["preferred"], state["blocks"]
    p_go_on = 1.0 if state["run"] == 1 else 1.0 - 1.0 / (cfg.mean_block_len - 1)

    def first_sub(topic: int) -> int:
        if topic in preferred and rng.random() < cfg.p_preferred:
            return preferred[topic]
        return int(rng.integers(S))

    if rng.random() < p_go_on:
        topic, run = prev, state["run"] + 1
        sub = state["sub"] if rng.random() < cfg.p_stick else first_sub(prev)
        blocks = list(blocks)
    else:
        core, w = state["core"], state["core_w"]
        options = [j for j in range(len(core)) if core[j] != prev]
        if len(blocks) >= 2 and blocks[-2] != prev and rng.random() < cfg.p_return:
            topic = blocks[-2]
        elif rng.random() < cfg.p_core and options:
            topic = core[options[syn._choice(rng, np.cumsum(w[options]))]]
        else:
            topic = syn._choice(rng, cat.topic_cdf)
        if topic == prev:
            topic = (topic + 1 + int(rng.integers(T - 1))) % T
        run, sub, blocks = 1, first_sub(topic), [*blocks, topic]
    item = int(cat.pools[topic][sub][syn._choice(rng, cat.pool_cdfs[topic][sub])])
    return item, {**state, "blocks": blocks, "run": run, "sub": sub}


def several_targets_law(cfg, cat, state: dict, steps: int, rollouts: int, rng) -> np.ndarray:
    """P(item is among the next `steps` items) (N,), by Monte Carlo rollouts of the law."""
    hits = np.zeros(len(cat.topic))
    for _ in range(rollouts):
        s, seen = state, set()
        for _ in range(steps):
            item, s = sample_next(cfg, cat, s, rng)
            seen.add(item)
        hits[list(seen)] += 1
    return hits / rollouts


def evaluate(run: Path, keep_seen: bool, rollouts: int = 2000) -> dict:
    manifest = json.loads((run / "data" / "manifest.json").read_text())
    conf = manifest["config"]
    cfg = syn.preset_config(conf["preset"], conf.get("zero_shot_users"))
    cat, users = replay(cfg, conf["seed"])
    import polars as pl

    raw = pl.read_parquet(run / "data" / "users.parquet").sort("user")["raw_id"].to_list()
    items_raw = pl.read_parquet(run / "data" / "items.parquet").sort("item")["raw_id"].to_list()
    to_internal = {int(r[1:]): i for i, r in enumerate(items_raw)}
    out = {}
    for protocol in ("loo", "zero-shot"):
        cases = build_cases(run / "data", protocol)
        scores = np.zeros((len(cases.pair_target), len(items_raw)))
        for p, (row, target) in enumerate(zip(cases.pair_owner, cases.pair_target, strict=True)):
            seq, states = users[int(raw[cases.users[row]][1:])]
            ours = [to_internal[i] for i in seq]
            history = cases.histories[row]
            if ours[: len(history)] != history.tolist():
                sys.exit(f"{run}: user {raw[cases.users[row]]} differs from the replayed generator")
            # the target is the j-th item after the history; every target of a user is scored
            # from the state at the end of the history, as the models score them
            j = p - int(np.searchsorted(cases.pair_owner, row))
            if ours[len(history) + j] != target:
                sys.exit(f"{run}: target of user {raw[cases.users[row]]} differs from the replayed generator")
            steps = int((cases.pair_owner == row).sum())
            state = states[len(history) - 1]
            if steps == 1:
                law = next_item_law(cfg, cat, state)
            else:  # P(among the next `steps`), the same for each of the user's targets
                law = several_targets_law(cfg, cat, state, steps, rollouts, np.random.default_rng(int(row)))
            scores[p, [to_internal[i] for i in range(len(law))]] = law
        ranks = _ranks(scores, cases, keep_seen)
        per_user = per_user_metrics(ranks, cases.pair_owner, len(cases), [10, 20])
        out[protocol] = {k: float(v.mean()) for k, v in per_user.items()}
    return out


def _ranks(scores: np.ndarray, cases, keep_seen: bool) -> np.ndarray:
    """Pessimistic ranks as metrics/ranking.target_ranks (earlier items masked, not the target)."""
    scores = scores.copy()
    rows = np.arange(len(scores))
    target_score = scores[rows, cases.pair_target].copy()
    if not keep_seen:
        indptr, items = history_csr(cases.histories)
        for p, owner in enumerate(cases.pair_owner):
            scores[p, items[indptr[owner] : indptr[owner + 1]]] = -np.inf
    # later targets of a zero-shot user stay candidates, as in eval
    scores[rows, cases.pair_target] = -np.inf
    return (scores >= target_score[:, None]).sum(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, help="a run folder whose data/ was prepared from `synthetic`")
    ap.add_argument("--keep-seen", action="store_true", help="score the user's earlier items too")
    ap.add_argument("--compare", action="store_true", help="print the run's eval/*/metrics.json means beside it")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args()
    result = evaluate(args.run, args.keep_seen)
    preset = json.loads((args.run / "data" / "manifest.json").read_text())["config"]["preset"]
    lines = [
        f"# synthetic ({preset}) ceiling: the generator's next-item law, {dt.date.today()}",
        "",
        f"`python benchmarks/synthetic_oracle.py {args.run}{' --keep-seen' if args.keep_seen else ''}`"
        f" ({'seen items kept' if args.keep_seen else 'seen items masked'})",
        "",
        "| protocol | model | HR/Recall@10 | NDCG@10 | HR/Recall@20 | NDCG@20 |",
        "|---|---|---|---|---|---|",
    ]
    for protocol, m in result.items():
        hit = "HR" if "HR@10" in m else "Recall"
        rows = [("oracle", m)]
        metrics = args.run / "eval" / (f"{protocol}-keep-seen" if args.keep_seen else protocol) / "metrics.json"
        if args.compare and metrics.is_file():
            ev = json.loads(metrics.read_text())
            if ev["keep_seen"] == args.keep_seen:
                rows += [(name, v["mean"]) for name, v in ev["models"].items()]
        for name, v in rows:
            lines.append(
                f"| {protocol} | {name} | {v[f'{hit}@10']:.4f} | {v['NDCG@10']:.4f} | {v[f'{hit}@20']:.4f} | {v['NDCG@20']:.4f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-keep-seen" if args.keep_seen else ""
    (args.out / f"{dt.date.today()}-synthetic-oracle-{preset}{suffix}.md").write_text(text)


if __name__ == "__main__":
    main()
