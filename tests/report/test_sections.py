"""The callbacks' report sections (``<callback>/section.json`` from ``Result.section()``): discovered and drawn
from the artifacts of real demo runs (both models) with no console error, user strings shown as text, and the
detailed view's synchronised zoom, in headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import chromium
import numpy as np
import pytest
from PIL import Image

from trainviz.cli import main
from trainviz.probes.dynamics_result import DynamicsResult
from trainviz.report import build_report
from trainviz.report.sections import discover, png_size

needs_chromium = pytest.mark.skipif(
    not chromium.available(), reason="needs Debian's chromium (make browser / apt-get install chromium)"
)

EVIL_CLASS = "<script>alert(1)</script>"
EVIL_LAYER = 'conv"<i>x'
EVIL_RUN = "<b>run"

# Opens every section, waits, then zooms the first map of the first grid of at least two maps and records the
# axis ranges of the second map before and after, the drawn counts and the images that failed to load.
OPEN_AND_ZOOM = """
(function () {
  var root = document.documentElement;
  document.querySelectorAll("details").forEach(function (d) { d.open = true; });
  setTimeout(function () {
    var grids = Array.prototype.filter.call(document.querySelectorAll(".tv-maps .tv-grid"), function (g) {
      return g.querySelectorAll(".tv-map").length >= 2;
    });
    var out = {grids: grids.length, maps: document.querySelectorAll(".tv-map").length};
    var broken = Array.prototype.filter.call(document.querySelectorAll(".tv-images img, .tv-file img"),
      function (img) { return !(img.naturalWidth > 0); });
    out.images = document.querySelectorAll(".tv-images img, .tv-file img").length;
    out.broken = broken.map(function (img) { return img.getAttribute("src"); });
    out.layoutImages = document.querySelectorAll(".tv-map image").length;
    if (!grids.length) { root.setAttribute("data-test", JSON.stringify(out)); return; }
    var maps = grids[0].querySelectorAll(".tv-map");
    out.before = [maps[1].layout.xaxis.range.slice(), maps[1].layout.yaxis.range.slice()];
    Plotly.relayout(maps[0], {"xaxis.range": [3, 17], "yaxis.range": [19, 2]}).then(function () {
      setTimeout(function () {
        out.after = [maps[1].layout.xaxis.range.slice(), maps[1].layout.yaxis.range.slice()];
        out.last = [maps[maps.length - 1].layout.xaxis.range.slice()];
        root.setAttribute("data-test", JSON.stringify(out));
      }, 500);
    });
  }, 4000);
})();
"""


def _open_all(page: Path) -> tuple[chromium.Page, dict]:
    loaded = chromium.load(page, script=OPEN_AND_ZOOM)
    result = loaded.root_attribute("data-test")
    assert result is not None, loaded.console
    return loaded, json.loads(result)


@pytest.fixture(scope="module", params=["cnn", "classmap"])
def demo_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"sections-{request.param}")
    args = ["demo", "--small", "--epochs", "2", "--out", str(out), "--no-progress", "--model", request.param]
    assert main(args) == 0
    return request.param, out / "version_0"


def test_every_callback_declares_its_section(demo_run):
    model, run = demo_run
    names = [s.name for s in discover(run / "trainviz")]
    decoder = ["decoder_maps"] if model == "classmap" else []
    expected = ["dynamics", "embedding", "cam", "features", "saliency", *decoder, "maxact", "robustness"]
    assert names == expected  # in each spec's order; robustness declares its trajectories, the manifest is the report's
    for section in discover(run / "trainviz"):
        assert section.spec["version"] == 1 and section.spec["title"]


@needs_chromium
def test_every_section_is_drawn_without_console_errors(demo_run, tmp_path):
    model, run = demo_run
    page = build_report(run, tmp_path / "site" / "index.html")  # elsewhere: images linked back to the run
    text = page.read_text()
    n = len(discover(run / "trainviz"))
    assert text.count('<details class="tv-section"') == n
    assert 'class="plot" data-figure=' in text  # robustness keeps its own figures
    loaded, result = _open_all(page)
    assert loaded.console == [] and loaded.errors is None and loaded.dialogs is None
    assert f'data-sections-drawn="{n}"' in loaded.dom
    n_figures = text.count('class="plot" data-figure=')
    assert f'data-rendered="{n_figures}"' in loaded.dom
    for name in ("dynamics", "embedding", "cam", "features", "saliency", "maxact"):
        section = loaded.dom[loaded.dom.index(f'data-section="{name}"') :]
        section = section[: section.index("</details>")]
        assert 'class="main-svg"' in section, name
    assert result["broken"] == [] and result["images"] > 0
    assert result["layoutImages"] == result["maps"] > 0  # every map shows its picture
    assert "Evolution" in loaded.dom and "depth_pca.html" in loaded.dom
    if model == "classmap":
        assert "Formation epoch per class" in text and "Decoder maps" in loaded.dom


@needs_chromium
def test_pan_and_zoom_are_synchronised_across_a_grid_of_maps(demo_run, tmp_path):
    _, run = demo_run
    page = build_report(run)
    _, result = _open_all(page)
    assert result["grids"] >= 1  # the CAM layers (and the embedding frames)
    assert result["before"][0] != [3, 17]
    assert result["after"] == [[3, 17], [19, 2]]
    assert result["last"] == [[3, 17]]


def _png(path: Path, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (np.arange(size[0] * size[1] * 3) % 251).astype(np.uint8).reshape(size[1], size[0], 3)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def hostile_run(tmp_path):
    """A run folder named ``<b>run`` with hand-written sections: the dynamics section of real results whose
    class names hold a script, and a CAM-like section whose layer has ``"`` and ``<`` in its name."""
    from trainviz.probes.cam import CAMProbeResult

    root = tmp_path / EVIL_RUN / "trainviz"
    names = [EVIL_CLASS, "square"]
    dyn = root / "dynamics"
    dyn.mkdir(parents=True)
    results = [
        DynamicsResult(
            epoch=e, accuracy=0.5 + e / 4, per_class_accuracy={EVIL_CLASS: 0.25 * e, "square": 0.5}, class_names=names
        )
        for e in (0, 1)
    ]
    (dyn / "metrics.jsonl").write_text("".join(json.dumps(r.record()) + "\n" for r in results))
    (dyn / "section.json").write_text(json.dumps(results[-1].section()))
    for e in (0, 1):
        _png(dyn / f"epoch_{e:04d}" / "confusion_matrix.png")
        _png(dyn / f"epoch_{e:04d}" / "probabilities.png")
    cam = root / "cam"
    cam.mkdir()
    per_map = {EVIL_LAYER: {"pointing_game": 0.5}, "aggregate": {"pointing_game": 0.75}}
    result = CAMProbeResult(epoch=1, target_probability=0.4, pointing_game_chance=0.2, per_map=per_map)
    (cam / "metrics.jsonl").write_text(json.dumps(result.record()) + "\n")
    spec = result.section()
    spec["title"] = f"CAM {EVIL_CLASS}"
    (cam / "section.json").write_text(json.dumps(spec))
    for key in per_map:
        _png(cam / "epoch_0001" / key / "overlay.png")
    _png(cam / "epoch_0001" / "evolution.png")
    (cam / f"{EVIL_LAYER}.html").write_text("<!DOCTYPE html><p>frames</p>")
    spec["files"].append({"title": "pages", "glob": "*.html", "kind": "html"})
    (cam / "section.json").write_text(json.dumps(spec))
    return tmp_path / EVIL_RUN


