"""Bad input: one line naming the file and the fault, exit code 2, no traceback, and an
existing good run left exactly as it was."""

import numpy as np
import pytest

from tests.conftest import folder_digest, invoke, write


def _fails(result, *fragments):
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert "Traceback" not in result.output
    assert err.startswith("error:") and err.count("\n") == 1, err
    for f in fragments:
        assert f in err, (f, err)
    return err


@pytest.fixture
def good_run(tmp_path):
    run = tmp_path / "run"
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--out", run).exit_code == 0
    return run, folder_digest(run)


def _microlens(
    tmp_path, pairs: str, titles: str = "item,title\n1,a b c\n2,d e f\n3,g h i\n", name="MicroLens-50k_pairs.tsv"
):
    src = tmp_path / "src"
    write(src / name, pairs)
    write(src / "MicroLens-50k_titles.csv", titles)
    return src


def _prepare_into(good, src, *extra):
    run, digest = good
    result = invoke("prepare", "microlens", "--source", src, "--out", run, "--force", *extra)
    assert folder_digest(run) == digest, "the existing good run changed"
    return result


def test_existing_output_refused_without_force(good_run):
    run, digest = good_run
    _fails(invoke("prepare", "synthetic", "--preset", "tiny", "--out", run), str(run / "data"), "--force")
    assert folder_digest(run) == digest


def test_missing_source_folder_and_files(tmp_path, good_run):
    _fails(
        invoke("prepare", "microlens", "--source", tmp_path / "nope", "--out", tmp_path / "r"), "nope", "no such file"
    )
    (tmp_path / "empty").mkdir()
    _fails(_prepare_into(good_run, tmp_path / "empty"), "empty", "_pairs.csv or *_pairs.tsv")
    _fails(invoke("prepare", "movielens", "--source", tmp_path / "empty", "--out", tmp_path / "r"), "u.data")
    _fails(invoke("prepare", "microlens", "--out", tmp_path / "r"), "needs --source")


def test_unparsable_row_names_line_and_skip_counts_it(tmp_path, good_run):
    src = _microlens(tmp_path, "u1\t1 2 3\nbroken line without tab\nu2\t3 2 1\n")
    _fails(_prepare_into(good_run, src), "MicroLens-50k_pairs.tsv:2", "--on-bad-rows skip")
    result = invoke("prepare", "microlens", "--source", src, "--out", tmp_path / "r2", "--on-bad-rows", "skip")
    assert result.exit_code == 0, result.output
    assert "bad rows skipped" in result.stdout


def test_bad_timestamp_in_csv(tmp_path, good_run):
    src = _microlens(tmp_path, "user,item,timestamp\n1,1,10\n1,2,yesterday\n1,3,30\n", name="MicroLens-50k_pairs.csv")
    _fails(_prepare_into(good_run, src), "MicroLens-50k_pairs.csv:3", "'yesterday'")


def test_wrong_columns_in_custom_table(tmp_path, good_run):
    src = tmp_path / "c"
    write(src / "inter.csv", "user,item,time\n1,2,3\n")
    write(src / "schema.yaml", "interactions: {path: inter.csv, user: user, item: item, timestamp: ts}\n")
    run, digest = good_run
    _fails(invoke("prepare", "custom", "--source", src, "--out", run, "--force"), "inter.csv", "missing columns ['ts']")
    assert folder_digest(run) == digest


def test_non_utf8_text_names_the_line(tmp_path, good_run):
    src = _microlens(tmp_path, "1\t1 2 3\n", titles="item,title\n1,a b c\n2,caf\xe9 au lait\n")
    (src / "MicroLens-50k_titles.csv").write_bytes("item,title\n1,a b c\n2,caf\xe9 au lait\n".encode("latin-1"))
    _fails(_prepare_into(good_run, src), "MicroLens-50k_titles.csv:3", "not valid UTF-8")


def test_users_below_min_length_are_dropped_and_counted(tmp_path):
    src = _microlens(tmp_path, "1\t1 2 3\n2\t1 2\n3\t3 2 1\n")
    result = invoke("prepare", "microlens", "--source", src, "--out", tmp_path / "r", "--text-encoder", "none")
    assert result.exit_code == 0, result.output
    assert "users below --min-seq-len dropped" in result.stdout
    _fails(
        invoke("prepare", "microlens", "--source", src, "--out", tmp_path / "r", "--force", "--min-seq-len", "9"),
        "--min-seq-len 9",
    )


