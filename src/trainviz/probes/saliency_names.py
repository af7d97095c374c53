"""The saliency metrics' one name table (:class:`~trainviz.core.names.NameTable`): each scalar of
:meth:`SaliencyResult.scalars <trainviz.probes.saliency.SaliencyResult.scalars>` (logged as
``trainviz/saliency/<name>``) with its direction and description; the report's curves take their titles and
descriptions from here. Torch-free.

``{method}`` is an attribution method (``saliency``, ``smoothgrad``, ...), ``{layer}`` a step of the sanity
cascade (a layer, block or group name). The pointing games and their chance level need the probe set's object
masks; the sanity and random-logit scores come at sanity runs only.

Example:
    >>> NAMES.metric("smoothgrad/sanity/net.fc").name, NAMES.metric("smoothgrad/insertion_auc").higher_is_better
    ('{method}/sanity/{layer}', True)
"""

from __future__ import annotations

from trainviz.core.names import Metric, NameTable
from trainviz.probes.cam_names import POINTING_GAME_CHANCE, TARGET_PROBABILITY

__all__ = ["NAMES"]

NAMES = NameTable(
    [
        TARGET_PROBABILITY,
        POINTING_GAME_CHANCE,
        Metric(
            "{method}/deletion_auc",
            False,
            "area under the target probability as the most salient pixels are removed first; a faithful map "
            "makes it drop fast",
            title="Deletion AUC",
        ),
        Metric(
            "{method}/insertion_auc",
            True,
            "area under the target probability as the most salient pixels are put back first; a faithful map "
            "makes it rise fast",
            title="Insertion AUC",
        ),
        Metric(
            "{method}/pointing_game",
            True,
            "hit rate: the map's peak inside the object",
            title="Pointing game",
        ),
        Metric(
            "{method}/sanity/{layer}",
            False,
            "Spearman correlation of the maps with those of the model re-initialised from the top down to the "
            "layer, after Adebayo et al. 2018: low means the method explains the model",
            title="Sanity",
        ),
        Metric(
            "{method}/random_logit",
            False,
            "Spearman correlation of the maps of the explained class with those of a random other class: near 1, "
            "the method ignores the class",
            title="Random logit",
        ),
    ]
)
"""The saliency metrics (see the module docstring)."""
