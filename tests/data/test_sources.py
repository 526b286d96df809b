"""Each source on small hand-written files: what it reads, ids, splits, modalities."""

import numpy as np
import polars as pl
import pytest
from safetensors.numpy import save_file

from mufasa_cli.config import PrepareConfig
from mufasa_cli.data import prepare, schema
from mufasa_cli.errors import DataSchemaError, RecipeError
from tests.conftest import write


def run(tmp_path, dataset, *sources, **kw):
    cfg = PrepareConfig(dataset=dataset, sources=tuple(str(s) for s in sources), text_encoder="none", **kw)
    _, p = prepare.run(cfg, tmp_path / "run", force=True)
    return p


def seq(p, raw_user):
    """The raw item ids of one user's sequence, in order, with their splits."""
    users = p.users.filter(pl.col("raw_id") == raw_user)["user"][0]
    x = p.interactions.filter(pl.col("user") == users).sort("pos").join(p.items.select("item", "raw_id"), on="item")
    return list(zip(x.sort("pos")["raw_id"].to_list(), x.sort("pos")["split"].to_list(), strict=True))


# ---------------------------------------------------------------- microlens


def test_microlens_tsv_order_titles_and_leave_one_out(tmp_path):
    src = tmp_path / "ml"
    write(src / "MicroLens-50k_pairs.tsv", "1\t10 20 30 40\n2\t20 30 10\n")
    write(
        src / "MicroLens-50k_titles.csv", 'item,title\n10,"A cat, a dog and a bird"\n20,short\n30,a b c d\n40,x y z w\n'
    )
    p = run(tmp_path, "microlens", src)
    assert seq(p, "1") == [("10", "train"), ("20", "train"), ("30", "valid"), ("40", "test")]
    assert seq(p, "2") == [("20", "train"), ("30", "valid"), ("10", "test")]
    titles = dict(zip(p.items["raw_id"], p.items["title"], strict=True))
    assert titles["10"] == "A cat, a dog and a bird"  # quoted comma kept
    ok = dict(zip(p.items["raw_id"], p.items["title_ok"], strict=True))
    assert ok == {"10": True, "20": False, "30": True, "40": True}  # "short" is one token
    assert p.items["genre"].unique().to_list() == ["micro_video"]


def test_microlens_csv_with_timestamps_ties_keep_file_order(tmp_path):
    src = tmp_path / "ml"
    write(src / "MicroLens-100k_pairs.csv", "userID,videoID,timestamp\n1,7,300\n1,5,100\n1,6,100\n1,8,400\n")
    write(src / "MicroLens-100k_title_en.csv", "5, five five five\n6, six six six\n7, seven, with comma\n8, eight\n")
    p = run(tmp_path, "microlens", src)
    assert [r for r, _ in seq(p, "1")] == ["5", "6", "7", "8"]  # 5 and 6 tie: file order
    titles = dict(zip(p.items["raw_id"], p.items["title"], strict=True))
    assert titles["7"] == "seven, with comma"  # no-header file: split at the first comma only


def test_microlens_side_files_and_cross_folder_join_check(tmp_path):
    a, b = tmp_path / "50k", tmp_path / "100k"
    write(a / "MicroLens-50k_pairs.tsv", "1\t1 2 3\n2\t3 2 1\n")
    write(
        a / "MicroLens-50k_titles.csv",
        "item,title\n1,red cars racing fast\n2,blue ocean waves crash\n3,green forest walk today\n",
    )
    write(b / "MicroLens-100k_title_en.csv", "1, red cars racing\n2, completely other video\n3, green forest walk\n")
    write(b / "tags_to_summary.csv", "video_id, tag\n1,Cars\n2,Travel\n3,Nature\n")
    write(b / "MicroLens-100k_likes_and_views.txt", "1\t10\t100\n2\t20\t200\n3\t30\t300\n")
    p = run(tmp_path, "microlens", a, b)
    cats = dict(zip(p.items["raw_id"], p.items["category"], strict=True))
    assert cats == {"1": "Cars", "2": None, "3": "Nature"}  # item 2's titles disagree: not joined
    assert p.counts["category_rows_rejected_title_mismatch"] == 1
    mask = p.features["mask.popularity"]
    assert mask.tolist() == [True, False, True]
    assert p.features["modality.category"].shape == (3, 2)


