"""Checkpoint files as the anchor tools write them, built from their save code (never by running it).

- RepDistiller (``train_teacher.py`` / ``train_student.py``, PyTorch 0.4.0): ``ckpt_epoch_<n>.pth``
  ``{"epoch", "model", "accuracy", ["optimizer"]}``, ``<model>_best.pth`` ``{"epoch", "model", "best_acc",
  ["optimizer"]}``, ``<model>_last.pth`` ``{"opt": argparse.Namespace, "model", ["optimizer"]}``; legacy
  serialisation, state_dicts without BatchNorm ``num_batches_tracked`` nor version metadata, accuracies as
  0-d CUDA tensors.
- mdistiller (``mdistiller/engine/trainer.py``): ``student_best`` / ``student_latest`` / ``student_<n>``
  ``{"model": student state_dict}``; ``best`` / ``latest`` / ``epoch_<n>`` ``{"epoch", "model":
  DataParallel(distiller).state_dict() (module.student.*, module.teacher.*, the method's modules),
  "optimizer", "best_acc"}``; zip serialisation, CUDA storages.
- the letKD authors (``distillation/algorithms/algorithm.py`` ``save_network``): one file per network,
  ``<net>_net_epoch<n>[.best]`` ``{"epoch", "network": state_dict, "metric": np.float64}`` (numpy 1's
  global names); zip serialisation, CUDA storages.

CUDA-tagged storages are written without a GPU by tagging the storages' location ``cuda:0`` while saving.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

NUMPY2_SCALAR, NUMPY1_SCALAR = b"numpy._core.multiarray\nscalar", b"numpy.core.multiarray\nscalar"


@contextlib.contextmanager
def storages_tagged(location: str) -> Iterator[None]:
    """While saving, every storage is recorded at ``location`` (``"cuda:0"``: as saved from a GPU)."""
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: location
    try:
        yield
    finally:
        torch.serialization.location_tag = original


def save(obj: Any, path: Path, legacy: bool, location: str = "cuda:0", numpy1: bool = False) -> Path:
    """``torch.save(obj)`` in the legacy (pre-1.6) or zip format, storages tagged ``location``;
    ``numpy1``: numpy scalars under numpy 1's global name, as files written before numpy 2 hold them."""
    buf = io.BytesIO()
    with storages_tagged(location):
        torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    data = buf.getvalue()
    if numpy1:
        data = _numpy1_names(data, legacy)
    path.write_bytes(data)
    return path


def _numpy1_names(data: bytes, legacy: bool) -> bytes:
    if legacy:
        return data.replace(NUMPY2_SCALAR, NUMPY1_SCALAR)
    source, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            member = source.read(info.filename)
            if info.filename.endswith("/data.pkl"):
                member = member.replace(NUMPY2_SCALAR, NUMPY1_SCALAR)
            target.writestr(info.filename, member)
    return out.getvalue()


def pytorch040_state_dict(model: nn.Module) -> OrderedDict:
    """``model``'s state_dict as PyTorch 0.4.0 returned it: no ``num_batches_tracked``, no ``_metadata``."""
    return OrderedDict(
        (k, v.clone()) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")
    )


def sgd_state(model: nn.Module) -> dict:
    """An SGD state_dict with momentum buffers, as the tools save beside the weights (``model`` unchanged)."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    optimizer.step()
    model.zero_grad(set_to_none=True)
    return optimizer.state_dict()


def repdistiller_options(**changes: Any) -> argparse.Namespace:
    """The ``opt`` namespace of RepDistiller's ``train_student.py`` (its parsed and derived options)."""
    opt = argparse.Namespace(
        print_freq=100, tb_freq=500, save_freq=40, batch_size=64, num_workers=8, epochs=240, init_epochs=30,
        learning_rate=0.05, lr_decay_epochs=[150, 180, 210], lr_decay_rate=0.1, weight_decay=5e-4,
        momentum=0.9, dataset="cifar100", model_s="resnet8", path_t="./save/models/resnet32x4.pth",
        distill="kd", trial="1", gamma=0.1, alpha=0.9, beta=0.0, kd_T=4.0, feat_dim=128, mode="exact",
        nce_k=16384, nce_t=0.07, nce_m=0.5, hint_layer=2, model_path="./save/student_model",
        tb_path="./save/student_tensorboards", model_t="resnet32x4",
        model_name="S:resnet8_T:resnet32x4_cifar100_kd_r:0.1_a:0.9_b:0.0_1",
        tb_folder="./save/student_tensorboards/x", save_folder="./save/student_model/x",
    )  # fmt: skip
    for key, value in changes.items():
        setattr(opt, key, value)
    return opt


def repdistiller_files(model: nn.Module, folder: Path) -> dict[str, Path]:
    """A student's three files as RepDistiller's ``train_student.py`` writes them (legacy, 0.4.0, CUDA)."""
    state = pytorch040_state_dict(model)
    acc = torch.tensor(71.25)  # AverageMeter.avg of accuracy(): a 0-d tensor on the GPU
    return {
        "best": save({"epoch": 231, "model": state, "best_acc": acc}, folder / "resnet8_best.pth", True),
        "last": save({"opt": repdistiller_options(), "model": state}, folder / "resnet8_last.pth", True),
        "epoch": save(
            {"epoch": 240, "model": state, "accuracy": acc}, folder / "ckpt_epoch_240.pth", legacy=True
        ),
    }


def mdistiller_files(model: nn.Module, teacher: nn.Module, folder: Path) -> dict[str, Path]:
    """``student_best`` and ``best`` as mdistiller's trainer writes them (a FitNet-like distiller)."""
    distiller = nn.Module()
    distiller.student, distiller.teacher = model, teacher
    distiller.conv_reg = nn.Conv2d(64, 64, 1)  # a method's own module, saved beside student and teacher
    wrapped = nn.DataParallel(distiller)  # mdistiller wraps the distiller: keys "module.student.*"
    state = {
        "epoch": 240,
        "model": wrapped.state_dict(),
        "optimizer": sgd_state(model),
        "best_acc": torch.tensor(73.5),
    }
    return {
        "student": save({"model": model.state_dict()}, folder / "student_best", legacy=False),
        "distiller": save(state, folder / "best", legacy=False),
    }


def letkd_author_file(model: nn.Module, folder: Path, net: str = "student_net") -> Path:
    """``<net>_net_epoch240.best`` as the letKD authors' ``save_network`` writes it."""
    state = {"epoch": 240, "network": model.state_dict(), "metric": np.float64(70.12)}
    return save(state, folder / f"{net}_net_epoch240.best", legacy=False, numpy1=True)
