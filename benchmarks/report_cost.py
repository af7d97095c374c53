"""What the offline report costs on a long run: time to build it and the page's size.

    python benchmarks/report_cost.py [--epochs 50] [--model cnn] [--out DIR]

One ``trainviz demo --small`` run of ``--epochs`` epochs with every callback of the demo suite (``--model
classmap`` adds the decoder maps), unless ``--out`` already holds one; then ``build_report`` on it, timed once in
this process (plotly imported before the clock starts, as in a second build), and the sizes of ``index.html`` and
of the ``plotly.min.js`` written beside it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--model", choices=("cnn", "classmap"), default="cnn")
    parser.add_argument("--out", default=None, help="run folder to (re)use (default: a temporary one)")
    args = parser.parse_args()

    from trainviz.cli import main as cli

    out = Path(args.out or tempfile.mkdtemp(prefix="trainviz-report-cost-"))
    run = out / "version_0"
    if not run.is_dir():
        start = time.perf_counter()
        argv = ["demo", "--small", "--epochs", str(args.epochs), "--out", str(out), "--no-progress"]
        assert cli([*argv, "--model", args.model]) == 0
        print(f"demo run: {time.perf_counter() - start:.0f} s")

    import plotly.offline  # noqa: F401  (import cost kept out of the timing)

    from trainviz.report import build_report

    start = time.perf_counter()
    page = build_report(run, progress=False)
    seconds = time.perf_counter() - start
    mb = 1e6
    html_mb, js_mb = page.stat().st_size / mb, (page.parent / "plotly.min.js").stat().st_size / mb
    images = sum(p.stat().st_size for p in (run / "trainviz").rglob("*.png")) / mb
    print(f"run: {run} ({args.model}, {args.epochs} epochs)")
    print(f"build_report: {seconds:.2f} s")
    print(f"index.html: {html_mb:.2f} MB; plotly.min.js: {js_mb:.2f} MB; linked PNGs in the run: {images:.1f} MB")


if __name__ == "__main__":
    main()
