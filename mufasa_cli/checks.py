"""Checks every settings dataclass shares: finite numbers, positive sizes."""

from __future__ import annotations

import dataclasses
import math

from mufasa_cli.errors import RecipeError


def finite(obj: object) -> None:
    """Every float setting of a config (and of its float tuples) a finite number: NaN and inf
    pass comparisons like `> 0` and would only fail deep inside training."""
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise RecipeError(f"{f.name} must be a finite number, got {v}")


def positive(obj: object, *names: str) -> None:
    finite(obj)
    for n in names:
        if getattr(obj, n) <= 0:
            raise RecipeError(f"{n} must be > 0, got {getattr(obj, n)}")
