"""Two runs side by side on one offline page (``trainviz report RUN_A --compare RUN_B``), from their artifacts
alone (numpy, no torch).

Generic: for every section both runs have (each ``<callback>/section.json`` folder, and the capabilities of
:data:`trainviz.report.run.REPORTED`, whose result type's ``compare_section(results)`` gives its curve items and
records: the robustness metrics by their names in :data:`~trainviz.probes.robustness_names.NAMES`), each curve
of the section is drawn with both runs overlaid (run A solid, run B dashed, each named by its run folder),
followed by the per-epoch deltas (B minus A, at the epochs both runs recorded) of the same keys and a table of
the last common epoch. A section's spec may declare its own comparisons (``"compare"``): ``{"kind":
"map_correlation", "title", "description", "arrays": "<file>" (epoch_XXXX/<file>.npz), "prefix": "maps/", "main":
"<key>"}`` draws the Pearson correlation of the maps of the same probe ids (``ids``) in both runs at the last epoch
both saved (the CAM section's drift between the runs).

The runs must share their probe sets (the ``probe_sets`` fingerprints of each ``manifest/manifest.json``), or
:class:`ProbeSetMismatchError`; a run without a manifest is compared anyway, with a warning. Everything drawn
is also in the page as JSON (``<script type="application/json" id="tv-compare">``).

Example:
    >>> from trainviz.report import build_report
    >>> build_report("runs/a/version_0", compare="runs/b/version_0")  # doctest: +SKIP
    PosixPath('runs/a/version_0/trainviz/report/compare.html')
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trainviz.report.page import Figures, check_plotlyjs, plotly_text, script_json, write_page
from trainviz.report.page import esc as _esc
from trainviz.report.run import (
    ProbeSetMismatchError,
    check_probes,
    find_run,
    probe_fingerprints,
    read_manifest,
    reported_results,
    run_labels,
)
from trainviz.report.sections import _lookup, discover

__all__ = ["ProbeSetMismatchError", "build_comparison", "map_correlation", "probe_fingerprints", "run_labels"]

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


# data ------------------------------------------------------------------------------------------------


@dataclass
class _Side:
    """One section of one run: its curve items, records, declared comparisons and folder."""

    items: list[dict[str, Any]]
    records: list[dict[str, Any]]
    _: KW_ONLY
    compare: list[dict[str, Any]] = field(default_factory=list)
    folder: Path | None = None


def _sections(root: Path) -> dict[str, tuple[str, _Side]]:
    """``{folder: (title, side)}``: the capabilities drawn from their records first, then every generic section."""
    out: dict[str, tuple[str, _Side]] = {}
    for name, (cls, results) in reported_results(root).items():
        compared = getattr(cls, "compare_section", None)
        if compared is not None:
            spec = compared(results)
            out[name] = (str(spec["title"]), _Side(spec["items"], spec["records"], folder=root / name))
    for section in discover(root.resolve()):
        items = [i for i in section.spec.get("curves", []) if isinstance(i, dict)]
        compare = [i for i in section.spec.get("compare", []) if isinstance(i, dict)]
        side = _Side(items, section.records(), compare=compare, folder=section.folder)
        out.setdefault(section.name, (str(section.spec["title"]), side))
    return out


def _merge_items(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Run A's curve items, each with the series that only run B's item of the same title has added."""
    by_title = {str(i.get("title", "")): i for i in b}
    out = []
    for item in a:
        series = list(item.get("series", []))
        keys = {tuple(s.get("key", [])) for s in series}
        other = by_title.get(str(item.get("title", "")), {})
        series += [s for s in other.get("series", []) if tuple(s.get("key", [])) not in keys]
        out.append({**item, "series": series})
    titles = {str(i.get("title", "")) for i in a}
    return out + [i for i in b if str(i.get("title", "")) not in titles]


def _values(records: list[dict[str, Any]], key: Sequence[str]) -> dict[int, float | None]:
    out = {int(r["epoch"]): _lookup(r, key) for r in records}
    return {e: v if v is None or np.isfinite(v) else None for e, v in out.items()}


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def _curve_data(item: dict[str, Any], side_a: _Side, side_b: _Side) -> list[dict[str, Any]]:
    """Per series: name, key, each run's epochs and values, and the deltas at the common epochs."""
    out = []
    for series in item.get("series", []):
        key = [str(k) for k in series.get("key", [])]
        va, vb = _values(side_a.records, key), _values(side_b.records, key)
        if all(v is None for v in va.values()) and all(v is None for v in vb.values()):
            continue
        common = sorted(set(va) & set(vb))
        out.append(
            {
                "name": str(series.get("name", "/".join(key))),
                "key": key,
                "A": {"epochs": sorted(va), "values": [va[e] for e in sorted(va)]},
                "B": {"epochs": sorted(vb), "values": [vb[e] for e in sorted(vb)]},
                "delta": {"epochs": common, "values": [_delta(va[e], vb[e]) for e in common]},
            }
        )
    return out


