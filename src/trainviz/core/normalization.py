"""``Normalization``: per-channel ``(x - mean) / std`` and its inverse, the mapping of model inputs back to pixels
in [0, 1]. It lives in core/ (ops/ and probes/ use it, and import nothing from ``trainviz.data``); users import it
as ``trainviz.data.Normalization`` (and ``trainviz.data.base.Normalization``) as before."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Normalization"]


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``(x - mean) / std``; :meth:`denormalize` maps model inputs back to [0, 1] pixels.

    Example:
        >>> import torch
        >>> norm = Normalization(mean=(0.5,), std=(0.25,))
        >>> x = torch.rand(2, 1, 4, 4)
        >>> torch.allclose(norm.denormalize(norm.normalize(x)), x)
        True
    """

    mean: Sequence[float]
    std: Sequence[float]

    def _stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1) if x.dim() == 4 else (-1, 1, 1)
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).reshape(shape)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).reshape(shape)
        return mean, std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [0, 1] -> model input. Shape: ``(N, C, H, W)`` or ``(C, H, W)``."""
        mean, std = self._stats(x)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model input -> pixels in [0, 1] (clamped). Shape: ``(N, C, H, W)`` or ``(C, H, W)``."""
        mean, std = self._stats(x)
        return (x * std + mean).clamp(0, 1)

    @classmethod
    def identity(cls, channels: int) -> Normalization:
        return cls(mean=(0.0,) * channels, std=(1.0,) * channels)
