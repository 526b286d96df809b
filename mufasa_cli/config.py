"""Frozen configuration per stage. Each stage's code receives only its own config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from mufasa_cli.checks import finite as _finite
from mufasa_cli.checks import positive as _positive
from mufasa_cli.errors import RecipeError
from mufasa_cli.sal.config import SALConfig

Dataset = Literal["synthetic", "microlens", "movielens", "recbole", "custom"]
DATASETS: tuple[str, ...] = ("synthetic", "microlens", "movielens", "recbole", "custom")
DATASET_ALIASES = {"mixed-genre": "synthetic"}
TextEncoderName = Literal["minilm", "none", "synthetic"]


def canonical_dataset(name: str) -> str:
    name = DATASET_ALIASES.get(name.lower(), name.lower())
    if name not in DATASETS:
        choices = ", ".join([*DATASETS, *DATASET_ALIASES])
        raise RecipeError(f"unknown dataset {name!r}; choose one of: {choices}")
    return name


@dataclass(frozen=True)
class PrepareConfig:
    dataset: str
    sources: tuple[str, ...] = ()
    preset: str | None = None  # synthetic only: tiny | small | default | large
    seed: int = 0
    min_seq_len: int = 3
    max_seq_len: int | None = None
    text_encoder: TextEncoderName = "none"
    cold_items: float = 0.0
    zero_shot_users: int | None = None  # None: the preset's (synthetic) or 0 (real data)
    on_bad_rows: Literal["fail", "skip"] = "fail"
    min_title_tokens: int = 3  # titles shorter than 3 word tokens are not title_ok (docs/data.md)
    split: Literal["loo", "global-time"] = "loo"
    split_at: tuple[float, float] = (0.8, 0.9)  # global-time: valid and test cutoffs as time quantiles

    def __post_init__(self) -> None:
        _finite(self)
        if self.seed < 0:
            raise RecipeError(f"--seed {self.seed}: must be >= 0")
        if self.min_seq_len < 3:
            raise RecipeError(
                f"--min-seq-len {self.min_seq_len}: must be at least 3 (train, valid and test need one item each)"
            )
        if self.max_seq_len is not None and self.max_seq_len < self.min_seq_len:
            raise RecipeError(f"--max-seq-len {self.max_seq_len}: must be at least --min-seq-len {self.min_seq_len}")
        if not 0.0 <= self.cold_items < 1.0:
            raise RecipeError(f"--cold-items {self.cold_items}: must be a fraction in [0, 1)")
        if self.zero_shot_users is not None and self.zero_shot_users < 0:
            raise RecipeError(f"--zero-shot-users {self.zero_shot_users}: must be >= 0")
        if self.min_title_tokens < 1:
            raise RecipeError(f"--min-title-tokens {self.min_title_tokens}: must be at least 1")
        if self.on_bad_rows not in ("fail", "skip"):
            raise RecipeError(f"--on-bad-rows {self.on_bad_rows!r}: choose fail or skip")
        if self.text_encoder not in ("minilm", "none", "synthetic"):
            raise RecipeError(f"--text-encoder {self.text_encoder!r}: choose minilm or none")
        if self.split not in ("loo", "global-time"):
            raise RecipeError(f"--split {self.split!r}: choose loo or global-time")
        a, b = self.split_at
        if not 0.0 < a < b < 1.0:
            raise RecipeError(f"--split-at {a},{b}: need 0 < valid cutoff < test cutoff < 1 (time quantiles)")
        if self.text_encoder == "synthetic" and self.dataset != "synthetic":
            raise RecipeError("generated title vectors exist only for the synthetic dataset")

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------- training stages


@dataclass(frozen=True)
class TrainConfig:
    """The shared training loop (runtime/loop.py): AdamW, warmup + cosine, clipping, early stop."""

    epochs: int = 30
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05  # share of all steps spent warming up
    min_lr_frac: float = 0.05  # cosine decays to lr * min_lr_frac
    grad_clip: float = 1.0
    patience: int = 5  # evaluations without improvement before stopping
    eval_every: int = 1  # epochs between validations

    def __post_init__(self) -> None:
        _positive(self, "epochs", "batch_size", "lr", "patience", "eval_every")
        if not 0 <= self.warmup_frac < 1 or not 0 <= self.min_lr_frac <= 1:
            raise RecipeError("warmup_frac must be in [0, 1) and min_lr_frac in [0, 1]")


@dataclass(frozen=True)
class LightGCNConfig:
    dim: int = 64
    num_layers: int = 3
    reg: float = 1e-4  # L2 on the batch's layer-0 embeddings (the LightGCN paper's lambda)
    # trained to convergence: early stopping on validation ends it, the cap is a guard only (30
    # epochs stopped ml-100k's while it was still improving: valid NDCG@10 0.047 against 0.071)
    train: TrainConfig = TrainConfig(
        epochs=300, batch_size=16384, lr=2e-2, weight_decay=0.0, warmup_frac=0.0, patience=2, eval_every=5
    )

    def __post_init__(self) -> None:
        _positive(self, "dim", "num_layers")


LOSS_NAMES = ("title", "cf", "cons", "fuscl")


@dataclass(frozen=True)
class MFLConfig:
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    dropout: float = 0.0  # CPU dropout costs a quarter of a step; the contrastive losses regularise
    tau: float = 0.1  # temperature of eqs. 1 and 4
    sigma: float = 0.05  # std of the Gaussian perturbation of eq. 4
    loss_weights: tuple[float, float, float, float] = (0.5, 0.25, 0.15, 0.1)  # title, cf, cons, fus-cl (eq. 5)
    without: tuple[str, ...] = ()  # losses switched off (ablations)
    modality_dropout: float = 0.0  # drop each present modality with this probability while training
    val_fraction: float = 0.1  # items held out of gradient steps; their MFL loss is the early-stop signal
    # CF targets of eq. 2 are rescaled (one global factor, geometry kept) to this mean norm, so that
    # L_cf weighs the same whatever LightGCN's embedding norms; 0 keeps LightGCN's raw scale.
    cf_norm: float = 2.0
    train: TrainConfig = TrainConfig(epochs=40, batch_size=256, lr=2e-3)

    def __post_init__(self) -> None:
        _positive(self, "d_model", "num_layers", "num_heads", "tau")
        if self.d_model % self.num_heads:
            raise RecipeError(f"d_model {self.d_model} must be divisible by num_heads {self.num_heads}")
        if len(self.loss_weights) != 4 or any(w < 0 for w in self.loss_weights):
            raise RecipeError(f"loss_weights {self.loss_weights}: need four weights >= 0 (title, cf, cons, fuscl)")
        bad = [w for w in self.without if w not in LOSS_NAMES]
        if bad:
            raise RecipeError(f"--without {bad[0]!r}: choose from {', '.join(LOSS_NAMES)}")
        if not 0 <= self.modality_dropout < 1 or not 0 < self.val_fraction < 0.5 or self.sigma < 0 or self.cf_norm < 0:
            raise RecipeError("modality_dropout must be in [0, 1), val_fraction in (0, 0.5), sigma and cf_norm >= 0")

    def weight(self, name: str) -> float:
        return 0.0 if name in self.without else self.loss_weights[LOSS_NAMES.index(name)]


@dataclass(frozen=True)
class FuseConfig:
    cf: LightGCNConfig = LightGCNConfig()
    mfl: MFLConfig = MFLConfig()


@dataclass(frozen=True)
class AlignConfig:
    # SALConfig() is the paper's layer; align-train's built-in default goes beyond it with every
    # position a causal query (objective all, as SASRec trains) and dropout 0.3 on the history
    # rows: what validation chose on every dataset we tuned (dropout 0.3 against 0.5, seed 0:
    # MicroLens-50k 0.0531 against 0.0506; ml-100k, three seeds, 0.1175 against 0.1185, a tie)
    # (recipes/paper-faithful.yaml pins the paper's choices)
    # sal.max_len 200 with windows every 100 items (stride): the most recent 200 items are read,
    # and every train item is still a target (ml-100k, three seeds, validation NDCG@10 0.1171
    # against 0.1093 for the whole history; docs/quality.md, "Built-in defaults")
    sal: SALConfig = SALConfig(objective="all", dropout=0.3, max_len=200)
    tau: float = 0.07  # temperature of the in-batch softmax (its start value when learned)
    learn_tau: bool = False  # train log(tau) with the model, kept within [0.01, 1]
    uniform_negatives: int = 0  # extra negatives per batch drawn uniformly from the catalogue
    # beyond the paper: every item of the catalogue a negative (exact softmax, as SASRec's
    # cross-entropy; no sampling, so no logQ correction) instead of in-batch + uniform ones
    # (the default: what validation chose on every dataset we tuned; the paper's is False)
    full_softmax: bool = True
    in_batch_negatives: int = 2048  # objective all: the batch's targets used as negatives, at most this many
    finetune_mfl: bool = False  # train the MFL with the SAL, its four losses as auxiliary terms
    mfl_weight: float = 0.5  # weight of the MFL losses when finetuning
    # beyond the paper: a trainable per-item vector added to z (zero at the start) for the items
    # trained on, so the SAL can learn what content alone does not say; cold items keep their z
    # (the default; the paper's is False)
    item_ids: bool = True
    # beyond the paper, with item_ids: while training, each step leaves out the id vector of
    # this share of the step's items (drawn per item, the same for its history rows and its
    # softmax column), so that z alone must rank them too: a regulariser for the id vectors, and
    # the way a cold item (z only) is scored at inference. 0 = never
    id_dropout: float = 0.0
    # batches of users of similar history length: each run of length_pool * batch_size
    # shuffled users is sorted by length before it is cut into length_pool batches (with
    # objective all, of about equal numbers of targets); 0 = plain shuffled batches. Less
    # padding, so shorter steps where lengths vary
    length_pool: int = 0
    # beyond the paper, objective all: 0 = each user's most recent sal.max_len + 1 train items
    # only; S > 0 = every user's train items cut into windows of sal.max_len + 1 ending every S
    # items, as SASRec trains (each target once, with at least max_len + 1 - S items of
    # context), so a short max_len still trains on every item; a batch is batch_size windows.
    # A stride above max_len counts as max_len (windows end to end); objective last ignores it
    stride: int = 100
    # `last` sees one target per user per epoch: many short epochs, validated every 5
    train: TrainConfig = TrainConfig(epochs=150, batch_size=128, lr=3e-3, patience=6, eval_every=5)
    # `all` sees every next item of every user each epoch: few long epochs, validated each one
    train_all: TrainConfig = TrainConfig(epochs=30, batch_size=32, lr=2e-3, patience=3, eval_every=1)

    def __post_init__(self) -> None:
        _positive(self, "tau", "in_batch_negatives")
        if self.uniform_negatives < 0 or self.mfl_weight < 0 or self.length_pool < 0:
            raise RecipeError("uniform_negatives, mfl_weight and length_pool must be >= 0")
        if not 0 <= self.id_dropout < 1:
            raise RecipeError(f"id_dropout {self.id_dropout}: must be in [0, 1)")
        if self.stride < 0:
            raise RecipeError(f"stride {self.stride}: must be >= 0 (0 = no windows)")
        if self.id_dropout and not self.item_ids:
            raise RecipeError(
                f"id_dropout {self.id_dropout} needs item_ids (no id vectors to leave out); set it to 0 without them"
            )

    @property
    def window_stride(self) -> int:
        """The stride the training windows use: 0 (none) under objective last, at most max_len."""
        return min(self.stride, self.sal.max_len) if self.sal.objective == "all" else 0

    @property
    def schedule(self) -> str:
        """The training schedule the objective uses: `train_all` for `all`, else `train`."""
        return "train_all" if self.sal.objective == "all" else "train"

    def training(self) -> TrainConfig:
        """The schedule in force (see `schedule`)."""
        return getattr(self, self.schedule)

    def with_training(self, **changes) -> AlignConfig:
        """This config with `changes` (epochs, lr, ...) made to the schedule in force."""
        import dataclasses

        return dataclasses.replace(self, **{self.schedule: dataclasses.replace(self.training(), **changes)})


@dataclass(frozen=True)
class SASRecConfig:
    """SASRec (Kang & McAuley 2018) on item ids, trained with cross-entropy over all items at
    every position (the strong variant: Klenitskiy & Vasilev, RecSys 2023). Defaults follow
    RecBole's: hidden 64, 2 layers, 2 heads, inner 256, GELU, dropout 0.5, Adam 1e-3, batch 256."""

    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 2
    inner: int = 256
    dropout: float = 0.5
    max_len: int = 50
    # training windows end every `stride` items (0 = max_len: no overlap); each target is
    # trained once, with at least max_len + 1 - stride items of context. 1 = RecBole's samples:
    # one target per sample, read at the last position only, with its own max_len items of context
    stride: int = 0
    # early stopping on validation with the user's train items left among the candidates, as
    # RecBole selects its sequential models (for comparisons under `eval --keep-seen`)
    valid_keep_seen: bool = False
    train: TrainConfig = TrainConfig(
        epochs=200,
        batch_size=256,
        lr=1e-3,
        weight_decay=0.0,
        warmup_frac=0.0,
        min_lr_frac=1.0,
        patience=10,
        grad_clip=0.0,  # RecBole clips nothing
    )

    def __post_init__(self) -> None:
        _positive(self, "d_model", "num_layers", "num_heads", "inner", "max_len")
        if not 0 <= self.stride <= self.max_len:
            raise RecipeError(f"sasrec stride {self.stride}: must be in [0, max_len {self.max_len}] (0 = max_len)")
        if self.d_model % self.num_heads:
            raise RecipeError(f"sasrec d_model {self.d_model} must be divisible by num_heads {self.num_heads}")
        if not 0.0 <= self.dropout < 1.0:
            raise RecipeError(f"sasrec dropout {self.dropout}: must be in [0, 1)")


