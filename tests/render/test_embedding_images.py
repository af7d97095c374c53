"""The embedding pictures (trainviz.render.embedding): scatter, depth panels and the plotly animation."""

from __future__ import annotations

import numpy as np
import pytest

from trainviz.render.embedding import PALETTE, animation_figure, depth_image, scatter_image


def test_scatter_image_puts_classes_where_their_points_are_with_y_up():
    frame = np.array([[-1.0, -1.0], [1.0, 1.0]])
    img = scatter_image(frame, np.array([0, 1]), ["low", "high"], size=100)
    plot = img[16 : 16 + 100, :100]  # below the title line, left of the legend
    has = lambda part, c: bool((part == np.array(PALETTE[c], np.uint8)).all(-1).any())  # noqa: E731
    lower_left, upper_right = plot[50:, :50], plot[:50, 50:]
    assert has(lower_left, 0) and not has(lower_left, 1) and has(upper_right, 1) and not has(upper_right, 0)
    assert has(img[:, 100:], 0) and has(img[:, 100:], 1)  # legend swatches
    ring = scatter_image(frame, np.array([0, 1]), wrong=np.array([True, False]), size=100)[16:116, :100]
    centre = ring[50:, :50][np.nonzero((ring[50:, :50] == PALETTE[0]).all(-1))]
    assert len(centre) and len(centre) < (plot[50:, :50] == PALETTE[0]).all(-1).sum()  # a ring has fewer pixels


def test_depth_image_has_one_panel_per_layer_and_rejects_bad_shapes():
    f = np.random.default_rng(0).normal(size=(20, 2))
    one, three = (
        depth_image({"a": f}, np.arange(20) % 2, legend=False),
        depth_image({"a": f, "b": f, "c": f}, np.arange(20) % 2, legend=False),
    )
    assert three.shape[1] == 3 * one.shape[1] + 2 * 6
    with pytest.raises(ValueError, match=r"frame of shape \(20, 2\)"):
        depth_image({"a": f[:5]}, np.arange(20) % 2)
    with pytest.raises(ValueError, match="labels"):
        depth_image({"a": f}, np.arange(20) - 1)


def test_animation_keeps_ids_and_axis_ranges_fixed_and_shows_predictions():
    rng = np.random.default_rng(0)
    labels, ids = np.array([0, 0, 1, 1, 2]), np.array([10, 11, 12, 13, 14])
    frames = {0: rng.normal(size=(5, 2)), 3: 5 + 10 * rng.normal(size=(5, 2))}
    preds = {0: np.array([0, 1, 1, 1, 2]), 3: labels}
    fig = animation_figure({"a": frames, "b": frames}, labels, ids, ["x", "y", "z"], predictions=preds, title="t")
    assert [f.name for f in fig.frames] == ["epoch 0", "epoch 3"]
    point_traces = len(fig.frames[0].data)
    assert point_traces == 2 * 3  # panels x classes
    for i in range(point_traces):
        assert fig.data[i].ids == fig.frames[0].data[i].ids == fig.frames[1].data[i].ids
    assert fig.frames[0].data[0].ids == ("10", "11")
    assert fig.frames[0].data[0].marker.symbol == ("circle", "circle-open")  # id 11 is misclassified at epoch 0
    assert "prediction y" in fig.frames[0].data[0].text[1] and fig.frames[1].data[0].marker.symbol == (
        "circle",
        "circle",
    )
    everything = np.concatenate(list(frames.values()))
    for axis in (fig.layout.xaxis, fig.layout.xaxis2):
        assert axis.range[0] <= everything[:, 0].min() and axis.range[1] >= everything[:, 0].max()
    assert fig.layout.yaxis.range[0] <= everything[:, 1].min() and fig.layout.yaxis.range[1] >= everything[:, 1].max()
    with pytest.raises(ValueError, match="same epochs|at epochs"):
        animation_figure({"a": frames, "b": {0: frames[0]}}, labels, ids)
