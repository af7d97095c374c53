"""Zhang's encoder-decoder with group convolution: one spatial map per class, read off directly.

Xiaohan Zhang, "Visualization of encoder-decoder structure of Deep Convolutional Neural Network" (sections 3
and 4; eqs. 8-10).

An encoder (ResNet-18 without ``avgpool``/``fc``: 512x2x2 for a 64x64 image) is followed by
:class:`GroupConvDecoder`: a 1x1 convolution to ``K`` channels (one per class), x2 upsampling stages whose
last is a group convolution with ``groups=K``, giving ``K`` maps of 8x8; global average pooling turns each
map into its class's logit (Zhang's eq. 8), trained with softmax cross-entropy (eq. 9).

Two decoders (``decoder=`` of :class:`ClassMapNet`):

``"seed003"`` (the default) is Zhang's, as his code builds it (``resnet_groupconv.py`` of
zxh009123/visualization-DCNNs-CSE261-W19-UCSC): ``Conv2d(512, K, 1, bias=False)`` -> ``InstanceNorm2d(K,
affine=True)`` -> ReLU -> ``Dropout2d(0.3)`` -> ``ConvTranspose2d(K, K, 4, 2, 1, bias=False)`` (*not*
grouped) -> ``BatchNorm2d`` -> ReLU -> ``Dropout2d(0.3)`` -> ``ConvTranspose2d(K, K, 4, 2, 1, bias=False,
groups=K)`` -> ``BatchNorm2d`` -> ReLU -> global average pooling. Only the last stage is grouped: the first
transposed convolution mixes the classes' channels, so channel ``k`` of the projection reaches every class's
map; from the input of the last stage on, channel ``k`` reaches class ``k``'s map only. The maps end in a
ReLU, so they are non-negative, which eq. 10's ``f / max(f)`` relies on; a class whose map is all zeros has
logit 0.

``"grouped"`` groups every stage: a 1x1 projection (with bias), ``upsample_stages`` grouped transposed
convolutions (each with BatchNorm, ReLU and element-wise Dropout) and a last 3x3 convolution with
``groups=K`` (with bias), so after the projection the decoder is ``K`` independent one-channel pathways:
channel ``k`` of every stage influences class ``k``'s map and no other. Its maps are signed (the group
convolution is the last layer). A one-channel pathway whose ReLU output is all zero gives a constant map
(the group convolution's bias), whatever the image: at the end of ``trainviz demo --model classmap`` the
predicted class's map was constant on 49% of the validation images with ``"grouped"`` and on none with
``"seed003"``, whose constant maps are all zeros of classes it does not predict, logit 0, its "no" answer
(BENCHMARKS.md, "Decoder: dead maps, author's decoder against fully grouped").

Eq. 10's display normalisation ``f / max(f)`` is not part of the model; the callback that renders the maps
applies it (clamping negatives first, which only matters for the grouped decoder).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Literal

import torch
from torch import nn

from trainviz.core.checks import check_choice, check_float, check_int, check_positive_int
from trainviz.models.resnet import (
    ResNetBackbone,
    load_pretrained,
    resnet18_backbone,
    torchvision_resnet18_backbone,
)

__all__ = ["DECODERS", "ClassMapNet", "DecoderName", "GroupConvDecoder", "feature_channels"]

EncoderName = Literal["resnet18", "small", "torchvision_resnet18"]
_ENCODERS = ("resnet18", "small", "torchvision_resnet18")
DecoderName = Literal["seed003", "grouped"]
DECODERS: tuple[str, ...] = ("seed003", "grouped")
"""Decoders of :class:`GroupConvDecoder`: Zhang's (``"seed003"``, only the last stage grouped) and ``"grouped"``."""


