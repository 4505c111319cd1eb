"""``letkd sweep CONFIG... --seeds N [--out DIR]``: every config × seed as a run folder, here or on SLURM."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  letkd sweep configs/digits/vanilla.yaml configs/digits/kd.yaml --seeds 3 --out sweeps/digits
  letkd sweep configs/cifar100/*/letkd2.yaml --seeds 5 --out sweeps/table1 train.progress=false
  letkd sweep configs/cifar100/*/letkd2.yaml --seeds 5 --executor slurm --partition gpu \\
      --gpus-per-job 1 --time 720 --out sweeps/table1
  letkd report sweeps/table1 --layout pairs

Run folders are DIR/<config name>/seed<s> (the config with seed=s and the overrides), so
'letkd report DIR' groups the seeds of each config. A run whose summary.json says completed is
skipped, one with a last.pt is resumed: run the same command again after an interruption. Every
config is validated with its overrides before anything starts. DIR/sweep.json lists the grid.

--executor local (default) runs one run after another on the CPU, or one process per visible GPU
(CUDA_VISIBLE_DEVICES) in parallel; each run's output goes to DIR/logs/<name>-seed<s>.log.
--executor slurm submits array jobs through submitit (job files and logs in DIR/submitit) and
returns; watch them with squeue, then run 'letkd report DIR' (or pass --wait).
"""


def _seeds(args: argparse.Namespace) -> list[int]:
    if args.seed_list:
        try:
            return [int(s) for s in args.seed_list.split(",") if s.strip()]
        except ValueError:
            raise SystemExit(
                f"error: --seed-list {args.seed_list!r}: expected integers, e.g. 0,1,2"
            ) from None
    return list(range(args.seeds))


def _sbatch(items: list[str]) -> dict[str, str]:
    extra = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"error: --sbatch {item!r}: expected KEY=VALUE, e.g. --sbatch account=myproject")
        extra[key.strip().lstrip("-")] = value
    return extra


DESCRIPTION = (
    "Run every config with every seed as an ordinary run folder under DIR, skipping completed runs and "
    "resuming interrupted ones."
)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``letkd sweep``. Configs, overrides and options may come in any order: what follows the
    first config is parsed again by :func:`handle` with ``parse_intermixed_args``."""
    p = subparsers.add_parser(
        "sweep",
        help="run configs x seeds as run folders (locally or on SLURM), skipping finished runs",
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
        "--out", metavar="DIR", default="sweeps/sweep", help="sweep folder (default: sweeps/sweep)"
    )
    p.add_argument("--executor", choices=("local", "slurm"), default="local", help="where runs execute")
    p.add_argument("--gpus", metavar="IDS", help="local: GPU ids to use, e.g. 0,1 (default: every visible)")
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


def handle(args: argparse.Namespace) -> int:
    """Handler of ``letkd sweep``; returns 1 when the sweep cannot start or a run failed."""
    from letkd.sweep import (
        SlurmOptions,
        SweepError,
        build_grid,
        prepare_dir,
        run_local,
        submit_slurm,
        write_manifest,
    )

    if not args.items:
        print("error: no config given; usage: letkd sweep CONFIG... [--seeds N] [--out DIR]", file=sys.stderr)
        return 1
    args = _intermixed(args)
    if args.seeds < 1 and not args.seed_list:
        print("error: --seeds must be at least 1", file=sys.stderr)
        return 1
    configs = [i for i in args.items if "=" not in i]
    overrides = [i for i in args.items if "=" in i]
    try:
        grid = build_grid(configs, _seeds(args), args.out, overrides)
        out = prepare_dir(args.out)
    except SweepError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)  # one line
        return 1
    settings = {k: v for k, v in vars(args).items() if k not in ("func", "items", "command")}
    write_manifest(out, grid, {**settings, "overrides": overrides})
    seeds = len(grid) // max(1, len(configs))
    print(f"sweep: {len(grid)} runs ({len(configs)} configs x {seeds} seeds) in {out}")
    if args.executor == "local":
        gpus = [g.strip() for g in args.gpus.split(",") if g.strip()] if args.gpus else None
        counts = run_local(grid, gpus)
        done = f"{counts['completed']} completed, {counts['skipped']} skipped, {counts['failed']} failed"
        print(f"sweep: {done}; tables: letkd report {out}")
        return 1 if counts["failed"] else 0
    options = SlurmOptions(
        partition=args.partition, time_min=args.time, gpus_per_job=args.gpus_per_job,
        cpus_per_job=args.cpus_per_job, mem_gb=args.mem_gb, array_parallelism=args.array_parallelism,
        job_name=args.job_name, sbatch=_sbatch(args.sbatch),
    )  # fmt: skip
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
    return 0
