"""The saliency probe's compute contract: a probe set cut into shares and merged gives the one-share result (every
number per image, every draw tied to the image's place), the options declared once, and a callback that only
plans, computes, merges and writes."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import trainviz.callbacks.saliency as callback_module
from trainviz.callbacks.saliency import SaliencyCallback
from trainviz.core.contract import Credit, Share
from trainviz.core.options import signature_mismatches
from trainviz.core.probeset import ProbeSet
from trainviz.ops.saliency import saliency
from trainviz.ops.sanity import random_classes, randomizable_layers, randomization_blocks
from trainviz.probes.saliency import (
    METHODS,
    SaliencyConfig,
    SaliencyOptions,
    SaliencyPlan,
    SaliencyProbe,
    SaliencyResult,
    run_seed,
)

N = 10
# the first image of each class leads the shown (and sanity) images: 5, 4, 0, then 1, 2, 3, 6, ...; with two
# shares of five, the second holds the first sanity image and places 0 and 6 of the sanity list
LABELS = [2, 2, 2, 2, 1, 0, 0, 1, 0, 1]


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def _probe() -> ProbeSet:
    torch.manual_seed(1)
    masks = torch.zeros(N, 12, 12, dtype=torch.bool)
    masks[:, 3:8, 4:9] = True
    return ProbeSet(torch.rand(N, 3, 12, 12), torch.tensor(LABELS), torch.arange(100, 100 + N), masks=masks)


def _config(net: nn.Module, **overrides) -> SaliencyConfig:
    values = dict(
        methods=tuple(m for m in METHODS if m != "occlusion"),
        smoothgrad_samples=3,
        ig_steps=3,
        occlusion_window=4,
        deletion_steps=3,
        sanity_images=7,
        n_grid=4,
        n_tracked=3,
        batch_size=4,  # several batches per share, cut differently from the one-share run
        sanity_layers=randomizable_layers(net),
    )
    return SaliencyConfig(**{**values, **overrides})


def _run(net, probe, config, shares, plan) -> SaliencyResult:
    prober = SaliencyProbe(probe, config)  # a probe each: merge adds to its history
    return prober.merge([prober.compute(net, share, plan, prober.state()) for share in shares], plan)


def _assert_same(one: SaliencyResult, other: SaliencyResult) -> None:
    assert _records_close(one.record(), other.record())
    for name in ("maps", "per_image", "tracked", "sanity_maps"):
        a, b = getattr(one, name) or {}, getattr(other, name) or {}
        assert set(a) == set(b), name
        for key in a:
            np.testing.assert_allclose(b[key].float().numpy(), a[key].float().numpy(), atol=1e-5, err_msg=key)
    for key, value in (one.sanity_arrays or {}).items():
        if key == "layers":
            assert other.sanity_arrays[key].tolist() == value.tolist()
        else:
            np.testing.assert_allclose(np.asarray(other.sanity_arrays[key]), np.asarray(value), atol=1e-5, err_msg=key)
    assert torch.equal(one.targets, other.targets) and torch.allclose(one.probs, other.probs, atol=1e-6)
    assert one.grid == other.grid and one.captions == other.captions and torch.equal(one.pixels, other.pixels)


def _records_close(a, b, path="record") -> bool:
    """Equal records: the same keys and strings, the numbers within 1e-6 (the shares batch differently)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), path
        return all(_records_close(a[k], b[k], f"{path}.{k}") for k in a)
    if isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, abs=1e-6), path
        return True
    assert a == b, path
    return True


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"target": "predicted", "sanity_layers": None, "methods": ("smoothgrad", "gradient", "occlusion")},
    ],
)
def test_two_shares_and_a_split_with_an_empty_share_merge_to_the_one_share_result(overrides):
    net, probe = _net(), _probe()
    config = _config(net, **overrides)
    plan = SaliencyPlan(epoch=3, seed=run_seed(7, 3), methods=tuple(config.methods), sanity=True)
    one = _run(net, probe, config, [Share.of(probe)], plan)
    assert one.sanity is not None and set(one.per_method) == set(config.methods)
    two = _run(net, probe, config, Share.split(probe, 2), plan)
    _assert_same(one, two)
    cut = [Share(0, 3, probe.subset(0, 3)), Share(3, 3, probe.subset(3, 3)), Share(3, N, probe.subset(3, N))]
    _assert_same(one, _run(net, probe, config, cut, plan))
    # without the checks, too; and the share's sanity numbers are per image (the mean over them is the scalar)
    plain = dataclasses.replace(plan, sanity=False)
    _assert_same(_run(net, probe, config, [Share.of(probe)], plain), _run(net, probe, config, cut, plain))
    spearman = one.sanity_arrays["spearman/gradient"]
    assert spearman.shape == (len(randomizable_layers(net)), 7)
    if one.sanity_layers:
        assert one.sanity["gradient"][one.sanity_layers[0]] == pytest.approx(float(spearman[0].nanmean()), abs=1e-6)


