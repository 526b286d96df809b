"""The shared training loop: determinism, resume equivalence, early stopping, NaN guard."""

import numpy as np
import pytest
import torch

from mufasa_cli.config import TrainConfig
from mufasa_cli.runtime.loop import CheckpointMismatch, TrainingDiverged, fit

X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.1


class Boom(Exception):
    pass


def _train(
    tmp_path,
    epochs=6,
    resume=False,
    crash_at=None,
    nan_at=None,
    patience=100,
    validate=None,
    seed=0,
    lr=0.05,
    inf_at=None,
):
    torch.manual_seed(123)
    model = torch.nn.Linear(3, 1)
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=lr, patience=patience, warmup_frac=0.2)

    def batches(rng):
        order = rng.permutation(64)
        for s in range(0, 64, 16):
            yield order[s : s + 16]

    def step(idx):
        noise = torch.randn(len(idx)) * 0.01  # a random op inside the step, as dropout would be
        pred = model(X[idx]).squeeze(-1) + noise
        loss = (pred - Y[idx]).pow(2).mean()
        if inf_at == state["steps"]:  # after the forward pass: the loss and gradients stay finite
            model.bias.data.fill_(float("inf"))
        return loss * (float("nan") if nan_at == state["steps"] else 1.0), {"mse": loss.item()}

    state = {"steps": 0}

    def on_step(name, epoch, epochs, step_no, steps, parts):
        state["steps"] += 1
        if crash_at is not None and (epoch, step_no) == crash_at:
            raise Boom()

    result = fit(
        name="toy",
        model=model,
        cfg=cfg,
        seed=seed,
        steps_per_epoch=4,
        batches=batches,
        step_loss=step,
        validate=validate or (lambda: -float((model(X).squeeze(-1) - Y).pow(2).mean())),
        checkpoint=tmp_path / "toy.pt",
        fingerprint={"toy": 1},
        resume=resume,
        on_step=on_step,
    )
    return model, result


def test_same_seed_same_weights(tmp_path):
    a, _ = _train(tmp_path / "a")
    b, _ = _train(tmp_path / "b")
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)


def test_crash_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    ref, ref_result = _train(tmp_path / "ref")
    with pytest.raises(Boom):
        _train(tmp_path / "run", crash_at=(3, 2))  # dies in the 4th epoch, after 3 checkpoints
    resumed, result = _train(tmp_path / "run", resume=True)
    assert result.resumed_from == 2
    torch.testing.assert_close(resumed.weight, ref.weight, rtol=0, atol=0)
    assert [r["mse"] for r in result.history] == [r["mse"] for r in ref_result.history]


def test_resume_refuses_a_checkpoint_of_another_config(tmp_path):
    with pytest.raises(Boom):
        _train(tmp_path, crash_at=(1, 1))
    with pytest.raises(CheckpointMismatch, match="another configuration"):
        _train(tmp_path, resume=True, epochs=9)


def test_nan_guard_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(
        TrainingDiverged, match=r"toy: loss is nan at epoch 3, step 2 .*toy\.pt \(finite weights\) is kept"
    ):
        _train(tmp_path, nan_at=9)  # the 10th step: epoch 3 (0-based 2), step 2
    state = torch.load(tmp_path / "toy.pt", weights_only=True)
    assert state["epoch"] == 1  # epochs 1 and 2 completed
    assert all(np.isfinite(v).all() for v in (p.numpy() for p in state["model"].values()))


def test_nan_guard_checks_the_weights_after_each_update(tmp_path):
    # the loss and gradient of the step were finite, the weights after it are not
    with pytest.raises(TrainingDiverged, match=r"a weight became NaN/inf after the update at epoch 2, step 2"):
        _train(tmp_path, inf_at=5)
    state = torch.load(tmp_path / "toy.pt", weights_only=True)
    assert state["epoch"] == 0 and torch.isfinite(state["model"]["bias"]).all()
    # a rate so large that AdamW's step overflows float32 is a divergence too, not a crash
    with pytest.raises(TrainingDiverged, match=r"overflow.*epoch 1, step 1"):
        _train(tmp_path / "big", lr=1e39)
    assert not (tmp_path / "big" / "toy.pt").exists()


def test_resume_after_divergence_with_a_lower_lr_continues_and_records_it(tmp_path):
    with pytest.raises(TrainingDiverged, match="--resume with a lower learning rate"):
        _train(tmp_path, nan_at=9)
    model, result = _train(tmp_path, resume=True, lr=0.01)
    assert result.resumed_from == 1 and result.epochs_run == 6
    assert result.lr_override == {"from": 0.05, "to": 0.01, "after_epoch": 2}
    assert result.summary()["lr_override"]["to"] == 0.01
    assert result.history[2]["lr"] < 0.01 < result.history[1]["lr"]  # the schedule goes on at the new rate
    assert torch.isfinite(model.weight).all()
    # the new rate is what the checkpoint now records: resuming again with it is no override
    assert torch.load(tmp_path / "toy.pt", weights_only=True)["fingerprint"]["train"]["lr"] == 0.01


def test_corrupt_checkpoint_is_named_on_resume(tmp_path):
    (tmp_path / "toy.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointMismatch, match=r"toy\.pt: not a readable mufasa checkpoint"):
        _train(tmp_path, resume=True)
    torch.save({"epoch": 1}, tmp_path / "toy.pt")
    with pytest.raises(CheckpointMismatch, match=r"toy\.pt: not a mufasa checkpoint \(keys missing\)"):
        _train(tmp_path, resume=True)


def test_early_stopping_restores_the_best_weights(tmp_path):
    scores = iter([1.0, 3.0, 2.0, 2.5, 0.0, 5.0])
    _, result = _train(tmp_path, epochs=6, patience=2, validate=lambda: next(scores))
    assert result.stopped_early and result.best_epoch == 1 and result.epochs_run == 4


def test_improving_at_cap_marks_a_run_the_cap_cut_short(tmp_path):
    rising = iter(range(100))
    _, capped = _train(tmp_path / "a", epochs=3, validate=lambda: float(next(rising)))
    assert capped.improving_at_cap and not capped.stopped_early
    assert capped.summary()["improving_at_cap"] is True
    falling = iter(range(100, 0, -1))
    _, stopped = _train(tmp_path / "b", epochs=6, patience=2, validate=lambda: float(next(falling)))
    assert stopped.stopped_early and not stopped.improving_at_cap
    peaked = iter([1.0, 3.0, 2.0, 2.5])  # best before the end, but patience not used up: not converged
    _, plateau = _train(tmp_path / "c", epochs=4, patience=5, validate=lambda: next(peaked))
    assert not plateau.stopped_early and plateau.improving_at_cap
