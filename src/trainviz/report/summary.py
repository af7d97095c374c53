"""CI gates on the flat robustness metrics (``summary.json``): reading ``METRIC=VALUE`` bounds and checking
them in the direction each metric has; and the flat metrics, intervals and probe counts of a
``robustness/metrics.jsonl`` record, read through :class:`~trainviz.probes.robustness_result.RobustnessResult`.
The names, their direction and their older names (aliases) come from one table,
:data:`~trainviz.probes.robustness_names.NAMES`: a gate takes a metric by its name (``clean/accuracy``) or its
older name (``clean_accuracy``), and reads an older ``summary.json`` (older names only) as well.

No torch and no Lightning here: the report command must start fast and work without them.

Example:
    >>> record = {"epoch": 3, "clean": {"accuracy": 0.9}, "table": [], "corruptions": {}}
    >>> summary_from_record(record)
    {'epoch': 3, 'clean/accuracy': 0.9, 'clean_accuracy': 0.9}
    >>> full = report_summary({**record, "n": 10, "class_names": ["cat", "dog"], "class_counts": [6, 4]})
    >>> [round(b, 3) for b in full["intervals"]["clean_accuracy"]], full["probe"]["low_count_classes"]
    ([0.596, 0.982], ['cat', 'dog'])
    >>> check_bounds({"clean_accuracy": 0.9}, {"clean_accuracy": 0.95})
    ['clean_accuracy = 0.9 is below 0.95']
    >>> check_bounds({"clean_accuracy": 0.9}, {"clean/accuracy": 0.95})  # an older summary, the new name
    ['clean/accuracy = 0.9 is below 0.95']
    >>> check_bounds({"mce": 0.4}, fail_over={"mce": 0.3})
    ['mce = 0.4 is above 0.3']
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from trainviz.probes.robustness_names import NAMES
from trainviz.probes.robustness_result import (
    HIGHER_IS_BETTER,
    LOW_COUNT_THRESHOLD,
    RobustnessResult,
    eps_label,
    proportion_interval,
)

__all__ = [
    "HIGHER_IS_BETTER",
    "LOW_COUNT_THRESHOLD",
    "BoundDirectionError",
    "UnknownMetricError",
    "accuracy_intervals",
    "check_bounds",
    "eps_label",
    "higher_is_better",
    "metric_family",
    "parse_bounds",
    "probe_counts",
    "proportion_interval",
    "report_summary",
    "summary_from_record",
]


class UnknownMetricError(ValueError):
    """A bound names a metric that the summary does not have."""


class BoundDirectionError(ValueError):
    """A bound is given the wrong way (``--fail-under`` on a lower-is-better metric, ``--fail-over`` on a
    higher-is-better one), or on a metric that has no direction."""


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def metric_family(name: str) -> str:
    """The pattern of a metric's one name in :data:`~trainviz.probes.robustness_names.NAMES`: ``"ce/fog"`` ->
    ``"ce/{corruption}"``, ``"corruption_accuracy/fog/s3"`` -> ``"accuracy/{corruption}/s{severity}"``,
    ``"fgsm_accuracy@0.0157"`` -> ``"fgsm/accuracy@{eps}"``; the name itself when it is of no metric."""
    return NAMES.metric(name).name if name in NAMES else name


def higher_is_better(name: str) -> bool | None:
    """``True`` when a higher value of metric ``name`` (a name or an older name) is better, ``False`` when lower
    is, ``None`` when neither.

    Raises:
        UnknownMetricError: ``name`` is of no metric of the name table.

    Example:
        >>> higher_is_better("corruption_accuracy/fog/s3"), higher_is_better("accuracy/fog/s3"), higher_is_better("mce")
        (True, True, False)
        >>> higher_is_better("clean_confidence") is None
        True
    """
    if name not in NAMES:
        known = ", ".join(m.name for m in NAMES)
        raise UnknownMetricError(f"Unknown metric {name!r}: it is none of {known} (or their older names).")
    return NAMES.metric(name).higher_is_better


def summary_from_record(record: Mapping[str, Any]) -> dict[str, float]:
    """The flat metrics of one ``robustness/metrics.jsonl`` record (:meth:`RobustnessResult.summary
    <trainviz.probes.robustness_result.RobustnessResult.summary>`), undefined values left out."""
    return RobustnessResult.from_record(record).summary()


def accuracy_intervals(record: Mapping[str, Any]) -> dict[str, list[float]]:
    """``{metric: [low, high]}``, the 95% Wilson intervals of a record (:meth:`RobustnessResult.intervals
    <trainviz.probes.robustness_result.RobustnessResult.intervals>`); empty for a record without ``n``."""
    return RobustnessResult.from_record(record).intervals()


def probe_counts(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The probe counts and low-count classes of a record (:meth:`RobustnessResult.probe_counts
    <trainviz.probes.robustness_result.RobustnessResult.probe_counts>`); ``None`` for a record without ``n``."""
    return RobustnessResult.from_record(record).probe_counts()


