"""ImageNet teachers by torchvision weights name (``teacher.checkpoint: torchvision:IMAGENET1K_V1``): names
resolve through torchvision's weights API; files are fetched by it with its hash check (from a local server
here), a corrupt cached file is refused, and offline the error names the file to place and where."""

from __future__ import annotations

import hashlib
import io

import pytest
import torch
from torchvision.models._api import Weights, WeightsEnum

from letkd.config import config_from_dict
from letkd.models import create_model
from letkd.models.torchvision_weights import (
    WeightsError,
    fetch_weights,
    is_weights_name,
    published_top1,
    weights_file,
    weights_for,
)
from local_http import dead_url, serve


@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def _weights(url: str) -> WeightsEnum:
    return WeightsEnum(
        "TinyWeights", [("IMAGENET1K_V1", Weights(url=url, transforms=None, meta={}))]
    ).IMAGENET1K_V1


def _state_bytes() -> bytes:
    buf = io.BytesIO()
    torch.save(create_model("resnet8", 10).state_dict(), buf)
    return buf.getvalue()


def test_names_resolve_through_torchvisions_weights_api():
    assert is_weights_name("torchvision:IMAGENET1K_V1") and is_weights_name(
        "torchvision:ResNet50_Weights.IMAGENET1K_V2"
    )
    assert (
        not is_weights_name("torchvision:resnet34")
        and not is_weights_name("crd:resnet56")
        and not is_weights_name(None)
    )
    w = weights_for("torchvision:IMAGENET1K_V1", "torchvision:resnet34")
    assert str(w) == "ResNet34_Weights.IMAGENET1K_V1" and w.url.endswith("/resnet34-b627a593.pth")
    assert weights_for("torchvision:ResNet50_Weights.IMAGENET1K_V1", "anything").url.endswith(
        "resnet50-0676ba61.pth"
    )
    # the paper's Table 2 teachers are torchvision's figures
    assert published_top1("torchvision:IMAGENET1K_V1", "torchvision:resnet34") == (73.314, 91.42)
    assert published_top1("torchvision:IMAGENET1K_V1", "torchvision:resnet50") == (76.13, 92.862)
    with pytest.raises(WeightsError, match="resnet34 has no weights 'IMAGENET9K'; known: IMAGENET1K_V1"):
        weights_for("torchvision:IMAGENET9K", "torchvision:resnet34")
    with pytest.raises(WeightsError, match="must be a torchvision model"):
        weights_for("torchvision:IMAGENET1K_V1", "resnet20")


def test_fetched_by_torchvision_with_its_hash_check_then_reused(torch_home):
    data = _state_bytes()
    name = f"tiny-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    with serve() as server:
        server.files[f"/models/{name}"] = data
        weights = _weights(server.url(f"/models/{name}"))
        path = fetch_weights(weights, progress=False)
        assert path == torch_home / name and path.read_bytes() == data
        assert fetch_weights(weights, progress=False) == path  # cached: no second download
        assert server.requests[f"/models/{name}"] == 1
        server.files["/models/bad-00000000.pth"] = data  # a file whose name does not carry its hash
        with pytest.raises(WeightsError, match="failed its hash check"):
            fetch_weights(_weights(server.url("/models/bad-00000000.pth")), progress=False)
    assert not (torch_home / "bad-00000000.pth").exists()


def test_a_corrupt_cached_file_is_refused(torch_home):
    weights = _weights("http://127.0.0.1:9/models/resnet34-b627a593.pth")
    torch_home.mkdir(parents=True)
    (torch_home / "resnet34-b627a593.pth").write_bytes(b"not the weights")
    with pytest.raises(WeightsError, match=r"is corrupt .* does not start with b627a593\); delete it"):
        fetch_weights(weights)


def test_offline_the_error_names_the_file_and_the_folder(torch_home):
    weights = _weights(dead_url("/models/resnet34-b627a593.pth"))
    assert weights_file(weights) == torch_home / "resnet34-b627a593.pth"
    with pytest.raises(WeightsError) as info:
        fetch_weights(weights, progress=False)
    message = str(info.value)
    assert "cannot fetch TinyWeights.IMAGENET1K_V1 from http://127.0.0.1:" in message
    assert (
        f"place that file, resnet34-b627a593.pth (its SHA-256 starts with b627a593), in {torch_home}/"
        in message
    )


def test_the_pipeline_takes_the_teacher_from_its_weights_name(torch_home, monkeypatch):
    from letkd.models import torchvision_weights
    from letkd.pipeline import ensure_teacher_checkpoint

    data = _state_bytes()
    name = f"tiny-{hashlib.sha256(data).hexdigest()[:8]}.pth"
    asked = []
    with serve() as server:
        server.files[f"/{name}"] = data

        def weights_for(spec, arch):
            asked.append((spec, arch))
            return _weights(server.url(f"/{name}"))

        monkeypatch.setattr(torchvision_weights, "weights_for", weights_for)
        cfg = config_from_dict(
            {
                "data": {"name": "digits"},
                "model": {"name": "resnet8"},
                "method": {"name": "kd"},
                "teacher": {"name": "torchvision:resnet18", "checkpoint": "torchvision:IMAGENET1K_V1"},
            }
        )
        assert ensure_teacher_checkpoint(cfg, torch.device("cpu")) == str(torch_home / name)
    assert asked == [("torchvision:IMAGENET1K_V1", "torchvision:resnet18")]
