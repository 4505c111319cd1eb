"""The second workspace layer of the bad-input suite: one finished run of each kind the probe table uses
(``runs/letkd2``, ``runs/quest``, ``runs/kd``, ``runs/letkd1``, ``runs/simkd``; distilled in seconds from the
shared untrained teacher ``files/teacher.pt``, supervision cached in ``runs/cache``), copies of the letKD-2
run with a hand-edited ``config.yaml``, crafted configs (alias bombs, over-size files, typos) and report
folders with damaged summaries. Built once per session on top of :func:`bad_inputs.conftest.workspace`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from bad_inputs.cases import TEACHER
from bad_inputs.conftest import FAST, ROOT

BASE = {
    "letkd2": "letkd2.yaml",
    "quest": "quest.yaml",
    "kd": "kd.yaml",
    "letkd1": "letkd1.yaml",
    "simkd": "simkd.yaml",
}
#: the settings of every base run: the shared teacher, a fast digits run, its own supervision cache
BASE_OVERRIDES = [*TEACHER.split(), *FAST, "supervision.cache_dir=runs/cache"]
#: hand edits of the letKD-2 run's config.yaml (what a user may do before `letkd inspect`)
EDITS = {
    "ed_model": ("model", "name", "resnet20"),
    "ed_K": ("method.params.layers.1", "num_templates", 64),
    "ed_method": ("method", "name", "quest"),
    "ed_cache": ("supervision", "cache_dir", "empty_cache"),
    "ed_tap": ("method.params.layers.0", "student_tap", "layer2"),
    "ed_dataset": ("data", "name", "fashion_mnist"),
    "ed_nolayers": ("method.params", "layers", []),
}
BOMB = "\n".join(
    [
        "zz:",
        '  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
        *(f"  {b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")),
    ]
)


def _edit(config: Path, section: str, key: str, value) -> None:
    data = yaml.safe_load(config.read_text())
    node = data
    for part in section.split("."):
        node = node[int(part)] if part.isdigit() else node[part]
    node[key] = value
    config.write_text(yaml.safe_dump(data, sort_keys=False))


def _indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def _configs(ws: Path) -> None:
    cfg = ws / "cfg"
    cfg.mkdir()
    vanilla = (ROOT / "configs" / "digits" / "vanilla.yaml").read_text()
    teacher = (ROOT / "configs" / "digits" / "teacher.yaml").read_text()
    (cfg / "bomb_topkey.yaml").write_text(vanilla + "\nlol:\n" + _indent(BOMB, 2) + "\n")
    (cfg / "bomb_kwargs.yaml").write_text(
        vanilla.replace("  name: resnet8\n", "  name: resnet8\n  kwargs:\n" + _indent(BOMB, 4) + "\n")
    )
    (cfg / "bomb_params.yaml").write_text(
        vanilla.replace("  name: vanilla\n", "  name: vanilla\n  params:\n" + _indent(BOMB, 4) + "\n")
    )
    (cfg / "bomb_typed.yaml").write_text(
        vanilla.replace("  batch_size: 32\n", "  batch_size:\n" + _indent(BOMB, 4) + "\n")
    )
    (cfg / "teacher_bomb.yaml").write_text(
        teacher.replace("  name: resnet20\n", "  name: resnet20\n  kwargs:\n" + _indent(BOMB, 4) + "\n")
    )
    (cfg / "big_comment.yaml").write_text(vanilla + ("# " + "x" * 98 + "\n") * 15_000)  # 1.5 MB of comments
    (cfg / "big_list.yaml").write_text(vanilla + "junk:\n" + "- 1\n" * 400_000)
    (cfg / "topkey.yaml").write_text("foo: 1\nbar: {x: 2}\n" + vanilla)
    shutil.copy(ROOT / "configs" / "digits" / "kd.yaml", cfg / "kd_T=4.yaml")
    (cfg / "typo_model.yaml").write_text(vanilla.replace("name: resnet8", "name: resnt8"))


def _reports(ws: Path) -> None:
    junk = ws / "reports" / "junk"
    for name, field, value in (
        ("huge", "best_top1", 1e300),
        ("negative", "last_top1", -5),
        ("text", "best_top1", "abc"),
    ):
        shutil.copytree(ws / "runs" / "done", junk / name)
        summary = json.loads((junk / name / "summary.json").read_text())
        summary[field] = value
        (junk / name / "summary.json").write_text(json.dumps(summary))
    shutil.copytree(ws / "runs" / "done", junk / "good")
    for name in ("good", "writing"):
        shutil.copytree(ws / "runs" / "done", ws / "reports" / "live" / name)


@pytest.fixture(scope="session")
def probe_workspace(workspace: Path) -> Path:
    """:func:`workspace` plus the base runs, edited copies, crafted configs and report folders."""
    from letkd.cli import main

    old = os.getcwd()
    os.chdir(workspace)
    try:
        for name, config in BASE.items():
            argv = ["run", f"configs/digits/{config}", *BASE_OVERRIDES, "--out", f"runs/{name}"]
            assert main(argv) == 0, f"base run {name} failed"
    finally:
        os.chdir(old)
    for name, (section, key, value) in EDITS.items():
        shutil.copytree(workspace / "runs" / "letkd2", workspace / "runs" / name)
        _edit(workspace / "runs" / name / "config.yaml", section, key, value)
    shutil.copytree(workspace / "runs" / "letkd2", workspace / "runs" / "ed_junk")
    (workspace / "runs" / "ed_junk" / "config.yaml").write_text("{{{ not yaml\n")
    _configs(workspace)
    _reports(workspace)
    return workspace
