"""``letkd export``: turn a (grafted) student checkpoint into a deployable ``torch.export`` / ONNX file
(the work is done by :mod:`letkd.deploy`)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

DEFAULT_INPUT_SIZE = (3, 32, 32)
#: bounds of ``--input-size``: one image a network takes (not a batch, not a volume)
MAX_CHANNELS, MAX_SIDE = 64, 4096


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
    if values[0] > MAX_CHANNELS or max(values[1:]) > MAX_SIDE:
        raise ValueError(
            f"--input-size {text!r}: at most {MAX_CHANNELS} channels and {MAX_SIDE} pixels a side (an image "
            "the network takes, not a batch)"
        )
    return tuple(values)


def check_input_size(given: tuple[int, ...], meta: dict) -> None:
    """Refuse an ``--input-size`` other than the one the checkpoint records its student was trained on (a
    KD layer's grid, and the accuracy, hold at that size only)."""
    from letkd.config import ConfigError

    recorded = meta.get("input_size")
    if recorded and tuple(int(v) for v in recorded) != tuple(given):
        shown, asked = ",".join(str(int(v)) for v in recorded), ",".join(map(str, given))
        raise ConfigError(
            f"--input-size {asked} differs from {shown}, the input {meta.get('model_name')} was trained on "
            f"(recorded in the checkpoint): omit --input-size to export at {shown}"
        )


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``letkd export``; failures are raised and reported by :func:`letkd.cli.main` (exit 1)."""
    import torch

    from letkd.commands import options
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
    options.num_classes(args.num_classes)
    options.checkpoint_file("checkpoint", args.checkpoint)
    model, meta = load_student(args.checkpoint, args.model, args.num_classes)
    if input_size is not None:
        check_input_size(input_size, meta)
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
