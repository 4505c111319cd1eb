"""``letkd eval``: top-1/top-5 accuracy of a checkpoint (letkd run checkpoints or RepDistiller/CRD files)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

EPILOG = """\
examples:
  letkd eval --checkpoint runs/digits-resnet8/20240101-120000/best.pt --data digits
  letkd eval --model resnet56 --checkpoint saved_models/resnet56_vanilla/ckpt_epoch_240.pth --data cifar100

Checkpoints written by 'letkd train' carry the model name, the number of classes and the KD layers
grafted into the student, so --model and --num-classes are optional for them; grafts are re-applied
before the (strict) weight loading. Other files (RepDistiller/CRD, plain state_dicts) need --model.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``letkd eval``."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint (top-1 / top-5)",
        description="Evaluate a model checkpoint on a dataset split and print top-1 / top-5 accuracy.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", metavar="NAME", help="zoo model name (default: the checkpoint's own)")
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="weights file (.pt/.pth/.safetensors)")
    p.add_argument("--data", required=True, metavar="NAME", help="dataset name, e.g. cifar100, digits")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--root", metavar="DIR", help="dataset folder (default: search $LETKD_DATA, ./data)")
    p.add_argument("--batch-size", type=int, default=100, metavar="N", help="batch size (default: 100)")
    p.add_argument("--num-classes", type=int, metavar="N", help="classes of the model's head")
    p.add_argument("--device", default="auto", metavar="D", help="cpu, cuda, mps or auto (default)")
    p.add_argument(
        "--workers", type=int, metavar="N", help="DataLoader workers (default: from the CPU count)"
    )
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)
    return p


def load_model_for_eval(checkpoint: str, model_name: str | None, num_classes: int | None, dataset: str):
    """Build the model for ``checkpoint`` (re-applying recorded grafts) and load its weights strictly.

    Returns ``(model, model_name)``.
    """
    from letkd.config import ConfigError
    from letkd.methods.base import check_standalone_student
    from letkd.models import create_model, load_weights, read_checkpoint

    raw = read_checkpoint(checkpoint)
    meta: dict[str, Any] = raw.get("meta", {}) if isinstance(raw, dict) and "model" in raw else {}
    saved_name = meta.get("model_name")
    try:
        check_standalone_student(meta.get("method"))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if model_name and saved_name and model_name != saved_name:
        raise ConfigError(f"--model {model_name} but the checkpoint holds a {saved_name}")
    name = model_name or saved_name
    if not name:
        raise ConfigError("--model is required for checkpoints that do not name their model")
    if num_classes is None:
        num_classes = meta.get("num_classes")
    if num_classes is None:
        from letkd.data import dataset_info

        num_classes = dataset_info(dataset).num_classes
    kwargs = ((meta.get("config") or {}).get("model") or {}).get("kwargs") or {}
    model = create_model(name, int(num_classes), **kwargs)
    grafts = meta.get("grafts") or []
    if grafts:
        from letkd.graft import apply_graft_spec

        apply_graft_spec(model, grafts)
    load_weights(model, checkpoint)
    return model, name


def run(args: argparse.Namespace) -> int:
    """Handler of ``letkd eval``."""
    import torch
    from torch.utils.data import DataLoader

    from letkd.config import ConfigError
    from letkd.data import create_dataset
    from letkd.engine.distributed import select_device
    from letkd.engine.loaders import auto_num_workers
    from letkd.engine.trainer import evaluate
    from letkd.models import CheckpointError

    try:
        model, name = load_model_for_eval(args.checkpoint, args.model, args.num_classes, args.data)
        dataset = create_dataset(args.data, args.split, root=args.root, transform="test")
    except (ConfigError, CheckpointError, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    device = select_device(args.device)
    model = model.to(device).eval()
    workers = args.workers if args.workers is not None else auto_num_workers()
    loader = DataLoader(
        dataset, batch_size=args.batch_size, num_workers=workers, pin_memory=device.type == "cuda"
    )
    with torch.inference_mode():
        result = evaluate(model, loader, device, progress=sys.stderr.isatty())
    out = {
        "model": name,
        "data": args.data,
        "split": args.split,
        "images": result["count"],
        "top1": result["top1"],
        "top5": result["top5"],
        "loss": result["loss"],
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{name} on {args.data}/{args.split} ({result['count']} images): "
            f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}"
        )
    return 0
