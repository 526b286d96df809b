"""The `mufasa` command line: one small function per stage; the work happens in the stages."""

from __future__ import annotations

import functools
import os
import traceback
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from mufasa_cli import __version__
from mufasa_cli.cli import render
from mufasa_cli.errors import MufasaError

app = typer.Typer(
    name="mufasa",
    help=(
        "MUFASA for long sequential recommendation: prepare a dataset, train the Multimodal "
        "Fusion Layer and the Sparse Attention-based Alignment layer, export embeddings, "
        "evaluate. Each stage reads and writes one run folder."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

_state = {"debug": False}


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: the stage's temp folder is removed, the message printed."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


F = TypeVar("F", bound=Callable)


def _guarded(fn: F) -> F:
    """Bad input -> one red line, exit 2; a bug -> one line, exit 1; tracebacks only with --debug."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MufasaError as e:
            if _state["debug"]:
                traceback.print_exc()
            render.error_line(str(e))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt as e:
            what, code = ("terminated (SIGTERM)", 143) if isinstance(e, Terminated) else ("interrupted", 130)
            render.error_line(
                f"{what}; artifacts written before this stage are untouched (--resume continues a training)"
            )
            raise typer.Exit(code) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as e:  # noqa: BLE001 - the last resort: a bug, reported in one line
            if _state["debug"]:
                traceback.print_exc()
            render.error_line(f"internal error: {type(e).__name__}: {e} (run with --debug for the traceback)")
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def _recipe(run: Path, recipe: list[Path] | None, sections: tuple[str, ...], sets: list[str] | None = None):
    """The recipe eval or ablate uses on RUN (config.recipe_for_run, then --set), its notice printed."""
    from mufasa_cli.config import RUN_RECIPE, apply_sets, recipe_for_run

    chosen, notice = recipe_for_run(run, [str(r) for r in recipe] if recipe else None, sections)
    chosen = apply_sets(chosen, sets)
    if notice:
        render.notice_line(notice)
    elif not recipe and (run / RUN_RECIPE).is_file():
        render.notice_line(f"using the recipe {run / RUN_RECIPE} records (pass --recipe to train otherwise)")
    return chosen


def _record_recipe(run: Path, used, section: str, command: str, given: bool) -> None:
    """RUN/recipe.yaml after `command` trained `section` with `used` (config.merged_for_record)."""
    from mufasa_cli import artifacts
    from mufasa_cli.config import RUN_RECIPE, merged_for_record, recipe_yaml

    header = (
        f"The settings this run's stages trained with (last written by mufasa {command}).\n"
        "eval, ablate and re-runs of a stage use them unless given --recipe."
    )
    artifacts.atomic_write_bytes(
        run / RUN_RECIPE, recipe_yaml(merged_for_record(run, used, section, given), header).encode()
    )


def _train_locked(run: Path, stage: str, resume: bool, train: Callable, used, given: bool) -> dict:
    """A training stage (fuse or align) under the run lock: warn when a leftover checkpoint is
    discarded, train with a progress bar (train(on_step) returns the manifest, {} on ranks
    other than 0), then record `used` in RUN/recipe.yaml."""
    from mufasa_cli.artifacts import run_lock

    command = f"{stage}-train"
    with run_lock(run, command):
        _discard_notice([run / f".{stage}.ckpt"], resume)
        with render.progress() as on_progress:
            manifest = train(render.training_progress(on_progress))
        if manifest:
            _record_recipe(run, used, stage, command, given)
    return manifest


def _discard_notice(checkpoints: list[Path], resume: bool) -> None:
    """Without --resume a stage starts over and drops an interrupted run's checkpoint: say so."""
    if resume:
        return
    for ckpt in checkpoints:
        if ckpt.is_dir() and any(ckpt.iterdir()):
            render.warning_line(
                f"starting over: the checkpoint of an interrupted run in {ckpt} is discarded (--resume continues it)"
            )


def _version(value: bool) -> None:
    if value:
        render.out.print(f"mufasa {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", envvar="MUFASA_DEBUG", help="Show full tracebacks on errors.")
    ] = False,
) -> None:
    _state["debug"] = debug
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 prints (errors excepted)
        render.out.quiet, render.show_progress = True, False


class Preset(StrEnum):
    tiny = "tiny"
    small = "small"
    default = "default"
    large = "large"


class TextEncoder(StrEnum):
    minilm = "minilm"
    none = "none"
    synthetic = "synthetic"


class OnBadRows(StrEnum):
    fail = "fail"
    skip = "skip"


class Split(StrEnum):
    loo = "loo"
    global_time = "global-time"


