"""ResNet building blocks for trainviz's demo nets and probes, in plain torch.

Every nonlinearity is its own, non-in-place ``nn.ReLU`` module, used once per
forward: guided backprop can swap ReLU modules, and backward hooks see every
activation (an in-place ReLU breaks them, pytorch #61519; ``torch.relu`` is
never guided). Module and parameter names follow torchvision's ResNet
(``conv1``, ``bn1``, ``layer1`` ... ``layer4``, ``downsample``), so a
torchvision ResNet-18 state dict (without its ``fc`` head) loads into
:func:`resnet18_backbone` unchanged.

Nothing here downloads: pretrained weights come only from a file the user
names (:func:`load_pretrained`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from trainviz.core.checks import check_choice, check_positive_int

__all__ = [
    "BasicBlock",
    "ResNetBackbone",
    "ResNetClassifier",
    "load_pretrained",
    "resnet18_backbone",
    "torchvision_resnet18_backbone",
]

Stem = Literal["imagenet", "small"]
_STEMS = ("imagenet", "small")


def _check_positive_ints(name: str, values: object, length: int | None = None) -> None:
    ok = (
        isinstance(values, Sequence)
        and len(values) > 0
        and all(not isinstance(v, bool) and isinstance(v, int) and v >= 1 for v in values)
    )
    if not ok or (length is not None and len(values) != length):  # type: ignore[arg-type]
        size = f"{length} " if length is not None else "a non-empty sequence of "
        raise ValueError(f"Expected `{name}` to be {size}positive ints, got {values!r}")


class BasicBlock(nn.Module):
    """The ResNet basic block: two 3x3 convolutions with BatchNorm and a shortcut.

    ``relu1`` follows the first convolution, ``relu2`` the sum with the
    shortcut; both are separate, non-in-place modules. The shortcut is a 1x1
    convolution + BatchNorm (``downsample``) when the shape changes, else the
    identity.

    Args:
        in_channels: channels of the input.
        out_channels: channels of the output.
        stride: stride of the first convolution (and of the shortcut).

    Shape:
        - Input: :math:`(N, C_{in}, H, W)`
        - Output: :math:`(N, C_{out}, \\lceil H / s \\rceil, \\lceil W / s \\rceil)`

    Example:
        >>> block = BasicBlock(16, 32, stride=2)
        >>> block(torch.zeros(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("stride", stride)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class ResNetBackbone(nn.Module):
    """A ResNet feature extractor: stem, then stages of basic blocks; no pooling, no head.

    Submodules are ``conv1``, ``bn1``, ``relu``, ``maxpool`` (the stem) and
    ``layer1``, ``layer2``, ... (one ``nn.Sequential`` of :class:`BasicBlock` per
    stage), so layer names such as ``"layer4"`` address the feature maps.

    Args:
        widths: output channels of each stage.
        blocks: number of basic blocks in each stage (same length as ``widths``).
        in_channels: channels of the input images.
        stem: ``"imagenet"`` (7x7 convolution with stride 2, then 3x3 max-pool
            with stride 2: a 4x reduction, for 64 px and larger images) or
            ``"small"`` (3x3 convolution with stride 1, no pooling: for 32 px images).
        strides: stride of the first block of each stage; default 1 for the
            first stage and 2 for the others.

    Attributes:
        out_channels: channels of the output feature map (``widths[-1]``).

    Shape:
        - Input: :math:`(N, C_{in}, H, W)`
        - Output: :math:`(N, \\text{out\\_channels}, H / r, W / r)` with ``r`` the
          stem's reduction (4 or 1) times the product of ``strides``.

    Example:
        >>> net = ResNetBackbone((16, 32), (1, 1), stem="small")
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 32, 16, 16])
    """

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        *,
        in_channels: int = 3,
        stem: Stem = "small",
        strides: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        _check_positive_ints("widths", widths)
        _check_positive_ints("blocks", blocks, len(widths))
        check_positive_int("in_channels", in_channels)
        check_choice("stem", stem, _STEMS)
        if strides is None:
            strides = (1,) + (2,) * (len(widths) - 1)
        _check_positive_ints("strides", strides, len(widths))

        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        channels = widths[0]
        self.stage_names: tuple[str, ...] = tuple(f"layer{i + 1}" for i in range(len(widths)))
        for name, width, n_blocks, stride in zip(self.stage_names, widths, blocks, strides):
            stage = [BasicBlock(channels, width, stride)]
            stage += [BasicBlock(width, width) for _ in range(n_blocks - 1)]
            self.add_module(name, nn.Sequential(*stage))
            channels = width
        self.out_channels: int = channels
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return x


def _init_weights(module: nn.Module) -> None:
    """torchvision's ResNet initialisation: He-normal (fan-out) convolutions, unit BatchNorm."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def resnet18_backbone(in_channels: int = 3, width: int = 64, stem: Stem = "imagenet") -> ResNetBackbone:
    """ResNet-18 without its average pooling and fully connected layers.

    With the default ``width=64`` and ``stem="imagenet"`` this is torchvision's
    ``resnet18`` up to ``layer4`` (same names, shapes and initialisation), so a
    64x64 image gives a 512x2x2 feature map, the encoder of Zhang's encoder-decoder
    with group convolution.

    Args:
        in_channels: channels of the input images.
        width: channels of the first stage; the stages have
            ``width * (1, 2, 4, 8)`` channels.
        stem: ``"imagenet"`` (7x7 stride 2 + max-pool) or ``"small"`` (3x3 stride 1).

    Returns:
        A :class:`ResNetBackbone` with ``out_channels == 8 * width``.

    Shape:
        - Input: :math:`(N, C_{in}, H, W)`
        - Output: :math:`(N, 8 \\cdot \\text{width}, H / 32, W / 32)` with the
          imagenet stem, :math:`(N, 8 \\cdot \\text{width}, H / 8, W / 8)` with the small one.

    Example:
        >>> net = resnet18_backbone()
        >>> net(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 512, 2, 2])
    """
    check_positive_int("width", width)
    return ResNetBackbone(tuple(width * m for m in (1, 2, 4, 8)), (2, 2, 2, 2), in_channels=in_channels, stem=stem)


class ResNetClassifier(nn.Module):
    """A small ResNet classifier: ``features`` -> ``pool`` (global average) -> ``flatten`` -> ``fc``.

    The last feature map feeds global average pooling and then the linear
    layer ``fc``, the structure Class Activation Mapping needs: the CAM of
    class ``c`` is ``sum_k fc.weight[c, k] * features(x)[:, k]``. The defaults
    train in seconds per epoch on 32x32 images on a 2-core CPU.

    Args:
        num_classes: number of classes.
        in_channels: channels of the input images.
        widths: output channels of each stage.
        blocks: basic blocks per stage.
        stem: ``"small"`` (3x3 stride 1, for 32 px images) or ``"imagenet"``.

    Shape:
        - Input: :math:`(N, C_{in}, H, W)`
        - Output: :math:`(N, \\text{num\\_classes})` logits.

    Example:
        >>> net = ResNetClassifier(num_classes=4)
        >>> net(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 4])
        >>> net.features(torch.zeros(2, 3, 32, 32)).shape  # the CAM layer: "features"
        torch.Size([2, 64, 8, 8])
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        widths: Sequence[int] = (16, 32, 64),
        *,
        blocks: Sequence[int] = (1, 1, 1),
        stem: Stem = "small",
    ) -> None:
        super().__init__()
        check_positive_int("num_classes", num_classes)
        self.features = ResNetBackbone(widths, blocks, in_channels=in_channels, stem=stem)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(self.features.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    strict: bool | Literal["missing"] = True,
    prefix: str = "",
) -> tuple[list[str], list[str]]:
    """Load a state dict from a file the user names into ``model`` (never downloads).

    The file is read with ``map_location="cpu"`` and ``weights_only=True``; it
    may hold a state dict or a checkpoint with a ``"state_dict"`` entry (as
    Lightning writes). With ``prefix``, only keys starting with it are used,
    with the prefix removed (``prefix="model.encoder."`` loads the encoder out
    of a Lightning checkpoint).

    Args:
        model: the module to fill in place.
        path: the file written by ``torch.save``.
        strict: True: any missing or unexpected key is an error; ``"missing"``:
            only missing keys are (extra keys, such as the ``fc`` head of an
            ImageNet checkpoint loaded into a backbone, are ignored); False:
            neither is. A shape mismatch is always an error.
        prefix: keep only keys with this prefix, and strip it.

    Returns:
        ``(missing_keys, unexpected_keys)``: keys of ``model`` absent from the
        file, and keys of the file that ``model`` does not have.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file holds no state dict, on a shape mismatch, or
            on the missing or unexpected keys ``strict`` forbids; the message lists them.

    Example:
        >>> import tempfile, pathlib
        >>> net = resnet18_backbone(width=8)
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.pt"
        >>> torch.save(net.state_dict(), path)
        >>> load_pretrained(resnet18_backbone(width=8), path)
        ([], [])
    """
    check_choice("strict", strict, (True, False, "missing"))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Expected `path` to be an existing weights file, got {str(path)!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"Expected {str(path)!r} to hold a state dict of tensors, got {type(state).__name__}")
    state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(state))
        if state[k].shape != own[k].shape
    ]
    forbidden_unexpected = unexpected if strict is True else []
    forbidden_missing = missing if strict else []
    if mismatched or forbidden_missing or forbidden_unexpected:
        lines = [f"Cannot load {str(path)!r} into {type(model).__name__}:"]
        for title, keys in (
            ("missing", forbidden_missing),
            ("unexpected", forbidden_unexpected),
            ("shape mismatch", mismatched),
        ):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=False)
    return missing, unexpected


