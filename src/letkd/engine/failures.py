"""How a run fails, in words: a divergence (the non-finite losses, the checkpoint left, the likely causes),
a run folder that can no longer be written (a full disk, a read-only or vanished folder) and an
interruption (where it stopped, what ``last.pt`` holds, how to go on)."""

from __future__ import annotations

import math
from pathlib import Path

from letkd.config import RunConfig
from letkd.engine.rundir import LAST, RunFolderError


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops. The message names the non-finite losses,
    the checkpoint left to resume from (if any) and what could cause it (``hint``)."""

    def __init__(
        self,
        epoch: int,
        step: int,
        losses: dict[str, float],
        checkpoint: str | None = None,
        hint: str = "",
    ) -> None:
        self.epoch, self.step, self.losses = epoch, step, losses
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        named = {k: v for k, v in bad.items() if k != "loss"} or bad
        values = ", ".join(f"{k}={v}" for k, v in named.items())
        saved = (
            f"{checkpoint} holds the last completed epoch (fix, then --resume)"
            if checkpoint
            else "no checkpoint was written (it diverged in the first epoch)"
        )
        super().__init__(
            f"non-finite loss in epoch {epoch + 1}, step {step}: {values}; stopped. {saved}. {hint}".strip()
        )


def divergence_hint(cfg: RunConfig, losses: dict[str, float]) -> str:
    """What in the config or the supervision could make ``losses`` non-finite."""
    tc = cfg.train
    bad = [k for k, v in losses.items() if not math.isfinite(v) and k != "loss"]
    causes = [f"train.lr {tc.lr} too high (lower it, or set train.grad_clip)"]
    if tc.amp == "fp16":
        causes.append("fp16 overflow (train.amp=bf16 or none)")
    distill = [k for k in bad if k != "loss_ce"]
    if distill:
        causes.append(
            f"the weight or temperature of {', '.join(distill)} in method.params, or the teacher "
            "supervision (artefacts fitted for another teacher or data: letkd fit refits them)"
        )
    return "Possible causes: " + "; ".join(causes) + "."


def write_failure(exc: OSError, run_dir: Path) -> RunFolderError:
    """The error for a write that failed in ``run_dir``, saying what to do."""
    where = f" ({exc.filename})" if exc.filename else ""
    then = ", then --resume" if (run_dir / LAST).is_file() else ""
    return RunFolderError(
        f"cannot write the run folder {run_dir}: {exc.strerror or exc}{where}; free some space, check its "
        f"permissions or choose another --out{then}"
    )


def interrupted_message(run_dir: Path, epoch: int, done: int, total: int) -> str:
    """Where a run interrupted in (0-based) ``epoch`` stopped, with ``done`` epochs saved in ``last.pt``, and
    how to go on; epochs are counted from 1, as the progress lines do."""
    where = f"in epoch {epoch + 1}/{total}"
    if done == 0:
        return (
            f"{where}, before any epoch was saved; nothing to resume: run the same command again (it starts "
            f"{run_dir} from the beginning)"
        )
    return (
        f"{where}; {run_dir / LAST} holds epoch {done}/{total} (the epoch in progress is discarded): "
        "--resume continues from there, as an uninterrupted run would"
    )
