"""Evaluation protocols over RUN/data (docs/evaluation.md).

- `loo`: train-role users; history = every interaction but the test one (train + valid),
  target = the test item. HR@k, NDCG@k, MRR.
- `zero-shot`: users never trained on; history = their `history` rows, targets = their last
  3 interactions. Recall@k, NDCG@k.
- `cold-start`: the `loo` cases whose target is a cold item (no train interaction).

A case's history is what its user embedding reads and, unless --keep-seen, what is masked
from the candidates (the target itself always stays a candidate).

Legend: C cases (users), P (user, target) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mufasa_cli import artifacts
from mufasa_cli.data import schema

PROTOCOLS = ("loo", "zero-shot", "cold-start")


@dataclass
class Cases:
    protocol: str
    users: np.ndarray  # (C,) internal user ids
    histories: list[np.ndarray]  # C arrays of item ids, in order
    pair_owner: np.ndarray  # (P,) case row of each pair
    pair_target: np.ndarray  # (P,) target item of each pair

    def __len__(self) -> int:
        return len(self.users)


def build_cases(data_dir: Path, protocol: str) -> Cases:
    inter = artifacts.load_table(data_dir / schema.INTERACTIONS_FILE, schema.INTERACTION_COLUMNS).sort(["user", "pos"])
    users = artifacts.load_table(data_dir / schema.USERS_FILE, schema.USER_COLUMNS).sort("user")
    role = np.array(users["role"].to_list())
    want_role = "zero_shot" if protocol == "zero-shot" else "train"
    cold = None
    if protocol == "cold-start":
        items = artifacts.load_table(data_dir / schema.ITEMS_FILE, schema.ITEM_COLUMNS).sort("item")
        cold = items["is_cold"].to_numpy()
    user_col, item_col = inter["user"].to_numpy(), inter["item"].to_numpy()
    split = np.array(inter["split"].to_list())
    bounds = np.concatenate([[0], np.cumsum(np.bincount(user_col, minlength=users.height))])
    case_users, histories, owner, target = [], [], [], []
    for u in np.flatnonzero(role == want_role):
        s, e = bounds[u], bounds[u + 1]
        items_u, split_u = item_col[s:e], split[s:e]
        tests = items_u[split_u == "test"]
        history = items_u[split_u != "test"]
        if cold is not None:
            tests = tests[cold[tests]]
        if not len(tests) or not len(history):
            continue
        row = len(case_users)
        case_users.append(int(u))
        histories.append(history)
        owner.extend([row] * len(tests))
        target.extend(tests.tolist())
    return Cases(
        protocol,
        np.array(case_users, dtype=np.int64),
        histories,
        np.array(owner, dtype=np.int64),
        np.array(target, dtype=np.int64),
    )
