"""The report's generic sections: every ``trainviz/<callback>/section.json`` (written by
:meth:`Sink.write <trainviz.sinks.Sink.write>` from :meth:`Result.section <trainviz.core.result.Result.section>`)
drawn from the run's artifacts alone, with no list of callbacks here. Torch-free.

A capability whose result type draws its part from all its records (:data:`trainviz.report.run.REPORTED`; the
robustness report, built also for runs written before its ``section.json`` existed) returns from
``report_section(results, folder)`` a dict: ``headline`` (HTML), ``summary`` (``summary.json``) and ``parts``, a
list of ``{"group", "heading", "caption", "figure"}`` (a plotly figure, drawn at once) or ``{"group", "heading",
"html"}`` (HTML it escaped), drawn in order by :func:`render_parts`, one ``<section id=group>`` per group.

A section is a ``<details>`` element whose figures are drawn and images loaded when it is opened (lazy); its
curves come from the callback's records, its galleries from ``epoch_XXXX/<name>.png`` with an epoch slider (maps
in the detailed view: full screen, pan and zoom synchronised across the grid), its fit-end files are shown or
linked (HTML pages load in an iframe on demand). Images are referenced by relative links, not copied.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from trainviz.report.page import esc, plotly_text, script_json
from trainviz.report.run import SPEC_FILE, read_records

__all__ = ["Section", "discover", "render_parts", "render_sections"]

PROGRESS_SECTIONS = 4  # progress lines on stderr above this many sections ...
PROGRESS_EPOCHS = 20  # ... or epochs


@dataclass
class Section:
    """One callback's section: its folder and its spec (see :meth:`trainviz.core.result.Result.section`)."""

    folder: Path
    spec: dict[str, Any]

    @property
    def name(self) -> str:
        return self.folder.name

    def epochs(self) -> list[int]:
        return sorted(int(p.name[6:]) for p in self.folder.glob("epoch_*") if p.is_dir() and p.name[6:].isdigit())

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.folder / f"{self.spec.get('records', 'metrics')}.jsonl")


def discover(root: Path) -> list[Section]:
    """Every ``<root>/<folder>/section.json`` that parses as a spec with a title, in spec ``order``."""
    found = []
    for path in sorted(root.glob(f"*/{SPEC_FILE}")):
        try:
            spec = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(spec, dict) and isinstance(spec.get("title"), str):
            found.append(Section(path.parent, spec))
    return sorted(found, key=lambda s: (s.spec.get("order", 100), s.name))


def _url(path: Path, base: Path) -> str:
    rel = os.path.relpath(path, base)
    return quote(rel.replace(os.sep, "/"))


def png_size(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from a PNG's header, or ``None`` if it is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


# figures ---------------------------------------------------------------------------------------------


def _lookup(record: dict[str, Any], key: Sequence[str]) -> float | None:
    value: Any = record
    for part in key:
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def curve_figure(item: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A plotly figure (plain JSON) of ``item["series"]`` over the records' epochs, or ``None`` without data."""
    epochs = [r["epoch"] for r in records]
    traces = []
    for series in item.get("series", []):
        values = [_lookup(r, series.get("key", [])) for r in records]
        if any(v is not None for v in values):
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": plotly_text(series.get("name", "")),
                    "x": epochs,
                    "y": values,
                    **({"connectgaps": True} if item.get("connect_gaps") else {}),
                    "hovertemplate": "epoch %{x}: %{y:.4g}<extra>%{fullData.name}</extra>",
                }
            )
    if not traces:
        return None
    yaxis: dict[str, Any] = {"title": {"text": plotly_text(item.get("y", ""))}}
    if item.get("y_range"):
        yaxis["range"] = list(item["y_range"])
    return {
        "data": traces,
        "layout": {
            "title": {"text": plotly_text(item.get("title", ""))},
            "xaxis": {
                "title": {"text": "epoch"},
                "tickformat": "d",
                "dtick": max(1, (max(epochs) - min(epochs)) // 10),
            },
            "yaxis": yaxis,
            "height": 340,
            "margin": {"l": 60, "r": 20, "t": 50, "b": 45},
            "showlegend": len(traces) > 1,
        },
    }


def bars_figure(item: dict[str, Any], folder: Path) -> dict[str, Any] | None:
    """A bar chart of the mapping at ``item["key"]`` of the document ``item["document"]`` (``None`` values: no
    bar), or ``None`` when the document is missing."""
    path = folder / str(item.get("document", ""))
    if not path.is_file():
        return None
    try:
        value: Any = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError:
        return None
    for part in item.get("key", []):
        value = value.get(part) if isinstance(value, dict) else None
    if not isinstance(value, dict) or not value:
        return None
    names = [plotly_text(k) for k in value]
    numbers = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else None for v in value.values()]
    text = ["" if v is not None else "not yet" for v in numbers]
    trace = {"type": "bar", "x": names, "y": numbers, "text": text, "textposition": "outside"}
    return {
        "data": [trace],
        "layout": {
            "title": {"text": plotly_text(item.get("title", ""))},
            "yaxis": {"title": {"text": plotly_text(item.get("y", ""))}, "rangemode": "tozero"},
            "height": 340,
            "margin": {"l": 60, "r": 20, "t": 50, "b": 80},
        },
    }


