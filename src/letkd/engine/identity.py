"""Is the run in a folder the run asked for? The check behind ``letkd run --resume`` and a sweep's skips.

A run folder's ``config.yaml`` is compared with the resolved config asked for (overrides included), key by
key. Settings that say where or how visibly a run executes (:data:`RUNTIME_KEYS`: data root, workers,
device, progress bars, cache folder) may differ; paths are compared as the files they name. ``train.epochs``
may differ when the learning rate of every epoch already trained is the same under both values (a run
extended with a step schedule, or after its first epoch with a cosine one): continuing it then gives the
run asked for. Anything else is a difference, and the folder must not be skipped or resumed as that run.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from letkd.config import ConfigError, RunConfig, TrainConfig, config_from_dict
from letkd.engine.rundir import CONFIG, METRICS

#: settings that change where or how visibly a run executes, not what it computes
RUNTIME_KEYS = (
    "data.root",
    "data.num_workers",
    "data.download",
    "train.device",
    "train.progress",
    "train.tensorboard",
    "train.reuse_host_memory",
    "supervision.cache_dir",
    "teacher.check_accuracy",
)
#: settings holding a file path: equal when they name the same file
PATH_KEYS = ("teacher.checkpoint", "teacher.train_config", "model.checkpoint", "data.root")
#: points per epoch at which a per-step learning-rate schedule is compared
_LR_POINTS = 8


def flat_settings(config: Any, prefix: str = "") -> dict[str, Any]:
    """A config dict as ``{dotted key: value}``, list items numbered (``method.params.layers.0.alpha``);
    empty sections and lists are kept as values."""
    if isinstance(config, dict) and config:
        items = config.items()
    elif isinstance(config, list) and config:
        items = ((str(i), v) for i, v in enumerate(config))
    else:
        return {prefix[:-1]: config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(flat_settings(value, f"{prefix}{key}."))
    return out


def short_keys(keys: Sequence[str]) -> list[str]:
    """The shortest ending of each dotted key that tells the keys apart and does not start at a list index:
    ``train.lr`` → ``lr``; ``method.params.layers.0.alpha`` and ``...layers.1.alpha`` → ``layers.0.alpha``…"""
    parts = [k.split(".") for k in keys]
    out = []
    for mine in parts:
        for n in range(1, len(mine) + 1):
            tail = mine[-n:]
            clash = any(other != mine and other[-n:] == tail for other in parts)
            if not clash and not tail[0].isdigit():
                break
        out.append(".".join(tail))
    return out


def normalized(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` completed with the defaults of every key it leaves out (as is, if it does not validate),
    so a run saved before an option existed compares equal to one using that option's default."""
    import copy

    try:
        return config_from_dict(copy.deepcopy(config)).model_dump(mode="json")
    except (ConfigError, ValueError, TypeError):
        return config


def _same_path(a: Any, b: Any) -> bool:
    if not (isinstance(a, str) and isinstance(b, str)):
        return a == b
    if os.path.normpath(a) == os.path.normpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _short(value: Any) -> str:
    text = (
        "(none)" if value is None else json.dumps(value) if isinstance(value, (list, dict)) else repr(value)
    )
    return text if len(text) <= 60 else text[:57] + "..."


def epochs_recorded(folder: str | Path) -> int:
    """Epochs the run in ``folder`` has logged in ``metrics.jsonl`` (0 when there is none)."""
    try:
        lines = (Path(folder) / METRICS).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return 0
    return sum(1 for line in lines if line.strip())


def _same_lr_schedule(stored: dict[str, Any], asked: dict[str, Any], epochs_done: int) -> bool:
    """Whether every epoch up to ``epochs_done`` (the one in progress included) had the same learning rate
    under the stored and the asked ``train`` sections."""
    from letkd.engine.optim import lr_at_epoch

    try:
        old, new = TrainConfig.model_validate(stored), TrainConfig.model_validate(asked)
    except ValueError:
        return False
    if epochs_done > new.epochs:
        return False  # it trained more epochs than the run asked for has
    points = _LR_POINTS if old.schedule.per_step or new.schedule.per_step else 1
    last = min(epochs_done + 1, old.epochs, new.epochs)
    return all(
        lr_at_epoch(old, e + k / points) == lr_at_epoch(new, e + k / points)
        for e in range(last)
        for k in range(points)
    )


def config_differences(stored: dict[str, Any], asked: dict[str, Any], epochs_done: int = 0) -> list[str]:
    """``key: stored -> asked`` for every setting in which two configs differ, :data:`RUNTIME_KEYS` left out;
    ``train.epochs`` is left out too when the schedule of the ``epochs_done`` epochs trained is the same."""
    old, new = flat_settings(normalized(stored)), flat_settings(normalized(asked))
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if key in RUNTIME_KEYS or (_same_path(a, b) if key in PATH_KEYS else a == b):
            continue
        changes.append(f"{key}: {_short(a)} -> {_short(b)}")
    epochs = [c for c in changes if c.startswith("train.epochs:")]
    if epochs and len(changes) == 1:
        old_train, new_train = normalized(stored).get("train"), normalized(asked).get("train")
        if isinstance(old_train, dict) and isinstance(new_train, dict):
            if _same_lr_schedule(old_train, new_train, epochs_done):
                return []
    return changes


def run_differences(folder: str | Path, cfg: RunConfig) -> list[str]:
    """What keeps the run in ``folder`` from being the run ``cfg`` asks for (empty: it is that run, so it may
    be resumed or, if complete, kept). ``cfg`` should have ``model.num_classes`` resolved (runs store it so).
    """
    path = Path(folder) / CONFIG
    try:
        stored = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not valid YAML"
        return [f"{CONFIG} cannot be read ({reason}), so the run's config is unknown"]
    if not isinstance(stored, dict):
        return [f"{CONFIG} is not a config, so the run's config is unknown"]
    return config_differences(stored, cfg.model_dump(mode="json"), epochs_recorded(folder))


def check_resumable(folder: str | Path, cfg: RunConfig) -> None:
    """Raise :class:`~letkd.engine.rundir.RunFolderError` when the run in ``folder`` is not the run ``cfg``
    asks for (see :func:`run_differences`), naming each differing key."""
    from letkd.engine.rundir import RunFolderError

    changes = run_differences(folder, cfg)
    if changes:
        raise RunFolderError(
            f"cannot resume {folder}: it holds a run of another config (in the folder -> asked: "
            f"{'; '.join(changes)}); give the config and overrides it was started with, or start afresh "
            "with --overwrite or another --out"
        )
