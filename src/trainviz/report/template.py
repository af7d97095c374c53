"""The report page: one HTML skeleton (a ``string.Template``); every substituted value is escaped by the builder.

Figures travel as JSON in ``<script type="application/json">`` elements and are drawn by a short loader;
``body[data-rendered]`` counts the figures drawn (the browser test reads it).
"""

from __future__ import annotations

from string import Template

__all__ = ["PAGE"]

PAGE = Template(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1200px; \
padding: 0 24px 48px; color: #1d2433; }
header { border-bottom: 1px solid #d8dce6; margin-bottom: 12px; }
h1 { font-size: 1.5rem; margin: 24px 0 4px; }
h2 { font-size: 1.2rem; margin-top: 32px; border-bottom: 1px solid #eef0f5; padding-bottom: 4px; }
nav a { margin-right: 14px; color: #2c5fd4; text-decoration: none; }
.path { color: #69738a; font-size: 0.85rem; word-break: break-all; }
figure { margin: 12px 0 24px; }
figcaption { color: #4b5468; font-size: 0.9rem; margin-top: 4px; }
table.kv { border-collapse: collapse; font-size: 0.85rem; margin: 8px 0; }
table.kv th { text-align: left; font-weight: 600; padding: 2px 16px 2px 0; vertical-align: top; max-width: 460px; \
word-break: break-all; }
table.kv td { padding: 2px 0; font-family: ui-monospace, monospace; word-break: break-all; }
img.grid { max-width: 100%; image-rendering: pixelated; border: 1px solid #eef0f5; }
.note { color: #69738a; font-size: 0.9rem; }
.low-count { color: #8a5a00; }
details.cells summary { cursor: pointer; color: #4b5468; font-size: 0.9rem; }
table.cells { border-collapse: collapse; font-size: 0.8rem; margin: 8px 0; font-family: ui-monospace, monospace; }
table.cells th { text-align: left; font-weight: 600; padding: 2px 10px 2px 0; font-family: system-ui, sans-serif; }
table.cells td { padding: 2px 12px 2px 0; white-space: nowrap; }
.ci { color: #69738a; }
details.tv-section { margin-top: 24px; }
details.tv-section > summary { cursor: pointer; list-style: revert; }
details.tv-section > summary h2 { display: inline; border: none; }
details.tv-section > summary h2 .note { font-weight: 400; margin-left: 8px; }
.tv-gallery { margin: 16px 0 28px; }
.tv-gallery h4, .tv-files h4, .tv-file h4 { margin: 8px 0 4px; }
.tv-controls { font-size: 0.9rem; color: #4b5468; margin: 4px 0; }
.tv-controls input { vertical-align: middle; width: 240px; }
.tv-grid { display: flex; flex-wrap: wrap; gap: 10px; }
.tv-cell { margin: 0; flex: 0 1 360px; max-width: 100%; }
.tv-images .tv-cell img { max-width: 100%; image-rendering: pixelated; border: 1px solid #eef0f5; }
.tv-map { width: 100%; border: 1px solid #eef0f5; }
.tv-full { position: fixed; inset: 0; z-index: 1000; background: #fff; overflow: auto; padding: 12px 20px; margin: 0; }
.tv-files iframe { width: 100%; height: 640px; border: 1px solid #eef0f5; }
.tv-files li { margin: 4px 0; }
details.tv-frame { display: inline-block; vertical-align: top; width: 100%; }
details.tv-frame summary { cursor: pointer; color: #2c5fd4; font-size: 0.85rem; }
</style>
$plotly
</head>
<body>
<header>
<h1>Training report: $run_name</h1>
<p class="path">$run_path</p>
<nav>$nav</nav>
</header>
$headline
$sections
$data
<script>
(function () {
  var drawn = 0;
  document.querySelectorAll("div.plot[data-figure]").forEach(function (div) {
    var fig = JSON.parse(document.getElementById(div.getAttribute("data-figure")).textContent);
    Plotly.newPlot(div, fig.data, fig.layout, {responsive: true, displaylogo: false});
    drawn += 1;
  });
  document.body.setAttribute("data-rendered", String(drawn));
})();
</script>
<script>
(function () {
  /* The callbacks' sections (trainviz.report.sections): drawn when opened. User strings reach the page as
     text only (textContent, escaped JSON, plotly labels with entities). */
  var drawnSections = 0;
  var maps = [];
  window.trainvizMaps = maps;
  function data(el) { return JSON.parse(document.getElementById(el.getAttribute("data-json")).textContent); }
  function mapLayout(w, h, height) {
    return {
      margin: {l: 0, r: 0, t: 0, b: 0}, height: height, dragmode: "zoom",
      xaxis: {range: [0, w], visible: false, constrain: "domain"},
      yaxis: {range: [h, 0], visible: false, scaleanchor: "x", constrain: "domain"},
      images: [{source: "", xref: "x", yref: "y", x: 0, y: 0, sizex: w, sizey: h, xanchor: "left",
                yanchor: "top", sizing: "stretch", layer: "below"}]
    };
  }
  function syncGrid(grid, divs) {
    /* pan and zoom of one map copied to every other map of the grid */
    divs.forEach(function (div) {
      div.on("plotly_relayout", function (ev) {
        if (grid.syncing) { return; }
        var update = {};
        var reset = false;
        ["xaxis", "yaxis"].forEach(function (ax) {
          if (ev[ax + ".range[0]"] !== undefined) {
            update[ax + ".range"] = [ev[ax + ".range[0]"], ev[ax + ".range[1]"]];
          } else if (ev[ax + ".range"]) { update[ax + ".range"] = ev[ax + ".range"].slice(); }
          if (ev[ax + ".autorange"]) { reset = true; }
        });
        if (!reset && !Object.keys(update).length) { return; }
        grid.syncing = true;
        var jobs = divs.filter(function (o) { return o !== div; }).map(function (o) {
          var size = o.tvSize;
          var u = reset ? {"xaxis.range": [0, size[0]], "yaxis.range": [size[1], 0]} : update;
          return Plotly.relayout(o, u);
        });
        if (reset) {
          jobs.push(Plotly.relayout(div, {"xaxis.range": [0, div.tvSize[0]], "yaxis.range": [div.tvSize[1], 0]}));
        }
        Promise.all(jobs).then(function () { grid.syncing = false; }, function () { grid.syncing = false; });
      });
    });
  }
  function gallery(box) {
    var spec = data(box);
    var grid = box.querySelector(".tv-grid");
    var slider = box.querySelector("input.tv-epoch");
    var label = box.querySelector(".tv-epoch-label");
    var cells = spec.items.map(function (item) {
      var cell = document.createElement("figure");
      cell.className = "tv-cell";
      var view;
      if (spec.maps) { view = document.createElement("div"); view.className = "tv-map"; }
      else { view = document.createElement("img"); view.loading = "lazy"; view.alt = item.label; }
      var caption = document.createElement("figcaption");
      caption.textContent = item.label;
      cell.appendChild(view);
      cell.appendChild(caption);
      if (spec.items.length === 1) { cell.style.flexBasis = "100%"; }
      grid.appendChild(cell);
      return {item: item, view: view, drawn: false};
    });
    function height(div, w, h) {
      var full = box.classList.contains("tv-full");
      var width = div.clientWidth || 600;
      return Math.max(120, Math.min(full ? window.innerHeight - 120 : 720, Math.round(width * h / w)));
    }
    function show(k) {
      var epoch = String(spec.epochs[k]);
      label.textContent = "epoch " + epoch;
      grid.syncing = true;
      var jobs = cells.map(function (c) {
        var frame = c.item.frames[epoch];
        if (!spec.maps) {
          c.view.style.visibility = frame ? "visible" : "hidden";
          if (frame) { c.view.src = frame[0]; }
          return null;
        }
        if (!c.drawn) {
          var first = frame || c.item.frames[Object.keys(c.item.frames).pop()];
          var layout = mapLayout(first[1], first[2], height(c.view, first[1], first[2]));
          layout.images[0].source = frame ? frame[0] : "";
          layout.images[0].visible = Boolean(frame);
          c.view.tvSize = [first[1], first[2]];
          c.drawn = true;
          maps.push(c.view);
          var trace = {type: "scatter", x: [0, first[1]], y: [0, first[2]], mode: "markers",
                       marker: {opacity: 0}, hoverinfo: "skip", showlegend: false};
          return Plotly.newPlot(c.view, [trace], layout, {displaylogo: false, responsive: true});
        }
        if (!frame) { return Plotly.relayout(c.view, {"images[0].visible": false}); }
        var u = {"images[0].source": frame[0], "images[0].visible": true,
                 "images[0].sizex": frame[1], "images[0].sizey": frame[2]};
        if (c.view.tvSize[0] !== frame[1] || c.view.tvSize[1] !== frame[2]) {
          c.view.tvSize = [frame[1], frame[2]];
          u["xaxis.range"] = [0, frame[1]];
          u["yaxis.range"] = [frame[2], 0];
        }
        return Plotly.relayout(c.view, u);
      });
      return Promise.all(jobs).then(function () { grid.syncing = false; }, function () { grid.syncing = false; });
    }
    if (slider) { slider.addEventListener("input", function () { show(Number(slider.value)); }); }
    var ready = show(spec.epochs.length - 1);
    if (spec.maps) {
      ready.then(function () { syncGrid(grid, cells.map(function (c) { return c.view; })); });
      var button = box.querySelector(".tv-full-button");
      var resize = function () {
        cells.forEach(function (c) {
          Plotly.relayout(c.view, {height: height(c.view, c.view.tvSize[0], c.view.tvSize[1])});
        });
      };
      button.addEventListener("click", function () {
        box.classList.toggle("tv-full");
        button.textContent = box.classList.contains("tv-full") ? "close full screen (Esc)" : "full screen";
        resize();
      });
      document.addEventListener("keydown", function (ev) {
        if (ev.key === "Escape" && box.classList.contains("tv-full")) { button.click(); }
      });
    }
    return ready;
  }
  function drawSection(section) {
    if (section.getAttribute("data-drawn")) { return; }
    section.setAttribute("data-drawn", "1");
    var jobs = [];
    section.querySelectorAll("div.tv-plot[data-json]").forEach(function (div) {
      var fig = data(div);
      jobs.push(Plotly.newPlot(div, fig.data, fig.layout, {responsive: true, displaylogo: false}));
    });
    section.querySelectorAll("figure.tv-file img[data-src]").forEach(function (img) {
      img.src = img.getAttribute("data-src");
    });
    section.querySelectorAll("div.tv-gallery[data-json]").forEach(function (box) { jobs.push(gallery(box)); });
    Promise.all(jobs).then(function () {
      drawnSections += 1;
      document.body.setAttribute("data-sections-drawn", String(drawnSections));
    });
  }
  document.querySelectorAll("details.tv-section").forEach(function (section) {
    section.addEventListener("toggle", function () { if (section.open) { drawSection(section); } });
    if (section.open) { drawSection(section); }
  });
  document.querySelectorAll("details.tv-frame").forEach(function (frame) {
    frame.addEventListener("toggle", function () {
      var iframe = frame.querySelector("iframe[data-src]");
      if (frame.open && iframe && !iframe.getAttribute("src")) { iframe.src = iframe.getAttribute("data-src"); }
    });
  });
  document.querySelectorAll('nav a[href^="#section-"]').forEach(function (a) {
    a.addEventListener("click", function () {
      var target = document.getElementById(a.getAttribute("href").slice(1));
      if (target) { target.open = true; }
    });
  });
  document.body.setAttribute("data-sections", String(document.querySelectorAll("details.tv-section").length));
})();
</script>
</body>
</html>
"""
)
