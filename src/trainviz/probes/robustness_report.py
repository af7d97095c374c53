"""The robustness capability's part of the report, drawn from its records alone (torch-free): the headline, the
corruption x severity heat map and table, the curves over epochs, the per-class drops, calibration, the
adversarial figures and the example grid (:meth:`RobustnessResult.report_section
<trainviz.probes.robustness_result.RobustnessResult.report_section>`), and the curves two runs are compared on
(:meth:`~trainviz.probes.robustness_result.RobustnessResult.compare_section`). Names come from
:data:`~trainviz.probes.robustness_names.NAMES`.

Accuracies measured on the ``n`` probe images carry their 95% Wilson interval (the headline, the hover of the
corruption x severity heat map and the table below it, the FGSM error bars, the clean per-class accuracy in
the hover of the per-class drops); classes with fewer than 10 probe images are marked with a dagger and a
note. Records written before trainviz recorded ``n`` and ``class_counts`` get neither (and a note says so).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from trainviz.probes.robustness_names import NAMES
from trainviz.probes.robustness_result import (
    CORRUPTION_PROTOCOL,
    LOW_COUNT_THRESHOLD,
    MCE_REFERENCE,
    PerImage,
    RobustnessResult,
    eps_label,
    proportion_interval,
)
from trainviz.report.page import esc as _esc
from trainviz.report.page import key_table as _key_table

__all__ = ["compare_section", "load_latest_images", "report_section"]

_FROST_NOTE = "an approximation: a procedural texture, not the frost photographs; not comparable with published frost"

GROUPS = {
    "corruptions": "Corruptions",
    "curves": "Over epochs",
    "classes": "Per-class drops",
    "calibration": "Calibration",
    "adversarial": "Adversarial",
    "examples": "Examples",
}


class _Run:
    """The results of every epoch, the latest one with its per-image arrays when they were saved."""

    def __init__(self, results: list[RobustnessResult]) -> None:
        self.robustness = results

    @property
    def latest(self) -> RobustnessResult:
        return self.robustness[-1]


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
            ci = _ci(intervals.get(f"accuracy/{c}/s{s}"))
            value = "" if np.isnan(heat[i, j]) else f"{heat[i, j]:.3f}"
            tds.append(f"<td>{value} <span class=ci>{ci}</span></td>")
        label = _esc(c) + (f" <span class=ci>({_FROST_NOTE})</span>" if c == "frost" else "")
        body.append(f"<tr><th>{label}</th>{''.join(tds)}</tr>")
    clean = f"clean {rec.clean.accuracy:.3f} {_ci(intervals.get('clean/accuracy'))}".rstrip()
    title = "Accuracy per corruption and severity" + (", with 95% Wilson intervals" if intervals else "")
    return (
        f'<details class="cells"><summary>{title} ({clean})</summary><table class="cells"><tr><th></th>{head}</tr>'
        f"{''.join(body)}</table></details>"
    )


def _corruption_figures(run: _Run, intervals: Mapping[str, list[float]]) -> list[tuple[str, str, Any]]:
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
    clean_ci = intervals.get("clean/accuracy")
    if intervals:
        text = [[_ci(intervals.get(f"accuracy/{c}/s{s}")) for s in levels] for c in corruptions]
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
        curves[f"FGSM accuracy, eps {label}"] = [r.summary().get(f"fgsm/accuracy@{label}") for r in results]
    for eps in rec.pgd.epsilons if rec.pgd is not None else []:  # gaps at the runs without PGD
        label = eps_label(eps)
        curves[f"PGD accuracy, eps {label}"] = [r.summary().get(f"pgd/accuracy@{label}") for r in results]
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


def _robustness_figures(run: _Run) -> list[tuple[str, str, Any]]:
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
        keys = ["clean/accuracy", *(f"fgsm/accuracy@{eps_label(e)}" for e in rec.fgsm.epsilons)]
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


def _pgd_line(rec: RobustnessResult, intervals: Mapping[str, Any]) -> tuple[list, dict, dict | None, str] | None:
    """The PGD line beside FGSM's (x, series, error bars or ``None``, caption) when PGD ran in ``rec``."""
    pgd = rec.pgd
    if pgd is None or not pgd.measured:
        return None
    acc = np.array([rec.clean.accuracy, *pgd.accuracy])
    keys = ["clean/accuracy", *(f"pgd/accuracy@{eps_label(e)}" for e in pgd.epsilons)]
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


