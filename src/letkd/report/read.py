"""Reading run folders: one :class:`RunRecord` per folder holding ``config.yaml`` (and ``metrics.jsonl`` /
``summary.json``), with the reason for every folder that cannot be used.

The file names of a run folder are those of :mod:`letkd.engine.rundir`, which writes them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from letkd.engine.identity import flat_settings, normalized
from letkd.engine.rundir import CONFIG, METRICS, SUMMARY, lock_holder

#: config entries that do not change the experiment (besides ``seed``): ignored when grouping runs
IGNORED_KEYS = (
    ("name",),
    ("seed",),
    ("imports",),
    ("data", "root"),
    ("data", "num_workers"),
    ("model", "checkpoint"),
    ("teacher", "checkpoint"),
    ("teacher", "train_config"),
    ("teacher", "check_accuracy"),
    ("teacher", "compile"),
    ("supervision", "cache_dir"),
    ("supervision", "seed"),
    ("train", "device"),
    ("train", "progress"),
    ("train", "compile"),
    ("train", "channels_last"),
    ("train", "deterministic"),
    ("train", "reuse_host_memory"),
    ("teacher", "channels_last"),
    ("teacher", "fold_batchnorm"),
)
_SEED_SUFFIX = re.compile(r"[-_.]?(?:seed|s)[-_]?\d+$", re.IGNORECASE)


class ReportError(ValueError):
    """The report cannot be made (no such path, no run folders found)."""


@dataclass(frozen=True)
class SkippedRun:
    """A folder that looked like a run but could not be used, and why."""

    path: Path
    reason: str


@dataclass
class RunRecord:
    """One run folder's facts. Accuracies in %; ``epochs`` and ``test_top1`` are the per-epoch curve;
    ``best_top5`` is the top-5 of the best top-1 epoch (None where not recorded)."""

    path: Path
    name: str  # config name without a trailing seed suffix
    seed: int
    dataset: str
    teacher: str | None
    student: str
    method: str  # registry name, e.g. "letkd"
    label: str  # short label, e.g. "letkd2"
    variant: str  # hash of the config without seed and run-environment settings
    status: str
    best_top1: float
    last_top1: float
    best_epoch: int | None = None
    teacher_top1: float | None = None
    parameters: int | None = None
    extra_parameters: int | None = None
    seconds_per_epoch: float | None = None
    recipe: str | None = None  # the config's training recipe (letkd.recipes), None when it names none
    best_top5: float | None = None
    last_top5: float | None = None
    epochs: list[int] = field(default_factory=list)
    test_top1: list[float | None] = field(default_factory=list)
    epochs_done: int | None = None  # epochs trained (summary.json, else the rows of metrics.jsonl)
    epochs_planned: int | None = None  # train.epochs of its config
    settings: dict[str, Any] = field(default_factory=dict)  # experiment_settings of its config

    @property
    def group_key(self) -> tuple[str, str, str, str, str, str]:
        """Runs with equal keys differ only by seed."""
        return (self.dataset, self.teacher or "", self.student, self.label, self.name, self.variant)


def method_label(method: str, params: dict[str, Any] | None) -> str:
    """Short label of a method: ``letkd1`` / ``letkd2`` by the number of KD layers, a composition's parts
    joined by ``+`` (``at+kd``, ``fitnet+letkd1``), ``kd_ls`` / ``dkd_ls`` for KD / DKD on standardized
    logits (``logit_stand``), else the method name."""
    layers = (params or {}).get("layers")
    if method == "letkd" and isinstance(layers, list):
        return f"letkd{len(layers)}"
    parts = (params or {}).get("parts")
    if method == "compose" and isinstance(parts, list) and all(isinstance(p, dict) for p in parts):
        return "+".join(method_label(str(p.get("method")), p.get("params")) for p in parts)
    if (params or {}).get("logit_stand") is True:
        return f"{method}_ls"
    return method


def strip_seed_suffix(name: str) -> str:
    """``cifar100-resnet56_resnet20-letkd2-seed3`` → ``cifar100-resnet56_resnet20-letkd2``."""
    stripped = _SEED_SUFFIX.sub("", name)
    return stripped or name


def experiment_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The settings of ``config`` that define the experiment, as ``{dotted key: value}`` (list items numbered,
    ``method.params.layers.0.alpha``), without the :data:`IGNORED_KEYS`.

    A config that parses is first completed with the defaults of every key it leaves out, so a run saved
    before a new option existed compares equal to later runs that use that option's default.
    """
    ignored = tuple(".".join(path) for path in IGNORED_KEYS)
    return {
        key: value
        for key, value in flat_settings(normalized(config)).items()
        if not any(key == i or key.startswith(i + ".") for i in ignored)
    }


