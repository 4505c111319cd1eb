"""``letkd export``: turn a (grafted) student checkpoint into a deployable ``torch.export`` / ONNX file."""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from letkd.graft import apply_graft_spec, bake, describe_grafts
from letkd.utils import atomic_write_bytes

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


def parse_input_size(text: str | Sequence[int] | None) -> tuple[int, ...]:
    """``"3,32,32"`` (or a list) → ``(3, 32, 32)``."""
    if text is None:
        return DEFAULT_INPUT_SIZE
    values = [int(v) for v in text.split(",")] if isinstance(text, str) else [int(v) for v in text]
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"input size must be C,H,W with positive integers, got {text!r}")
    return tuple(values)


def build_student(
    state_dict: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    model_name: str | None = None,
    num_classes: int | None = None,
) -> nn.Module:
    """The student of a checkpoint: built by name, grafted per ``meta["grafts"]``, weights loaded strictly."""
    from letkd.methods.base import check_standalone_student
    from letkd.models import create_model

    check_standalone_student(meta.get("method"))
    name = model_name or meta.get("model_name")
    if not name:
        raise ValueError("the checkpoint has no model name in its metadata; pass --model NAME")
    classes = num_classes or meta.get("num_classes")
    if not classes:
        raise ValueError("the checkpoint has no number of classes in its metadata; pass --num-classes N")
    model = create_model(name, num_classes=int(classes))
    apply_graft_spec(model, meta.get("grafts") or [])
    result = model.load_state_dict(dict(state_dict), strict=False)
    if result.missing_keys or result.unexpected_keys:
        hint = " (KD-layer keys without graft metadata?)" if any(".letkd." in k for k in state_dict) else ""
        raise ValueError(
            f"checkpoint weights do not fit {name}{hint}: missing {result.missing_keys[:8]}, "
            f"unexpected {result.unexpected_keys[:8]}"
        )
    return model.eval()


def export_program(model: nn.Module, input_size: Sequence[int]) -> torch.export.ExportedProgram:
    """``torch.export`` of ``bake(model)`` in eval mode with a dynamic batch dimension."""
    baked = bake(model).eval()
    example = (torch.randn(2, *input_size),)
    batch = torch.export.Dim("batch", min=1, max=4096)
    return torch.export.export(baked, example, dynamic_shapes=({0: batch},))


def write_pt2(program: torch.export.ExportedProgram, path: Path) -> None:
    """Atomically write an exported program."""
    buf = io.BytesIO()
    torch.export.save(program, buf)
    atomic_write_bytes(path, buf.getvalue())


def write_onnx(program: torch.export.ExportedProgram, path: Path) -> None:
    """Atomically write an exported program as ONNX (needs the ``onnx`` and ``onnxscript`` packages)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        message = "ONNX export needs the onnx and onnxscript packages: pip install letkd[onnx]"
        raise RuntimeError(message) from exc
    onnx_program = torch.onnx.export(
        program, dynamo=True, input_names=["images"], output_names=["logits"], verbose=False
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)
    os.close(fd)
    try:
        onnx_program.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``letkd export``."""
    from letkd.models.checkpoint import extract_state_dict, read_checkpoint

    state_dict, info = extract_state_dict(read_checkpoint(args.checkpoint))
    meta = info.get("meta") if isinstance(info.get("meta"), Mapping) else {}
    input_size = parse_input_size(args.input_size or meta.get("input_size"))
    model = build_student(state_dict, meta, args.model, args.num_classes)
    for entry in describe_grafts(model):
        settings = f"{entry['type']}({entry['settings']})"
        print(f"graft {entry['target']}: {settings}, {entry['parameters']:,} params")

    out = Path(args.out)
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
