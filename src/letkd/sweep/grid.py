"""The grid of a sweep: every config × grid point (``--grid KEY=v1,v2``) × seed as one :class:`SweepRun`,
each checked as ``letkd run`` checks a run (:func:`letkd.pipeline.check_before_work`) before anything starts.

Run folders are ``DIR/<config name>/seed<s>``, or ``DIR/<config name>/<key>=<value>[,...]/seed<s>`` for a
grid point, where ``<key>`` is the shortest ending of the dotted key that tells the grid keys apart.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from letkd.engine.identity import short_keys

if TYPE_CHECKING:
    from letkd.config import RunConfig

#: the sections of a config that :func:`letkd.pipeline.check_before_work` reads
_CHECKED_SECTIONS = ("data", "model", "teacher", "method")
#: the longest file name most file systems accept (bytes)
NAME_MAX = 255
LOGS = "logs"
_SAFE = re.compile(r"[^A-Za-z0-9._+\-\[\]]")


class SweepError(ValueError):
    """The sweep cannot start (missing config, bad override, unwritable folder, clashing names)."""


@dataclass(frozen=True)
class SweepRun:
    """One (config, grid point, seed); ``folder`` is its run folder, ``cwd`` where the command runs.

    ``point`` holds the grid point as ``(short key, value)`` pairs (also in ``overrides``), ``epochs`` the
    resolved ``train.epochs`` and ``workers`` the config's ``data.num_workers`` (None: from the CPU count).
    """

    config: str
    name: str
    seed: int
    folder: str
    overrides: tuple[str, ...]
    cwd: str
    teacher_key: str | None = None  # teacher.train_config of a teacher trained on first use, else None
    point: tuple[tuple[str, str], ...] = ()
    sweep_dir: str = ""
    epochs: int | None = None
    workers: int | None = None

    @property
    def point_label(self) -> str:
        """``key=value,key=value`` of the grid point ("" outside a grid)."""
        return ",".join(f"{k}={v}" for k, v in self.point)

    @property
    def title(self) -> str:
        """``<config name> [<grid point>] seed<s>``, as printed in progress lines."""
        return " ".join(p for p in (self.name, self.point_label, f"seed{self.seed}") if p)

    @property
    def log(self) -> Path:
        """Where the local executor writes the run's stdout and stderr."""
        base = Path(self.sweep_dir) if self.sweep_dir else Path(self.folder).parent.parent
        return base / LOGS / log_name(self.name, self.point_label, self.seed)

    def letkd_args(self, resume: bool, extra: Sequence[str] = ()) -> list[str]:
        """The ``letkd`` arguments of this run: ``run CONFIG overrides --out FOLDER --resume|--overwrite``."""
        resume_flag = ["--resume"] if resume else ["--overwrite"]  # not complete, nothing to resume: restart
        return ["run", self.config, *self.overrides, *extra, "--out", self.folder, *resume_flag]

    def command(self, resume: bool, extra: Sequence[str] = ()) -> list[str]:
        """The process a local run is: ``letkd run`` through :mod:`letkd.sweep.child`, which ties it to this
        process (it dies with the sweep)."""
        return [sys.executable, "-m", "letkd.sweep.child", str(os.getpid()), *self.letkd_args(resume, extra)]


def log_name(name: str, point: str, seed: int) -> str:
    """``<name>[-<grid point>]-seed<s>.log``."""
    return "-".join(p for p in (name, point, f"seed{seed}") if p) + ".log"


def split_values(text: str) -> list[str]:
    """``a,[1,2],'x,y'`` → ``["a", "[1,2]", "'x,y'"]``: commas inside brackets or quotes do not split."""
    values, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(text[start:i].strip())
            start = i + 1
    values.append(text[start:].strip())
    return values