def config_variant(config: dict[str, Any]) -> str:
    """Short hash of :func:`experiment_settings` (equal for runs that differ only by seed)."""
    return _digest(experiment_settings(config))


def _digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _read_yaml(path: Path) -> dict[str, Any]:
    from letkd.config_files import read_yaml_file

    try:
        data = read_yaml_file(path)  # bounded: size, aliases, nesting
    except ValueError as exc:
        raise ValueError(f"{path.name}: cannot read ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: not a mapping")
    return data


def _read_metrics(path: Path, live: bool = False) -> list[dict[str, Any]]:
    """The rows of ``metrics.jsonl``; ``live``: the run is still writing it, so a last line being written
    (not yet a whole JSON object) is left out instead of refused."""
    rows = []
    lines = path.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if live and n == len(lines):
                break
            raise ValueError(f"{path.name} line {n}: not valid JSON") from None
        if not isinstance(row, dict) or "epoch" not in row:
            raise ValueError(f"{path.name} line {n}: expected an object with 'epoch'")
        rows.append(row)
    return rows


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _percent(value: Any, key: str) -> float | None:
    """An accuracy from a run's files: None when absent, ``ValueError`` when it is no percentage."""
    number = _number(value)
    if value is not None and number is None:
        raise ValueError(f"{key} is {value!r}, not a number: a damaged or foreign file")
    if number is not None and not 0.0 <= number <= 100.0:
        raise ValueError(f"{key} is {number:g}, not a percentage (0 to 100): a damaged or foreign summary")
    return number


