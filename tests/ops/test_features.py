"""Filters, lines of 2-D units, activation statistics and channel selection against hand-computed and numpy values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trainviz.core.common import example_indices
from trainviz.core.probeset import ProbeSet
from trainviz.ops.features import (
    ActivationStatsAccumulator,
    activation_stats,
    filter_tiles,
    line_segments,
    plot_box,
    scale_filters,
    select_channels,
    unit_view,
)
from trainviz.probes.features import FeatureConfig, FeatureResult, compute
from trainviz.render.features import filter_grid


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


# ---------------------------------------------------------------------------------------------- statistics
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


def test_hand_computed_dead_fraction_and_sparsity():
    # 2 images, 3 channels, 2 positions; channel 1 is never > 0, channel 2 only once
    x = torch.tensor(
        [
            [[1.0, 2.0], [0.0, -1.0], [0.0, 0.0]],
            [[3.0, -2.0], [-5.0, 0.0], [0.0, 4.0]],
        ]
    )[..., None]  # (2, 3, 2, 1)
    s = activation_stats(x)
    assert float(s.dead_fraction) == pytest.approx(1 / 3)
    assert float(s.sparsity) == pytest.approx(8 / 12)  # values <= 0
    assert float(s.mean) == pytest.approx(2 / 12)
    assert float(s.std) == pytest.approx(float(np.std(x.numpy())), rel=1e-6)
    assert s.unit_mean.tolist() == pytest.approx([1.0, -1.5, 1.0])


def test_token_and_vector_outputs_take_units_on_their_feature_axis():
    tokens = torch.randn(4, 17, 6)
    s = activation_stats(tokens)
    np.testing.assert_allclose(s.unit_mean.numpy(), tokens.numpy().mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)
    assert unit_view(tokens).shape == (4, 6, 17)
    vectors = torch.tensor([[1.0, -1.0], [0.5, 0.0]])
    assert float(activation_stats(vectors).dead_fraction) == 0.5


def test_accumulator_over_batches_agrees_with_the_whole_population():
    x = torch.randn(20, 4, 5, 5) * 3 + 1
    whole = activation_stats(x, max_values=10**6)
    acc = ActivationStatsAccumulator(max_values=10**6)
    for part in x.split(7):
        acc.update(part)
    batched = acc.result()
    for field in ("dead_fraction", "sparsity", "mean", "std"):
        assert torch.allclose(getattr(batched, field), getattr(whole, field), rtol=1e-5, atol=1e-6), field
    assert torch.allclose(batched.unit_mean, whole.unit_mean, atol=1e-5)
    assert sorted(batched.sample.tolist()) == pytest.approx(sorted(x.flatten().tolist()))  # all kept when few


def test_histogram_sample_is_fixed_size_seeded_and_leaves_the_global_rng():
    x = torch.randn(8, 16, 10, 10)
    state = torch.random.get_rng_state()
    a = activation_stats(x, max_values=300, seed=3).sample
    assert torch.equal(torch.random.get_rng_state(), state)
    b = activation_stats(x, max_values=300, seed=3).sample
    c = activation_stats(x, max_values=300, seed=4).sample
    assert a.shape == (300,) and torch.equal(a, b) and not torch.equal(a, c)
    assert np.isin(a.numpy(), x.numpy()).all()
    assert len(set(a.tolist())) == 300  # without replacement
    assert abs(float(a.mean()) - float(x.mean())) < 0.25  # a uniform sample of a standard normal


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


# ---------------------------------------------------------------------------------------------- filters
def test_rgb_filter_grid_pixel_values_for_known_weights():
    conv = nn.Conv2d(3, 2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2) - 10)
    tiles, ncols = filter_tiles(conv.weight, n_filters=5)  # 3 input channels: RGB
    assert tiles.shape == (2, 3, 2, 2) and ncols == 2
    # per filter: filter 0 holds -10..1, filter 1 holds 2..13; each maps min..max onto 0..1
    expected = (torch.arange(12, dtype=torch.float32) / 11).reshape(3, 2, 2)
    assert torch.allclose(tiles[0], expected) and torch.allclose(tiles[1], expected)
    grid = filter_grid(tiles, ncols, min_size=4, pad=1)  # each 2x2 tile upscaled x2, 1 px white padding
    assert grid.shape == (1 + 4 + 1, 1 + 2 * (4 + 1), 3)
    for row, col in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        for tile in (0, 1):
            y, x = 1 + 2 * row, 1 + tile * 5 + 2 * col
            want = [round(255 * float(expected[c, row, col])) for c in range(3)]
            assert grid[y, x].tolist() == want and grid[y + 1, x + 1].tolist() == want
    assert grid[0].min() == 255 and grid[:, 5].min() == 255  # the padding


def test_grayscale_filter_tiles_are_the_first_channels_of_the_first_filters():
    w = torch.randn(6, 4, 3, 3)
    tiles, ncols = filter_tiles(w, n_filters=2, filter_channels=3)
    assert tiles.shape == (6, 1, 3, 3) and ncols == 3
    for f in range(2):
        lo, hi = w[f].min(), w[f].max()  # scaled over the whole filter, all 4 input channels
        for c in range(3):
            assert torch.allclose(tiles[f * 3 + c, 0], (w[f, c] - lo) / (hi - lo))
    sym = scale_filters(w, "symmetric")
    assert torch.allclose(sym, 0.5 + 0.5 * w / w.abs().max())
    assert float(scale_filters(torch.zeros(1, 1, 2, 2)).unique()) == 0.5


# ---------------------------------------------------------------------------------------------- lines
def test_line_end_points_lie_on_the_line_and_on_the_box():
    torch.manual_seed(0)
    w, b = torch.randn(200, 2), torch.randn(200) * 0.5
    box = (-1.5, 2.0, -1.0, 1.0)
    segments, visible = line_segments(w, b, box)
    assert visible.float().mean() > 0.5
    ends = segments[visible].double()  # (K, 2, 2)
    wv, bv = w[visible].double(), b[visible].double()
    residual = (ends * wv[:, None]).sum(-1) + bv[:, None]
    assert residual.abs().max() < 1e-5
    x, y = ends[..., 0], ends[..., 1]
    tol = 1e-5
    assert ((x >= box[0] - tol) & (x <= box[1] + tol) & (y >= box[2] - tol) & (y <= box[3] + tol)).all()
    on_side = (
        ((x - box[0]).abs() < tol)
        | ((x - box[1]).abs() < tol)
        | ((y - box[2]).abs() < tol)
        | ((y - box[3]).abs() < tol)
    )
    assert on_side.all()  # the whole chord, from side to side
    # a grid of points along each segment: inside the box, on the line
    t = torch.linspace(0, 1, 11, dtype=torch.float64)[None, :, None]
    along = ends[:, :1] + t * (ends[:, 1:] - ends[:, :1])
    assert ((along * wv[:, None]).sum(-1) + bv[:, None]).abs().max() < 1e-5
    # lines that miss the box, and w = 0, are not visible
    _, far = line_segments(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([-10.0, 1.0]), box)
    assert far.tolist() == [False, False]


def test_known_lines():
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    b = torch.tensor([-0.5, 1.0, 0.0])
    segments, visible = line_segments(w, b, (-1.0, 1.0, -1.0, 1.0))
    assert visible.all()
    assert sorted(map(tuple, segments[0].tolist())) == [(0.5, -1.0), (0.5, 1.0)]  # x = 0.5
    assert sorted(map(tuple, segments[1].tolist())) == [(-1.0, -0.5), (1.0, -0.5)]  # y = -0.5
    assert sorted(map(tuple, segments[2].tolist())) == [(-1.0, 1.0), (1.0, -1.0)]  # through two corners
    assert plot_box(torch.tensor([[0.0, 0.0], [1.0, 2.0]])) == pytest.approx((-0.1, 1.1, -0.2, 2.2))


# ---------------------------------------------------------------------------------------------- result
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
