"""Training engine: the trainer, LR schedules, checkpoints, metrics, loaders and DDP helpers."""

from letkd.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from letkd.engine.distributed import DistInfo, init_distributed, select_device
from letkd.engine.loaders import auto_num_workers, build_test_loader, build_train_loader
from letkd.engine.metrics import SumMeter, topk_correct
from letkd.engine.rundir import RunLogger, default_run_dir
from letkd.engine.schedule import lr_at_epoch, set_lr
from letkd.engine.trainer import NonFiniteLossError, Trainer, build_optimizer, evaluate

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
