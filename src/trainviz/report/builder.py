"""Build the HTML robustness report of a run from its artifacts alone (no model, no torch, no retraining).

Reads, under the run's ``trainviz`` folder: ``robustness/metrics.jsonl`` (curves, tables, reliability bins; each
record read as a :class:`~trainviz.probes.robustness_result.RobustnessResult`),
``robustness/epoch_XXXX/{table,adversarial}.npz`` and ``examples.png`` of the latest epoch,
``manifest/manifest.json`` and, when present, ``dynamics/metrics.jsonl``. Writes ``index.html`` (or ``out``)
and ``summary.json`` beside it (see :mod:`trainviz.report.summary`), plus ``plotly.min.js`` unless the page
inlines it. The page works offline.

Accuracies measured on the ``n`` probe images carry their 95% Wilson interval (the headline, the hover of the
corruption x severity heat map and the table below it, the FGSM error bars, the clean per-class accuracy in
the hover of the per-class drops); classes with fewer than 10 probe images are marked with a dagger and a
note. Records written before trainviz recorded ``n`` and ``class_counts`` get neither (and a note says so).

Example:
    >>> from trainviz.report import build_report
    >>> build_report("runs/demo/version_0")  # doctest: +SKIP
    PosixPath('runs/demo/version_0/trainviz/report/index.html')
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from trainviz.core.common import json_number
from trainviz.probes.dynamics_result import DynamicsResult
from trainviz.probes.robustness_result import (
    CORRUPTION_PROTOCOL,
    LOW_COUNT_THRESHOLD,
    MCE_REFERENCE,
    PerImage,
    RobustnessResult,
    eps_label,
    proportion_interval,
)
from trainviz.report.logged import logged_curves
from trainviz.report.sections import SPEC_FILE, render_sections
from trainviz.report.template import PAGE
from trainviz.sinks.artifacts import ArtifactStore, atomic_write, epoch_dir, write_plotly_js
from trainviz.sinks.tensorboard import tensorboard_command

__all__ = ["RunArtifacts", "build_report", "default_report_path", "find_run", "load_run"]

_MARKERS = ("robustness", "manifest", "dynamics")
_FROST_NOTE = "an approximation: a procedural texture, not the frost photographs; not comparable with published frost"


def _is_trainviz_dir(path: Path) -> bool:
    return path.name == "trainviz" and (any((path / m).is_dir() for m in _MARKERS) or any(path.glob(f"*/{SPEC_FILE}")))


def find_run(path: str | os.PathLike) -> Path:
    """The ``trainviz`` artifact folder of a run.

    ``path`` may be the run's log folder (``.../version_N``), its ``trainviz`` folder, or a parent folder that
    holds exactly one run.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no run.
        ValueError: ``path`` holds several runs (they are listed).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"No such folder: {root}")
    for candidate in (root, root / "trainviz"):
        if _is_trainviz_dir(candidate):
            return candidate
    found = sorted(p for p in root.rglob("trainviz") if p.is_dir() and _is_trainviz_dir(p))
    if not found:
        markers = ", ".join(_MARKERS)
        raise FileNotFoundError(f"No trainviz run under {root} (looked for a `trainviz` folder with {markers}).")
    if len(found) > 1:
        runs = "\n  ".join(str(p.parent) for p in found)
        raise ValueError(f"{root} holds {len(found)} trainviz runs; pass one of them:\n  {runs}")
    return found[0]


def default_report_path(run_dir: str | os.PathLike) -> Path:
    """Where :func:`build_report` writes by default: ``<run>/trainviz/report/index.html``."""
    return find_run(run_dir) / "report" / "index.html"


def _read_jsonl(store: ArtifactStore, relpath: str) -> list[dict[str, Any]]:
    return sorted(store.read_jsonl(relpath), key=lambda r: r.get("epoch", 0))


def _read_npz(store: ArtifactStore, relpath: str) -> dict[str, np.ndarray]:
    return store.read_npz(relpath) if store.path(relpath).exists() else {}


