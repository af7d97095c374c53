"""Shared pieces of trainviz's embedded data: normalisation and the tensor dataset (no Lightning: the DataModule
is in :mod:`trainviz.data.module`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

__all__ = ["Normalization", "TensorImageDataset"]


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


class TensorImageDataset(Dataset):
    """Images (already normalised), labels and optional masks held in memory.

    Items are ``(image, label)`` or ``(image, label, mask)``; ``targets`` and ``class_names`` are exposed
    so a :class:`~trainviz.core.probeset.ProbeSet` can stratify without reading every image.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        masks: torch.Tensor | None = None,
        *,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.images, self.labels, self.masks = images, labels, masks
        self.class_names = list(class_names) if class_names is not None else None

    @property
    def targets(self) -> list[int]:
        return self.labels.tolist()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int):
        if self.masks is None:
            return self.images[i], self.labels[i]
        return self.images[i], self.labels[i], self.masks[i]


def __getattr__(name: str):  # `TensorImageDataModule` moved to `trainviz.data.module` (it imports Lightning)
    if name == "TensorImageDataModule":
        from trainviz.data.module import TensorImageDataModule

        return TensorImageDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
