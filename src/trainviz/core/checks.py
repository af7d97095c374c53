"""Argument checks with the house message: "Expected `every_n_epochs` to be a positive int, got 0".

Every check returns the value (normalised where it says so) or raises ``ValueError`` naming the argument and,
for fixed choices, the valid ones.

Example:
    >>> from trainviz.core.checks import check_int, check_layers
    >>> check_int("flip_max_steps", 0, minimum=0)
    0
    >>> check_layers("layers", "auto")
    ('auto',)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

__all__ = [
    "check_bool",
    "check_choice",
    "check_float",
    "check_images",
    "check_int",
    "check_layers",
    "check_positive_int",
]


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """An int (bools rejected) within ``[minimum, maximum]`` where given."""
    ok = not isinstance(value, bool) and isinstance(value, int)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        if minimum == 1 and maximum is None:
            what = "a positive int"
        elif maximum is None:
            what = f"an int >= {minimum}" if minimum is not None else "an int"
        else:
            what = f"an int in {minimum}..{maximum}"
        raise ValueError(f"Expected `{name}` to be {what}, got {value!r}.")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """An int >= 1 (bools rejected)."""
    return check_int(name, value, minimum=1)


def check_float(
    name: str, value: Any, minimum: float | None = None, maximum: float | None = None, *, strict_minimum: bool = False
) -> float:
    """A finite real number (bools rejected) within the bounds, as a ``float``; ``strict_minimum`` excludes the
    minimum itself ("a positive number")."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict_minimum else value >= minimum
    if ok and maximum is not None:
        ok = value <= maximum
    if not ok:
        if minimum == 0 and strict_minimum and maximum is None:
            what = "a positive number"
        else:
            low = "" if minimum is None else (f" > {minimum}" if strict_minimum else f" >= {minimum}")
            high = "" if maximum is None else f" <= {maximum}"
            what = "a finite number" + (low + (" and" if low and high else "") + high if low or high else "")
        raise ValueError(f"Expected `{name}` to be {what}, got {value!r}.")
    return float(value)


def check_bool(name: str, value: Any) -> bool:
    """A bool (not merely truthy)."""
    if not isinstance(value, bool):
        raise ValueError(f"Expected `{name}` to be a bool, got {value!r}.")
    return value


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    """One of ``choices``; the message lists the valid ones."""
    if value not in choices:
        raise ValueError(f"Expected `{name}` to be one of {', '.join(repr(c) for c in choices)}; got {value!r}.")
    return value


def check_layers(name: str, value: Any) -> tuple[str, ...]:
    """A layer name, ``"auto"``, or a non-empty list of distinct names, as a tuple."""
    if isinstance(value, str):
        value = (value,)
    ok = isinstance(value, Sequence) and len(value) > 0 and all(isinstance(n, str) and n for n in value)
    if not ok or len(set(value)) != len(value):
        raise ValueError(f"Expected `{name}` to be a layer name, 'auto', or a list of distinct names, got {value!r}.")
    return tuple(value)


def check_images(images: Any, name: str = "images") -> torch.Tensor:
    """A floating-point image batch ``(N, C, H, W)`` with N >= 1."""
    ok = isinstance(images, torch.Tensor) and images.dim() == 4 and images.shape[0] > 0 and images.is_floating_point()
    if not ok:
        got = f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"Expected `{name}` to be a floating tensor of shape (N, C, H, W) with N >= 1, got {got}.")
    return images
