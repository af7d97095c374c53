"""Shared pieces of trainviz's embedded data modules: normalisation and the tensor DataModule."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from trainviz.core.checks import check_positive_int

__all__ = ["Normalization", "TensorImageDataset", "TensorImageDataModule"]


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


class TensorImageDataModule(pl.LightningDataModule):
    """A LightningDataModule over in-memory train/val :class:`TensorImageDataset` splits.

    Subclasses implement :meth:`build` returning ``(train_dataset, val_dataset)`` and set
    ``normalization``, ``class_names`` and ``in_channels``.
    """

    normalization: Normalization
    class_names: list[str]
    in_channels: int

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        check_positive_int("batch_size", batch_size)
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self.train_set: TensorImageDataset | None = None
        self.val_set: TensorImageDataset | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model input -> displayable pixels in [0, 1]."""
        return self.normalization.denormalize(x)

    def build(self) -> tuple[TensorImageDataset, TensorImageDataset]:  # pragma: no cover - abstract
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.build()

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, num_workers=self.num_workers, generator=generator
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
