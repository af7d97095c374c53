"""The robustness metrics' one name table (:class:`~trainviz.core.names.NameTable`): each metric's name, its
direction and its description, and the older ``summary.json`` names it is still found under. The scalars
(``trainviz/robustness/<name>``), ``summary.json``, the CI gates and the report all take their names from here.
Torch-free.

The names are the logged scalars' (``clean/accuracy``, ``accuracy/<corruption>``, ``fgsm/accuracy@<eps>``);
``summary.json`` holds every metric under its name and under its older names (``clean_accuracy``,
``corruption_accuracy/<corruption>``, ``fgsm_accuracy@<eps>``), and a gate accepts either, so
``--fail-over mce=0.3`` and ``--fail-under clean_accuracy=0.8`` keep working.

Example:
    >>> NAMES.canonical("fgsm_accuracy@0.0157"), NAMES.metric("mce").higher_is_better
    ('fgsm/accuracy@0.0157', False)
"""

from __future__ import annotations

from trainviz.core.names import Metric, NameTable

__all__ = ["NAMES"]

_CONFIDENCE = "a higher mean confidence is not better (overconfidence); gate calibration with {0}/ece or {0}/nll"
_PER = "per corruption, averaged over its severities"
_CE = "corruption error ``CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c}`` (the default reference: the mean error)"
_REL = "relative corruption error ``sum_s (E_{s,c} - E_clean) / sum_s (E^ref_{s,c} - E^ref_clean)``"
_NORM = "with a reference run only, normalised by its errors (1.0 = as robust as the reference)"

NAMES = NameTable(
    [
        Metric(
            "epoch",
            None,
            "epoch of the record",
            logged=False,
            no_direction="it is the epoch of the record, not a quality",
        ),
        Metric("clean/accuracy", True, "accuracy on the clean probe set", aliases=("clean_accuracy",)),
        Metric(
            "clean/confidence",
            None,
            "mean top probability on the clean probe set",
            aliases=("clean_confidence",),
            no_direction=_CONFIDENCE.format("clean"),
        ),
        Metric("clean/nll", False, "mean negative log-likelihood on the clean probe set", aliases=("clean_nll",)),
        Metric(
            "clean/ece", False, "expected calibration error (15 bins) on the clean probe set", aliases=("clean_ece",)
        ),
        Metric(
            "corrupted/accuracy", True, "accuracy over every corruption and severity", aliases=("corruption_accuracy",)
        ),
        Metric(
            "corrupted/confidence",
            None,
            "mean top probability over every corruption and severity",
            aliases=("corruption_confidence",),
            no_direction=_CONFIDENCE.format("corrupted"),
        ),
        Metric("corrupted/nll", False, "mean NLL over every corruption and severity", aliases=("corruption_nll",)),
        Metric("corrupted/ece", False, "ECE over every corruption and severity", aliases=("corruption_ece",)),
        Metric(
            "corrupted/flip_rate",
            False,
            "prediction changed from the clean one, over every corruption and severity",
            aliases=("corruption_flip_rate",),
        ),
        Metric("accuracy/{corruption}", True, f"accuracy {_PER}", aliases=("corruption_accuracy/{corruption}",)),
        Metric("ece/{corruption}", False, f"ECE {_PER}", aliases=("corruption_ece/{corruption}",), logged=False),
        Metric("flip_rate/{corruption}", False, f"flip rate {_PER}", aliases=("corruption_flip_rate/{corruption}",)),
        Metric(
            "accuracy/{corruption}/s{severity}",
            True,
            "one cell of the corruption x severity table (what a reference needs)",
            aliases=("corruption_accuracy/{corruption}/s{severity}",),
            logged=False,
        ),
        Metric("ce/{corruption}", False, _CE, logged=False),
        Metric("mce", False, "mean corruption error over the corruptions"),
        Metric("relative_ce/{corruption}", False, _REL, logged=False),
        Metric("relative_mce", False, "mean relative corruption error over the corruptions"),
        Metric("normalized_ce/{corruption}", False, f"{_CE}, {_NORM}", logged=False),
        Metric("normalized_mce", False, f"mean corruption error, {_NORM}"),
        Metric("normalized_relative_ce/{corruption}", False, f"{_REL}, {_NORM}", logged=False),
        Metric("normalized_relative_mce", False, f"mean relative corruption error, {_NORM}"),
        Metric(
            "corrupted/cam_shift",
            True,
            "mean correlation of clean and corrupted Grad-CAM (1 = same maps)",
            aliases=("cam_shift",),
        ),
        Metric("cam_shift/{corruption}", True, f"CAM shift {_PER}"),
        Metric(
            "fgsm/accuracy@{eps}",
            True,
            "accuracy under FGSM at eps (pixel units, 4 decimals)",
            aliases=("fgsm_accuracy@{eps}",),
        ),
        Metric(
            "pgd/accuracy@{eps}", True, "accuracy under L-inf PGD at eps, when PGD ran", aliases=("pgd_accuracy@{eps}",)
        ),
        Metric(
            "flip/steps_mean",
            True,
            "mean gradient-ascent steps to flip a prediction, over flipped images",
            aliases=("flip_steps_mean",),
        ),
        Metric(
            "flip/never_fraction",
            True,
            "fraction of images still predicted the same after the cap",
            aliases=("flip_never_fraction",),
        ),
        Metric(
            "adversarial/flip_rate",
            False,
            "fraction of the trajectory images whose class changed within the steps",
            aliases=("adversarial_flip_rate",),
        ),
        Metric(
            "adversarial/flip_step_mean",
            True,
            "mean first iteration of a class change, over flipped images",
            aliases=("adversarial_flip_step_mean",),
        ),
        Metric(
            "adversarial/random_direction_flip_rate",
            False,
            "the control: fraction of random points on the sphere of radius 2 ||x - x_adv|| with another label",
            aliases=("random_direction_flip_rate",),
        ),
        Metric(
            "adversarial/random_direction_flip_rate_upper95",
            False,
            "its exact one-sided 95% upper bound (Clopper-Pearson) on the pooled count",
            aliases=("random_direction_flip_rate_upper95",),
        ),
        Metric(
            "adversarial/distance_mean",
            True,
            "mean L2 distance (pixel units) to the first adversarial image, over flipped images",
            summarized=False,
        ),
    ]
)
"""The robustness metrics (see the module docstring)."""
