"""The data/ artifact contract (docs/artifacts.md), in one place.

Ids: items are 0..N-1 and users 0..U-1 in the artifacts, both in natural order of their raw
ids. Later stages that batch histories right-pad them and carry explicit lengths; a padded
slot is masked by length, never recognised by its id.

Splits: for `train`-role users the last interaction is `test`, the one before it `valid`,
the rest `train` (leave-one-out by timestamp, ties keep file order). For `zero_shot` users the
last `ZERO_SHOT_TARGETS` are `test` and the rest `history`: the input context a zero-shot user
arrives with, never trained on. (`history` rather than `train`, so
that a training stage that filters on split == "train" cannot see zero-shot users at all.)
"""

from __future__ import annotations

import polars as pl

ITEMS_FILE = "items.parquet"
INTERACTIONS_FILE = "interactions.parquet"
USERS_FILE = "users.parquet"
FEATURES_FILE = "features.safetensors"

ITEM_COLUMNS: dict[str, pl.DataType] = {
    "item": pl.Int64,
    "raw_id": pl.String,
    "title": pl.String,
    "genre": pl.String,
    "category": pl.String,
    "title_ok": pl.Boolean,
    "is_cold": pl.Boolean,  # no train interaction: reachable only through content (MFL z)
}
INTERACTION_COLUMNS: dict[str, pl.DataType] = {
    "user": pl.Int64,
    "item": pl.Int64,
    "timestamp": pl.Float64,
    "pos": pl.Int64,
    "split": pl.String,
}
USER_COLUMNS: dict[str, pl.DataType] = {
    "user": pl.Int64,
    "raw_id": pl.String,
    "role": pl.String,
    "length": pl.Int64,
}

SPLITS = ("train", "valid", "test", "history")
ROLES = ("train", "zero_shot")
ZERO_SHOT_TARGETS = 3  # the paper's Mixed-Genre protocol: last 3 interactions are targets

# features.safetensors keys
MODALITY_PREFIX = "modality."
MASK_PREFIX = "mask."
TITLE_KEY = "title"
GENRE_KEY = "genre"
