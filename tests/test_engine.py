"""Training engine: LR schedules, checkpoints, metrics, optimizer, NaN stop, Ctrl-C, end-to-end training."""

from __future__ import annotations

import json
import math
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import TensorDataset

from letkd.config import RunConfig, config_from_dict
from letkd.engine import (
    CheckpointError,
    NonFiniteLossError,
    SumMeter,
    Trainer,
    build_optimizer,
    build_test_loader,
    build_train_loader,
    evaluate,
    load_checkpoint,
    lr_at_epoch,
    save_checkpoint,
    topk_correct,
)
from letkd.engine.checkpoint import capture_rng_state, restore_rng_state
from letkd.engine.distributed import DistInfo
from letkd.methods.vanilla import Vanilla
from letkd.pipeline import train_from_config

# ----------------------------------------------------------------------------------------- schedules


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


# ------------------------------------------------------------------------------------------- metrics


def test_topk_correct_matches_argsort():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(50, 7, generator=gen)
    labels = torch.randint(0, 7, (50,), generator=gen)
    order = np.argsort(-logits.numpy(), axis=1)
    for k, got in zip((1, 3, 5), topk_correct(logits, labels, (1, 3, 5)).tolist()):
        want = sum(labels[i].item() in order[i, :k] for i in range(50))
        assert got == want


def test_topk_correct_with_fewer_classes_than_k():
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert topk_correct(logits, labels, (5,)).tolist() == [6.0]


def test_sum_meter_means():
    meter = SumMeter()
    meter.add({"loss": 2.0 * 4, "correct": 3}, 4)
    meter.add({"loss": 1.0 * 6, "correct": 6}, 6)
    assert meter.count == 10
    assert meter.mean("loss") == pytest.approx(1.4)
    assert meter.mean("correct") == pytest.approx(0.9)
    meter.all_reduce()  # no process group: unchanged
    assert meter.mean("loss") == pytest.approx(1.4)


