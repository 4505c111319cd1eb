"""Shared pytest fixtures: reference fixtures folder, deterministic torch, small thread count."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, os.cpu_count() or 1))


def fixtures_path() -> Path:
    """``$LETKD_FIXTURES`` or ``../shared/fixtures`` relative to the project root."""
    env = os.environ.get("LETKD_FIXTURES")
    return Path(env) if env else ROOT.parent / "shared" / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    path = fixtures_path()
    if not path.is_dir():
        pytest.fail(f"reference fixtures not found at {path} (set LETKD_FIXTURES)")
    return path


@pytest.fixture(scope="session")
def layer_ref(fixtures_dir: Path) -> dict[str, np.ndarray]:
    with np.load(fixtures_dir / "letkd_layer_reference.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="session")
def loss_ref(fixtures_dir: Path) -> dict[str, np.ndarray]:
    with np.load(fixtures_dir / "baseline_losses_reference.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tests on tiny tensors (much faster on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield


@pytest.fixture
def restore_plugins(monkeypatch):
    """Registries, ``sys.path`` and the modules imported from outside the installed code as they were:
    for tests that register methods, models or datasets of their own or import modules from a tmp folder."""
    import sys

    from letkd.data.registry import DATASETS
    from letkd.methods.base import METHODS
    from letkd.models.registry import MODELS

    for registry in (METHODS, MODELS, DATASETS):
        monkeypatch.setattr(registry, "_items", dict(registry._items))
        monkeypatch.setattr(registry, "_origins", dict(registry._origins))
    before, path = set(sys.modules), list(sys.path)
    installed = tuple(p for p in path if p)
    monkeypatch.setattr(sys, "path", list(path))
    yield
    for name in set(sys.modules) - before:
        module = sys.modules[name]
        # a namespace package (google, for google.protobuf) has no __file__: its folders tell where it is
        origins = [getattr(module, "__file__", None) or "", *list(getattr(module, "__path__", None) or [])]
        if not any(str(o).startswith(installed) for o in origins if o):
            del sys.modules[name]
