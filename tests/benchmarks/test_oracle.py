"""benchmarks/synthetic_oracle.py: it replays the generator exactly, its law is a distribution,
and the rollouts agree with it on the first step."""

import numpy as np
import pytest

from mufasa_cli.data.sources import synthetic as syn
from tests.conftest import load_benchmark


def test_replay_draws_the_generators_sequences_and_the_law_is_a_distribution():
    o = load_benchmark("synthetic_oracle")
    cfg = syn.preset_config("tiny")
    cat, users = o.replay(cfg, seed=3)
    data = syn.generate(cfg, seed=3)
    first = data.interactions.filter(data.interactions["raw_user"] == "u000000")["raw_item"].to_list()
    assert [f"i{i:06d}" for i in users[0][0]] == first
    for state in users[0][1][::7]:
        law = o.next_item_law(cfg, cat, state)
        assert law.min() >= 0 and law.sum() == pytest.approx(1.0)
    # one step of the rollouts follows the same law
    state = users[1][1][10]
    hits = o.several_targets_law(cfg, cat, state, steps=1, rollouts=4000, rng=np.random.default_rng(0))
    assert np.abs(hits - o.next_item_law(cfg, cat, state)).sum() < 0.15


def test_oracle_scores_a_prepared_run(tiny_run):
    o = load_benchmark("synthetic_oracle")
    result = o.evaluate(tiny_run, keep_seen=False, rollouts=200)
    assert set(result) == {"loo", "zero-shot"}
    assert 0.2 < result["loo"]["NDCG@10"] <= 1.0 and 0.2 < result["zero-shot"]["NDCG@10"] <= 1.0