# --------------------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip_and_rng(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "optimizer": {}, "epoch": 2, "meta": {"x": [1, "a"]}}
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    state["rng"] = capture_rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    save_checkpoint(state, tmp_path / "a.pt", tmp_path / "b.pt")
    loaded = load_checkpoint(tmp_path / "b.pt")
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["epoch"] == 2
    restore_rng_state(loaded["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    good = tmp_path / "good.pt"
    save_checkpoint({"model": {}, "optimizer": {}, "epoch": 0, "meta": {}, "pad": torch.zeros(1000)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(garbage)
    plain = tmp_path / "plain.pt"
    torch.save({"model": {}}, plain)
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(plain)


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {}, "optimizer": {}, "epoch": 1, "meta": {}}, path)
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk died")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="disk died"):
        save_checkpoint({"model": {}, "optimizer": {}, "epoch": 2, "meta": {}}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind


# ----------------------------------------------------------------------------------------- optimizer


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


# ------------------------------------------------------------------------------- trainer (synthetic)


class TinyNet(nn.Module):
    """(B, 3, 8, 8) -> (B, 4): conv, BN, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 1).flatten(1))


class Exploding(Vanilla):
    """Vanilla whose loss turns NaN at (epoch, step) = ``at``."""

    at = (1, 2)

    def forward_train(self, images, labels, **batch):
        logits, losses = super().forward_train(images, labels)
        self.calls = getattr(self, "calls", -1) + 1
        if (self.epoch, self.calls % 4) == self.at:
            losses["loss_ce"] = losses["loss_ce"] * float("nan")
        return logits, losses


class Interrupted(Vanilla):
    """Vanilla that raises KeyboardInterrupt at (epoch, step) = (1, 1)."""

    def forward_train(self, images, labels, **batch):
        self.calls = getattr(self, "calls", -1) + 1
        if self.epoch == 1 and self.calls % 4 == 1:
            raise KeyboardInterrupt
        return super().forward_train(images, labels)


def synthetic_cfg(**train) -> RunConfig:
    return config_from_dict(
        {
            "name": "synthetic",
            "data": {"batch_size": 16, "test_batch_size": 32, "num_workers": 0},
            "model": {"name": "tiny", "num_classes": 4},
            "train": {"epochs": 3, "lr": 0.1, "progress": False, "tensorboard": False, **train},
        }
    )


def synthetic_trainer(run_dir: Path, cfg: RunConfig, distiller_cls=Vanilla) -> Trainer:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 8, 8, generator=gen)
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long() + 2 * (x[:, 1].mean(dim=(1, 2)) > 0).long()
    train, test = TensorDataset(x, y), TensorDataset(x[:40], y[:40])
    torch.manual_seed(0)
    info, device = DistInfo(), torch.device("cpu")
    return Trainer(
        distiller_cls(TinyNet()),
        cfg,
        run_dir,
        build_train_loader(train, cfg, info, device),
        build_test_loader(test, cfg, info, device),
        device,
    )


def test_trainer_learns_and_writes_run_folder(tmp_path):
    summary = synthetic_trainer(tmp_path, synthetic_cfg()).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for key in ("lr", "train_loss", "loss_ce", "train_top1", "test_top1", "test_top5", "test_loss",
                "images_per_second", "seconds"):
        assert all(r[key] is not None for r in rows), key
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert summary["status"] == "completed" and summary["last_top1"] == rows[-1]["test_top1"]
    assert summary["best_top1"] == max(r["test_top1"] for r in rows)
    assert summary["best_epoch"] == max(rows, key=lambda r: r["test_top1"])["epoch"]
    assert summary["parameters"] == sum(p.numel() for p in TinyNet().parameters())
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == summary["best_epoch"] and best["best_top1"] == summary["best_top1"]
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 2 and last["metrics"] == rows
    assert last["meta"]["num_classes"] == 4 and last["meta"]["input_size"] == [3, 8, 8]
    assert last["meta"]["grafts"] == []
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["epochs"] == 3


class RecordsLR(Vanilla):
    """Vanilla that records the optimizer LR seen at every training step."""

    seen: list[float] = []

    def forward_train(self, images, labels, **batch):
        RecordsLR.seen.append(self._optimizer.param_groups[0]["lr"])
        return super().forward_train(images, labels)


@pytest.mark.parametrize("per_step", [False, True])
def test_per_step_schedule_sets_the_lr_before_every_step(tmp_path, per_step):
    schedule = {"type": "cosine", "per_step": per_step}
    cfg = synthetic_cfg(epochs=2, schedule=schedule)
    trainer = synthetic_trainer(tmp_path, cfg, RecordsLR)
    trainer.distiller._optimizer = trainer.optimizer
    RecordsLR.seen = []
    trainer.fit()
    steps = 4  # 64 images, batch 16
    if per_step:
        expected = [lr_at_epoch(cfg.train, e + s / steps) for e in range(2) for s in range(steps)]
        assert expected[-1] < 0.02  # the cosine reaches its end within the run, not at the next epoch
    else:
        expected = [lr_at_epoch(cfg.train, e) for e in range(2) for _ in range(steps)]
    assert RecordsLR.seen == pytest.approx(expected)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = synthetic_trainer(tmp_path, synthetic_cfg(), Exploding)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.fit()
    assert (err.value.epoch, err.value.step) == (1, 2)
    assert "epoch 1, step 2" in str(err.value)
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


def test_keyboard_interrupt_saves_resumable_checkpoint(tmp_path):
    trainer = synthetic_trainer(tmp_path, synthetic_cfg(), Interrupted)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 0 and last["meta"]["interrupted"] == {"epoch": 1, "step": 1}
    weights = trainer.distiller.student.state_dict()
    assert all(torch.equal(weights[k], v) for k, v in last["model"].items())  # mid-epoch progress is kept
    fresh = synthetic_trainer(tmp_path, synthetic_cfg())
    assert fresh.resume() == 1
    assert fresh.fit()["epochs_done"] == 3


def test_resume_refuses_missing_or_corrupt_checkpoint(tmp_path):
    trainer = synthetic_trainer(tmp_path, synthetic_cfg())
    with pytest.raises(CheckpointError, match="no checkpoint"):
        trainer.resume()
    (tmp_path / "last.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        trainer.resume()


def test_evaluate_matches_manual_loop():
    torch.manual_seed(0)
    model = TinyNet().eval()
    x, y = torch.randn(50, 3, 8, 8), torch.randint(0, 4, (50,))
    cfg = synthetic_cfg()
    loader = build_test_loader(TensorDataset(x, y), cfg, DistInfo(), torch.device("cpu"))
    result = evaluate(model, loader, torch.device("cpu"))
    with torch.no_grad():
        logits = model(x)
    assert result["count"] == 50
    assert result["top1"] == pytest.approx(100.0 * (logits.argmax(1) == y).float().mean().item())
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)


# ---------------------------------------------------------------------------------- digits end to end


def digits_cfg(**train) -> RunConfig:
    return config_from_dict(
        {
            "name": "digits-test",
            "data": {"name": "digits", "batch_size": 32, "train_subset": 256, "test_subset": 120,
                     "num_workers": 0},
            "model": {"name": "resnet8"},
            "train": {"epochs": 2, "lr": 0.05, "max_steps_per_epoch": 4, "progress": False, **train},
        }
    )


def test_train_from_config_on_digits(tmp_path):
    summary = train_from_config(digits_cfg(), tmp_path / "run")
    run = tmp_path / "run"
    assert summary["epochs_done"] == 2 and summary["method"] == "vanilla"
    assert summary["device"] == "cpu" and summary["extra_parameters"] == 0
    for key in ("best_top1", "last_top1", "best_epoch", "wall_seconds", "images_per_second",
                "seconds_per_epoch", "parameters", "epochs"):
        assert summary[key] is not None, key
    assert list((run / "tb").glob("events.out.tfevents.*"))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["num_classes"] == 10  # resolved from the dataset
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_images"] for r in rows] == [128, 128]  # 4 steps of 32
    # the saved weights evaluate to the accuracy the run reported
    from letkd.commands.evaluate import load_model_for_eval
    from letkd.data import create_dataset, subset

    model, name = load_model_for_eval(str(run / "last.pt"), None, None, "digits")
    assert name == "resnet8"
    test = subset(create_dataset("digits", "test", transform="test"), 120, None)
    loader = torch.utils.data.DataLoader(test, batch_size=100)
    result = evaluate(model.eval(), loader, torch.device("cpu"))
    assert result["top1"] == pytest.approx(summary["last_top1"], abs=1e-9)


def test_bf16_autocast_and_channels_last_train(tmp_path):
    trainer = synthetic_trainer(tmp_path, synthetic_cfg(epochs=1, amp="bf16", channels_last=True))
    assert trainer.distiller.student.conv.weight.is_contiguous(memory_format=torch.channels_last)
    summary = trainer.fit()
    assert summary["status"] == "completed" and math.isfinite(summary["last_top1"])
    saved = load_checkpoint(tmp_path / "last.pt")["model"]
    assert set(saved) == set(TinyNet().state_dict())
    assert all(v.dtype == torch.float32 for k, v in saved.items() if "num_batches" not in k)


def test_resume_reports_config_changes(tmp_path, capsys):
    synthetic_trainer(tmp_path, synthetic_cfg(epochs=1)).fit()
    capsys.readouterr()
    longer = synthetic_trainer(tmp_path, synthetic_cfg(epochs=2))
    assert longer.resume() == 1
    assert "train.epochs: 1 -> 2" in capsys.readouterr().err
    assert longer.fit()["epochs_done"] == 2


def test_train_command_exit_codes(tmp_path, monkeypatch, capsys):
    import letkd.pipeline
    from letkd.cli import main

    config = str(Path(__file__).resolve().parents[1] / "configs/digits/resnet8.yaml")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(letkd.pipeline, "train_from_config", interrupted)
    assert main(["train", config, "--out", str(tmp_path)]) == 130

    def diverged(*args, **kwargs):
        raise NonFiniteLossError(0, 3, {"loss": float("nan")})

    monkeypatch.setattr(letkd.pipeline, "train_from_config", diverged)
    assert main(["train", config, "--out", str(tmp_path)]) == 1
    assert main(["train", config, "train.nope=1"]) == 1
    assert "unknown key 'train.nope'" in capsys.readouterr().err


def test_progress_bars_stay_out_of_redirected_logs(tmp_path, capsys):
    """With ``progress`` on and stderr not a terminal, no bar frames (carriage returns) reach the log."""
    synthetic_trainer(tmp_path, synthetic_cfg(epochs=1, progress=True)).fit()
    err = capsys.readouterr().err
    assert "\r" not in err
    assert "epoch 1/1" in err or "epoch 1/1" in capsys.readouterr().out


@pytest.mark.parametrize("reuse", [True, False])
def test_cpu_trainer_applies_reuse_host_memory(tmp_path, monkeypatch, reuse):
    calls = []
    monkeypatch.setattr("letkd.engine.trainer.reuse_freed_host_memory", lambda: calls.append(1) or True)
    synthetic_trainer(tmp_path, synthetic_cfg(reuse_host_memory=reuse))
    assert calls == ([1] if reuse else [])
