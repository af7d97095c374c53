"""Flat robustness metrics (``summary.json``) from one record of ``robustness/metrics.jsonl``, their
direction, their confidence intervals, and CI bounds.

No torch and no Lightning here: the report command must start fast and work without them.

Metric names (all values are numbers; accuracies, confidences, errors and rates are fractions in [0, 1]) and
their direction (:data:`HIGHER_IS_BETTER`, by the name's family: the part before the first ``/`` or ``@``;
``-`` means no direction, such a metric cannot be gated):

==========================================  ======  ==========================================================
name                                        better  meaning
==========================================  ======  ==========================================================
``epoch``                                   ``-``   epoch of the record
``clean_accuracy``                          higher  on the clean probe set: accuracy,
``clean_confidence``                        ``-``   mean top probability (higher is not better: overconfidence),
``clean_nll``, ``clean_ece``                lower   mean negative log-likelihood, expected calibration error
                                                    (15 bins)
``corruption_accuracy``                     higher  the same, and the flip rate against the clean prediction,
``corruption_confidence``                   ``-``   averaged over every corruption and severity
``corruption_nll``, ``corruption_ece``,     lower
``corruption_flip_rate``
``corruption_accuracy/<name>``              higher  per corruption, averaged over its severities
``corruption_ece/<name>``,                  lower
``corruption_flip_rate/<name>``
``corruption_accuracy/<name>/s<k>``         higher  one cell of the corruption x severity table (what a
                                                    reference needs)
``ce/<name>``, ``mce``                      lower   corruption error ``CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c}``
                                                    and its mean over corruptions
``relative_ce/<name>``, ``relative_mce``    lower   ``sum_s (E_{s,c} - E_clean) / sum_s (E^ref_{s,c} -
                                                    E^ref_clean)`` and its mean
``fgsm_accuracy@<eps>``                     higher  accuracy under FGSM at ``eps`` (pixel units, 4 decimals:
                                                    ``@0.0157``)
``flip_steps_mean``                         higher  mean gradient-ascent steps to flip a prediction, over
                                                    flipped images
``flip_never_fraction``                     higher  fraction of images still predicted the same after the cap
``cam_shift``, ``cam_shift/<name>``         higher  mean correlation of clean and corrupted Grad-CAM (1 = same
                                                    maps)
==========================================  ======  ==========================================================

Without a reference run, ``E^ref`` is 1 at every severity and ``E^ref_clean`` is 0, so ``ce/<name>`` is the
mean error over severities and ``relative_ce/<name>`` the mean error increase over clean (Hendrycks &
Dietterich's unnormalised CE); with ``RobustnessCallback(reference=...)`` they are normalised by the reference
run and 1.0 means "as robust as the reference". Metrics that are undefined (no image flipped, no class
present) are left out.

The report's ``summary.json`` (:func:`report_summary`) holds these metrics at its top level (what CI gates
and a ``reference`` read) and, when the record carries its counts (``n`` and ``class_counts``, written since
trainviz records them; older records have neither and get neither key), two objects:

- ``"intervals"``: ``{metric: [low, high]}``, the 95% Wilson interval (:func:`proportion_interval`) of every
  accuracy measured once on the ``n`` probe images: ``clean_accuracy``, ``corruption_accuracy/<name>/s<k>``
  and ``fgsm_accuracy@<eps>``. Means over severities or corruptions (``corruption_accuracy``,
  ``corruption_accuracy/<name>``) reuse the same images, so they are not binomial counts: no interval.
- ``"probe"``: ``{"n": images, "class_counts": {class: images}, "low_count_classes": [class, ...],
  "low_count_threshold": 10}``: the classes with fewer than 10 probe images, whose per-class accuracies and
  drops are too noisy to read (the report marks them).

Example:
    >>> record = {"epoch": 3, "clean": {"accuracy": 0.9}, "table": [], "corruptions": {}}
    >>> summary_from_record(record)
    {'epoch': 3, 'clean_accuracy': 0.9}
    >>> full = report_summary({**record, "n": 10, "class_names": ["cat", "dog"], "class_counts": [6, 4]})
    >>> [round(b, 3) for b in full["intervals"]["clean_accuracy"]], full["probe"]["low_count_classes"]
    ([0.596, 0.982], ['cat', 'dog'])
    >>> check_bounds({"clean_accuracy": 0.9}, {"clean_accuracy": 0.95})
    ['clean_accuracy = 0.9 is below 0.95']
    >>> check_bounds({"mce": 0.4}, fail_over={"mce": 0.3})
    ['mce = 0.4 is above 0.3']
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

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

_AGGREGATES = ("accuracy", "confidence", "nll", "ece", "flip_rate")
_PER_CORRUPTION = ("accuracy", "ece", "flip_rate")

HIGHER_IS_BETTER: Mapping[str, bool | None] = {
    "epoch": None,
    "clean_accuracy": True,
    "clean_confidence": None,
    "clean_nll": False,
    "clean_ece": False,
    "corruption_accuracy": True,
    "corruption_confidence": None,
    "corruption_nll": False,
    "corruption_ece": False,
    "corruption_flip_rate": False,
    "ce": False,
    "mce": False,
    "relative_ce": False,
    "relative_mce": False,
    "fgsm_accuracy": True,
    "flip_steps_mean": True,
    "flip_never_fraction": True,
    "cam_shift": True,
}
"""Whether a higher value is better, for every family of metric (the name before its first ``/`` or ``@``,
see :func:`metric_family`); ``None`` where neither is (such a metric cannot be gated). Like torchmetrics'
``Metric.higher_is_better``: the direction is metadata, which a CI gate needs."""

_NO_DIRECTION = {
    "epoch": "it is the epoch of the record, not a quality",
    "clean_confidence": "a higher mean confidence is not better (overconfidence); gate calibration with clean_ece or clean_nll",
    "corruption_confidence": "a higher mean confidence is not better (overconfidence); gate calibration with corruption_ece or corruption_nll",
}

LOW_COUNT_THRESHOLD = 10
"""Per-class numbers resting on fewer probe images than this are flagged (``summary.json``'s
``probe.low_count_classes``, a marker in the report)."""

_Z95 = NormalDist().inv_cdf(0.975)  # 1.959964: scipy's two-sided 95% quantile


class UnknownMetricError(ValueError):
    """A bound names a metric that the summary does not have."""


class BoundDirectionError(ValueError):
    """A bound is given the wrong way (``--fail-under`` on a lower-is-better metric, ``--fail-over`` on a
    higher-is-better one), or on a metric that has no direction."""


def eps_label(eps: float) -> str:
    """How an FGSM ``eps`` appears in metric names: 4 decimals (``4 / 255`` -> ``"0.0157"``)."""
    return f"{eps:.4f}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def metric_family(name: str) -> str:
    """The family of a metric name, which fixes its direction: ``"ce/fog"`` -> ``"ce"``,
    ``"corruption_accuracy/fog/s3"`` -> ``"corruption_accuracy"``, ``"fgsm_accuracy@0.0157"`` -> ``"fgsm_accuracy"``."""
    return re.split(r"[/@]", name, maxsplit=1)[0]


def higher_is_better(name: str) -> bool | None:
    """``True`` when a higher value of metric ``name`` is better, ``False`` when lower is, ``None`` when neither.

    Raises:
        UnknownMetricError: ``name`` is of no known family (see :data:`HIGHER_IS_BETTER`).

    Example:
        >>> higher_is_better("corruption_accuracy/fog/s3"), higher_is_better("mce"), higher_is_better("clean_confidence")
        (True, False, None)
    """
    family = metric_family(name)
    if family not in HIGHER_IS_BETTER:
        raise UnknownMetricError(f"Unknown metric {name!r}: its family {family!r} is none of {', '.join(HIGHER_IS_BETTER)}.")
    return HIGHER_IS_BETTER[family]


def summary_from_record(record: Mapping[str, Any]) -> dict[str, float]:
    """The flat metrics of one ``robustness/metrics.jsonl`` record (see the module's table).

    Args:
        record: a record written by :class:`~trainviz.callbacks.robustness.RobustnessCallback`.

    Returns:
        ``{metric name: number}``, undefined values left out.
    """
    out: dict[str, Any] = {"epoch": record.get("epoch")}
    for key, value in (record.get("clean") or {}).items():
        out[f"clean_{key}"] = value
    for key, value in (record.get("corrupted") or {}).items():
        if key in _AGGREGATES:
            out[f"corruption_{key}"] = value
    for name, stats in (record.get("corruptions") or {}).items():
        for key in _PER_CORRUPTION:
            out[f"corruption_{key}/{name}"] = stats.get(key)
        out[f"ce/{name}"] = stats.get("ce")
        out[f"relative_ce/{name}"] = stats.get("relative_ce")
        out[f"cam_shift/{name}"] = stats.get("cam_shift")
    for row in record.get("table") or []:
        out[f"corruption_accuracy/{row['corruption']}/s{row['severity']}"] = row.get("accuracy")
    for key in ("mce", "relative_mce", "cam_shift"):
        out[key] = record.get(key)
    fgsm = record.get("fgsm") or {}
    for eps, acc in zip(fgsm.get("epsilons", []), fgsm.get("accuracy", [])):
        out[f"fgsm_accuracy@{eps_label(eps)}"] = acc
    flip = record.get("flip") or {}
    out["flip_steps_mean"] = flip.get("steps_mean")
    out["flip_never_fraction"] = flip.get("never_fraction")
    return {k: v for k, v in out.items() if _number(v) is not None}


# intervals ------------------------------------------------------------------------------------------


def proportion_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """95% Wilson interval of ``successes / n`` (``z`` the normal quantile), as ``scipy.stats.binomtest(successes,
    n).proportion_ci(method="wilson")``; the torch-free twin of :func:`trainviz.ops.robustness.wilson_interval`
    (a test checks they agree) for the report, which runs without torch.

    Example:
        >>> [round(b, 4) for b in proportion_interval(48, 64)]
        [0.6318, 0.8399]
    """
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"Expected 0 <= successes <= n and n > 0, got {successes} and {n}.")
    p = successes / n
    denom = 2 * (n + z * z)
    center = (2 * n * p + z * z) / denom
    delta = z / denom * math.sqrt(4 * n * p * (1 - p) + z * z)
    return (0.0 if successes == 0 else center - delta, 1.0 if successes == n else center + delta)


def _successes(fraction: Any, n: int) -> int | None:
    """The count behind a fraction of ``n`` (``None`` when the fraction is undefined or is no ``k / n``)."""
    if _number(fraction) is None or n <= 0:
        return None
    k = round(fraction * n)
    return k if 0 <= k <= n and abs(fraction * n - k) < 1e-6 * max(n, 1) else None


def _probe_size(record: Mapping[str, Any]) -> int | None:
    n = record.get("n")
    return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None


def accuracy_intervals(record: Mapping[str, Any]) -> dict[str, list[float]]:
    """``{metric: [low, high]}``: the 95% Wilson interval of every accuracy measured once on the record's ``n``
    probe images (``clean_accuracy``, ``corruption_accuracy/<name>/s<k>``, ``fgsm_accuracy@<eps>``); empty for
    a record without ``n`` (written before trainviz recorded it)."""
    n = _probe_size(record)
    if n is None:
        return {}
    metrics = summary_from_record(record)
    names = ["clean_accuracy", *(k for k in metrics if k.startswith("corruption_accuracy/") and k.count("/") == 2)]
    names += [k for k in metrics if k.startswith("fgsm_accuracy@")]
    out = {}
    for name in names:
        k = _successes(metrics.get(name), n)
        if k is not None:
            out[name] = list(proportion_interval(k, n))
    return out


def probe_counts(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"n", "class_counts", "low_count_classes", "low_count_threshold"}`` of a record (see the module
    docstring); ``None`` for a record without ``n``, and without the class keys when it has no ``class_counts``."""
    n = _probe_size(record)
    if n is None:
        return None
    out: dict[str, Any] = {"n": n}
    names, counts = record.get("class_names") or [], record.get("class_counts")
    if isinstance(counts, list) and len(counts) == len(names):
        out["class_counts"] = dict(zip(map(str, names), counts))
        out["low_count_classes"] = [str(c) for c, m in zip(names, counts) if m < LOW_COUNT_THRESHOLD]
        out["low_count_threshold"] = LOW_COUNT_THRESHOLD
    return out


def report_summary(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the report writes to ``summary.json``: :func:`summary_from_record`'s metrics, and with the record's
    counts ``"intervals"`` (:func:`accuracy_intervals`) and ``"probe"`` (:func:`probe_counts`)."""
    out: dict[str, Any] = dict(summary_from_record(record))
    counts = probe_counts(record)
    if counts is not None:
        out["intervals"] = accuracy_intervals(record)
        out["probe"] = counts
    return out


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
        top = sorted(k for k in metrics if metric_family(k) == k)
        hint = f"this run's metrics include {', '.join(top)} and per-corruption ones such as ce/<name> (see summary.json)"
    known = metric_family(name) in HIGHER_IS_BETTER
    why = "is not in this run's summary (not measured, or undefined)" if known else "is unknown"
    return f"Metric {name!r} {why}; {hint}."


def _wrong_way(name: str, bound: float, flag: str) -> str | None:
    """Why ``flag NAME=BOUND`` cannot gate ``name`` (``None`` when it can)."""
    direction = higher_is_better(name)
    if direction is None:
        reason = _NO_DIRECTION.get(metric_family(name), "it has no better direction")
        return f"{name} cannot be gated: {reason}."
    if flag == "--fail-under" and direction is False:
        return (f"{name} is lower-is-better, so --fail-under would fail when it improves: "
                f"use --fail-over {name}={bound:g} (fails when {name} is above {bound:g}).")
    if flag == "--fail-over" and direction is True:
        return (f"{name} is higher-is-better, so --fail-over would fail when it improves: "
                f"use --fail-under {name}={bound:g} (fails when {name} is below {bound:g}).")
    return None


def check_bounds(
    summary: Mapping[str, Any],
    fail_under: Mapping[str, float] | None = None,
    fail_over: Mapping[str, float] | None = None,
) -> list[str]:
    """Messages for the metrics on the wrong side of their bound (empty when all pass).

    Args:
        summary: ``summary.json`` (or :func:`summary_from_record`); only its numbers are metrics.
        fail_under: ``{metric: bound}`` for higher-is-better metrics: fails when the metric is below the bound.
        fail_over: ``{metric: bound}`` for lower-is-better metrics: fails when the metric is above the bound.

    Raises:
        UnknownMetricError: a bounded metric is not in ``summary``; the message lists close matches.
        BoundDirectionError: a bound is given the wrong way, or on a metric with no direction; the message
            names the metric, its direction and the right flag.
        The message lists every bad bound, one per line (an unknown metric among them makes it an
        :class:`UnknownMetricError`).
    """
    metrics = {k: v for k, v in summary.items() if _number(v) is not None}
    gates = [("--fail-under", name, bound) for name, bound in (fail_under or {}).items()]
    gates += [("--fail-over", name, bound) for name, bound in (fail_over or {}).items()]
    unknown = [_unknown(name, metrics) for _, name, _ in gates if name not in metrics]
    known = [(flag, name, bound) for flag, name, bound in gates if metric_family(name) in HIGHER_IS_BETTER]
    wrong = [m for m in (_wrong_way(name, bound, flag) for flag, name, bound in known) if m is not None]
    if unknown or wrong:
        raise (UnknownMetricError if unknown else BoundDirectionError)("\n".join(unknown + wrong))
    failures = []
    for flag, name, bound in gates:
        value = metrics[name]
        if flag == "--fail-under" and value < bound:
            failures.append(f"{name} = {value:.6g} is below {bound:.6g}")
        elif flag == "--fail-over" and value > bound:
            failures.append(f"{name} = {value:.6g} is above {bound:.6g}")
    return failures
