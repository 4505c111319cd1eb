"""Evaluation: top-k counts, sums, evaluate(), and `letkd eval` on RepDistiller-format files and our
checkpoints with grafted KD layers, with clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from letkd.cli import main
from letkd.data import create_dataset
from letkd.engine import SumMeter, evaluate, topk_correct
from letkd.models import create_model


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


def test_evaluate_matches_manual_loop():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)).eval()
    x, y = torch.randn(50, 3, 8, 8), torch.randint(0, 4, (50,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16)  # the last batch is smaller
    result = evaluate(model, loader, torch.device("cpu"))
    with torch.no_grad():
        logits = model(x)
    assert result["count"] == 50
    assert result["top1"] == pytest.approx(100.0 * (logits.argmax(1) == y).float().mean().item())
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)


def reference_metrics(model: torch.nn.Module) -> tuple[float, float, float]:
    """Top-1 / top-5 (percent) and mean cross-entropy of ``model`` on the digits test split, in one batch."""
    data = create_dataset("digits", "test", transform="test")
    images = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.tensor(data.targets)
    model.eval()
    with torch.no_grad():
        logits = model(images)
    top5 = logits.topk(5, dim=1).indices
    top1 = (top5[:, 0] == labels).sum().item() * 100 / len(labels)
    top5 = (top5 == labels[:, None]).any(dim=1).sum().item() * 100 / len(labels)
    return top1, top5, torch.nn.functional.cross_entropy(logits, labels).item()


def perturbed_resnet8() -> torch.nn.Module:
    torch.manual_seed(3)
    model = create_model("resnet8", 10)
    for name, buf in model.named_buffers():  # non-trivial BN statistics, so eval mode matters
        if name.endswith("running_mean"):
            buf.normal_(0, 0.1)
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 1.5)
    return model


def run_eval(capsys, *args: str) -> tuple[int, dict | None, str]:
    capsys.readouterr()
    code = main(["eval", "--data", "digits", "--json", "--workers", "0", *args])
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    return code, (json.loads(lines[-1]) if code == 0 else None), captured.err


def test_eval_repdistiller_checkpoint(tmp_path, capsys):
    model = perturbed_resnet8()
    path = tmp_path / "ckpt_epoch_240.pth"
    state = {"epoch": 240, "model": model.state_dict(), "accuracy": torch.tensor(50.0), "optimizer": None}
    torch.save(state, path)
    args = ("--model", "resnet8", "--checkpoint", str(path), "--batch-size", "64")
    code, result, err = run_eval(capsys, *args)
    assert code == 0, err
    top1, top5, loss = reference_metrics(model)
    assert result["images"] == 360
    assert result["top1"] == pytest.approx(top1, abs=1e-9)
    assert result["top5"] == pytest.approx(top5, abs=1e-9)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)


def test_eval_reapplies_grafts_recorded_in_checkpoint(tmp_path, capsys):
    from letkd.deploy import graft_spec
    from letkd.graft import graft
    from letkd.layers import KDLayer

    model = perturbed_resnet8()
    graft(model, "layer3", KDLayer(64, 8, alpha=0.5))
    spec = graft_spec(model)
    assert spec  # the KD layer's weights are in the state_dict under layer3.<name>.*
    path = tmp_path / "best.pt"
    meta = {"model_name": "resnet8", "num_classes": 10, "input_size": [3, 32, 32], "grafts": spec}
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 0, "meta": meta}, path)
    code, result, err = run_eval(capsys, "--checkpoint", str(path))
    assert code == 0, err
    assert result["model"] == "resnet8"
    top1, _, loss = reference_metrics(model)
    assert result["top1"] == pytest.approx(top1, abs=1e-9)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)


def test_eval_errors_are_clear(tmp_path, capsys):
    path = tmp_path / "plain.pth"
    torch.save(perturbed_resnet8().state_dict(), path)
    code, _, err = run_eval(capsys, "--checkpoint", str(path))
    assert code == 1 and "--model is required" in err
    code, _, err = run_eval(capsys, "--checkpoint", str(path), "--model", "resnet20")
    assert code == 1 and "does not match" in err
    code, _, err = run_eval(capsys, "--checkpoint", str(tmp_path / "missing.pt"), "--model", "resnet8")
    assert code == 1 and "not found" in err
