"""The probability histogram picture (trainviz.render.images.histogram_image): what the picture draws."""

from __future__ import annotations

import numpy as np
import pytest

from trainviz.render.images import histogram_image

BLUE = np.array([70, 110, 200])


def _bar_heights(image: np.ndarray, bins: int = 10, bar: int = 18, height: int = 110) -> list[int]:
    """Blue pixels in the middle column of each bin of the first panel (the picture's own geometry)."""
    base = 16 + 14 + height
    column = [10 + b * bar + bar // 2 for b in range(bins)]
    return [int((np.abs(image[: base + 1, x] - BLUE).sum(1) == 0).sum()) for x in column]


def test_bars_are_the_share_of_values_in_each_bin():
    values = np.array([0.05, 0.05, 0.05, 0.55, 0.96, 0.99, 0.999, 1.0])  # bins 0, 5 and 9: 3/8, 1/8, 4/8
    heights = _bar_heights(histogram_image({"x": values}))
    expected = np.histogram(values, bins=10, range=(0, 1))[0] / len(values) * 110
    assert heights == pytest.approx(np.round(expected) + (expected > 0), abs=1)  # a bar spans top..base inclusive
    assert [h > 0 for h in heights] == [c > 0 for c in np.histogram(values, bins=10, range=(0, 1))[0]]
