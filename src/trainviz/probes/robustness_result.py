"""The typed result of the robustness probe, without torch: :class:`RobustnessResult`, the one definition of its
JSON record (``robustness/metrics.jsonl``), its arrays (``epoch_XXXX/{table,adversarial}.npz``), its flat
metrics (``summary.json``), their direction and their 95% Wilson intervals. The callback writes it; the offline
report (which runs without torch) and the CI gates read it back with :meth:`RobustnessResult.from_record`.

Methods: corruption errors after Hendrycks & Dietterich 2019 (ImageNet-C), expected calibration error after Guo
et al. 2017, intervals after Wilson 1927; the probes of Zhang's encoder-decoder paper (Xiaohan Zhang,
"Visualization of encoder-decoder structure of Deep Convolutional Neural Network", section 5.3) and the
gradient ascent of Fleuret's EE-559 lecture "Under the hood" (see :mod:`trainviz.probes.robustness`).

Flat metric names: one table, :data:`trainviz.probes.robustness_names.NAMES` (each metric's name, direction and
description). The logged scalars use the names (``clean/accuracy``, ``corrupted/accuracy``, ``accuracy/<name>``,
``fgsm/accuracy@<eps>``); ``summary.json`` holds each metric under its name and under its older name (an alias:
``clean_accuracy``, ``corruption_accuracy``, ``corruption_accuracy/<name>``, ``fgsm_accuracy@<eps>``), and the
gates accept both. All values are numbers; accuracies, confidences, errors and rates are fractions in [0, 1]:

==================================================  ======  ================================================
name (older name)                                   better  meaning
==================================================  ======  ================================================
``epoch``                                           ``-``   epoch of the record
``clean/accuracy`` (``clean_accuracy``)             higher  on the clean probe set: accuracy,
``clean/confidence`` (``clean_confidence``)         ``-``   mean top probability (not better: overconfidence),
``clean/nll``, ``clean/ece``                        lower   mean NLL, expected calibration error (15 bins)
``corrupted/<stat>`` (``corruption_<stat>``)        as      the same and ``flip_rate`` (lower), over every
                                                    above   corruption and severity
``accuracy/<name>``, ``ece/<name>``,                        per corruption, averaged over its severities
``flip_rate/<name>`` (``corruption_<stat>/<name>``)
``accuracy/<name>/s<k>``                            higher  one cell of the corruption x severity table
(``corruption_accuracy/<name>/s<k>``)
``ce/<name>``, ``mce``                              lower   corruption error ``CE_c = sum_s E_{s,c} / sum_s
                                                            E^ref_{s,c}`` and its mean over corruptions
``relative_ce/<name>``, ``relative_mce``            lower   ``sum_s (E_{s,c} - E_clean) / sum_s (E^ref_{s,c} -
                                                            E^ref_clean)`` and its mean
``normalized_[relative_]ce/<name>``,                lower   with a reference run only: ``E^ref`` the reference
``normalized_[relative_]mce``                               run's errors (1.0 = as robust as the reference)
``fgsm/accuracy@<eps>`` (``fgsm_accuracy@<eps>``)   higher  accuracy under FGSM at ``eps`` (pixel units, 4
                                                            decimals: ``@0.0157``)
``pgd/accuracy@<eps>`` (``pgd_accuracy@<eps>``)     higher  under L-inf PGD, only when it ran (:class:`Pgd`)
``flip/steps_mean`` (``flip_steps_mean``)           higher  mean gradient-ascent steps to flip, flipped images
``flip/never_fraction`` (``flip_never_fraction``)   higher  images still predicted the same after the cap
``adversarial/flip_rate`` (``adversarial_...``)     lower   trajectory images whose class changed
``adversarial/flip_step_mean``                      higher  mean first iteration of a class change
``adversarial/random_direction_flip_rate``          lower   the control, random points at ``2 ||x - x_adv||``,
``adversarial/random_direction_flip_rate_upper95``  lower   and its exact one-sided 95% upper bound
(``random_direction_flip_rate[_upper95]``)
``corrupted/cam_shift`` (``cam_shift``),            higher  mean correlation of clean and corrupted Grad-CAM
``cam_shift/<name>``                                        (1 = same maps)
==================================================  ======  ================================================

The reference of ``ce``, ``mce`` and ``relative_*`` is always the default one (:data:`MCE_REFERENCE`): ``E^ref``
is 1 at every severity and ``E^ref_clean`` is 0, so ``ce/<name>`` is the mean error over severities and
``relative_ce/<name>`` the mean error increase over clean (Hendrycks & Dietterich's unnormalised CE), and a gate
``--fail-over mce=...`` means the same in every run. With ``RobustnessCallback(reference=...)`` the
``normalized_*`` metrics are added: normalised by the reference run's errors (Hendrycks & Dietterich normalise
by AlexNet's), 1.0 means "as robust as the reference". (In records without ``mce_reference``, ``mce``
itself was normalised when a reference was given.) Metrics that are undefined (no image flipped, no class
present) are left out.

The corrupted images are made on the fly (:data:`CORRUPTION_PROTOCOL`) with the parameter set of the record's
``corruption_params`` (``"cifar10-c"``, ``"tinyimagenet-c"`` or ``"imagenet-c"``); the summary's ``"protocol"``
entry says both.

With its counts (``n`` and ``class_counts``; older records have neither), a result also gives
:meth:`~RobustnessResult.intervals`, the 95% Wilson interval (:func:`proportion_interval`) of every accuracy
measured once on the ``n`` probe images (``clean_accuracy``, ``corruption_accuracy/<name>/s<k>``,
``fgsm_accuracy@<eps>``, ``pgd_accuracy@<eps>``; means over severities or corruptions reuse the same images: no
interval), and
:meth:`~RobustnessResult.probe_counts`, the classes with fewer than :data:`LOW_COUNT_THRESHOLD` probe images.

Inside a result, numbers are floats with NaN where undefined (``None`` in the record, JSON has no NaN) and
``None`` marks a part that was not measured (its key is then absent from the record).

Example:
    >>> record = {"epoch": 3, "clean": {"accuracy": 0.9}, "table": [], "corruptions": {}}
    >>> RobustnessResult.from_record(record).summary()
    {'epoch': 3, 'clean/accuracy': 0.9, 'clean_accuracy': 0.9}
    >>> full = RobustnessResult.from_record({**record, "n": 10, "class_names": ["cat", "dog"], "class_counts": [6, 4]})
    >>> [round(b, 3) for b in full.intervals()["clean/accuracy"]], full.probe_counts()["low_count_classes"]
    ([0.596, 0.982], ['cat', 'dog'])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from statistics import NormalDist
from typing import Any, ClassVar

import numpy as np

from trainviz.core.common import json_number
from trainviz.core.result import Result
from trainviz.probes.robustness_names import NAMES

__all__ = [
    "CORRUPTION_PROTOCOL",
    "DIRECTIONS_PER_IMAGE",
    "HIGHER_IS_BETTER",
    "MCE_REFERENCE",
    "LOW_COUNT_THRESHOLD",
    "NO_DIRECTION",
    "CorruptionStats",
    "Examples",
    "Fgsm",
    "Flip",
    "Means",
    "PerImage",
    "Pgd",
    "Reliability",
    "RobustnessResult",
    "Row",
    "Schedule",
    "Trajectories",
    "eps_label",
    "flip_rate_upper_bound",
    "proportion_interval",
]

STATS = ("accuracy", "confidence", "nll", "ece")

MCE_REFERENCE = "unnormalised: reference error 1 at every severity, 0 on clean images (mean error)"
"""The reference of ``ce``, ``mce`` and ``relative_*``, as the record and the report state it."""

CORRUPTION_PROTOCOL = (
    "corrupted on the fly: each probe image corrupted in memory (float pixels, rounded to 8 bits), not the "
    "published files (ImageNet-C and Tiny-ImageNet-C images are JPEG-saved at quality 85, CIFAR-10-C uint8 "
    "arrays), so numbers are close to, not equal to, those on the published datasets"
)
"""How the corrupted images were made, as the record and the report label the results."""
DIRECTIONS_PER_IMAGE = "per image: a generator seeded from the seed and the probe id"
"""The record's ``trajectory.directions``: the control's random directions are tied to the image, not the batch."""

AGGREGATES = (*STATS, "flip_rate")
_PER_CORRUPTION = ("accuracy", "ece", "flip_rate")

HIGHER_IS_BETTER: Mapping[str, bool | None] = {
    pattern: m.higher_is_better for m in NAMES for pattern in (m.name, *m.aliases)
}
"""Whether a higher value is better, by metric name pattern and older name (from
:data:`~trainviz.probes.robustness_names.NAMES`, the one table); ``None`` where neither is (such a metric cannot
be gated)."""

NO_DIRECTION: Mapping[str, str] = {
    pattern: m.no_direction for m in NAMES if m.no_direction for pattern in (m.name, *m.aliases)
}
"""Why a metric of :data:`HIGHER_IS_BETTER` has no direction (what a gate on it is told)."""

LOW_COUNT_THRESHOLD = 10
"""Per-class numbers resting on fewer probe images than this are flagged (``probe_counts()["low_count_classes"]``,
a marker in the report)."""

_Z95 = NormalDist().inv_cdf(0.975)  # 1.959964: scipy's two-sided 95% quantile


def eps_label(eps: float) -> str:
    """How an FGSM ``eps`` appears in metric names: 4 decimals (``4 / 255`` -> ``"0.0157"``)."""
    return f"{eps:.4f}"


def proportion_interval(successes: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """95% Wilson interval of ``successes / n`` (``z`` the normal quantile), as ``scipy.stats.binomtest(successes,
    n).proportion_ci(method="wilson")``; the torch-free twin of :func:`trainviz.ops.robustness.wilson_interval`
    (a test checks they agree) for the report, which runs without torch.

    Raises:
        ValueError: unless ``0 <= successes <= n`` and ``n > 0``.

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