@dataclass(frozen=True)
class TwoTowerConfig:
    """DSSM (user-id and item-id towers) and YouTube DNN (mean-pooled history of item ids plus
    the items' content features) trained with the in-batch sampled softmax (logQ-corrected)
    on unit-length vectors."""

    d_model: int = 64
    hidden: int = 128
    max_len: int = 50  # YouTube DNN: history items pooled
    tau: float = 0.1
    negatives: int = 2048  # in-batch columns, at most
    train: TrainConfig = TrainConfig(epochs=100, batch_size=256, lr=1e-3, weight_decay=0.0, patience=5)

    def __post_init__(self) -> None:
        _positive(self, "d_model", "hidden", "max_len", "tau", "negatives")


@dataclass(frozen=True)
class MMGCNConfig:
    """MMGCN (Wei et al., MM 2019): a graph convolution per modality over the user-item graph,
    item nodes starting from their projected modality features, user nodes from a learned
    per-modality preference; the modality representations are summed; BPR loss."""

    d_model: int = 64
    num_layers: int = 2
    reg: float = 1e-4
    train: TrainConfig = TrainConfig(epochs=60, batch_size=4096, lr=1e-3, weight_decay=0.0, patience=3, eval_every=2)

    def __post_init__(self) -> None:
        _positive(self, "d_model", "num_layers")


