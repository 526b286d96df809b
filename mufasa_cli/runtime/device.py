"""Device choice: `auto` takes CUDA when there is one."""

from __future__ import annotations

import torch

from mufasa_cli.errors import RecipeError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RecipeError("--device cuda: no CUDA device is available here")
    if name not in ("cpu", "cuda"):
        raise RecipeError(f"--device {name!r}: choose auto, cpu or cuda")
    return torch.device(name)
