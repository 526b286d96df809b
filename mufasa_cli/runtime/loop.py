"""The training loop every trainer shares.

Under torchrun each rank trains on its share of every epoch's batches (runtime/dist.py) and
DistributedDataParallel averages the gradients across ranks during each backward: the step is
wrapped as a module (`StepModule`) so that every trainer's step, whether a model's forward or
a function of several submodules, goes through it. Only rank 0 writes checkpoints.

Seeded and deterministic on CPU: epoch e draws its batch order and its random ops from
seeds derived from (seed, e), never from state carried over from earlier epochs, so a run
resumed from the checkpoint of epoch e-1 replays epoch e exactly as an uninterrupted run.
AdamW, linear warmup then cosine decay, gradient clipping, early stopping on a validation
metric (higher is better, best weights restored at the end), one checkpoint per epoch
(written atomically), and a guard that stops on a non-finite loss, gradient or weight,
keeping the last good checkpoint (one is never written with non-finite weights).

Checkpoints hold only tensors and plain Python values and are read with
torch.load(weights_only=True): a checkpoint file from elsewhere cannot run code. --resume
may change the learning rate (the way out of a divergence); any other change of the
configuration is refused.
"""

from __future__ import annotations

import io
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mufasa_cli.artifacts import atomic_write_bytes
from mufasa_cli.config import TrainConfig
from mufasa_cli.errors import MufasaError
from mufasa_cli.runtime import dist

OnStep = Callable[[str, int, int, int, int, dict[str, float]], None]  # (name, epoch, epochs, step, steps, losses)


class TrainingDiverged(MufasaError):
    """The loss or a gradient became NaN/inf."""


class CheckpointMismatch(MufasaError):
    """--resume found a checkpoint written under another configuration, or one it cannot read."""


CHECKPOINT_KEYS = (
    "fingerprint",
    "epoch",
    "model",
    "optimizer",
    "scheduler",
    "best_metric",
    "best_epoch",
    "bad_evals",
    "best_state",
    "history",
)


class StepModule(nn.Module):
    """A training step as a module: forward(batch) = step_loss(batch), with `model` registered
    so that DistributedDataParallel sees (and averages the gradients of) its parameters."""

    def __init__(self, model: nn.Module, step_loss: Callable[[Any], tuple[torch.Tensor, dict[str, float]]]):
        super().__init__()
        self.model = model
        self.step_loss = step_loss

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
        return self.step_loss(batch)


def _runner(model: nn.Module, step_loss: Callable) -> Callable:
    """What a step calls: step_loss itself, or under torchrun the step wrapped in DDP."""
    if dist.world() == 1:
        return step_loss
    from torch.nn.parallel import DistributedDataParallel

    device = next(model.parameters()).device
    return DistributedDataParallel(
        StepModule(model, step_loss),
        device_ids=[device.index] if device.type == "cuda" else None,
        broadcast_buffers=False,  # every rank built the same buffers from the same seed
        find_unused_parameters=True,  # a batch need not reach every parameter (item ids, towers)
    )


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + salt) % (2**63 - 1)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


@dataclass
class FitResult:
    best_epoch: int
    best_metric: float | None
    epochs_run: int
    stopped_early: bool
    resumed_from: int | None
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    wall_time_s: float = 0.0
    lr_override: dict | None = None  # {"from", "to"}: --resume continued with another learning rate

    @property
    def improving_at_cap(self) -> bool:
        """Stopped by the epoch cap before early stopping could end it: its best validation is
        among the last `patience` ones, so it had not converged and a longer run may score
        higher (a baseline in that state is under-trained)."""
        return not self.stopped_early and any("valid" in row for row in self.history)

    def summary(self) -> dict:
        """What a stage's manifest records about its training run (epochs counted from 1)."""
        return {
            "best_epoch": self.best_epoch + 1,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            "improving_at_cap": self.improving_at_cap,
            "resumed_after_epoch": None if self.resumed_from is None else self.resumed_from + 1,
            **({"lr_override": self.lr_override} if self.lr_override else {}),
            "history": self.history,
        }