def _upsample(c: int, groups: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(c, c, 4, stride=2, padding=1, groups=groups, bias=False)


class GroupConvDecoder(nn.Module):
    """Decoder head of Zhang's encoder-decoder: per-class maps from a feature map, then their means as logits.

    ``variant="seed003"`` (Zhang's code): ``project`` (1x1 convolution to ``num_classes`` channels, no bias)
    -> ``project_norm`` (InstanceNorm2d, affine) -> ``project_relu`` -> ``project_dropout`` (Dropout2d) ->
    ``stages``: ``upsample_stages - 1`` ungrouped stages (``upsample`` = ConvTranspose2d(4, 2, 1) doubling
    H and W, ``bn``, ``relu``, ``dropout`` = Dropout2d), then the last stage, grouped (``upsample`` with
    ``groups=num_classes``, ``bn``, ``relu``, no dropout) -> ``class_maps`` -> ``pool`` -> ``flatten``.
    Only the last stage is grouped: a channel entering ``stages[-1]`` reaches its own class's map only, a
    channel entering an earlier stage reaches every class's map. Maps are non-negative.

    ``variant="grouped"``: ``project`` (1x1, with bias) -> ``stages`` (each: grouped ``upsample``, ``bn``,
    ``relu``, ``dropout`` = element-wise Dropout) -> ``group_conv`` (3x3, ``groups=num_classes``) ->
    ``class_maps`` -> ``pool`` -> ``flatten``. Channel ``k`` after ``project`` only ever reaches class
    ``k``'s map. Maps are signed.

    ``class_maps`` is an identity: hook ``"decoder.class_maps"`` of a :class:`ClassMapNet` to capture the maps.

    Args:
        in_channels: channels of the encoder's feature map.
        num_classes: number of classes ``K``, one map each.
        dropout: dropout probability (after the projection and each stage but the last for ``"seed003"``,
            after each stage for ``"grouped"``), in [0, 1).
        upsample_stages: number of x2 upsampling stages (``"seed003"``: at least 1, the last is the group
            convolution; ``"grouped"``: 0 keeps the encoder's size).
        variant: ``"seed003"`` (Zhang's decoder) or ``"grouped"`` (every stage grouped).

    Shape:
        - Input: :math:`(N, C_{in}, H, W)`
        - Output of ``forward``: :math:`(N, K)` logits, the spatial means of the maps.
        - Maps (``forward_with_maps``): :math:`(N, K, H \\cdot 2^s, W \\cdot 2^s)`
          with ``s = upsample_stages``.

    Example:
        >>> decoder = GroupConvDecoder(512, num_classes=10).eval()
        >>> logits, maps = decoder.forward_with_maps(torch.randn(2, 512, 2, 2))
        >>> logits.shape, maps.shape, bool((maps >= 0).all())
        (torch.Size([2, 10]), torch.Size([2, 10, 8, 8]), True)
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        dropout: float = 0.3,
        *,
        upsample_stages: int = 2,
        variant: DecoderName = "seed003",
    ) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        if not 0 <= check_float("dropout", dropout) < 1:
            raise ValueError(f"Expected `dropout` to be a float in [0, 1), got {dropout!r}")
        check_choice("variant", variant, DECODERS)
        if check_int("upsample_stages", upsample_stages, minimum=0) == 0 and variant == "seed003":
            raise ValueError(f"Expected `upsample_stages` to be a positive int with variant={variant!r}, got 0")
        self.variant: str = variant
        c = num_classes
        if variant == "seed003":
            self.project = nn.Conv2d(in_channels, c, 1, bias=False)
            self.project_norm = nn.InstanceNorm2d(c, affine=True)
            self.project_relu = nn.ReLU()
            self.project_dropout = nn.Dropout2d(dropout)
            stages = [
                nn.Sequential(
                    OrderedDict(
                        upsample=_upsample(c, 1), bn=nn.BatchNorm2d(c), relu=nn.ReLU(), dropout=nn.Dropout2d(dropout)
                    )
                )
                for _ in range(upsample_stages - 1)
            ]
            stages.append(nn.Sequential(OrderedDict(upsample=_upsample(c, c), bn=nn.BatchNorm2d(c), relu=nn.ReLU())))
            self.stages = nn.Sequential(*stages)
            self._path: tuple[str, ...] = ("project", "project_norm", "project_relu", "project_dropout", "stages")
        else:
            self.project = nn.Conv2d(in_channels, c, 1)
            self.stages = nn.Sequential(
                *(
                    nn.Sequential(
                        OrderedDict(
                            upsample=_upsample(c, c), bn=nn.BatchNorm2d(c), relu=nn.ReLU(), dropout=nn.Dropout(dropout)
                        )
                    )
                    for _ in range(upsample_stages)
                )
            )
            self.group_conv = nn.Conv2d(c, c, 3, padding=1, groups=c)
            self._path = ("project", "stages", "group_conv")
        self.class_maps = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits, maps)``; ``logits == maps.mean((-2, -1))`` (Zhang's eq. 8)."""
        for name in self._path:
            x = getattr(self, name)(x)
        maps = self.class_maps(x)
        return self.flatten(self.pool(maps)), maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_maps(x)[0]

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}"


