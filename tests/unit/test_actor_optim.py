"""The actor's LR schedule (closed form) and AdamW parameter groups."""

import math

import pytest
import torch
from torch import nn

from sfpo_rl.workers.optim import build_optimizer, build_scheduler, lr_multiplier, param_groups


def test_warmup_then_cosine_to_min_ratio():
    f = lr_multiplier("cosine", warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]  # no step at LR 0
    assert f(4) == pytest.approx(1.0)
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)  # held after total_steps


def test_constant_with_warmup():
    f = lr_multiplier("constant", warmup_steps=2, total_steps=None, min_lr_ratio=0.0)
    assert [f(s) for s in range(5)] == [0.5, 1.0, 1.0, 1.0, 1.0]


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")
def test_scheduler_steps_the_optimizer_lr():
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8)
    sched = build_scheduler(opt, schedule="cosine", warmup_steps=0, total_steps=2, min_lr_ratio=0.0)
    lrs = []
    for _ in range(3):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs == pytest.approx([1e-2, 5e-3, 0.0])


def test_no_weight_decay_on_biases_and_norms():
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    model.register_parameter("final_norm_weight", nn.Parameter(torch.ones(4, 4)))  # 2-D but named "norm"
    decay, no_decay = param_groups(model, weight_decay=0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4])]  # only the Linear weight
    assert len(no_decay["params"]) == 4  # linear bias, layer-norm weight and bias, final_norm_weight


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError, match="unknown LR schedule"):
        lr_multiplier("linear", 0, 10, 0.0)