def _headline(run: _Run, summary: Mapping[str, Any]) -> str:
    rec = run.latest
    intervals = summary.get("intervals") or {}
    keys = ["clean/accuracy", "corrupted/accuracy", "mce", "relative_mce", "normalized_mce", "normalized_relative_mce"]
    keys += ["clean/ece", "corrupted/ece"]
    keys += [k for k in summary if k.startswith(("fgsm/accuracy@", "pgd/accuracy@"))]
    keys += ["flip/steps_mean", "flip/never_fraction"]
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


def _npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_latest_images(results: list[RobustnessResult], folder: Path) -> bytes | None:
    """Give the latest result its per-image arrays (``epoch_XXXX/{table,adversarial}.npz``); the example grid's
    PNG of that epoch, or ``None``."""
    latest = results[-1]
    epoch = folder / f"epoch_{latest.epoch:04d}"
    table = _npz(epoch / "table.npz")
    if table:
        latest.images = PerImage.from_arrays(table, _npz(epoch / "adversarial.npz"))
    png = epoch / "examples.png"
    return png.read_bytes() if png.is_file() else None


def report_section(results: list[RobustnessResult], folder: Path) -> dict[str, Any]:
    """The robustness part of a run's report (see :mod:`trainviz.report.sections`): ``headline``, ``summary``
    (what ``summary.json`` holds) and the ``parts`` (figures and HTML by group)."""
    examples = load_latest_images(results, folder)
    run = _Run(results)
    rec = run.latest
    summary = rec.report_summary()
    intervals = summary.get("intervals") or {}
    parts: list[dict[str, Any]] = []
    for group, caption, figure in _robustness_figures(run):
        parts.append({"group": group, "heading": GROUPS[group], "caption": caption, "figure": figure})
        if group == "corruptions" and rec.table and not any(p.get("html") for p in parts):
            parts.append({"group": group, "heading": GROUPS[group], "html": _accuracy_table(rec, intervals)})
    classes = [i for i, p in enumerate(parts) if p["group"] == "classes"]
    if classes:
        parts.insert(classes[-1] + 1, {"group": "classes", "heading": GROUPS["classes"], "html": _low_count_note(rec)})
    if examples is not None:
        img = base64.b64encode(examples).decode("ascii")
        parts.append(
            {
                "group": "examples",
                "heading": GROUPS["examples"],
                "html": '<figure><img class="grid" alt="clean and corrupted examples" '
                f'src="data:image/png;base64,{img}"><figcaption>Probe images at epoch {_esc(rec.epoch)}: clean, '
                "then each corruption at its highest severity; prediction and confidence under each image (green "
                "right, red wrong).</figcaption></figure>",
            }
        )
    return {"headline": _headline(run, summary), "summary": summary, "parts": parts}


def compare_section(results: list[RobustnessResult]) -> dict[str, Any]:
    """What two runs are compared on: ``title``, the curve ``items`` (keys: the metrics' names in
    :data:`~trainviz.probes.robustness_names.NAMES`) and the ``records`` (each epoch's metrics by name)."""
    records = [{k: v for k, v in r.summary().items() if NAMES.canonical(k) == k} for r in results]
    corruptions = list(dict.fromkeys(c for r in results for c in r.corruptions))
    fgsm = sorted({k for r in records for k in r if k.startswith("fgsm/accuracy@")})
    pgd = sorted({k for r in records for k in r if k.startswith("pgd/accuracy@")})
    unit = (0, 1.02)
    items: list[dict[str, Any]] = [
        {
            "title": "Clean and corrupted accuracy",
            "y": "accuracy",
            "y_range": unit,
            "series": [
                {"name": "clean accuracy", "key": ["clean/accuracy"]},
                {"name": "corrupted accuracy (mean)", "key": ["corrupted/accuracy"]},
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
            "series": [{"name": c, "key": [f"accuracy/{c}"]} for c in corruptions],
        },
    ]
    for title, keys in (("FGSM accuracy", fgsm), ("PGD accuracy", pgd)):
        if keys:
            series = [{"name": k.replace("/", " ").replace("_", " "), "key": [k]} for k in keys]
            items.append({"title": title, "y": "accuracy", "y_range": unit, "series": series})
    return {"title": "Robustness", "items": items, "records": records}
