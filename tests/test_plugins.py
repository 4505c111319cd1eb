"""Your own method, model and dataset with `letkd run`/`train`, without editing letkd: the files and commands
of docs/extending.md, run from a scratch folder (with a one-step budget and, for the method, a random
teacher instead of training one), by ``imports:`` and by entry points of an installed distribution."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import torch

from letkd.cli import main
from letkd.config import ConfigError, load_config
from letkd.data import dataset_info
from letkd.methods import get_method
from letkd.models import create_model, save_weights
from letkd.plugins import PluginError

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "extending.md").read_text()
BUDGET = ["train.epochs=1", "data.train_subset=64", "data.test_subset=40", "train.progress=false",
          "train.tensorboard=false"]  # fmt: skip


def doc_files() -> dict[str, str]:
    """The Python files docs/extending.md tells the reader to write (blocks starting with `# name.py`)."""
    return dict(re.findall(r"```python\n# (\S+\.py)\n(.*?)```", PAGE, re.S))


def doc_commands() -> list[list[str]]:
    """The `letkd ...` commands of docs/extending.md's bash blocks, in order."""
    lines = re.findall(r"```bash\n(letkd .*?)\n```", PAGE)
    return [shlex.split(line)[1:] for line in lines]


@pytest.fixture
def scratch(tmp_path, monkeypatch, restore_plugins):
    """The reader's folder: the docs' files, the repository's configs, example tensors for the dataset."""
    for name, text in doc_files().items():
        (tmp_path / name).write_text(text)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "my_tensors").mkdir()
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 128), ("test", 40)):
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), generator=g)
        torch.save({"images": images, "labels": labels}, tmp_path / "my_tensors" / f"{split}.pt")
    save_weights(create_model("resnet20", 10), tmp_path / "teacher.pt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def test_the_documented_method_model_and_dataset_run(scratch, capsys):
    method, model, dataset = doc_commands()[:3]
    assert method[:3] == ["run", "configs/digits/kd.yaml", "imports=my_kd"]
    random_teacher = ["teacher.train_config=null", "teacher.checkpoint=teacher.pt"]
    random_teacher += ["teacher.check_accuracy=false"]
    assert main([*method, *BUDGET, *random_teacher, "--out", "out/method"]) == 0
    assert main([*model, *BUDGET, "--out", "out/model"]) == 0
    assert main([*dataset, *BUDGET, "--out", "out/dataset"]) == 0
    assert "run folder: out/dataset" in capsys.readouterr().out
    first = json.loads((scratch / "out/method/metrics.jsonl").read_text().splitlines()[0])
    assert first["loss_kd"] > 0 and _summary(scratch / "out/method")["method"] == "logit_l2"
    assert _summary(scratch / "out/model")["model"] == "tiny_cnn"
    assert _summary(scratch / "out/dataset")["dataset"] == "my_tensors"
    # the run folder's config names its imports: it runs again as it is
    again = load_config(scratch / "out/method/config.yaml")
    assert again.imports == ["my_kd"] and again.method.name == "logit_l2"


def _install(site: Path, entry_points: dict[str, dict[str, str]], name: str = "my_plugins") -> None:
    """What pip writes for an installed distribution with these entry points (a minimal dist-info)."""
    info = site / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = [
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
        for group, eps in entry_points.items()
    ]
    (info / "entry_points.txt").write_text("\n".join(lines))


def test_the_documented_entry_points_make_the_names_available_without_imports(scratch, monkeypatch):
    toml = re.search(r"```toml\n(.*?)```", PAGE, re.S).group(1)
    entry_points = tomllib.loads(toml)["project"]["entry-points"]
    site = scratch / "site"
    site.mkdir()
    for name, text in doc_files().items():
        (site / name).write_text(text)
        (scratch / name).unlink()  # only the installed copy can be found
    _install(site, entry_points)
    monkeypatch.syspath_prepend(str(site))
    assert get_method("logit_l2").method_name == "logit_l2"
    assert create_model("tiny_cnn", 10)(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert dataset_info("my_tensors").num_classes == 10
    args = ["train", "configs/digits/resnet8.yaml", "model.name=tiny_cnn", "data.name=my_tensors",
            "data.root=my_tensors", *BUDGET, "--out", "out/ep"]  # fmt: skip
    assert main(args) == 0


@pytest.mark.parametrize(
    "registry_get, name, group",
    [(get_method, "nope", "letkd.methods"), (create_model, "nope", "letkd.models"),
     (dataset_info, "nope", "letkd.datasets")],
)  # fmt: skip
def test_unknown_names_list_the_known_ones_and_say_how_to_add_one(registry_get, name, group, restore_plugins):
    with pytest.raises(KeyError) as err:
        registry_get(name)
    message = str(err.value)
    assert f"'{name}'" in message and "known" in message and "imports:" in message and group in message


def _load_with(scratch: Path, module: str, text: str):
    (scratch / f"{module}.py").write_text(text)
    return load_config(ROOT / "configs/digits/resnet8.yaml", [f"imports={module}"])


def test_import_failures_are_one_clear_error(scratch, capsys):
    with pytest.raises(PluginError, match=r"imports: no module named 'nope'.*PYTHONPATH"):
        load_config(ROOT / "configs/digits/resnet8.yaml", ["imports=nope"])
    with pytest.raises(PluginError, match=r"imports: broken failed to import: NameError: .*undefined_name"):
        _load_with(scratch, "broken", "undefined_name\n")
    with pytest.raises(PluginError, match=r"imports: needs failed to import: .*no_such_dependency"):
        _load_with(scratch, "needs", "import no_such_dependency\n")
    with pytest.raises(ConfigError, match=r"'my_kd.py' is a file name: name the module instead \('my_kd'\)"):
        load_config(ROOT / "configs/digits/resnet8.yaml", ["imports=[my_kd.py]"])
    with pytest.raises(ConfigError, match=r"'\.\./my_kd' is not a module name"):
        load_config(ROOT / "configs/digits/resnet8.yaml", ["imports=../my_kd"])
    assert main(["train", "configs/digits/resnet8.yaml", "imports=nope"]) == 1
    assert "error: configs/digits/resnet8.yaml: imports: no module named 'nope'" in capsys.readouterr().err


def test_a_name_registered_twice_is_refused(scratch):
    text = (
        "from letkd.methods import register_method\nfrom letkd.methods.vanilla import Vanilla\n\n"
        "@register_method('kd')\nclass MyKD(Vanilla):\n    pass\n"
    )
    twice = r"method 'kd' is registered twice: by letkd\.methods\.kd\.KD and by twice\.MyKD; rename one"
    with pytest.raises(PluginError, match=twice):
        _load_with(scratch, "twice", text)
    assert get_method("kd").__module__ == "letkd.methods.kd"


def test_broken_entry_points_say_which_one(scratch, monkeypatch):
    _install(scratch / "site", {"letkd.methods": {"gone": "no_such_module", "other": "named_else"}})
    (scratch / "site" / "named_else.py").write_text(
        "from letkd.methods import register_method\nfrom letkd.methods.vanilla import Vanilla\n\n"
        "@register_method('different')\nclass Different(Vanilla):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(scratch / "site"))
    with pytest.raises(PluginError, match=r"entry point gone = no_such_module .*my_plugins\) failed to load"):
        get_method("gone")
    with pytest.raises(PluginError, match=r"registered no method named 'other'"):
        get_method("other")
    assert get_method("kd").method_name == "kd"  # names letkd has never look at entry points


def test_sweep_checks_import_every_configs_modules_before_starting(scratch):
    from letkd.sweep import SweepError, build_grid

    with pytest.raises(SweepError, match=r"imports: no module named 'nope'"):
        build_grid(["configs/digits/resnet8.yaml"], [0], scratch / "sweep", ["imports=nope"])
    grid = build_grid(["configs/digits/kd.yaml"], [0], scratch / "sweep",
                      ["imports=my_kd", "method.name=logit_l2", "method.params={}"])  # fmt: skip
    assert len(grid) == 1