@dataclass
class RunArtifacts:
    """What the report reads from one run: the robustness results of every epoch (the latest with its per-image
    arrays when they were saved), its example grid, the manifest and the dynamics records."""

    root: Path
    robustness: list[RobustnessResult] = field(default_factory=list)
    examples_png: bytes | None = None
    manifest: dict[str, Any] | None = None
    dynamics: list[DynamicsResult] = field(default_factory=list)

    @property
    def latest(self) -> RobustnessResult | None:
        return self.robustness[-1] if self.robustness else None


def load_run(run_dir: str | os.PathLike) -> RunArtifacts:
    """Read a run's artifacts (see the module docstring); missing parts are left empty."""
    root = find_run(run_dir)
    store = ArtifactStore(root)
    records = _read_jsonl(store, "robustness/metrics.jsonl")
    run = RunArtifacts(root=root, robustness=[RobustnessResult.from_record(r) for r in records])
    if run.latest is not None:
        folder = epoch_dir("robustness", run.latest.epoch)
        table = _read_npz(store, f"{folder}/table.npz")
        if table:
            run.latest.images = PerImage.from_arrays(table, _read_npz(store, f"{folder}/adversarial.npz"))
        if store.path(f"{folder}/examples.png").exists():
            run.examples_png = store.path(f"{folder}/examples.png").read_bytes()
    if store.path("manifest/manifest.json").exists():
        run.manifest = store.read_json("manifest/manifest.json")
    run.dynamics = [DynamicsResult.from_record(r) for r in _read_jsonl(store, "dynamics/metrics.jsonl")]
    return run


# figures --------------------------------------------------------------------------------------------


def _ci(interval: list[float] | tuple[float, float] | None) -> str:
    """``"[0.632, 0.840]"``, or ``""`` without an interval."""
    return f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else ""


LOW_COUNT_MARK = "\u2020"  # dagger after a class with fewer than LOW_COUNT_THRESHOLD probe images


def _class_labels(rec: RobustnessResult) -> tuple[list[str], list[str]]:
    """The class names as the report shows them (low-count classes marked) and the low-count classes."""
    names = rec.class_names
    low = set((rec.probe_counts() or {}).get("low_count_classes", []))
    return [f"{n} {LOW_COUNT_MARK}" if n in low else n for n in names], [n for n in names if n in low]


def _class_hover(rec: RobustnessResult, clean_pc: np.ndarray) -> list[str]:
    """Per class: its clean accuracy, 95% interval and number of probe images (``""`` without counts)."""
    if "class_counts" not in (rec.probe_counts() or {}):
        return [""] * len(clean_pc)
    out = []
    for acc, m in zip(clean_pc, rec.class_counts):
        k = None if np.isnan(acc) or m == 0 else round(float(acc) * m)
        ci = _ci(proportion_interval(k, m)) if k is not None and abs(acc * m - k) < 1e-6 * m else ""
        low = f" (fewer than {LOW_COUNT_THRESHOLD})" if m < LOW_COUNT_THRESHOLD else ""
        text = f"clean accuracy {acc:.3f} {ci}, 95% Wilson, on {m} images{low}" if k is not None else f"{m} images{low}"
        out.append(text)
    return out


def _accuracy_table(rec: RobustnessResult, intervals: Mapping[str, list[float]]) -> str:
    """Accuracy per corruption (rows) and severity (columns) with its 95% interval, as an HTML table."""
    heat, corruptions, levels = rec.heatmap()
    head = "".join(f"<th>s{_esc(s)}</th>" for s in levels)
    body = []
    for i, c in enumerate(corruptions):
        tds = []
        for j, s in enumerate(levels):
            ci = _ci(intervals.get(f"corruption_accuracy/{c}/s{s}"))
            value = "" if np.isnan(heat[i, j]) else f"{heat[i, j]:.3f}"
            tds.append(f"<td>{value} <span class=ci>{ci}</span></td>")
        label = _esc(c) + (f" <span class=ci>({_FROST_NOTE})</span>" if c == "frost" else "")
        body.append(f"<tr><th>{label}</th>{''.join(tds)}</tr>")
    clean = f"clean {rec.clean.accuracy:.3f} {_ci(intervals.get('clean_accuracy'))}".rstrip()
    title = "Accuracy per corruption and severity" + (", with 95% Wilson intervals" if intervals else "")
    return (
        f'<details class="cells"><summary>{title} ({clean})</summary><table class="cells"><tr><th></th>{head}</tr>'
        f"{''.join(body)}</table></details>"
    )