def report_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the report writes to ``summary.json``: the flat metrics, and with the record's counts
    ``"intervals"`` and ``"probe"`` (:meth:`RobustnessResult.report_summary
    <trainviz.probes.robustness_result.RobustnessResult.report_summary>`)."""
    return RobustnessResult.from_record(record).report_summary()


# bounds ---------------------------------------------------------------------------------------------


def parse_bounds(specs: list[str]) -> dict[str, float]:
    """``["clean_accuracy=0.9", "mce=0.3"]`` -> ``{"clean_accuracy": 0.9, "mce": 0.3}``.

    Raises:
        ValueError: a spec is not ``METRIC=NUMBER``.
    """
    bounds = {}
    for spec in specs:
        name, sep, value = spec.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not sep or not name or math.isnan(number):
            raise ValueError(f"Expected METRIC=VALUE with a number as VALUE, got {spec!r}.")
        bounds[name] = number
    return bounds


def _unknown(name: str, metrics: Mapping[str, float]) -> str:
    close = difflib.get_close_matches(name, list(metrics), n=5, cutoff=0.6)
    if close:
        hint = f"close matches: {', '.join(close)}"
    else:
        top = sorted(k for k in metrics if k in NAMES and "{" not in NAMES.metric(k).name)
        hint = (
            f"this run's metrics include {', '.join(top)} and per-corruption ones such as ce/<name> (see summary.json)"
        )
    why = "is not in this run's summary (not measured, or undefined)" if name in NAMES else "is unknown"
    return f"Metric {name!r} {why}; {hint}."


def _wrong_way(name: str, bound: float, flag: str) -> str | None:
    """Why ``flag NAME=BOUND`` cannot gate ``name`` (``None`` when it can)."""
    direction = higher_is_better(name)
    if direction is None:
        reason = NAMES.metric(name).no_direction or "it has no better direction"
        return f"{name} cannot be gated: {reason}."
    if flag == "--fail-under" and direction is False:
        return (
            f"{name} is lower-is-better, so --fail-under would fail when it improves: "
            f"use --fail-over {name}={bound:g} (fails when {name} is above {bound:g})."
        )
    if flag == "--fail-over" and direction is True:
        return (
            f"{name} is higher-is-better, so --fail-over would fail when it improves: "
            f"use --fail-under {name}={bound:g} (fails when {name} is below {bound:g})."
        )
    return None


def check_bounds(
    summary: Mapping[str, Any],
    fail_under: Mapping[str, float] | None = None,
    fail_over: Mapping[str, float] | None = None,
) -> list[str]:
    """Messages for the metrics on the wrong side of their bound (empty when all pass).

    Args:
        summary: ``summary.json`` (or :func:`summary_from_record`); only its numbers are metrics. An older one,
            with the older names only, is read as well.
        fail_under: ``{metric: bound}`` for higher-is-better metrics: fails when the metric is below the bound.
        fail_over: ``{metric: bound}`` for lower-is-better metrics: fails when the metric is above the bound.
            A metric is named by its name or its older name (``clean/accuracy`` or ``clean_accuracy``); the
            messages use the name given.

    Raises:
        UnknownMetricError: a bounded metric is not in ``summary``; the message lists close matches.
        BoundDirectionError: a bound is given the wrong way, or on a metric with no direction; the message
            names the metric, its direction and the right flag.
        The message lists every bad bound, one per line (an unknown metric among them makes it an
        :class:`UnknownMetricError`).
    """
    metrics = {k: v for k, v in summary.items() if _number(v) is not None}
    by_name = NAMES.canonical_keys(metrics)

    def value(name: str) -> float | None:
        return metrics.get(name, by_name.get(NAMES.canonical(name)))

    gates = [("--fail-under", name, bound) for name, bound in (fail_under or {}).items()]
    gates += [("--fail-over", name, bound) for name, bound in (fail_over or {}).items()]
    unknown = [_unknown(name, metrics) for _, name, _ in gates if value(name) is None]
    known = [(flag, name, bound) for flag, name, bound in gates if name in NAMES]
    wrong = [m for m in (_wrong_way(name, bound, flag) for flag, name, bound in known) if m is not None]
    if unknown or wrong:
        raise (UnknownMetricError if unknown else BoundDirectionError)("\n".join(unknown + wrong))
    failures = []
    for flag, name, bound in gates:
        current = value(name)
        assert current is not None  # checked above
        if flag == "--fail-under" and current < bound:
            failures.append(f"{name} = {current:.6g} is below {bound:.6g}")
        elif flag == "--fail-over" and current > bound:
            failures.append(f"{name} = {current:.6g} is above {bound:.6g}")
    return failures
