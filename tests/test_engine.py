"""Training loop: run folder, per-step LR, NaN stop, Ctrl-C, resume, AMP, end-to-end training on digits."""

from __future__ import annotations

import json
import math
from pathlib import Path

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
    Trainer,
    build_test_loader,
    build_train_loader,
    evaluate,
    load_checkpoint,
    lr_at_epoch,
)
from letkd.engine.distributed import DistInfo
from letkd.methods.vanilla import Vanilla
from letkd.pipeline import train_from_config

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
    # 1-based epochs as in the progress lines; the loss named, the checkpoint left and its epoch
    assert "epoch 2, step 2: loss_ce=nan" in str(err.value) and "last.pt (epoch 1)" in str(err.value)
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"


def test_keyboard_interrupt_keeps_the_exact_checkpoint_and_resumes_exactly(tmp_path):
    reference = synthetic_trainer(tmp_path / "ref", synthetic_cfg())
    reference.fit()
    trainer = synthetic_trainer(tmp_path / "run", synthetic_cfg(), Interrupted)
    with pytest.raises(KeyboardInterrupt) as err:
        trainer.fit()
    # counted from 1 as in the progress lines; last.pt is still the end of epoch 1, not a mid-epoch snapshot
    assert "in epoch 2/3" in str(err.value) and "holds epoch 1/3" in str(err.value), err.value
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["epochs_done"]) == ("interrupted", 1)
    fresh = synthetic_trainer(tmp_path / "run", synthetic_cfg())
    assert fresh.resume() == 1
    assert fresh.fit()["epochs_done"] == 3
    resumed, uninterrupted = fresh.distiller.student.state_dict(), reference.distiller.student.state_dict()
    assert all(torch.equal(resumed[k], v) for k, v in uninterrupted.items())  # bit-exact


def test_resume_refuses_missing_or_corrupt_checkpoint(tmp_path):
    trainer = synthetic_trainer(tmp_path, synthetic_cfg())
    with pytest.raises(CheckpointError, match="no checkpoint"):
        trainer.resume()
    (tmp_path / "last.pt").write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="corrupt"):
        trainer.resume()


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
    from letkd.data import create_dataset, subset
    from letkd.deploy import load_student

    model, meta = load_student(run / "last.pt", dataset="digits")
    assert meta["model_name"] == "resnet8" and meta["num_classes"] == 10
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