@dataclass(frozen=True)
class BaselinesConfig:
    sasrec: SASRecConfig = SASRecConfig()
    dssm: TwoTowerConfig = TwoTowerConfig(
        train=TrainConfig(epochs=100, batch_size=2048, lr=1e-3, weight_decay=0.0, patience=5)
    )
    youtube: TwoTowerConfig = TwoTowerConfig()
    mmgcn: MMGCNConfig = MMGCNConfig()


@dataclass(frozen=True)
class Recipe:
    """Everything a recipe file may set, one section per stage."""

    fuse: FuseConfig = FuseConfig()
    align: AlignConfig = AlignConfig()
    baselines: BaselinesConfig = BaselinesConfig()


def restore(base, values: object, where: str):
    """A config saved with dataclasses.asdict, read back over the defaults `base` (lists
    become tuples; unknown keys and wrong types are refused, naming `where`)."""
    return _merge(base, values, where)


def saved_as(want, saved: object, where: str) -> bool:
    """Whether settings saved with dataclasses.asdict (a manifest's config) are `want`, read
    over the defaults: a setting added since they were saved counts at its default, and
    settings that no longer read (unknown keys, wrong types) never match."""
    try:
        return restore(type(want)(), saved, where) == want
    except RecipeError:
        return False


def _merge(base, values: object, where: str):
    """`base` (a frozen dataclass) with the mapping's values replacing its fields, recursively;
    unknown keys and wrong types are refused, naming where they are."""
    import dataclasses
    import typing

    if not isinstance(values, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(values).__name__}")
    cls = type(base)
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise RecipeError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(fields)})")
    changes = {}
    for key, value in values.items():
        at = f"{where}.{key}"
        current = getattr(base, key)
        changes[key] = (
            _merge(current, value, at) if dataclasses.is_dataclass(current) else _coerce(hints[key], value, at)
        )
    return dataclasses.replace(base, **changes)


