"""ReviewKD, OFD, DIST and the logit-standardized KD / DKD runs beside their published numbers in
``letkd report --layout pairs``."""

from __future__ import annotations

import pytest

from letkd.report import collect_runs, load_paper_results, method_label, paper_tables
from test_report import make_run

PAIR = "cifar100-resnet56_resnet20"
#: (method, params, row in the published table, its RN56→RN20 number)
RUNS = [
    ("reviewkd", {}, "ReviewKD", 71.89),
    ("ofd", {}, "OFD", 70.98),
    ("dist", {}, "DIST", 71.75),
    ("kd", {"logit_stand": True}, "KD+LS", 71.43),
    ("dkd", {"logit_stand": True}, "DKD+LS", 72.32),
    ("kd", {}, "KD", 70.66),
]


def test_logit_standardized_runs_get_labels_of_their_own():
    assert method_label("kd", {"logit_stand": True}) == "kd_ls"
    assert method_label("dkd", {"logit_stand": True, "beta": 2.0}) == "dkd_ls"
    assert method_label("kd", {"logit_stand": False}) == "kd" and method_label("dist", {}) == "dist"


def test_pairs_layout_shows_the_modern_baselines_beside_their_papers(tmp_path):
    for i, (method, params, _, _) in enumerate(RUNS):
        label = method_label(method, params)
        make_run(tmp_path, f"{PAIR}-{label}", 0, [50.0, 60.0 + i], method=method, params=params)
    (table,) = [t for t in paper_tables(collect_runs([tmp_path]), epochs=["best"]) if t.metric == "top1"]
    for i, (_, _, row, published) in enumerate(RUNS):
        cell = table.cell(row, "RN56→RN20")
        assert cell.n == 1 and cell.mean == pytest.approx(60.0 + i), row
        assert cell.paper == published and cell.diff == pytest.approx(60.0 + i - published), row
    # pairs the authors did not report have no number; DIST's README gives a std
    (published,) = [t for t in load_paper_results().tables if (t.dataset, t.metric) == ("cifar100", "top1")]
    assert published.value("OFD", "WRN-40-2→WRN-16-2") == (None, None)
    assert published.value("DIST", "RN32x4→SNV2") == (77.35, 0.25)
