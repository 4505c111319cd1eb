"""Method composition: one method composed is that method; A + B composed is A + B with one teacher and one
student forward; parts keep their params, losses and state apart; the shared student forward's guards."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from letkd.config import ConfigError
from letkd.methods import get_method
from letkd.methods.shared_pass import CompositionError, StudentPass
from method_helpers import CODEBOOK_LAYER, NC, SIZE, _batch, _codebook, _context, _pair

pytestmark = pytest.mark.usefixtures("one_thread")

LETKD1 = {"layers": [CODEBOOK_LAYER]}


def _build(name, params, supervision=None, pair=None):
    student, teacher = pair or _pair()
    return get_method(name).from_config(student, teacher, params, _context(supervision))


def _count_forwards(module: nn.Module) -> list[int]:
    count = [0]
    module.register_forward_pre_hook(lambda m, a: count.__setitem__(0, count[0] + 1))
    return count


def _step(d, images, labels) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One training step's losses and the gradients of the student's parameters."""
    d.train()
    d.zero_grad(set_to_none=True)
    _, losses = d(images, labels)
    torch.stack(list(losses.values())).sum().backward()
    grads = {k: p.grad.clone() for k, p in d.student.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads


def _part_state(composed, part: str) -> dict[str, torch.Tensor]:
    """The state of the method alone, taken from a composition: shared modules plus the part's own keys."""
    state = {}
    for key, value in composed.state_dict().items():
        if key.startswith(("student.", "teacher.")):
            state[key] = value
        elif key.startswith(f"parts.{part}."):
            state[key.removeprefix(f"parts.{part}.")] = value
    return state


@pytest.mark.parametrize(
    "name, params, supervised",
    [("kd", {}, False), ("at", {}, False), ("fitnet", {}, False), ("dkd", {"warmup": 1}, False),
     ("letkd", LETKD1, True)],
)  # fmt: skip
def test_one_method_composed_is_that_method(name, params, supervised):
    torch.manual_seed(0)
    pair = _pair()
    alone = _build(name, params, [_codebook()] if supervised else None, copy.deepcopy(pair))
    composed = _build("compose", {"parts": [{"method": name, "params": params}]},
                      [_codebook()] if supervised else None, copy.deepcopy(pair))  # fmt: skip
    alone.load_state_dict(_part_state(composed, name))
    images, labels = _batch(6)
    losses_a, grads_a = _step(alone, images, labels)
    losses_c, grads_c = _step(composed, images, labels)
    renamed = {
        k if k == "loss_ce" else f"loss_{name}_{k.removeprefix('loss_')}": v for k, v in losses_a.items()
    }
    assert list(renamed) == list(losses_c)
    for key in renamed:
        torch.testing.assert_close(losses_c[key], renamed[key], rtol=0, atol=0)
    assert grads_a.keys() == grads_c.keys()
    for key in grads_a:
        torch.testing.assert_close(grads_c[key], grads_a[key], rtol=0, atol=0)


def test_two_methods_composed_are_their_sum_with_one_teacher_and_one_student_forward():
    """letKD-1 (grafted KD layer) + FitNet (its hint read by a replay of the shared student forward)."""
    torch.manual_seed(0)
    composed = _build("compose", {"parts": [{"method": "letkd", "params": LETKD1},
                                            {"method": "fitnet", "weight": 0.5}]}, [_codebook()])  # fmt: skip
    student, teacher = _pair()
    letkd = _build("letkd", LETKD1, [_codebook()], (student, teacher))
    letkd.load_state_dict(_part_state(composed, "letkd"))
    fitnet = _build("fitnet", {}, None, (copy.deepcopy(letkd.student), copy.deepcopy(teacher)))
    fitnet.load_state_dict(_part_state(composed, "fitnet"))
    teacher_counts = [_count_forwards(d.teacher.module) for d in (composed, letkd, fitnet)]
    student_counts = [_count_forwards(d.student) for d in (composed, letkd, fitnet)]
    images, labels = _batch(6)

    losses_c, grads_c = _step(composed, images, labels)
    losses_l, grads_l = _step(letkd, images, labels)
    losses_f, grads_f = _step(fitnet, images, labels)

    assert [c[0] for c in teacher_counts] == [1, 1, 1]  # the composition read its teacher once
    assert [c[0] for c in student_counts] == [1, 1, 1]  # ... and ran its student once
    assert composed.teacher.forwards == 1 and composed.student_pass.forwards == 1
    expected = {"loss_ce": losses_l["loss_ce"], "loss_letkd_kd_penultimate": losses_l["loss_kd_penultimate"],
                "loss_fitnet_kd": 0.5 * losses_f["loss_kd"]}  # fmt: skip
    assert list(losses_c) == list(expected)  # CE once (the first part's), the others prefixed by part
    for key, value in expected.items():
        torch.testing.assert_close(losses_c[key], value, rtol=1e-6, atol=1e-7)
    total = sum(losses_l.values()) + sum(losses_f.values()) - losses_f["loss_ce"] - 0.5 * losses_f["loss_kd"]
    torch.testing.assert_close(sum(losses_c.values()), total, rtol=1e-6, atol=1e-6)
    # gradients: letKD-1's, plus half of FitNet's hint gradient (its weight is 100)
    hint = _build("fitnet", {"ce_weight": 0.0, "weight": 50.0}, None, (copy.deepcopy(letkd.student), teacher))
    hint.load_state_dict(_part_state(composed, "fitnet"))
    _, grads_hint = _step(hint, images, labels)
    for key in grads_c:
        torch.testing.assert_close(grads_c[key], grads_l[key] + grads_hint.get(key, 0), rtol=1e-5, atol=1e-6)
    assert set(grads_f) == set(grads_hint)


def test_own_ce_weight_parts_state_and_batchnorm_updated_once():
    torch.manual_seed(0)
    params = {"parts": [{"method": "at"}, {"method": "kd", "params": {"ce_weight": 0.1}}], "ce_weight": 2.0}
    composed = _build("compose", params)
    images, labels = _batch(6)
    bn = composed.student.bn1
    before = bn.running_mean.clone()
    logits, losses = composed.train()(images, labels)
    torch.testing.assert_close(losses["loss_ce"], 2.0 * nn.functional.cross_entropy(logits, labels))
    assert sorted(losses) == ["loss_at_kd", "loss_ce", "loss_kd_kd"]
    momentum = bn.momentum
    mean = composed.student.conv1(images).mean((0, 2, 3)).detach()
    torch.testing.assert_close(bn.running_mean, (1 - momentum) * before + momentum * mean)  # one update
    keys = composed.state_dict().keys()
    assert not any(k.startswith("parts.") and (".student." in k or ".teacher." in k) for k in keys)


def test_params_errors_name_the_part():
    compose = get_method("compose")
    with pytest.raises(ConfigError, match=r"parts\.1\.method: unknown method 'nope'"):
        compose.parse_params({"parts": [{"method": "kd"}, {"method": "nope"}]})
    with pytest.raises(ConfigError, match=r"method\.params\.parts\.0\.params\.no_such_key"):
        compose.parse_params({"parts": [{"method": "kd", "params": {"no_such_key": 1}}]})
    with pytest.raises(ConfigError, match="two parts are named 'kd'"):
        compose.parse_params({"parts": [{"method": "kd"}, {"method": "kd"}]})
    compose.parse_params({"parts": [{"method": "kd"}, {"method": "kd", "name": "kd_hot"}]})
    with pytest.raises(ConfigError, match="cannot contain another"):
        compose.parse_params({"parts": [{"method": "compose", "params": {"parts": [{"method": "kd"}]}}]})


def _relu_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(), nn.LazyLinear(NC)
    )


