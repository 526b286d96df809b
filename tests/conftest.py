"""Shared fixtures: a CLI runner, the real data folder, and small file builders."""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mufasa_cli.cli.app import app

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
# the paper's model exactly; align-train without a recipe trains the general configuration
PAPER = Path(__file__).resolve().parents[1] / "recipes" / "paper-faithful.yaml"


def invoke(*args: str):
    """Run the CLI in-process; returns click's Result (exit_code, stdout, stderr, output)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def load_benchmark(name: str):
    """benchmarks/NAME.py as a module (the benchmark scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def folder_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Title-vector cache in a temp folder: tests never read or fill the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MUFASA_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A prepared `synthetic --preset tiny` run, shared read-only by tests."""
    run = tmp_path_factory.mktemp("tiny") / "run"
    result = invoke("prepare", "synthetic", "--preset", "tiny", "--out", run)
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="session")
def fused_tiny(tmp_path_factory) -> Path:
    """A `synthetic --preset tiny` run through fuse-train (2 MFL, 5 LightGCN epochs); tests copy
    it before changing anything."""
    run = tmp_path_factory.mktemp("fused") / "run"
    assert invoke("prepare", "synthetic", "--preset", "tiny", "--out", run).exit_code == 0
    assert invoke("fuse-train", run, "--epochs", "2", "--cf-epochs", "5").exit_code == 0
    return run