def read_run(folder: Path, include_unfinished: bool = False, live: bool = False) -> RunRecord:
    """Read one run folder; raises ``ValueError`` or ``TypeError`` saying why when it cannot be used.
    ``live``: a process is still writing the folder (read only with ``include_unfinished``)."""
    config = _read_yaml(folder / CONFIG)
    summary: dict[str, Any] = {}
    if (folder / SUMMARY).is_file():
        try:
            summary = json.loads((folder / SUMMARY).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{SUMMARY}: not valid JSON ({exc})") from None
        if not isinstance(summary, dict):
            raise ValueError(f"{SUMMARY}: not an object")
    elif not include_unfinished:
        raise ValueError(f"no {SUMMARY} (unfinished run; --include-unfinished uses {METRICS})")
    rows = _read_metrics(folder / METRICS, live) if (folder / METRICS).is_file() else []
    if not summary and not rows:
        raise ValueError(f"neither {SUMMARY} nor {METRICS}")
    status = "running" if live else str(summary.get("status", "completed" if summary else "running"))
    if summary and status != "completed" and not include_unfinished:
        raise ValueError(f"status {status!r}" + (f": {summary['error']}" if summary.get("error") else ""))

    evaluated = [(int(r["epoch"]), _percent(r.get("test_top1"), f"{METRICS} test_top1")) for r in rows]
    scores = [(e, a) for e, a in evaluated if a is not None]
    best = _percent(summary.get("best_top1"), f"{SUMMARY} best_top1")
    last = _percent(summary.get("last_top1"), f"{SUMMARY} last_top1")
    best_epoch = summary.get("best_epoch")
    if best is None and scores:
        best_epoch, best = max(scores, key=lambda ea: (ea[1], -ea[0]))
    if last is None and scores:
        last = scores[-1][1]
    if best is None or last is None:
        raise ValueError("no test accuracy recorded")
    top5 = {int(r["epoch"]): _number(r.get("test_top5")) for r in rows}
    last_top5 = _number(summary.get("last_top5"))
    if last_top5 is None and scores:
        last_top5 = top5.get(scores[-1][0])

    def section(key: str) -> dict[str, Any]:
        value = config.get(key)
        return value if isinstance(value, dict) else {}

    method = str(section("method").get("name", "vanilla"))
    teacher = section("teacher").get("name") if config.get("teacher") else None
    seconds = _number(summary.get("seconds_per_epoch"))
    if seconds is None and rows:
        per_epoch = [s for s in (_number(r.get("seconds")) for r in rows) if s is not None]
        seconds = statistics.fmean(per_epoch) if per_epoch else None
    settings = experiment_settings(config)
    done = summary.get("epochs_done")
    planned = settings.get("train.epochs")
    return RunRecord(
        path=folder,
        name=strip_seed_suffix(str(config.get("name") or folder.parent.name)),
        seed=int(config.get("seed", 0)),
        dataset=str(section("data").get("name", "?")),
        teacher=str(teacher) if teacher else None,
        student=str(section("model").get("name", "?")),
        method=method,
        label=method_label(method, section("method").get("params")),
        variant=_digest(settings),
        status=status,
        best_top1=best,
        last_top1=last,
        best_epoch=int(best_epoch) if isinstance(best_epoch, int) else None,
        teacher_top1=_number(summary.get("teacher_top1")),
        parameters=summary.get("parameters") if isinstance(summary.get("parameters"), int) else None,
        extra_parameters=(
            summary.get("extra_parameters") if isinstance(summary.get("extra_parameters"), int) else None
        ),
        seconds_per_epoch=seconds,
        recipe=str(config["recipe"]) if config.get("recipe") else None,
        best_top5=top5.get(best_epoch) if isinstance(best_epoch, int) else None,
        last_top5=last_top5,
        epochs=[e for e, _ in evaluated],
        test_top1=[a for _, a in evaluated],
        epochs_done=done if isinstance(done, int) and not isinstance(done, bool) else len(rows),
        epochs_planned=planned if isinstance(planned, int) and not isinstance(planned, bool) else None,
        settings=settings,
    )


def find_run_dirs(paths: Iterable[str | Path]) -> list[Path]:
    """Folders holding a ``config.yaml``: each path itself if it is one, else every one below it (sorted)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise ReportError(f"no such file or folder: {p}")
        if p.is_file():
            p = p.parent if p.name in (CONFIG, METRICS, SUMMARY) else p
            if not p.is_dir():
                raise ReportError(f"{p} is a file; give run folders or folders that contain them")
        if (p / CONFIG).is_file():
            found.append(p)
        else:
            found += sorted(c.parent for c in p.rglob(CONFIG))
    unique = list(dict.fromkeys(f.resolve() for f in found))
    return unique


def collect_runs(
    paths: Iterable[str | Path],
    skipped: list[SkippedRun] | None = None,
    include_unfinished: bool = False,
) -> list[RunRecord]:
    """Read every run folder in or below ``paths``.

    Folders that cannot be used (missing or corrupt files, unfinished or diverged runs) are appended to
    ``skipped`` with the reason, or reported as warnings when ``skipped`` is None. Raises
    :class:`ReportError` when a path does not exist or no run folder is found at all.
    """
    folders = find_run_dirs(paths)
    if not folders:
        raise ReportError(f"no run folders (with {CONFIG}) found in: {', '.join(map(str, paths))}")
    records = []
    for folder in folders:
        try:
            holder = lock_holder(folder)
            if holder is not None and not include_unfinished:
                raise ValueError(
                    f"another process (pid {holder}) is still writing it; report it when it ends (or "
                    "--include-unfinished)"
                )
            records.append(read_run(folder, include_unfinished, live=holder is not None))
        except (ValueError, TypeError, OSError) as exc:  # TypeError: a config value of the wrong type
            if skipped is None:
                warnings.warn(f"skipping {folder}: {exc}", stacklevel=2)
            else:
                skipped.append(SkippedRun(folder, str(exc)))
    return records
