"""`mufasa ablate`: the paper's Table 5. Each `--without X` re-runs only the stages X touches,
in RUN/ablate/w-o-X/, with the untouched upstream stages linked from RUN (symbolic links,
so nothing is copied and the staleness checks see the same manifests), then embeds and
evaluates the variant with the same protocol as the full model (RUN itself).

- title, cf, cons, fuscl: fuse-train without that MFL loss (LightGCN reused from RUN/fuse),
  then align-train, embed.
- mfl: no fusion layer. z = the first d principal components of the concatenated raw modality
  vectors (each modality standardised; d = the MFL width), as fuse-train's "concat + PCA"
  diagnostic, then align-train, embed.
- sal: the SAL replaced by mean pooling of the history (`--attention mean`), then embed.
- window, block, selective: align-train `--without` that branch, then embed.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from mufasa_cli import artifacts
from mufasa_cli.config import LOSS_NAMES, AlignConfig, Recipe, saved_as
from mufasa_cli.errors import MufasaError
from mufasa_cli.mfl.train import FUSED_FILE
from mufasa_cli.mfl.train import run as fuse_run
from mufasa_cli.runtime.loop import OnStep
from mufasa_cli.sal.embed import run_embed
from mufasa_cli.sal.train import run_align

ABLATIONS = ("mfl", "sal", "window", "block", "selective", *LOSS_NAMES)
LABELS = {
    "mfl": "w/o MFL",
    "sal": "w/o SAL",
    **{b: f"w/o {b} attention" for b in ("window", "block", "selective")},
    **{x: f"w/o L_{x}" for x in LOSS_NAMES},
}


def variant_name(x: str) -> str:
    return f"w-o-{x}"


def history_variant_name(history_len: int | None, attention: str) -> str:
    return f"len-{history_len or 'full'}-{attention}"


def default_protocol(run_dir: Path) -> str:
    """zero-shot (the paper's Table 5) when the run holds zero-shot users, else loo (real data
    is prepared without them unless --zero-shot-users asks)."""
    from mufasa_cli.data import schema

    try:
        users = artifacts.load_table(run_dir / "data" / schema.USERS_FILE, schema.USER_COLUMNS)
    except MufasaError:
        return "zero-shot"  # the stage reports what is missing
    return "zero-shot" if (users["role"] == "zero_shot").any() else "loo"


def full_model_seed(run_dir: Path) -> int:
    """The seed RUN/align was trained with (the variants train with it too), else 0."""
    try:
        seed = artifacts.read_manifest(run_dir / "align").get("seed")
    except MufasaError:
        return 0
    return seed if isinstance(seed, int) else 0


def _link(target: Path, link: Path) -> None:
    link.symlink_to(Path("..") / ".." / target.name, target_is_directory=True)


def raw_projection(run_dir: Path, dim: int) -> np.ndarray:
    """z without the MFL: the fuse diagnostics' "concat + PCA" representation (each modality
    standardised over the items that have it, absent ones zero, concatenated, PCA to dim)."""
    from mufasa_cli.mfl.diagnostics import projected_concat
    from mufasa_cli.mfl.train import load_data

    data = load_data(run_dir)
    z = projected_concat(data.modalities, data.present, dim).astype(np.float32)
    return np.pad(z, ((0, 0), (0, dim - z.shape[1]))) if z.shape[1] < dim else z


def write_raw_fuse(run_dir: Path, variant: Path, dim: int) -> None:
    started = time.perf_counter()
    z = raw_projection(run_dir, dim)
    with artifacts.stage_writer(variant / "fuse", force=True) as tmp:
        artifacts.save_tensors(tmp / FUSED_FILE, {"z": z})
        artifacts.write_manifest(
            tmp,
            stage="fuse",
            config={"ablation": "w/o MFL: PCA of the standardised concatenated raw modality vectors", "dim": dim},
            seed=None,
            inputs={"data": artifacts.input_record(variant / "data")},
            counts={"items": len(z)},
            wall_time_s=time.perf_counter() - started,
        )


def build_variant(
    run_dir: Path, x: str, recipe: Recipe, *, seed: int, device: torch.device, on_step: OnStep | None
) -> Path:
    """RUN/ablate/w-o-X/ with data/ (and fuse/ when untouched) linked, the touched stages rebuilt."""
    variant = run_dir / "ablate" / variant_name(x)
    shutil.rmtree(variant, ignore_errors=True)
    variant.mkdir(parents=True)
    _link(run_dir / "data", variant / "data")
    align = recipe.align
    if x in LOSS_NAMES:
        shutil.copytree(run_dir / "fuse", variant / "fuse")  # its LightGCN is reused, its MFL retrained
        mfl = dataclasses.replace(recipe.fuse.mfl, without=tuple(sorted({*recipe.fuse.mfl.without, x})))
        fuse_cfg = dataclasses.replace(recipe.fuse, mfl=mfl)
        fuse_run(
            variant, fuse_cfg, seed=seed, device=device, retrain_cf=False, resume=False, force=True, on_step=on_step
        )
    elif x == "mfl":
        write_raw_fuse(run_dir, variant, recipe.fuse.mfl.d_model)
    else:
        _link(run_dir / "fuse", variant / "fuse")
        if x == "sal":
            align = dataclasses.replace(align, sal=dataclasses.replace(align.sal, attention="mean", without=()))
        else:
            without = tuple(sorted({*align.sal.without, x}))
            align = dataclasses.replace(align, sal=dataclasses.replace(align.sal, without=without))
    run_align(variant, align, seed=seed, device=device, resume=False, force=True, on_step=on_step)
    run_embed(variant, device=device, force=True)
    return variant


def trained_as(run_dir: Path, align: AlignConfig, seed: int) -> bool:
    """Whether RUN/align/ (and the embed/ made from it) was trained with exactly these settings."""
    try:
        manifest = artifacts.read_manifest(run_dir / "align")
        artifacts.check_not_stale(run_dir / "align", run_dir)
        artifacts.check_not_stale(run_dir / "embed", run_dir)
    except MufasaError:
        return False
    return manifest.get("seed") == seed and saved_as(align, manifest.get("config"), str(run_dir / "align"))


def build_history_variant(
    run_dir: Path, history_len: int | None, attention: str, recipe: Recipe, *, seed: int, device, on_step
) -> Path:
    """Table 6: the SAL with histories cut to `history_len` (None = the recipe's max_len) and
    the given attention, in RUN/ablate/len-L-ATTENTION/ (data/ and fuse/ linked). The cell
    that RUN's own align-train already trained (same settings and seed) is RUN itself."""
    sal = dataclasses.replace(recipe.align.sal, attention=attention, max_len=history_len or recipe.align.sal.max_len)
    align = dataclasses.replace(recipe.align, sal=sal)
    if trained_as(run_dir, align, seed):
        return run_dir
    variant = run_dir / "ablate" / history_variant_name(history_len, attention)
    shutil.rmtree(variant, ignore_errors=True)
    variant.mkdir(parents=True)
    _link(run_dir / "data", variant / "data")
    _link(run_dir / "fuse", variant / "fuse")
    run_align(
        variant,
        align,
        seed=seed,
        device=device,
        resume=False,
        force=True,
        on_step=on_step,
    )
    run_embed(variant, device=device, force=True)
    return variant


def check_ablations(withouts: list[str]) -> None:
    bad = [x for x in withouts if x not in ABLATIONS]
    if bad:
        raise MufasaError(f"--without {bad[0]!r}: choose from {', '.join(ABLATIONS)}")
    if not withouts:
        raise MufasaError("--without: name at least one part to remove")
    twice = sorted({x for x in withouts if withouts.count(x) > 1})
    if twice:
        raise MufasaError(f"--without {twice[0]!r}: named more than once")


def ablation_record(protocol: str, full: dict, table5: list[tuple[str, dict]], table6: list[tuple[str, dict]]) -> dict:
    """What RUN/ablate/tables-PROTOCOL.json holds, everything `mufasa report` needs: each row's
    mean metrics, the full model's, and each row's two-sided paired t-test against the full
    model over the same users (eval results of RUN and of each variant)."""
    from mufasa_cli.eval.run import paired_p
    from mufasa_cli.eval.tables import table_columns

    cols = table_columns(full)
    ours = full["per_user"]["mufasa"]

    def p_values(result: dict) -> dict[str, float]:
        theirs = result["per_user"]["mufasa"]
        if result["users"] != full["users"]:  # not the same cases: no paired test
            return {}
        return {c: paired_p(np.asarray(theirs[c]), np.asarray(ours[c]), "ttest") for c in cols}

    record: dict = {"protocol": protocol, "test": "ttest", "columns": cols, "full": full["models"]["mufasa"]["mean"]}
    record["p_values"] = {}
    for key, rows in (("table5", table5), ("table6", table6)):
        if rows:
            record[key] = {label: r["models"]["mufasa"]["mean"] for label, r in rows}
            record["p_values"][key] = {label: p_values(r) for label, r in rows}
    return record