def _features(tmp_path, **files):
    src = _microlens(tmp_path, "1\t1 2 3\n2\t3 2 1\n")
    (src / "features").mkdir()
    for name, (ids, emb) in files.items():
        np.savez(src / "features" / f"{name}.npz", ids=np.array(ids), emb=np.array(emb, dtype=np.float32))
    return src


def test_nan_in_features(tmp_path, good_run):
    src = _features(tmp_path, image=([1, 2], [[1.0, np.nan], [1.0, 2.0]]))
    _fails(_prepare_into(good_run, src, "--text-encoder", "none"), "image.npz", "NaN or inf", "item 1")
    ok = invoke(
        "prepare",
        "microlens",
        "--source",
        src,
        "--out",
        tmp_path / "r",
        "--text-encoder",
        "none",
        "--on-bad-rows",
        "skip",
    )
    assert ok.exit_code == 0, ok.output


def test_feature_rows_for_unknown_items(tmp_path, good_run):
    src = _features(tmp_path, image=([1, 99], [[1.0, 2.0], [3.0, 4.0]]))
    _fails(_prepare_into(good_run, src, "--text-encoder", "none"), "image.npz", "unknown item '99'")


def test_dimension_mismatch_between_feature_files(tmp_path, good_run):
    src = _features(tmp_path, **{"image.part1": ([1], [[1.0, 2.0]]), "image.part2": ([2], [[1.0, 2.0, 3.0]])})
    _fails(_prepare_into(good_run, src, "--text-encoder", "none"), "image.part2.npz", "dimension 3", "2 in")


def test_bad_flag_combinations_fail_first(tmp_path):
    _fails(
        invoke("prepare", "microlens", "--preset", "tiny", "--source", tmp_path, "--out", tmp_path / "r"), "--preset"
    )
    _fails(invoke("prepare", "synthetic", "--source", tmp_path, "--out", tmp_path / "r"), "--source")
    _fails(invoke("prepare", "nonsense", "--out", tmp_path / "r"), "unknown dataset 'nonsense'")
    _fails(invoke("prepare", "synthetic", "--cold-items", "1.5", "--out", tmp_path / "r"), "--cold-items 1.5")
    assert not (tmp_path / "r").exists()


def test_failure_while_writing_keeps_the_old_run(good_run, monkeypatch):
    from mufasa_cli import artifacts

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(artifacts, "save_tensors", boom)
    run, digest = good_run
    result = invoke("prepare", "synthetic", "--preset", "tiny", "--seed", "5", "--out", run, "--force")
    assert result.exit_code == 1 and "internal error: OSError: disk full" in result.stderr
    assert folder_digest(run) == digest
    assert sorted(p.name for p in run.iterdir()) == [".lock", "data"]  # no temp folder left


def test_debug_shows_the_traceback(tmp_path):
    result = invoke("--debug", "prepare", "microlens", "--source", tmp_path / "nope", "--out", tmp_path / "r")
    assert result.exit_code == 2 and "Traceback" in result.output


def test_global_time_split_on_an_order_only_source_keeps_the_old_run(tmp_path, good_run):
    src = _microlens(tmp_path, "u1\t1 2 3\nu2\t2 3 1\n")
    _fails(_prepare_into(good_run, src, "--split", "global-time"), "--split global-time", "no timestamps")
    _fails(_prepare_into(good_run, src, "--split", "global-time", "--split-at", "0.8"), "--split-at '0.8'")
    _fails(_prepare_into(good_run, src, "--split", "global-time", "--split-at", "0.9,0.2"), "--split-at 0.9,0.2")


# ---------------------------------------------------------------- custom sources: empty tables, schema types


def _custom(tmp_path, schema: str, inter: str | None = "user,item,ts\nu1,i1,1\n", name="c"):
    src = tmp_path / name
    if inter is not None:
        write(src / "inter.csv", inter)
    write(src / "schema.yaml", schema)
    return src


SCHEMA = "interactions: {path: inter.csv, user: user, item: item, timestamp: ts}\n"


