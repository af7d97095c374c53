"""The one place the report pages are escaped and assembled: HTML and JSON escaping, figures as JSON blocks, the
key/value tables, the plotly.js tag and the page itself (:data:`~trainviz.report.template.PAGE`). Torch-free.

Every page (a run's report, a comparison) is built from parts that went through :func:`esc` (text in HTML),
:func:`plotly_text` (text in plotly labels) or :func:`script_json` (JSON inside ``<script>``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainviz.report.template import PAGE
from trainviz.sinks.artifacts import atomic_write, write_plotly_js

__all__ = [
    "Figures",
    "esc",
    "figure_json",
    "flatten",
    "key_table",
    "plotly_script",
    "plotly_text",
    "script_json",
    "write_page",
]


def esc(value: Any) -> str:
    """Text for HTML (elements and attribute values)."""
    return html.escape(str(value), quote=True)


def plotly_text(value: Any) -> str:
    """A user string as plotly shows it literally (plotly reads a subset of HTML in its labels)."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _safe(text: str) -> str:
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def script_json(obj: Any) -> str:
    """JSON that is safe inside a ``<script>`` element (``<``, ``>``, ``&`` as unicode escapes)."""
    return _safe(json.dumps(obj, allow_nan=False))


def figure_json(fig: Any) -> str:
    """A figure (plain JSON, or a plotly figure object) as JSON that is safe inside a ``<script>`` element."""
    if isinstance(fig, Mapping):
        return script_json(fig)
    from plotly.utils import PlotlyJSONEncoder

    return _safe(json.dumps(fig.to_plotly_json(), cls=PlotlyJSONEncoder))


class Figures:
    """The eagerly drawn figures of a page, as ``<script type="application/json" id="fig-N">`` blocks."""

    def __init__(self) -> None:
        self.blocks: list[str] = []

    def add(self, fig: Any) -> str:
        ident = f"fig-{len(self.blocks)}"
        self.blocks.append(f'<script type="application/json" id="{ident}">{figure_json(fig)}</script>')
        return ident

    def figure(self, fig: Any, caption: str = "") -> str:
        """A ``<figure>`` drawing ``fig``, with its (escaped) caption."""
        ident = self.add(fig)
        return f'<figure><div class="plot" data-figure="{ident}"></div><figcaption>{esc(caption)}</figcaption></figure>'


def flatten(prefix: str, value: Any, rows: list[tuple[str, Any]]) -> None:
    """``rows`` extended with ``(dotted key, value)`` for every leaf of a nested mapping."""
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    else:
        rows.append((prefix, value))


def key_table(rows: Sequence[tuple[Any, Any]], cls: str = "kv") -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="{esc(cls)}">{body}</table>'


def plotly_script(plotlyjs: str, folder: Path) -> str:
    """The page's plotly.js tag: inline, or ``plotly.min.js`` written once into ``folder`` and loaded from it."""
    if plotlyjs == "inline":
        import plotly.offline

        return f"<script>{plotly.offline.get_plotlyjs()}</script>"
    write_plotly_js(folder)
    return '<script src="plotly.min.js"></script>'


def check_plotlyjs(plotlyjs: str) -> None:
    if plotlyjs not in ("directory", "inline"):
        raise ValueError(f"Expected `plotlyjs` to be one of 'directory', 'inline'; got {plotlyjs!r}.")


def write_page(
    out: Path,
    *,
    title: str,
    run_name: str,
    run_path: str,
    nav: Sequence[tuple[str, str]],
    sections: str,
    data: str,
    plotlyjs: str,
    headline: str = "",
) -> Path:
    """Write a page: ``title``, ``run_name``, ``run_path`` and the ``nav`` anchors and labels are text (escaped
    here); ``headline``, ``sections`` and ``data`` are HTML already escaped by whoever made them."""
    page = PAGE.substitute(
        title=esc(title),
        run_name=esc(run_name),
        run_path=esc(run_path),
        headline=headline,
        nav="".join(f'<a href="#{esc(key)}">{esc(label)}</a>' for key, label in nav),
        plotly=plotly_script(plotlyjs, out.parent),
        sections=sections,
        data=data,
    )
    atomic_write(out, page.encode("utf-8"))
    return out
