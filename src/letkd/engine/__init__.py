"""Training engine: the loop, evaluation, optimizer and LR schedule, train state, loaders, run folder, DDP."""

from letkd.checkpoints import CheckpointError, save_checkpoint
from letkd.device import select_device
from letkd.engine.distributed import DistInfo, init_distributed
from letkd.engine.evaluation import evaluate
from letkd.engine.loaders import auto_num_workers, build_test_loader, build_train_loader
from letkd.engine.metrics import SumMeter, topk_correct
from letkd.engine.optim import build_optimizer, lr_at_epoch, set_lr
from letkd.engine.rundir import RunLogger, default_run_dir
from letkd.engine.state import load_checkpoint
from letkd.engine.trainer import NonFiniteLossError, Trainer

__all__ = [
    "CheckpointError",
    "DistInfo",
    "NonFiniteLossError",
    "RunLogger",
    "SumMeter",
    "Trainer",
    "auto_num_workers",
    "build_optimizer",
    "build_test_loader",
    "build_train_loader",
    "default_run_dir",
    "evaluate",
    "init_distributed",
    "load_checkpoint",
    "lr_at_epoch",
    "save_checkpoint",
    "select_device",
    "set_lr",
    "topk_correct",
]