@pytest.mark.parametrize("policy", ["fail", "skip"])
def test_an_empty_interaction_table_is_named(tmp_path, good_run, policy):
    run, digest = good_run
    src = _custom(tmp_path, SCHEMA, "user,item,ts\n")
    args = ("prepare", "custom", "--source", src, "--out", run, "--force", "--on-bad-rows", policy)
    _fails(invoke(*args), "inter.csv: no interactions to read")
    import polars as pl

    empty = pl.DataFrame({"user": [], "item": []}, schema={"user": pl.String, "item": pl.String})
    empty.write_parquet(src / "inter.parquet")
    write(src / "schema.yaml", "interactions: {path: inter.parquet, user: user, item: item}\n")
    _fails(invoke(*args), "inter.parquet: no interactions to read")
    # every row bad and skipped: the same, with the count
    write(src / "inter.csv", "user,item,ts\nu1,i1,x\nu2,i2,y\n")
    write(src / "schema.yaml", SCHEMA)
    if policy == "skip":
        _fails(invoke(*args), "inter.csv: no interactions to read (2 bad rows skipped)")
    assert folder_digest(run) == digest


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            "interactions: {path: [inter.csv], user: user, item: item}",
            "interactions.path must be a column name or file path (one string), got a list",
        ),
        (
            "interactions: {path: inter.csv, user: [a, b], item: item}",
            "interactions.user must be a column name or file path (one string), got a list",
        ),
        (
            "interactions: {path: inter.csv, user: user, item: item, user: u}",
            "not valid YAML (line 1, column 57: key 'user' appears twice",
        ),
        (
            "interactions: {path: inter.csv, user: user, item: item}\nfeatures:\n  image:\n",
            "features.image must be a column name or file path (one string), got nothing",
        ),
        ("interactions: {path: 123, user: user, item: item}", "123: file not found (interactions)"),
        ("interactions: {path: inter.csv, user: user, item: item}\nitems: [a]\n", "'items' must be a mapping"),
    ],
)
def test_custom_schema_values_are_type_checked(tmp_path, good_run, schema, message):
    run, digest = good_run
    src = _custom(tmp_path, schema + "\n")
    _fails(
        invoke("prepare", "custom", "--source", src, "--out", run, "--force"),
        "schema.yaml" if "123" not in message else "",
        message,
    )
    assert folder_digest(run) == digest


def test_custom_timestamp_error_names_the_line_and_long_titles_read(tmp_path):
    inter = "user,item,ts\n" + "".join(f"u{u},i{i},{i}\n" for u in range(4) for i in range(4))
    src = _custom(
        tmp_path, SCHEMA + "items: {path: items.csv, item: item, title: title}\n", inter + "u9,i1,yesterday\n"
    )
    long_title = "word " * 40_000  # 200,000 characters: over the csv module's default field limit
    write(src / "items.csv", f'item,title\ni0,"{long_title}"\ni1,a b c\ni2,d e f\ni3,g h i\n')
    out = tmp_path / "r"
    _fails(
        invoke("prepare", "custom", "--source", src, "--out", out, "--text-encoder", "none"),
        "inter.csv:18: timestamp 'yesterday'",
    )
    result = invoke(
        "prepare", "custom", "--source", src, "--out", out, "--text-encoder", "none", "--on-bad-rows", "skip"
    )
    assert result.exit_code == 0, result.output


def test_a_one_item_catalogue_is_refused(tmp_path):
    src = _custom(
        tmp_path,
        "interactions: {path: inter.csv, user: user, item: item}\n",
        "user,item\n" + "u1,i0\n" * 3 + "u2,i0\n" * 3,
    )
    _fails(invoke("prepare", "custom", "--source", src, "--out", tmp_path / "r"), "inter.csv", "at least 2 items")
    assert not (tmp_path / "r" / "data").exists()


def test_negative_prepare_seed(tmp_path):
    _fails(
        invoke("prepare", "synthetic", "--preset", "tiny", "--seed", "-1", "--out", tmp_path / "r"),
        "--seed -1: must be >= 0",
    )


def test_no_titles_at_all_warns_and_turns_the_anchor_off(tmp_path):
    pytest.importorskip("sentence_transformers")
    inter = "user,item\n" + "".join(f"u{u},i{(i + u) % 5}\n" for u in range(6) for i in range(4))
    src = _custom(
        tmp_path,
        "interactions: {path: inter.csv, user: user, item: item}\nitems: {path: items.csv, item: item, title: title}\n",
        inter,
    )
    write(src / "items.csv", "item,title\n" + "".join(f"i{i},\n" for i in range(5)))
    result = invoke("prepare", "custom", "--source", src, "--out", tmp_path / "r", "--text-encoder", "minilm")
    assert result.exit_code == 0, result.output
    assert "warning: no item has a title: no title anchor" in result.stderr
    from safetensors.numpy import load_file

    assert "title" not in load_file(tmp_path / "r" / "data" / "features.safetensors")
