"""Optimizer and LR schedule (engine/optim.py), and the device choice."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from letkd.config import config_from_dict
from letkd.engine import build_optimizer, lr_at_epoch, select_device


def test_step_schedule_matches_paper_table():
    cfg = config_from_dict({"train": {"lr": 0.05, "epochs": 240}}).train
    expected = {0: 0.05, 149: 0.05, 150: 0.005, 179: 0.005, 180: 5e-4, 209: 5e-4, 210: 5e-5, 239: 5e-5}
    for epoch, lr in expected.items():
        assert lr_at_epoch(cfg, epoch) == pytest.approx(lr, rel=1e-12), epoch


def test_step_schedule_heterogeneous_lr():
    cfg = config_from_dict({"train": {"lr": 0.01}}).train
    assert [lr_at_epoch(cfg, e) for e in (149, 150, 180, 210)] == pytest.approx([0.01, 1e-3, 1e-4, 1e-5])


def test_cosine_schedule_with_warmup():
    schedule = {"type": "cosine", "warmup_epochs": 2, "min_lr": 0.0}
    cfg = config_from_dict({"train": {"lr": 0.1, "epochs": 12, "schedule": schedule}}).train
    # warm-up scales the cosine value (which is still lr at epochs 0 and 1) by 1/3 and 2/3
    assert lr_at_epoch(cfg, 0) == pytest.approx(0.1 / 3)
    assert lr_at_epoch(cfg, 1) == pytest.approx(0.2 / 3)
    assert lr_at_epoch(cfg, 2) == pytest.approx(0.1)
    assert lr_at_epoch(cfg, 7) == pytest.approx(0.05 * (1 + math.cos(math.pi * 5 / 10)))
    values = [lr_at_epoch(cfg, e) for e in range(2, 12)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_constant_schedule():
    cfg = config_from_dict({"train": {"lr": 0.3, "schedule": {"type": "constant"}}}).train
    assert {lr_at_epoch(cfg, e) for e in (0, 5, 200)} == {0.3}


def test_weight_decay_on_all_trainable_parameters_by_default():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(36, 2))
    params = list(model.parameters())
    opt = build_optimizer(params, config_from_dict({}).train)
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["weight_decay"] == 5e-4
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in params}
    opt = build_optimizer(params, config_from_dict({"train": {"decay_norm_and_bias": False}}).train)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {id(model[0].weight), id(model[3].weight)}


def test_select_device(monkeypatch):
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert select_device("auto") == select_device(None) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert select_device("auto", local_rank=3) == torch.device("cuda", 1)
    assert select_device("cuda", local_rank=1) == torch.device("cuda", 1)
    assert select_device("cuda:0", local_rank=1) == torch.device("cuda", 0)
