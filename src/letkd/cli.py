"""The ``letkd`` command line.

Each sub-command lives in its own module under :mod:`letkd.commands` and exposes
``add_parser(subparsers)`` (which registers the sub-command and sets ``func``) — see
``COMMANDS`` below. Modules are imported lazily so ``letkd --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# sub-command name -> module under letkd.commands providing add_parser(subparsers)
COMMANDS: dict[str, str] = {
    "train": "train",
    "eval": "evaluate",
    "fit": "fit",
    "run": "run",
    "demo": "demo",
    "report": "report",
    "export": "export",
    "inspect": "inspect",
    "sweep": "sweep",
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser; with ``only`` set, import just that sub-command's module."""
    from letkd import __version__

    parser = argparse.ArgumentParser(
        prog="letkd",
        description="Knowledge distillation with learnable KD layers (letKD-1/letKD-2) and baselines.",
    )
    parser.add_argument("--version", action="version", version=f"letkd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=f"(see 'letkd {name} --help')")
            continue
        try:
            mod = importlib.import_module(f"letkd.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"letkd.commands.{module}":
                raise
            continue
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``letkd`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
