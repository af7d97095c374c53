"""Training dynamics of a probe set: accuracy, per-class accuracy, the confusion matrix, and the probabilities the
model gives (pure torch; :class:`~trainviz.callbacks.dynamics.DynamicsCallback` runs it every N epochs).

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.core.probeset import ProbeSet
    >>> from trainviz.probes.dynamics import DynamicsConfig, DynamicsResult, compute
    >>> probe = ProbeSet(torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2]), torch.arange(6))
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()
    >>> result = compute(net, probe, DynamicsConfig(n_examples=2), epoch=0)
    >>> sorted(result.scalars())[:2], DynamicsResult.from_record(result.record()) == result
    (['accuracy', 'per_class_accuracy/0'], True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from trainviz.core.common import class_names, example_indices, json_number
from trainviz.core.probeset import ProbeSet
from trainviz.core.result import Result
from trainviz.core.transfer import to_cpu
from trainviz.data.base import Normalization
from trainviz.ops.metrics import confusion_matrix, per_class_accuracy
from trainviz.ops.predict import predict_logits
from trainviz.render.images import confusion_matrix_image, probability_panels

__all__ = ["DynamicsConfig", "DynamicsResult", "compute"]


@dataclass
class DynamicsConfig:
    """What a run computes and shows.

    Attributes:
        n_examples: probe images shown with their probability bars (one per class first).
        batch_size: images per forward.
        norm: maps model inputs back to pixels (``None``: the identity).
    """

    n_examples: int = 6
    batch_size: int = 64
    norm: Normalization | None = None


@dataclass
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
        return cls(record["epoch"], record["accuracy"], per_class, list(record["class_names"]))

    def render(self) -> dict[str, np.ndarray]:
        if self.confusion is None:
            return {}
        confusion = confusion_matrix_image(self.confusion, self.class_names)
        return {"confusion_matrix": confusion, "probabilities": self.examples}

    def histograms(self) -> dict[str, Any]:
        if self.probs is None:
            return {}
        return {"prob_true_class": self.probs.gather(1, self.labels[:, None]), "confidence": self.probs.max(1).values}

    def arrays(self) -> dict[str, dict[str, Any]]:
        if self.probs is None:
            return {}
        arrays = {"probs": self.probs, "labels": self.labels, "ids": self.ids, "confusion": self.confusion}
        return {"predictions": arrays}


def compute(model: nn.Module, probe: ProbeSet, config: DynamicsConfig, *, epoch: int) -> DynamicsResult:
    """Predictions of ``model`` (returning logits, in eval mode) on ``probe``, one device-to-host copy.

    Raises:
        ValueError: the model does not return 2-D logits (the message names ``output=``).
    """
    probs = predict_logits(model, probe.images, config.batch_size).float().softmax(1)
    k = probs.shape[1]
    pred = probs.argmax(1)
    cm = confusion_matrix(pred, probe.labels, k)
    names = class_names(probe.class_names, k)
    idx = example_indices(probe.labels, config.n_examples)
    pixels = probe.images[idx].float()
    host = to_cpu({
        "accuracy": (pred == probe.labels).double().mean(),
        "per_class": per_class_accuracy(pred, probe.labels, k),
        "pixels": pixels if config.norm is None else config.norm.denormalize(pixels),
        "probs": probs[idx],
        "labels": probe.labels[idx],
    })
    per_class = {n: float(v) for n, v in zip(names, host["per_class"].tolist())}
    examples = probability_panels(
        torch.from_numpy(host["pixels"]).float(), torch.from_numpy(host["probs"]).float(), names,
        [int(v) for v in host["labels"].tolist()],
    )
    return DynamicsResult(
        epoch, float(host["accuracy"]), per_class, names, probs, probe.labels, probe.ids, cm, examples
    )
