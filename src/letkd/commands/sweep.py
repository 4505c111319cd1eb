"""``letkd sweep CONFIG... --seeds N [--grid KEY=v1,v2] [--out DIR]``: every config × grid point × seed as a
run folder, here or on SLURM."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from letkd.sweep.grid import SweepError

EPILOG = """\
examples:
  letkd sweep configs/digits/vanilla.yaml configs/digits/kd.yaml --seeds 3 --out sweeps/digits
  letkd sweep configs/digits/kd.yaml --grid method.params.temperature=2,4,8 --seeds 2 --out sweeps/kd_t
  letkd sweep configs/cifar100/*/letkd2.yaml --seeds 5 --out sweeps/table1 train.progress=false
  letkd sweep configs/cifar100/*/letkd2.yaml --seeds 5 --executor slurm --partition gpu \\
      --gpus-per-job 1 --time 720 --out sweeps/table1
  letkd report sweeps/table1 --layout pairs

Run folders are DIR/<config name>/seed<s>, or DIR/<config name>/<key>=<value>,.../seed<s> for a grid
point (--grid KEY=v1,v2,... repeatable: the Cartesian product of the values), so 'letkd report DIR'
groups the seeds of each config and grid point. Before anything starts, every run is checked as
'letkd run' checks it (config, overrides, models, taps, teacher and checkpoint files, seeds) and all
problems are listed at once. A run folder is skipped when it holds the completed run asked for and
resumed when it holds an unfinished one (last.pt); one made with another config is refused, naming the
keys that differ. DIR/sweep.json lists every run of every call. One sweep at a time may use DIR.

--executor local (default) runs one run at a time on the CPU, or --runs-per-gpu processes (default 1)
on each visible GPU (CUDA_VISIBLE_DEVICES), side by side; each run's output goes to
DIR/logs/<name>-seed<s>.log, and a failed run's cause is printed with its log. The runs stop with the
sweep (Ctrl-C, SIGTERM, or kill -9 of the sweep). --executor slurm submits array jobs through submitit
(job files and logs in DIR/submitit) and returns; watch them with squeue, then run 'letkd report DIR'
(or pass --wait).
"""

#: seeds are in numpy's seed range (they seed numpy, Python and torch)
MAX_SEED = 2**32 - 1
#: the most seeds --seeds N may ask for
MAX_SEEDS = 1000


def _seeds(args: argparse.Namespace) -> list[int]:
    if args.seed_list is None:
        seeds = list(range(args.seeds))
    else:
        try:
            seeds = [int(s) for s in args.seed_list.split(",") if s.strip()]
        except ValueError:
            raise SweepError(f"--seed-list {args.seed_list!r}: expected integers, e.g. 0,1,2") from None
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise SweepError(f"seed {bad[0]} is out of range: seeds are 0 to {MAX_SEED}")
    if len(set(seeds)) < len(seeds):
        print(f"warning: --seed-list {args.seed_list}: each seed is run once", file=sys.stderr)
    return list(dict.fromkeys(seeds))


def _sbatch(items: list[str]) -> dict[str, str]:
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"--sbatch {item!r}: expected KEY=VALUE, e.g. --sbatch account=myproject")
        extra[key.strip().lstrip("-")] = value
    return extra


DESCRIPTION = (
    "Run every config with every grid point and seed as an ordinary run folder under DIR, skipping completed "
    "runs and resuming interrupted ones."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``letkd sweep``. Configs, overrides and options may come in any order: what follows the
    first config is parsed again by :func:`handle` with ``parse_intermixed_args``."""
    p = subparsers.add_parser(
        "sweep",
        help="run configs x grid x seeds as run folders (locally or on SLURM), skipping finished runs",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("items", nargs=argparse.REMAINDER, metavar="CONFIG... [key=value ...]",
                   help="YAML configs and config overrides (any order with the options)")  # fmt: skip
    _add_options(p)
    p.set_defaults(func=handle)
    return p


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=int, default=5, metavar="N", help="seeds 0..N-1 (default: 5)")
    p.add_argument("--seed-list", metavar="S,S,...", help="explicit seeds instead of --seeds, e.g. 0,3,7")
    p.add_argument(
        "--grid", action="append", default=[], metavar="KEY=V1,V2,...",
        help="run every value of a config key (repeatable: every combination), e.g. "
        "--grid method.params.layers.0.subclasses_per_class=1,4,16",
    )  # fmt: skip
    p.add_argument(
        "--out", metavar="DIR", default="sweeps/sweep", help="sweep folder (default: sweeps/sweep)"
    )
    p.add_argument("--executor", choices=("local", "slurm"), default="local", help="where runs execute")
    p.add_argument("--gpus", metavar="IDS", help="local: GPU ids to use, e.g. 0,1 (default: every visible)")
    p.add_argument(
        "--runs-per-gpu", type=int, default=1, metavar="N",
        help="local: runs side by side on each GPU (on the CPU without GPUs), each with 1/N of the "
        "data-loader workers (default: 1)",
    )  # fmt: skip
    g = p.add_argument_group("slurm (--executor slurm)")
    g.add_argument("--partition", help="SLURM partition")
    g.add_argument("--time", type=int, metavar="MIN", help="time limit per run in minutes")
    g.add_argument("--gpus-per-job", type=int, default=1, metavar="N", help="GPUs per run (default: 1)")
    g.add_argument("--cpus-per-job", type=int, metavar="N", help="CPUs per run")
    g.add_argument("--mem-gb", type=float, metavar="GB", help="memory per run")
    g.add_argument("--array-parallelism", type=int, metavar="N", help="at most N runs of the array at once")
    g.add_argument("--job-name", default="letkd", help="SLURM job name (default: letkd)")
    g.add_argument(
        "--sbatch", action="append", default=[], metavar="KEY=VALUE",
        help="extra sbatch option, repeatable, e.g. --sbatch account=abc --sbatch qos=high",
    )  # fmt: skip
    g.add_argument("--wait", action="store_true", help="wait for the jobs and print each run's outcome")


