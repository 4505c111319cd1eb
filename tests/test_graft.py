"""Grafting KD layers into models: placement, hooks, state_dicts, copies, training, DDP and baking."""

from __future__ import annotations

import copy
import os
import tempfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from letkd.deploy import BakedGraft, apply_graft_spec, bake, graft_spec, load_into_grafted
from letkd.graft import (
    GraftError,
    clear_graft_scores,
    describe_grafts,
    graft,
    graft_kd_layers,
    graft_scores,
    grafts,
    ungraft,
)
from letkd.layers import KDLayer, TemplateHead
from letkd.models import create_model, get_taps, list_models
from letkd.taps import FeatureTaps
from letkd.template_loss import template_kl


def all_hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def check_grafted_model(model: nn.Module, x: torch.Tensor, k_int: int = 6, k_pen: int = 10) -> None:
    """Graft KD layers at the intermediate and penultimate taps: the model runs, its output changes, both
    score maps are recorded, only ``<target>.letkd.*`` keys are added, and ungrafting restores the model."""
    model.eval()
    taps = get_taps(model)
    paths = {name: taps[name] for name in ("intermediate", "penultimate")}
    keys_before = list(model.state_dict())
    with torch.no_grad(), FeatureTaps(model, list(paths.values())) as feature_taps:
        features = feature_taps(x)
        expected = feature_taps.output
    channels = {name: features[path].shape[1] for name, path in paths.items()}
    graft(model, "intermediate", KDLayer(channels["intermediate"], k_int))
    graft(model, "penultimate", KDLayer(channels["penultimate"], k_pen))
    extra = set(model.state_dict()) - set(keys_before)
    assert set(keys_before) < set(model.state_dict())
    prefixes = tuple(f"{path}.letkd." for path in paths.values())
    assert all(k.startswith(prefixes) for k in extra)
    with torch.no_grad():
        out = model(x)
    assert out.shape == expected.shape and not torch.equal(out, expected)
    scores = graft_scores(model)
    assert set(scores) == set(paths.values())
    for name, k in (("intermediate", k_int), ("penultimate", k_pen)):
        assert scores[paths[name]].shape == (x.shape[0], k, *features[paths[name]].shape[2:])
    for path in paths.values():
        ungraft(model, path)
    assert list(model.state_dict()) == keys_before and all_hooks(model) == 0
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


CIFAR_ZOO = [name for name in list_models() if "imagenet" not in name.lower()]


