"""``letkd export``: turn a (grafted) student checkpoint into a deployable ``torch.export`` / ONNX file
(the work is done by :mod:`letkd.deploy`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

DEFAULT_INPUT_SIZE = (3, 32, 32)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``letkd export``."""
    p = subparsers.add_parser(
        "export",
        help="export a trained (grafted) student to torch.export (.pt2) or ONNX",
        description=(
            "Rebuild the student of CHECKPOINT (model name, classes and KD-layer grafts are read from the "
            "checkpoint's metadata when present), bake its KD layers into plain modules and write a "
            ".pt2 file (torch.export) and/or an ONNX file."
        ),
    )
    p.add_argument("checkpoint", help="letkd training checkpoint or weights file")
    p.add_argument("--out", required=True, help="output file: .pt2 (torch.export) or .onnx")
    p.add_argument("--model", help="model name (needed when the checkpoint has no metadata)")
    p.add_argument("--num-classes", type=int, help="number of classes (default: from the checkpoint)")
    p.add_argument("--input-size", help="C,H,W of one input (default: from the checkpoint, else 3,32,32)")
    p.add_argument("--onnx", action="store_true", help="also write an ONNX file next to the .pt2 file")
    p.set_defaults(func=run_export)


SUFFIXES = (".pt2", ".onnx")


def parse_input_size(text: str | Sequence[int] | None) -> tuple[int, ...]:
    """``"3,32,32"`` (or a list) → ``(3, 32, 32)``; ``ValueError`` saying what is expected otherwise."""
    if text is None:
        return DEFAULT_INPUT_SIZE
    try:
        values = [int(v) for v in text.split(",")] if isinstance(text, str) else [int(v) for v in text]
    except (TypeError, ValueError):
        values = []
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"--input-size {text!r}: expected C,H,W as three positive integers, e.g. 3,32,32")
    return tuple(values)


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``letkd export``; failures are raised and reported by :func:`letkd.cli.main` (exit 1)."""
    import torch

    from letkd.config import ConfigError
    from letkd.cost import deployed_cost, describe_deployed_cost
    from letkd.deploy import export_program, load_student, write_onnx, write_pt2
    from letkd.graft import describe_grafts

    out = Path(args.out)
    if out.suffix not in SUFFIXES:
        raise ConfigError(
            f"--out {out}: refused, the suffix says which format to write: name it {out.stem}.pt2 "
            f"(torch.export) or {out.stem}.onnx"
        )
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give a file name ending in .pt2 or .onnx")
    input_size = parse_input_size(args.input_size) if args.input_size else None
    model, meta = load_student(args.checkpoint, args.model, args.num_classes)
    input_size = input_size or parse_input_size(meta.get("input_size"))
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_size))
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"--input-size {','.join(map(str, input_size))} does not fit {meta['model_name']} ({first}); "
            "give the C,H,W it was trained on"
        ) from None
    for entry in describe_grafts(model):
        settings = f"{entry['type']}({entry['settings']})"
        print(f"graft {entry['target']}: {settings}, {entry['parameters']:,} params")
    print(describe_deployed_cost(deployed_cost(model, input_size)))

    program = export_program(model, input_size)
    example = torch.randn(3, *input_size)
    with torch.no_grad():
        diff = (program.module()(example) - model(example)).abs().max().item()
    print(f"exported program matches the model (max |difference| = {diff:.2e})")
    if out.suffix == ".onnx":
        write_onnx(program, out)
        print(f"wrote {out}")
        return 0
    write_pt2(program, out)
    print(f"wrote {out}")
    if args.onnx:
        onnx_path = out.with_suffix(".onnx")
        write_onnx(program, onnx_path)
        print(f"wrote {onnx_path}")
    return 0
