"""MaxOut on the compute contract: shares of targets merge to the one-share result; options declared once."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch
from torch import nn

import trainviz.callbacks.maxact as callback_module
from trainviz.callbacks.maxact import MaxActivationCallback
from trainviz.core.contract import Credit, Share
from trainviz.core.options import signature_mismatches
from trainviz.core.probeset import ProbeSet
from trainviz.probes.maxact import MaxActOptions, MaxActProbe, build_targets


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)
    ).eval()


def _prober(net: nn.Module, **options) -> MaxActProbe:
    probe = ProbeSet(torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long), torch.arange(2))
    opts = MaxActOptions(layers=["0"], channels=2, steps=3, **options)
    targets, layers = build_targets(net, probe.images, opts)
    return MaxActProbe(probe, opts, targets, layers=layers, seed=7)


def _run(prober: MaxActProbe, net: nn.Module, epoch: int, world: int):
    plan = prober.plan(Credit(epoch=epoch))
    return prober.merge([prober.compute(net, s, plan, prober.state()) for s in prober.shares(plan, world)], plan)


@pytest.mark.parametrize("world", [2, 3, 6])  # 5 targets: 6 shares leave one empty
@pytest.mark.parametrize("robust", [False, True])
def test_shares_merge_to_the_one_share_result(world, robust):
    net = _net()
    one, split = _prober(net, robust=robust), _prober(net, robust=robust)
    for epoch in (0, 1):  # the second run has `moved`, against each prober's own history
        a, b = _run(one, net, epoch, 1), _run(split, net, epoch, world)
        assert list(a.activation) == list(b.activation) and len(a.activation) == 5
        assert a.record().keys() == b.record().keys()
        torch.testing.assert_close(b.images, a.images, atol=1e-5, rtol=0)
        for key in a.activation:
            assert b.activation[key] == pytest.approx(a.activation[key], abs=1e-5)
            assert (a.moved[key] is None) == (b.moved[key] is None) == (epoch == 0)
            if epoch:
                assert b.moved[key] == pytest.approx(a.moved[key], abs=1e-5)
    assert [e for e, _ in split.history.runs] == [0, 1]
    assert [len(s) for s in Share.split(split.probe, 2)] == [1, 1]


def test_the_final_pass_is_kept_out_of_the_history():
    net = _net()
    prober = _prober(net, final_steps=2, final_upscale=2)
    _run(prober, net, 0, 1)
    plan = prober.plan(Credit(epoch=0), final=True)
    assert (plan.steps, plan.upscale, plan.final) == (2, 2, True)
    final = prober.merge([prober.compute(net, Share.of_items(plan.targets), plan, None)], plan)
    assert final.images.shape == (5, 3, 16, 16) and set(final.moved.values()) == {None}
    assert len(prober.history.runs) == 1


def test_a_costly_run_is_skipped_unless_essential():
    prober = _prober(_net())
    prober.cost = 2.0
    assert prober.plan(Credit(1.0, essential=False, epoch=3)) is None
    assert prober.skipped == [("run", "last run took 2.00 s, credit 1.00 s")]
    assert prober.plan(Credit(1.0, essential=True, epoch=3)) is not None and prober.skipped == []


def test_options_are_declared_once():
    assert signature_mismatches(MaxActivationCallback.__init__, MaxActOptions) == []
    positional = [
        p
        for p in inspect.signature(MaxActivationCallback.__init__).parameters.values()
        if p.kind is p.POSITIONAL_OR_KEYWORD
    ]
    assert len(positional) <= 4  # self and three
    cb = MaxActivationCallback(classes=[1, 0], steps=5)
    assert cb.options == MaxActOptions(classes=[1, 0], steps=5) and cb.steps == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 0}, "Expected `steps` to be a positive int, got 0"),
        ({"lr": -1.0}, "Expected `lr` to be a positive number"),
        ({"classes": []}, "Expected at least one target"),
        ({"layers": ["a"], "channels": {"b": [0]}}, r"Expected the keys of `channels` among `layers` \['a'\]"),
    ],
)
def test_a_bad_option_is_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaxActOptions(**kwargs)


def test_the_callback_imports_nothing_from_ops():
    tree = ast.parse(inspect.getsource(callback_module))
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in modules if m and m.startswith("trainviz.ops")]
