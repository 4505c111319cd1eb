"""``letkd paper``: each table and figure of the paper with its configs, the exact commands, the number of
runs and an ESTIMATE of its GPU-hours.

The estimate (inputs in the ``cost`` section of ``paper_results.yaml``) is
``runs × epochs × epoch_seconds[dataset] × step_ratio[method] / 3600``: training-step ratios measured on a
CPU, times an assumed vanilla epoch time on one GPU — no GPU has run these configs yet, and every output
says so. Teachers trained first (``teacher.train_config`` without a checkpoint) are counted once each.
"""

from __future__ import annotations

import glob
import itertools
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from letkd.config import ConfigError, load_config
from letkd.report.paper_data import CostModel, PaperEntry, PaperResults, Sweep
from letkd.report.read import method_label

ESTIMATE_NOTE = (
    "GPU-hours are ESTIMATES, not measurements: training-step ratios measured on a CPU "
    "(benchmarks/bench_methods_step.py) times an assumed vanilla epoch time on one GPU ({seconds}); no GPU "
    "has run these configs yet. Give your own epoch time with --epoch-seconds DATASET=S."
)


def repo_root() -> Path:
    """Where the config paths of the entries are resolved: the current folder if it has ``configs/``, else
    the source checkout this package runs from."""
    here = Path.cwd()
    if (here / "configs").is_dir():
        return here
    checkout = Path(__file__).resolve().parents[3]
    return checkout if (checkout / "configs").is_dir() else here


def method_ratio(label: str, cost: CostModel) -> float | None:
    """Step time relative to vanilla of a method label; a composition (``at+kd``) costs the extra of each
    part with the teacher forward counted once; None for a label without a measured ratio."""
    parts = label.split("+")
    ratios = [cost.step_ratio.get(p) for p in parts]
    if any(r is None for r in ratios):
        return None
    return 1.0 + sum(r - 1.0 for r in ratios) - (len(parts) - 1) * cost.teacher_forward  # type: ignore[operator]


@dataclass
class SweepPlan:
    """One sweep of an entry: the configs it expands to, its runs and estimated GPU-hours."""

    sweep: Sweep
    configs: list[str]
    runs: int = 0
    gpu_hours: float = 0.0
    unpriced: list[str] = field(default_factory=list)  # method labels without a measured ratio
    problems: list[str] = field(default_factory=list)  # configs missing or invalid
    run_keys: set[tuple] = field(
        default_factory=set
    )  # (out, config, grid point, seed): shared runs count once


@dataclass
class EntryPlan:
    """An entry with its sweeps planned, and the teachers it trains first."""

    entry: PaperEntry
    sweeps: list[SweepPlan]
    teachers: dict[str, float]  # teacher train_config -> estimated GPU-hours

    @property
    def runs(self) -> int:
        return sum(s.runs for s in self.sweeps)

    @property
    def gpu_hours(self) -> float:
        return sum(s.gpu_hours for s in self.sweeps) + sum(self.teachers.values())


def _epoch_hours(dataset: str, epochs: int, seconds: dict[str, float]) -> float:
    return epochs * seconds.get(dataset, seconds.get("cifar100", 0.0)) / 3600


def plan_entry(entry: PaperEntry, results: PaperResults, root: Path, seconds: dict[str, float]) -> EntryPlan:
    """Expand the entry's sweeps under ``root`` and estimate their cost with ``seconds`` per vanilla epoch."""
    teachers: dict[str, float] = {}
    plans = []
    for sweep in entry.sweeps:
        paths = [p for pattern in sweep.configs for p in sorted(glob.glob(str(root / pattern)))]
        plan = SweepPlan(sweep, [str(Path(p).relative_to(root)) for p in paths])
        missing = [c for c in sweep.configs if not glob.glob(str(root / c))]
        plan.problems += [f"no config matches {c} under {root}" for c in missing]
        points = list(itertools.product(*sweep.grid.values())) or [()]
        for path in paths:
            try:
                cfg = load_config(path)
            except (ConfigError, OSError) as exc:
                plan.problems.append(f"{path}: {' '.join(str(exc).split())}")
                continue
            label = method_label(cfg.method.name, cfg.method.params)
            ratio = method_ratio(label, results.cost)
            if ratio is None:
                plan.unpriced.append(label)
                ratio = 1.0
            runs = len(points) * sweep.seeds
            plan.runs += runs
            plan.gpu_hours += runs * ratio * _epoch_hours(cfg.data.name, cfg.train.epochs, seconds)
            rel = str(Path(path).relative_to(root))
            plan.run_keys |= {(sweep.out, rel, point, s) for point in points for s in range(sweep.seeds)}
            tcfg = cfg.teacher
            if (
                tcfg is not None
                and not tcfg.checkpoint
                and tcfg.train_config
                and tcfg.train_config not in teachers
            ):
                try:
                    teacher = load_config(tcfg.train_config if Path(tcfg.train_config).is_absolute()
                                          else root / tcfg.train_config)  # fmt: skip
                    teachers[tcfg.train_config] = _epoch_hours(
                        teacher.data.name, teacher.train.epochs, seconds
                    )
                except (ConfigError, OSError) as exc:
                    plan.problems.append(f"{tcfg.train_config}: {' '.join(str(exc).split())}")
        plans.append(plan)
    return EntryPlan(entry, plans, teachers)


