"""Batched forward passes over a probe set (pure torch).

Example:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    >>> predict_logits(net, torch.randn(10, 3, 2, 2), batch_size=4).shape
    torch.Size([10, 3])
"""

from __future__ import annotations

import torch
from torch import nn

from trainviz.core.outputs import expect_logits

__all__ = ["predict_logits"]


def predict_logits(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits of ``model`` on ``images`` in batches, without building a graph.

    ``model`` must return logits; for other outputs wrap it in :class:`trainviz.core.outputs.LogitsModel`.

    Shape:
        ``(N, C, H, W)`` -> ``(N, K)``
    """
    with torch.no_grad():
        return torch.cat(
            [expect_logits(model(images[i : i + batch_size])) for i in range(0, images.shape[0], batch_size)]
        )
