"""Fit-end cost of the embedding's animation page: built from a plain figure dict and rendered without validation
(``trainviz.render.embedding.animation_pages``, what a fit end runs) against the validated ``go.Figure`` of the same
frames rendered as before, in interleaved pairs.

    python benchmarks/animation_pages_cost.py [--points 256] [--epochs 6] [--pairs 7]

One layer's PCA frames of ``--points`` points over ``--epochs`` epochs, 6 classes, with predictions (the
open-circle markers), as the default embedding callback writes for a 6-epoch fit. Prints the medians and their
ratio, warm (plotly imported and its caches filled), and for the first page of a fresh process, which is what a fit
end pays: each pair runs two new interpreters that import ``trainviz.render.embedding`` and time one page.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import numpy as np

from trainviz.render.embedding import animation_figure, animation_pages

FIRST = """
import time, numpy as np
from trainviz.render.embedding import animation_figure, animation_pages
n, epochs = {n}, {epochs}
rng = np.random.default_rng(0)
labels, ids = np.arange(n) % 6, np.arange(n)
frames = {{e: rng.normal(size=(n, 2)) for e in range(epochs)}}
predictions = {{e: rng.integers(0, 6, n) for e in range(epochs)}}
start = time.perf_counter()
if {validated}:
    fig = animation_figure({{"features / pca": frames}}, labels, ids, predictions=predictions, title="features: pca")
    fig.to_html(include_plotlyjs="directory", full_html=True, auto_play=False)
else:
    animation_pages({{("features", "pca"): frames}}, labels, ids, predictions=predictions)
print(time.perf_counter() - start)
"""


def first_page(n: int, epochs: int, validated: bool) -> float:
    """Seconds of the first page in a new interpreter (after its imports of trainviz and numpy, as at a fit end)."""
    code = FIRST.format(n=n, epochs=epochs, validated=validated)
    return float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.points
    labels, ids = np.arange(n) % 6, np.arange(n)
    frames = {("features", "pca"): {e: rng.normal(size=(n, 2)) for e in range(args.epochs)}}
    predictions = {e: rng.integers(0, 6, n) for e in range(args.epochs)}

    def validated() -> str:
        panels = {"features / pca": frames[("features", "pca")]}
        fig = animation_figure(panels, labels, ids, predictions=predictions, title="features: pca")
        return fig.to_html(include_plotlyjs="directory", full_html=True, auto_play=False)

    def unvalidated() -> str:
        return animation_pages(frames, labels, ids, predictions=predictions)["features_pca.html"]

    validated(), unvalidated()  # imports and plotly's first-use caches
    before, after = [], []
    for _ in range(args.pairs):
        start = time.perf_counter()
        validated()
        before.append(time.perf_counter() - start)
        start = time.perf_counter()
        unvalidated()
        after.append(time.perf_counter() - start)
    a, b = statistics.median(before), statistics.median(after)
    what = f"{n} points x {args.epochs} epochs"
    print(f"{what}: validated figure {a:.3f} s, figure dict {b:.3f} s (median of {args.pairs}); ratio {b / a:.2f}")
    before, after = [], []
    for _ in range(args.pairs):
        before.append(first_page(n, args.epochs, validated=True))
        after.append(first_page(n, args.epochs, validated=False))
    a, b = statistics.median(before), statistics.median(after)
    print(f"first page of a process: validated figure {a:.3f} s, figure dict {b:.3f} s; ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
