"""The feature probe (trainviz.probes.features): statistics, channel selection and maps against numpy on
hooked activations, token layers, and the result's record, render and section."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trainviz.core.common import example_indices
from trainviz.core.probeset import ProbeSet
from trainviz.ops.features import (
    select_channels,
)
from trainviz.probes.features import FeatureConfig, FeatureResult, compute


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 7),
        nn.ReLU(),
        nn.Linear(7, 3),
    ).eval()
    with torch.no_grad():
        net[0].bias[:2] = -100.0  # channels 0 and 1 of the first ReLU are dead on any input in [0, 1]
    return net


def _probe(n: int = 10) -> ProbeSet:
    g = torch.Generator().manual_seed(1)
    return ProbeSet(torch.rand(n, 3, 9, 9, generator=g), torch.arange(n) % 3, torch.arange(n) + 100)


def _hooked(net: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
    """Reference activations from plain forward hooks on the whole input at once."""
    modules, out, handles = dict(net.named_modules()), {}, []
    for name in names:
        handles.append(modules[name].register_forward_hook(lambda _m, _i, o, name=name: out.__setitem__(name, o)))
    with torch.no_grad():
        net(x)
    for h in handles:
        h.remove()
    return {k: v.double().numpy() for k, v in out.items()}


def test_statistics_match_numpy_on_captured_activations():
    net, probe = _net(), _probe()
    names = ["1", "3", "7"]  # conv ReLU (N, 6, 9, 9), conv ReLU (N, 5, 4, 4), linear ReLU (N, 7)
    config = FeatureConfig({n: dict(net.named_modules())[n] for n in names}, batch_size=3, hist_values=50)
    result = compute(net, probe, config, epoch=0)
    ref = _hooked(net, probe.images, names)
    for name in names:
        a = ref[name]
        per_unit = a.reshape(a.shape[0], a.shape[1], -1)  # units on axis 1 (channels / features)
        dead = float(np.mean(per_unit.max(axis=(0, 2)) <= 0))
        got = result.per_layer[name]
        assert got["dead_fraction"] == pytest.approx(dead, abs=1e-7)
        assert got["sparsity"] == pytest.approx(float(np.mean(a <= 0)), abs=1e-7)
        assert got["mean"] == pytest.approx(float(a.mean()), rel=1e-5, abs=1e-7)
        assert got["std"] == pytest.approx(float(a.std()), rel=1e-4)  # population std, batches merged
        np.testing.assert_allclose(result.unit_mean[name], per_unit.mean(axis=(0, 2)), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(result.unit_max[name], per_unit.max(axis=(0, 2)), rtol=1e-6)
        assert result.samples[name].size == min(50, a.size)
        assert np.isin(result.samples[name].astype(np.float32), a.astype(np.float32)).all()
    assert result.per_layer["1"]["dead_fraction"] >= 2 / 6  # the two channels killed by their bias


def test_channel_selection_is_the_argsort_of_the_mean_activation():
    net, probe = _net(), _probe()
    config = FeatureConfig({"1": net[1], "3": net[3]}, n_channels=3, n_images=2, batch_size=4)
    result = compute(net, probe, config, epoch=0)
    ref = _hooked(net, probe.images, ["1", "3"])
    for name in ("1", "3"):
        means = ref[name].mean(axis=(0, 2, 3))
        assert result.channels[name] == np.argsort(-means, kind="stable")[:3].tolist()
        # the shown maps: the chosen channels of the shown images, each channel min-max scaled over them
        shown = ref[name][example_indices(probe.labels, 2)][:, result.channels[name]]
        lo, hi = shown.min(axis=(0, 2, 3), keepdims=True), shown.max(axis=(0, 2, 3), keepdims=True)
        scaled = np.where(hi > lo, (shown - lo) / np.where(hi > lo, hi - lo, 1), 0.0)  # a flat channel is 0
        np.testing.assert_allclose(result.maps[name], scaled, atol=1e-5)
    means = torch.tensor([0.3, 0.9, 0.9, -1.0, 0.5])
    assert select_channels(means, 4).tolist() == np.argsort(-means.numpy(), kind="stable")[:4].tolist()
    # given channels (the first run's choice) are kept
    kept = compute(net, probe, config, epoch=1, channels={"1": [5, 4, 0]})
    assert kept.channels["1"] == [5, 4, 0] and kept.channels["3"] == result.channels["3"]


def test_token_layer_maps_go_through_to_feature_maps():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)  # 16 patches of a 16x16 image
            self.block = nn.Identity()
            self.head = nn.Linear(8, 2)

        def forward(self, x):
            t = self.embed(x).flatten(2).transpose(1, 2)
            t = self.block(torch.cat([t.mean(1, keepdim=True), t], 1))  # a class token first: (N, 17, 8)
            return self.head(t[:, 0])

    net = Tokens().eval()
    probe = ProbeSet(torch.rand(6, 3, 16, 16), torch.tensor([0, 1] * 3), torch.arange(6))
    result = compute(net, probe, FeatureConfig({"block": net.block}, n_channels=3, n_images=2), epoch=0)
    assert result.maps["block"].shape == (2, 3, 4, 4)
    ref = _hooked(net, probe.images, ["block"])["block"]
    assert result.per_layer["block"]["mean"] == pytest.approx(float(ref.mean()), rel=1e-5)
    patch_means = ref[:, 1:].mean(axis=(0, 1))  # channel selection on the maps (class token dropped)
    assert result.channels["block"] == np.argsort(-patch_means, kind="stable")[:3].tolist()


def test_result_record_round_trip_render_and_section():
    net, probe = _net(), _probe(6)
    config = FeatureConfig(
        {"1": net[1], "7": net[7]}, filter_layers={"0": net[0], "2": net[2]}, rgb_filters="0", n_channels=2
    )
    result = compute(net, probe, config, epoch=2)
    assert FeatureResult.from_record(result.record()) == result
    assert set(result.channels) == {"1"}  # the linear output (N, 7) has no maps: distributions only
    images = result.render()
    assert set(images) == {"0/filters", "2/filters", "1/overlay", "1/maps", "1/histogram", "7/histogram"}
    assert result.filters["0"][0].shape == (6, 3, 3, 3) and result.filters["2"][0].shape == (5 * 6, 1, 3, 3)
    assert set(result.histograms()) == {"1/activations", "7/activations"}
    section = result.section()
    shown = {name for gallery in section["galleries"] for name in gallery["images"]}
    assert shown == set(images)
    assert {s["key"][0] for c in section["curves"] for s in c["series"]} == set(result.scalars())
    assert set(result.arrays()["features"]) >= {"hist/1", "maps/1", "channels/1", "unit_max/7", "shown_ids"}