def _corruption_figures(run: RunArtifacts, intervals: Mapping[str, list[float]]) -> list[tuple[str, str, Any]]:
    """The corruption x severity heat map (every metric, accuracy with its intervals) and the curves over epochs."""
    from trainviz.render.figures import heatmap_figure, lines_figure

    rec, out = run.latest, []
    _, corruptions, levels = rec.heatmap()
    metrics: tuple[str, ...] = ("accuracy", "flip_rate", "confidence", "ece", "nll")
    metrics += ("cam_shift",) if rec.cam_shift is not None else ()
    tables = {m: np.full((len(corruptions), len(levels)), np.nan) for m in metrics}
    for row in rec.table:
        i, j = corruptions.index(row.corruption), levels.index(row.severity)
        for m in metrics:
            value = getattr(row, m)
            tables[m][i, j] = np.nan if value is None else value
    ranges = {m: (0.0, 1.0) for m in ("accuracy", "flip_rate", "confidence")} | {"cam_shift": (-1.0, 1.0)}
    heat = heatmap_figure(tables, [f"s{s}" for s in levels], corruptions, "Corruption x severity", ranges=ranges)
    clean_ci = intervals.get("clean_accuracy")
    if intervals:
        text = [[_ci(intervals.get(f"corruption_accuracy/{c}/s{s}")) for s in levels] for c in corruptions]
        heat.update_traces(
            text=text,
            hovertemplate="%{y}, %{x}: %{z:.3f}, 95% CI %{text}<extra>accuracy</extra>",
            selector={"name": "accuracy"},
        )
    counts = f", 95% CI {_ci(clean_ci)} on {rec.n} images; the hover shows each cell's interval" if clean_ci else ""
    out.append(
        (
            "corruptions",
            f"Corruption x severity at epoch {rec.epoch} (clean accuracy {rec.clean.accuracy:.3f}"
            f"{counts}); the menu switches the metric.",
            heat,
        )
    )

    results = run.robustness
    epochs = [r.epoch for r in results]
    curves = {
        "clean accuracy": [r.clean.accuracy for r in results],
        "corrupted accuracy (mean)": [r.corrupted.accuracy for r in results],
    }
    for eps in rec.fgsm.epsilons if rec.fgsm is not None else []:
        label = eps_label(eps)
        curves[f"FGSM accuracy, eps {label}"] = [r.summary().get(f"fgsm_accuracy@{label}") for r in results]
    for eps in rec.pgd.epsilons if rec.pgd is not None else []:  # gaps at the runs without PGD
        label = eps_label(eps)
        curves[f"PGD accuracy, eps {label}"] = [r.summary().get(f"pgd_accuracy@{label}") for r in results]
    if run.dynamics:
        by_epoch = {d.epoch: json_number(d.accuracy) for d in run.dynamics}
        curves["dynamics probe accuracy"] = [by_epoch.get(e) for e in epochs]
    out.append(
        (
            "curves",
            "Accuracy over epochs on the clean, corrupted and adversarial probe sets.",
            lines_figure(epochs, curves, "Accuracy over epochs", "epoch", "accuracy", y_range=(0, 1.02)),
        )
    )
    per_corruption = {name: [_stat(r, name, "accuracy") for r in results] for name in corruptions}
    figure = lines_figure(epochs, per_corruption, "Accuracy per corruption", "epoch", "accuracy", y_range=(0, 1.02))
    out.append(
        ("curves", "Accuracy under each corruption (mean over severities); click the legend to hide lines.", figure)
    )
    errors = {"mCE": [r.mce for r in results], "relative mCE": [r.relative_mce for r in results]}
    normalised = (
        "normalised by the reference run"
        if rec.reference and rec.corruption_params is None  # an older record: mce was normalised then
        else "unnormalised: mean error and mean error increase over clean"
    )
    if rec.normalized_mce is not None:
        errors["normalised mCE"] = [r.normalized_mce for r in results]
        errors["normalised relative mCE"] = [r.normalized_relative_mce for r in results]
        normalised += f"; the normalised ones by the reference run {rec.reference}"
    out.append(
        (
            "curves",
            f"Mean corruption error over epochs ({normalised}); lower is better.",
            lines_figure(epochs, errors, "Mean corruption error", "epoch", "mCE"),
        )
    )
    if rec.cam_shift is not None:
        shifts = {name: [_stat(r, name, "cam_shift") for r in results] for name in corruptions}
        figure = lines_figure(epochs, shifts, "CAM shift per corruption", "epoch", "correlation", y_range=(-1, 1.02))
        out.append(
            (
                "curves",
                "CAM shift: correlation of the true class's Grad-CAM on clean and corrupted images "
                "(1 = the model looks at the same place), mean over severities.",
                figure,
            )
        )
    return out


