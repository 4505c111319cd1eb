"""``letkd probe``'s linear classifier: features separable by construction are classified (nearly) perfectly,
random features at chance; a run folder it cannot probe is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

from letkd.cli import main as cli_main
from letkd.probe import default_tap, lda_accuracy

CLASSES, DIM = 10, 32


def _features(separable: bool, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % CLASSES
    x = rng.normal(size=(n, DIM))
    if separable:  # each class around its own centre, far apart compared with the noise
        centres = np.random.default_rng(99).normal(scale=10.0, size=(CLASSES, DIM))
        x += centres[labels]
    return x, labels


def test_separable_features_give_about_100_percent_and_random_ones_chance():
    train, test = _features(True, 600, 0), _features(True, 400, 1)
    train_acc, test_acc = lda_accuracy(*train, *test)
    assert test_acc > 99.0 and train_acc > 99.0
    train, test = _features(False, 600, 0), _features(False, 2000, 1)
    _, test_acc = lda_accuracy(*train, *test)
    assert abs(test_acc - 100.0 / CLASSES) < 5.0  # chance is 10 %


def test_default_tap_is_the_runs_intermediate_kd_layer():
    subclass = {"kind": "subclass", "student_tap": "layer2.1"}
    codebook = {"kind": "codebook", "student_tap": "penultimate"}
    assert (
        default_tap({"method": {"name": "letkd", "params": {"layers": [subclass, codebook]}}}) == "layer2.1"
    )
    composed = {"parts": [{"method": "fitnet"}, {"method": "letkd", "params": {"layers": [subclass]}}]}
    assert default_tap({"method": {"name": "compose", "params": composed}}) == "layer2.1"
    assert default_tap({"method": {"name": "kd"}}) == "intermediate"


def test_folders_that_cannot_be_probed_are_refused(tmp_path, capsys):
    assert cli_main(["probe", str(tmp_path)]) == 1
    assert "no run folders (with config.yaml)" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert cli_main(["probe", str(tmp_path)]) == 1
    assert f"no best.pt in {tmp_path}" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--batch-size", "0"], ["--train-subset", "0"]])
def test_bad_options_are_refused(tmp_path, capsys, option):
    assert cli_main(["probe", str(tmp_path), *option]) == 1
    assert "must be at least 1" in capsys.readouterr().err