def gallery_data(item: dict[str, Any], section: Section, epochs: list[int], base: Path) -> dict[str, Any] | None:
    """The frames of a gallery, ``{"epochs", "maps", "items": [{"label", "frames": {epoch: [url, w, h]}}]}``
    (images that exist only), or ``None`` when none does."""
    names = [str(n) for n in item.get("images", [])]
    labels = [str(n) for n in item.get("labels", [])]
    labels += names[len(labels) :]
    items, shown = [], set()
    for name, label in zip(names, labels):
        frames = {}
        for epoch in epochs:
            path = section.folder / f"epoch_{epoch:04d}" / f"{name}.png"
            size = png_size(path) if path.is_file() else None
            if size is not None:
                frames[str(epoch)] = [_url(path, base), *size]
                shown.add(epoch)
        if frames:
            items.append({"label": label, "frames": frames})
    if not items:
        return None
    return {"epochs": sorted(shown), "maps": bool(item.get("maps")), "items": items}


# html -----------------------------------------------------------------------------------------------


class _Data:
    """The JSON blocks of the page (``<script type="application/json">``), numbered."""

    def __init__(self) -> None:
        self.blocks: list[str] = []

    def add(self, obj: Any) -> str:
        ident = f"tv-{len(self.blocks)}"
        self.blocks.append(f'<script type="application/json" id="{ident}">{script_json(obj)}</script>')
        return ident


def _caption(item: dict[str, Any]) -> str:
    text = item.get("description")
    return f"<figcaption>{esc(text)}</figcaption>" if text else ""


def _files(item: dict[str, Any], section: Section, base: Path) -> str:
    pattern = str(item.get("glob", ""))
    if not pattern or ".." in Path(pattern).parts or Path(pattern).is_absolute():
        return ""
    matches = sorted(p for p in section.folder.glob(pattern) if p.is_file())
    if not matches:
        return ""
    title = f"<h4>{esc(item.get('title', ''))}</h4>"
    if item.get("kind") == "html":
        rows = []
        for path in matches:
            url = esc(_url(path, base))
            rows.append(
                f'<li><a href="{url}" target="_blank" rel="noopener">{esc(path.name)}</a> '
                f'<details class="tv-frame"><summary>embed</summary><iframe loading="lazy" data-src="{url}" '
                f'title="{esc(path.name)}"></iframe></details></li>'
            )
        return f'<div class="tv-files">{title}{_caption(item)}<ul>{"".join(rows)}</ul></div>'
    path = matches[-1]  # the latest epoch's
    return (
        f'<figure class="tv-file">{title}<img class="grid" loading="lazy" alt="{esc(item.get("title", ""))}" '
        f'data-src="{esc(_url(path, base))}">{_caption(item)}</figure>'
    )


def _gallery(item: dict[str, Any], data: dict[str, Any], ident: str) -> str:
    epochs = data["epochs"]
    last = len(epochs) - 1
    slider = (
        f'<label>epoch <input class="tv-epoch" type="range" min="0" max="{last}" value="{last}" step="1"> '
        '<span class="tv-epoch-label"></span></label>'
        if len(epochs) > 1
        else '<span class="tv-epoch-label"></span>'
    )
    full = '<button type="button" class="tv-full-button">full screen</button>' if data["maps"] else ""
    kind = "tv-maps" if data["maps"] else "tv-images"
    return (
        f'<div class="tv-gallery {kind}" data-json="{ident}"><h4>{esc(item.get("title", ""))}</h4>'
        f'<div class="tv-controls">{slider} {full}</div><div class="tv-grid"></div>{_caption(item)}</div>'
    )