@app.command()
@_guarded
def prepare(
    dataset: Annotated[
        str,
        typer.Argument(
            help="synthetic (alias mixed-genre), microlens, movielens, recbole or custom.", show_default=False
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Run folder; data/ is written inside it. (default: runs/DATASET)")
    ] = None,
    source: Annotated[
        list[Path] | None,
        typer.Option(
            "--source",
            help="Downloaded files: a folder (or a .inter / schema.yaml file). Repeatable for microlens, first folder wins per kind of file.",
        ),
    ] = None,
    preset: Annotated[
        Preset | None,
        typer.Option(
            help="synthetic size: tiny (tests), small (recipes/paper.sh's quick run), default (quickstart), large (benchmarks). (default: default)"
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed for generation and sampling (same seed, same bytes).")] = 0,
    min_seq_len: Annotated[int, typer.Option(help="Drop users with fewer interactions (>= 3).")] = 3,
    max_seq_len: Annotated[int | None, typer.Option(help="Keep each user's most recent N interactions.")] = None,
    text_encoder: Annotated[
        TextEncoder | None,
        typer.Option(
            help="Title anchor: minilm (all-MiniLM-L6-v2, offline; needs the 'text' extra), none (title losses off), synthetic (the generator's own vectors). (default: synthetic for synthetic, else minilm when installed)"
        ),
    ] = None,
    cold_items: Annotated[
        float,
        typer.Option(help="Share of items held out as cold: their train interactions are removed, valid/test kept."),
    ] = 0.0,
    zero_shot_users: Annotated[
        int | None,
        typer.Option(
            help="Users held out of all training; their last 3 interactions are targets. (default: 200 for synthetic, 0 otherwise)"
        ),
    ] = None,
    on_bad_rows: Annotated[
        OnBadRows, typer.Option(help="fail on the first malformed row, or skip and count them.")
    ] = OnBadRows.fail,
    min_title_tokens: Annotated[
        int,
        typer.Option(
            help="Titles with fewer word tokens are not title_ok (kept out of the title losses); short movie titles may want 1."
        ),
    ] = 3,
    split: Annotated[
        Split,
        typer.Option(
            help="loo: each user's last interaction is test, the one before valid. global-time: two global time "
            "cutoffs (--split-at); before the first is train, a user's first interaction after each cutoff is "
            "valid / test (leakage-free; needs real timestamps)."
        ),
    ] = Split.loo,
    split_at: Annotated[
        str, typer.Option(help="global-time: the valid and test cutoffs as quantiles of all train users' timestamps.")
    ] = "0.8,0.9",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing RUN/data.")] = False,
) -> None:
    """Read a dataset into RUN/data/ and print Table 1.

    Deduplicates, filters short users, splits, embeds titles and writes items, interactions,
    users and features."""
    from mufasa_cli.config import PrepareConfig, canonical_dataset
    from mufasa_cli.data.prepare import resolve_text_encoder, run

    name = canonical_dataset(dataset)
    encoder, warning = resolve_text_encoder(name, text_encoder.value if text_encoder else None)
    if warning:
        render.warning_line(warning)
    cfg = PrepareConfig(
        dataset=name,
        sources=tuple(str(s) for s in source or ()),
        preset=preset.value if preset else None,
        seed=seed,
        min_seq_len=min_seq_len,
        max_seq_len=max_seq_len,
        text_encoder=encoder,
        cold_items=cold_items,
        zero_shot_users=zero_shot_users,
        on_bad_rows=on_bad_rows.value,
        min_title_tokens=min_title_tokens,
        split=split.value,
        split_at=_parse_floats(split_at, "--split-at", "0.8,0.9", n=2),
    )
    from mufasa_cli.artifacts import run_lock

    run_dir = out if out is not None else Path("runs") / name
    with run_lock(run_dir, "prepare", create=True), render.progress() as on_progress:
        manifest, prepared = run(cfg, run_dir, force=force, on_progress=on_progress)
    for message in prepared.counts.get("warnings", []):
        render.warning_line(message)
    label = dataset if name != "synthetic" else f"synthetic ({cfg.preset or 'default'})"
    render.prepare_summary(label, prepared.counts, manifest)
    render.out.print(f"wrote {run_dir / 'data'}")


SET_OPTION = typer.Option(
    "--set",
    help="Any recipe setting as section.key=value, e.g. align.sal.block_size=16 or "
    "baselines.sasrec.train.lr=1e-3 (repeatable). Applied after --recipe; the flags here override it.",
)


@app.command("fuse-train")
@_guarded
def fuse_train(
    run: Annotated[Path, typer.Argument(help="Run folder with data/ (from mufasa prepare).")],
    recipe: Annotated[
        list[Path] | None,
        typer.Option(
            help="Recipe YAML (section fuse: cf, mfl); flags below override it. Repeat to layer recipes: later files override earlier ones. "
            "What the stage used (flags included) is recorded in RUN/recipe.yaml for eval and ablate."
        ),
    ] = None,
    set_: Annotated[list[str] | None, SET_OPTION] = None,
    epochs: Annotated[int | None, typer.Option(help="MFL epochs (upper bound; early stopping may end sooner).")] = None,
    cf_epochs: Annotated[int | None, typer.Option(help="LightGCN epochs (upper bound).")] = None,
    lr: Annotated[float | None, typer.Option(help="MFL learning rate.")] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="MFL batch size: the in-batch negatives of eqs. 1 and 4.")
    ] = None,
    loss_weights: Annotated[
        str | None,
        typer.Option(help="a,b,c,d: weights of L_title, L_cf, L_cons, L_fus-cl (eq. 5). (default: 0.5,0.25,0.15,0.1)"),
    ] = None,
    without: Annotated[
        list[str] | None,
        typer.Option(help="Switch a loss off: title, cf, cons or fuscl (repeatable, or comma-separated)."),
    ] = None,
    tau: Annotated[float | None, typer.Option(help="Temperature of eqs. 1 and 4.")] = None,
    sigma: Annotated[float | None, typer.Option(help="Std of the Gaussian perturbation in eq. 4.")] = None,
    modality_dropout: Annotated[
        float | None, typer.Option(help="Drop each present modality with this probability while training.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same result on CPU.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    retrain_cf: Annotated[
        bool, typer.Option("--retrain-cf", help="Train LightGCN again even if fuse/cf.safetensors fits this data.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from its last epoch checkpoint.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing RUN/fuse.")] = False,
) -> None:
    """Train LightGCN and the Multimodal Fusion Layer into RUN/fuse/.

    Writes the fused vector z of every item, the losses and the fusion diagnostics."""
    _check_seed(seed)
    import dataclasses

    from mufasa_cli.config import apply_sets, load_recipe
    from mufasa_cli.mfl.train import run as fuse_run
    from mufasa_cli.runtime.device import resolve_device

    full = apply_sets(load_recipe([str(r) for r in recipe] if recipe else None), set_)
    cfg = full.fuse
    mfl, cf = cfg.mfl, cfg.cf
    changes: dict = {"train": _replace_given(mfl.train, epochs=epochs, lr=lr, batch_size=batch_size)}
    if loss_weights is not None:
        # how many is the config's check (with its own message)
        changes["loss_weights"] = _parse_floats(loss_weights, "--loss-weights", "0.5,0.25,0.15,0.1")
    for key, value in (
        ("without", tuple(_comma_list(without)) if without else None),
        ("tau", tau),
        ("sigma", sigma),
        ("modality_dropout", modality_dropout),
    ):
        if value is not None:
            changes[key] = value
    mfl = dataclasses.replace(mfl, **changes)
    if cf_epochs is not None:
        cf = dataclasses.replace(cf, train=dataclasses.replace(cf.train, epochs=cf_epochs))
    cfg = dataclasses.replace(cfg, mfl=mfl, cf=cf)
    dev = resolve_device(device)
    manifest = _train_locked(
        run,
        "fuse",
        resume,
        lambda on_step: fuse_run(
            run, cfg, seed=seed, device=dev, retrain_cf=retrain_cf, resume=resume, force=force, on_step=on_step
        ),
        dataclasses.replace(full, fuse=cfg),
        bool(recipe or set_),
    )
    if not manifest:  # a rank other than 0 under torchrun: rank 0 wrote and reports
        return
    render.fuse_summary(manifest)
    render.out.print(f"wrote {run / 'fuse'}")


JOBS_OPTION = typer.Option(
    help="Trainings run side by side, each in its own process with an equal share of the CPU threads "
    "(small models use many threads poorly; 2 on a 2-core machine). Progress is then counted per "
    "training. 1 = one after another, in this process.",
)


def _check_seed(seed: int | None) -> None:
    if seed is not None and seed < 0:
        raise MufasaError(f"--seed {seed}: must be >= 0")


def _check_jobs(jobs: int) -> None:
    if jobs < 1:
        raise MufasaError(f"--jobs {jobs}: must be at least 1")


def _jobs_progress(on_progress: Callable, label: str, jobs: int) -> Callable[[int, int], None] | None:
    """A bar of finished trainings when they run side by side (jobs > 1), where per-step bars cannot be drawn."""
    if jobs <= 1:
        return None
    return lambda done, total: on_progress(label, done, total, f"{label} ({jobs} at a time)")


KERNEL_HELP = (
    "How the sparse attention is computed: fast (batched, gathers whole blocks; the same results), "
    "compiled (fast through torch.compile; the first call compiles, 20-90 s on 2 cores; measured slower "
    "than fast on CPU at L = 8192, 0.6x with per-query and 0.9x with query_block selection; needs a C++ "
    "compiler, else runs as fast), "
    "reference (plain gather + matmul, for checking), flex (FlexAttention, objective all on CUDA; "
    "untested on a GPU so far) or auto (= fast). Recorded in the manifest."
)


def _kernel_notice(kernel: str) -> None:
    from mufasa_cli.sal.model import compiler_available

    if kernel == "compiled" and not compiler_available():
        render.notice_line("--kernel compiled: no C++ compiler found (CXX, c++, g++, clang++); running the fast kernel")


@app.command("align-train")
@_guarded
def align_train(
    run: Annotated[Path, typer.Argument(help="Run folder with data/ and fuse/.")],
    recipe: Annotated[
        list[Path] | None,
        typer.Option(
            help="Recipe YAML (section align: sal, tau, train, train_all, ...); flags override it. Repeat to layer recipes: later files override earlier ones. "
            "What the stage used (flags included) is recorded in RUN/recipe.yaml for eval and ablate."
        ),
    ] = None,
    set_: Annotated[list[str] | None, SET_OPTION] = None,
    objective: Annotated[
        str | None,
        typer.Option(
            help="last: one query per user, history cut at a random point each epoch (the paper); "
            "all (the default without a recipe): every position a causal query for the next item."
        ),
    ] = None,
    attention: Annotated[str | None, typer.Option(help="sparse (window + block + selective), full or mean.")] = None,
    without: Annotated[
        list[str] | None,
        typer.Option(help="Drop a branch: window, block or selective (repeatable, or comma-separated)."),
    ] = None,
    max_len: Annotated[int | None, typer.Option(help="Keep each history's most recent N items.")] = None,
    positions: Annotated[
        int | None,
        typer.Option(
            help="Beyond the paper: learned position rows; positions past the last share it "
            "(objective all counts from the start, last from the end). 0 = one per position up to max_len."
        ),
    ] = None,
    block_size: Annotated[int | None, typer.Option(help="b: items per interest block.")] = None,
    num_selected: Annotated[int | None, typer.Option(help="k: blocks attended item by item.")] = None,
    window: Annotated[
        int | None, typer.Option(help="W; 0 = the paper's protocol (8 if the history is longer than 30, else 4).")
    ] = None,
    selection: Annotated[
        str | None,
        typer.Option(
            help="query: each query picks its own top-k blocks (the paper); query_block (with --objective all): "
            "the b queries of a query block share their first query's pick, so the fast kernel gathers once per block."
        ),
    ] = None,
    dropout: Annotated[
        float | None,
        typer.Option(
            help="Beyond the paper: dropout on the history rows while training, in [0, 1) (0 = none; 0.5 without a recipe)."
        ),
    ] = None,
    recency: Annotated[
        bool | None,
        typer.Option(
            "--recency/--no-recency",
            help="Beyond the paper: learned recency biases per head on the window and block scores (ALiBi-style, "
            "starting at 0, the paper's scores); the block bias also steers which blocks are selected.",
        ),
    ] = None,
    finetune_mfl: Annotated[
        bool | None,
        typer.Option(
            "--finetune-mfl/--frozen-mfl",
            help="Train the MFL with the SAL (its four losses kept as auxiliary terms) instead of freezing z.",
        ),
    ] = None,
    item_ids: Annotated[
        bool | None,
        typer.Option(
            "--item-ids/--no-item-ids",
            help="Beyond the paper: add a trainable vector per item trained on (zero at the start) to its z; "
            "cold items keep their content z. On without a recipe.",
        ),
    ] = None,
    id_dropout: Annotated[
        float | None,
        typer.Option(
            help="Beyond the paper, with --item-ids: the share of a step's items scored without their id vector "
            "(z alone) while training, in [0, 1) (0 = none).",
        ),
    ] = None,
    uniform_negatives: Annotated[
        int | None, typer.Option(help="Extra negatives per batch drawn uniformly from the catalogue.")
    ] = None,
    full_softmax: Annotated[
        bool | None,
        typer.Option(
            "--full-softmax/--sampled-softmax",
            help="Beyond the paper: every catalogue item a negative (exact softmax, SASRec's loss) instead of "
            "in-batch (+ uniform) negatives with the logQ correction. On without a recipe.",
        ),
    ] = None,
    layers: Annotated[
        int | None,
        typer.Option(
            help="Beyond the paper: SAL layers, stacked as pre-norm residual blocks with a feed-forward "
            "sublayer (needs --objective all); 1 = the paper's single layer."
        ),
    ] = None,
    learn_tau: Annotated[
        bool | None, typer.Option("--learn-tau/--fixed-tau", help="Learn the softmax temperature.")
    ] = None,
    length_pool: Annotated[
        int | None,
        typer.Option(
            help="Batch users of similar history length: sort each run of N batches' worth of shuffled users "
            "by length before cutting it into batches (0 = plain shuffled batches)."
        ),
    ] = None,
    stride: Annotated[
        int | None,
        typer.Option(
            help="Beyond the paper, with --objective all: train on windows of max_len + 1 items ending every S "
            "items of each history, as SASRec does (each target once); 0 = each history's most recent window only; "
            "above max_len counts as max_len; 100 without a recipe."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (upper bound; early stopping on valid NDCG@10).")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Users per batch (windows with --stride).")] = None,
    tau: Annotated[float | None, typer.Option(help="Softmax temperature (the start value with --learn-tau).")] = None,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same result on CPU.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    kernel: Annotated[str, typer.Option(help=KERNEL_HELP)] = "auto",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run from its last epoch checkpoint.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing RUN/align.")] = False,
) -> None:
    """Train the Sparse Attention-based Alignment Layer into RUN/align/.

    Reads the MFL vectors of RUN/fuse; early-stops on validation NDCG@10."""
    _check_seed(seed)
    import dataclasses

    from mufasa_cli.config import apply_sets, load_recipe
    from mufasa_cli.runtime.device import resolve_device
    from mufasa_cli.sal.train import run_align

    full = apply_sets(load_recipe([str(r) for r in recipe] if recipe else None), set_)
    cfg = full.align
    sal = _replace_given(
        cfg.sal,
        objective=objective,
        attention=attention,
        without=tuple(_comma_list(without)) if without else None,
        max_len=max_len,
        positions=positions,
        block_size=block_size,
        num_selected=num_selected,
        window=window,
        selection=selection,
        dropout=dropout,
        recency=recency,
        layers=layers,
    )
    cfg = _replace_given(
        cfg,
        sal=sal,
        full_softmax=full_softmax,
        tau=tau,
        learn_tau=learn_tau,
        uniform_negatives=uniform_negatives,
        finetune_mfl=finetune_mfl,
        item_ids=item_ids,
        id_dropout=id_dropout,
        length_pool=length_pool,
        stride=stride,
    )
    cfg = cfg.with_training(**_given(epochs=epochs, lr=lr, batch_size=batch_size))
    dev = resolve_device(device)
    _kernel_notice(kernel)
    manifest = _train_locked(
        run,
        "align",
        resume,
        lambda on_step: run_align(
            run, cfg, seed=seed, device=dev, resume=resume, force=force, on_step=on_step, kernel=kernel
        ),
        dataclasses.replace(full, align=cfg),
        bool(recipe or set_),
    )
    if not manifest:  # a rank other than 0 under torchrun: rank 0 wrote and reports
        return
    render.resume_notices("SAL", manifest)
    v = manifest["valid"]
    render.out.print(
        f"SAL ({sal.attention}{', without ' + ', '.join(sal.without) if sal.without else ''}, objective "
        f"{sal.objective}): valid HR@10 {v['HR@10']:.4f}  NDCG@10 {v['NDCG@10']:.4f}  "
        f"best epoch {manifest['best_epoch']}/{manifest['epochs_run']} ({manifest['kernel']} kernel)",
        highlight=False,
        soft_wrap=True,
    )
    if manifest.get("improving_at_cap"):
        render.warning_line(
            f"the SAL reached its epoch cap ({manifest['epochs_run']}) before early stopping: it may be "
            "under-trained; pass a larger --epochs"
        )
    render.out.print(f"wrote {run / 'align'}")


def _given(**changes) -> dict:
    """The options the user gave: those not None."""
    return {k: v for k, v in changes.items() if v is not None}


def _replace_given(config, **changes):
    """`config` with the options the user gave (not None) replacing its fields."""
    import dataclasses

    return dataclasses.replace(config, **_given(**changes))


@app.command()
@_guarded
def embed(
    run: Annotated[Path, typer.Argument(help="Run folder with data/, fuse/ and align/.")],
    users: Annotated[
        Path | None,
        typer.Option(
            help="Also embed the sequences of this parquet file: columns user, item (raw ids), "
            "optionally timestamp or pos for the order (else file order). Unknown items are reported."
        ),
    ] = None,
    explain: Annotated[
        str | None,
        typer.Option(
            help="Print why the model embeds this user (raw id or index): interest blocks and their "
            "weights, selected blocks, gates, top items of each branch, top recommendations. Writes nothing."
        ),
    ] = None,
    top: Annotated[int, typer.Option(help="With --explain: items listed per branch and recommendations.")] = 5,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    kernel: Annotated[str, typer.Option(help=KERNEL_HELP)] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing RUN/embed.")] = False,
) -> None:
    """Write user and item embeddings into RUN/embed/, or explain one user.

    Train users are embedded up to their test target, zero-shot users without their targets,
    --users sequences as given; every item gets a vector. --explain shows one user's attention."""
    from mufasa_cli.runtime import dist
    from mufasa_cli.runtime.device import resolve_device
    from mufasa_cli.sal import embed as sal_embed

    if not dist.is_main():  # started by torchrun: embedding is one process's job, rank 0's
        return
    _kernel_notice(kernel)
    if explain is not None:
        if users is not None:
            raise MufasaError("--explain and --users: choose one")
        render.explanation(sal_embed.explain(run, explain, device=resolve_device(device), top=top, kernel=kernel))
        return
    from mufasa_cli.artifacts import run_lock

    with run_lock(run, "embed"):
        manifest = sal_embed.run_embed(run, device=resolve_device(device), force=force, users_file=users, kernel=kernel)
    c = manifest["counts"]
    render.out.print(
        f"embedded {c['train_users']:,} train users, {c['zero_shot_users']:,} zero-shot users and {c['items']:,} items "
        f"({c['dim']}-d, {manifest['config']['kernel']} kernel); wrote {run / 'embed'}",
        highlight=False,
    )
    if "external" in manifest:
        render.external_users(manifest["external"])


class TableFormat(StrEnum):
    table = "table"
    md = "md"
    csv = "csv"
    tex = "tex"
    json = "json"


@app.command("eval")
@_guarded
def eval_(
    run: Annotated[Path, typer.Argument(help="Run folder with data/, fuse/ and embed/.")],
    protocol: Annotated[
        str,
        typer.Option(
            help="loo (each train user's test item, full ranking), zero-shot (unseen users, last 3 "
            "interactions) or cold-start (loo targets that are cold items)."
        ),
    ] = "loo",
    compare: Annotated[
        str,
        typer.Option(
            help="Baselines to compare with, comma-separated (available: lightgcn, sasrec, dssm, youtube, mmgcn); '' for none. "
            "Missing ones are trained and cached under RUN/baselines/."
        ),
    ] = "lightgcn",
    recipe: Annotated[
        list[Path] | None,
        typer.Option(
            help="Recipe YAML (section baselines) for the baselines. Repeat to layer recipes: later files override earlier ones. "
            "(default: the recipe RUN/recipe.yaml records, which fuse-train and align-train write)"
        ),
    ] = None,
    set_: Annotated[list[str] | None, SET_OPTION] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="Train the baselines again even when cached.")] = False,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue an interrupted baseline training from its last epoch checkpoint."),
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of baseline training.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda (baseline training).")] = "auto",
    jobs: Annotated[int, JOBS_OPTION] = 1,
    k: Annotated[str, typer.Option("--k", help="Cut-offs, comma-separated.")] = "5,10,20,50,100",
    keep_seen: Annotated[
        bool, typer.Option("--keep-seen", help="Score the user's earlier items too (RecBole's protocol).")
    ] = False,
    test: Annotated[str, typer.Option(help="Paired significance test: ttest or wilcoxon.")] = "ttest",
    fmt: Annotated[
        TableFormat,
        typer.Option(
            "--format",
            help="What stdout carries: the table (terminal), md, csv, tex (LaTeX, booktabs) or json. "
            "The md, csv and tex files are written into the eval folder whatever this says.",
        ),
    ] = TableFormat.table,
    chunk: Annotated[int, typer.Option(help="Users scored at once (memory: chunk x items scores).")] = 1024,
    plot: Annotated[
        Path | None, typer.Option(help="Also write metric@k curves per model to this PNG (needs the `plot` extra).")
    ] = None,
    slices: Annotated[
        bool,
        typer.Option(
            "--slices",
            help="Also report every metric per slice of the targets: history length (quartiles, >=50, >=200), "
            "target popularity in training (head = top 20% of interactions, torso, tail = last 20%, cold) and "
            "repeat or new target; saved in metrics.json.",
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing RUN/eval/PROTOCOL.")] = False,
) -> None:
    """Evaluate MUFASA and baselines into RUN/eval/PROTOCOL/ (Tables 2, 3).

    Writes metrics.json (per-user metrics, p-values) and tables.md, tables.csv, tables.tex;
    with --keep-seen into RUN/eval/PROTOCOL-keep-seen/."""
    _check_seed(seed)
    from mufasa_cli.eval.protocols import PROTOCOLS
    from mufasa_cli.eval.run import BASELINES, TESTS, eval_dir, run_eval, write_eval
    from mufasa_cli.eval.tables import eval_table

    if protocol not in PROTOCOLS:
        raise MufasaError(f"--protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")
    if test not in TESTS:
        raise MufasaError(f"--test {test!r}: choose ttest or wilcoxon")
    ks = _parse_ks(k)
    if plot is not None:
        from mufasa_cli.eval.plot import check_plot

        check_plot(plot)
    _check_jobs(jobs)
    if chunk < 1:
        raise MufasaError(f"--chunk {chunk}: must be >= 1")
    from mufasa_cli import artifacts

    artifacts.check_writable(eval_dir(run, protocol, keep_seen), force)
    artifacts.read_manifest(run / "embed")  # MUFASA's embeddings first: no baseline trains for a run that lacks them
    names = [c.strip() for c in compare.split(",") if c.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise MufasaError(f"--compare {unknown[0]!r}: choose from {', '.join(BASELINES)}")
    with artifacts.run_lock(run, "eval"):
        cfg = _recipe(run, recipe, ("baselines",), set_) if names else None
        _discard_notice([run / "baselines" / f".{n}.ckpt" for n in names], resume)
        _eval_locked(run, names, cfg, bool(recipe or set_), seed, device, retrain, resume, jobs)
        result = run_eval(
            run, protocol=protocol, compare=names, ks=ks, keep_seen=keep_seen, test=test, chunk=chunk, slices=slices
        )
        out_dir = write_eval(run, result, force)
    if fmt is TableFormat.json:
        render.eval_json(result)
    else:
        render.print_tables([eval_table(result)], fmt.value)
    if slices and fmt in (TableFormat.table, TableFormat.md, TableFormat.csv):  # json: in the result
        render.slice_table(result, fmt.value)
    if plot is not None:
        from mufasa_cli.eval.plot import plot_curves

        render.err.print(f"wrote {plot_curves(result, plot)}", highlight=False, soft_wrap=True)
    render.err.print(
        f"wrote {out_dir} (metrics.json, tables.md, tables.csv, tables.tex)", highlight=False, soft_wrap=True
    )


def _eval_locked(run, names, cfg, given, seed, device, retrain, resume, jobs) -> dict[str, dict]:
    """eval's baseline step (under the run lock): train what is missing, report it, and record
    the baselines section in RUN/recipe.yaml when --recipe or --set `given` chose it."""
    from mufasa_cli.eval.run import ensure_baselines
    from mufasa_cli.runtime.device import resolve_device

    with render.progress() as on_progress:
        trained = ensure_baselines(
            run,
            names,
            cfg,
            seed=seed,
            device=resolve_device(device),
            retrain=retrain,
            resume=resume,
            on_step=render.training_progress(on_progress),
            jobs=jobs,
            on_done=_jobs_progress(on_progress, "baselines", jobs),
        )
    if given and names:
        _record_recipe(run, cfg, "baselines", "eval", True)
    for name, manifest in trained.items():  # on stderr: stdout carries the table only
        render.resume_notices(name, manifest)
        v = manifest["valid"]
        render.err.print(
            f"trained {name}: valid HR@10 {v['HR@10']:.4f}  NDCG@10 {v['NDCG@10']:.4f}  best epoch "
            f"{manifest['best_epoch']}/{manifest['epochs_run']}  ({manifest['wall_time_s']:.0f} s)",
            highlight=False,
        )
        if manifest.get("improving_at_cap"):
            render.warning_line(
                f"{name} reached its epoch cap ({manifest['epochs_run']}) before early stopping: it may be "
                f"under-trained; raise baselines.{name}.train.epochs in the recipe"
            )
    return trained


@app.command()
@_guarded
def ablate(
    run: Annotated[Path, typer.Argument(help="Run folder with data/, fuse/, align/ and embed/ (the full model).")],
    without: Annotated[
        list[str] | None,
        typer.Option(
            help="A part to remove (repeatable, or comma-separated): mfl, sal, window, block, selective, title, cf, cons, fuscl. "
            "Prints Table 5."
        ),
    ] = None,
    history_len: Annotated[
        str | None,
        typer.Option(help="Table 6: history lengths, comma-separated, 'full' = the recipe's max_len (e.g. 30,full)."),
    ] = None,
    attention: Annotated[
        str, typer.Option(help="Table 6: attention kinds, comma-separated (sparse,full).")
    ] = "sparse,full",
    protocol: Annotated[
        str | None,
        typer.Option(
            help="loo, zero-shot or cold-start. (default: zero-shot, as the paper, when the run has zero-shot users, else loo)"
        ),
    ] = None,
    k: Annotated[str, typer.Option("--k", help="Cut-offs, comma-separated.")] = "5,10,20,50,100",
    recipe: Annotated[
        list[Path] | None,
        typer.Option(
            help="Recipe YAML the variants train with. Repeat to layer recipes: later files override earlier ones. "
            "(default: the recipe RUN/recipe.yaml records: the full model's own settings)"
        ),
    ] = None,
    set_: Annotated[list[str] | None, SET_OPTION] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of the variants' training. (default: the full model's, from RUN/align)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    jobs: Annotated[int, JOBS_OPTION] = 1,
    fmt: Annotated[TableFormat, typer.Option("--format", help="table, md, csv or json.")] = TableFormat.table,
    force: Annotated[
        bool, typer.Option("--force", help="Replace existing RUN/ablate variants and RUN/ablate/tables-PROTOCOL.json.")
    ] = False,
) -> None:
    """Train and evaluate ablation variants into RUN/ablate/ (Tables 5, 6).

    Each variant re-runs only the stages its removed part touches (RUN/ablate/VARIANT/) and is
    evaluated with the same protocol as the full model, each row tested against it."""
    _check_seed(seed)
    from mufasa_cli.eval import ablate as ab
    from mufasa_cli.eval.protocols import PROTOCOLS
    from mufasa_cli.eval.tables import ablation_files, ablation_tables
    from mufasa_cli.runtime.device import resolve_device

    if protocol is None:
        protocol = ab.default_protocol(run)
    if protocol not in PROTOCOLS:
        raise MufasaError(f"--protocol {protocol!r}: choose from {', '.join(PROTOCOLS)}")
    ks = _parse_ks(k)
    without = _comma_list(without)
    if not without and not history_len:
        raise MufasaError("name --without parts (Table 5) or --history-len (Table 6)")
    if without:
        ab.check_ablations(without)
    lengths: list[int | None] = []
    for part in (history_len or "").split(","):
        part = part.strip()
        if part:
            if part != "full" and not part.isdigit():
                raise MufasaError(f"--history-len {part!r}: a positive integer or 'full'")
            lengths.append(None if part == "full" else int(part))
    kinds = [a.strip() for a in attention.split(",") if a.strip()]
    bad = [a for a in kinds if a not in ("sparse", "full", "mean")]
    if bad:
        raise MufasaError(f"--attention {bad[0]!r}: choose from sparse, full, mean")
    for flag, values in (("--history-len", lengths), ("--attention", kinds)):
        if len(set(values)) < len(values):
            raise MufasaError(f"{flag}: a value is named more than once")
    _check_jobs(jobs)
    cells = [(length, kind) for length in lengths for kind in kinds]
    tables_file = run / "ablate" / f"tables-{protocol}.json"
    targets = [run / "ablate" / ab.variant_name(x) for x in without]
    targets += [run / "ablate" / ab.history_variant_name(n, a) for n, a in cells]
    existing = [t for t in [*targets, tables_file] if t.exists()]
    if existing and not force:
        raise MufasaError(f"{existing[0]} already exists; pass --force to replace it")
    from mufasa_cli import artifacts

    with artifacts.run_lock(run, "ablate"):
        cfg = _recipe(run, recipe, ("fuse", "align"), set_)
        if seed is None:
            seed = ab.full_model_seed(run)
        table5, table6 = _ablate_locked(run, without, cells, cfg, protocol, ks, seed, resolve_device(device), jobs)
        record = ab.ablation_record(protocol, table5[0][1], table5 if without else [], table6)
        artifacts.atomic_write_json(tables_file, record)
        for ext, text in ablation_files(record).items():
            artifacts.atomic_write_bytes(tables_file.with_suffix(f".{ext}"), text.encode())
    if fmt is TableFormat.json:
        render.out.print_json(data=record)
    else:
        render.print_tables(ablation_tables(record), fmt.value)
    render.err.print(f"wrote {tables_file.with_suffix('.*')} (json, md, csv, tex)", highlight=False, soft_wrap=True)


def _ablate_locked(run, parts, cells, cfg, protocol, ks, seed, dev, jobs):
    """ablate's work under the run lock: build and evaluate every variant; (Table 5 rows, Table 6 rows)."""
    from mufasa_cli.eval import ablate as ab
    from mufasa_cli.eval.run import run_eval
    from mufasa_cli.runtime.pool import run_calls

    evaluate = lambda folder: run_eval(  # noqa: E731
        folder, protocol=protocol, compare=[], ks=ks, keep_seen=False, test="ttest"
    )
    full = evaluate(run)
    with render.progress() as on_progress:
        common = {"seed": seed, "device": dev, "on_step": render.training_progress(on_progress)}
        calls = [(ab.build_variant, (run, x, cfg), common) for x in parts]
        calls += [(ab.build_history_variant, (run, length, kind, cfg), common) for length, kind in cells]
        folders = run_calls(calls, jobs, _jobs_progress(on_progress, "ablation variants", jobs))
    table5 = [("MUFASA", full)] + [
        (ab.LABELS[x], evaluate(f)) for x, f in zip(parts, folders[: len(parts)], strict=True)
    ]
    table6 = [(f"{n or 'full'} / {a}", evaluate(f)) for (n, a), f in zip(cells, folders[len(parts) :], strict=True)]
    return table5, table6


class ReportFormat(StrEnum):
    table = "table"
    md = "md"
    csv = "csv"
    tex = "tex"
    none = "none"


@app.command()
@_guarded
def report(
    run: Annotated[Path, typer.Argument(help="Run folder with finished evals (RUN/eval/*) or ablations.")],
    out: Annotated[Path | None, typer.Option("--out", help="Folder for the files. (default: RUN/report)")] = None,
    fmt: Annotated[
        ReportFormat,
        typer.Option("--format", help="What stdout carries: the tables (table, md, csv, tex), or none."),
    ] = ReportFormat.table,
    plots: Annotated[
        bool,
        typer.Option(
            "--plots/--no-plots",
            help="Also draw each eval's metric@k curves (curves.png; needs the `plot` extra, skipped with a "
            "notice without it).",
        ),
    ] = True,
) -> None:
    """Render every finished eval and ablate again, from saved metrics only.

    OUT/eval-PROTOCOL/ and OUT/ablate-PROTOCOL/ get tables.md, tables.csv and tables.tex
    (byte-identical to the files eval and ablate wrote) and curves.png; nothing is trained or
    scored; the paths are listed at the end."""
    from mufasa_cli import artifacts
    from mufasa_cli.eval.report import write_report

    if not run.is_dir():
        raise MufasaError(f"{run}: no such run folder")
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            render.notice_line("no plots: matplotlib is not installed (pip install 'mufasa-cli[plot]')")
            plots = False
    out_dir = out if out is not None else run / "report"
    with artifacts.run_lock(run, "report"):
        sections = write_report(run, out_dir, plots)
    if fmt in (ReportFormat.md, ReportFormat.csv, ReportFormat.tex):  # Table 1 first, as its file reads
        table1 = next((s.files[f"tables.{fmt.value}"] for s in sections if s.name == "data"), "")
        render.out.print(
            table1,
            end="\n" if table1 and fmt is not ReportFormat.csv else "",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
    if fmt is not ReportFormat.none:
        render.print_tables([t for s in sections for t in s.tables], fmt.value)
    listing = render.err if fmt is not ReportFormat.none else render.out
    for s in sections:
        listing.print(f"{s.name} (from {s.source}):", highlight=False)
        for path in s.written:
            listing.print(f"  {path}", highlight=False, soft_wrap=True)


def _comma_list(values: list[str] | None) -> list[str]:
    """A repeatable flag's values, each of which may also be a comma-separated list."""
    return [x.strip() for v in values or [] for x in v.split(",") if x.strip()]


def _parse_ks(k: str) -> list[int]:
    try:
        ks = sorted({int(x) for x in k.split(",") if x.strip()})
    except ValueError:
        raise MufasaError(f"--k {k!r}: expected comma-separated integers like 5,10,20") from None
    if not ks or ks[0] < 1:
        raise MufasaError(f"--k {k!r}: cut-offs must be >= 1")
    return ks


def _parse_floats(text: str, flag: str, example: str, n: int | None = None) -> tuple[float, ...]:
    """Comma-separated numbers of a flag (exactly n of them when n is given)."""
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise MufasaError(f"{flag} {text!r}: expected comma-separated numbers like {example}") from None
    if n is not None and len(values) != n:
        raise MufasaError(f"{flag} {text!r}: expected {n} comma-separated numbers like {example}")
    return values


def main() -> None:
    import signal

    signal.signal(signal.SIGTERM, _on_sigterm)
    app()


# ---------------------------------------------------------------- help texts, one style

CHOICES = {  # str options whose values the code checks: listed in --help like Enum choices
    "protocol": "loo|zero-shot|cold-start",
    "attention": "sparse|full|mean",
    "kernel": "auto|fast|compiled|reference|flex",
    "device": "auto|cpu|cuda",
    "objective": "last|all",
    "selection": "query|query_block",
    "test": "ttest|wilcoxon",
}
METAVARS = {int: "INT", float: "FLOAT", str: "TEXT", Path: "PATH"}


def _tidy_help(app: typer.Typer) -> None:
    """One style for every command's --help: flags show no type, every option with values shows
    them (choices as a|b|c, else INT, FLOAT, TEXT, PATH), every default appears once as
    [default: X] (a computed one as given in the help text's '(default: X)', a recipe setting
    as 'recipe')."""
    import inspect
    import re
    import typing

    from typer.models import ArgumentInfo, OptionInfo

    for command in [*app.registered_commands, app.registered_callback]:
        fn = command.callback
        hints = typing.get_type_hints(fn, include_extras=True)
        signature = inspect.signature(fn)
        takes_recipe = "recipe" in signature.parameters
        for name, param in signature.parameters.items():
            hint = hints.get(name)
            if typing.get_origin(hint) is not typing.Annotated:
                continue
            base, *meta = typing.get_args(hint)
            info = next((m for m in meta if isinstance(m, OptionInfo | ArgumentInfo)), None)
            if info is None:
                continue
            inner = [a for a in typing.get_args(base) if a is not type(None)] or [base]
            inner = typing.get_args(inner[0]) or inner if typing.get_origin(inner[0]) is list else inner
            kind = inner[0]
            if info.metavar is None and isinstance(info, ArgumentInfo):
                info.metavar = name.upper()
            if info.metavar is None:
                if kind is bool:
                    info.metavar = ""
                elif name in CHOICES:
                    info.metavar = CHOICES[name]
                elif isinstance(kind, type) and issubclass(kind, StrEnum):
                    info.metavar = "|".join(e.value for e in kind)
                else:
                    info.metavar = METAVARS.get(kind, "TEXT")
            for f in {fn, inspect.unwrap(fn)}:  # Typer reads these evaluated objects, not the strings
                f.__annotations__[name] = hint
            given = re.search(r"\s*\(default: ([^)]*(?:\([^)]*\)[^)]*)*)\)\s*$", info.help or "")
            if given:
                info.help = info.help[: given.start()].rstrip()
                info.show_default = given.group(1)
            elif param.default is None and kind is not bool and isinstance(info, OptionInfo):
                info.show_default = (
                    "recipe" if takes_recipe and name not in ("recipe", "users", "explain", "plot", "out") else "none"
                )


_tidy_help(app)


if __name__ == "__main__":
    main()
