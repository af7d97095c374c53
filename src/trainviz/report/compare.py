"""Two runs side by side on one offline page (``trainviz report RUN_A --compare RUN_B``), from their artifacts
alone (numpy, no torch).

For every section both runs have (robustness, and each ``<callback>/section.json`` folder), each curve of the
section is drawn with both runs overlaid (run A solid, run B dashed, each named by its run folder), followed by
the per-epoch deltas (B minus A, at the epochs both runs recorded) of the same keys and a table of the last
common epoch. The robustness section's keys are the ``summary.json`` names (``clean_accuracy``,
``corruption_accuracy``, ``mce``, ``relative_mce``, ``corruption_accuracy/<corruption>``, ``fgsm_accuracy@<eps>``,
``pgd_accuracy@<eps>``).
When both runs saved CAM maps (``cam/epoch_XXXX/maps.npz``), the CAM drift between them: the Pearson correlation
of the maps of the same probe ids at the last epoch both saved.

The runs must share their probe sets (the ``probe_sets`` fingerprints of each ``manifest/manifest.json``), or
:class:`ProbeSetMismatchError`; a run without a manifest is compared anyway, with a warning. Everything drawn
is also in the page as JSON (``<script type="application/json" id="tv-compare">``).

Example:
    >>> from trainviz.report import build_report
    >>> build_report("runs/a/version_0", compare="runs/b/version_0")  # doctest: +SKIP
    PosixPath('runs/a/version_0/trainviz/report/compare.html')
"""

from __future__ import annotations

import html
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trainviz.probes.robustness_result import RobustnessResult
from trainviz.report.sections import _lookup, discover, plotly_text, script_json
from trainviz.report.template import PAGE
from trainviz.sinks.artifacts import ArtifactStore, atomic_write

__all__ = ["ProbeSetMismatchError", "build_comparison", "cam_drift", "probe_fingerprints", "run_labels"]

COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22")


class ProbeSetMismatchError(ValueError):
    """The two runs were probed on different images: their curves cannot be compared."""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def run_labels(a: Path, b: Path) -> tuple[str, str]:
    """The shortest trailing parts of the two run folders that tell them apart (``a/version_0``, ``b/version_0``)."""
    pa, pb = a.resolve().parts, b.resolve().parts
    for n in range(1, max(len(pa), len(pb)) + 1):
        la, lb = "/".join(pa[-n:]), "/".join(pb[-n:])
        if la != lb:
            return la, lb
    return f"{a.name} (A)", f"{b.name} (B)"  # the same folder twice


def _callback_name(key: str) -> str:
    found = re.search(r"'name': '([^']*)'", key)
    return found.group(1) if found else key


def probe_fingerprints(manifest: dict[str, Any] | None) -> dict[str, str] | None:
    """``{callback name: probe set fingerprint}`` of a manifest, or ``None`` without a manifest."""
    if manifest is None:
        return None
    probes = manifest.get("probe_sets") or {}
    return {
        _callback_name(k): str(v.get("fingerprint"))
        for k, v in probes.items()
        if isinstance(v, dict) and v.get("fingerprint")
    }


def _check_probes(labels: tuple[str, str], manifests: Sequence[dict[str, Any] | None]) -> list[str]:
    """Raise on different probe sets; the warnings (a run without a manifest) otherwise."""
    prints = [probe_fingerprints(m) for m in manifests]
    missing = [label for label, p in zip(labels, prints) if p is None]
    if missing:
        return [f"no manifest in {', '.join(missing)}: the probe sets could not be checked (compared anyway)"]
    fa, fb = prints[0] or {}, prints[1] or {}
    bad = [(name, fa[name], fb[name]) for name in sorted(set(fa) & set(fb)) if fa[name] != fb[name]]
    if bad:
        listed = "; ".join(f"{name}: {labels[0]} {a}, {labels[1]} {b}" for name, a, b in bad)
        raise ProbeSetMismatchError(
            f"The runs have different probe sets (fingerprints {listed}). The probe sets must match to compare "
            "runs: the same data, probe_size and probe_seed."
        )
    return []


# data ------------------------------------------------------------------------------------------------


@dataclass
class _Side:
    """One section of one run: its curve items and records."""

    items: list[dict[str, Any]]
    records: list[dict[str, Any]]


