"""Published teachers by name (``crd:resnet56``): fetched from a local HTTP server, verified, checked."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from letkd.cli import main
from letkd.config import ConfigError, load_config
from letkd.data.download import DownloadError
from letkd.models import create_model
from letkd.models import published as pub
from letkd.models.published import ArchiveSource, FileSource, PublishedTeacher, PublishedTeacherError
from local_http import dead_url, serve

ROOT = Path(__file__).resolve().parents[1]
CKPT = "ckpt_epoch_240.pth"


def repdistiller_file(arch: str, seed: int = 0) -> tuple[bytes, dict[str, torch.Tensor]]:
    """A teacher file as RepDistiller's train_teacher.py writes it (legacy serialisation, tensor accuracy)."""
    torch.manual_seed(seed)
    model = create_model(arch, 100)
    state = model.state_dict()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9).state_dict()
    buf = io.BytesIO()
    ckpt = {"epoch": 240, "model": state, "accuracy": torch.tensor(72.34), "optimizer": optimizer}
    torch.save(ckpt, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue(), state


def _tar(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture()
def server():
    with serve() as files:
        yield files


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "teachers"
    monkeypatch.setenv(pub.CACHE_ENV, str(folder))
    monkeypatch.delenv(pub.MIRROR_ENV, raising=False)
    return folder


def _files(folder: Path) -> list[str]:
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix != ".lock"]
    return sorted(str(p.relative_to(folder)) for p in files)


def _same_weights(path: Path, state: dict[str, torch.Tensor], arch: str) -> bool:
    model = create_model(arch, 100)
    from letkd.models import load_weights

    meta = load_weights(model, path)
    return meta["accuracy"] == pytest.approx(72.34) and all(
        torch.equal(v, state[k]) for k, v in model.state_dict().items()
    )


def test_a_published_file_is_fetched_verified_and_cached(server, cache, monkeypatch):
    data, state = repdistiller_file("resnet56")
    server.files[f"/repo/resnet56_vanilla/{CKPT}"] = data
    monkeypatch.setattr(pub, "SOURCES", [FileSource(server.url("/repo/{folder}/" + CKPT))])
    path = pub.resolve_teacher_checkpoint("crd:resnet56", arch="resnet56")
    assert path == cache / "resnet56_vanilla" / CKPT and _same_weights(path, state, "resnet56")
    assert _files(cache) == [f"resnet56_vanilla/{CKPT}"]  # no temporary file stays
    assert pub.resolve_teacher_checkpoint("crd:resnet56") == path
    assert server.requests[f"/repo/resnet56_vanilla/{CKPT}"] == 1  # cached: not fetched again


def test_the_release_archive_installs_every_teacher_it_holds(server, cache, monkeypatch):
    monkeypatch.setattr(pub, "TEACHERS", {a: PublishedTeacher(a, 70.0) for a in ("resnet56", "resnet8")})
    files = {f"cifar_teachers/{a}_vanilla/{CKPT}": repdistiller_file(a)[0] for a in ("resnet56", "resnet8")}
    server.files["/release/cifar_teachers.tar"] = _tar(files)
    source = ArchiveSource(server.url("/release/cifar_teachers.tar"), "cifar_teachers.tar", CKPT)
    monkeypatch.setattr(pub, "SOURCES", [source])
    path = pub.resolve_teacher_checkpoint("crd:resnet8", cache_dir=cache)
    assert path == cache / "resnet8_vanilla" / CKPT
    assert _files(cache) == [f"resnet56_vanilla/{CKPT}", f"resnet8_vanilla/{CKPT}"]  # archive deleted
    assert pub.resolve_teacher_checkpoint("crd:resnet56", cache_dir=cache).is_file()
    assert server.requests["/release/cifar_teachers.tar"] == 1


def test_the_next_source_is_tried_and_offline_lists_every_url(server, cache, monkeypatch):
    data, state = repdistiller_file("resnet56")
    server.files[f"/mirror/resnet56_vanilla/{CKPT}"] = data
    dead = dead_url("/repo/{folder}/" + CKPT)
    monkeypatch.setattr(pub, "SOURCES", [FileSource(dead)])
    monkeypatch.setenv(pub.MIRROR_ENV, server.url("/mirror"))  # tried first
    assert _same_weights(pub.resolve_teacher_checkpoint("crd:resnet56"), state, "resnet56")

    monkeypatch.delenv(pub.MIRROR_ENV)
    archive = ArchiveSource(dead_url("/cifar_teachers.tar"), "cifar_teachers.tar", CKPT)
    monkeypatch.setattr(pub, "SOURCES", [archive, FileSource(dead)])
    with pytest.raises(DownloadError) as err:
        pub.resolve_teacher_checkpoint("crd:wrn_40_2")
    assert isinstance(err.value, pub.TeacherFetchError)
    head, *items, advice = str(err.value).splitlines()  # a short list: one line per source, advice once
    assert head == "cannot fetch published teacher crd:wrn_40_2 from any source:"
    assert items[0].startswith(f"  - {archive.url_}: no connection")
    assert items[1].startswith(f"  - {dead.format(folder='wrn_40_2_vanilla')}: no connection")
    assert str(cache / "wrn_40_2_vanilla" / CKPT) in advice and str(err.value).count("Without a network") == 1
    assert _files(cache) == [f"resnet56_vanilla/{CKPT}"]
    assert [p.name for p in cache.iterdir()] == ["resnet56_vanilla"]  # no empty folder for wrn_40_2
    with pytest.raises(PublishedTeacherError, match=f"not in the cache: put .* at {cache}"):
        pub.resolve_teacher_checkpoint("crd:wrn_40_2", download=False)


def test_a_wrong_or_truncated_file_is_refused_and_a_rerun_recovers(server, cache, monkeypatch):
    monkeypatch.setenv("LETKD_DOWNLOAD_RETRIES", "0")
    route = f"/repo/resnet56_vanilla/{CKPT}"
    monkeypatch.setattr(pub, "SOURCES", [FileSource(server.url("/repo/{folder}/" + CKPT))])
    server.files[route] = repdistiller_file("resnet20")[0]  # another architecture under the name
    with pytest.raises(DownloadError, match="(?s)no usable resnet56.*missing keys"):
        pub.resolve_teacher_checkpoint("crd:resnet56")
    assert _files(cache) == []
    server.files[route], state = repdistiller_file("resnet56")
    server.cut.add(route)  # the transfer stops halfway
    with pytest.raises(DownloadError, match="the transfer stopped after"):
        pub.resolve_teacher_checkpoint("crd:resnet56")
    assert _files(cache) == []
    assert _same_weights(pub.resolve_teacher_checkpoint("crd:resnet56"), state, "resnet56")


def test_a_pinned_sha256_is_enforced(server, cache, monkeypatch):
    monkeypatch.setitem(pub.TEACHERS, "resnet56", PublishedTeacher("resnet56", 72.34, sha256="0" * 64))
    server.files[f"/repo/resnet56_vanilla/{CKPT}"] = repdistiller_file("resnet56")[0]
    monkeypatch.setattr(pub, "SOURCES", [FileSource(server.url("/repo/{folder}/" + CKPT))])
    with pytest.raises(DownloadError, match="sha256 [0-9a-f]{64}, expected 0{64}"):
        pub.resolve_teacher_checkpoint("crd:resnet56")
    assert _files(cache) == []


def test_names_the_table_and_cache_location(tmp_path, monkeypatch):
    with pytest.raises(PublishedTeacherError, match="unknown published teacher 'crd:resnet57'; known: crd:"):
        pub.resolve_teacher_checkpoint("crd:resnet57")
    with pytest.raises(PublishedTeacherError, match="is a resnet56, but teacher.name is 'resnet110'"):
        pub.resolve_teacher_checkpoint("crd:resnet56", arch="resnet110")
    with pytest.raises(PublishedTeacherError, match="set teacher.name=resnet56 or pick one of crd:"):
        pub.resolve_teacher_checkpoint("crd:resnet56", arch="resnet20")  # no crd:resnet20 to suggest
    assert {t.top1 for t in pub.TEACHERS.values()} == {75.61, 72.34, 74.31, 79.42, 79.34, 74.64}
    assert all(t.num_classes == 100 for t in pub.TEACHERS.values())
    monkeypatch.delenv(pub.CACHE_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert pub.teacher_cache_dir() == tmp_path / "th" / "hub" / "checkpoints" / "letkd"
    monkeypatch.setenv(pub.CACHE_ENV, str(tmp_path / "mine"))
    assert pub.teacher_cache_dir() == tmp_path / "mine"


def test_measured_accuracy_must_match_the_published_figure():
    assert pub.check_published_accuracy("crd:resnet56", 72.34 + 0.19, 10_000)
    assert pub.check_published_accuracy("crd:wrn_40_2", 75.61 - 0.2, None)
    with pytest.raises(PublishedTeacherError, match=r"72\.10% but the published figure is 72\.34% \(-0\.24"):
        pub.check_published_accuracy("crd:resnet56", 72.10, 10_000)
    assert not pub.check_published_accuracy("crd:resnet56", 10.0, 500)  # a subset: nothing to compare
    assert not pub.check_published_accuracy("runs/mine.pt", 10.0, 10_000)
    assert not pub.check_published_accuracy(None, 10.0)


def _kd_config(tmp_path):
    cfg = load_config(ROOT / "configs/cifar100/resnet56_resnet20/kd.yaml")
    cfg.supervision.cache_dir = str(tmp_path / "artifacts")
    cfg.train.device = "cpu"
    return cfg


def test_run_pipeline_resolves_and_checks_a_crd_teacher(server, cache, tmp_path, monkeypatch):
    import letkd.pipeline as pipeline

    server.files[f"/repo/resnet56_vanilla/{CKPT}"] = repdistiller_file("resnet56")[0]
    monkeypatch.setattr(pub, "SOURCES", [FileSource(server.url("/repo/{folder}/" + CKPT))])
    measured = {"top1": 72.30, "top5": 90.0, "loss": 1.0, "count": 10_000}  # stub for the real evaluation
    monkeypatch.setattr(pipeline, "teacher_accuracy", lambda *a, **k: dict(measured))

    class Distilling(Exception):
        """Raised where the run goes on past the teacher stage (no CIFAR-100 here to train on)."""

    reached = []

    def datasets(cfg):
        reached.append(cfg)
        raise Distilling

    monkeypatch.setattr(pipeline, "build_datasets", datasets)
    monkeypatch.setattr("letkd.preflight._find_dataset", lambda cfg: None)  # no CIFAR-100 here
    monkeypatch.setattr(pipeline, "check_subsets", lambda cfg: None)
    cfg = _kd_config(tmp_path)
    assert cfg.teacher.checkpoint == "crd:resnet56"
    with pytest.raises(Distilling):
        pipeline.run_pipeline(cfg, run_dir=tmp_path / "run1", device="cpu")
    assert len(reached) == 1
    measured["top1"] = 71.0
    with pytest.raises(PublishedTeacherError, match="more than 0.2 off"):
        pipeline.run_pipeline(cfg, run_dir=tmp_path / "run2", device="cpu")
    assert len(reached) == 1  # refused before distilling


def _cifar100_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", 2), ("test", 3)):
        batch = {b"fine_labels": [1] * n, b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))


def test_eval_takes_a_crd_name_and_checks_the_figure(server, cache, tmp_path, monkeypatch, capsys):
    server.files[f"/repo/resnet56_vanilla/{CKPT}"] = repdistiller_file("resnet56")[0]
    monkeypatch.setattr(pub, "SOURCES", [FileSource(server.url("/repo/{folder}/" + CKPT))])
    _cifar100_folder(tmp_path / "data")
    args = ["eval", "--checkpoint", "crd:resnet56", "--data", "cifar100", "--root", str(tmp_path / "data")]
    args += ["--workers", "0", "--device", "cpu", "--json"]
    assert main(args) == 0  # 3 test images: evaluated, nothing to compare against
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["model"] == "resnet56" and out["images"] == 3 and "matches_published" not in out
    whole = {"top1": 70.0, "top5": 90.0, "loss": 1.0, "count": 10_000}  # stub: the full test set
    monkeypatch.setattr("letkd.engine.evaluation.evaluate", lambda *a, **k: whole)
    assert main(args) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["matches_published"] is False
    assert "published figure is 72.34%" in captured.err
    whole["top1"] = 72.4
    assert main(args) == 0 and json.loads(capsys.readouterr().out)["matches_published"] is True
    assert isinstance(PublishedTeacherError("x"), ConfigError)