def flip_rate_upper_bound(flips: int, n: int, confidence: float = 0.95) -> float:
    """The exact one-sided upper confidence bound (Clopper-Pearson) on a rate from ``flips`` of ``n`` trials: the
    ``p`` at which ``P(X <= flips) = 1 - confidence`` for ``X ~ Binomial(n, p)``, i.e. the ``confidence`` quantile of
    ``Beta(flips + 1, n - flips)`` (1 when ``flips == n``); as ``scipy.stats.binomtest(flips, n,
    alternative="less").proportion_ci(confidence)``. With no flip it is ``1 - (1 - confidence) ** (1 / n)``,
    about ``3 / n`` at 95% (the "rule of three"): 60 points bound the rate by 0.049.

    Raises:
        ValueError: unless ``0 <= flips <= n``, ``n > 0`` and ``0 < confidence < 1``.

    Example:
        >>> round(flip_rate_upper_bound(0, 60), 4), round(flip_rate_upper_bound(3, 480), 4)
        (0.0487, 0.0161)
    """
    if n <= 0 or not 0 <= flips <= n or not 0 < confidence < 1:
        raise ValueError(f"Expected 0 <= flips <= n, n > 0 and 0 < confidence < 1, got {flips}, {n}, {confidence}.")
    if flips == n:
        return 1.0
    if flips == 0:
        return 1.0 - (1.0 - confidence) ** (1.0 / n)
    from scipy.special import betaincinv  # a dependency; imported here, the report's other paths do without it

    return float(betaincinv(flips + 1, n - flips, confidence))


