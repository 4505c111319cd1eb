"""Docs are code: every page of README.md and docs/, and every sub-command's ``--help``, checked by the rules
of :mod:`docs_check` (also written down in docs/architecture.md, "Docs are tested")."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import docs_check  # noqa: E402
import docs_pages  # noqa: E402

ROOT = docs_check.ROOT
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.fixture
def scratch(tmp_path, monkeypatch, restore_plugins):
    """An empty working directory with the repository's configs, as a reader's checkout would have."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page(page, scratch):
    problems = docs_pages.check_page(page.read_text(), scratch, page.parent)
    assert not problems, f"{page.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def test_help_examples(scratch, monkeypatch):
    assert not docs_pages.help_epilog_problems()
    broken = "examples:\n  letkd run configs/fashion_mnist/letkd1.yaml seed=1\n"
    monkeypatch.setattr("letkd.commands.run.EPILOG", broken)
    assert any("configs/fashion_mnist/letkd1.yaml" in p for p in docs_pages.help_epilog_problems())


def test_config_comments_state_the_templates_they_use():
    assert not docs_pages.config_comment_problems()


BROKEN = [
    # (a Markdown line or block, a word of the problem it must raise)
    ("```bash\nletkd demo --quick\n```", "--quick"),
    ("```bash\nletkd run configs/fashion_mnist/letkd1.yaml seed=1\n```", "configs/fashion_mnist/letkd1.yaml"),
    ("```bash\nletkd train configs/digits/resnet8.yaml train.epoch=1\n```", "train.epoch"),
    ("```bash\nletkd run CONFIG trian.epochs=1\n```", "trian.epochs"),
    ("```bash\nletkd run configs/digits/kd.yaml method.params.temprature=2\n```", "temprature"),
    ("```bash\nletkd sweep configs/digits/*.yaml --seed 3\n```", "--seed"),
    ("```bash\nletkd frobnicate x\n```", "frobnicate"),
    ("```bash\nmake quick-demo\n```", "quick-demo"),
    ("```bash\npython -m benchmarks.run_all speedz\n```", "speedz"),
    ("```python\nfrom letkd.engine import train_from_config\n```", "train_from_config"),
    (
        "```python\nfrom letkd.methods import MethodContext\nMethodContext(num_classes=10, epochs=240)\n```",
        "epochs",
    ),
    (
        "<!-- not run: needs a config -->\n```python\nfrom letkd.pipeline import train_from_config\n"
        "train_from_config(cfg, 'runs/kd', distiller_factory=None)\n```",
        "distiller_factory",
    ),
    (
        "<!-- not run: needs data -->\n```python\nimport letkd.models\nletkd.models.make_model('x')\n```",
        "make_model",
    ),
    ("```python\nraise RuntimeError('boom')\n```", "boom"),
    ("```yaml\nmethod:\n  name: letkd\n  params:\n    layers:\n      - kind: codebok\n```", "codebok"),
    ("```yaml\ntrain:\n  epoch: 3\n```", "train.epoch"),
    ("The stages are in `letkd.commands.demo.DEMO_STAGES`.", "DEMO_STAGES"),
    ("An unknown tap raises `UnknownTapPathError`.", "UnknownTapPathError"),
    ("Its teacher is configs/fashion_mnist/teacher_wrn_40_2.yaml.", "teacher_wrn_40_2"),
    ("See `configs/cifar100/<pair>/letkd3.yaml`.", "letkd3"),
    ("Run `letkd eval --quick`.", "--quick"),
    ("See [the layers](layer.md).", "layer.md"),
]


@pytest.mark.parametrize("text,word", BROKEN, ids=[w for _, w in BROKEN])
def test_a_broken_line_is_found(text, word, scratch):
    problems = docs_pages.check_page(text, scratch)
    assert any(word in p for p in problems), problems


def test_good_lines_pass(scratch):
    text = (
        "```bash\nletkd run configs/digits/kd.yaml seed=1 train.epochs=3 --out runs/x\n"
        "letkd sweep configs/cifar100/*/letkd2.yaml --seeds 5 --out sweeps/t1 train.progress=false\n"
        "letkd run CONFIG teacher.compile=true\nletkd run --help\nmake test\n```\n"
        "```python\nfrom letkd.models import create_model\n"
        "net = create_model('resnet8', num_classes=10)\n```\n"
        "See `letkd.models.create_model`, `UnknownModelError`, configs/digits/<method>.yaml and "
        "[data](data.md), or `letkd train CONFIG [key=value ...] [--out DIR] [--resume]`.\n"
    )
    assert docs_pages.check_page(text, scratch) == []
    assert os.getcwd() == str(scratch)


def test_licence_and_citation_agree_with_the_package():
    import tomllib
    import yaml

    import letkd

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["license"] == project["license"] and str(cff["version"]) == letkd.__version__
    paper = cff["preferred-citation"]
    assert paper["title"] == "Knowledge Distillation Layer that Lets the Student Decide"
    assert paper["year"] == 2023
    readme = (ROOT / "README.md").read_text()
    assert paper["url"] in readme and paper["repository-code"] in readme
