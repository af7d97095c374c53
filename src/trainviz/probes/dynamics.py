"""Training dynamics of a probe set: accuracy, per-class accuracy, the confusion matrix, and the probabilities the
model gives (pure torch; :class:`~trainviz.callbacks.dynamics.DynamicsCallback` runs it every N epochs).

The compute contract (:mod:`trainviz.core.contract`): :class:`DynamicsProbe` computes each share's probabilities
(:class:`DynamicsPartial`) and merges them into the whole set's :class:`DynamicsResult` (accuracy, confusion,
pictures). The run has no parts: its plan is ``True``.

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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from trainviz.core.checks import check_positive_int
from trainviz.core.common import class_names, example_indices
from trainviz.core.contract import Credit, Probe, Share
from trainviz.core.display import Display, pictures
from trainviz.core.normalization import Normalization
from trainviz.core.options import Options
from trainviz.core.probeset import ProbeSet
from trainviz.core.transfer import to_cpu, to_host
from trainviz.ops.metrics import confusion_matrix, per_class_accuracy
from trainviz.ops.predict import predict_logits
from trainviz.probes.dynamics_result import DynamicsResult
from trainviz.render.images import probability_panels

__all__ = ["DynamicsConfig", "DynamicsOptions", "DynamicsPartial", "DynamicsProbe", "DynamicsResult", "compute"]


@dataclass(frozen=True, kw_only=True)
class DynamicsOptions(Options):
    """The user options of :class:`~trainviz.callbacks.dynamics.DynamicsCallback` (declared once).

    Attributes:
        n_examples: probe images shown with their probability bars (one per class first).
    """

    n_examples: int = 6

    def check(self) -> None:
        self.set(n_examples=check_positive_int("n_examples", self.n_examples))


@dataclass(kw_only=True)
class DynamicsConfig:
    """What a run computes and shows: the options and what setup resolves.

    Attributes:
        n_examples: probe images shown with their probability bars (one per class first).
        batch_size: images per forward.
        norm: maps model inputs back to pixels (``None``: the identity).
        display: how pictures show the inputs (:class:`~trainviz.core.display.Display`; ``None``: ``norm`` undone).
    """

    n_examples: int = DynamicsOptions.n_examples
    batch_size: int = 64
    norm: Normalization | None = None
    display: Display | None = None


@dataclass
class DynamicsPartial:
    """One share's part: the probabilities of its images, in share order (CPU).

    Shape:
        probs ``(n, K)`` float32 (``(0, 0)`` for an empty share).
    """

    probs: torch.Tensor


class DynamicsProbe(Probe[bool, DynamicsPartial, DynamicsResult]):
    """The dynamics probe: each share's probabilities, merged into the whole set's accuracy, per-class accuracy,
    confusion matrix, probability histograms and example panels.

    Args:
        probe: the whole probe set (examples and labels come from it at merge).
        config: what a run computes and shows.
    """

    def __init__(self, probe: ProbeSet, config: DynamicsConfig) -> None:
        super().__init__(probe)
        self.config = config
        self.epoch = 0

    def plan(self, credit: Credit) -> bool:
        """No parts: the whole run (``True``); the epoch is kept for the result."""
        self.epoch = credit.epoch
        return True

    def compute(self, model: nn.Module, share: Share[ProbeSet], plan: bool, state: Any) -> DynamicsPartial:
        """Softmax of ``model``'s logits on the share's images (one device-to-host copy).

        Raises:
            ValueError: the model does not return 2-D logits (the message names ``output=``).
        """
        if len(share) == 0:
            return DynamicsPartial(torch.zeros(0, 0))
        if self.clean is None:
            logits = predict_logits(model, share.data.images, self.config.batch_size)
        else:  # the forward shared with the callbacks probing the same images (trainviz.core.clean_forward)
            logits, _ = self.clean.run(model, share, self.config.batch_size)
        probs = logits.float().softmax(1)
        return DynamicsPartial(to_host(probs.float()))

    def merge(self, partials: Sequence[DynamicsPartial], plan: bool) -> DynamicsResult:
        """Probabilities of every image in share order, then what needs the whole set."""
        probs = torch.cat([p.probs for p in partials if p.probs.numel()])
        labels, ids = self.probe.labels.cpu(), self.probe.ids.cpu()
        k = probs.shape[1]
        pred = probs.argmax(1)
        names = class_names(self.probe.class_names, k)
        idx = example_indices(labels, self.config.n_examples)
        pixels = pictures(self.probe.images[idx].float(), self.config.norm, self.config.display)
        host = to_cpu({"pixels": pixels})
        per_class = per_class_accuracy(pred, labels, k)
        examples = probability_panels(
            torch.from_numpy(host["pixels"]).float(), probs[idx], names, [int(v) for v in labels[idx].tolist()]
        )
        return DynamicsResult(
            epoch=self.epoch,
            accuracy=float((pred == labels).double().mean()),
            per_class_accuracy={n: float(v) for n, v in zip(names, per_class.tolist())},
            class_names=names,
            probs=probs,
            labels=labels,
            ids=ids,
            confusion=confusion_matrix(pred, labels, k),
            examples=examples,
        )


def compute(model: nn.Module, probe: ProbeSet, config: DynamicsConfig, *, epoch: int) -> DynamicsResult:
    """Predictions of ``model`` (returning logits, in eval mode) on ``probe``: :class:`DynamicsProbe` in one
    process.

    Raises:
        ValueError: the model does not return 2-D logits (the message names ``output=``).
    """
    result = DynamicsProbe(probe, config).run(model, Credit(epoch=epoch))
    assert result is not None
    return result
