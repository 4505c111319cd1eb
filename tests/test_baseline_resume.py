"""CRD through the real trainer: batches carry sample indices and negatives, the memory banks and Z are in
the checkpoint, and a run stopped after one epoch and resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from letkd.config import load_config
from letkd.data.contrast import ContrastSampleDataset
from letkd.engine.state import load_checkpoint
from letkd.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "data.train_subset=64",
    "data.test_subset=32",
    "data.batch_size=16",
    "data.num_workers=0",
    "train.max_steps_per_epoch=2",
    "train.deterministic=true",
    "train.schedule.type=step",
    "train.schedule.milestones=[100]",
    "train.progress=false",
    "train.tensorboard=false",
    "method.name=crd",
    "method.params={nce_k: 8, feat_dim: 16}",
    "teacher.name=resnet8",  # untrained, initialised from the run's seed
    "teacher.check_accuracy=false",
    "teacher.fold_batchnorm=false",
]


def _run(out: Path, epochs: int, resume: bool = False) -> dict:
    cfg = load_config(ROOT / "configs" / "digits" / "resnet8.yaml", [*ARGS, f"train.epochs={epochs}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_pipeline(cfg, out, resume=resume, device="cpu")
    finally:
        torch.set_num_threads(threads)


def _losses(run: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["loss_ce"], r["loss_crd"]) for r in rows]


def test_crd_resume_is_exact_and_banks_are_checkpointed(tmp_path):
    _run(tmp_path / "full", epochs=3)
    _run(tmp_path / "split", epochs=1)
    _run(tmp_path / "split", epochs=3, resume=True)
    assert _losses(tmp_path / "split") == _losses(tmp_path / "full")
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    split = load_checkpoint(tmp_path / "split" / "last.pt")
    assert {"memory.memory_v1", "memory.memory_v2", "memory.z"} <= set(full["distiller"])
    assert (full["distiller"]["memory.z"] > 0).all()
    for key, value in full["distiller"].items():
        assert torch.equal(split["distiller"][key], value), key
    for key, value in full["model"].items():
        assert torch.equal(split["model"][key], value), key


def test_negatives_come_from_other_classes_and_depend_only_on_seed_epoch_index():
    class Labeled(torch.utils.data.Dataset):
        targets = [0, 0, 1, 1, 2, 2]

        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.zeros(1), self.targets[i]

    data = ContrastSampleDataset(Labeled(), num_negatives=50, seed=3)
    _, label, extra = data[2]
    contrast = extra["contrast_index"]
    assert extra["index"] == 2 and contrast[0] == 2 and contrast.shape == (51,)
    assert all(Labeled.targets[int(j)] != label for j in contrast[1:])
    again = ContrastSampleDataset(Labeled(), num_negatives=50, seed=3)[2][2]["contrast_index"]
    assert torch.equal(again, contrast)
    data.set_epoch(1)
    assert not torch.equal(data[2][2]["contrast_index"], contrast)


def test_negatives_are_distinct_when_the_pool_allows_as_repdistiller_draws_them():
    class Labeled(torch.utils.data.Dataset):
        targets = [i % 4 for i in range(400)]  # 300 samples of other classes per sample

        def __len__(self):
            return len(self.targets)

        def __getitem__(self, i):
            return torch.zeros(1), self.targets[i]

    data = ContrastSampleDataset(Labeled(), num_negatives=300, seed=1)
    for i in (0, 7, 399):
        negatives = data[i][2]["contrast_index"][1:].tolist()
        assert len(set(negatives)) == 300  # the whole pool, no sample twice
        assert all(Labeled.targets[j] != Labeled.targets[i] for j in negatives)
    assert len(set(ContrastSampleDataset(Labeled(), 200, seed=1)[5][2]["contrast_index"][1:].tolist())) == 200
    no_targets = torch.utils.data.TensorDataset(torch.zeros(50, 1), torch.zeros(50, dtype=torch.long))
    unlabeled = ContrastSampleDataset(no_targets, 49, seed=1)
    assert sorted(unlabeled[3][2]["contrast_index"][1:].tolist()) == [j for j in range(50) if j != 3]
