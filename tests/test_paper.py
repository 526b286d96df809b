"""recipes/paper.sh on tiny synthetic: every table is printed."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_paper_sh_prints_every_table_on_tiny_synthetic(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "fuse:\n  cf: {train: {epochs: 2}}\n  mfl: {train: {epochs: 1}}\nalign:\n  train: {epochs: 1}\n  train_all: {epochs: 1}\n"
        "baselines:\n  sasrec: {max_len: 10, train: {epochs: 1}}\n  dssm: {train: {epochs: 1}}\n"
        "  youtube: {max_len: 10, train: {epochs: 1}}\n  mmgcn: {train: {epochs: 1}}\n"
    )
    env = {**os.environ, "PRESET": "tiny", "RECIPE": str(recipe), "HISTORY_LEN": "8,full", "COLUMNS": "200"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    out = subprocess.run(
        ["bash", str(ROOT / "recipes" / "paper.sh"), "synthetic", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for text in (
        "Table 1",
        "loo: ",
        "zero-shot: ",
        "SASRec-",
        "MMGCN-",
        "Table 5",
        "w/o MFL",
        "w/o L_fuscl",
        "Table 6",
        "8 / full",
    ):
        assert text in out.stdout, text


def test_paper_sh_refuses_an_unknown_dataset(tmp_path):
    out = subprocess.run(
        ["bash", str(ROOT / "recipes" / "paper.sh"), "imagenet"], capture_output=True, text=True, cwd=tmp_path
    )
    assert out.returncode == 2 and "unknown dataset 'imagenet'" in out.stderr
