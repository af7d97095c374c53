"""``ClassMapClassifier``: Zhang's encoder-decoder with group convolution (:class:`~trainviz.models.ClassMapNet`)
as a LightningModule.

Training and logging are :class:`~trainviz.models.DemoClassifier`'s (cross-entropy on the logits, which are
the spatial means of the class maps, Zhang's eqs. 8-9; ``train_loss``, ``train_acc``, ``val_loss``,
``val_acc``; Adam). Seen from the LightningModule, the per-class maps are the layer
``"net.decoder.class_maps"`` (:class:`~trainviz.callbacks.decoder_maps.DecoderMapCallback` also accepts
the shorter ``"decoder.class_maps"``).

Example:
    >>> import torch
    >>> from trainviz.models.lightning import ClassMapClassifier
    >>> model = ClassMapClassifier(num_classes=6, in_channels=3, encoder="small").eval()
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 6])
"""

from __future__ import annotations

import os

from torch import nn

from trainviz.models.group_conv import ClassMapNet, DecoderName, EncoderName
from trainviz.models.small import DemoClassifier

__all__ = ["ClassMapClassifier"]


class ClassMapClassifier(DemoClassifier):
    """A :class:`~trainviz.models.ClassMapNet` (``self.net``) trained like :class:`~trainviz.models.DemoClassifier`.

    Args:
        num_classes: number of classes (one map each).
        in_channels: image channels.
        encoder: ``"small"`` (fast on a CPU: 16x16 maps for 32x32 images), ``"resnet18"`` (Zhang's: 8x8
            maps for 64x64 images) or ``"torchvision_resnet18"``.
        lr: Adam learning rate.
        pretrained_path: a state dict file loaded into the encoder (never downloaded).
        dropout: dropout probability in the decoder.
        upsample_stages: x2 upsampling stages in the decoder.
        decoder: ``"seed003"`` (Zhang's decoder: ungrouped transposed convolution, then a grouped one; maps
            end in a ReLU) or ``"grouped"`` (every stage grouped, signed maps); see
            :class:`~trainviz.models.GroupConvDecoder`.

    Shape:
        - Input: :math:`(N, C_{in}, H, W)`
        - Output: :math:`(N, K)` logits; maps at ``net.decoder.class_maps``: :math:`(N, K, h, w)`.
    """

    def __init__(
        self,
        num_classes: int = 6,
        in_channels: int = 3,
        encoder: EncoderName = "small",
        *,
        lr: float = 3e-3,
        pretrained_path: str | os.PathLike[str] | None = None,
        dropout: float = 0.3,
        upsample_stages: int = 2,
        decoder: DecoderName = "seed003",
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, lr=lr)
        self.save_hyperparameters(ignore=["arch"])  # the parent's `arch` does not apply here

    def _build_net(self) -> nn.Module:
        h = self.hparams
        return ClassMapNet(
            h.num_classes,
            encoder=h.encoder,
            in_channels=h.in_channels,
            pretrained_path=h.pretrained_path,
            dropout=h.dropout,
            upsample_stages=h.upsample_stages,
            decoder=h.decoder,
        )
