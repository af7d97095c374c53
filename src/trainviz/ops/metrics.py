"""Classification metrics on tensors (pure torch): predicted labels, confusion matrix and per-class accuracy.

Example:
    >>> import torch
    >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 2).tolist()
    [[1, 1], [0, 1]]
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from trainviz.core.checks import check_positive_int

__all__ = ["check_same_samples", "confusion_matrix", "per_class_accuracy", "predicted_labels"]


def predicted_labels(pred: Any, name: str = "pred") -> Tensor:
    """Predicted labels from labels ``(N,)`` or from scores ``(N, K)`` by argmax.

    Raises:
        ValueError: ``pred`` is no tensor of one of those shapes (the message names ``name``).
    """
    if not isinstance(pred, Tensor) or pred.ndim not in (1, 2):
        shape = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
        raise ValueError(f"Expected `{name}` to be labels (N,) or scores (N, K), got {shape}")
    return pred.argmax(dim=1) if pred.ndim == 2 else pred


def check_same_samples(a: Tensor, b: Tensor, names: str) -> None:
    """Raise ``ValueError`` unless ``b`` is ``(N,)`` for the ``N`` samples of ``a``."""
    if a.shape[0] != b.shape[0] or b.ndim != 1:
        raise ValueError(f"Expected {names} to describe the same N samples, got {tuple(a.shape)} and {tuple(b.shape)}")


def confusion_matrix(pred: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Counts ``cm[true, predicted]``.

    Shape:
        pred ``(N,)``, labels ``(N,)`` -> ``(K, K)`` long
    """
    if pred.shape != labels.shape:
        raise ValueError(
            f"Expected predictions and labels of the same shape, got {tuple(pred.shape)} and {tuple(labels.shape)}."
        )
    idx = labels.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(pred: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Accuracy (recall) of each true class; NaN for a class with no samples.

    Args:
        pred: predicted labels, or scores whose argmax is the prediction.
        labels: true labels in ``0..num_classes-1``.
        num_classes: number of classes ``K``.

    Shape:
        - pred: :math:`(N,)` or :math:`(N, K)`, labels: :math:`(N,)`
        - output: :math:`(K,)`, float64

    Raises:
        ValueError: ``num_classes`` is not a positive int, or ``pred`` and ``labels`` do not match.

    Example:
        >>> per_class_accuracy(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 3).tolist()
        [0.5, 1.0, nan]
    """
    check_positive_int("num_classes", num_classes)
    pred = predicted_labels(pred)
    check_same_samples(pred, labels, "`pred` and `labels`")
    cm = confusion_matrix(pred, labels, num_classes)
    support = cm.sum(1).double()
    nan = torch.full_like(support, float("nan"))
    return torch.where(support > 0, cm.diagonal().double() / support.clamp_min(1), nan)
