"""Build the HTML report of a run from its artifacts alone (no model, no torch, no retraining); generic: what
each capability shows is its own.

The page holds, in order: the training curves the run's logger recorded (:mod:`trainviz.report.logged`), the
part of every capability whose result type draws it from all its records (:data:`trainviz.report.run.REPORTED`:
the robustness report, with its headline), every ``<callback>/section.json`` (:mod:`trainviz.report.sections`)
and the run manifest. Writes ``index.html`` (or ``out``) and ``summary.json`` beside it (the robustness metrics,
see :mod:`trainviz.report.summary`), plus ``plotly.min.js`` unless the page inlines it. The page works offline.

Example:
    >>> from trainviz.report import build_report
    >>> build_report("runs/demo/version_0")  # doctest: +SKIP
    PosixPath('runs/demo/version_0/trainviz/report/index.html')
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from trainviz.report.logged import logged_parts
from trainviz.report.page import Figures, check_plotlyjs, esc, flatten, key_table, write_page
from trainviz.report.run import find_run, read_manifest, reported_results
from trainviz.report.sections import render_parts, render_sections
from trainviz.sinks.artifacts import atomic_write
from trainviz.sinks.tensorboard import tensorboard_command

__all__ = ["build_report"]


def _tensorboard_note(root: Path) -> str:
    """How to see every epoch's images of this run in TensorBoard (it keeps 10 per tag by default)."""
    epochs = [int(p.name.split("_")[1]) for p in root.glob("*/epoch_*") if p.name.split("_")[1].isdigit()]
    command = tensorboard_command(root.parent, max(epochs, default=-1) + 1)
    return (
        f"<p class=note>TensorBoard keeps 10 images per tag by default; to see every epoch's pictures of this run: "
        f"<code>{esc(command)}</code> (<code>images=0</code> shows none).</p>"
    )


def _manifest(root: Path) -> str:
    rows: list[tuple[str, Any]] = []
    manifest = read_manifest(root)
    if manifest:
        flatten("", manifest, rows)
    body = key_table(rows) if rows else "<p class=note>No manifest recorded (add RunManifestCallback).</p>"
    return f'<section id="manifest"><h2>Run manifest</h2>{body}{_tensorboard_note(root)}</section>'


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
        FileNotFoundError, ValueError: see :func:`~trainviz.report.find_run`.
        ProbeSetMismatchError: with ``compare``, the runs have different probe sets.
    """
    if compare is not None:
        from trainviz.report.compare import build_comparison

        return build_comparison(run_dir, compare, out, plotlyjs)

    check_plotlyjs(plotlyjs)
    root = find_run(run_dir)
    out = Path(out) if out is not None else root / "report" / "index.html"

    parts = logged_parts(root.parent)
    headline, summary = "", {}  # type: tuple[str, dict[str, Any]]
    for folder, (cls, results) in reported_results(root).items():
        drawn = getattr(cls, "report_section", None)
        if drawn is None:
            continue
        section = drawn(results, root / folder)
        headline += section.get("headline", "")
        summary |= section.get("summary") or {}
        parts += section.get("parts", [])
    atomic_write(out.parent / "summary.json", json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))

    figures = Figures()
    nav, eager = render_parts(parts, figures)
    generic_nav, generic, generic_data = render_sections(root, out.parent.resolve(), progress)
    nav += [*generic_nav, ("manifest", "Manifest")]
    run_name = root.parent.name
    return write_page(
        out,
        title=f"trainviz report: {run_name}",
        run_name=run_name,
        run_path=str(root.parent),
        headline=headline,
        nav=nav,
        sections=eager + generic + _manifest(root),
        data="".join(figures.blocks) + generic_data,
        plotlyjs=plotlyjs,
    )
