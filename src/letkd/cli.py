"""The ``letkd`` command line.

Each sub-command lives in its own module under :mod:`letkd.commands` and exposes
``add_parser(subparsers)`` (which registers the sub-command and sets ``func``) — see
``COMMANDS`` below. Modules are imported lazily so ``letkd --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
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
    "paper": "paper",
    "probe": "probe",
    "data": "data",
}


class IntermixedArgumentParser(argparse.ArgumentParser):
    """Accepts positionals after options (``CONFIG --out DIR key=value``), which plain argparse rejects.

    Sub-commands whose arguments intermixed parsing cannot handle (``argparse.REMAINDER``) parse as usual.
    """

    _parsing = False

    def parse_known_args(self, args=None, namespace=None):
        """Parse with :meth:`parse_known_intermixed_args` (which calls this method again: hence the guard)."""
        if self._parsing:
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        except TypeError:  # REMAINDER or the like: intermixed parsing is not possible
            self._parsing = False
            return super().parse_known_args(args, namespace)
        finally:
            self._parsing = False


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the argument parser; with ``only`` set, import just that sub-command's module."""
    from letkd import __version__

    parser = argparse.ArgumentParser(
        prog="letkd",
        description="Knowledge distillation with learnable KD layers (letKD-1/letKD-2) and baselines.",
    )
    parser.add_argument("--version", action="version", version=f"letkd {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show the Python traceback of an error (anywhere on the line)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=IntermixedArgumentParser)
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
    """Entry point of the ``letkd`` console script.

    Every failure is reported as one ``error: …`` line on stderr with exit status 1; ``--debug`` (anywhere on
    the command line) or ``LETKD_DEBUG=1`` shows the traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LETKD_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    only = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0 if args.command is None else 2
    previous = _terminate_gracefully()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:
        print(f"{interrupted_message(exc)}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except Exception as exc:  # noqa: BLE001  (the one place that turns any failure into one line)
        if debug:
            raise
        print(f"error: {error_message(exc)}", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a scheduler ending a job): handled like Ctrl-C, so that temporary files are
    removed and a training run records where it stopped before the process ends (exit status 143)."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated("terminated (SIGTERM)")


def _terminate_gracefully():
    """Turn SIGTERM into :class:`Terminated` while a command runs (main thread, default handler only);
    return the handler to put back, or None."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    return signal.signal(signal.SIGTERM, _on_sigterm)


def interrupted_message(exc: KeyboardInterrupt) -> str:
    """What an interrupted command says: where it stopped (when the interrupted stage said so) and how to
    go on."""
    said = str(exc.args[0]) if exc.args else ""
    how = "terminated" if isinstance(exc, Terminated) else "interrupted"
    if said and not said.startswith("terminated"):
        return f"{how}: {said}"
    return f"{how}: run the same command again to go on (finished stages and downloads are kept and reused)"


def error_message(exc: BaseException) -> str:
    """The text printed after ``error:``: one line — its message, prefixed by its type where the type says
    something the message does not (a ``ValueError`` or ``RuntimeError`` is just its message) — or, for a
    :class:`~letkd.errors.ListedError`, its headline followed by its items, one per line."""
    from letkd.errors import ListedError

    if isinstance(exc, ListedError):
        return str(exc)
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    plain = (ValueError, RuntimeError, KeyError, Exception)
    if type(exc) in plain or type(exc).__module__.startswith("letkd"):
        return text
    if isinstance(exc, OSError) and exc.filename:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    return f"{type(exc).__name__}: {text}"