def map_correlation(folder_a: Path, folder_b: Path, item: dict[str, Any]) -> dict[str, Any] | None:
    """Pearson correlation of each probe id's maps in the two runs' section folders at the last epoch both saved
    ``epoch_XXXX/<item["arrays"]>.npz`` (``None`` when either saved none): ``{"epoch", "key", "keys": {map key:
    mean}, "ids", "labels", "correlation"}`` (per shared probe id, the ``item["main"]`` map, or the first common
    map key). The maps are the arrays whose key starts with ``item["prefix"]`` (default ``"maps/"``)."""
    arrays, prefix = f"{item.get('arrays', 'maps')}.npz", str(item.get("prefix", "maps/"))

    def epochs(folder: Path) -> set[int]:
        return {int(p.parent.name[6:]) for p in folder.glob(f"epoch_*/{arrays}") if p.parent.name[6:].isdigit()}

    common = epochs(folder_a) & epochs(folder_b)
    if not common:
        return None
    epoch = max(common)
    with np.load(folder_a / f"epoch_{epoch:04d}" / arrays) as fa:
        za = {k: fa[k] for k in fa.files if k.startswith(prefix) or k in ("ids", "labels")}
    with np.load(folder_b / f"epoch_{epoch:04d}" / arrays) as fb:
        zb = {k: fb[k] for k in fb.files if k.startswith(prefix) or k in ("ids", "labels")}
    if "ids" not in za or "ids" not in zb:
        return None
    ids_a, ids_b = [int(i) for i in za["ids"]], [int(i) for i in zb["ids"]]
    pos_b = {i: j for j, i in enumerate(ids_b)}
    shared = [(i, pos_b[v]) for i, v in enumerate(ids_a) if v in pos_b]
    n = len(prefix)
    keys = [k[n:] for k in za if k.startswith(prefix) and k in zb and za[k].shape[1:] == zb[k].shape[1:]]
    if not shared or not keys:
        return None
    rows_a, rows_b = [i for i, _ in shared], [j for _, j in shared]
    per_key = {}
    for key in keys:
        ma = za[f"{prefix}{key}"][rows_a].reshape(len(shared), -1).astype(np.float64)
        mb = zb[f"{prefix}{key}"][rows_b].reshape(len(shared), -1).astype(np.float64)
        ma, mb = ma - ma.mean(1, keepdims=True), mb - mb.mean(1, keepdims=True)
        norm = np.sqrt((ma**2).sum(1) * (mb**2).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            per_key[key] = np.where(norm > 0, (ma * mb).sum(1) / np.where(norm > 0, norm, 1), np.nan)
    main = str(item.get("main")) if item.get("main") in per_key else keys[0]
    labels = [int(v) for v in za["labels"][rows_a]] if "labels" in za else []
    return {
        "epoch": epoch,
        "key": main,
        "keys": {k: _finite_mean(v) for k, v in per_key.items()},
        "ids": [ids_a[i] for i in rows_a],
        "labels": labels,
        "correlation": [None if np.isnan(v) else float(v) for v in per_key[main]],
    }


def _finite_mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else None


# figures ---------------------------------------------------------------------------------------------


def _layout(
    title: str, y: str, y_range: Any = None, x: str = "epoch", height: int = 360, epochs: Sequence[int] = ()
) -> dict[str, Any]:
    yaxis: dict[str, Any] = {"title": {"text": plotly_text(y)}}
    if y_range:
        yaxis["range"] = list(y_range)
    return {
        "title": {"text": plotly_text(title)},
        "xaxis": {"title": {"text": x}, "tickformat": "d", "dtick": max(1, (max(epochs) - min(epochs)) // 10)}
        if x == "epoch" and epochs
        else {"title": {"text": x}},
        "yaxis": yaxis,
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 50, "b": 45},
        "showlegend": True,
    }


def _overlay_figure(item: dict[str, Any], curves: list[dict[str, Any]], labels: tuple[str, str]) -> dict[str, Any]:
    traces = []
    for i, curve in enumerate(curves):
        color = COLORS[i % len(COLORS)]
        for side, label, dash in (("A", labels[0], "solid"), ("B", labels[1], "dash")):
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "name": plotly_text(f"{curve['name']} ({label})"),
                    "legendgroup": plotly_text(curve["name"]),
                    "x": curve[side]["epochs"],
                    "y": curve[side]["values"],
                    "line": {"color": color, "dash": dash},
                    **({"connectgaps": True} if item.get("connect_gaps") else {}),
                    "hovertemplate": "epoch %{x}: %{y:.4g}<extra>%{fullData.name}</extra>",
                }
            )
    title = f"{item.get('title', '')}: {labels[0]} (solid) and {labels[1]} (dashed)"
    epochs = [e for c in curves for side in ("A", "B") for e in c[side]["epochs"]]
    return {"data": traces, "layout": _layout(title, str(item.get("y", "")), item.get("y_range"), epochs=epochs)}