def render_section(section: Section, base: Path, data: _Data) -> str:
    """The HTML of one section (its figures and frames as JSON blocks in ``data``)."""
    spec, records, epochs = section.spec, section.records(), section.epochs()
    parts = []
    figures = [curve_figure(item, records) for item in spec.get("curves", []) if isinstance(item, dict)]
    figures += [bars_figure(item, section.folder) for item in spec.get("bars", []) if isinstance(item, dict)]
    items = [item for item in spec.get("curves", []) + spec.get("bars", []) if isinstance(item, dict)]
    for item, figure in zip(items, figures):
        if figure is not None:
            parts.append(f'<figure><div class="tv-plot" data-json="{data.add(figure)}"></div>{_caption(item)}</figure>')
    for item in spec.get("galleries", []):
        frames = gallery_data(item, section, epochs, base) if isinstance(item, dict) else None
        if frames is not None:
            parts.append(_gallery(item, frames, data.add(frames)))
    for item in spec.get("files", []):
        if isinstance(item, dict):
            parts.append(_files(item, section, base))
    body = "".join(parts) or "<p class=note>Nothing recorded yet.</p>"
    what = f'<p class="note">{esc(spec["description"])}</p>' if spec.get("description") else ""
    span = f" (epochs {epochs[0]}-{epochs[-1]})" if len(epochs) > 1 else ""
    return (
        f'<details class="tv-section" id="section-{esc(section.name)}" data-section="{esc(section.name)}">'
        f"<summary><h2>{esc(spec['title'])}<span class=note>{esc(span)}</span></h2></summary>{what}{body}</details>"
    )


def _progress(sections: list[Section], show: bool | None) -> Callable[[Iterable[Section]], Iterable[Section]]:
    """A progress display on stderr (tqdm when installed; ``show=None``: for large runs only), else the sections
    as they are."""
    many = len(sections) > PROGRESS_SECTIONS or any(len(s.epochs()) > PROGRESS_EPOCHS for s in sections)
    if not (many if show is None else show):
        return lambda it: it
    try:
        from tqdm import tqdm

        return lambda it: tqdm(it, total=len(sections), desc="trainviz report", unit="section", file=sys.stderr)
    except ImportError:

        def lines(it: Iterable[Section]) -> Iterable[Section]:
            for i, section in enumerate(it, 1):
                print(f"trainviz report: section {i}/{len(sections)}: {section.name}", file=sys.stderr)
                yield section

        return lines


def render_sections(root: Path, base: Path, progress: bool | None = None) -> tuple[list[tuple[str, str]], str, str]:
    """The generic sections of the run folder ``root`` for a page in ``base``: ``([(anchor, title)], html,
    json blocks)``. ``progress``: ``None`` shows it on large runs only."""
    sections = discover(root.resolve())
    wrap = _progress(sections, progress)
    data = _Data()
    out, nav = [], []
    for section in wrap(sections):
        out.append(render_section(section, base, data))
        nav.append((f"section-{section.name}", str(section.spec["title"])))
    return nav, "".join(out), "".join(data.blocks)


def render_parts(parts: Iterable[dict[str, Any]], figures: Any) -> tuple[list[tuple[str, str]], str]:
    """``([(group, heading)], html)`` of the eagerly drawn parts (see the module docstring), one
    ``<section id=group>`` per group in the order of their first part; ``figures``: a
    :class:`~trainviz.report.page.Figures`."""
    groups: dict[str, tuple[str, list[str]]] = {}
    for part in parts:
        group = groups.setdefault(str(part["group"]), (str(part.get("heading", part["group"])), []))
        if part.get("figure") is not None:
            group[1].append(figures.figure(part["figure"], str(part.get("caption", ""))))
        elif part.get("html"):
            group[1].append(str(part["html"]))
    html = "".join(
        f'<section id="{esc(key)}"><h2>{esc(heading)}</h2>{"".join(body)}</section>'
        for key, (heading, body) in groups.items()
        if body
    )
    return [(key, heading) for key, (heading, body) in groups.items() if body], html
