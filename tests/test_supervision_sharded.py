"""`letkd fit` under torchrun: two CPU processes (gloo) share the teacher pass and match one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from letkd.cli import main
from letkd.supervision import load_artifact
from letkd.supervision.extract import RowFile

ROOT = Path(__file__).resolve().parents[1]


def write_config(folder: Path, cache: Path) -> Path:
    cfg = {
        "seed": 3,
        "data": {"name": "digits", "train_subset": 301, "num_workers": 0},  # odd: unequal shards
        "model": {"name": "resnet8"},
        "teacher": {"name": "resnet8"},
        "method": {"name": "letkd", "params": {"layers": [
            {"kind": "subclass", "student_tap": "layer3.0", "teacher_tap": "intermediate",
             "subclasses_per_class": 2, "lda_components": 5},
            {"kind": "codebook", "student_tap": "penultimate", "teacher_tap": "penultimate",
             "num_templates": 8},
        ]}},
        "supervision": {"cache_dir": str(cache), "kmeans_iters": 4, "extract_batch_size": 32,
                        "max_rows": 3000, "rows_per_class": 150},
        "train": {"device": "cpu"},
    }  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_processes_give_the_folders_and_artefacts_of_one(tmp_path, one_thread):
    import faiss

    one, two = tmp_path / "one", tmp_path / "two"
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # as in the processes below (OMP_NUM_THREADS=1)
    try:
        assert main(["fit", str(write_config(one, one / "cache")), "--no-progress"]) == 0
    finally:
        faiss.omp_set_num_threads(threads)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "letkd", "fit", str(write_config(two, two / "cache")), "--no-progress"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("fitted in") == 2  # process 0 alone reports

    folders = sorted(p.name for p in (one / "cache" / "rows").iterdir() if p.is_dir())
    assert folders == sorted(p.name for p in (two / "cache" / "rows").iterdir() if p.is_dir())
    assert len(folders) == 2 and not list((two / "cache" / "rows").glob(".*"))  # no temporaries left
    for name in folders:
        a, b = RowFile.open(one / "cache" / "rows" / name), RowFile.open(two / "cache" / "rows" / name)
        assert a.sampled and a.num_rows < a.total_rows == 301 * 64
        np.testing.assert_array_equal(a.index, b.index)  # the same sample, bit for bit
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_allclose(a.rows.astype(np.float32), b.rows.astype(np.float32), rtol=1e-3, atol=1e-4)
        if a.scatter() is not None:  # sums over other shards: equal up to float64 rounding
            sa, sb = a.scatter(), b.scatter()
            np.testing.assert_array_equal(sa.counts, sb.counts)
            np.testing.assert_allclose(sb.means, sa.means, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(sb.within, sa.within, rtol=1e-10, atol=1e-8)
    artefacts = sorted(p.name for p in (one / "cache").glob("*.safetensors"))
    assert artefacts == sorted(p.name for p in (two / "cache").glob("*.safetensors")) and len(artefacts) == 2
    for name in artefacts:
        (ma, _), (mb, _) = load_artifact(one / "cache" / name), load_artifact(two / "cache" / name)
        for key, tensor in ma.state_dict().items():
            torch.testing.assert_close(mb.state_dict()[key], tensor, rtol=1e-4, atol=1e-5, msg=key)