# reading and writing numbers ---------------------------------------------------------------------


def _finite(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _num(value: Any) -> float:
    """A record's number as a float, NaN for ``None`` (undefined) or anything else."""
    return float(value) if not isinstance(value, bool) and isinstance(value, (int, float)) else math.nan


def _opt(record: Mapping[str, Any], key: str) -> float | None:
    """A number that may not have been measured: ``None`` when the key is absent."""
    return _num(record[key]) if key in record else None


def _json(value: Any) -> Any:
    if isinstance(value, float):
        return json_number(value)
    if isinstance(value, list):
        return [_json(v) for v in value]
    return value


def _plain(obj: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A dataclass's fields for JSON (NaN as ``None``), leaving out ``drop`` and the fields that are ``None``."""
    values = ((f.name, getattr(obj, f.name)) for f in fields(obj) if f.name not in drop)
    return {name: _json(value) for name, value in values if value is not None}


# the parts -----------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class Means:
    """Accuracy, mean confidence (top probability), NLL, ECE (15 bins) and flip rate against the clean prediction
    of a set of images (the flip rate is ``None`` for the clean set itself)."""

    accuracy: float
    confidence: float
    nll: float
    ece: float
    flip_rate: float | None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Means:
        return cls(**{s: _num(record.get(s)) for s in STATS}, flip_rate=_opt(record, "flip_rate"))


@dataclass(kw_only=True)
class Row(Means):
    """One row of the corruption x severity table (``"clean"``, severity 0, for the clean probe set), with the
    accuracy of each class (NaN for a class without images) and, when measured, the mean CAM shift."""

    corruption: str
    severity: int
    per_class_accuracy: list[float]
    cam_shift: float | None = None

    def record(self) -> dict[str, Any]:
        clean = self.corruption == "clean" and self.severity == 0
        return _plain(self, drop=("corruption", "severity") if clean else ())

    @classmethod
    def from_record(cls, record: Mapping[str, Any], corruption: str = "clean", severity: int = 0) -> Row:
        means = Means.from_record(record)
        per_class = [_num(v) for v in record.get("per_class_accuracy") or []]
        condition = (record.get("corruption", corruption), record.get("severity", severity))
        return cls(
            **asdict(means),
            corruption=condition[0],
            severity=condition[1],
            per_class_accuracy=per_class,
            cam_shift=_opt(record, "cam_shift"),
        )


@dataclass(kw_only=True)
class CorruptionStats(Means):
    """One corruption, averaged over its severities, with its corruption error ``ce`` and relative ``ce``."""

    ce: float
    relative_ce: float
    cam_shift: float | None = None
    normalized_ce: float | None = None  # CE normalised by a reference run's errors (only with one)
    normalized_relative_ce: float | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> CorruptionStats:
        return cls(
            **asdict(Means.from_record(record)),
            ce=_num(record.get("ce")),
            relative_ce=_num(record.get("relative_ce")),
            cam_shift=_opt(record, "cam_shift"),
            normalized_ce=_opt(record, "normalized_ce"),
            normalized_relative_ce=_opt(record, "normalized_relative_ce"),
        )


@dataclass
class Fgsm:
    """Accuracy under FGSM at each ``eps`` (pixel units)."""

    epsilons: list[float]
    accuracy: list[float]


@dataclass(kw_only=True)
class Pgd:
    """L-inf PGD (Madry et al. 2018; :func:`trainviz.ops.adversarial.pgd`): whether it ran in this run (``ran``;
    it runs every ``every``-th run, and under a budget when it fits), with ``steps`` signed-gradient steps of
    ``step_size`` (``step_factor * eps / steps``, pixel units) from a random start uniform in the ``eps`` ball,
    drawn per image from (``seed``, image id); the accuracy at each ``eps`` on the last iterate (empty when it
    did not run).

    Example:
        >>> p = Pgd(epsilons=[4 / 255], accuracy=[0.25], steps=10, step_factor=2.5, ran=True, every=4, seed=0)
        >>> [round(a, 6) for a in p.step_size], p.measured
        ([0.003922], True)
    """

    epsilons: list[float]
    accuracy: list[float]
    steps: int
    step_factor: float
    ran: bool
    every: int
    seed: int

    @property
    def step_size(self) -> list[float]:
        """The step size at each ``eps``."""
        return [self.step_factor * e / self.steps for e in self.epsilons]

    @property
    def measured(self) -> bool:
        """It ran and gave an accuracy at each ``eps``."""
        return self.ran and len(self.accuracy) == len(self.epsilons)

    def record(self) -> dict[str, Any]:
        return _plain(self) | {"step_size": _json(self.step_size)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Pgd:
        return cls(
            epsilons=[float(e) for e in record.get("epsilons") or []],
            accuracy=[_num(a) for a in record.get("accuracy") or []],
            steps=int(record.get("steps", 0)),
            step_factor=_num(record.get("step_factor")),
            ran=bool(record.get("ran", False)),
            every=int(record.get("every", 1)),
            seed=int(record.get("seed", 0)),
        )


@dataclass(kw_only=True)
class Flip:
    """Gradient-ascent steps until the prediction changes: mean and median over the images that flipped, and how
    many never did within ``max_steps``."""

    step_size: float
    max_steps: int
    steps_mean: float
    steps_median: float
    never_flipped: int
    never_fraction: float


@dataclass(kw_only=True)
class Trajectories:
    """The adversarial trajectories of Fleuret's lecture "Under the hood" on a few probe images: the class
    predicted at every gradient-ascent iteration (``predictions[i][k]``, iteration 0 the clean image), the first
    iteration whose class differs from the clean prediction (``flip_step``, -1: never), the L2 distance from the
    image to its first adversarial image (``distance``, NaN: never flipped) and the control, the fraction of
    ``samples`` random points on the sphere of radius ``radius_factor * distance`` with another label
    (``random_flip``, NaN where not measured). ``ids`` and ``labels`` are the images' probe ids and true classes.
    ``directions`` says where the random directions came from (:data:`DIRECTIONS_PER_IMAGE`: each image's own
    generator, seeded from the seed and its probe id; ``None`` in records written before, whose directions came
    from one generator for the batch, so their numbers depended on which images flipped before).

    The control's rate is pooled over the flipped images (:attr:`random_direction_flip_rate`, the mean of equal-size
    fractions, i.e. ``random_direction_flips`` of ``random_direction_points = samples x measured images``), and
    stated with its exact one-sided 95% Clopper-Pearson upper bound on that pooled count
    (:attr:`random_direction_flip_rate_upper95`, :func:`flip_rate_upper_bound`). Pooled points come from different
    images, whose own rates differ; for such a sum of Bernoulli trials the binomial bound at the mean rate stays
    valid (conservative: Hoeffding 1956), so the bound holds for the mean rate over the flipped images. Each image's
    own rate has the bound of ``samples`` points alone (0.049 at 60 points and no flip).

    Example:
        >>> t = Trajectories(step_size=0.5, steps=2, samples=100, radius_factor=2.0, ids=[7, 9], labels=[0, 1],
        ...                  predictions=[[0, 1, 1], [1, 1, 1]], flip_step=[1, -1], distance=[0.3, float("nan")],
        ...                  random_flip=[0.0, float("nan")])
        >>> t.flip_rate, t.flip_step_mean, t.random_direction_flip_rate
        (0.5, 1.0, 0.0)
        >>> t.random_direction_flips, t.random_direction_points, round(t.random_direction_flip_rate_upper95, 4)
        (0, 100, 0.0295)
    """

    step_size: float
    steps: int
    samples: int
    radius_factor: float
    ids: list[int]
    labels: list[int]
    predictions: list[list[int]]
    flip_step: list[int]
    distance: list[float]
    random_flip: list[float]
    directions: str | None = None

    @property
    def flip_rate(self) -> float:
        """Fraction of the images whose class changed within ``steps`` (NaN without images)."""
        return sum(f >= 0 for f in self.flip_step) / len(self.flip_step) if self.flip_step else math.nan

    @property
    def flip_step_mean(self) -> float:
        """Mean first iteration of a class change over the flipped images (NaN if none flipped)."""
        flipped = [f for f in self.flip_step if f >= 0]
        return sum(flipped) / len(flipped) if flipped else math.nan

    @property
    def random_direction_flip_rate(self) -> float:
        """Mean random-direction flip fraction over the flipped images (NaN if none flipped or not measured)."""
        values = self._measured()
        return sum(values) / len(values) if values else math.nan

    def _measured(self) -> list[float]:
        """The random-direction flip fractions of the flipped images whose control was measured."""
        return [r for f, r in zip(self.flip_step, self.random_flip) if f >= 0 and _finite(r)]

    @property
    def random_direction_points(self) -> int:
        """Random points evaluated in all: ``samples`` times the flipped images whose control was measured."""
        return self.samples * len(self._measured())

    @property
    def random_direction_flips(self) -> int:
        """Random points, over all the flipped images, whose label changed (the fractions times ``samples``)."""
        return int(round(sum(r * self.samples for r in self._measured())))

    @property
    def random_direction_flip_rate_upper95(self) -> float:
        """The exact one-sided 95% upper bound (Clopper-Pearson) on the pooled random-direction flip rate, from
        :attr:`random_direction_flips` of :attr:`random_direction_points` (NaN if nothing was measured)."""
        n = self.random_direction_points
        return flip_rate_upper_bound(min(self.random_direction_flips, n), n) if n > 0 else math.nan

    @property
    def distance_mean(self) -> float:
        """Mean L2 distance (pixel units) to the first adversarial image over the flipped images."""
        values = [d for f, d in zip(self.flip_step, self.distance) if f >= 0 and _finite(d)]
        return sum(values) / len(values) if values else math.nan

    def record(self) -> dict[str, Any]:
        out = _plain(self)
        out |= {
            "flip_rate": json_number(self.flip_rate),
            "flip_step_mean": json_number(self.flip_step_mean),
            "random_direction_flip_rate": json_number(self.random_direction_flip_rate),
        }
        if self.samples:
            out |= {
                "random_direction_flips": self.random_direction_flips,
                "random_direction_points": self.random_direction_points,
                "random_direction_flip_rate_upper95": json_number(self.random_direction_flip_rate_upper95),
            }
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Trajectories:
        return cls(
            step_size=_num(record.get("step_size")),
            steps=int(record.get("steps", 0)),
            samples=int(record.get("samples", 0)),
            radius_factor=_num(record.get("radius_factor")),
            ids=[int(i) for i in record.get("ids") or []],
            labels=[int(i) for i in record.get("labels") or []],
            predictions=[[int(c) for c in row] for row in record.get("predictions") or []],
            flip_step=[int(f) for f in record.get("flip_step") or []],
            distance=[_num(d) for d in record.get("distance") or []],
            random_flip=[_num(r) for r in record.get("random_flip") or []],
            directions=record.get("directions"),
        )


@dataclass(kw_only=True)
class Schedule:
    """What ran (under a budget, a part of the suite): rows of the table out of the active ones, corruptions out of
    the active ones, and the budget."""

    rows: int
    of: int
    corruptions: int
    of_corruptions: int
    budget: float | None

    @classmethod
    def of_run(cls, rows: list[tuple[str, int]], active: list[tuple[str, int]], budget: float | None) -> Schedule:
        corruptions, of_corruptions = (len(dict.fromkeys(name for name, _ in part)) for part in (rows, active))
        return cls(
            rows=len(rows), of=len(active), corruptions=corruptions, of_corruptions=of_corruptions, budget=budget
        )


@dataclass
class Reliability:
    """Equal-width confidence bins (those of the ECE): mean confidence and accuracy (NaN in empty bins) and count."""

    confidence: list[float]
    accuracy: list[float]
    count: list[int]


@dataclass(kw_only=True)
class PerImage:
    """Per-image outcomes (not in the record; ``table.npz`` and ``adversarial.npz``): predictions and confidences
    of every row (row 0 clean), labels and ids, the CAM shift of each corrupted image (NaN for flat maps) and the
    steps to flip (-1: never)."""

    pred: np.ndarray  # (1 + R, N) int
    confidences: np.ndarray  # (1 + R, N)
    labels: np.ndarray  # (N,)
    ids: np.ndarray  # (N,)
    cam_shift: np.ndarray | None = None  # (R, N)
    steps: np.ndarray | None = None  # (N,)

    @classmethod
    def from_arrays(cls, table: Mapping[str, np.ndarray], adversarial: Mapping[str, np.ndarray] | None) -> PerImage:
        """Back from the arrays :meth:`RobustnessResult.arrays` wrote."""
        steps = (adversarial or {}).get("steps")
        return cls(
            pred=table["pred"],
            confidences=table["confidences"],
            labels=table["labels"],
            ids=table["ids"],
            cam_shift=table.get("cam_shift"),
            steps=steps,
        )


@dataclass(kw_only=True)
class Examples:
    """The example grid's pictures: the blocks shown (``columns``: 0 clean, then each corruption at its highest
    severity), the probe images shown (``indices``), their uint8 tiles ``(S, n, H, W, 3)`` and column titles."""

    columns: list[int]
    indices: list[int]
    tiles: np.ndarray
    titles: list[str]


# the result ---------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class RobustnessResult(Result):
    """One run of the robustness probe (see the module docstring for the flat metrics).

    Record (``robustness/metrics.jsonl``, one per epoch): ``epoch``, ``class_names``, ``n`` (probe images) and
    ``class_counts`` (images per class), ``clean`` (:class:`Row` without condition and flip rate), ``corrupted``
    (:class:`Means` over every corrupted row), ``table`` (a :class:`Row` per corruption and severity),
    ``corruptions`` (:class:`CorruptionStats` by name, in run order), ``mce``, ``relative_mce``, ``reference``
    (path or ``None``), ``skipped`` (corruption -> why), and when measured ``schedule``, ``cam_shift``,
    ``fgsm``, ``flip``, ``reliability`` (``"clean"`` and ``"corrupted"`` :class:`Reliability` bins),
    ``pgd`` (:class:`Pgd`, also when it did not run: ``ran`` says) and ``trajectory`` (:class:`Trajectories`,
    with its ``flip_rate``, ``flip_step_mean`` and ``random_direction_flip_rate``).
    """

    record_name: ClassVar[str] = "metrics"

    epoch: int
    class_names: list[str]
    clean: Row
    table: list[Row]
    corrupted: Means
    corruptions: dict[str, CorruptionStats]
    mce: float
    relative_mce: float
    reference: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)
    n: int | None = None
    class_counts: list[int] | None = None
    schedule: Schedule | None = None
    cam_shift: float | None = None
    fgsm: Fgsm | None = None
    flip: Flip | None = None
    pgd: Pgd | None = None
    reliability: dict[str, Reliability] | None = None
    trajectory: Trajectories | None = None
    corruption_params: str | None = None  # the parameter set ("cifar10-c", ...); None in older records
    normalized_mce: float | None = None  # with a reference run: mCE normalised by its errors
    normalized_relative_mce: float | None = None
    images: PerImage | None = None  # not in the record
    examples: Examples | None = None  # not in the record
    seconds: dict[str, float] = field(default_factory=dict)  # what each part cost (the budget); not in the record

    # the record --------------------------------------------------------------------------------------
    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "epoch": self.epoch,
            "class_names": list(self.class_names),
            "clean": self.clean.record(),
            "corrupted": _plain(self.corrupted),
            "table": [row.record() for row in self.table],
            "corruptions": {name: _plain(stats) for name, stats in self.corruptions.items()},
            "mce": json_number(self.mce),
            "relative_mce": json_number(self.relative_mce),
            "reference": self.reference,
            "skipped": dict(self.skipped),
        }
        if self.n is not None:
            out["n"] = self.n
        if self.class_counts is not None:
            out["class_counts"] = list(self.class_counts)
        if self.schedule is not None:
            out["schedule"] = asdict(self.schedule)
        if self.cam_shift is not None:
            out["cam_shift"] = json_number(self.cam_shift)
        for name in ("fgsm", "flip"):
            if getattr(self, name) is not None:
                out[name] = _plain(getattr(self, name))
        if self.pgd is not None:
            out["pgd"] = self.pgd.record()
        if self.reliability is not None:
            out["reliability"] = {name: _plain(bins) for name, bins in self.reliability.items()}
        if self.trajectory is not None:
            out["trajectory"] = self.trajectory.record()
        out |= self.protocol()
        if self.normalized_mce is not None:
            out["normalized_mce"] = json_number(self.normalized_mce)
            out["normalized_relative_mce"] = json_number(self.normalized_relative_mce)
        return out

    def protocol(self) -> dict[str, Any]:
        """How the numbers were made: ``corruption_params`` (the parameter set; absent in older records),
        ``corruption_protocol`` (:data:`CORRUPTION_PROTOCOL`), ``mce_reference`` (:data:`MCE_REFERENCE`) and with
        a reference run ``normalized_mce_reference`` (its path)."""
        out: dict[str, Any] = {}
        if self.corruption_params is not None:
            out |= {"corruption_params": self.corruption_params, "corruption_protocol": CORRUPTION_PROTOCOL}
            out["mce_reference"] = MCE_REFERENCE
        if self.normalized_mce is not None:
            out["normalized_mce_reference"] = self.reference
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RobustnessResult:
        """The result of a record, also of an older or partial one (missing numbers are NaN, missing parts
        ``None``); per-image arrays and examples are not in the record (see :meth:`PerImage.from_arrays`)."""
        n = record.get("n")
        fgsm, flip, schedule, bins = (record.get(k) for k in ("fgsm", "flip", "schedule", "reliability"))
        trajectory = record.get("trajectory")
        return cls(
            epoch=record.get("epoch"),
            class_names=[str(c) for c in record.get("class_names") or []],
            clean=Row.from_record(record.get("clean") or {}),
            table=[Row.from_record(row) for row in record.get("table") or []],
            corrupted=Means.from_record(record.get("corrupted") or {}),
            corruptions={k: CorruptionStats.from_record(v) for k, v in (record.get("corruptions") or {}).items()},
            mce=_num(record.get("mce")),
            relative_mce=_num(record.get("relative_mce")),
            reference=record.get("reference"),
            skipped=dict(record.get("skipped") or {}),
            n=n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else None,
            class_counts=list(record["class_counts"]) if isinstance(record.get("class_counts"), list) else None,
            schedule=None if schedule is None else Schedule(**schedule),
            cam_shift=_opt(record, "cam_shift"),
            fgsm=None if fgsm is None else Fgsm(list(fgsm["epsilons"]), [_num(a) for a in fgsm["accuracy"]]),
            flip=None
            if flip is None
            else Flip(**{k: _num(v) if k.startswith("steps_") else v for k, v in flip.items()}),  # type: ignore[arg-type]
            reliability=None
            if bins is None
            else {
                k: Reliability([_num(c) for c in b["confidence"]], [_num(a) for a in b["accuracy"]], list(b["count"]))
                for k, b in bins.items()
            },
            trajectory=None if trajectory is None else Trajectories.from_record(trajectory),
            corruption_params=record.get("corruption_params"),
            normalized_mce=_opt(record, "normalized_mce"),
            normalized_relative_mce=_opt(record, "normalized_relative_mce"),
            pgd=None if record.get("pgd") is None else Pgd.from_record(record["pgd"]),
        )

    # what is logged ----------------------------------------------------------------------------------
    def scalars(self) -> dict[str, float | None]:
        """The logged metrics of :data:`~trainviz.probes.robustness_names.NAMES` (``clean/<stat>``,
        ``corrupted/<stat>``, ``accuracy/<c>``, ``flip_rate/<c>``, ``mce``, ``relative_mce``, and when measured
        ``cam_shift/<c>``, ``corrupted/cam_shift``, ``fgsm/accuracy@<eps>``, ``pgd/accuracy@<eps>``,
        ``flip/{steps_mean,never_fraction}``, ``adversarial/{flip_rate,random_direction_flip_rate,
        random_direction_flip_rate_upper95,flip_step_mean,distance_mean}``); ``None`` where undefined."""
        return {
            name: None if value is None else json_number(value)
            for name, value in self.metrics().items()
            if NAMES.metric(name).logged
        }

    def metrics(self) -> dict[str, Any]:
        """Every metric measured in this run by its one name (:data:`~trainviz.probes.robustness_names.NAMES`),
        NaN or ``None`` where undefined: what :meth:`scalars` and :meth:`summary` select from."""
        out: dict[str, Any] = {"epoch": self.epoch}
        out |= {f"clean/{s}": getattr(self.clean, s) for s in STATS}
        out |= {f"corrupted/{s}": getattr(self.corrupted, s) for s in AGGREGATES}
        for name, stats in self.corruptions.items():
            out |= {f"{key}/{name}": getattr(stats, key) for key in _PER_CORRUPTION}
            out |= {f"ce/{name}": stats.ce, f"relative_ce/{name}": stats.relative_ce}
            if stats.cam_shift is not None:
                out[f"cam_shift/{name}"] = stats.cam_shift
            out[f"normalized_ce/{name}"] = stats.normalized_ce
            out[f"normalized_relative_ce/{name}"] = stats.normalized_relative_ce
        out |= {f"accuracy/{row.corruption}/s{row.severity}": row.accuracy for row in self.table}
        out |= {"mce": self.mce, "relative_mce": self.relative_mce}
        if self.normalized_mce is not None:
            out |= {"normalized_mce": self.normalized_mce, "normalized_relative_mce": self.normalized_relative_mce}
        if self.cam_shift is not None:
            out["corrupted/cam_shift"] = self.cam_shift
        if self.fgsm is not None:
            out |= {f"fgsm/accuracy@{eps_label(e)}": a for e, a in zip(self.fgsm.epsilons, self.fgsm.accuracy)}
        if self.pgd is not None and self.pgd.measured:
            out |= {f"pgd/accuracy@{eps_label(e)}": a for e, a in zip(self.pgd.epsilons, self.pgd.accuracy)}
        if self.flip is not None:
            out |= {"flip/steps_mean": self.flip.steps_mean, "flip/never_fraction": self.flip.never_fraction}
        if self.trajectory is not None:
            t = self.trajectory
            out |= {
                "adversarial/flip_rate": t.flip_rate,
                "adversarial/random_direction_flip_rate": t.random_direction_flip_rate if t.samples else math.nan,
                "adversarial/random_direction_flip_rate_upper95": (
                    t.random_direction_flip_rate_upper95 if t.samples else math.nan
                ),
                "adversarial/flip_step_mean": t.flip_step_mean,
                "adversarial/distance_mean": t.distance_mean,
            }
        return out

    def heatmap(self) -> tuple[np.ndarray, list[str], list[int]]:
        """Accuracy by corruption (rows, run order) and severity (columns), NaN where not run; the two labels."""
        corruptions = list(dict.fromkeys(row.corruption for row in self.table))  # run order (JSON sorts keys)
        levels = sorted({row.severity for row in self.table})
        heat = np.full((len(corruptions), len(levels)), np.nan)
        for row in self.table:
            heat[corruptions.index(row.corruption), levels.index(row.severity)] = row.accuracy
        return heat, corruptions, levels

    def render(self) -> dict[str, np.ndarray]:
        """``heatmap`` (accuracy, corruption x severity; "R of N rows" in its corner when the budget ran part of the
        suite), with the examples ``examples`` (the probe images,
        clean and corrupted, captioned with this run's prediction and confidence) and with the trajectories
        ``adversarial_table`` (Fleuret's table: images x iterations, the predicted class, changes highlighted)."""
        from trainviz.render.robustness import (  # torch: not for the report
            example_grid_image,
            table_heatmap_image,
            trajectory_table_image,
        )

        heat, corruptions, levels = self.heatmap()
        run = self.schedule  # under a budget a run may hold part of the suite: the picture says how much
        corner = f"{run.rows} of {run.of} rows" if run is not None and run.rows < run.of else ""
        out = {"heatmap": table_heatmap_image(heat, corruptions, [f"s{s}" for s in levels], corner=corner)}
        if self.examples is not None and self.images is not None:
            ex, names = self.examples, self.class_names
            pred = self.images.pred[ex.columns][:, ex.indices].astype(int)
            conf = self.images.confidences[ex.columns][:, ex.indices]
            captions = [[f"{names[p][:10]}\n{c:.2f}" for p, c in zip(prow, crow)] for prow, crow in zip(pred, conf)]
            correct = pred == np.asarray(self.images.labels)[ex.indices][None]
            out["examples"] = example_grid_image(ex.tiles, ex.titles, captions, correct)
        if self.trajectory is not None and self.trajectory.predictions:
            t, names = self.trajectory, self.class_names
            rows = [f"{i} {names[y] if 0 <= y < len(names) else y}"[:14] for i, y in zip(t.ids, t.labels)]
            out["adversarial_table"] = trajectory_table_image(t.predictions, names, rows, t.flip_step)
        return out

    def arrays(self) -> dict[str, dict[str, Any]]:
        """``table`` (``corruption``, ``severity``, the row statistics and ``per_class_accuracy``, row 0 clean;
        per image ``pred`` and ``confidences``; ``labels``, ``ids``, ``class_names``; ``cam_shift`` (R, N) when
        measured) and, with FGSM, PGD or steps-to-flip, ``adversarial`` (``epsilons``, ``fgsm_accuracy``, ``steps``
        with -1 for never flipped, ``max_steps``; ``pgd_accuracy`` and ``pgd_steps`` when PGD ran)."""
        if self.images is None:
            return {}
        rows, im = [self.clean, *self.table], self.images
        table: dict[str, Any] = {
            "corruption": np.array([row.corruption for row in rows]),
            "severity": np.array([row.severity for row in rows]),
            **{s: np.array([getattr(row, s) for row in rows], dtype=np.float64) for s in STATS},
            "flip_rate": np.array([0.0] + [row.flip_rate for row in self.table], dtype=np.float64),
            "per_class_accuracy": np.array([row.per_class_accuracy for row in rows], dtype=np.float64),
            "pred": im.pred.astype(np.int64),
            "confidences": im.confidences.astype(np.float32),
            "labels": im.labels,
            "ids": im.ids,
            "class_names": np.array(self.class_names),
        }
        if im.cam_shift is not None:
            table["cam_shift"] = im.cam_shift.astype(np.float32)
        out = {"table": table}
        if self.fgsm is not None or self.flip is not None:
            fgsm = self.fgsm or Fgsm([], [])
            out["adversarial"] = {
                "epsilons": np.array(fgsm.epsilons, dtype=np.float64),
                "fgsm_accuracy": np.array(fgsm.accuracy, dtype=np.float64),
            }
            if im.steps is not None and self.flip is not None:
                out["adversarial"] |= {"steps": im.steps.astype(np.int64), "max_steps": np.array(self.flip.max_steps)}
        if self.pgd is not None and self.pgd.measured:
            out.setdefault("adversarial", {"epsilons": np.array(self.pgd.epsilons, dtype=np.float64)})
            out["adversarial"] |= {
                "pgd_accuracy": np.array(self.pgd.accuracy, dtype=np.float64),
                "pgd_steps": np.array(self.pgd.steps),
            }
        return out

    def documents(self) -> dict[str, Any]:
        """``summary.json``: the latest run's flat metrics (usable as another run's ``reference``)."""
        protocol = self.protocol()
        return {"summary.json": {**self.summary(), **({"protocol": protocol} if protocol else {})}}

    @classmethod
    def report_section(cls, results: list[RobustnessResult], folder: Any) -> dict[str, Any]:
        """The robustness part of the report, drawn from every epoch's result (``folder``: the run's
        ``robustness`` folder, for the latest arrays and examples): see
        :func:`trainviz.probes.robustness_report.report_section`."""
        from trainviz.probes.robustness_report import report_section

        return report_section(results, folder)

    @classmethod
    def compare_section(cls, results: list[RobustnessResult]) -> dict[str, Any]:
        """What two runs' reports compare: see :func:`trainviz.probes.robustness_report.compare_section`."""
        from trainviz.probes.robustness_report import compare_section

        return compare_section(results)

    def section(self) -> dict[str, Any] | None:
        """The report's generic section of the adversarial trajectories (the rest of the robustness report is
        drawn from every epoch's records by :meth:`report_section`): the two flip rates and the mean flip iteration over
        epochs, and the table of predicted classes as a gallery; ``None`` without trajectories."""
        if self.trajectory is None:
            return None
        t = self.trajectory
        radius = f"{t.radius_factor:g} ||x - x_adv||"
        return {
            "version": 1,
            "title": "Adversarial trajectories",
            "description": (
                f"Gradient ascent on the cross-entropy of the clean prediction (plain gradient steps of "
                f"{t.step_size:g} in pixel units, {t.steps} iterations) on {len(t.flip_step)} probe images, after "
                f"Fleuret's lecture 'Under the hood'; the control samples {t.samples} random points on the sphere "
                f"of radius {radius} around each flipped image{_control_now(t)}"
            ),
            "order": 50,
            "curves": [
                {
                    "title": "Adversarial and random-direction flip rates",
                    "description": (
                        "Adversarial: fraction of the images whose class changed within the steps. Random "
                        f"directions: fraction of random points at {radius} with another label, pooled over the "
                        "flipped images, with its exact one-sided 95% upper bound (Clopper-Pearson on the pooled "
                        "count; with no flip about 3 / points); far below the adversarial rate, the adversarial "
                        "direction is special."
                    ),
                    "y": "fraction",
                    "y_range": [0, 1.02],
                    "series": [
                        {"name": "adversarial", "key": ["trajectory", "flip_rate"]},
                        {"name": "random directions", "key": ["trajectory", "random_direction_flip_rate"]},
                        {
                            "name": "random directions, 95% upper bound",
                            "key": ["trajectory", "random_direction_flip_rate_upper95"],
                        },
                    ],
                },
                {
                    "title": "Mean flip iteration",
                    "description": "First iteration whose class differs from the clean prediction, flipped images.",
                    "y": "iteration",
                    "series": [{"name": "mean flip iteration", "key": ["trajectory", "flip_step_mean"]}],
                },
            ],
            "galleries": [
                {
                    "title": "Predicted class per iteration",
                    "description": "One row per image (probe id, true class), one column per iteration; cells "
                    "whose class differs from iteration 0 are highlighted, the first flip framed.",
                    "images": ["adversarial_table"],
                    "labels": ["classes along the ascent"],
                }
            ],
        }

    # what is read back ---------------------------------------------------------------------------------
    def summary(self) -> dict[str, float]:
        """The flat metrics of ``summary.json`` (see the module's table), undefined values left out: each under its
        one name and under its older names (:meth:`NameTable.with_aliases
        <trainviz.core.names.NameTable.with_aliases>`), which scripts and reference runs still read."""
        return NAMES.with_aliases(self._summarized())

    def _summarized(self) -> dict[str, float]:
        """The summarized metrics by their one name, undefined values left out."""
        return {k: v for k, v in self.metrics().items() if NAMES.metric(k).summarized and _finite(v)}

    def intervals(self) -> dict[str, list[float]]:
        """``{metric: [low, high]}``: the 95% Wilson interval of every accuracy measured once on the ``n`` probe
        images, under the metric's name and its older names; empty without ``n`` (a record written before
        trainviz recorded it)."""
        if self.n is None:
            return {}
        metrics = self._summarized()
        names = ["clean/accuracy", *(k for k in metrics if k.startswith("accuracy/") and k.count("/") == 2)]
        names += [k for k in metrics if k.startswith(("fgsm/accuracy@", "pgd/accuracy@"))]
        out = {}
        for name in names:
            k = _successes(metrics.get(name), self.n)
            if k is not None:
                out[name] = list(proportion_interval(k, self.n))
        return NAMES.with_aliases(out)

    def probe_counts(self) -> dict[str, Any] | None:
        """``{"n", "class_counts", "low_count_classes", "low_count_threshold"}``; ``None`` without ``n``, and
        without the class keys when there are no ``class_counts``."""
        if self.n is None:
            return None
        out: dict[str, Any] = {"n": self.n}
        names, counts = self.class_names, self.class_counts
        if counts is not None and len(counts) == len(names):
            out["class_counts"] = dict(zip(names, counts))
            out["low_count_classes"] = [c for c, m in zip(names, counts) if m < LOW_COUNT_THRESHOLD]
            out["low_count_threshold"] = LOW_COUNT_THRESHOLD
        return out

    def report_summary(self) -> dict[str, Any]:
        """What the report writes to ``summary.json``: :meth:`summary`, and with the counts ``"intervals"`` and
        ``"probe"`` (:meth:`intervals`, :meth:`probe_counts`)."""
        out: dict[str, Any] = dict(self.summary())
        if self.protocol():
            out["protocol"] = self.protocol()
        counts = self.probe_counts()
        if counts is not None:
            out["intervals"] = self.intervals()
            out["probe"] = counts
        return out


def _control_now(t: Trajectories) -> str:
    """The latest control as a clause: its rate, count and 95% upper bound ("." when it was not measured)."""
    n = t.random_direction_points
    if not t.samples or n == 0:
        return "."
    k, rate, bound = t.random_direction_flips, t.random_direction_flip_rate, t.random_direction_flip_rate_upper95
    return (
        f". Latest epoch: random-direction flip rate {rate:.3g} ({k} of {n} points, {n // t.samples} flipped "
        f"images), 95% upper bound {bound:.3g}."
    )


def _successes(fraction: Any, n: int) -> int | None:
    """The count behind a fraction of ``n`` (``None`` when the fraction is undefined or is no ``k / n``)."""
    if not _finite(fraction) or n <= 0:
        return None
    k = round(fraction * n)
    return k if 0 <= k <= n and abs(fraction * n - k) < 1e-6 * max(n, 1) else None
