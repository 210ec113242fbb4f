"""The training step without Ray: it learns, skips non-finite losses, rolls back and gives up as the guard
says; the loop configs reject bad keys by name; the fault hooks inject what the Ray tests ask for."""

import math

import pytest
import torch
from torch import nn

from activessf.config import Config, ConfigError
from activessf.training import faults
from activessf.training.engine import Schedule, classification_loss, inverse_frequency, snapshot, train_one_epoch
from activessf.training.faults import NO_HOOKS, fault_hooks
from activessf.training.guard import NonFiniteGuard, NonFiniteLoss
from activessf.training.loop_config import FinetuneLoopConfig, PretrainLoopConfig

CFG = Config().model_dump(mode="json")


def setup(seed=0):
    """A linear classifier on 4 fixed, separable samples (4 features, 2 classes)."""
    torch.manual_seed(seed)
    model = nn.Linear(4, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.0)
    x = torch.randn(4, 4, generator=torch.Generator().manual_seed(seed))
    batch = {"x": x, "label": (x[:, 0] > 0).long()}
    return model, opt, torch.amp.GradScaler("cuda", enabled=False), batch


def prepare(batch):
    return batch["x"], batch["label"]


def epoch(model, opt, scaler, batch, e=0, steps=4, epochs=1, **kw):
    schedule = Schedule(0.1, warmup_epochs=0, epochs=epochs, steps_per_epoch=steps)
    return train_one_epoch(model, opt, scaler, [batch] * steps, e, schedule, prepare, classification_loss(), **kw)


def weights(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_loss_falls_on_a_fixed_batch_and_accuracy_is_counted():
    model, opt, scaler, batch = setup()
    first = epoch(model, opt, scaler, batch, 0, steps=10, epochs=3)
    epoch(model, opt, scaler, batch, 1, steps=10, epochs=3)
    last = epoch(model, opt, scaler, batch, 2, steps=10, epochs=3)
    assert last["loss"] < first["loss"] * 0.8 and last["train_accuracy"] == 1.0
    assert first["images"] == 40 and first["epoch_seconds"] > 0
    assert opt.param_groups[0]["lr"] == pytest.approx(Schedule(0.1, 0, 3, 10).at(2, 9))  # per-step cosine


def test_non_finite_losses_are_skipped_on_every_step_they_occur():
    model, opt, scaler, batch = setup()
    guard = NonFiniteGuard(max_bad_steps=5)
    stats = epoch(model, opt, scaler, batch, steps=6, guard=guard, hooks=fault_hooks(nan_steps=[1, 2, 4]))
    assert guard.skipped == 3 and guard.rollbacks == 0 and stats["images"] == 3 * 4
    assert torch.isfinite(weights(model)).all() and math.isfinite(stats["loss"])  # the mean of the steps taken
    before = weights(model)
    stats = epoch(model, opt, scaler, batch, steps=3, guard=guard, hooks=fault_hooks(nan_steps=[0, 1, 2]))
    assert torch.equal(weights(model), before) and stats["images"] == 0 and math.isnan(stats["loss"])


def test_max_bad_steps_in_a_row_roll_back_with_a_lower_lr_then_give_up():
    model, opt, scaler, batch = setup()
    good = snapshot(model, opt, scaler)
    guard = NonFiniteGuard(max_bad_steps=2, max_rollbacks=1)
    stats = epoch(model, opt, scaler, batch, steps=3, guard=guard, last_good=good,
                  hooks=fault_hooks(nan_steps=[1, 2]))  # step 0 trains; 1 and 2 are bad: back to `good`
    assert torch.equal(weights(model), torch.cat([v.flatten() for v in good["model"].values()]))
    assert guard.rollbacks == 1 and guard.lr_factor == 0.5 and stats["images"] == 4
    epoch(model, opt, scaler, batch, 0, steps=1, guard=guard)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * 0.1)  # the backed-off lr
    with pytest.raises(NonFiniteLoss, match="2 steps in a row, 2 times"):
        epoch(model, opt, scaler, batch, steps=4, guard=guard, last_good=good, hooks=fault_hooks(nan_steps=[0, 1]))