def _stat(result: RobustnessResult, corruption: str, name: str) -> float | None:
    """One corruption's statistic in a result (``None`` when that run did not have the corruption)."""
    stats = result.corruptions.get(corruption)
    return None if stats is None else getattr(stats, name)


def _training_figures(run: RunArtifacts) -> list[tuple[str, str, Any]]:
    """Loss and accuracy over epochs as the run's own logger recorded them (:mod:`trainviz.report.logged`)."""
    from trainviz.render.figures import lines_figure

    curves = logged_curves(run.root.parent)
    epochs = sorted({e for curve in curves.values() for e in curve})
    out = []
    for kind, label in (("loss", "loss"), ("acc", "accuracy")):
        series = {tag: [curve.get(e) for e in epochs] for tag, curve in curves.items() if kind in tag.lower()}
        if series:
            title = f"Training {label} (as logged)"
            caption = f"The {label} your LightningModule logged, per epoch (the last value of each epoch)."
            out.append(("training", caption, lines_figure(epochs, series, title, "epoch", label)))
    return out


def _robustness_figures(run: RunArtifacts) -> list[tuple[str, str, Any]]:
    """``(section, caption, figure)`` for every robustness figure."""
    from trainviz.render.figures import bars_figure, heatmap_figure, lines_figure, reliability_figure

    rec = run.latest
    intervals = rec.intervals()
    out = _corruption_figures(run, intervals)
    corruptions = list(rec.corruptions)

    names, low = _class_labels(rec)
    clean_pc = np.array(rec.clean.per_class_accuracy, dtype=np.float64)
    drops = np.full((len(corruptions), len(names)), np.nan)
    for i, name in enumerate(corruptions):
        rows = [
            clean_pc - np.array(row.per_class_accuracy, dtype=np.float64) for row in rec.table if row.corruption == name
        ]
        drops[i] = np.mean(rows, axis=0)
    drop_fig = heatmap_figure({"accuracy drop": drops}, names, corruptions, "Per-class accuracy drop", diverging=True)
    hover = _class_hover(rec, clean_pc)
    if any(hover):
        drop_fig.update_traces(
            text=[hover] * len(corruptions),
            hovertemplate="%{y}, %{x}: drop %{z:.3f}<br>%{text}<extra>accuracy drop</extra>",
        )
    how = "; the hover shows the class's clean accuracy, its 95% interval and its number of images."
    how = how if any(hover) else "."
    out.append(
        (
            "classes",
            "Per-class accuracy drop (clean minus corrupted, mean over severities): which classes a "
            f"corruption hurts{how}",
            drop_fig,
        )
    )

    if rec.reliability is not None:
        labels = {"clean": "clean", "corrupted": "all corruptions"}
        curves = {labels.get(k, k): (b.confidence, b.accuracy, b.count) for k, b in rec.reliability.items()}
        out.append(
            (
                "calibration",
                "Reliability diagram of the latest epoch: a calibrated model lies on the diagonal.",
                reliability_figure(curves, "Reliability"),  # type: ignore[arg-type]
            )
        )
    cal = {
        "accuracy": [rec.corruptions[c].accuracy for c in corruptions],
        "mean confidence": [rec.corruptions[c].confidence for c in corruptions],
        "ECE": [rec.corruptions[c].ece for c in corruptions],
    }
    clean = rec.clean
    out.append(
        (
            "calibration",
            f"Confidence against accuracy per corruption (clean: accuracy {clean.accuracy:.3f}, "
            f"confidence {clean.confidence:.3f}, ECE {clean.ece:.3f}).",
            bars_figure(corruptions, cal, "Calibration per corruption", "fraction"),
        )
    )

    if rec.fgsm is not None:
        eps, acc = [0.0, *rec.fgsm.epsilons], np.array([clean.accuracy, *rec.fgsm.accuracy])
        fgsm_fig = lines_figure(
            eps, {"FGSM accuracy": acc.tolist()}, "FGSM", "eps (pixels in [0, 1])", "accuracy", y_range=(0, 1.02)
        )
        keys = ["clean_accuracy", *(f"fgsm_accuracy@{eps_label(e)}" for e in rec.fgsm.epsilons)]
        bars = all(k in intervals for k in keys)
        if bars:
            lo, hi = np.array([intervals[k][0] for k in keys]), np.array([intervals[k][1] for k in keys])
            bounds = {"type": "data", "symmetric": False, "array": hi - acc, "arrayminus": acc - lo}
            fgsm_fig.update_traces(error_y=bounds)
        pgd = _pgd_line(rec, intervals)
        if pgd is not None:
            fgsm_fig.add_traces(lines_figure(*pgd[:2], "", "", "").update_traces(error_y=pgd[2]).data)
            fgsm_fig.update_layout(title="FGSM and PGD")
        out.append(
            (
                "adversarial",
                "FGSM accuracy against eps (pixel units; eps 0 is the clean accuracy)"
                + (f"; {pgd[3]}" if pgd is not None else "")
                + ("; bars: 95% Wilson intervals." if bars else "."),
                fgsm_fig,
            )
        )
    if rec.images is not None and rec.images.steps is not None and rec.flip is not None:
        steps, cap, flip = rec.images.steps, rec.flip.max_steps, rec.flip
        counts = np.bincount(steps[steps >= 0], minlength=cap + 1)
        bar_labels = [str(k) for k in range(cap + 1)] + ["never"]
        figure = bars_figure(
            bar_labels, {"images": [*counts.tolist(), int((steps < 0).sum())]}, "Steps to flip", "images"
        )
        out.append(
            (
                "adversarial",
                f"Gradient-ascent steps until the prediction changes (step {flip.step_size:g}, "
                f"cap {cap}): {flip.never_flipped} of {len(steps)} images never flipped.",
                figure,
            )
        )
    return out