def test_microlens_feature_matrices_npz_npy_safetensors(tmp_path):
    src = tmp_path / "ml"
    write(src / "x_pairs.tsv", "1\t1 2 3\n")
    feats = src / "features"
    feats.mkdir()
    np.savez(feats / "image.npz", ids=np.array([1, 3]), emb=np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.save(feats / "audio.npy", np.ones((3, 4), np.float32))
    np.save(feats / "audio.ids.npy", np.array(["1", "2", "3"]))
    save_file(
        {"ids": np.array([2], np.int64), "emb": np.full((1, 5), 7.0, np.float32)}, str(feats / "video.safetensors")
    )
    p = run(tmp_path, "microlens", src)
    f = p.features
    assert f["mask.image"].tolist() == [True, False, True]
    np.testing.assert_array_equal(f["modality.image"][2], [3.0, 4.0])
    assert f["modality.audio"].shape == (3, 4) and f["mask.audio"].all()
    assert f["mask.video"].tolist() == [False, True, False] and f["modality.video"][1, 0] == 7.0


# ---------------------------------------------------------------- movielens


ITEM_100K = "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"
ITEM_100K += "2|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0\n"
ITEM_100K += "3|Caf\xe9 Society (1981)|01-Jan-1981||http://x|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0|0|0\n"


def test_movielens_100k_latin1_year_and_genres(tmp_path):
    src = tmp_path / "ml-100k"
    write(src / "u.data", "1\t1\t5\t100\n1\t2\t3\t200\n1\t3\t4\t300\n2\t3\t1\t50\n2\t1\t2\t60\n2\t2\t2\t70\n")
    write(src / "u.item", ITEM_100K, encoding="latin-1")
    p = run(tmp_path, "movielens", src)
    assert p.items["title"].to_list() == ["Toy Story", "GoldenEye", "Café Society"]
    assert p.items["category"][0] == "Animation|Children's|Comedy"
    assert p.features["modality.category"].sum(axis=1).tolist() == [3, 3, 1]  # multi-hot over the 7 genres seen
    assert p.features["modality.category"].shape == (3, 7)
    year = p.features["modality.year"]
    assert year[0, 0] == year[1, 0] > year[2, 0]  # z-scored year: 1995, 1995, 1981
    assert seq(p, "2") == [("3", "train"), ("1", "valid"), ("2", "test")]


def test_movielens_1m(tmp_path):
    src = tmp_path / "ml-1m"
    write(src / "ratings.dat", "1::10::5::3\n1::20::4::1\n1::30::4::2\n")
    write(src / "movies.dat", "10::Heat (1995)::Action|Crime\n20::Up (2009)::Animation\n30::Jaws (1975)::Horror\n")
    p = run(tmp_path, "movielens", src)
    assert [r for r, _ in seq(p, "1")] == ["20", "30", "10"]
    assert p.items["category"].to_list() == ["Action|Crime", "Animation", "Horror"]


def test_movielens_csv_layout_with_multi_genres_and_tags(tmp_path):
    src = tmp_path / "ml-latest-small"
    write(
        src / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,10,5.0,3\n1,20,4.0,1\n1,30,4.5,2\n2,30,3.0,5\n2,10,1.0,6\n2,20,2.0,7\n",
    )
    write(
        src / "movies.csv",
        'movieId,title,genres\n10,"Heat, The (1995)",Action|Crime|Thriller\n20,Up (2009),Animation\n'
        "30,Jaws (1975),(no genres listed)\n",
    )
    write(src / "tags.csv", "userId,movieId,tag,timestamp\n1,10,Heist,1\n2,10,heist,2\n2,20,Pixar,3\n")
    p = run(tmp_path, "movielens", src)
    assert [r for r, _ in seq(p, "1")] == ["20", "30", "10"]
    assert p.items["title"].to_list() == ["Heat, The", "Up", "Jaws"]  # quoted commas, the year split off
    assert p.items["category"].to_list() == ["Action|Crime|Thriller", "Animation", None]
    assert p.features["modality.category"].shape == (3, 4) and p.features["mask.category"].tolist() == [
        True,
        True,
        False,
    ]
    assert p.features["mask.tags"].tolist() == [True, True, False]  # tags lower-cased: 'heist' once
    assert p.features["modality.tags"].shape == (3, 2)
    assert p.features["mask.year"].tolist() == [True, True, True]


# ---------------------------------------------------------------- recbole


def test_recbole_typed_headers_and_float_seq(tmp_path):
    src = tmp_path / "toy"
    write(
        src / "toy.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"u{u}\ti{i}\t1\t{10 * i + u}\n" for u in range(2) for i in range(4)),
    )
    write(
        src / "toy.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\temb:float_seq\n"
        + "".join(f"i{i}\tmovie number {i}\t{1990 + i}\tDrama War\t{i} {i + 1} 0.5\n" for i in range(4)),
    )
    p = run(tmp_path, "recbole", src)
    assert p.items["title"].to_list() == [f"movie number {i}" for i in range(4)]
    assert p.features["modality.emb"].shape == (4, 3)
    np.testing.assert_allclose(p.features["modality.emb"][2], [2, 3, 0.5])
    assert p.features["modality.category"].shape == (4, 2)
    assert "modality.year" in p.features
    assert p.genres == ["toy"]


# ---------------------------------------------------------------- custom


def test_custom_yaml_schema_csv_and_parquet(tmp_path):
    src = tmp_path / "c"
    write(src / "inter.csv", "uid,iid,ts\na,x,1\na,y,2\na,z,3\nb,z,1\nb,x,2\nb,y,3\n")
    pl.DataFrame(
        {
            "item_id": ["x", "y", "z"],
            "name": ["first cool item", "second cool item", None],
            "kind": ["post", "news", "post"],
        }
    ).write_parquet(src / "items.parquet")
    np.savez(src / "img.npz", ids=np.array(["x", "y"]), emb=np.eye(2))
    write(
        src / "schema.yaml",
        "interactions: {path: inter.csv, user: uid, item: iid, timestamp: ts}\n"
        "items: {path: items.parquet, item: item_id, title: name, genre: kind}\n"
        "features: {image: img.npz}\n",
    )
    p = run(tmp_path, "custom", src)
    assert p.genres == ["news", "post"]
    assert p.items["genre"].to_list() == ["post", "news", "post"]
    assert p.items["title_ok"].to_list() == [True, True, False]
    assert p.features["mask.image"].tolist() == [True, True, False]
    assert seq(p, "b") == [("z", "train"), ("x", "valid"), ("y", "test")]


def test_custom_schema_rejects_unknown_keys(tmp_path):
    write(tmp_path / "schema.yaml", "interactions: {path: a.csv, user: u, item: i, when: t}\n")
    with pytest.raises(DataSchemaError, match=r"unknown keys in 'interactions': \['when'\]"):
        run(tmp_path, "custom", tmp_path / "schema.yaml")


# ---------------------------------------------------------------- shared rules


def _custom_inter(tmp_path, rows: str):
    write(tmp_path / "c" / "inter.csv", "u,i,t\n" + rows)
    write(tmp_path / "c" / "schema.yaml", "interactions: {path: inter.csv, user: u, item: i, timestamp: t}\n")
    return tmp_path / "c"


def test_exact_duplicates_dropped_repeats_at_other_times_kept(tmp_path):
    src = _custom_inter(tmp_path, "a,x,1\na,x,1\na,y,2\na,x,3\na,z,4\n")
    p = run(tmp_path, "custom", src)
    assert p.counts["duplicates_dropped"] == 1
    assert [r for r, _ in seq(p, "a")] == ["x", "y", "x", "z"]


def test_min_and_max_seq_len(tmp_path):
    src = _custom_inter(tmp_path, "a,x,1\na,y,2\nb,x,1\nb,y,2\nb,z,3\nb,w,4\nb,v,5\n")
    p = run(tmp_path, "custom", src, max_seq_len=4)
    assert p.counts["short_users_dropped"] == 1 and p.users["raw_id"].to_list() == ["b"]
    assert [r for r, _ in seq(p, "b")] == ["y", "z", "w", "v"]  # most recent 4 kept
    assert p.counts["truncated_interactions"] == 1


def test_zero_shot_and_cold_items_never_reach_training(tmp_path):
    rows = "".join(f"u{u},i{(u * 7 + k) % 40},{k}\n" for u in range(60) for k in range(12))
    src = _custom_inter(tmp_path, rows)
    p = run(tmp_path, "custom", src, zero_shot_users=10, cold_items=0.1, seed=1)
    x = p.interactions.join(p.users.select("user", "role"), on="user")
    zs = x.filter(pl.col("role") == "zero_shot")
    assert zs["user"].n_unique() == 10
    assert set(zs["split"].unique()) == {"history", "test"}
    assert (zs.filter(pl.col("split") == "test").group_by("user").len()["len"] == schema.ZERO_SHOT_TARGETS).all()
    tr = x.filter(pl.col("role") == "train")
    assert set(tr["split"].unique()) == {"train", "valid", "test"}
    assert (tr.filter(pl.col("split") == "test").group_by("user").len()["len"] == 1).all()
    assert p.counts["cold_items_planted"] == 4
    cold = p.items.filter(pl.col("is_cold"))["item"]
    assert cold.len() >= 4
    assert tr.filter(pl.col("split") == "train")["item"].is_in(cold.implode()).sum() == 0
    # every interaction position is contiguous per user after the removal
    pos_ok = x.group_by("user").agg((pl.col("pos").sort() == pl.int_range(pl.len())).all())
    assert pos_ok[:, 1].all()
    # leave-one-out: valid/test are the user's last interactions by timestamp
    last = tr.group_by("user").agg(pl.col("split").sort_by("pos").last())
    assert (last["split"] == "test").all()


# ---------------------------------------------------------------- global time split


def test_global_time_split_by_hand(tmp_path):
    # all timestamps sorted: 1..8, 9, 9, 10, 10, 11 (13 values); "lower" quantiles at
    # 0.5 and 0.75 are the 7th and 10th values: cutoffs 7 and 9
    rows = "a,x1,1\na,x2,2\na,x3,8\na,x4,9\na,x5,10\nb,y1,3\nb,y2,4\nb,y3,5\nb,y4,6\nb,y5,7\nc,z1,9\nc,z2,10\nc,z3,11\n"
    src = _custom_inter(tmp_path, rows)
    p = run(tmp_path, "custom", src, split="global-time", split_at=(0.5, 0.75))
    assert p.counts["global_time_cutoffs"] == [7.0, 9.0]
    # a: before 7 train, first in [7, 9) valid, first at >= 9 test, the one after it dropped
    assert seq(p, "a") == [("x1", "train"), ("x2", "train"), ("x3", "valid"), ("x4", "test")]
    # b: no interaction at >= 9, so no test; 7 is the first at the valid cutoff
    assert seq(p, "b") == [("y1", "train"), ("y2", "train"), ("y3", "train"), ("y4", "train"), ("y5", "valid")]
    # c: nothing before the first cutoff, so nothing to train on or to embed: dropped
    assert p.users["raw_id"].to_list() == ["a", "b"]
    assert p.counts["users_dropped_no_train_before_cutoff"] == 1
    assert p.counts["interactions_dropped_after_target"] == 3  # a's x5, c's z2 and z3
    # no train interaction is at or after the valid cutoff: nothing from the future is trained on
    x = p.interactions.filter(pl.col("split") == "train")
    assert x["timestamp"].max() < 7.0
    assert p.interactions.group_by("user").agg((pl.col("pos").sort() == pl.int_range(pl.len())).all())[:, 1].all()


def test_global_time_split_needs_timestamps_and_targets(tmp_path):
    write(tmp_path / "m" / "seq_pairs.tsv", "u1\ta b c d\nu2\tb c d e\n")
    with pytest.raises(RecipeError, match="--split global-time: the microlens source gave no timestamps"):
        run(tmp_path, "microlens", tmp_path / "m", split="global-time")
    src = _custom_inter(tmp_path, "a,x,1\na,y,2\na,z,3\nb,x,10\nb,y,11\nb,z,12\n")
    with pytest.raises(RecipeError, match="no train-role user has a valid interaction"):
        run(tmp_path, "custom", src, split="global-time", split_at=(0.6, 0.7))
    with pytest.raises(RecipeError, match="--split-at 0.9,0.8"):
        PrepareConfig(dataset="custom", split="global-time", split_at=(0.9, 0.8))


def test_custom_row_aligned_features_and_multi_hot_categories(tmp_path):
    src = tmp_path / "c"
    write(src / "inter.csv", "uid,iid\na,x\na,y\na,z\nb,z\nb,x\nb,y\n")
    write(src / "items.csv", "item_id,category\nz,drama|crime\nx,drama\ny,\n")
    np.save(src / "text.npy", np.array([[3.0, 3.0], [1.0, 1.0], [2.0, 2.0]], dtype=np.float32))  # rows: z, x, y
    write(
        src / "schema.yaml",
        "interactions: {path: inter.csv, user: uid, item: iid}\n"
        "items: {path: items.csv, item: item_id, category: category}\n"
        "features: {text: {path: text.npy, rows: items}}\n",
    )
    p = run(tmp_path, "custom", src)
    assert p.items["raw_id"].to_list() == ["x", "y", "z"]
    assert p.features["modality.text"][:, 0].tolist() == [1.0, 2.0, 3.0]  # matched by the items file's order
    assert p.features["mask.category"].tolist() == [True, False, True]
    assert p.features["modality.category"].shape == (3, 2)  # drama, crime
    assert p.features["modality.category"].sum(axis=1).tolist() == [1.0, 0.0, 2.0]
    np.save(src / "text.npy", np.zeros((2, 2), dtype=np.float32))
    with pytest.raises(DataSchemaError, match=r"text.npy: 2 feature rows but 3 items"):
        run(tmp_path, "custom", src)