def feature_channels(encoder: nn.Module, in_channels: int = 3, size: int = 64) -> int:
    """Channels of ``encoder``'s feature map, from one forward of a zero image.

    The forward runs under ``torch.no_grad()`` in eval mode on the encoder's
    device and dtype; every module's ``training`` flag is restored afterwards
    and the global RNG is forked, so neither BatchNorm statistics nor the
    random stream change.

    Args:
        encoder: a module mapping :math:`(N, C_{in}, H, W)` images to a 4-D feature map.
        in_channels: channels of the dummy image.
        size: height and width of the dummy image.

    Returns:
        ``C`` of the encoder's :math:`(N, C, H', W')` output.

    Raises:
        ValueError: if the encoder's output is not 4-D.

    Example:
        >>> feature_channels(nn.Conv2d(3, 7, 3))
        7
    """
    check_positive_int("in_channels", in_channels)
    check_positive_int("size", size)
    param = next(iter(encoder.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None else torch.get_default_dtype()
    flags = [(m, m.training) for m in encoder.modules()]
    try:
        encoder.eval()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            out = encoder(torch.zeros(1, in_channels, size, size, device=device, dtype=dtype))
    finally:
        for module, training in flags:
            module.training = training
    if not isinstance(out, torch.Tensor) or out.ndim != 4:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"Expected the encoder to return a 4-D feature map (N, C, H, W), got {shape}")
    return int(out.shape[1])


def _build_encoder(name: str, in_channels: int) -> ResNetBackbone:
    if name == "resnet18":
        return resnet18_backbone(in_channels, stem="imagenet")
    if name == "small":
        return ResNetBackbone((16, 32, 64), (1, 1, 1), in_channels=in_channels, stem="small", strides=(2, 2, 2))
    if in_channels != 3:
        raise ValueError(f"Expected `in_channels` to be 3 with encoder='torchvision_resnet18', got {in_channels}")
    return torchvision_resnet18_backbone()


class ClassMapNet(nn.Module):
    """Zhang's encoder-decoder with group convolution: ``encoder`` -> :class:`GroupConvDecoder` (``decoder``).

    Useful layer names: ``"encoder"`` (the feature map), ``"decoder.project"``
    (the encoded C-channel map), ``"decoder.class_maps"`` (the per-class maps
    before pooling).

    Args:
        num_classes: number of classes ``C``.
        encoder: ``"resnet18"`` (:func:`resnet18_backbone`, ImageNet stem:
            512x2x2 for 64x64 images, 8x8 maps), ``"small"`` (a 3-stage ResNet
            with 16/32/64 channels, each stage halving the size: 64x4x4 for
            32x32 images, 16x16 maps; trains in seconds per epoch on a CPU),
            ``"torchvision_resnet18"`` (:func:`torchvision_resnet18_backbone`),
            or any module returning a 4-D feature map.
        in_channels: channels of the input images.
        encoder_channels: channels of the encoder's output; inferred with
            :func:`feature_channels` when None and ``encoder`` is a module.
        pretrained_path: optional state dict file loaded into the encoder
            (keys missing from the file are an error, extra keys such as an
            ``fc`` head are ignored). Never downloaded.
        dropout: dropout probability in the decoder.
        upsample_stages: x2 upsampling stages in the decoder.
        decoder: ``"seed003"`` (Zhang's decoder: only the last stage grouped, non-negative maps) or
            ``"grouped"`` (every stage grouped, signed maps); see :class:`GroupConvDecoder`.

    Shape:
        - Input: :math:`(N, C_{in}, H, W)`
        - Output of ``forward``: :math:`(N, C)` logits.
        - Maps (``forward_with_maps``): :math:`(N, C, H_e \\cdot 2^s, W_e \\cdot 2^s)`
          for an :math:`H_e \\times W_e` encoder map.

    Example:
        >>> net = ClassMapNet(num_classes=5, encoder="small").eval()
        >>> logits, maps = net.forward_with_maps(torch.zeros(2, 3, 32, 32))
        >>> logits.shape, maps.shape
        (torch.Size([2, 5]), torch.Size([2, 5, 16, 16]))
    """

    def __init__(
        self,
        num_classes: int,
        encoder: nn.Module | EncoderName = "resnet18",
        in_channels: int = 3,
        *,
        encoder_channels: int | None = None,
        pretrained_path: str | os.PathLike[str] | None = None,
        dropout: float = 0.3,
        upsample_stages: int = 2,
        decoder: DecoderName = "seed003",
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        check_choice("decoder", decoder, DECODERS)
        check_positive_int("in_channels", in_channels)
        if encoder_channels is not None:
            check_positive_int("encoder_channels", encoder_channels)
        if isinstance(encoder, str):
            if encoder not in _ENCODERS:
                raise ValueError(f"Expected `encoder` to be an nn.Module or one of {_ENCODERS}, got {encoder!r}")
            built = _build_encoder(encoder, in_channels)
            if encoder_channels not in (None, built.out_channels):
                raise ValueError(
                    f"Expected `encoder_channels` to be None or {built.out_channels} with "
                    f"encoder={encoder!r}, got {encoder_channels}"
                )
            self.encoder: nn.Module = built
            encoder_channels = built.out_channels
        elif isinstance(encoder, nn.Module):
            self.encoder = encoder
        else:
            raise ValueError(
                f"Expected `encoder` to be an nn.Module or one of {_ENCODERS}, got {type(encoder).__name__}"
            )
        if pretrained_path is not None:
            load_pretrained(self.encoder, pretrained_path, strict="missing")
        if encoder_channels is None:
            encoder_channels = feature_channels(self.encoder, in_channels)
        self.decoder = GroupConvDecoder(
            encoder_channels, num_classes, dropout, upsample_stages=upsample_stages, variant=decoder
        )

    def forward_with_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(logits, maps)`` from one forward pass."""
        return self.decoder.forward_with_maps(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))