def parse_grid(options: Sequence[str], overrides: Sequence[str] = ()) -> list[tuple[str, str, list[str]]]:
    """``--grid KEY=v1,v2`` options → ``[(key, short key, [value texts])]``; else :class:`SweepError`."""
    from letkd.config_overrides import ConfigError, parse_override

    problems, keys, values = [], [], []
    overridden = {o.split("=", 1)[0] for o in overrides}
    for option in options:
        key, sep, text = option.partition("=")
        items = split_values(text) if sep else []
        try:  # the key and every value, as the override each grid point becomes
            parsed = [parse_override(f"{key}={item}")[1] for item in items or [""]]
        except ConfigError as exc:
            problems.append(f"--grid {option!r}: {exc}")
            continue
        if not items or "" in items:
            problems.append(f"--grid {option!r}: expected KEY=v1,v2,... with no empty value")
        elif key in keys:
            problems.append(f"--grid {key}: given twice; list all its values in one --grid")
        elif key in overridden:
            problems.append(f"{key}: both an override and a --grid key; keep one")
        elif len({repr(p) for p in parsed}) < len(parsed):
            problems.append(f"--grid {option!r}: a value is given twice")
        elif len({_SAFE.sub("_", item) for item in items}) < len(items):
            problems.append(f"--grid {option!r}: two values give the same folder name (characters other than "
                            "letters, digits and ._+-[] become _)")  # fmt: skip
        else:
            keys.append(key)
            values.append(items)
    if problems:
        raise SweepError("invalid --grid: " + "; ".join(problems))
    return list(zip(keys, short_keys(keys), values))


def grid_points(grid: Sequence[tuple[str, str, list[str]]]) -> list[tuple[tuple[str, str], ...]]:
    """The Cartesian product of the grid's values as ``((key, value), ...)`` tuples (one empty point
    if none)."""
    return [
        tuple(zip([k for k, _, _ in grid], combo)) for combo in itertools.product(*(v for _, _, v in grid))
    ]


def _folder_part(short: Sequence[str], point: Sequence[tuple[str, str]]) -> str:
    return ",".join(f"{s}={_SAFE.sub('_', value)}" for s, (_, value) in zip(short, point))


def _name_problems(name: str, parts: Sequence[str], seeds: Sequence[int]) -> list[str]:
    """File names the sweep would make from ``name`` that are too long."""
    longest = max(seeds)
    for part in ("", *parts):
        for file_name in (name, part, log_name(name, part, longest)):
            if len(file_name.encode()) > NAME_MAX:
                what = f"{len(name)} characters" if file_name != part else f"grid point {part[:40]}..."
                return [f"name {name[:40]!r}... ({what}) makes the file name {file_name[:40]}... longer than "
                        f"{NAME_MAX} bytes (DIR/<name>/ and DIR/logs/<name>-seed<s>.log); "
                        "set a shorter name"]  # fmt: skip
    return []


def build_grid(
    configs: Sequence[str | Path],
    seeds: Sequence[int],
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    grid: Sequence[str] = (),
) -> list[SweepRun]:
    """Check every config × grid point × seed as ``letkd run`` would (config, overrides, method and params,
    models, taps, teacher and checkpoint files, seed) and return the grid; raises :class:`SweepError` listing
    every problem before anything is started. A config file given twice is used once."""
    if not configs:
        raise SweepError("no config given; pass one or more YAML files")
    if not seeds:
        raise SweepError("no seeds; pass --seeds N (seeds 0..N-1) or --seed-list 0,3,7")
    axes = parse_grid(grid, overrides)
    short = [s for _, s, _ in axes]
    out = Path(out_dir).resolve()
    problems: list[str] = []
    runs: list[SweepRun] = []
    names: dict[str, str] = {}
    for config in unique_configs(configs):
        with _one_thread():  # the checks run tiny forward passes: threads only contend
            found = _check_config(config, overrides, axes, seeds, problems)
        if found is None:
            continue
        name, cfgs = found
        if name in names:
            why = ("the override name=... gives every config that name; drop it"
                   if any(o.startswith("name=") for o in overrides)
                   else "give one of them another 'name:' in its file")  # fmt: skip
            problems.append(f"{config} and {names[name]} have the same name {name!r} (their runs would share "
                            f"DIR/{name}/): {why}")  # fmt: skip
            continue
        names[name] = config
        parts = [_folder_part(short, point) for point, _ in cfgs]
        problems += _name_problems(name, [p for p in parts if p], seeds)
        for (point, cfg), part in zip(cfgs, parts):
            key = cfg.teacher.train_config if cfg.teacher and not cfg.teacher.checkpoint else None
            base = out / name / part if part else out / name
            for seed in seeds:
                runs.append(SweepRun(
                    config=str(Path(config).resolve()), name=name, seed=int(seed),
                    folder=str(base / f"seed{seed}"),
                    overrides=(*overrides, *(f"{k}={v}" for k, v in point), f"seed={seed}"),
                    cwd=str(Path.cwd()), teacher_key=key,
                    point=tuple((s, _SAFE.sub("_", v)) for s, (_, v) in zip(short, point)),
                    sweep_dir=str(out), epochs=cfg.train.epochs, workers=cfg.data.num_workers,
                ))  # fmt: skip
    if problems:
        raise SweepError(listing("invalid sweep", problems))
    return runs


