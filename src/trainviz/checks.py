"""Argument checks with the house message: "Expected `every_n_epochs` to be a positive int, got 0"."""

from __future__ import annotations

from typing import Any

__all__ = ["check_choice", "check_positive_int"]


def check_positive_int(name: str, value: Any) -> int:
    """Return ``value`` if it is an int >= 1 (bools rejected), else raise ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"Expected `{name}` to be a positive int, got {value!r}.")
    return value


def check_choice(name: str, value: Any, choices: tuple) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing the valid choices."""
    if value not in choices:
        raise ValueError(f"Expected `{name}` to be one of {', '.join(repr(c) for c in choices)}; got {value!r}.")
    return value
