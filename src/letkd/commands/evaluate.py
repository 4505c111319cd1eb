"""``letkd eval``: top-1/top-5 accuracy of a checkpoint (letkd run checkpoints or RepDistiller/CRD files)."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
examples:
  letkd eval --checkpoint runs/digits-resnet8/20240101-120000/best.pt --data digits
  letkd eval --model resnet56 --checkpoint saved_models/resnet56_vanilla/ckpt_epoch_240.pth --data cifar100
  letkd eval --checkpoint crd:resnet56 --data cifar100 --download
  letkd eval --checkpoint torchvision:IMAGENET1K_V1 --model torchvision:resnet34 --data imagenet

Checkpoints written by 'letkd train' carry the model name, the number of classes and the KD layers
grafted into the student, so --model and --num-classes are optional for them; grafts are re-applied
before the (strict) weight loading. Other files need --model: RepDistiller/CRD (ckpt_epoch_N.pth,
<model>_best.pth, <model>_last.pth, PyTorch 0.4.0 ones included), mdistiller (student_best, best,
latest, ...), the letKD authors' networks (<net>_net_epochN[.best]) and plain state_dicts; files saved
on a GPU load on the CPU (docs/models.md, "Checkpoints").
A published teacher (crd:resnet56, crd:wrn_40_2, ...: docs/models.md) is fetched into the cache; on the
whole CIFAR-100 test set its top-1 must be within 0.2 points of the published figure (exit status 1 if not).
torchvision:<WEIGHTS> (with a torchvision --model) is that model's torchvision weights file, fetched and
hash-checked by torchvision (docs/paper.md).
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
    p.add_argument(
        "--checkpoint", required=True, metavar="PATH", help="weights file (.pt/.pth/.safetensors), crd:<arch>"
    )
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
    p.add_argument("--download", action="store_true", help="fetch the dataset if it is missing")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``letkd eval``."""
    import torch
    from torch.utils.data import DataLoader

    from letkd.commands import options
    from letkd.config import ConfigError
    from letkd.data import create_dataset, dataset_info
    from letkd.deploy import load_student
    from letkd.device import select_device
    from letkd.engine.evaluation import evaluate
    from letkd.engine.loaders import auto_num_workers
    from letkd.models import published, torchvision_weights

    # failures (checkpoint, dataset, device) are raised and reported as one line by letkd.cli.main
    options.in_range("--batch-size", args.batch_size, 1)
    options.in_range("--workers", args.workers, 0, 256)
    options.num_classes(args.num_classes)
    device = select_device(args.device)
    spec = args.checkpoint
    checkpoint, model_name = spec, args.model
    if published.is_published_name(spec):
        published.check_eval_dataset(spec, args.data, dataset_info(args.data).num_classes, args.num_classes)
        checkpoint = str(published.resolve_teacher_checkpoint(spec, arch=args.model))
        model_name = published.published_teacher(spec).arch
    elif torchvision_weights.is_weights_name(spec):  # torchvision:IMAGENET1K_V1 of --model
        if not model_name:
            raise ConfigError(f"--checkpoint {spec} needs --model (e.g. torchvision:resnet34)")
        checkpoint = str(torchvision_weights.resolve_weights_checkpoint(spec, model_name))
    else:
        options.checkpoint_file("--checkpoint", spec)
    model, meta = load_student(checkpoint, model_name, args.num_classes, args.data)
    _warn_dataset_mismatch(meta, args.data, dataset_info(args.data).num_classes)
    dataset = create_dataset(args.data, args.split, root=args.root, transform="test", download=args.download)
    model, name = model.to(device), meta["model_name"]
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
    if published.is_published_name(spec) and args.data == "cifar100" and args.split == "test":
        try:
            if published.check_published_accuracy(spec, result["top1"], result["count"]):
                out["matches_published"] = True
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            out["matches_published"] = False
    if args.json:
        print(json.dumps(out))
    else:
        print(
            f"{name} on {args.data}/{args.split} ({result['count']} images): "
            f"top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  loss {result['loss']:.4f}"
        )
    return 1 if out.get("matches_published") is False else 0


def _warn_dataset_mismatch(meta: dict, data: str, data_classes: int) -> None:
    """One warning line when the checkpoint was trained on another dataset or for another class count."""
    trained_on, classes = meta.get("dataset"), meta.get("num_classes")
    if (trained_on and trained_on != data) or (classes is not None and classes != data_classes):
        print(
            f"warning: the checkpoint was trained on {trained_on or 'another dataset'} ({classes} classes), "
            f"evaluating on {data} ({data_classes} classes): the accuracy may mean nothing",
            file=sys.stderr,
        )