def _lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    warmup = int(cfg.warmup_frac * total_steps)

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return f


def _save(path: Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by fit(), read without unpickling anything but tensors and plain
    values; a file that is not one (corrupt, truncated, or carrying objects) is refused by name."""
    try:
        with warnings.catch_warnings():  # torch warns about a garbage file's pickle protocol
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a bad file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointMismatch(
            f"{path}: not a readable mufasa checkpoint ({type(e).__name__}: {reason[:160]}); "
            "nothing in it was run; drop --resume to start over"
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        raise CheckpointMismatch(f"{path}: not a mufasa checkpoint (keys missing); drop --resume to start over")
    return state


def _is_train_config(d: dict) -> bool:
    return {"lr", "epochs", "batch_size", "weight_decay"} <= d.keys()


def _without_lr(obj):
    """A fingerprint with the learning rate of every training schedule in it left out."""
    if isinstance(obj, dict):
        return {k: _without_lr(v) for k, v in obj.items() if not (k == "lr" and _is_train_config(obj))}
    if isinstance(obj, list | tuple):
        return [_without_lr(v) for v in obj]
    return obj


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    tensors = [t.detach() for t in tensors if t.is_floating_point()]
    return not tensors or bool(torch.isfinite(torch.nn.utils.get_total_norm(tensors)))


def fit(
    *,
    name: str,
    model: nn.Module,
    params: Iterable[nn.Parameter] | None = None,
    cfg: TrainConfig,
    seed: int,
    steps_per_epoch: int,
    batches: Callable[[np.random.Generator], Iterable[Any]],
    step_loss: Callable[[Any], tuple[torch.Tensor, dict[str, float]]],
    validate: Callable[[], float] | None,
    checkpoint: Path,
    fingerprint: dict,
    resume: bool,
    on_step: OnStep | None = None,
    on_epoch: Callable[[str, int, dict[str, float]], None] | None = None,
) -> FitResult:
    """Train `model` in place; on return it holds the best validated weights.

    batches(rng) yields one epoch of batches (its order drawn from rng); step_loss(batch)
    returns the loss to minimise and its components for display; validate() returns the
    early-stopping metric, higher is better.
    """
    started = time.perf_counter()
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    steps_per_epoch = -(-steps_per_epoch // dist.world())  # each rank's share
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, cfg.epochs * steps_per_epoch))
    fingerprint = {"name": name, "train": asdict(cfg), "seed": seed, **fingerprint}

    start_epoch, best_metric, best_epoch, bad_evals = 0, None, -1, 0
    best_state: dict | None = None
    history: list[dict[str, float]] = []
    resumed_from = None
    lr_override = None
    if resume and checkpoint.is_file():
        state = load_checkpoint(checkpoint)
        saved = state["fingerprint"]
        if _without_lr(saved) != _without_lr(fingerprint):
            raise CheckpointMismatch(
                f"{checkpoint}: written under another configuration (only the learning rate may change "
                "on --resume); drop --resume to start over"
            )
        try:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise CheckpointMismatch(
                f"{checkpoint}: does not fit this model ({e}); drop --resume to start over"
            ) from None
        start_epoch, best_metric, best_epoch = state["epoch"] + 1, state["best_metric"], state["best_epoch"]
        bad_evals, best_state, history = state["bad_evals"], state["best_state"], state["history"]
        resumed_from = state["epoch"]
        old_lr = saved.get("train", {}).get("lr")
        if old_lr != cfg.lr:  # continue the schedule from where it was, scaled to the new rate
            lr_override = {"from": old_lr, "to": cfg.lr, "after_epoch": resumed_from + 1}
            sched.base_lrs = [cfg.lr for _ in opt.param_groups]
            factor = sched.lr_lambdas[0](sched.last_epoch)  # where the schedule stands
            for group in opt.param_groups:
                group["initial_lr"], group["lr"] = cfg.lr, cfg.lr * factor
    elif checkpoint.exists() and dist.is_main():
        checkpoint.unlink()

    run_step = _runner(model, step_loss)
    stopped_early = False
    epoch = start_epoch - 1
    done = start_epoch >= cfg.epochs or (start_epoch > 0 and bad_evals >= cfg.patience)
    for epoch in range(start_epoch, cfg.epochs if not done else start_epoch):
        model.train()
        torch.manual_seed(epoch_seed(seed, epoch))
        rng = np.random.default_rng(epoch_seed(seed, epoch, salt=1))
        sums: dict[str, float] = {}
        n = 0
        for step, batch in enumerate(dist.shard(batches(rng))):
            loss, parts = run_step(batch)
            if not torch.isfinite(loss):
                _diverged(name, epoch, step, parts, checkpoint, f"loss is {loss.item()}")
            opt.zero_grad(set_to_none=True)
            loss.backward()  # under torchrun DDP averages the gradients across ranks here
            norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            if not torch.isfinite(norm):
                _diverged(name, epoch, step, parts, checkpoint, f"gradient norm is {norm.item()}")
            try:
                opt.step()
            except RuntimeError as e:  # AdamW's step size itself overflows float32 at a huge rate
                if "overflow" not in str(e):
                    raise
                _diverged(name, epoch, step, parts, checkpoint, f"the update overflows ({e})")
            if not all_finite(params):
                _diverged(name, epoch, step, parts, checkpoint, "a weight became NaN/inf after the update")
            sched.step()
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            if on_step is not None:
                on_step(name, epoch, cfg.epochs, step + 1, steps_per_epoch, {k: v / n for k, v in sums.items()})
        row = {"epoch": epoch, **{k: v / max(n, 1) for k, v in sums.items()}, "lr": sched.get_last_lr()[0]}
        evaluate = validate is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs)
        if evaluate:
            model.eval()
            torch.manual_seed(epoch_seed(seed, epoch, salt=2))
            with torch.no_grad():
                metric = float(validate())
            row["valid"] = metric
            if best_metric is None or metric > best_metric:
                best_metric, best_epoch, bad_evals = metric, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad_evals += 1
        history.append(row)
        if on_epoch is not None:
            on_epoch(name, epoch, row)
        if not all_finite(model.state_dict().values()):
            _diverged(name, epoch, n - 1, {}, checkpoint, "a weight is NaN/inf at the end of the epoch")
        if dist.is_main():
            _save(
                checkpoint,
                {
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "best_metric": best_metric,
                    "best_epoch": best_epoch,
                    "bad_evals": bad_evals,
                    "best_state": best_state,
                    "history": history,
                },
            )
        if evaluate and bad_evals >= cfg.patience:
            stopped_early = True
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = epoch
    model.eval()
    return FitResult(
        best_epoch=best_epoch,
        best_metric=best_metric,
        epochs_run=len(history),
        stopped_early=stopped_early or (resumed_from is not None and bad_evals >= cfg.patience),
        resumed_from=resumed_from,
        history=history,
        wall_time_s=time.perf_counter() - started,
        lr_override=lr_override,
    )


def _diverged(name: str, epoch: int, step: int, parts: dict[str, float], checkpoint: Path, what: str) -> None:
    shown = ", ".join(f"{k}={v:.4g}" for k, v in parts.items())
    shown = f" ({shown})" if shown else ""
    advice = (
        f"the last good checkpoint {checkpoint} (finite weights) is kept: pass --resume with a lower learning "
        "rate (--lr, or train.lr in the recipe) to continue from it"
        if checkpoint.is_file()
        else "no epoch had completed, so there is no checkpoint: lower the learning rate (--lr, or train.lr in "
        "the recipe) or check the inputs"
    )
    raise TrainingDiverged(f"{name}: {what} at epoch {epoch + 1}, step {step + 1}{shown}; {advice}")
