"""The contract every registered method keeps, checked for each entry of ``list_methods()`` with the method's
example params on digits-sized inputs: it builds, trains a step (in every stage), names its losses
``loss_*``, never trains the teacher, survives a state_dict round trip, and is safe under DDP."""

from __future__ import annotations

import io

import pytest
import torch

from letkd.methods import MethodContext, get_method, list_methods
from letkd.models import create_model
from letkd.supervision import Codebook, SubclassCodebook

NC = 5
SIZE = (3, 8, 8)
B = 4
N_TRAIN = 32
EPOCHS = 4  # two-stage methods: epoch 0 is in their init stage (example init_epochs 1), epoch 3 is not
#: students besides resnet8: a vision transformer whose 2×2 patch-token grid meets resnet8's 2×2 maps
STUDENT_KWARGS = {"vit_pico_p4": {"img_size": SIZE[1]}}
#: (method, student) pairs refused at construction, with the reason the error must give
REFUSED = {
    ("ab", "vit_pico_p4"): "not the output of an nn.ReLU",  # AB reads pre-ReLU maps; a ViT has none
    ("fsp", "vit_pico_p4"): "same channels at every tap",  # FSP needs equal widths; resnet8's grow
    ("ofd", "vit_pico_p4"): "declares no pre-activation",  # OFD reads pre-ReLU stage outputs; a ViT has none
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


def _supervision(spec, dim: int = 64):
    """A random supervision module of the kind ``spec`` asks for (resnet8 taps are 64 channels wide)."""
    g = torch.Generator().manual_seed(1)
    if spec.kind == "codebook":
        return Codebook(torch.rand(spec.num_templates, dim, generator=g) * 2)
    s, r = NC * spec.subclasses_per_class, spec.lda_components
    scores = torch.softmax(torch.randn(s, s, generator=g), 1)
    return SubclassCodebook(torch.randn(dim, r, generator=g), torch.rand(dim, generator=g),
                            torch.randn(s, r, generator=g), scores, NC)


def _params_and_supervision(cls) -> tuple[dict, list | None]:
    """The method's example params and random supervision for every spec the method asks for."""
    params = dict(cls.example_params())
    specs = cls.supervision_specs(cls.parse_params(params)) if cls.requires_teacher else []
    return params, [_supervision(spec) for spec in specs] or None


def _build(name: str, seed: int = 0, student: str = "resnet8"):
    cls = get_method(name)
    params, supervision = _params_and_supervision(cls)
    torch.manual_seed(seed)
    student_model = create_model(student, NC, **STUDENT_KWARGS.get(student, {}))
    student, teacher = student_model, create_model("resnet8", NC)
    context = MethodContext(NC, SIZE, supervision=supervision, num_train_samples=N_TRAIN)
    return cls.from_config(student, teacher, params, context)


def _batch(d, epoch: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    g = torch.Generator().manual_seed(epoch)
    images, labels = torch.randn(B, *SIZE, generator=g), torch.arange(B) % NC
    extra = {}
    if d.needs_sample_indices:
        index = torch.randperm(N_TRAIN, generator=g)[:B]
        negatives = torch.randint(0, N_TRAIN, (B, d.num_negatives), generator=g)
        extra = {"index": index, "contrast_index": torch.cat([index[:, None], negatives], 1)}
    return images, labels, extra


@pytest.mark.parametrize("student", ["resnet8", "vit_pico_p4"])
@pytest.mark.parametrize("name", list_methods())
def test_method_trains_and_keeps_the_contract(name, student):
    if (name, student) in REFUSED:
        from letkd.config import ConfigError

        with pytest.raises(ConfigError, match=REFUSED[name, student]):
            _build(name, student=student)
        return
    d = _build(name, student=student)
    teacher_ids = {id(p) for p in d.teacher.parameters()}
    trainable = list(d.trainable_parameters())
    assert trainable and not {id(p) for p in trainable} & teacher_ids
    teacher_before = {k: v.clone() for k, v in d.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in d.student.named_parameters()}
    opt = torch.optim.SGD(trainable, lr=0.05)
    d.train()
    for epoch in (0, EPOCHS - 1):
        d.set_epoch(epoch)
        images, labels, extra = _batch(d, epoch)
        logits, losses = d(images, labels, **extra)
        assert logits.shape == (B, NC)
        assert losses and all(k.startswith("loss_") for k in losses), sorted(losses)
        assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values()), losses
        opt.zero_grad(set_to_none=True)
        torch.stack(list(losses.values())).sum().backward()
        missing = [i for i, p in enumerate(trainable) if p.grad is None]
        assert not missing or getattr(d, "find_unused_parameters", False), (
            f"{len(missing)} trainable parameters got no gradient: set find_unused_parameters for DDP"
        )
        assert all(p.grad is None for p in d.teacher.parameters())
        opt.step()
    assert not d.teacher.training
    assert any(not torch.equal(p, student_before[k]) for k, p in d.student.named_parameters())
    for k, v in d.teacher.state_dict().items():
        assert torch.equal(v, teacher_before[k]), k


@pytest.mark.parametrize("name", list_methods())
def test_state_dict_round_trip_gives_the_same_outputs(name):
    trained = _build(name, seed=0).train()
    images, labels, extra = _batch(trained)
    trained.set_epoch(EPOCHS - 1)
    trained(images, labels, **extra)  # moves BatchNorm statistics and memory banks away from their init
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    fresh = _build(name, seed=1)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    for key, value in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    trained.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), trained(images), rtol=0, atol=0)


@pytest.mark.parametrize("name", list_methods())
def test_params_reject_unknown_keys_and_teacher_methods_need_a_teacher(name):
    from letkd.config import ConfigError

    cls = get_method(name)
    with pytest.raises(ConfigError, match=rf"(?s)method '{name}'.*unknown key 'method.params.no_such_key'"):
        cls.parse_params({"no_such_key": 1})
    if cls.requires_teacher:
        params, supervision = _params_and_supervision(cls)
        context = MethodContext(NC, SIZE, supervision=supervision, num_train_samples=N_TRAIN)
        with pytest.raises(ConfigError, match="needs a teacher"):
            cls.from_config(create_model("resnet8", NC), None, params, context)

