"""The module align-train optimises around the SAL: the temperature, the fusion network when
it is finetuned, and the item-id vectors."""

from __future__ import annotations

import math

import torch
from torch import nn

from mufasa_cli.mfl.fusion import FusionNetwork
from mufasa_cli.sal.model import SALEncoder

TAU_RANGE = (0.01, 1.0)


class Aligner(nn.Module):
    """What align-train optimises: the SAL, log(tau), the fusion network when finetuned, and
    the item-id vectors (N, d_z) when `item_ids`, kept at zero for the items in `ids_for`."""

    def __init__(
        self,
        sal: SALEncoder,
        tau: float,
        learn_tau: bool,
        fusion: FusionNetwork | None,
        ids_for: torch.Tensor | None = None,
    ):
        super().__init__()
        self.sal = sal
        self.fusion = fusion
        self.ids = None
        if ids_for is not None:  # (N,) bool: which items get a vector
            self.ids = nn.Parameter(torch.zeros(len(ids_for), sal.item_tower[0].in_features))
            self.register_buffer("has_id", ids_for.float()[:, None])
        log_tau = torch.tensor(math.log(tau))
        if learn_tau:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    def tau(self) -> torch.Tensor:
        return self.log_tau.clamp(math.log(TAU_RANGE[0]), math.log(TAU_RANGE[1])).exp()

    def with_ids(self, z: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """z of `items` (all items when None) plus their id vectors, when there are any."""
        if self.ids is None:
            return z
        if items is None:
            return z + self.ids * self.has_id
        return z + self.ids[items] * self.has_id[items]
