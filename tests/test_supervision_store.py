"""Supervision artefacts: safetensors round trip with provenance, refusal of mismatches, the fit cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from letkd.supervision.codebook import Codebook
from letkd.supervision.store import (
    ArtifactCache,
    ArtifactMismatchError,
    CorruptArtifactError,
    cache_key,
    load_artifact,
    read_metadata,
    save_artifact,
)
from letkd.supervision.subclass import SubclassCodebook

META = {"teacher": "abc123", "tap": "layer3", "pool2x2": False, "dataset": "cifar100", "num_templates": 5}


def _subclass() -> SubclassCodebook:
    scores = torch.rand(6, 6)
    return SubclassCodebook(
        torch.randn(4, 2), torch.randn(4), torch.randn(6, 2), scores / scores.sum(1, True), 3
    )


def test_codebook_round_trip(tmp_path):
    codebook = Codebook(torch.randn(5, 3), temperature=2.0, cluster_sizes=np.array([3, 0, 4, 1, 2]))
    path = save_artifact(codebook, tmp_path / "cb.safetensors", META)
    loaded, meta = load_artifact(path, expect={"tap": "layer3", "num_templates": 5})
    assert isinstance(loaded, Codebook) and meta["kind"] == "codebook"
    assert {k: meta[k] for k in META} == META
    for name, tensor in codebook.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    assert loaded.temperature == 1.0  # τ is a run-time setting, not stored
    feats = torch.randn(2, 3, 2, 2)
    torch.testing.assert_close(loaded.targets(feats), Codebook(codebook.centers).targets(feats))
    assert [p.name for p in tmp_path.iterdir()] == ["cb.safetensors"]  # no temporary file left


def test_subclass_round_trip(tmp_path):
    module = _subclass()
    path = save_artifact(module, tmp_path / "sub.safetensors", {"lda_components": 2})
    loaded, meta = load_artifact(path)
    assert isinstance(loaded, SubclassCodebook) and loaded.num_classes == 3 and meta["num_classes"] == 3
    feats, labels = torch.randn(2, 4, 3, 3), torch.tensor([0, 2])
    torch.testing.assert_close(loaded.targets(feats, labels), module.targets(feats, labels))


def test_mismatch_lists_every_differing_field(tmp_path):
    path = save_artifact(Codebook(torch.randn(5, 3)), tmp_path / "cb.safetensors", META)
    with pytest.raises(ArtifactMismatchError) as err:
        load_artifact(path, expect={"teacher": "other", "tap": "layer3", "pool2x2": True, "seed": 1})
    text = str(err.value)
    assert "teacher: stored 'abc123', expected 'other'" in text
    assert "pool2x2: stored False, expected True" in text
    assert "seed: not stored" in text
    assert "tap:" not in text  # the matching field is not listed
    assert "\n" not in text and "move it out of the cache" in text  # one line, saying what to do


def test_rejects_foreign_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CorruptArtifactError, match="not a letkd supervision artefact"):
        read_metadata(tmp_path / "other.safetensors")
    with pytest.raises(TypeError):
        save_artifact(torch.nn.Linear(2, 2), tmp_path / "x.safetensors", {})


def test_cache_key_is_canonical():
    a = cache_key({"tap": "layer3", "k": 4096, "grid": (8, 8)})
    assert a == cache_key({"grid": [8, 8], "k": 4096, "tap": "layer3"})
    assert a != cache_key({"tap": "layer3", "k": 4095, "grid": (8, 8)})
    assert len(a) == 64


def test_get_or_fit_fits_once(tmp_path):
    calls = []

    def fit():
        calls.append(1)
        return Codebook(torch.randn(5, 3), cluster_sizes=np.arange(5)), {"num_rows": 10}

    cache = ArtifactCache(tmp_path)
    first = cache.get_or_fit("codebook", META, fit)
    second = ArtifactCache(tmp_path).get_or_fit("codebook", META, fit)
    assert len(calls) == 1
    assert not first.cached and second.cached and first.path == second.path
    torch.testing.assert_close(second.module.centers, first.module.centers)
    assert second.meta["num_rows"] == 10 and "versions" in second.meta and "fit_seconds" in second.meta
    third = cache.get_or_fit("codebook", {**META, "num_templates": 6}, fit)
    assert len(calls) == 2 and third.path != first.path


def test_checksum_is_stored_and_verified(tmp_path):
    path = save_artifact(Codebook(torch.randn(5, 3)), tmp_path / "cb.safetensors", META)
    assert len(read_metadata(path)["data_sha256"]) == 64
    data = bytearray(path.read_bytes())
    data[-4:] = b"\x00\x00\xc0\x7f"  # the last float of the data becomes NaN; the header is intact
    path.write_bytes(bytes(data))
    assert read_metadata(path)["tap"] == "layer3"
    with pytest.raises(CorruptArtifactError, match="fails its data checksum"):
        load_artifact(path)


def test_artefact_without_checksum_still_loads(tmp_path):
    """Files written before the checksum existed load unchecked (backward compatible)."""
    import json

    from safetensors.torch import save_file

    centers = torch.randn(4, 3)
    header = {**META, "kind": "codebook", "format_version": 1}
    save_file(
        {"centers": centers, "cluster_sizes": torch.zeros(4, dtype=torch.int64)},
        str(tmp_path / "old.safetensors"),
        metadata={"letkd": json.dumps(header)},
    )
    module, meta = load_artifact(tmp_path / "old.safetensors", expect={"tap": "layer3"})
    assert "data_sha256" not in meta
    torch.testing.assert_close(module.centers, centers)


def test_cache_moves_a_damaged_entry_aside_and_refits(tmp_path, capsys):
    cache = ArtifactCache(tmp_path)
    first = cache.get_or_fit("codebook", META, lambda: Codebook(torch.randn(5, 3)))
    first.path.write_bytes(first.path.read_bytes()[:-10])
    refit = cache.get_or_fit("codebook", META, lambda: Codebook(torch.ones(5, 3)))
    assert not refit.cached and torch.equal(refit.module.centers, torch.ones(5, 3))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: damaged cached artefact")
    moved = list(tmp_path.glob("codebook-*.safetensors.corrupt-*"))
    assert len(moved) == 1 and str(moved[0]) in err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.path.name, moved[0].name])