def test_accumulation_steps_every_k_batches_and_reports_progress():
    model, opt, scaler, batch = setup()
    progress = []
    epoch(model, opt, scaler, batch, 1, steps=4, epochs=2, accum_steps=2, after_step=progress.append)
    assert progress == [0.75, 1.0]  # after batches 2 and 4 of epoch 1 of 2


def test_inverse_frequency_weighs_every_class_alike():
    w = inverse_frequency(torch.tensor([6, 2, 0]))
    assert torch.allclose(w * torch.tensor([6.0, 2.0, 1.0]), torch.full((3,), 8 / 3))


def test_loop_configs_declare_defaults_and_name_bad_keys():
    lc = PretrainLoopConfig.from_dict({"cfg": CFG, "rows": 10})
    assert (lc.max_bad_steps, lc.max_rollbacks, lc.cache_mb, lc.inject_nan_steps, lc.fail_at_epoch) == (5, 3, 2048, (), None)
    assert lc.cfg.pretrain.epochs == Config().pretrain.epochs
    with pytest.raises(ConfigError, match="fail_at_epoc: unknown field. Did you mean 'fail_at_epoch'"):
        PretrainLoopConfig.from_dict({"cfg": CFG, "rows": 10, "fail_at_epoc": 2})
    with pytest.raises(ConfigError, match=r"max_bad_steps = 0: .*greater than or equal to 1"):
        PretrainLoopConfig.from_dict({"cfg": CFG, "rows": 10, "max_bad_steps": 0})
    with pytest.raises(ConfigError, match="rows: missing"):
        PretrainLoopConfig.from_dict({"cfg": CFG})
    with pytest.raises(ConfigError, match="fail_at_epoch needs marker"):
        PretrainLoopConfig.from_dict({"cfg": CFG, "rows": 10, "fail_at_epoch": 1})
    ft = FinetuneLoopConfig.from_dict({"cfg": CFG, "train_rows": 8, "num_classes": 2, "class_counts": [5, 3]})
    assert ft.cache_mb == 4096 and ft.has_val and not ft.export_model
    with pytest.raises(ConfigError, match="class_counts has 1 entries for num_classes=2"):
        FinetuneLoopConfig.from_dict({"cfg": CFG, "train_rows": 8, "num_classes": 2, "class_counts": [5]})


def test_fault_hooks_kill_the_last_worker_once_per_marker(tmp_path, monkeypatch):
    exits = []
    monkeypatch.setattr(faults.time, "sleep", lambda s: None)
    monkeypatch.setattr(faults.os, "_exit", exits.append)
    assert fault_hooks() is NO_HOOKS
    marker = str(tmp_path / "run" / "failed_once")
    for rank in (0, 1):
        hooks = fault_hooks(fail_at_epoch=2, marker=marker, rank=rank, world=2)
        for e in range(4):
            hooks.on_epoch_start(e)
        hooks.on_epoch_start(2)  # a restart of the same run: no second failure
    assert exits == [1] and (tmp_path / "run" / "failed_once-2").exists()
    loss = torch.tensor(1.0)
    assert fault_hooks(nan_steps=[3]).corrupt_loss(loss, 2) is loss
    assert fault_hooks(nan_steps=[3]).corrupt_loss(loss, 3).isnan()


def test_a_step_budget_gives_pools_of_any_size_the_same_training():
    """pretrain.steps: whole epochs reaching the steps; a small pool trains more epochs, not fewer steps."""
    from activessf.training.schedule import budget, steps_per_epoch

    assert steps_per_epoch(100, 8, 1) == steps_per_epoch(100, 8, 2) == steps_per_epoch(100, 8, 1, 2) == 12
    big, small = budget(1000, 8, 1, 1, 400, 60), budget(100, 8, 1, 1, 400, 60)
    assert (big["epochs"], big["steps"]) == (1, 125) and (small["epochs"], small["steps"]) == (5, 60)
    assert small["images_seen"] == 60 * 8 and budget(100, 8, 1, 1, 7, None)["epochs"] == 7  # no steps: epochs