def _robustness(root: Path) -> _Side | None:
    store = ArtifactStore(root)
    if not store.path("robustness/metrics.jsonl").exists():
        return None
    by_epoch = {r["epoch"]: r for r in store.read_jsonl("robustness/metrics.jsonl") if isinstance(r.get("epoch"), int)}
    results = [RobustnessResult.from_record(by_epoch[e]) for e in sorted(by_epoch)]
    if not results:
        return None
    records = [r.summary() for r in results]
    corruptions = list(dict.fromkeys(c for r in results for c in r.corruptions))
    fgsm = sorted({k for r in records for k in r if k.startswith("fgsm_accuracy@")})
    pgd = sorted({k for r in records for k in r if k.startswith("pgd_accuracy@")})
    unit = (0, 1.02)
    items: list[dict[str, Any]] = [
        {
            "title": "Clean and corrupted accuracy",
            "y": "accuracy",
            "y_range": unit,
            "series": [
                {"name": "clean accuracy", "key": ["clean_accuracy"]},
                {"name": "corrupted accuracy (mean)", "key": ["corruption_accuracy"]},
            ],
        },
        {
            "title": "Mean corruption error",
            "y": "mCE",
            "series": [{"name": "mCE", "key": ["mce"]}, {"name": "relative mCE", "key": ["relative_mce"]}],
        },
        {
            "title": "Accuracy per corruption",
            "y": "accuracy",
            "y_range": unit,
            "series": [{"name": c, "key": [f"corruption_accuracy/{c}"]} for c in corruptions],
        },
    ]
    for title, keys in (("FGSM accuracy", fgsm), ("PGD accuracy", pgd)):
        if keys:
            series = [{"name": k.replace("_", " "), "key": [k]} for k in keys]
            items.append({"title": title, "y": "accuracy", "y_range": unit, "series": series})
    return _Side(items, records)


def _sections(root: Path) -> dict[str, tuple[str, _Side]]:
    """``{folder: (title, side)}``: robustness first, then every generic section."""
    out: dict[str, tuple[str, _Side]] = {}
    rob = _robustness(root)
    if rob is not None:
        out["robustness"] = ("Robustness", rob)
    for section in discover(root.resolve()):
        items = [i for i in section.spec.get("curves", []) if isinstance(i, dict)]
        out.setdefault(section.name, (str(section.spec["title"]), _Side(items, section.records())))
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


def cam_drift(root_a: Path, root_b: Path) -> dict[str, Any] | None:
    """Pearson correlation of each probe id's CAM maps in the two runs at the last epoch both saved
    ``cam/epoch_XXXX/maps.npz`` (``None`` when either saved none): ``{"epoch", "keys": {map key: mean},
    "ids", "labels", "correlation"}`` (per shared probe id, the aggregate map, or the first common map key)."""

    def epochs(root: Path) -> set[int]:
        return {int(p.parent.name[6:]) for p in root.glob("cam/epoch_*/maps.npz") if p.parent.name[6:].isdigit()}

    common = epochs(root_a) & epochs(root_b)
    if not common:
        return None
    epoch = max(common)
    with np.load(root_a / "cam" / f"epoch_{epoch:04d}" / "maps.npz") as fa:
        za = {k: fa[k] for k in fa.files if k.startswith("maps/") or k in ("ids", "labels")}
    with np.load(root_b / "cam" / f"epoch_{epoch:04d}" / "maps.npz") as fb:
        zb = {k: fb[k] for k in fb.files if k.startswith("maps/") or k in ("ids", "labels")}
    if "ids" not in za or "ids" not in zb:
        return None
    ids_a, ids_b = [int(i) for i in za["ids"]], [int(i) for i in zb["ids"]]
    pos_b = {i: j for j, i in enumerate(ids_b)}
    shared = [(i, pos_b[v]) for i, v in enumerate(ids_a) if v in pos_b]
    keys = [k[5:] for k in za if k.startswith("maps/") and k in zb and za[k].shape[1:] == zb[k].shape[1:]]
    if not shared or not keys:
        return None
    rows_a, rows_b = [i for i, _ in shared], [j for _, j in shared]
    per_key = {}
    for key in keys:
        ma = za[f"maps/{key}"][rows_a].reshape(len(shared), -1).astype(np.float64)
        mb = zb[f"maps/{key}"][rows_b].reshape(len(shared), -1).astype(np.float64)
        ma, mb = ma - ma.mean(1, keepdims=True), mb - mb.mean(1, keepdims=True)
        norm = np.sqrt((ma**2).sum(1) * (mb**2).sum(1))
        with np.errstate(invalid="ignore", divide="ignore"):
            per_key[key] = np.where(norm > 0, (ma * mb).sum(1) / np.where(norm > 0, norm, 1), np.nan)
    main = "aggregate" if "aggregate" in per_key else keys[0]
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


