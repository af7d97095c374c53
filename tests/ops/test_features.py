"""Filters, lines of 2-D units, activation statistics and channel selection against hand-computed and numpy values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainviz.ops.features import (
    ActivationStatsAccumulator,
    activation_stats,
    filter_tiles,
    line_segments,
    plot_box,
    scale_filters,
    unit_view,
)


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


# ---------------------------------------------------------------------------------------------- filters
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
