"""CPU cost of the PNGs a fit writes, at trainviz's zlib level (``trainviz.sinks.artifacts.PNG_LEVEL``) against
Pillow's default (6), in interleaved pairs.

    python benchmarks/png_cost.py [--epochs 2] [--pairs 7]

Runs a short fit of ``budget_overhead.py``'s user-shaped CNN with ``trainviz.default_callbacks(budget=None)`` (every
callback's pictures: CAM overlays, robustness examples and curves, feature maps, dynamics, the embedding's scatter and
the projector's sprite), decodes every PNG it wrote, and encodes them all again at each level, timing the process CPU
seconds (the writer thread's work is CPU). Prints each pair, the medians, their ratio, and the bytes at each level.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, str(pathlib.Path(__file__).parent))

import budget_overhead  # noqa: E402

import trainviz  # noqa: E402
from trainviz.sinks.artifacts import PNG_LEVEL  # noqa: E402


def encode(pictures: list[np.ndarray], level: int) -> tuple[float, int]:
    """CPU seconds and bytes of encoding every picture at zlib ``level``."""
    start, size = time.process_time(), 0
    for picture in pictures:
        buf = io.BytesIO()
        Image.fromarray(picture).save(buf, format="PNG", compress_level=level)
        size += buf.tell()
    return time.process_time() - start, size


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        fit_args = argparse.Namespace(epochs=args.epochs, n_train=1024, n_val=256)
        budget_overhead.fit(trainviz.default_callbacks(budget=None), fit_args, root)
        paths = sorted(pathlib.Path(root).rglob("*.png"))
        pictures = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    pixels = sum(p.shape[0] * p.shape[1] for p in pictures)
    print(f"{len(pictures)} PNGs of the fit, {pixels / 1e6:.1f} Mpixels")
    default, fast = [], []
    for i in range(args.pairs):
        first, second = (6, PNG_LEVEL) if i % 2 == 0 else (PNG_LEVEL, 6)
        timed = {first: encode(pictures, first), second: encode(pictures, second)}
        default.append(timed[6])
        fast.append(timed[PNG_LEVEL])
        print(f"pair {i + 1}: level 6 {timed[6][0]:.3f} s, level {PNG_LEVEL} {timed[PNG_LEVEL][0]:.3f} s")
    a, b = statistics.median(t for t, _ in default), statistics.median(t for t, _ in fast)
    size_a, size_b = default[0][1], fast[0][1]
    print(
        f"median CPU seconds: level 6 {a:.3f}, level {PNG_LEVEL} {b:.3f}; ratio {b / a:.2f}; "
        f"bytes {size_a / 1e6:.2f} MB against {size_b / 1e6:.2f} MB (ratio {size_b / size_a:.2f})"
    )


if __name__ == "__main__":
    main()
