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