def _delta_figure(item: dict[str, Any], curves: list[dict[str, Any]], labels: tuple[str, str]) -> dict[str, Any]:
    traces = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": plotly_text(curve["name"]),
            "x": curve["delta"]["epochs"],
            "y": curve["delta"]["values"],
            "line": {"color": COLORS[i % len(COLORS)]},
            "hovertemplate": "epoch %{x}: %{y:+.4g}<extra>%{fullData.name}</extra>",
        }
        for i, curve in enumerate(curves)
    ]
    title = f"{item.get('title', '')}: delta, {labels[1]} minus {labels[0]}"
    epochs = [e for c in curves for e in c["delta"]["epochs"]]
    layout = _layout(title, f"delta {item.get('y', '')}", height=300, epochs=epochs or [0])
    layout["yaxis"]["zeroline"] = True
    return {"data": traces, "layout": layout}


def _fmt(value: float | None, sign: str = "") -> str:
    return "" if value is None else f"{value:{sign}.4g}"


def _delta_table(curves: list[dict[str, Any]], labels: tuple[str, str]) -> str:
    common = sorted(set.intersection(*(set(c["delta"]["epochs"]) for c in curves))) if curves else []
    if not common:
        return "<p class=note>No epoch recorded by both runs: no deltas.</p>"
    epoch = common[-1]
    rows = []
    for curve in curves:
        a = dict(zip(curve["A"]["epochs"], curve["A"]["values"])).get(epoch)
        b = dict(zip(curve["B"]["epochs"], curve["B"]["values"])).get(epoch)
        rows.append(
            f"<tr><th>{_esc(curve['name'])}</th><td>{_fmt(a)}</td><td>{_fmt(b)}</td>"
            f"<td>{_fmt(_delta(a, b), '+')}</td></tr>"
        )
    head = f"<tr><th>epoch {epoch}</th><th>{_esc(labels[0])}</th><th>{_esc(labels[1])}</th><th>B - A</th></tr>"
    return f'<table class="cells compare-deltas">{head}{"".join(rows)}</table>'


