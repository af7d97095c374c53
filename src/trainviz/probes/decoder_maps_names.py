"""The decoder-map metrics' one name table (:class:`~trainviz.core.names.NameTable`): each scalar of
:meth:`DecoderMapResult.scalars <trainviz.probes.decoder_maps.DecoderMapResult.scalars>` (logged as
``trainviz/decoder_maps/<name>``) with its direction and description; the report's curves take their titles and
descriptions from here. Torch-free.

``accuracy`` is in the record, not a logged scalar; the stability starts at the second run. Sharpness follows
Zhang's section 5.2 ("the higher P_k, the sharper the map"): Spearman's rho between the predicted class's map
sharpness and the confidence, and the mean sharpness, for right and wrong predictions.

Example:
    >>> NAMES.metric("stability/T-shirt/top").name, NAMES.metric("sharpness/corr_correct").higher_is_better
    ('stability/{class*}', None)
"""

from __future__ import annotations

from trainviz.core.names import Metric, NameTable

__all__ = ["NAMES"]

_SETTLED = "a pattern that stops changing has formed, which is not a better model"
_CLAIM = "it tests Zhang's claim about the maps, not the model's quality"
_MEAN = "mean sharpness of the predicted class's map is a description of the maps, not a quality"

NAMES = NameTable(
    [
        Metric(
            "accuracy",
            True,
            "accuracy of the probe set",
            logged=False,
            title="Probe accuracy",
        ),
        Metric(
            "stability/{class*}",
            None,
            "correlation of each class's mean map with the previous run's",
            no_direction=_SETTLED,
            title="Pattern stability",
        ),
        Metric(
            "mean_stability",
            None,
            "mean pattern stability over the classes",
            no_direction=_SETTLED,
            title="Mean pattern stability",
        ),
        Metric(
            "sharpness/corr_correct",
            None,
            "Spearman correlation of the predicted class's map sharpness with the confidence, right predictions",
            no_direction=_CLAIM,
            title="Sharpness-confidence correlation, correct",
        ),
        Metric(
            "sharpness/corr_wrong",
            None,
            "Spearman correlation of the predicted class's map sharpness with the confidence, wrong predictions",
            no_direction=_CLAIM,
            title="Sharpness-confidence correlation, wrong",
        ),
        Metric(
            "sharpness/mean_correct",
            None,
            "mean sharpness of the predicted class's map, right predictions",
            no_direction=_MEAN,
            title="Mean sharpness, correct",
        ),
        Metric(
            "sharpness/mean_wrong",
            None,
            "mean sharpness of the predicted class's map, wrong predictions",
            no_direction=_MEAN,
            title="Mean sharpness, wrong",
        ),
    ]
)
"""The decoder-map metrics (see the module docstring)."""