def test_block_steps_merge_alike():
    net, probe = _net(), _probe()
    steps = randomization_blocks(net)
    config = _config(net, sanity_layers=[n for n, _ in steps], sanity_members=[m for _, m in steps])
    plan = SaliencyPlan(epoch=0, seed=run_seed(0, 0), methods=tuple(config.methods), sanity=True)
    _assert_same(
        _run(net, probe, config, [Share.of(probe)], plan), _run(net, probe, config, Share.split(probe, 3), plan)
    )


def test_noise_and_random_classes_follow_the_image_place():
    net, probe = _net(), _probe()
    x, t = probe.images, probe.labels
    whole = saliency(net, x, t, "smoothgrad", samples=3, generator=torch.Generator().manual_seed(5))
    part = saliency(net, x[[2, 6]], t[[2, 6]], "smoothgrad", samples=3, generator=torch.Generator().manual_seed(5),
                    positions=[2, 6])  # fmt: skip
    torch.testing.assert_close(part, whole[[2, 6]])
    classes = random_classes(t, 3, torch.Generator().manual_seed(4))
    some = random_classes(t[[1, 7]], 3, torch.Generator().manual_seed(4), positions=torch.tensor([1, 7]))
    assert torch.equal(some, classes[[1, 7]])
    with pytest.raises(ValueError, match="`positions`"):
        saliency(net, x[:2], t[:2], "smoothgrad", positions=[3, 1])


def test_the_plan_and_the_history():
    probe, net = _probe(), _net()
    prober = SaliencyProbe(probe, _config(net, sanity_every=2))
    first = prober.plan(Credit(epoch=0))
    assert first == SaliencyPlan(epoch=0, seed=run_seed(0, 0), methods=prober.config.methods, sanity=True)
    prober.merge([prober.compute(net, Share.of(probe), first, None)], first)
    assert prober.history.runs == [0] and prober.history.sanity_epochs == [0] and set(prober.costs) == {"sanity"}
    assert prober.plan(Credit(epoch=1)).sanity is False and prober.plan(Credit(5.0, False, 1)).sanity is False
    state = prober.history.state()
    assert state["history_epochs"] == [0] and state["history_maps"]["gradient"].dtype == torch.float16


def test_the_options_are_declared_once_and_check_themselves():
    assert signature_mismatches(SaliencyCallback.__init__, SaliencyOptions) == []
    with pytest.raises(ValueError, match=r"`methods` to be one of 'gradient'.*'occlusion'; got 'lrp'"):
        SaliencyOptions(methods=["lrp"])
    with pytest.raises(ValueError, match=r"`sanity_steps` to be one of 'blocks', 'layers'; got 'block'"):
        SaliencyOptions(sanity_steps="block")
    with pytest.raises(ValueError, match=r"`target` to be one of 'true', 'predicted'"):
        SaliencyCallback(target="label")
    assert SaliencyOptions().methods == ("gradient", "smoothgrad", "guided_backprop", "occlusion")
    cb = SaliencyCallback(methods=["gradient"], occlusion=False, sanity_every=0)
    assert cb.options == SaliencyOptions(methods=("gradient",), occlusion=False, sanity_every=0)
    assert cb.methods == ("gradient",) and cb.sanity_every == 0
    with pytest.raises(TypeError):
        SaliencyCallback(["gradient"], "true", 16, 0.15)  # at most three positional arguments


def test_the_callback_imports_nothing_from_ops():
    tree = ast.parse(Path(callback_module.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("trainviz.ops")]
