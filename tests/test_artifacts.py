import json

import numpy as np
import polars as pl
import pytest

from mufasa_cli import artifacts
from mufasa_cli.errors import ArtifactError


def _make_stage(run, name="data", value=1.0, force=False, inputs=None):
    with artifacts.stage_writer(run / name, force=force) as tmp:
        artifacts.save_tensors(tmp / "t.safetensors", {"x": np.full((3, 2), value, dtype=np.float32)})
        artifacts.save_table(tmp / "t.parquet", pl.DataFrame({"a": [1, 2, 3]}))
        artifacts.write_manifest(
            tmp, stage=name, config={"k": value}, seed=0, inputs=inputs or {}, counts={"n": 3}, wall_time_s=0.1
        )
    return run / name


def test_atomic_write_bytes_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.json"
    artifacts.atomic_write_json(p, {"a": 1})
    artifacts.atomic_write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [f.name for f in tmp_path.iterdir()] == ["f.json"]


def test_manifest_records_outputs_with_sha_and_shapes(tmp_path):
    stage = _make_stage(tmp_path)
    m = artifacts.verify_stage(stage)
    assert m["stage"] == "data" and m["format_version"] == artifacts.FORMAT_VERSION
    assert m["seed"] == 0 and m["counts"] == {"n": 3} and m["config"] == {"k": 1.0}
    assert m["outputs"]["t.safetensors"]["tensors"]["x"] == {"dtype": "float32", "shape": [3, 2]}
    assert m["outputs"]["t.parquet"]["sha256"] == artifacts.sha256_file(stage / "t.parquet")
    assert "tool_version" in m and "wall_time_s" in m


def test_existing_stage_refused_without_force(tmp_path):
    _make_stage(tmp_path)
    with pytest.raises(ArtifactError, match="already exists; pass --force"):
        _make_stage(tmp_path, value=2.0)


def test_failed_stage_leaves_previous_folder_untouched(tmp_path):
    stage = _make_stage(tmp_path)
    before = {p.name: p.read_bytes() for p in stage.iterdir()}
    with pytest.raises(RuntimeError):
        with artifacts.stage_writer(stage, force=True) as tmp:
            (tmp / "t.parquet").write_bytes(b"half")
            raise RuntimeError("killed mid-stage")
    assert {p.name: p.read_bytes() for p in stage.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no temp folder left behind


def test_force_replaces_whole_folder(tmp_path):
    stage = _make_stage(tmp_path)
    (stage / "stray.txt").write_text("old")
    _make_stage(tmp_path, value=2.0, force=True)
    assert not (stage / "stray.txt").exists()
    assert artifacts.load_tensors(stage / "t.safetensors", {"x": ("float32", (3, 2))})["x"][0, 0] == 2.0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_sha_mismatch_and_missing_file_name_the_path(tmp_path):
    stage = _make_stage(tmp_path)
    (stage / "t.parquet").write_bytes(b"corrupt")
    with pytest.raises(ArtifactError, match=r"t\.parquet: sha256 mismatch"):
        artifacts.verify_stage(stage)
    (stage / "t.parquet").unlink()
    with pytest.raises(ArtifactError, match=r"t\.parquet: missing"):
        artifacts.verify_stage(stage)
    with pytest.raises(ArtifactError, match=r"manifest\.json: missing"):
        artifacts.read_manifest(tmp_path / "fuse")


def test_load_tensors_checks_dtype_shape_and_named_dims(tmp_path):
    p = tmp_path / "a.safetensors"
    artifacts.save_tensors(p, {"x": np.zeros((4, 3), np.float32), "m": np.zeros(5, bool)})
    dims: dict = {}
    artifacts.load_tensors(p, {"x": ("float32", ("N", 3))}, dims)
    assert dims == {"N": 4}
    with pytest.raises(ArtifactError, match="'m' has shape"):
        artifacts.load_tensors(p, {"m": ("bool", ("N",))}, dims)
    with pytest.raises(ArtifactError, match="'x' has dtype float32, expected int64"):
        artifacts.load_tensors(p, {"x": ("int64", (None, None))})
    with pytest.raises(ArtifactError, match="'y' missing"):
        artifacts.load_tensors(p, {"y": ("float32", (None,))})
    p.write_bytes(b"\x00garbage")
    with pytest.raises(ArtifactError, match="unreadable safetensors"):
        artifacts.load_tensors(p, {})


def test_load_table_checks_columns_and_dtypes(tmp_path):
    p = tmp_path / "t.parquet"
    artifacts.save_table(p, pl.DataFrame({"a": [1, 2]}))
    assert artifacts.load_table(p, {"a": pl.Int64}).height == 2
    with pytest.raises(ArtifactError, match="column 'b' missing"):
        artifacts.load_table(p, {"b": pl.Int64})
    with pytest.raises(ArtifactError, match="column 'a' has dtype Int64, expected String"):
        artifacts.load_table(p, {"a": pl.String})


def test_stale_input_detected_after_upstream_rebuild(tmp_path):
    data = _make_stage(tmp_path, "data")
    fuse = _make_stage(tmp_path, "fuse", inputs={"data": artifacts.input_record(data)})
    artifacts.check_not_stale(fuse)  # fresh
    _make_stage(tmp_path, "data", value=5.0, force=True)
    with pytest.raises(ArtifactError, match=r"fuse is stale: .*data \(data\) was rebuilt"):
        artifacts.check_not_stale(fuse)