def torchvision_resnet18_backbone(path: str | os.PathLike[str] | None = None) -> ResNetBackbone:
    """torchvision's ResNet-18 up to ``layer4``, as a hook-friendly :class:`ResNetBackbone`.

    Without ``path``, copies the weights of ``torchvision.models.resnet18(weights=None)``
    (torchvision's own initialisation) into :func:`resnet18_backbone`; with
    ``path``, loads that torchvision-format state dict instead (e.g. the
    ImageNet weights file you saved yourself; its ``fc`` keys are ignored).
    The result computes the same function as torchvision's model without
    ``avgpool`` and ``fc``, but with one non-in-place ReLU module per use
    (torchvision shares one in-place ReLU per block).

    Args:
        path: optional torchvision ResNet-18 state dict file. Never downloaded.

    Returns:
        A :class:`ResNetBackbone` with ``out_channels == 512``.

    Raises:
        ImportError: if torchvision is not installed.
        ValueError: if ``path`` lacks backbone keys or has other shapes.

    Shape:
        - Input: :math:`(N, 3, H, W)`
        - Output: :math:`(N, 512, H / 32, W / 32)`

    Example:
        >>> net = torchvision_resnet18_backbone()
        >>> net(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 512, 2, 2])
    """
    try:
        import torchvision
    except ImportError as err:
        raise ImportError("torchvision_resnet18_backbone needs torchvision: `pip install torchvision`") from err
    backbone = resnet18_backbone(stem="imagenet")
    if path is None:
        reference = torchvision.models.resnet18(weights=None).state_dict()
        backbone.load_state_dict({k: v for k, v in reference.items() if not k.startswith("fc.")})
    else:
        load_pretrained(backbone, path, strict="missing")
    return backbone
