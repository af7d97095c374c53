"""The features probe under the compute contract: shares merged equal one share (the histogram sample and the
counts exactly), the shown channels kept in the probe's history; options declared once."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from trainviz.callbacks.features import FeatureMapCallback
from trainviz.core.contract import Credit, Share
from trainviz.core.options import signature_mismatches
from trainviz.core.probeset import ProbeSet
from trainviz.probes.features import FeatureConfig, FeatureOptions, FeatureProbe


def _close(a, b, tol=1e-5):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return a == b


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 2), nn.Linear(2, 3),
    ).eval()  # fmt: skip


@pytest.mark.parametrize(("n", "world"), [(11, 2), (11, 3), (2, 3)])
def test_shares_merged_equal_the_one_share_result(n, world):
    net = _net()
    probe = ProbeSet(torch.randn(n, 3, 8, 8), torch.arange(n) % 3, torch.arange(n) + 5)
    config = FeatureConfig(
        {"1": net[1], "3": net[3], "6": net[6]}, filter_layers={"0": net[0], "2": net[2]}, rgb_filters="0",
        line_layers={"7": net[7]}, n_channels=3, n_images=4, batch_size=4, hist_values=300,
    )  # fmt: skip
    one, many = FeatureProbe(probe, config), FeatureProbe(probe, config)
    a = one.run(net, Credit(epoch=1))
    plan = many.plan(Credit(epoch=1))
    shares = Share.split(probe, world)
    assert n > 2 or len(shares[-1]) == 0  # 2 images in 3 shares: one share is empty
    b = many.merge([many.compute(net, s, plan, many.state()) for s in shares], plan)
    assert _close(a.record(), b.record()) and a.captions == b.captions
    counts = [sum(p.layers[k].count for p in [one.compute(net, Share.of(probe), plan, None)]) for k in config.layers]
    parts = [many.compute(net, s, plan, None) for s in shares]
    assert counts == [sum(p.layers[k].count for p in parts if k in p.layers) for k in config.layers]
    for name in config.layers:
        # the same keys: the same values sampled, in the same order (a batch of another size may round differently)
        assert np.allclose(a.samples[name], b.samples[name], atol=1e-5)
        assert np.allclose(a.unit_mean[name], b.unit_mean[name], atol=1e-5)
        assert np.allclose(a.unit_max[name], b.unit_max[name], atol=1e-5)
    for name in a.maps:
        assert np.allclose(a.maps[name], b.maps[name], atol=1e-5)
    for name, line in a.lines.items():
        assert all(np.allclose(v, b.lines[name][k], atol=1e-5) for k, v in line.items())
    assert all(torch.equal(t, b.filters[k][0]) and c == b.filters[k][1] for k, (t, c) in a.filters.items())
    assert one.channels == many.channels == a.channels  # the history, chosen at the first run


def test_the_history_keeps_the_first_runs_channels():
    net = _net()
    probe = ProbeSet(torch.randn(6, 3, 8, 8), torch.arange(6) % 3, torch.arange(6))
    p = FeatureProbe(probe, FeatureConfig({"1": net[1]}, n_channels=2), channels={"1": [5, 4]})
    assert p.run(net, Credit(epoch=0)).channels == {"1": [5, 4]} and p.channels == {"1": [5, 4]}


def test_the_callback_signature_matches_the_options():
    assert signature_mismatches(FeatureMapCallback.__init__, FeatureOptions) == []


def test_a_bad_option_names_itself_and_the_valid_choices():
    with pytest.raises(ValueError, match="Expected `filter_scaling` to be one of 'filter', 'symmetric'; got 'global'"):
        FeatureOptions(filter_scaling="global")
    with pytest.raises(ValueError, match="Expected `hist_values` to be a positive int, got 0"):
        FeatureOptions(hist_values=0)
    assert FeatureOptions(layers="a").layers == ("a",)
    with pytest.raises(TypeError):
        FeatureMapCallback("a", 4, 8, "auto")  # at most three positional arguments