def listing(heading: str, problems: Sequence[str]) -> str:
    """``heading: problem`` or, for several, ``heading (N problems): (1) ... (2) ...``."""
    if len(problems) == 1:
        return f"{heading}: {problems[0]}"
    return f"{heading} ({len(problems)} problems): " + " ".join(
        f"({n}) {p}" for n, p in enumerate(problems, 1)
    )


def _check_config(
    config: str,
    overrides: Sequence[str],
    axes: Sequence[tuple[str, str, list[str]]],
    seeds: Sequence[int],
    problems: list[str],
) -> tuple[str, list[tuple[tuple[tuple[str, str], ...], RunConfig]]] | None:
    """Load ``config`` at every grid point and seed and run the cheap checks of a run once per point (the seed
    does not change them); problems are appended to ``problems``. Returns the config's name and
    ``[(point, config at that point)]``, or None when the config cannot be used at all."""
    from letkd.cli import error_message
    from letkd.config import load_config
    from letkd.pipeline import check_before_work

    short = [s for _, s, _ in axes]
    try:
        name = load_config(config, list(overrides)).name or Path(config).stem
    except Exception as exc:  # noqa: BLE001 (any problem of the file is reported, with the others)
        problems.append(f"{config}: {error_message(exc)}")
        return None
    found, failed = [], {}
    points = grid_points(axes)
    checked: set[str] = set()
    for point in points:
        label = _folder_part(short, point)
        point_overrides = [*overrides, *(f"{k}={v}" for k, v in point)]
        try:
            cfg = load_config(config, point_overrides)
            dump = cfg.model_dump(mode="json")
            key = json.dumps({k: dump[k] for k in _CHECKED_SECTIONS}, sort_keys=True)
            if key not in checked:  # grid points differing elsewhere (lr, epochs) share one check
                check_before_work(cfg)
                checked.add(key)
        except Exception as exc:  # noqa: BLE001
            failed.setdefault(error_message(exc), []).append(label)
            continue
        for seed in seeds:  # every seed passes the config's checks (range, type)
            try:
                load_config(config, [*point_overrides, f"seed={seed}"])
            except Exception as exc:  # noqa: BLE001
                failed.setdefault(error_message(exc), []).append(f"{label} seed {seed}".strip())
        found.append((point, cfg))
    for message, where in failed.items():  # a problem of several grid points is listed once
        at = (
            " (every grid point)"
            if len(where) == len(points) > 1
            else f" [{'; '.join(where)}]"
            if any(where)
            else ""
        )
        problems.append(f"{config}{at}: {message}")
    return name, found


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def unique_configs(configs: Sequence[str | Path]) -> list[str]:
    """``configs`` with a file given twice (under any spelling) kept once, in order."""
    seen: set[str] = set()
    out = []
    for config in map(str, configs):
        key = str(Path(config).resolve())
        if key not in seen:
            seen.add(key)
            out.append(config)
    return out
