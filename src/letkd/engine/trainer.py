"""The training loop: epochs of SGD over a :class:`~letkd.methods.base.Distiller`, evaluation, checkpoints.

One :class:`Trainer` runs on every process of a ``torchrun`` job; rank 0 alone writes files and shows
progress.
Every epoch ``e`` (0-based) seeds its randomness (shuffle order, augmentation, dropout) from
``(cfg.seed, e, rank)``, sets the learning rate from the schedule once, trains, evaluates the student on the
test set and writes ``last.pt`` (and ``best.pt`` when top-1 improved) before logging the epoch — so a run
killed at any moment resumes from ``last.pt`` and ends with exactly the weights of an uninterrupted run.
An interrupted run (Ctrl-C, SIGTERM) leaves ``last.pt`` as it was at the end of the last completed epoch
for the same reason. Messages count epochs from 1 (``epoch 2/4``), as the progress lines do.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from letkd.checkpoints import CheckpointError, save_checkpoint
from letkd.config import RunConfig
from letkd.deploy import graft_spec
from letkd.engine import distributed as dist_utils
from letkd.engine.distributed import DistInfo
from letkd.engine.evaluation import autocast_context, batch_extras, batch_to_device, evaluate
from letkd.engine.failures import NonFiniteLossError, divergence_hint, interrupted_message, write_failure
from letkd.engine.host_memory import reuse_freed_host_memory
from letkd.engine.metrics import SumMeter
from letkd.engine.optim import build_optimizer, lr_at_epoch, set_lr
from letkd.engine.rundir import BEST, LAST, RunLogger, run_summary
from letkd.engine.state import Progress, capture_state, config_changes, load_checkpoint, restore_state
from letkd.utils import seed_everything, tqdm_disable

if TYPE_CHECKING:  # the engine knows the Distiller interface, not the method registry
    from letkd.methods.base import Distiller

PROGRESS_EVERY = 10  # steps between progress-bar text updates (formatting costs a little)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """A well-mixed 32-bit seed for one (run seed, epoch, rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


class Trainer:
    """Trains ``distiller`` for ``cfg.train.epochs`` epochs; :meth:`fit` returns the run summary.

    ``train_loader`` must use a sampler with ``set_epoch`` (see :mod:`letkd.engine.loaders`). Batches are
    ``(images (B, 3, H, W), labels (B,))`` or ``(images, labels, {name: tensor})``: the dict's entries go to
    ``forward_train`` as keyword arguments. Under ``torchrun`` the process group must already be
    initialised (:func:`letkd.engine.distributed.init_distributed`); the distiller is then wrapped in
    DistributedDataParallel (the frozen teacher holds no trainable parameters and is not synchronised).
    """

    def __init__(
        self,
        distiller: Distiller,
        cfg: RunConfig,
        run_dir: str | Path,
        train_loader: DataLoader,
        test_loader: DataLoader,
        device: torch.device | str,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.info: DistInfo = dist_utils.current_info()
        self.train_loader, self.test_loader = train_loader, test_loader
        tc = cfg.train
        self.distiller = self._prepare(distiller)
        self.trainable = list(self.distiller.trainable_parameters())
        if not self.trainable:
            raise ValueError("the distiller has no trainable parameters")
        self.optimizer = build_optimizer(self.trainable, tc)
        use_scaler = tc.amp == "fp16" and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.model: nn.Module = self.distiller
        if self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(
                self.distiller,
                device_ids=[self.device] if self.device.type == "cuda" else None,
                find_unused_parameters=bool(getattr(self.distiller, "find_unused_parameters", False)),
            )
        self.meta = self._default_meta() | (meta or {})
        self.progress = Progress()
        self.logger = (
            RunLogger(self.run_dir, tensorboard=cfg.train.tensorboard) if self.info.is_main else None
        )

    # ----------------------------------------------------------------------------------------- set-up
    def _prepare(self, distiller: Distiller) -> Distiller:
        tc = self.cfg.train
        distiller = distiller.to(self.device)
        if tc.reuse_host_memory and self.device.type == "cpu":
            reuse_freed_host_memory()
        if tc.channels_last:
            distiller = distiller.to(memory_format=torch.channels_last)
        if tc.sync_bn and self.info.enabled:
            if self.device.type == "cuda":
                for name, child in list(distiller.named_children()):
                    if name != "teacher":
                        setattr(distiller, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
            else:
                self._print("train.sync_bn needs CUDA; using per-process BatchNorm statistics")
        if tc.compile:
            distiller.student.compile()  # in place: state_dict keys stay unchanged
        return distiller

    def _default_meta(self) -> dict[str, Any]:
        sample = self.test_loader.dataset[0][0]
        return {
            "model_name": self.cfg.model.name,
            "num_classes": self.cfg.model.num_classes,
            "input_size": list(sample.shape),
            "method": self.cfg.method.name,
            # False: the deployed model is more than the student network (e.g. SimKD's reused head)
            "standalone_student": bool(self.distiller.standalone_student),
            "dataset": self.cfg.data.name,
            "config": self.cfg.model_dump(mode="json"),
        }

    def _print(self, message: str) -> None:
        if self.info.is_main:
            tqdm.write(message, file=sys.stderr)

    # ----------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (see :mod:`letkd.engine.state`)."""
        meta = self.meta | {"grafts": graft_spec(self.distiller.student)}
        schedule = self.cfg.train.schedule.type
        return capture_state(self.distiller, self.optimizer, self.scaler, self.progress, schedule, meta)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` (model, auxiliary modules, optimizer, counters, RNG, history)."""
        self.progress = restore_state(state, self.distiller, self.optimizer, self.scaler)

    def resume(self, path: str | Path | None = None) -> int:
        """Load ``path`` (default ``run_dir/last.pt``); return the epoch training continues with.

        A missing or unreadable checkpoint raises :class:`CheckpointError` (never a silent fresh start).
        """
        path = Path(path) if path is not None else self.run_dir / LAST
        if not path.is_file():
            raise CheckpointError(f"cannot resume: no checkpoint at {path}")
        state = load_checkpoint(path)
        self.load_state_dict(state)
        changed = config_changes(state["meta"].get("config") or {}, self.cfg.model_dump(mode="json"))
        if changed:
            self._print("resuming with a changed config: " + ", ".join(changed))
        done = self.progress.last_epoch + 1
        self._print(
            f"resuming from {path}: epoch {done}/{self.cfg.train.epochs} done, continuing with epoch "
            f"{done + 1}"
        )
        return done

    def _save(self, improved: bool) -> None:
        if not self.info.is_main:
            return
        state = self.state_dict()
        paths = [self.run_dir / LAST] + ([self.run_dir / BEST] if improved else [])
        save_checkpoint(state, *paths)

    # -------------------------------------------------------------------------------------- training
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs; return the summary (also in ``summary.json``, which records a failure
        too: status diverged, interrupted or failed, and why, where the folder can still be written)."""
        epoch = self.progress.last_epoch + 1
        try:
            if self.logger is not None:
                self.logger.write_config(self.cfg)
                self.logger.reset_history(self.progress.history)
            for epoch in range(self.progress.last_epoch + 1, self.cfg.train.epochs):
                self._run_epoch(epoch)
        except NonFiniteLossError as exc:
            self._finish(status="diverged", error=str(exc))
            raise
        except KeyboardInterrupt as exc:
            # last.pt is left as the end of the last completed epoch: resuming from there replays the
            # interrupted epoch with the same data order, RNG, BatchNorm and optimizer state — exactly
            with contextlib.suppress(OSError):
                self._finish(status="interrupted")
            done = self.progress.last_epoch + 1
            exc.args = (interrupted_message(self.run_dir, epoch, done, self.cfg.train.epochs),)
            raise
        except Exception as exc:
            with contextlib.suppress(OSError):  # record it where the folder can still be written
                self._finish(status="failed", error=" ".join(f"{type(exc).__name__}: {exc}".split()))
            if self.logger is not None:
                self.logger.close()
            if isinstance(exc, OSError):
                raise write_failure(exc, self.run_dir) from exc
            raise
        return self._finish(status="completed")

    def _run_epoch(self, epoch: int) -> None:
        t0 = time.perf_counter()
        if self.cfg.train.fresh_optimizer_per_stage and epoch in self.distiller.stage_starts():
            self.optimizer.state.clear()  # a new SGD: no momentum carried into the next stage
            self._print(f"epoch {epoch + 1}: the method starts a new stage with a fresh optimizer")
        lr = lr_at_epoch(self.cfg.train, epoch)
        set_lr(self.optimizer, lr)
        train_stats, train_seconds = self.train_epoch(epoch)
        evaluate_now = (epoch + 1) % self.cfg.train.eval_every == 0 or epoch + 1 == self.cfg.train.epochs
        test = self._evaluate() if evaluate_now else None
        improved = test is not None and test["top1"] > self.progress.best_top1
        if improved:
            self.progress.best_top1, self.progress.best_epoch = test["top1"], epoch
        seconds = time.perf_counter() - t0
        row: dict[str, Any] = {"epoch": epoch, "lr": lr, **train_stats}
        row.update(
            {
                "test_top1": test["top1"] if test else None,
                "test_top5": test["top5"] if test else None,
                "test_loss": test["loss"] if test else None,
                "images_per_second": train_stats["train_images"] / max(train_seconds, 1e-9),
                "seconds": seconds,
            }
        )
        self.progress.history.append(row)
        self.progress.last_epoch = epoch
        self.progress.wall_seconds += seconds
        self._save(improved)  # checkpoint first: a kill before logging still resumes consistently
        if self.logger is not None:
            self.logger.log_epoch(row)
            best = f"best {self.progress.best_top1:.2f}" if self.progress.best_epoch >= 0 else ""
            top = f"test top-1 {test['top1']:.2f}  " if test else ""
            self._print(
                f"epoch {epoch + 1}/{self.cfg.train.epochs}  lr {lr:.3g}  loss {row['train_loss']:.4f}  "
                f"train top-1 {row['train_top1']:.2f}  {top}{best}  {row['images_per_second']:.0f} img/s"
            )

    def _seed_epoch(self, epoch: int) -> None:
        seed = epoch_seed(self.cfg.seed, epoch, self.info.rank)
        seed_everything(seed)
        sampler = self.train_loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(self.train_loader.dataset, "set_epoch"):  # e.g. negatives drawn per epoch
            self.train_loader.dataset.set_epoch(epoch)
        if self.train_loader.generator is not None:
            self.train_loader.generator.manual_seed(seed)

    def _batches(self, epoch: int) -> Iterator[tuple[int, Any]]:
        limit = self.cfg.train.max_steps_per_epoch
        for step, batch in enumerate(self.train_loader):
            if limit is not None and step >= limit:
                break
            yield step, batch

    def _steps_in_epoch(self) -> int:
        n = len(self.train_loader)
        limit = self.cfg.train.max_steps_per_epoch
        return min(n, limit) if limit is not None else n

    def train_epoch(self, epoch: int) -> tuple[dict[str, float], float]:
        """One epoch of training (no evaluation, no checkpoint) at the optimizer's current LR (or, with
        ``schedule.per_step``, the schedule's LR at each step).

        Returns the epoch's mean losses / train top-1 / image count and its wall-clock seconds.
        Raises :class:`NonFiniteLossError` on a NaN/Inf loss.
        """
        tc = self.cfg.train
        self._seed_epoch(epoch)
        self.distiller.set_epoch(epoch)
        self.distiller.train()
        meter = SumMeter()
        names: list[str] = []
        bar = tqdm(
            total=self._steps_in_epoch(),
            desc=f"epoch {epoch + 1}/{tc.epochs}",
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
            disable=tqdm_disable(tc.progress and self.info.is_main),
        )
        pending: tuple[int, torch.Tensor] | None = None
        t0 = time.perf_counter()
        steps = self._steps_in_epoch()
        for step, batch in self._batches(epoch):
            if tc.schedule.per_step:
                set_lr(self.optimizer, lr_at_epoch(tc, epoch + step / max(steps, 1)))
            images, labels = batch_to_device(batch, self.device, tc.channels_last)
            extra = batch_extras(batch, self.device)
            with autocast_context(self.device, tc.amp):
                logits, losses = self.model(images, labels, **extra)
            if not names:
                names = list(losses)
            total = torch.stack([v.float() for v in losses.values()]).sum()
            n = labels.shape[0]
            with torch.no_grad():
                correct = (logits.argmax(dim=1) == labels).sum().float()
                stats = torch.stack([total.detach() * n, *(v.detach().float() * n for v in losses.values())])
                stats = torch.cat([stats, correct.reshape(1), stats.new_tensor([n])])
                if self.info.enabled:
                    torch.distributed.all_reduce(stats)  # every rank sees the same sums: same NaN decision
            self.optimizer.zero_grad(set_to_none=True)
            self._backward_and_step(total)
            # read the previous step's numbers now: the device has already queued this step's work
            if pending is not None:
                self._consume(pending, epoch, names, meter, bar)
            pending = (step, stats)
        if pending is not None:
            self._consume(pending, epoch, names, meter, bar)
        bar.close()
        seconds = time.perf_counter() - t0
        if meter.count == 0:
            raise RuntimeError("the training loader produced no batch (dataset smaller than one batch?)")
        out = {"train_loss": meter.mean("loss")}
        out.update({name: meter.mean(name) for name in names})
        out["train_top1"] = 100.0 * meter.mean("correct")
        out["train_images"] = meter.count
        return out, seconds

    def _backward_and_step(self, total: torch.Tensor) -> None:
        clip = self.cfg.train.grad_clip
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            if clip is not None:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.trainable, clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            return
        total.backward()
        if clip is not None:
            nn.utils.clip_grad_norm_(self.trainable, clip)
        self.optimizer.step()

    def _consume(
        self, pending: tuple[int, torch.Tensor], epoch: int, names: list[str], meter: SumMeter, bar: tqdm
    ) -> None:
        step, stats = pending
        values = stats.tolist()
        n = values[-1]
        if not all(math.isfinite(v) for v in values[: len(names) + 1]):
            losses = {k: v / n for k, v in zip(["loss", *names], values)}
            done = self.progress.last_epoch
            saved = f"{self.run_dir / LAST} (epoch {done + 1})" if done >= 0 else None
            raise NonFiniteLossError(epoch, step, losses, saved, divergence_hint(self.cfg, losses))
        meter.add({"loss": values[0], **dict(zip(names, values[1:-2])), "correct": values[-2]}, int(n))
        bar.update(1)
        if step % PROGRESS_EVERY == 0 and not bar.disable:
            elapsed = bar.format_dict.get("elapsed", 0) or 1e-9
            bar.set_postfix(
                loss=f"{meter.mean('loss'):.3f}",
                acc=f"{100 * meter.mean('correct'):.1f}",
                img_s=f"{meter.count / elapsed:.0f}",
                refresh=False,
            )

    def _evaluate(self) -> dict[str, float]:
        dist_utils.broadcast_buffers(self.distiller)  # every rank evaluates rank 0's BN statistics
        self.distiller.eval()
        tc = self.cfg.train
        return evaluate(
            self.distiller.forward_test,
            self.test_loader,
            self.device,
            tc.amp,
            tc.channels_last,
            progress=tc.progress and self.info.is_main,
        )

    # ---------------------------------------------------------------------------------------- summary
    def _finish(self, status: str, error: str | None = None) -> dict[str, Any]:
        summary = run_summary(
            self.cfg,
            self.progress,
            status,
            parameters=sum(p.numel() for p in self.distiller.student.parameters()),
            extra_parameters=int(self.distiller.extra_parameters()),
            device=str(self.device),
            world_size=self.info.world_size,
            run_dir=str(self.run_dir),
            **({"error": error} if error is not None else {}),
        )
        if self.logger is not None:
            self.logger.write_summary(summary)
            self.logger.close()
        return summary