@pytest.mark.parametrize("name", CIFAR_ZOO)
def test_graft_every_cifar_zoo_model_at_named_taps(name):
    model = create_model(name, num_classes=10)
    check_grafted_model(model, torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("name", ["torchvision:resnet18", "torchvision:mobilenet_v2", "timm:resnet10t"])
def test_graft_torchvision_and_timm_models(name):
    model = create_model(name, num_classes=10)
    check_grafted_model(model, torch.randn(1, 3, 32, 32))


# ---------------------------------------------------------------------------------------------------------


def test_back_to_back_grafts_follow_forward_order():
    """resnet8x4: layer3 holds one block, the penultimate KD layer acts on the intermediate one's output."""
    model = create_model("resnet8x4", num_classes=10).eval()
    inner, outer = KDLayer(256, 8), KDLayer(256, 12)
    graft(model, "intermediate", inner)
    graft(model, "penultimate", outer)
    assert set(grafts(model)) == {"layer3.0", "layer3"}
    seen = {}
    model.layer3.register_forward_pre_hook(lambda m, args: seen.update(stage_in=args[0]))
    model.layer3.register_forward_hook(lambda m, args, out: seen.update(stage_out=out))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
        block = model.layer3[0]
        raw = type(block).forward(block, seen["stage_in"])  # the block without its graft hook
        mid, inner_scores = inner(raw)
        final, outer_scores = outer(mid)
    torch.testing.assert_close(seen["stage_out"], final)
    scores = graft_scores(model)
    torch.testing.assert_close(scores["layer3.0"], inner_scores)
    torch.testing.assert_close(scores["layer3"], outer_scores)


def test_sequential_target_keeps_its_container_behaviour():
    model = create_model("resnet20", num_classes=10)
    stage = model.layer3
    blocks = list(stage)
    handle = graft(model, "layer3", KDLayer(64, 8))
    assert isinstance(model.layer3, nn.Sequential) and model.layer3 is stage
    assert len(stage) == 3 and list(stage) == blocks and stage[-1] is blocks[-1] and stage[0] is blocks[0]
    assert list(stage[1:]) == blocks[1:] and type(stage[1:]) is nn.Sequential
    assert "letkd" in dict(stage.named_children())
    with pytest.raises(IndexError):
        stage[3]
    handle.remove()
    assert type(stage) is nn.Sequential and not hasattr(stage, "letkd") and len(stage) == 3


def test_graft_errors():
    model = create_model("resnet8", num_classes=10)
    with pytest.raises(GraftError, match="layer3.0"):
        graft(model, "layer9", KDLayer(64, 4))
    graft(model, "layer3", KDLayer(64, 4))
    with pytest.raises(GraftError, match="already grafted"):
        graft(model, "layer3", KDLayer(64, 4))
    with pytest.raises(GraftError, match="not grafted"):
        ungraft(model, "layer2")
    with pytest.raises(GraftError, match="model itself"):
        graft(model, "", KDLayer(64, 4))
    holder = nn.Module()
    holder.items = nn.ModuleList([nn.Identity()])
    with pytest.raises(GraftError, match="ModuleList"):
        graft(holder, "items", KDLayer(4, 4))


class SharedActivation(nn.Module):
    """Calls ``self.act`` twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 1)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv2(self.act(self.conv1(x))))


def test_target_running_twice_per_forward_raises():
    model = SharedActivation()
    graft(model, "act", KDLayer(4, 3))
    with pytest.raises(GraftError, match="more than once"):
        model(torch.randn(1, 3, 4, 4))
    # a direct call of the target outside a forward of the model is fine, as is the next forward's first call
    ok = SharedActivation()
    graft(ok, "conv2", KDLayer(4, 3))
    x = torch.randn(1, 3, 4, 4)
    ok(x)
    ok(x)
    ok.conv2(torch.randn(1, 4, 4, 4))
    assert graft_scores(ok)["conv2"].shape == (1, 3, 4, 4)


def test_scores_are_overwritten_and_handle_reads_them():
    model = create_model("resnet8", num_classes=10)
    handle = graft(model, "layer3", KDLayer(64, 5))
    assert handle.scores is None and handle.module is model.layer3.letkd
    model(torch.randn(2, 3, 32, 32))
    first = handle.scores
    model(torch.randn(3, 3, 32, 32))
    assert handle.scores is not first and handle.scores.shape == (3, 5, 8, 8)
    assert graft_scores(model)["layer3"] is handle.scores
    clear_graft_scores(model)
    assert handle.scores is None and graft_scores(model) == {}


def test_template_head_and_alpha_zero_observe_without_changing_output():
    model = create_model("resnet8", num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    graft(model, "layer2", TemplateHead(32, 7))
    graft(model, "layer3", KDLayer(64, 5, alpha=0.0))
    out = model(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert graft_scores(model)["layer2"].shape == (2, 7, 16, 16)
    out.sum().backward()  # the clone guard keeps saved tensors intact under the block's in-place ops
    assert model.layer2.letkd.templates.weight.grad is None  # scores not in the loss
    assert {e["kind"] for e in graft_spec(model)} == {"template_head", "kd_layer"}
    baked = bake(model)
    assert not any(isinstance(m, (BakedGraft, KDLayer, TemplateHead)) for m in baked.modules())
    torch.testing.assert_close(baked(x), expected, rtol=0, atol=0)


def test_deepcopy_keeps_independent_working_grafts():
    model = create_model("resnet20", num_classes=10)
    graft_kd_layers(model, {"intermediate": KDLayer(64, 6), "penultimate": KDLayer(64, 9)})
    x = torch.randn(2, 3, 32, 32)
    model(x)  # scores with a graph are recorded: the copy must not try to copy them
    twin = copy.deepcopy(model)
    model.eval(), twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x))
    assert set(graft_scores(twin)) == {"layer3.0", "layer3"}
    assert graft_scores(twin)["layer3"] is not graft_scores(model)["layer3"]
    ungraft(model, "layer3")
    ungraft(model, "layer3.0")
    assert set(grafts(twin)) == {"layer3.0", "layer3"}
    twin(x)
    assert len(graft_scores(twin)) == 2
    twice = copy.deepcopy(twin)
    with torch.no_grad():
        torch.testing.assert_close(twice(x), twin(x))
    assert len(graft_scores(twice)) == 2


def test_state_dict_round_trips_and_vanilla_checkpoints():
    source = create_model("resnet8x4", num_classes=10)
    vanilla_state = copy.deepcopy(source.state_dict())
    graft(source, "layer3.0", KDLayer(256, 8))
    graft(source, "layer3", KDLayer(256, 16, alpha=0.5))
    source.train()
    source(torch.randn(4, 3, 32, 32))  # update BN statistics of the KD layers
    spec = graft_spec(source)
    summary = {(e["target"], e["num_templates"], e["alpha"]) for e in spec}
    assert summary == {("layer3.0", 8, 1.0), ("layer3", 16, 0.5)}
    assert [d["target"] for d in describe_grafts(source)] == ["layer3", "layer3.0"]

    target = create_model("resnet8x4", num_classes=10)
    apply_graft_spec(target, spec)
    target.load_state_dict(source.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    source.eval(), target.eval()
    with torch.no_grad():
        torch.testing.assert_close(target(x), source(x))

    plain = create_model("resnet8x4", num_classes=10)
    plain.load_state_dict(vanilla_state, strict=True)
    fresh = create_model("resnet8x4", num_classes=10)
    apply_graft_spec(fresh, spec)
    result = fresh.load_state_dict(vanilla_state, strict=False)
    assert result.unexpected_keys == [] and result.missing_keys
    assert all(".letkd." in k for k in result.missing_keys)
    missing = load_into_grafted(fresh, vanilla_state)
    assert sorted(missing) == sorted(result.missing_keys)
    assert load_into_grafted(target, source.state_dict()) == []
    bad = dict(vanilla_state)
    bad.pop("conv1.weight")
    with pytest.raises(RuntimeError, match="conv1.weight"):
        load_into_grafted(fresh, bad)


def test_grafted_resnet20_trains_a_few_steps():
    torch.manual_seed(0)
    model = create_model("resnet20", num_classes=10)
    layer = KDLayer(64, 32)
    graft(model, "penultimate", layer)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    targets = torch.softmax(torch.randn(4, 32, 8, 8) * 5, dim=1)
    losses = []
    model.train()
    for _ in range(3):
        logits = model(x)
        loss = F.cross_entropy(logits, y) + template_kl(graft_scores(model)["layer3"], targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    after = layer.state_dict()
    for key in ("templates.weight", "values.weight", "bn.weight", "bn.running_mean", "templates.scale"):
        assert not torch.equal(after[key], before[key]), key
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (4, 10)


# ---------------------------------------------------------------------------------------------------------
# baking and torch.export


def test_bake_is_hook_free_copy_and_exports():
    model = create_model("resnet20", num_classes=10)
    graft(model, "layer3.0", KDLayer(64, 8))
    graft(model, "layer3", KDLayer(64, 16))
    model.train()
    model(torch.randn(4, 3, 32, 32))
    model.eval()
    baked = bake(model)
    assert set(grafts(model)) == {"layer3.0", "layer3"}  # the input model is untouched
    assert all_hooks(baked) == 0
    assert isinstance(baked.layer3, BakedGraft) and isinstance(baked.layer3.base[0], BakedGraft)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(bake(model, form="reference")(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(baked(x), expected, rtol=1e-5, atol=1e-5)  # folded BatchNorm: rounding
    program = torch.export.export(baked, (x,))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# DDP


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = create_model("resnet8", num_classes=10)
        graft(model, "layer3.0", KDLayer(64, 6, alpha=1.0))
        graft(model, "layer3", KDLayer(64, 8, alpha=1.0))
        ddp = DistributedDataParallel(model, find_unused_parameters=False)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(rank)
        for _ in range(2):  # DDP reports unused parameters of one step at the next step
            x = torch.randn(4, 3, 16, 16, generator=gen)
            y = torch.randint(0, 10, (4,), generator=gen)
            logits = ddp(x)
            loss = F.cross_entropy(logits, y)
            for scores in graft_scores(ddp.module).values():
                loss = loss + template_kl(scores, torch.softmax(torch.randn(scores.shape, generator=gen), 1))
            opt.zero_grad()
            loss.backward()
            opt.step()
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save(flat, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_ddp_training_step_without_unused_parameters():
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        # spawn, not fork: a parent whose autograd engine has started its threads (an earlier test's
        # backward) cannot run autograd in forked children
        mp.start_processes(
            _ddp_worker, args=(2, os.path.join(tmp, "init"), tmp), nprocs=2, join=True, start_method="spawn"
        )
        a = torch.load(os.path.join(tmp, "rank0.pt"), weights_only=True)
        b = torch.load(os.path.join(tmp, "rank1.pt"), weights_only=True)
    torch.testing.assert_close(a, b)  # gradients were all-reduced for every parameter