def _wrapped(label: str, text: str, width: int = 110) -> list[str]:
    """``  label     text`` wrapped to ``width`` with the text's column kept."""
    return textwrap.wrap(text, width, initial_indent=f"  {label:<8}  ", subsequent_indent=" " * 12,
                         break_on_hyphens=False)  # fmt: skip


def _hours(h: float) -> str:
    return f"≈ {h:,.0f} GPU-hours" if h >= 10 else f"≈ {h:,.1f} GPU-hours"


def overview(plans: list[EntryPlan], seconds: dict[str, float]) -> str:
    """What ``letkd paper`` prints: every entry, then the total (runs shared by entries counted once)."""
    keys: set[tuple] = set()
    total_hours = 0.0
    teachers: dict[str, float] = {}
    lines = []
    for p in plans:
        e = p.entry
        lines += [f"{e.id:<7} {e.title}", *_wrapped("measures", e.measures)]
        for s in p.sweeps:
            grid = f" x {s.sweep.grid_points} grid points" if s.sweep.grid else ""
            configs = ", ".join(s.sweep.configs)
            lines.append(
                f"  configs   {configs} ({len(s.configs)} config{'s' * (len(s.configs) != 1)}{grid})"
            )
            new = s.run_keys - keys
            share = s.gpu_hours * len(new) / len(s.run_keys) if s.run_keys else 0.0
            keys |= s.run_keys
            total_hours += share
        for t, h in p.teachers.items():
            if t not in teachers:
                teachers[t] = h
                total_hours += h
        trained = (
            f" + {len(p.teachers)} teacher{'s' * (len(p.teachers) != 1)} trained first" if p.teachers else ""
        )
        seeds = "/".join(str(n) for n in sorted({s.sweep.seeds for s in p.sweeps}))
        lines.append(f"  runs      {p.runs} ({seeds} seed{'s' * (seeds != '1')} per setting){trained}, "
                     f"{_hours(p.gpu_hours)} (estimated)")  # fmt: skip
        for i, command in enumerate(e.commands()):
            lines.append(f"  {'commands' if i == 0 else '':<8}  {command}")
        if e.notes:
            lines += _wrapped("notes", e.notes)
        for s in p.sweeps:
            lines += [f"  warning   {problem}" for problem in s.problems]
            if s.unpriced:
                lines.append(
                    f"  warning   no step ratio for {', '.join(sorted(set(s.unpriced)))}: costed as vanilla"
                )
        lines.append("")
    secs = ", ".join(f"{d} {v:g} s" for d, v in seconds.items())
    head = [
        *textwrap.wrap(
            f"The tables and figures of the letKD paper (BMVC 2023): {len(plans)} entries, {len(keys)} runs "
            f"(+ {len(teachers)} teachers trained first), {_hours(total_hours)} in all (estimated).", 110
        ),
        *textwrap.wrap(ESTIMATE_NOTE.format(seconds=secs), 110, break_on_hyphens=False),
        "'letkd paper ID' prints the commands of one entry; 'letkd report DIR --layout ID' its table.",
        "",
    ]
    return "\n".join(head + lines)


def entry_commands(plan: EntryPlan) -> str:
    """What ``letkd paper ID`` prints: a comment with the runs and the estimate, then the commands."""
    e = plan.entry
    return "\n".join([
        f"# {e.title}: {plan.runs} runs, {_hours(plan.gpu_hours)} (ESTIMATED from CPU step ratios; no GPU "
        "measured yet)",
        *(f"# {line}" for line in ([e.notes] if e.notes else [])),
        *e.commands(),
    ]) + "\n"  # fmt: skip
