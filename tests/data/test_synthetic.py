"""The synthetic generator plants what it says it plants, deterministically."""

from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from mufasa_cli.config import PrepareConfig
from mufasa_cli.data import prepare, schema
from mufasa_cli.data.sources.synthetic import (
    GENRE_MODALITIES,
    GENRES,
    PERCEPTUAL,
    PRESETS,
    generate,
)
from tests.conftest import folder_digest, invoke

SMALL = replace(PRESETS["tiny"], num_items=1200, num_users=300, num_zero_shot_users=20, min_len=60, max_len=120)


@pytest.fixture(scope="module")
def small():
    return generate(SMALL, seed=3)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        assert (
            invoke("prepare", "synthetic", "--preset", "tiny", "--seed", seed, "--out", tmp_path / name).exit_code == 0
        )
    a, b, c = (folder_digest(tmp_path / n / "data") for n in "abc")
    for d in (a, b, c):
        d.pop("manifest.json")  # holds wall time and creation time
    assert a == b
    assert a["interactions.parquet"] != c["interactions.parquet"]


def test_lengths_roles_and_zero_shot_count(small):
    lengths = small.interactions.group_by("raw_user").len()["len"]
    assert lengths.min() >= SMALL.min_len and lengths.max() <= SMALL.max_len
    assert len(small.zero_shot_users) == SMALL.num_zero_shot_users
    assert lengths.len() == SMALL.num_users + SMALL.num_zero_shot_users


def test_block_lengths_are_geometric_with_the_preset_mean(small):
    blocks = small.interactions.group_by(["raw_user", "block"]).len()
    full = blocks.join(blocks.group_by("raw_user").agg(pl.col("block").max().alias("last")), on="raw_user")
    full = full.filter(pl.col("block") != pl.col("last"))  # the last block is cut by the sequence end
    assert full["len"].min() >= 2
    assert abs(full["len"].mean() - SMALL.mean_block_len) < 0.5


def test_blocks_are_runs_of_one_topic_and_core_topics_return(small):
    x = small.interactions.join(small.items.select("raw_item", "topic"), on="raw_item")
    per_block = x.group_by(["raw_user", "block"]).agg(pl.col("topic").n_unique().alias("k"), pl.col("topic").first())
    assert per_block["k"].max() == 1  # one topic per block
    ordered = per_block.sort(["raw_user", "block"])
    consecutive_same = (ordered["topic"].shift(1) == ordered["topic"]) & (
        ordered["raw_user"].shift(1) == ordered["raw_user"]
    )
    assert not consecutive_same.any()  # a block is a maximal run
    # core topics: a user's top-3 topics cover far more blocks than 3 random topics would
    top3 = per_block.group_by(["raw_user", "topic"]).len().sort("len", descending=True).group_by("raw_user").head(3)
    share = top3.group_by("raw_user").agg(pl.col("len").sum())["len"].sum() / per_block.height
    assert share > 0.55 > 3 / SMALL.num_topics


def test_recency_subtopic_sticks_inside_blocks(small):
    x = small.interactions.join(small.items.select("raw_item", "subtopic"), on="raw_item")
    same_block = (x["raw_user"].shift(1) == x["raw_user"]) & (x["block"].shift(1) == x["block"])
    stay = (x["subtopic"].shift(1) == x["subtopic"]).filter(same_block).mean()
    # stays w.p. p_stick, plus a redraw landing on the same sub-topic
    assert stay > SMALL.p_stick - 0.05


def test_genre_modality_coverage_conflicts_and_titles_match_the_preset(small):
    items = small.items
    n = items.height
    genre = items["genre"].to_numpy()
    for m in (*PERCEPTUAL, "category"):
        present = np.zeros(n, bool)
        idx = {i: k for k, i in enumerate(items["raw_item"].to_list())}
        present[[idx[i] for i in small.modalities[m].ids]] = True
        for g in GENRES:
            cov = present[genre == g].mean()
            if m in GENRE_MODALITIES[g]:
                assert cov > 0.8, (m, g, cov)
            else:
                assert cov == 0.0, (m, g, cov)
    assert abs(items["conflict_modality"].is_not_null().mean() - SMALL.p_conflict) < 0.03
    assert abs(items["missing_modality"].is_not_null().mean() - SMALL.p_missing_modality) < 0.03
    kinds = items["title_kind"].value_counts().to_dict(as_series=False)
    share = dict(zip(kinds["title_kind"], np.array(kinds["count"]) / n, strict=True))
    assert abs(share["vague"] - SMALL.p_vague_title) < 0.025
    assert abs(share["missing"] - SMALL.p_missing_title) < 0.02


def test_title_vectors_share_topic_across_genres_but_raw_modalities_do_not(small):
    """The planted cross-genre problem: same-topic items of different genres are close in the
    title space, not in a raw modality space that both genres expose (subtitles)."""
    items = small.items
    idx = {i: k for k, i in enumerate(items["raw_item"].to_list())}
    topic = items["topic"].to_numpy()
    genre = items["genre"].to_numpy()

    def mean_same_topic_cos(mod, g1, g2):
        rows = np.array([idx[i] for i in mod.ids])
        v = mod.values / np.linalg.norm(mod.values, axis=1, keepdims=True)
        a, b = rows[genre[rows] == g1], rows[genre[rows] == g2]
        va, vb = v[genre[rows] == g1], v[genre[rows] == g2]
        sim = va @ vb.T
        same = topic[a][:, None] == topic[b][None, :]
        return sim[same].mean() - sim[~same].mean()

    title_gap = mean_same_topic_cos(small.title_vectors, "news", "micro_video")
    subtitle_gap = mean_same_topic_cos(small.modalities["subtitles"], "news", "micro_video")
    assert title_gap > 0.3
    assert abs(subtitle_gap) < 0.1


def test_prepared_synthetic_is_well_formed(tiny_run):
    items = pl.read_parquet(tiny_run / "data" / schema.ITEMS_FILE)
    users = pl.read_parquet(tiny_run / "data" / schema.USERS_FILE)
    assert items.height == PRESETS["tiny"].num_items  # every generated item is a candidate
    assert (users["role"] == "zero_shot").sum() == PRESETS["tiny"].num_zero_shot_users
    assert set(items["genre"].unique()) == set(GENRES)
    # title_ok follows the quality rule, which the generator's vague/missing titles trip
    assert (items.filter(pl.col("title_kind") != "ok")["title_ok"]).sum() == 0


def test_zero_shot_override_and_text_encoder_none(tmp_path):
    cfg = PrepareConfig(dataset="synthetic", preset="tiny", zero_shot_users=5, text_encoder="none")
    _, p = prepare.run(cfg, tmp_path, force=False)
    assert p.counts["users_by_role"]["zero_shot"] == 5
    assert schema.TITLE_KEY not in p.features and "modality.title" not in p.features
