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
</style>
$plotly
</head>
<body>
<header>
<h1>Robustness report: $run_name</h1>
<p class="path">$run_path</p>
<nav><a href="#corruptions">Corruptions</a><a href="#curves">Over epochs</a><a href="#classes">Classes</a>\
<a href="#calibration">Calibration</a><a href="#adversarial">Adversarial</a><a href="#examples">Examples</a>\
<a href="#manifest">Manifest</a></nav>
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
</body>
</html>
"""
)