def _intermixed(args: argparse.Namespace) -> argparse.Namespace:
    """Parse what followed the first config (configs, overrides and options mixed) on top of ``args``."""
    p = argparse.ArgumentParser(prog="letkd sweep", description=DESCRIPTION)
    p.add_argument("items", nargs="+", metavar="CONFIG|key=value")
    _add_options(p)
    rest = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "items"})
    return p.parse_intermixed_args(args.items, namespace=rest)


def is_config(item: str) -> bool:
    """A config file rather than an override: no ``=``, an existing file, or a path before the ``=``
    (``cfg/kd_T=4.yaml``; an override's key is a dotted name)."""
    key = item.split("=", 1)[0]
    if "=" not in item or "/" in key or "\\" in key:
        return True
    try:
        return Path(item).is_file()
    except OSError:  # e.g. a name too long for a file: an override
        return False


def _check_options(args: argparse.Namespace) -> str | None:
    """The first problem of the options that need no config, or None."""
    if args.seed_list is None and not 1 <= args.seeds <= MAX_SEEDS:
        return f"--seeds {args.seeds}: must be 1 to {MAX_SEEDS} (--seed-list picks seeds)"
    if args.runs_per_gpu < 1:
        return f"--runs-per-gpu {args.runs_per_gpu}: must be at least 1"
    if args.executor == "slurm" and args.runs_per_gpu != 1:
        return "--runs-per-gpu is for --executor local (a SLURM job runs one run)"
    return None