def _drift_html(drift: dict[str, Any], labels: tuple[str, str], figure_id: str) -> str:
    means = "".join(f"<tr><th>{_esc(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in drift["keys"].items())
    none = sum(v is None for v in drift["correlation"])
    undefined = f"; {none} with a constant map in a run have none" if none else ""
    return (
        '<section id="cam-drift"><h2>CAM drift between the runs</h2>'
        f"<p class=note>Pearson correlation of the Grad-CAM map of each of the {len(drift['ids'])} shared probe "
        f"images in {_esc(labels[0])} and {_esc(labels[1])} at epoch {drift['epoch']} (1: both runs look at the "
        f"same place){undefined}. Mean per map:</p>"
        f'<table class="kv cam-drift">{means}</table>'
        f'<figure><div class="plot" data-figure="{figure_id}"></div><figcaption>Per probe image, the '
        f"{_esc(drift['key'])} map.</figcaption></figure></section>"
    )


def _drift_figure(drift: dict[str, Any]) -> dict[str, Any]:
    trace = {
        "type": "bar",
        "x": [f"id {i}" for i in drift["ids"]],
        "y": drift["correlation"],
        "hovertemplate": "%{x}: r = %{y:.3f}<extra></extra>",
    }
    layout = _layout(f"CAM drift ({drift['key']}), epoch {drift['epoch']}", "Pearson r", (-1, 1), x="probe image")
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

    from trainviz.report.builder import find_run

    if plotlyjs not in ("directory", "inline"):
        raise ValueError(f"Expected `plotlyjs` to be one of 'directory', 'inline'; got {plotlyjs!r}.")
    root_a, root_b = find_run(run_a), find_run(run_b)
    labels = run_labels(root_a.parent, root_b.parent)
    manifests = []
    for root in (root_a, root_b):
        path = root / "manifest" / "manifest.json"
        manifests.append(ArtifactStore(root).read_json("manifest/manifest.json") if path.exists() else None)
    notes = _check_probes(labels, manifests)
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

    figures: list[str] = []

    def add(fig: dict[str, Any]) -> str:
        ident = f"fig-{len(figures)}"
        figures.append(f'<script type="application/json" id="{ident}">{script_json(fig)}</script>')
        return ident

    body: list[str] = []
    nav: list[tuple[str, str]] = []
    data: dict[str, Any] = {"runs": {"A": labels[0], "B": labels[1]}, "sections": {}, "notes": notes}
    data.update({"paths": {"A": str(root_a.parent), "B": str(root_b.parent)}, "only_in": {"A": only_a, "B": only_b}})
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
                f'<figure><div class="plot" data-figure="{add(_overlay_figure(item, curves, labels))}"></div>'
                f"<figcaption>{_esc(item.get('description', ''))}</figcaption></figure>"
                f'<figure><div class="plot" data-figure="{add(_delta_figure(item, curves, labels))}"></div>'
                f"{_delta_table(curves, labels)}</figure>"
            )
        data["sections"][name] = {"title": title, "items": section_data}
        content = "".join(parts) or "<p class=note>No curves recorded by both runs.</p>"
        body.append(f'<section id="compare-{_esc(name)}"><h2>{_esc(title)}</h2>{content}</section>')
        nav.append((f"compare-{name}", title))
    drift = cam_drift(root_a, root_b) if "cam" in shared else None
    data["cam_drift"] = drift
    if drift is not None:
        body.append(_drift_html(drift, labels, add(_drift_figure(drift))))
        nav.append(("cam-drift", "CAM drift"))
    if not shared:
        body.insert(0, "<p class=note>The runs share no section.</p>")

    from trainviz.report.builder import plotly_script  # builder hands comparisons to this module

    script = plotly_script(plotlyjs, out.parent)
    head = (
        f"<p class=note>Run A: <b>{_esc(labels[0])}</b> (solid lines); run B: <b>{_esc(labels[1])}</b> (dashed). "
        "Deltas are B minus A at the epochs both runs recorded.</p>"
    )
    head += "".join(f'<p class="note compare-note">{_esc(n[0].upper() + n[1:])}.</p>' for n in notes)
    figures.append(f'<script type="application/json" id="tv-compare">{script_json(data)}</script>')
    page = PAGE.substitute(
        title=_esc(f"trainviz comparison: {labels[0]} vs {labels[1]}"),
        run_name=_esc(f"{labels[0]} vs {labels[1]}"),
        run_path=_esc(f"A: {root_a.parent}  B: {root_b.parent}"),
        headline=head,
        nav="".join(f'<a href="#{_esc(k)}">{_esc(t)}</a>' for k, t in nav),
        plotly=script,
        sections="".join(body),
        data="".join(figures),
    )
    atomic_write(out, page.encode("utf-8"))
    return out