def test_a_replay_serves_hooks_registered_after_the_forward_and_refuses_what_it_cannot():
    torch.manual_seed(0)
    net = _relu_net()
    images = torch.randn(2, *SIZE)
    net(images)
    shared = StudentPass(net)
    seen = {}
    with shared.step():
        out = net(images)
        hook = net[1].register_forward_hook(lambda m, a, o: seen.__setitem__("relu", o.clone()))
        assert net(images) is out  # replayed: the same output, the new hook saw the ReLU's output
        hook.remove()
        # the in-place ReLU changed the conv's output (its input): that value cannot be served any more
        for hook in (net[0].register_forward_hook(lambda m, a, o: None),
                     net[1].register_forward_pre_hook(lambda m, a: None)):  # fmt: skip
            with pytest.raises(CompositionError, match="changed in place"):
                net(images)
            hook.remove()
        hook = net[2].register_forward_hook(lambda m, a, o: o * 2)
        with pytest.raises(CompositionError, match="changes what the module computes"):
            net(images)
        hook.remove()
        assert net(torch.randn(2, *SIZE)) is not out  # other inputs: an ordinary forward
    assert type(net) is nn.Sequential and shared.forwards == 2
    torch.testing.assert_close(seen["relu"], net[0](images).relu())


def test_after_the_first_step_only_hooked_modules_are_recorded_and_a_newly_hooked_one_costs_one_forward():
    net, images = _relu_net(), torch.randn(2, *SIZE)
    net(images)
    shared = StudentPass(net)
    with shared.step():  # one caller: every module recorded, none hooked later
        net(images)
    with shared.step():  # nothing recorded now; a module hooked for the first time gets an ordinary forward
        out = net(images)
        hook = net[1].register_forward_hook(lambda m, a, o: None)
        assert net(images) is not out
        hook.remove()
    with shared.step():  # from now on that module is recorded and replayed
        out = net(images)
        hook = net[1].register_forward_hook(lambda m, a, o: None)
        assert net(images) is out
        hook.remove()
    assert shared.forwards == 4
