"""trainviz's demo networks as LightningModules.

The LightningModules derive from the Lightning namespace the program uses (``lightning.pytorch`` or
``pytorch_lightning``; ``TRAINVIZ_LIGHTNING`` chooses: see :mod:`trainviz.core.namespace`), so they train in
``L.Trainer`` and in ``pl.Trainer`` alike.

``SmallCNN`` ends in global average pooling + linear, so CAM applies at ``features``.

Example:
    >>> import torch
    >>> from trainviz.models import DemoClassifier
    >>> model = DemoClassifier(num_classes=6, in_channels=3, arch="cnn")
    >>> model(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 6])
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from trainviz.core.checks import check_choice
from trainviz.core.namespace import lightning

pl = lightning()  # `lightning.pytorch` or `pytorch_lightning`: the program's own (trainviz.core.namespace)

__all__ = ["SmallCNN", "DemoClassifier"]


def _conv_block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class SmallCNN(nn.Module):
    """Three conv blocks (stride 1, 2, 2) -> global average pooling -> linear.

    Shape:
        input ``(N, in_channels, H, W)``; ``features`` output ``(N, widths[-1], H/4, W/4)``;
        logits ``(N, num_classes)``.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(_conv_block(in_channels, a, 1), _conv_block(a, b, 2), _conv_block(b, c, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class DemoClassifier(pl.LightningModule):
    """A classifier LightningModule logging ``train_loss``, ``train_acc``, ``val_loss`` and ``val_acc``.

    Args:
        num_classes: number of classes.
        in_channels: image channels.
        arch: ``"cnn"`` (:class:`SmallCNN`) or ``"resnet"`` (a small ResNet-style net,
            :class:`trainviz.models.resnet.ResNetClassifier`); both end in GAP + linear.
        lr: Adam learning rate.

    Batches are ``(x, y)`` or ``(x, y, mask)`` (the mask is ignored for training).
    """

    def __init__(
        self, num_classes: int = 6, in_channels: int = 3, arch: Literal["cnn", "resnet"] = "cnn", *, lr: float = 3e-3
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net: nn.Module = self._build_net()

    def _build_net(self) -> nn.Module:
        """The wrapped network, built from ``self.hparams`` (subclasses override it to wrap another net)."""
        arch, num_classes, in_channels = self.hparams.arch, self.hparams.num_classes, self.hparams.in_channels
        if check_choice("arch", arch, ("cnn", "resnet")) == "cnn":
            return SmallCNN(num_classes, in_channels)
        from trainviz.models.resnet import ResNetClassifier

        return ResNetClassifier(num_classes, in_channels=in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean()
        self.log(f"{stage}_loss", loss, prog_bar=True, sync_dist=stage == "val")
        self.log(f"{stage}_acc", acc, prog_bar=True, sync_dist=stage == "val")
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
