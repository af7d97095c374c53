"""The result of the training-dynamics probe (Iuzzolino et al., Interactive Deep CNN Visualization): torch-free,
so that the report reads it back without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from trainviz.core.common import json_number
from trainviz.core.result import Result
from trainviz.probes.dynamics_names import NAMES

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["DynamicsResult"]


@dataclass(kw_only=True)
class DynamicsResult(Result):
    """One run. The record is ``{"epoch", "accuracy", "per_class_accuracy": {name: value}, "class_names"}``
    (NaN, ``None`` in the record, for a class without probe images); the tensors (``probs``, ``labels``, ``ids``,
    ``confusion``) and the example panels are not recorded and are ``None`` in a result read back.

    Shape:
        probs ``(N, K)``, labels and ids ``(N,)``, confusion ``(K, K)``.
    """

    epoch: int
    accuracy: float
    per_class_accuracy: dict[str, float]
    class_names: list[str]
    probs: torch.Tensor | None = field(default=None, repr=False, compare=False)
    labels: torch.Tensor | None = field(default=None, repr=False, compare=False)
    ids: torch.Tensor | None = field(default=None, repr=False, compare=False)
    confusion: torch.Tensor | None = field(default=None, repr=False, compare=False)
    examples: np.ndarray | None = field(default=None, repr=False, compare=False)

    def scalars(self) -> dict[str, float | None]:
        """The metrics of :data:`~trainviz.probes.dynamics_names.NAMES`, by their names."""
        per_class = {f"per_class_accuracy/{n}": v for n, v in self.per_class_accuracy.items()}
        return {"accuracy": self.accuracy, **per_class}

    def record(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "accuracy": json_number(self.accuracy),
            "per_class_accuracy": {n: json_number(v) for n, v in self.per_class_accuracy.items()},
            "class_names": list(self.class_names),
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> DynamicsResult:
        per_class = {n: float("nan") if v is None else v for n, v in record["per_class_accuracy"].items()}
        return cls(
            epoch=record["epoch"],
            accuracy=record["accuracy"],
            per_class_accuracy=per_class,
            class_names=list(record["class_names"]),
        )

    def render(self) -> dict[str, np.ndarray]:
        if self.confusion is None:
            return {}
        from trainviz.render.images import confusion_matrix_image, histogram_image

        confusion = confusion_matrix_image(self.confusion, self.class_names)
        hist = {name: values.float().cpu().numpy() for name, values in self.histograms().items()}
        histograms = histogram_image(hist, title=f"Probabilities over the probe set, epoch {self.epoch}")
        return {"confusion_matrix": confusion, "probabilities": self.examples, "probability_histograms": histograms}

    def histograms(self) -> dict[str, Any]:
        if self.probs is None:
            return {}
        return {"prob_true_class": self.probs.gather(1, self.labels[:, None]), "confidence": self.probs.max(1).values}

    def arrays(self) -> dict[str, dict[str, Any]]:
        if self.probs is None:
            return {}
        arrays = {"probs": self.probs, "labels": self.labels, "ids": self.ids, "confusion": self.confusion}
        return {"predictions": arrays}

    def section(self) -> dict[str, Any]:
        """The report section: probe accuracy and per-class accuracy over epochs, the confusion matrix and the
        example probabilities of each epoch (see :meth:`Result.section <trainviz.core.result.Result.section>`)."""
        unit = [0, 1.02]
        accuracy, per_class = NAMES["accuracy"], NAMES["per_class_accuracy/{class*}"]  # the name table's words
        return {
            "version": 1,
            "order": 10,
            "title": "Training dynamics",
            "description": "The fixed probe set's accuracy over epochs (Iuzzolino et al.), per class, and the "
            "confusion matrix and predicted probabilities of each epoch (the training loss is under Training curves).",
            "curves": [
                {
                    "title": accuracy.heading,
                    "description": accuracy.text,
                    "y": "accuracy",
                    "y_range": unit,
                    "series": [{"name": "probe accuracy", "key": ["accuracy"]}],
                },
                {
                    "title": per_class.heading,
                    "description": f"{per_class.text} Click the legend to hide lines.",
                    "y": "accuracy",
                    "y_range": unit,
                    "series": [{"name": n, "key": ["per_class_accuracy", n]} for n in self.class_names],
                },
            ],
            "galleries": [
                {
                    "title": "Confusion matrix",
                    "description": "Rows: true class, columns: predicted class; the slider picks the epoch.",
                    "images": ["confusion_matrix"],
                    "maps": True,
                },
                {
                    "title": "Probability histograms",
                    "description": "Over the whole probe set: the probability given to the true class, and the "
                    "confidence (top probability); the slider picks the epoch.",
                    "images": ["probability_histograms"],
                },
                {
                    "title": "Predicted probabilities",
                    "description": "Example probe images with their predicted class probabilities.",
                    "images": ["probabilities"],
                },
            ],
        }