# page -----------------------------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _figure_json(fig: Any) -> str:
    """Figure JSON that is safe inside a ``<script>`` element (``<``, ``>``, ``&`` as unicode escapes)."""
    from plotly.utils import PlotlyJSONEncoder

    text = json.dumps(fig.to_plotly_json(), cls=PlotlyJSONEncoder)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def _tensorboard_note(root: Path) -> str:
    """How to see every epoch's images of this run in TensorBoard (it keeps 10 per tag by default)."""
    epochs = [int(p.name.split("_")[1]) for p in root.glob("*/epoch_*") if p.name.split("_")[1].isdigit()]
    command = tensorboard_command(root.parent, max(epochs, default=-1) + 1)
    return (
        f"<p class=note>TensorBoard keeps 10 images per tag by default; to see every epoch's pictures of this run: "
        f"<code>{_esc(command)}</code> (<code>images=0</code> shows none).</p>"
    )


def _flatten(prefix: str, value: Any, rows: list[tuple[str, Any]]) -> None:
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    else:
        rows.append((prefix, value))


def _key_table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


_SECTIONS = {
    "training": "Training curves",
    "corruptions": "Corruptions",
    "curves": "Over epochs",
    "classes": "Per-class drops",
    "calibration": "Calibration",
    "adversarial": "Adversarial",
}


