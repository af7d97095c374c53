"""Classification metrics on tensors (pure torch): confusion matrix and per-class accuracy.

Example:
    >>> import torch
    >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 2).tolist()
    [[1, 1], [0, 1]]
"""

from __future__ import annotations

import torch

__all__ = ["confusion_matrix", "per_class_accuracy"]


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts ``cm[true, predicted]``.

    Shape:
        pred ``(N,)``, labels ``(N,)`` -> ``(K, K)`` long
    """
    if pred.shape != labels.shape:
        raise ValueError(f"Expected predictions and labels of the same shape, got {tuple(pred.shape)} and {tuple(labels.shape)}.")
    idx = labels.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """Recall of each class from a confusion matrix (NaN for a class with no examples).

    Shape:
        ``(K, K)`` -> ``(K,)`` float
    """
    support = cm.sum(1).double()
    return torch.where(support > 0, cm.diagonal().double() / support.clamp_min(1), torch.full_like(support, float("nan")))
