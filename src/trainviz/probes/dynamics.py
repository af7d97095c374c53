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

from dataclasses import dataclass

import torch
from torch import nn

from trainviz.core.common import class_names, example_indices
from trainviz.core.display import Display, pictures
from trainviz.core.probeset import ProbeSet
from trainviz.core.transfer import to_cpu
from trainviz.data.base import Normalization
from trainviz.ops.metrics import confusion_matrix, per_class_accuracy
from trainviz.ops.predict import predict_logits
from trainviz.probes.dynamics_result import DynamicsResult
from trainviz.render.images import probability_panels

__all__ = ["DynamicsConfig", "DynamicsResult", "compute"]


@dataclass
class DynamicsConfig:
    """What a run computes and shows.

    Attributes:
        n_examples: probe images shown with their probability bars (one per class first).
        batch_size: images per forward.
        norm: maps model inputs back to pixels (``None``: the identity).
        display: how pictures show the inputs (:class:`~trainviz.core.display.Display`; ``None``: ``norm`` undone).
    """

    n_examples: int = 6
    batch_size: int = 64
    norm: Normalization | None = None
    display: Display | None = None


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
    host = to_cpu(
        {
            "accuracy": (pred == probe.labels).double().mean(),
            "per_class": per_class_accuracy(pred, probe.labels, k),
            "pixels": pictures(pixels, config.norm, config.display),
            "probs": probs[idx],
            "labels": probe.labels[idx],
        }
    )
    per_class = {n: float(v) for n, v in zip(names, host["per_class"].tolist())}
    examples = probability_panels(
        torch.from_numpy(host["pixels"]).float(),
        torch.from_numpy(host["probs"]).float(),
        names,
        [int(v) for v in host["labels"].tolist()],
    )
    return DynamicsResult(
        epoch, float(host["accuracy"]), per_class, names, probs, probe.labels, probe.ids, cm, examples
    )