def _gpus(args: argparse.Namespace) -> list[str] | None:
    """``--gpus`` as ids (None: the visible ones); warns when torch sees no GPU to run them on."""
    if not args.gpus:
        return None
    from letkd.sweep.local import cuda_device_count

    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    if not gpus:
        raise SweepError(f"--gpus {args.gpus!r}: expected GPU ids, e.g. 0,1")
    if cuda_device_count() == 0:
        print(f"warning: --gpus {args.gpus}: torch sees no CUDA GPU here; each id is a slot for "
              f"{args.runs_per_gpu} run(s) at a time, and the runs train on the CPU",
              file=sys.stderr)  # fmt: skip
    return gpus


def handle(args: argparse.Namespace) -> int:
    """Handler of ``letkd sweep``; returns 1 when the sweep cannot start or a run failed or never started,
    130 on Ctrl-C and 128 + the signal on SIGTERM/SIGHUP."""
    from letkd.sweep import build_grid

    if not args.items:
        print("error: no config given; usage: letkd sweep CONFIG... [--seeds N] [--out DIR]", file=sys.stderr)
        return 1
    args = _intermixed(args)
    problem = _check_options(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    configs = [i for i in args.items if is_config(i)]
    overrides = [i for i in args.items if not is_config(i)]
    try:
        grid = build_grid(configs, _seeds(args), args.out, overrides, args.grid)
        gpus = _gpus(args)
        return _start(args, grid, configs, overrides, gpus)
    except SweepError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line
        return 1


def _start(args: argparse.Namespace, grid: list, configs: list[str], overrides: list[str],
           gpus: list[str] | None) -> int:  # fmt: skip
    from letkd.sweep import (
        SlurmOptions,
        SweepStopped,
        check_existing,
        hold_sweep_dir,
        prepare_dir,
        read_manifest,
        run_local,
        submit_slurm,
        update_manifest,
    )
    from letkd.sweep.grid import unique_configs

    options = SlurmOptions(
        partition=args.partition, time_min=args.time, gpus_per_job=args.gpus_per_job,
        cpus_per_job=args.cpus_per_job, mem_gb=args.mem_gb, array_parallelism=args.array_parallelism,
        job_name=args.job_name, sbatch=_sbatch(args.sbatch),
    )  # fmt: skip
    out = prepare_dir(args.out)
    used = unique_configs(configs)
    if len(used) < len(configs):
        print(f"warning: a config is given twice; each is run once ({len(used)} configs)", file=sys.stderr)
    with hold_sweep_dir(out):
        read_manifest(out)
        check_existing(grid)
        settings = {k: v for k, v in vars(args).items() if k not in ("func", "items", "command")}
        update_manifest(out, grid, {**settings, "configs": used, "overrides": overrides})
        points = len({r.point for r in grid})
        shape = f"{len(used)} configs" + (f" x {points} grid points" if args.grid else "")
        print(f"sweep: {len(grid)} runs ({shape} x {len({r.seed for r in grid})} seeds) in {out}")
        if args.executor == "local":
            try:
                counts = run_local(grid, gpus, runs_per_gpu=args.runs_per_gpu)
            except SweepStopped as exc:
                print(f"sweep: stopped by {exc}; run the same command again to go on", file=sys.stderr)
                return 128 + exc.signum
            done = ", ".join(f"{n} {k}" for k, n in counts.items() if n or k != "not started")
            print(f"sweep: {done}; tables: letkd report {out}")
            return 1 if counts["failed"] or counts["not started"] else 0
        try:
            jobs = submit_slurm(grid, out, options, wait=args.wait)
        except (RuntimeError, OSError) as exc:  # no sbatch/srun here, or sbatch refused the job
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            print(f"error: cannot submit to SLURM: {first} (run on a SLURM login node, or --executor local)",
                  file=sys.stderr)  # fmt: skip
            return 1
    if jobs and not args.wait:
        print(f"sweep: submitted {len(jobs)} jobs; watch them with 'squeue -u $USER', then "
              f"'letkd report {out}'")  # fmt: skip
    return 1 if args.wait and any(job.exception() is not None for job in jobs) else 0