def _pgd_line(rec: RobustnessResult, intervals: Mapping[str, Any]) -> tuple[list, dict, dict | None, str] | None:
    """The PGD line beside FGSM's (x, series, error bars or ``None``, caption) when PGD ran in ``rec``."""
    pgd = rec.pgd
    if pgd is None or not pgd.measured:
        return None
    acc = np.array([rec.clean.accuracy, *pgd.accuracy])
    keys = ["clean_accuracy", *(f"pgd_accuracy@{eps_label(e)}" for e in pgd.epsilons)]
    bounds = None
    if all(k in intervals for k in keys):
        lo, hi = np.array([intervals[k][0] for k in keys]), np.array([intervals[k][1] for k in keys])
        bounds = {"type": "data", "symmetric": False, "array": hi - acc, "arrayminus": acc - lo}
    name = f"PGD accuracy ({pgd.steps} steps)"
    caption = (
        f"L-inf PGD (Madry et al.): {pgd.steps} signed-gradient steps of {pgd.step_factor:g} eps / {pgd.steps} from "
        f"a random start in the eps ball drawn per image (seed {pgd.seed}), no restarts; run every {pgd.every} "
        "run(s)"
    )
    return [0.0, *pgd.epsilons], {name: acc.tolist()}, bounds, caption


def _headline(run: RunArtifacts, summary: Mapping[str, Any]) -> str:
    rec = run.latest
    intervals = summary.get("intervals") or {}
    keys = ["clean_accuracy", "corruption_accuracy", "mce", "relative_mce", "normalized_mce", "normalized_relative_mce"]
    keys += ["clean_ece", "corruption_ece"]
    keys += [k for k in summary if k.startswith(("fgsm_accuracy@", "pgd_accuracy@"))]
    keys += ["flip_steps_mean", "flip_never_fraction"]
    rows = [
        (k, f"{summary[k]:.4g}" + (f"  95% CI {_ci(intervals[k])}" if k in intervals else ""))
        for k in keys
        if k in summary
    ]
    notes = []
    probe = summary.get("probe")
    if probe:
        notes.append(
            f"Intervals: 95% Wilson, on the {probe['n']} probe images (means over severities or corruptions "
            "reuse the same images and carry none)."
        )
    else:
        notes.append("This record has no probe counts (written before trainviz recorded them): no intervals.")
    if rec.corruption_params is not None:  # records that say how they were made
        notes.append(
            f"Corruption parameters: {_esc(rec.corruption_params)} set; {_esc(CORRUPTION_PROTOCOL)}. Frost: "
            f"{_FROST_NOTE}."
        )
        notes.append(f"mCE and relative mCE: {_esc(MCE_REFERENCE)}.")
        if rec.normalized_mce is not None:
            notes.append(f"Normalised mCE: reference run {_esc(rec.reference)} (1.0 = as robust as it).")
    elif rec.reference:
        notes.append(f"CE normalised by the reference run {_esc(rec.reference)}.")
    if rec.skipped:
        skipped = "; ".join(f"{_esc(n)} ({_esc(r)})" for n, r in rec.skipped.items())
        notes.append(f"Skipped (not applicable to this data): {skipped}.")
    return _key_table(rows) + "".join(f"<p class=note>{n}</p>" for n in notes)


def _low_count_note(rec: RobustnessResult) -> str:
    """One line under the per-class drops naming the classes with few probe images (``""`` when none)."""
    _, low = _class_labels(rec)
    if not low:
        return ""
    counts = (rec.probe_counts() or {}).get("class_counts", {})
    listed = ", ".join(f"{_esc(n)} ({counts[n]})" for n in low)
    return (
        f'<p class="note low-count">{LOW_COUNT_MARK} fewer than {LOW_COUNT_THRESHOLD} probe images: {listed}; '
        "their per-class accuracies and drops are too noisy to read (raise <code>probe_size</code>).</p>"
    )


def plotly_script(plotlyjs: str, folder: Path) -> str:
    """The page's plotly.js tag: inline, or ``plotly.min.js`` written once into ``folder`` and loaded from it."""
    if plotlyjs == "inline":
        import plotly.offline

        return f"<script>{plotly.offline.get_plotlyjs()}</script>"
    write_plotly_js(folder)
    return '<script src="plotly.min.js"></script>'


