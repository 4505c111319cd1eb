"""Linear probes of a trained student's intermediate features (Table 4 of the letKD paper).

:func:`probe_run` rebuilds a run's student (with its KD layers) from its checkpoint, global-average-pools
its features at one tap over the training set (test transform, no augmentation; the run's
``data.train_subset`` if it trained on one) and over the test set, fits
a linear classifier — scikit-learn's :class:`~sklearn.discriminant_analysis.LinearDiscriminantAnalysis` — on
the training features and reports its test accuracy. Where a KD layer is grafted at the tap, two feature
sets are probed: the layer's ``input`` x and its ``output`` x̂ = x + α·value; at a plain tap, one (``tap``).
The result is written to ``probe.json`` in the run folder.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from letkd.engine.rundir import BEST, CONFIG, LAST
from letkd.errors import LetkdError
from letkd.utils import atomic_write_text, tqdm_disable

PROBE_FILE = "probe.json"


class ProbeError(LetkdError, RuntimeError):
    """A run folder cannot be probed (no checkpoint, an unknown tap...)."""


def lda_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray
) -> tuple[float, float]:
    """Fit a linear discriminant on ``train_x (N, D)`` / ``train_y (N,)``; its (train, test) accuracy in %."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    lda = LinearDiscriminantAnalysis().fit(train_x, train_y)
    return 100.0 * float(lda.score(train_x, train_y)), 100.0 * float(lda.score(test_x, test_y))


@contextmanager
def _pooled_features(model: nn.Module, path: str) -> Iterator[dict[str, list[np.ndarray]]]:
    """While open, each forward of ``model`` appends the GAP of the tap's features (``(B, C)``) to the
    yielded lists: ``input``/``output`` of the KD layer grafted at ``path``, else ``tap``."""
    from letkd.graft import graft_points

    store: dict[str, list[np.ndarray]] = {}

    def keep(name: str, x: torch.Tensor) -> None:
        pooled = x.float().mean((2, 3)) if x.dim() == 4 else x.float().flatten(1)
        store.setdefault(name, []).append(pooled.cpu().numpy())

    target = model.get_submodule(path)
    point = next((p for p in graft_points(model) if p.target == path), None)
    if point is not None:
        handles = [
            point.module.register_forward_pre_hook(lambda m, args: keep("input", args[0])),
            target.register_forward_hook(lambda m, args, out: keep("output", out)),  # after the graft: x̂
        ]
    else:
        handles = [target.register_forward_hook(lambda m, args, out: keep("tap", out))]
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def pooled_features(
    model: nn.Module, path: str, dataset: Dataset, device: torch.device, batch_size: int, progress: bool
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({feature set: (N, C)}, labels (N,))`` of ``dataset`` at the tap ``path``."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    labels = []
    with _pooled_features(model, path) as store:
        for images, y in tqdm(loader, desc="features", leave=False, disable=tqdm_disable(progress)):
            model(images.to(device))
            labels.append(np.asarray(y))
    return {k: np.concatenate(v) for k, v in store.items()}, np.concatenate(labels)


def _checkpoint(run_dir: Path, which: str) -> Path:
    path = run_dir / (BEST if which == "best" else LAST)
    if not path.is_file():
        raise ProbeError(f"no {path.name} in {run_dir}: probe a finished run folder (or --checkpoint last)")
    return path


def default_tap(config: dict[str, Any]) -> str:
    """The student tap of the run's first sub-class KD layer (the paper's intermediate layer), else
    ``intermediate``."""
    method = config.get("method") or {}
    layers = list((method.get("params") or {}).get("layers") or [])
    for part in (method.get("params") or {}).get("parts") or []:
        layers += (part.get("params") or {}).get("layers") or []
    return next((str(l["student_tap"]) for l in layers if l.get("kind") == "subclass"), "intermediate")


def probe_run(
    run_dir: str | Path,
    tap: str | None = None,
    checkpoint: str = "best",
    device: str = "auto",
    train_subset: int | None = None,
    batch_size: int = 256,
    progress: bool = True,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Probe one run folder (module docs); write ``out`` (default ``RUN/probe.json``) and return it."""
    from letkd.config import load_config
    from letkd.data import create_dataset, subset
    from letkd.deploy import load_student
    from letkd.device import select_device
    from letkd.taps import UnknownTapError, resolve_tap

    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise ProbeError(f"{run_dir} is not a run folder (no {CONFIG})")
    cfg = load_config(run_dir / CONFIG)
    tap = tap or default_tap(cfg.model_dump(mode="json"))
    ckpt = _checkpoint(run_dir, checkpoint)
    dev = select_device(device)
    model, _ = load_student(ckpt)
    model = model.to(dev).eval()
    try:
        path = resolve_tap(model, tap)
    except UnknownTapError as exc:
        raise ProbeError(f"--tap {tap}: {exc}") from None
    d = cfg.data
    train = create_dataset(d.name, "train", root=d.root, transform="test", download=d.download)
    train_subset = train_subset or d.train_subset  # by default the images the run trained on
    if train_subset is not None and train_subset < len(train):
        train = subset(train, train_subset, cfg.seed)
    test = create_dataset(d.name, "test", root=d.root, transform="test", download=d.download)
    if d.test_subset is not None and d.test_subset < len(test):
        test = subset(test, d.test_subset, None)
    train_feats, train_y = pooled_features(model, path, train, dev, batch_size, progress)
    test_feats, test_y = pooled_features(model, path, test, dev, batch_size, progress)
    result: dict[str, Any] = {
        "run": str(run_dir), "checkpoint": ckpt.name, "tap": tap, "path": path, "dataset": d.name,
        "train_images": int(len(train_y)), "test_images": int(len(test_y)), "classifier": "LDA",
        "features": {},
    }  # fmt: skip
    for name, x in train_feats.items():
        train_acc, test_acc = lda_accuracy(x, train_y, test_feats[name], test_y)
        result["features"][name] = {"dim": int(x.shape[1]), "train_top1": train_acc, "test_top1": test_acc}
    atomic_write_text(Path(out) if out else run_dir / PROBE_FILE, json.dumps(result, indent=1) + "\n")
    return result


FEATURE_NAMES = {"input": "KD-layer input x", "output": "KD-layer output x̂", "tap": "tap output"}


def probe_lines(result: dict[str, Any]) -> list[str]:
    """One line per feature set: ``RUN  input  layer3.0 (64-d): LDA test top-1 51.71% (train 60.02%)``."""
    return [
        f"{result['run']}  {name:<6} {result['path']} ({f['dim']}-d GAP, {FEATURE_NAMES.get(name, name)}): "
        f"LDA test top-1 {f['test_top1']:.2f}% (train {f['train_top1']:.2f}%)"
        for name, f in result["features"].items()
    ]
