"""Flat robustness metrics (``summary.json``) from one record of ``robustness/metrics.jsonl``, and CI bounds.

No torch and no Lightning here: the report command must start fast and work without them.

Metric names (all values are numbers; accuracies, confidences, errors and rates are fractions in [0, 1]):

==========================================  ======================================================================
name                                        meaning
==========================================  ======================================================================
``epoch``                                   epoch of the record
``clean_accuracy``, ``clean_confidence``,   on the clean probe set: accuracy, mean top probability, mean negative
``clean_nll``, ``clean_ece``                log-likelihood, expected calibration error (15 bins)
``corruption_accuracy``,                    the same (and the flip rate against the clean prediction), averaged over
``corruption_confidence``,                  every corruption and severity
``corruption_nll``, ``corruption_ece``,
``corruption_flip_rate``
``corruption_accuracy/<name>``,             per corruption, averaged over its severities
``corruption_ece/<name>``,
``corruption_flip_rate/<name>``
``corruption_accuracy/<name>/s<k>``         one cell of the corruption x severity table (what a reference needs)
``ce/<name>``, ``mce``                      corruption error ``CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c}`` and its
                                            mean over corruptions (lower is better)
``relative_ce/<name>``, ``relative_mce``    ``sum_s (E_{s,c} - E_clean) / sum_s (E^ref_{s,c} - E^ref_clean)`` and
                                            its mean (lower is better)
``fgsm_accuracy@<eps>``                     accuracy under FGSM at ``eps`` (pixel units, 4 decimals: ``@0.0157``)
``flip_steps_mean``                         mean gradient-ascent steps to flip a prediction, over flipped images
``flip_never_fraction``                     fraction of images still predicted the same after the step cap
``cam_shift``, ``cam_shift/<name>``         mean correlation of clean and corrupted Grad-CAM (1 = same maps)
==========================================  ======================================================================

Without a reference run, ``E^ref`` is 1 at every severity and ``E^ref_clean`` is 0, so ``ce/<name>`` is the
mean error over severities and ``relative_ce/<name>`` the mean error increase over clean (Hendrycks &
Dietterich's unnormalised CE); with ``RobustnessCallback(reference=...)`` they are normalised by the reference
run and 1.0 means "as robust as the reference". Metrics that are undefined (no image flipped, no class
present) are left out.

Example:
    >>> record = {"epoch": 3, "clean": {"accuracy": 0.9}, "table": [], "corruptions": {}}
    >>> summary_from_record(record)
    {'epoch': 3, 'clean_accuracy': 0.9}
    >>> check_bounds({"clean_accuracy": 0.9}, {"clean_accuracy": 0.95})
    ['clean_accuracy = 0.9 is below 0.95']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["UnknownMetricError", "check_bounds", "eps_label", "parse_bounds", "summary_from_record"]

_AGGREGATES = ("accuracy", "confidence", "nll", "ece", "flip_rate")
_PER_CORRUPTION = ("accuracy", "ece", "flip_rate")


class UnknownMetricError(ValueError):
    """A bound names a metric that the summary does not have."""


def eps_label(eps: float) -> str:
    """How an FGSM ``eps`` appears in metric names: 4 decimals (``4 / 255`` -> ``"0.0157"``)."""
    return f"{eps:.4f}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


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


def check_bounds(summary: Mapping[str, float], bounds: Mapping[str, float]) -> list[str]:
    """Messages for the metrics below their bound (empty when all pass).

    Raises:
        UnknownMetricError: a bounded metric is not in ``summary``; the message lists the available metrics.
    """
    unknown = [name for name in bounds if name not in summary]
    if unknown:
        raise UnknownMetricError(f"Unknown metric(s) {', '.join(unknown)}; available: {', '.join(sorted(summary))}")
    return [f"{name} = {summary[name]:.6g} is below {bound:.6g}" for name, bound in bounds.items() if summary[name] < bound]
