"""Small chores every capability shares, done one way: which probe images to show, which epochs a strip shows,
class names, numbers for JSON, and warning once.

Example:
    >>> from trainviz.core.common import example_indices, strip_epochs, class_names, json_number
    >>> example_indices([0, 0, 1, 1, 2], 4)
    [0, 2, 4, 1]
    >>> strip_epochs([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 4)
    [0, 3, 6, 9]
    >>> class_names(["cat"], 3)
    ['cat', '1', '2']
    >>> json_number(float("nan")) is None
    True
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["WarnOnce", "class_names", "example_indices", "json_number", "json_numbers", "strip_epochs"]


def example_indices(labels: Sequence[int] | Any, n: int) -> list[int]:
    """``n`` probe indices to show: the first image of each class (in class order), then the rest in order."""
    labels = [int(v) for v in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    firsts = [labels.index(c) for c in sorted(set(labels))]
    taken = set(firsts)
    return (firsts + [i for i in range(len(labels)) if i not in taken])[:n]


def strip_epochs(epochs: Sequence[int], limit: int) -> list[int]:
    """At most ``limit`` of ``epochs`` for an evolution strip: evenly spread, the first and the last included."""
    epochs = list(epochs)
    if len(epochs) <= limit:
        return epochs
    keep = sorted(set(np.linspace(0, len(epochs) - 1, limit).round().astype(int).tolist()))
    return [epochs[i] for i in keep]


def class_names(names: Sequence[str] | None, k: int) -> list[str]:
    """``k`` display names: the given ones, completed (or replaced, when there are more) by class indices."""
    given = [str(n) for n in (names or [])][:k]
    return given + [str(c) for c in range(len(given), k)]


def json_number(value: Any) -> float | None:
    """A float for JSON, ``None`` for NaN and infinities (JSON has neither)."""
    value = float(value)
    return value if math.isfinite(value) else None


def json_numbers(values: Any) -> list[float | None]:
    """:func:`json_number` of each value of a sequence or array."""
    return [json_number(v) for v in np.asarray(values, dtype=np.float64).ravel().tolist()]


class WarnOnce:
    """Warn the first time only (per object, so per process after a restore), and count every failure.

    Example:
        >>> w = WarnOnce()
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = w("first"), w("second")
        >>> [str(c.message) for c in caught], w.count
        (['first'], 2)
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, message: str, stacklevel: int = 3) -> bool:
        """Count one failure; warn with ``message`` if it is the first. Returns whether it warned."""
        self.count += 1
        if self.count == 1:
            warnings.warn(message, stacklevel=stacklevel)
            return True
        return False

    def __getstate__(self) -> dict[str, Any]:
        return {"count": 0}  # a new process warns again on its first failure

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.count = state.get("count", 0)
