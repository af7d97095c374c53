"""Options declared once: each capability's user options are one keyword-only dataclass that checks itself.

A capability's options class (``CAMOptions``, ``RobustnessOptions``, ...) lives in ``trainviz/probes/<capability>.py``
and derives from :class:`Options`: its fields are the options with their defaults, and its :meth:`Options.check`
validates and normalises them with :mod:`trainviz.core.checks` (the message names the option and, for choices,
the valid ones). The callback builds it by keyword from its own flat keyword arguments (what users and the YAML
presets pass, which jsonargparse reads from the callback's signature), and the probe uses it. A test holds the
callback's signature to the options' fields and defaults (:func:`signature_mismatches`), so the two cannot drift.

Example:
    >>> from dataclasses import dataclass
    >>> from trainviz.core.checks import check_choice, check_positive_int
    >>> @dataclass(frozen=True, kw_only=True)
    ... class DemoOptions(Options):
    ...     method: str = "gradcam"
    ...     steps: int = 16
    ...     def check(self):
    ...         self.set(method=check_choice("method", self.method, ("gradcam", "cam")),
    ...                  steps=check_positive_int("steps", self.steps))
    >>> DemoOptions(steps=4).steps
    4
    >>> DemoOptions(method="x")
    Traceback (most recent call last):
    ...
    ValueError: Expected `method` to be one of 'gradcam', 'cam'; got 'x'.
    >>> def demo_callback(method="gradcam", steps=16, every_n_epochs=1): ...
    >>> signature_mismatches(demo_callback, DemoOptions)
    []
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

__all__ = ["Options", "signature_mismatches"]

T = TypeVar("T", bound="Options")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    """Base of the options dataclasses: keyword-only, frozen, checked on construction (:meth:`check`)."""

    positional: ClassVar[tuple[str, ...]] = ()  # none: options are built by keyword

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Validate (raise ``ValueError`` naming the option and the valid values) and normalise with :meth:`set`."""

    def set(self, **values: Any) -> None:
        """Store normalised values from :meth:`check` (the dataclass is frozen to everyone else)."""
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The option names, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def pick(cls: type[T], values: dict[str, Any]) -> T:
        """The options among ``values`` (e.g. a callback's ``locals()``), the rest ignored."""
        return cls(**{k: v for k, v in values.items() if k in cls.names()})

    def asdict(self) -> dict[str, Any]:
        """``{option: value}`` (shallow: values are kept as they are)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return inspect.Parameter.empty


def signature_mismatches(function: Callable[..., Any], options: type[Options]) -> list[str]:
    """The options of ``options`` that ``function`` (a callback's ``__init__``) lacks or defaults differently:
    ``[]`` when the flat keyword arguments and the dataclass agree."""
    params = inspect.signature(function).parameters
    out = []
    for field in dataclasses.fields(options):
        if field.name not in params:
            out.append(f"{field.name}: missing")
            continue
        default, declared = params[field.name].default, _default(field)
        if default != declared and not (isinstance(declared, tuple) and list(declared) == default):
            out.append(f"{field.name}: default {default!r} != {declared!r}")
    return out
