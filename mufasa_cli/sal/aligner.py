"""The module align-train optimises around the SAL, and its loss.

`Aligner.forward(batch)` is one training step's loss: the SAL encodes the batch's histories
(items read through their z, plus their id vectors with `item_ids`, re-encoded by the fusion
network when it is finetuned), and each query's user vector u is scored against its target
and the negatives (losses.py): in-batch with logQ, plus uniform draws, or the whole catalogue
with `full_softmax`. With a finetuned MFL its four losses (eq. 5) are added on the batch's items.

Legend: B users, L history length, R queries in a batch, N items, d_z fused width, D SAL width.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mufasa_cli.config import AlignConfig
from mufasa_cli.losses import Negatives, full_softmax_loss, in_batch, sampled_softmax_loss, uniform
from mufasa_cli.mfl.fusion import FusionNetwork
from mufasa_cli.sal.model import SALEncoder

TAU_RANGE = (0.01, 1.0)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # ids, lengths, qpos, targets (-1: none)
GROUP_COST = 64  # history rows one more SAL call is worth (its fixed cost), for length_groups


def length_groups(lengths: list[int], call: int = GROUP_COST) -> list[list[int]]:
    """The batch's users (indices into `lengths`) in groups of similar length, so that each
    group is padded only to its own longest history: the partition of the users sorted by
    length into runs that minimises the padded rows, sum of size * longest, plus `call` per
    group (dynamic programming over the sorted order; a batch has few users)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n = len(order)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of grouping the j shortest
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(j):  # the last group is order[i:j], padded to lengths[order[j - 1]]
            cost = best[i] + (j - i) * lengths[order[j - 1]] + call
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


