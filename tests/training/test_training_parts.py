"""Training parts without Ray: schedule, parameter groups, the non-finite guard, CPU precision."""

import math

import pytest
import torch
from torch import nn

from activessf.training.engine import amp_settings
from activessf.training.guard import NonFiniteGuard, NonFiniteLoss
from activessf.training.loop import optimizer_digest
from activessf.training.optim import param_groups
from activessf.training.schedule import lr_at, scaled_lr


def test_warmup_then_cosine():
    assert lr_at(0, 1.0, 5, 100) == 0.0 and lr_at(2.5, 1.0, 5, 100) == 0.5
    assert lr_at(5, 1.0, 5, 100) == pytest.approx(1.0)
    assert lr_at(52.5, 1.0, 5, 100) == pytest.approx(0.5)
    assert lr_at(100, 1.0, 5, 100, min_lr=0.1) == pytest.approx(0.1)
    assert scaled_lr(1e-3, 64) == pytest.approx(2.5e-4)  # the paper: 1e-3 x 64 / 256


def test_no_weight_decay_on_norms_biases_and_tokens():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    model.register_parameter("cls_token", nn.Parameter(torch.zeros(1, 1, 4)))
    groups = {g["weight_decay"]: g["names"] for g in param_groups(model, 0.05)}
    assert groups[0.05] == ["0.weight"]
    assert set(groups[0.0]) == {"0.bias", "1.weight", "1.bias", "cls_token"}


def test_guard_skips_then_rolls_back_then_gives_up():
    g = NonFiniteGuard(max_bad_steps=3, max_rollbacks=2, lr_backoff=0.5)
    nan = float("nan")
    assert [g.check(v, i) for i, v in enumerate([1.0, nan, 1.0, nan, nan])] == ["step", "skip", "step", "skip", "skip"]
    assert g.check(nan, 5) == "rollback" and g.lr_factor == 0.5 and g.skipped == 4
    assert [g.check(math.inf, i) for i in range(6, 9)] == ["skip", "skip", "rollback"] and g.lr_factor == 0.25
    g.check(nan, 9), g.check(nan, 10)
    with pytest.raises(NonFiniteLoss, match="lower pretrain.base_lr"):
        g.check(nan, 11)


def test_cpu_precision_never_asks_for_cuda():
    cpu = torch.device("cpu")
    assert amp_settings("auto", cpu) == (False, torch.bfloat16, False)
    assert amp_settings("fp32", cpu)[0] is False and amp_settings("bf16", cpu)[0] is True
    scaler = torch.amp.GradScaler("cuda", enabled=False)  # what the loop builds on CPU
    model = nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters())
    loss = model(torch.randn(4, 3)).sum()
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    assert not torch.cuda.is_initialized()
    assert len(optimizer_digest(opt)) == 16
