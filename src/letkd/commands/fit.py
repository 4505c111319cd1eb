"""``letkd fit``: fit (or reuse) the teacher-side supervision artefacts a run config needs."""

from __future__ import annotations

import argparse
import time

EPILOG = """\
The config's method says which supervision it needs (letKD and QuEST: one artefact per
entry of method.params.layers): kind: codebook (K-means visual words, letKD-1/QuEST) or
kind: subclass (LDA + per-class sub-classes, letKD-2). Each is fitted on the teacher's
features over the training split (test transform, no augmentation) and saved to
supervision.cache_dir. Artefacts already in the cache are reused ("cached").
The teacher is read once for all of them (under torchrun, each process reads its share).
Relevant settings: supervision.kmeans_iters, supervision.seed, supervision.max_rows (the
seeded sample of rows a codebook keeps and trains on; unset: every row is kept and K-means
trains on a seeded K*256 of them; >= the number of rows: all of them, as the paper does),
supervision.rows_per_class (the seeded sample per class the sub-classes are fitted on; LDA
sees every row), supervision.sample_dtype, supervision.extract_batch_size,
supervision.cache_dir. Each fit prints which rows it used. A fit that would not fit on the
disk or in memory stops before the teacher runs and says which cap to set.

examples:
  letkd fit configs/cifar100/resnet56_resnet20/letkd2.yaml
  letkd fit my.yaml supervision.max_rows=100000000 --device cuda
  torchrun --nproc_per_node=8 -m letkd fit configs/imagenet/resnet34_resnet18/letkd2.yaml
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``letkd fit``."""
    parser = subparsers.add_parser(
        "fit",
        help="fit the teacher supervision (codebooks, sub-classes) a config needs",
        description="Fit, or load from the cache, the teacher-side supervision artefacts of a run config.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="run config (YAML)")
    parser.add_argument(
        "overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides, e.g. supervision.seed=1"
    )
    parser.add_argument(
        "--device",
        default=None,
        help="device for the teacher and distance computations (default: train.device; "
        "'auto' = CUDA if available)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Handler of ``letkd fit``; failures are raised and reported by :func:`letkd.cli.main` (exit 1)."""
    from letkd.build import supervision_specs
    from letkd.config import ConfigError, load_config

    cfg = load_config(args.config, args.overrides)
    specs = supervision_specs(cfg)
    if not specs:
        print(f"method {cfg.method.name!r} needs no teacher supervision")
        return 0
    if cfg.teacher is None:
        raise ConfigError("the config has no teacher section; supervision is fitted on a teacher")
    import torch.distributed

    from letkd.build import (
        build_teacher,
        check_run,
        method_and_params,
        resolve_num_classes,
        supervision_artifacts,
    )
    from letkd.engine import distributed as dist_utils
    from letkd.pipeline import ensure_teacher_checkpoint
    from letkd.preflight import check_inputs, check_subsets
    from letkd.utils import seed_everything

    num_classes = resolve_num_classes(cfg)
    check_run(cfg, method_and_params(cfg)[1], num_classes)  # taps, grids, memory: before any work
    check_inputs(cfg)
    check_subsets(cfg)

    already = torch.distributed.is_available() and torch.distributed.is_initialized()
    info, device = dist_utils.init_distributed(args.device or cfg.train.device)  # torchrun: split the pass
    try:
        progress = not args.no_progress and info.is_main
        checkpoint = ensure_teacher_checkpoint(cfg, device)  # trains it first if the config says so
        seed_everything(cfg.seed)  # an untrained teacher is initialised as `letkd run` initialises it
        teacher = build_teacher(cfg, num_classes, checkpoint)
        t0 = time.perf_counter()
        built = supervision_artifacts(cfg, specs, teacher, checkpoint, num_classes, device, progress)
        if info.is_main:
            for spec, found in zip(specs, built):
                print(summary_line(spec, found.meta, found.path, found.cached, time.perf_counter() - t0))
    finally:
        if not already:
            dist_utils.cleanup()
    return 0


def summary_line(spec, meta: dict, path, cached: bool, seconds: float) -> str:
    """One line describing a built artefact: kind, tap, rows, size, cluster sizes, time, file."""
    sizes = (meta.get("fit_info") or {}).get("cluster_sizes") or {}
    if spec.kind == "codebook":
        what = f"K={meta.get('num_templates')}"
    else:
        what = (
            f"{meta.get('num_classes')}x{meta.get('subclasses_per_class')} sub-classes, "
            f"LDA {(meta.get('fit_info') or {}).get('lda_components', '?')}"
        )
    sizes_text = (
        f"sizes min/median/max {sizes.get('min')}/{sizes.get('median')}/{sizes.get('max')}"
        if sizes
        else "sizes n/a"
    )
    status = "cached" if cached else f"fitted in {meta.get('fit_seconds', seconds):.1f} s"
    rows = meta.get("num_rows")
    total = meta.get("total_rows", rows)
    rows_text = (
        f"{rows} rows" if total == rows else f"{rows} of {total} rows ({meta.get('rows_dtype')} sample)"
    )
    return (
        f"{spec.kind} {spec.teacher_tap}{' (pool 2x2)' if spec.teacher_pool else ''}: "
        f"{rows_text} x {meta.get('dim')}, {what}, {sizes_text}, {status} -> {path}"
    )
