"""The class-activation-map metrics' one name table (:class:`~trainviz.core.names.NameTable`): each scalar of
:meth:`CAMProbeResult.scalars <trainviz.probes.cam.CAMProbeResult.scalars>` (logged as ``trainviz/cam/<name>``)
with its direction and description; the report's curves take their titles and descriptions from here.
Torch-free.

``{map}`` is a map key: a layer's name, or ``aggregate`` (the layers' maps aggregated into one). The pointing
games and their chance level need the probe set's object masks; the drift starts at the second run.

Example:
    >>> NAMES.metric("aggregate/deletion_auc").name, NAMES.metric("layer4/deletion_auc").higher_is_better
    ('{map}/deletion_auc', False)
"""

from __future__ import annotations

from trainviz.core.names import Metric, NameTable

__all__ = ["NAMES", "POINTING_GAME_CHANCE", "TARGET_PROBABILITY"]

TARGET_PROBABILITY = Metric(
    "target_probability",
    None,
    "mean probability of the explained class (the true class, or the predicted one with target='predicted')",
    no_direction="with target='predicted' it is the confidence, which is not better when higher; "
    "gate the probe accuracy (dynamics) instead",
    title="Target probability",
)
"""Shared with saliency, whose maps are scored on the same class."""

POINTING_GAME_CHANCE = Metric(
    "pointing_game_chance",
    None,
    "the pointing game's chance level: the mean fraction of the image inside the object",
    no_direction="it is a property of the probe set's masks, not of the model",
    title="Pointing game chance",
)


NAMES = NameTable(
    [
        TARGET_PROBABILITY,
        POINTING_GAME_CHANCE,
        Metric(
            "{map}/pointing_game",
            True,
            "hit rate: the map's peak inside the object",
            title="Pointing game",
        ),
        Metric(
            "{map}/energy_pointing_game",
            True,
            "map energy inside the object",
            title="Energy pointing game",
        ),
        Metric(
            "{map}/average_drop",
            False,
            "confidence drop keeping the map's region",
            title="Average drop",
        ),
        Metric(
            "{map}/increase_in_confidence",
            True,
            "images whose confidence rises keeping the map's region",
            title="Increase in confidence",
        ),
        Metric(
            "{map}/deletion_auc",
            False,
            "area under the target probability as the map's most salient pixels are removed first (the deletion curve)",
            title="Deletion AUC",
        ),
        Metric(
            "{map}/drift_correlation",
            None,
            "correlation of each map with the previous run's",
            no_direction="a map that stops changing is settled, not better",
            title="Drift",
        ),
    ]
)
"""The CAM metrics (see the module docstring)."""