class Aligner(nn.Module):
    """What align-train optimises: the SAL, log(tau), the fusion network when finetuned (with
    `mfl`, the MFL's batch encoder and losses), and the item-id vectors (N, d_z) when
    `ids_for` is given, kept at zero for the items it leaves out. `z` (N, d_z) is the frozen
    content of every item, `log_p` (N,) each item's log share of the training stream; neither
    is saved with the weights."""

    def __init__(
        self,
        sal: SALEncoder,
        cfg: AlignConfig,
        z: torch.Tensor,
        log_p: torch.Tensor,
        fusion: FusionNetwork | None = None,
        mfl=None,
        ids_for: torch.Tensor | None = None,
    ):
        super().__init__()
        self.sal = sal
        self.cfg = cfg
        self.fusion = fusion
        self.mfl = mfl
        self.register_buffer("frozen_z", z, persistent=False)
        self.register_buffer("log_p", log_p, persistent=False)
        self.ids = None
        if ids_for is not None:  # (N,) bool: which items get a vector
            self.ids = nn.Parameter(torch.zeros(len(ids_for), sal.item_tower[0].in_features))
            self.register_buffer("has_id", ids_for.float()[:, None])
        self.group_lengths = True  # encode users in groups of similar length (False: one padded call)
        log_tau = torch.tensor(math.log(cfg.tau))
        if cfg.learn_tau:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)

    @property
    def num_items(self) -> int:
        return len(self.frozen_z)

    def tau(self) -> torch.Tensor:
        return self.log_tau.clamp(math.log(TAU_RANGE[0]), math.log(TAU_RANGE[1])).exp()

    def with_ids(self, z: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """z of `items` (all items when None) plus their id vectors, when there are any; while
        training, each of `items` loses its vector with probability cfg.id_dropout."""
        if self.ids is None:
            return z
        if items is None:
            return z + self.ids * self.has_id
        keep = self.has_id[items]
        if self.training and self.cfg.id_dropout:  # this step scores some items from z alone
            keep = keep * (torch.rand_like(keep) >= self.cfg.id_dropout)
        return z + self.ids[items] * keep

    def content(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unique items, their content z) for the ids in `items`; z recomputed when finetuning."""
        unique = torch.unique(items)
        if self.fusion is None:
            return unique, self.frozen_z[unique]
        return unique, self.mfl.encode(self.fusion, unique, True)

    @torch.no_grad()
    def current_z(self) -> torch.Tensor:
        """Every item's z as the SAL reads it now: content (re-encoded when finetuned) + ids."""
        z = self.frozen_z
        if self.fusion is not None:
            z = torch.as_tensor(self.mfl.embed_all(self.fusion)[0], device=z.device)
        return self.with_ids(z)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """One step's loss and its parts for display."""
        cfg, N = self.cfg, self.num_items
        ids, lengths, qpos, targets = batch
        device = ids.device
        real = targets >= 0
        if cfg.full_softmax:  # every item a column: the catalogue's z (and e) each step
            extra = torch.arange(N, device=device)
        else:
            extra = torch.randint(0, N, (cfg.uniform_negatives,), device=device)
        unique, content = self.content(torch.cat([ids.flatten(), targets[real], extra]))
        z_u = self.with_ids(content, unique)
        local = lambda x: torch.searchsorted(unique, x)  # noqa: E731  item id -> row of z_u
        # index_select, not z_u[...]: its backward is an index_add, the indexing's an
        # accumulating index_put that costs several times more on CPU
        rows = z_u.index_select(0, local(ids).flatten()).view(*ids.shape, -1)
        u, t = self._encode_grouped(rows, lengths, qpos, targets)  # (R, D), (R,)
        e_all = self.sal.items(z_u)
        if cfg.full_softmax:  # exact softmax over the catalogue: no sampling, so no correction
            loss = full_softmax_loss(u, e_all, t, self.tau())
        else:
            loss = self._sampled_loss(u, t, e_all, local, extra)
        shown = {"softmax": loss.item()}
        if self.fusion is not None and cfg.mfl_weight > 0:
            batch_items = torch.unique(torch.cat([ids.flatten(), t]))  # eq. 5 on the batch's items
            aux, mfl_parts = self.mfl.loss(self.fusion, batch_items, True, z=content[local(batch_items)])
            loss = loss + cfg.mfl_weight * aux
            shown["mfl"] = mfl_parts["total"]
        if cfg.learn_tau:
            shown["tau"] = self.tau().item()
        return loss, shown

    def _encode_grouped(self, rows, lengths, qpos, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """The outputs u (R, D) at the batch's queries that have a target, and those targets
        (R,). Users are encoded in groups of similar length (length_groups), each padded to
        its own longest history only: the same outputs as one call over the batch padded to
        its longest (each user's are its own), in another row order, which the loss ignores."""
        groups = length_groups(lengths.tolist()) if self.group_lengths else [list(range(len(lengths)))]
        us, ts = [], []
        for users in groups:
            pick = torch.as_tensor(users, device=rows.device)
            n = int(lengths[pick].max())
            q, t = qpos[pick], targets[pick]
            if q.shape[1] == rows.shape[1]:  # one query per position (objective all): keep n of them
                q, t = q[:, :n], t[:, :n]
            out, _ = self.sal.encode(rows[pick, :n], lengths[pick], q)
            real = t >= 0
            us.append(out[real])
            ts.append(t[real])
        return torch.cat(us), torch.cat(ts)

    def _sampled_loss(self, u, t, e_all, local, extra) -> torch.Tensor:
        """In-batch softmax with logQ correction, plus the uniform draws `extra` as columns."""
        cfg, log_p = self.cfg, self.log_p
        e = e_all[local(t)]
        if cfg.sal.objective == "all" and len(t) > cfg.in_batch_negatives:
            cols = torch.randperm(len(t), device=u.device)[: cfg.in_batch_negatives]
        else:
            cols = torch.arange(len(t), device=u.device)
        parts = [in_batch(e[cols], t[cols], log_p)]
        if cfg.uniform_negatives:
            drawn, counts = torch.unique(extra, return_counts=True)  # a column per item, not per draw
            parts.append(uniform(e_all[local(drawn)], drawn, self.num_items, counts))
        own = log_p[t] + math.log(len(cols))  # the positive's in-batch correction
        return sampled_softmax_loss(u, e, t, own, Negatives.cat(parts), self.tau())