def test_hostile_strings_are_escaped_in_the_html(hostile_run):
    text = build_report(hostile_run).read_text()
    assert EVIL_CLASS not in text and EVIL_RUN not in text and EVIL_LAYER not in text
    assert "&lt;b&gt;run" in text and "CAM &lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "conv%22%3Ci%3Ex/overlay.png" in text  # the layer's folder, URL-quoted
    assert "\\u0026lt;script\\u0026gt;alert(1)" in text  # plotly labels: entities, then JSON-escaped


@needs_chromium
def test_hostile_strings_are_shown_as_text_and_no_script_runs(hostile_run):
    page = build_report(hostile_run)
    loaded, result = _open_all(page)
    assert loaded.dialogs is None and loaded.errors is None and loaded.console == []
    assert "<script>alert(1)</script>" not in loaded.dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in loaded.dom  # legend, title: visible as text
    assert html_text(EVIL_LAYER) in loaded.dom  # the map's caption
    assert "&lt;b&gt;run" in loaded.dom
    assert (
        result["broken"] == [] and result["layoutImages"] == result["maps"] == 3
    )  # the confusion matrix, the two CAM maps
    assert result["after"] == [[3, 17], [19, 2]]
    assert re.search(r"<iframe[^>]*conv%22%3Ci%3Ex\.html", loaded.dom)


def html_text(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def test_png_size_reads_the_header(tmp_path):
    _png(tmp_path / "a.png", (17, 9))
    assert png_size(tmp_path / "a.png") == (17, 9)
    (tmp_path / "b.png").write_bytes(b"not a png at all, really not")
    assert png_size(tmp_path / "b.png") is None


def test_a_section_without_artifacts_still_builds(tmp_path):
    folder = tmp_path / "run" / "trainviz" / "thing"
    folder.mkdir(parents=True)
    (folder / "section.json").write_text(json.dumps({"title": "Thing", "curves": [{"series": [{"key": ["x"]}]}]}))
    (folder / "metrics.jsonl").write_text('{"epoch": 0, "x": 1}\nnot json\n')
    text = build_report(tmp_path / "run").read_text()
    assert 'data-section="thing"' in text and "Thing" in text