def build_report(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    plotlyjs: Literal["directory", "inline"] = "directory",
    progress: bool | None = None,
    compare: str | os.PathLike | None = None,
) -> Path:
    """Write the report page of a run and ``summary.json`` beside it; returns the page's path.

    With ``compare`` (another run), write instead the page setting the two runs side by side (default
    ``<run>/trainviz/report/compare.html``; no ``summary.json``): see :mod:`trainviz.report.compare`.

    Args:
        run_dir: the run's log folder, its ``trainviz`` folder, or a parent holding exactly one run.
        out: the HTML file to write (default ``<run>/trainviz/report/index.html``).
        plotlyjs: ``"directory"`` writes ``plotly.min.js`` (4.8 MB) once beside the page; ``"inline"`` puts
            it in the page (one self-contained file). Both work offline; the images of the callbacks' sections
            are linked from the run folder either way.
        progress: a line per section on stderr (tqdm when installed); ``None``: only on large runs.
        compare: run B of a comparison (this run is run A).

    Raises:
        FileNotFoundError, ValueError: see :func:`find_run`.
        ProbeSetMismatchError: with ``compare``, the runs have different probe sets.
    """

    if compare is not None:
        from trainviz.report.compare import build_comparison

        return build_comparison(run_dir, compare, out, plotlyjs)

    if plotlyjs not in ("directory", "inline"):
        raise ValueError(f"Expected `plotlyjs` to be one of 'directory', 'inline'; got {plotlyjs!r}.")
    run = load_run(run_dir)
    out = Path(out) if out is not None else run.root / "report" / "index.html"
    summary = run.latest.report_summary() if run.latest else {}
    atomic_write(out.parent / "summary.json", json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))

    figures = _training_figures(run) + (_robustness_figures(run) if run.latest else [])
    sections: list[str] = []
    data: list[Any] = []
    for key, heading in _SECTIONS.items():
        parts = []
        for section, caption, fig in figures:
            if section == key:
                data.append(f'<script type="application/json" id="fig-{len(data)}">{_figure_json(fig)}</script>')
                parts.append(
                    f'<figure><div class="plot" data-figure="fig-{len(data) - 1}"></div>'
                    f"<figcaption>{_esc(caption)}</figcaption></figure>"
                )
        if parts and key == "corruptions" and run.latest.table:
            parts.append(_accuracy_table(run.latest, summary.get("intervals") or {}))
        if parts and key == "classes":
            parts.append(_low_count_note(run.latest))
        if parts:
            sections.append(f'<section id="{key}"><h2>{_esc(heading)}</h2>{"".join(parts)}</section>')
    if run.examples_png is not None:
        img = base64.b64encode(run.examples_png).decode("ascii")
        sections.append(
            '<section id="examples"><h2>Examples</h2><figure><img class="grid" alt="clean and corrupted examples" '
            f'src="data:image/png;base64,{img}"><figcaption>Probe images at epoch {_esc(run.latest.epoch)}: clean, '
            "then each corruption at its highest severity; prediction and confidence under each image (green right, "
            "red wrong).</figcaption></figure></section>"
        )
    nav = [(key, heading) for key, heading in _SECTIONS.items() if f'id="{key}"' in "".join(sections)]
    nav += [("examples", "Examples")] if run.examples_png is not None else []
    generic_nav, generic, generic_data = render_sections(run.root, out.parent.resolve(), progress)
    sections.append(generic)
    data.append(generic_data)
    nav += [*generic_nav, ("manifest", "Manifest")]
    manifest_rows: list[tuple[str, Any]] = []
    if run.manifest:
        _flatten("", run.manifest, manifest_rows)
    no_manifest = "<p class=note>No manifest recorded (add RunManifestCallback).</p>"
    manifest = _key_table(manifest_rows) if manifest_rows else no_manifest
    sections.append(f'<section id="manifest"><h2>Run manifest</h2>{manifest}{_tensorboard_note(run.root)}</section>')
    if run.latest is None:
        sections.insert(0, "<p class=note>No robustness artifacts in this run (add RobustnessCallback).</p>")

    script = plotly_script(plotlyjs, out.parent)
    run_name = run.root.parent.name
    page = PAGE.substitute(
        title=_esc(f"trainviz report: {run_name}"),
        run_name=_esc(run_name),
        run_path=_esc(run.root.parent),
        headline=_headline(run, summary) if run.latest else "",
        nav="".join(f'<a href="#{_esc(key)}">{_esc(heading)}</a>' for key, heading in nav),
        plotly=script,
        sections="".join(sections),
        data="".join(data),
    )
    atomic_write(out, page.encode("utf-8"))
    return out
