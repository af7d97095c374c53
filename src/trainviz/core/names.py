"""The name table of a capability: each metric's one name, its direction and its description, with the older
names it is still found under (aliases). Like torchmetrics' ``Metric.higher_is_better``, the direction is
metadata, which a CI gate needs. Torch-free.

A name may hold fields in braces (``accuracy/{corruption}``, ``fgsm/accuracy@{eps}``): a field is any text
without ``/`` or ``@``; a field marked with a star (``per_class_accuracy/{class*}``) is any text, ``/`` and ``@``
included (a class name such as Fashion-MNIST's ``T-shirt/top``). An alias is a pattern with the same fields
(``corruption_accuracy/{corruption}``).

The report shows a metric as :attr:`Metric.heading` (its title, or its name) and :attr:`Metric.text` (its
description and direction: ``"Deletion AUC: area under ... (lower is better)."``).

Example:
    >>> names = NameTable([
    ...     Metric("clean/accuracy", True, "accuracy on the clean probe set", aliases=("clean_accuracy",)),
    ...     Metric("accuracy/{corruption}", True, "accuracy under a corruption",
    ...            aliases=("corruption_accuracy/{corruption}",)),
    ... ])
    >>> names.canonical("corruption_accuracy/fog"), names.metric("clean_accuracy").higher_is_better
    ('accuracy/fog', True)
    >>> names.aliases("accuracy/fog")
    ['corruption_accuracy/fog']
    >>> names.format("accuracy/{corruption}", corruption="fog")
    'accuracy/fog'
    >>> NameTable([Metric("per_class/{class*}", True, "accuracy of a class")]).canonical("per_class/T-shirt/top")
    'per_class/T-shirt/top'
    >>> Metric("mce", False, "mean corruption error", title="mCE").text
    'mCE: mean corruption error (lower is better).'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import KW_ONLY, dataclass
from typing import Any

__all__ = ["Metric", "NameTable", "UnknownNameError"]

_FIELD = re.compile(r"\{(\w+)(\*?)\}")  # a field's name, and "*" when it takes any text


class UnknownNameError(KeyError):
    """A name that is neither a metric's name nor one of its aliases."""


@dataclass(frozen=True)
class Metric:
    """One metric: its name (a pattern with ``{field}`` parts), whether a higher value is better (``None``: no
    direction, it cannot be gated; ``no_direction`` says why), what it means, its older names, and where it
    appears (``logged``: a scalar of the loggers; ``summarized``: a key of ``summary.json``); ``title``: its
    heading in the report (default: the name)."""

    name: str
    higher_is_better: bool | None
    description: str
    _: KW_ONLY
    aliases: tuple[str, ...] = ()
    logged: bool = True
    summarized: bool = True
    no_direction: str = ""
    title: str = ""

    @property
    def direction(self) -> str:
        """``"higher is better"``, ``"lower is better"`` or ``"no better direction"``."""
        return {True: "higher is better", False: "lower is better", None: "no better direction"}[self.higher_is_better]

    @property
    def heading(self) -> str:
        """The metric's heading in the report: its title, or its name."""
        return self.title or self.name

    @property
    def text(self) -> str:
        """What the report says of the metric: ``"<heading>: <description> (<direction>)."``, without the
        direction when it has none."""
        direction = "" if self.higher_is_better is None else f" ({self.direction})"
        return f"{self.heading}: {self.description}{direction}."


def _regex(pattern: str) -> re.Pattern[str]:
    parts = _FIELD.split(pattern)  # literal, field, star, literal, field, star, ...
    out = ""
    for i in range(0, len(parts), 3):
        out += re.escape(parts[i])
        if i + 1 < len(parts):
            out += f"(?P<{parts[i + 1]}>{'.+' if parts[i + 2] else '[^/@]+'})"
    return re.compile(out + r"\Z")


class NameTable:
    """A capability's metrics, found by name or alias (see the module docstring)."""

    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = list(metrics)
        self._patterns: list[tuple[re.Pattern[str], Metric, str]] = []
        for m in self._metrics:
            if any(set(_FIELD.findall(a)) != set(_FIELD.findall(m.name)) for a in m.aliases):
                raise ValueError(f"The aliases of {m.name!r} must have its fields.")
            for pattern in (m.name, *m.aliases):
                self._patterns.append((_regex(pattern), m, pattern))

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._metrics)

    def __len__(self) -> int:
        return len(self._metrics)

    def __getitem__(self, pattern: str) -> Metric:
        """The metric whose name is ``pattern`` (with its fields unfilled: ``"{layer}/deletion_auc"``).

        Raises:
            UnknownNameError: no metric has that name.
        """
        for m in self._metrics:
            if m.name == pattern:
                return m
        raise UnknownNameError(pattern)

    def _match(self, name: str) -> tuple[Metric, str, dict[str, str]] | None:
        for regex, metric, pattern in self._patterns:
            found = regex.match(name)
            if found:
                return metric, pattern, found.groupdict()
        return None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._match(name) is not None

    def metric(self, name: str) -> Metric:
        """The metric a name or alias (with its fields filled in) is of.

        Raises:
            UnknownNameError: no metric has that name or alias.
        """
        found = self._match(name)
        if found is None:
            raise UnknownNameError(name)
        return found[0]

    def canonical(self, name: str) -> str:
        """The metric's one name for ``name`` (itself when it is one; unknown names are returned as they are)."""
        found = self._match(name)
        return name if found is None else self.format(found[0].name, **found[2])

    def aliases(self, name: str) -> list[str]:
        """The older names of the metric ``name`` (a canonical name with its fields filled in)."""
        found = self._match(name)
        if found is None:
            return []
        return [self.format(a, **found[2]) for a in found[0].aliases]

    @staticmethod
    def format(pattern: str, **values: Any) -> str:
        """``pattern`` with its fields filled in."""
        return _FIELD.sub(lambda m: str(values[m.group(1)]), pattern)

    def with_aliases(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """``metrics`` (by canonical name) with each value also under its older names (what ``summary.json``
        holds, so that scripts reading the old keys keep working)."""
        out = dict(metrics)
        for name, value in metrics.items():
            for alias in self.aliases(name):
                out.setdefault(alias, value)
        return out

    def canonical_keys(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        """``metrics`` keyed by canonical names (an older ``summary.json`` read back); the canonical key wins."""
        out: dict[str, Any] = {}
        for name, value in metrics.items():
            key = self.canonical(name)
            if key == name or key not in out:
                out[key] = value
        return out