def _coerce(hint, value, where: str):
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{where}: expected a list, got {value!r}")
        inner = args[0]
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise RecipeError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(inner, v, where) for v in value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint in (str, bool) and isinstance(value, hint):
        return value
    raise RecipeError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")


def load_recipe(path: str | list[str] | None) -> Recipe:
    """A recipe YAML (sections as in Recipe), or several layered in order (each file's keys
    override the earlier files'; e.g. a dataset's recipe, then recipes/paper-faithful.yaml);
    None gives the built-in defaults."""
    from pathlib import Path

    import yaml

    from mufasa_cli import yaml_strict

    recipe = Recipe()
    for one in [path] if isinstance(path, str) else path or []:
        p = Path(one)
        if not p.is_file():
            raise RecipeError(f"{p}: recipe not found")
        try:
            values = yaml_strict.load(p.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            detail = yaml_strict.describe(e) if isinstance(e, yaml.YAMLError) else str(e)
            raise RecipeError(f"{p}: not valid YAML ({detail})") from None
        recipe = _merge(recipe, values, str(p))
    return recipe


# ---------------------------------------------------------------- the recipe a run was trained with

RUN_RECIPE = "recipe.yaml"
RECIPE_SECTIONS = ("fuse", "align", "baselines")


def recipe_yaml(recipe: Recipe, header: str = "") -> str:
    """A resolved recipe as YAML that load_recipe reads back to the same Recipe."""
    import yaml

    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return comment + yaml.safe_dump(_plain(asdict(recipe)), sort_keys=False)


def _plain(obj):
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def recorded_recipe(run_dir) -> Recipe | None:
    """RUN/recipe.yaml (the settings the run's stages trained with), or None if it has none."""
    from pathlib import Path

    path = Path(run_dir) / RUN_RECIPE
    return load_recipe(str(path)) if path.is_file() else None


def recipe_for_run(run_dir, given: list[str] | None, sections: tuple[str, ...]) -> tuple[Recipe, str | None]:
    """The recipe eval and ablate use on `run_dir`, and a notice to print (or None).

    --recipe files (`given`) win; without them the run's recorded recipe is used, so that
    the baselines and ablation variants train the way the run's own stages were trained;
    without either, the built-in defaults. The notice says when given files change
    `sections` of what the run recorded. (fuse-train and align-train read only --recipe:
    re-running a stage does not inherit the flags of its last run.)"""
    recorded = recorded_recipe(run_dir)
    if not given:
        return (recorded if recorded is not None else Recipe()), None
    recipe = load_recipe(given)
    if recorded is None:
        return recipe, None
    changed = [s for s in sections if getattr(recipe, s) != getattr(recorded, s)]
    if not changed:
        return recipe, None
    return recipe, (
        f"--recipe {', '.join(given)} replaces the {' and '.join(changed)} settings that "
        f"{run_dir}/{RUN_RECIPE} records for this run"
    )


def merged_for_record(run_dir, used: Recipe, section: str, given: bool) -> Recipe:
    """What RUN/recipe.yaml becomes after a stage trained `section` with `used` (its recipe
    files, or the defaults when `given` is False, with its flags applied): `section` is what
    the stage used; the sections upstream of it keep what the run recorded (their stages
    trained with that); the ones downstream take the stage's recipe files when given, else
    keep what was recorded."""
    import dataclasses

    recorded = recorded_recipe(run_dir)
    if recorded is None:
        return used
    at = RECIPE_SECTIONS.index(section)
    keep = RECIPE_SECTIONS[:at] + (() if given else RECIPE_SECTIONS[at + 1 :])
    return dataclasses.replace(used, **{s: getattr(recorded, s) for s in keep})


def apply_sets(recipe: Recipe, sets: list[str] | None) -> Recipe:
    """`recipe` with each `--set section.key=value` applied in order (the value read as YAML:
    16, 1e-3, true, [a, b]); every recipe setting can be changed from the command line this
    way, so a new setting needs no flag of its own."""
    from mufasa_cli import yaml_strict

    for item in sets or []:
        key, sep, text = item.partition("=")
        path = [p.strip() for p in key.split(".")]
        if not sep or not all(path):
            raise RecipeError(f"--set {item!r}: expected section.key=value, e.g. align.sal.block_size=16")
        try:
            value = yaml_strict.load(text)
        except Exception:  # noqa: BLE001 - not YAML: the text itself
            value = text
        for part in reversed(path):
            value = {part: value}
        recipe = _merge(recipe, value, "--set")
    return recipe
