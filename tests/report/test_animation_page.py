"""The embedding's animation pages are rendered from a plain figure dict, unvalidated (fit-end time): in headless
Chromium the page shows the same figure as the validated one (its traces, ids, frames and axis ranges)."""

from __future__ import annotations

import json

import chromium
import numpy as np
import pytest

from trainviz.render.embedding import animation_figure, animation_spec, figure_html
from trainviz.sinks.artifacts import write_plotly_js

needs_chromium = pytest.mark.skipif(
    not chromium.available(), reason="needs Debian's chromium (make browser / apt-get install chromium)"
)

READ = """
var gd = document.querySelector('.plotly-graph-div');
document.documentElement.setAttribute('data-figure', JSON.stringify({
  traces: gd.data.length,
  ids: gd.data.slice(0, 6).map(function (t) { return t.ids; }),
  symbols: gd.data[0].marker.symbol,
  frames: gd._transitionData._frames.map(function (f) { return f.name; }),
  frameIds: gd._transitionData._frames[1].data[0].ids,
  xrange: gd._fullLayout.xaxis.range,
  yrange2: gd._fullLayout.yaxis2.range
}));
"""


@needs_chromium
def test_a_page_from_the_unvalidated_spec_shows_the_validated_figure(tmp_path):
    rng = np.random.default_rng(0)
    labels, ids = np.array([0, 0, 1, 1, 2]), np.array([10, 11, 12, 13, 14])
    frames = {0: rng.normal(size=(5, 2)), 3: 5 + 10 * rng.normal(size=(5, 2))}
    preds = {0: np.array([0, 1, 1, 1, 2]), 3: labels}
    args = ({"a": frames, "b": frames}, labels, ids, ["x", "y", "z"])
    validated = animation_figure(*args, predictions=preds, title="t")
    spec = animation_spec(*args, predictions=preds, title="t")
    write_plotly_js(tmp_path)
    seen = {}
    for name, fig in (("validated", validated), ("spec", spec)):
        page = tmp_path / f"{name}.html"
        page.write_text(figure_html(fig), "utf-8")
        loaded = chromium.load(page, script=READ)
        assert not loaded.errors, loaded.errors
        seen[name] = json.loads(loaded.root_attribute("data-figure"))
    assert seen["spec"] == seen["validated"]
    shown = seen["spec"]
    assert shown["traces"] == 2 * 3 + 3 and shown["frames"] == ["epoch 0", "epoch 3"]  # panels x classes, legends
    assert shown["ids"][0] == ["10", "11"] and shown["frameIds"] == ["10", "11"]
    assert shown["symbols"] == ["circle", "circle-open"]  # id 11 misclassified at epoch 0
    everything = np.concatenate(list(frames.values()))
    assert shown["xrange"][0] <= everything[:, 0].min() and shown["xrange"][1] >= everything[:, 0].max()
    assert shown["yrange2"][0] <= everything[:, 1].min() and shown["yrange2"][1] >= everything[:, 1].max()


@pytest.mark.parametrize("titles", [["pca"], ["pca", "umap"], ["a", "b", "c", "d"]])
def test_the_hand_layout_is_make_subplots_layout(titles):
    from plotly.subplots import make_subplots

    from trainviz.render.embedding import subplot_layout

    reference = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.04)
    expected = reference.to_dict()["layout"]
    expected.pop("template")
    assert _close(subplot_layout(titles), expected), (subplot_layout(titles), expected)


def _close(got, expected):
    """Nested equality with floats compared to 1e-12."""
    if isinstance(expected, dict):
        same_keys = isinstance(got, dict) and got.keys() == expected.keys()
        return same_keys and all(_close(got[k], v) for k, v in expected.items())
    if isinstance(expected, (list, tuple)):
        return len(got) == len(expected) and all(_close(g, e) for g, e in zip(got, expected))
    if isinstance(expected, float):
        return abs(got - expected) < 1e-12
    return got == expected


def test_the_page_template_is_plotly_white_where_it_sets_something():
    import plotly.io as pio

    from trainviz.render.embedding import WHITE

    reference = pio.templates["plotly_white"].to_plotly_json()["layout"]
    for key, value in WHITE["layout"].items():
        if isinstance(value, dict):
            assert {k: reference[key][k] for k in value} == value, key
        else:
            assert reference[key] == value, key
    spec = animation_spec({"a": {0: np.zeros((3, 2)), 1: np.ones((3, 2))}}, np.array([0, 1, 1]), np.arange(3))
    assert spec["layout"]["template"] is WHITE
    validated = animation_figure({"a": {0: np.zeros((3, 2))}}, np.array([0, 1, 1]), np.arange(3))  # plotly checks it
    assert validated.layout.template.layout.plot_bgcolor == "white" and validated.layout.plot_bgcolor is None
