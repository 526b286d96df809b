"""Frozen configuration per stage. Each stage's code receives only its own config."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from mufasa_cli.errors import RecipeError

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
    preset: str | None = None  # synthetic only: tiny | default | large
    seed: int = 0
    min_seq_len: int = 3
    max_seq_len: int | None = None
    text_encoder: TextEncoderName = "none"
    cold_items: float = 0.0
    zero_shot_users: int | None = None  # None: the preset's (synthetic) or 0 (real data)
    on_bad_rows: Literal["fail", "skip"] = "fail"
    min_title_tokens: int = 3  # DESIGN.md: titles shorter than 3 tokens are not title_ok

    def __post_init__(self) -> None:
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
        if self.text_encoder == "synthetic" and self.dataset != "synthetic":
            raise RecipeError("generated title vectors exist only for the synthetic dataset")

    def to_dict(self) -> dict:
        return asdict(self)