def _correlation_html(
    name: str, item: dict[str, Any], drift: dict[str, Any], labels: tuple[str, str], figure_id: str
) -> str:
    means = "".join(f"<tr><th>{_esc(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in drift["keys"].items())
    none = sum(v is None for v in drift["correlation"])
    undefined = f"; {none} with a constant map in a run have none" if none else ""
    title = str(item.get("title", "Map correlation"))
    what = str(item.get("description", "Pearson correlation of the map"))
    return (
        f'<section id="{_esc(name)}-correlation"><h2>{_esc(title)} between the runs</h2>'
        f"<p class=note>{_esc(what)} of each of the {len(drift['ids'])} shared probe "
        f"images in {_esc(labels[0])} and {_esc(labels[1])} at epoch {drift['epoch']} (1: both runs look at the "
        f"same place){undefined}. Mean per map:</p>"
        f'<table class="kv map-correlation">{means}</table>'
        f'<figure><div class="plot" data-figure="{figure_id}"></div><figcaption>Per probe image, the '
        f"{_esc(drift['key'])} map.</figcaption></figure></section>"
    )


def _drift_figure(title: str, drift: dict[str, Any]) -> dict[str, Any]:
    trace = {
        "type": "bar",
        "x": [f"id {i}" for i in drift["ids"]],
        "y": drift["correlation"],
        "hovertemplate": "%{x}: r = %{y:.3f}<extra></extra>",
    }
    layout = _layout(f"{title} ({drift['key']}), epoch {drift['epoch']}", "Pearson r", (-1, 1), x="probe image")
    layout["showlegend"] = False
    return {"data": [trace], "layout": layout}


# page ------------------------------------------------------------------------------------------------


def build_comparison(
    run_a: str | os.PathLike,
    run_b: str | os.PathLike,
    out: str | os.PathLike | None = None,
    plotlyjs: Literal["directory", "inline"] = "directory",
) -> Path:
    """Write the page comparing run B with run A (see the module docstring); returns its path.

    Args:
        run_a, run_b: each a run's log folder, its ``trainviz`` folder, or a parent holding exactly one run.
        out: the HTML file (default ``<run A>/trainviz/report/compare.html``).
        plotlyjs: as in :func:`~trainviz.report.build_report`.

    Raises:
        ProbeSetMismatchError: the runs' manifests record different probe sets.
        FileNotFoundError, ValueError: see :func:`~trainviz.report.find_run`.
    """
    check_plotlyjs(plotlyjs)
    root_a, root_b = find_run(run_a), find_run(run_b)
    labels = run_labels(root_a.parent, root_b.parent)
    notes = check_probes(labels, [read_manifest(root_a), read_manifest(root_b)])
    for note in notes:
        warnings.warn(note, stacklevel=2)
    out = Path(out) if out is not None else root_a / "report" / "compare.html"

    secs_a, secs_b = _sections(root_a), _sections(root_b)
    shared = [name for name in secs_a if name in secs_b]
    only_a, only_b = [n for n in secs_a if n not in secs_b], [n for n in secs_b if n not in secs_a]
    if only_a or only_b:
        missing = []
        if only_a:
            missing.append(f"missing from {labels[1]}: {', '.join(only_a)}")
        if only_b:
            missing.append(f"missing from {labels[0]}: {', '.join(only_b)}")
        notes.append(f"only the sections both runs have are compared ({'; '.join(missing)})")

    figures = Figures()
    body: list[str] = []
    nav: list[tuple[str, str]] = []
    data: dict[str, Any] = {"runs": {"A": labels[0], "B": labels[1]}, "sections": {}, "notes": notes}
    data.update({"paths": {"A": str(root_a.parent), "B": str(root_b.parent)}, "only_in": {"A": only_a, "B": only_b}})
    declared: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for name in shared:
        title, side_a = secs_a[name]
        side_b = secs_b[name][1]
        parts, section_data = [], []
        for item in _merge_items(side_a.items, side_b.items):
            curves = _curve_data(item, side_a, side_b)
            if not curves:
                continue
            section_data.append({"title": str(item.get("title", "")), "curves": curves})
            parts.append(
                f'<figure><div class="plot" data-figure="{figures.add(_overlay_figure(item, curves, labels))}">'
                f"</div><figcaption>{_esc(item.get('description', ''))}</figcaption></figure>"
                f'<figure><div class="plot" data-figure="{figures.add(_delta_figure(item, curves, labels))}">'
                f"</div>{_delta_table(curves, labels)}</figure>"
            )
        correlations = []
        for item in side_a.compare:
            if item.get("kind") == "map_correlation" and side_a.folder is not None and side_b.folder is not None:
                drift = map_correlation(side_a.folder, side_b.folder, item)
                correlations.append({"title": str(item.get("title", "")), **(drift or {"missing": True})})
                if drift is not None:
                    declared.append((name, item, drift))
        data["sections"][name] = {"title": title, "items": section_data, "correlations": correlations}
        content = "".join(parts) or "<p class=note>No curves recorded by both runs.</p>"
        body.append(f'<section id="compare-{_esc(name)}"><h2>{_esc(title)}</h2>{content}</section>')
        nav.append((f"compare-{name}", title))
    for name, item, drift in declared:
        title = str(item.get("title", "Map correlation"))
        body.append(_correlation_html(name, item, drift, labels, figures.add(_drift_figure(title, drift))))
        nav.append((f"{name}-correlation", title))
    if not shared:
        body.insert(0, "<p class=note>The runs share no section.</p>")

    head = (
        f"<p class=note>Run A: <b>{_esc(labels[0])}</b> (solid lines); run B: <b>{_esc(labels[1])}</b> (dashed). "
        "Deltas are B minus A at the epochs both runs recorded.</p>"
    )
    head += "".join(f'<p class="note compare-note">{_esc(n[0].upper() + n[1:])}.</p>' for n in notes)
    blocks = [*figures.blocks, f'<script type="application/json" id="tv-compare">{script_json(data)}</script>']
    return write_page(
        out,
        title=f"trainviz comparison: {labels[0]} vs {labels[1]}",
        run_name=f"{labels[0]} vs {labels[1]}",
        run_path=f"A: {root_a.parent}  B: {root_b.parent}",
        headline=head,
        nav=nav,
        sections="".join(body),
        data="".join(blocks),
        plotlyjs=plotlyjs,
    )
