"""``python -m letkd.sweep.child SWEEP_PID ARGS...``: ``letkd ARGS`` in a process that dies with the sweep
that started it. On Linux it asks for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), so a sweep killed
outright (``kill -9``) leaves no run training on behind it; a sweep already gone when the run starts stops
it at once."""

from __future__ import annotations

import os
import signal
import sys

#: prctl(2) option: the signal the calling process gets when its parent dies
PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> bool:
    """Ask for SIGTERM when the parent process dies; False when ``parent`` is not the parent any more."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    return os.getppid() == parent


def main(argv: list[str] | None = None) -> int:
    """Run ``letkd ARGS`` once the parent-death signal is set (exit status 1 if the sweep is gone)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or not argv[0].isdigit():
        print("usage: python -m letkd.sweep.child SWEEP_PID ARGS...", file=sys.stderr)
        return 2
    if not die_with_parent(int(argv[0])):
        print("error: the sweep that started this run has ended; run the sweep again", file=sys.stderr)
        return 1
    from letkd.cli import main as letkd_main

    return letkd_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
