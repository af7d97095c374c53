"""From model inputs to pictures: what every picture of a probe image shows, photos or not.

Photos (the default, ``pixels=True``) are shown as their pixels: the normalisation of :mod:`trainviz.core.pixels`
undone. Inputs declared not to be photos (``pixels=False``: CT slices in Hounsfield units, log-mel spectrograms,
standardised multispectral bands) have no pixel meaning; their pictures are scaled per image and per channel by
robust percentiles, ``(x - P_low) / (P_high - P_low)`` clipped to [0, 1] with ``P_q`` numpy's ``percentile``
(linear interpolation) over the channel's values, 1st and 99th by default. The scaling is for display only: every
probe computes on the model's own inputs.

Pictures have 1 or 3 channels. Inputs with 1 or 3 channels are shown whole; other counts (2, 4 or more: RGB plus
infrared, multispectral) show their first channel unless ``display_channels`` chooses one channel or a triple.

Example:
    >>> import torch
    >>> from trainviz.core.display import Display
    >>> hu = torch.tensor([-1000.0, 0.0, 40.0, 2000.0]).view(1, 1, 2, 2)  # Hounsfield units
    >>> Display(None, (0,), (0.0, 100.0))(hu).flatten().tolist()  # min-max with percentiles 0 and 100
    [0.0, 0.3333333432674408, 0.3466666638851166, 1.0]
    >>> Display(None, (3, 1, 0))(torch.randn(2, 4, 8, 8)).shape  # bands 3, 1, 0 as red, green, blue
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from trainviz.core.normalization import Normalization

__all__ = ["DISPLAY_PERCENTILES", "Display", "check_display_channels", "percentile_scale", "pictures"]

DISPLAY_PERCENTILES = (1.0, 99.0)
"""The percentiles that bound the pictures of inputs that are not photos (per image and channel)."""


def check_display_channels(value: Any, name: str = "display_channels") -> tuple[int, ...] | None:
    """``None`` (the default choice), one channel index, or three (red, green, blue), as a tuple.

    Raises:
        ValueError: anything else (the message names the valid forms).
    """
    if value is None:
        return None
    items = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    ok = isinstance(items, Sequence) and not isinstance(items, str) and len(items) in (1, 3)
    if not ok or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in items):
        raise ValueError(
            f"Expected `{name}` to be None (the whole image with 1 or 3 channels, else the first channel), one "
            f"channel index or three (shown as red, green, blue), non-negative ints; got {value!r}."
        )
    return tuple(int(c) for c in items)


def display_channels_for(channels: int, chosen: tuple[int, ...] | None, owner: str = "trainviz") -> tuple[int, ...]:
    """The channels shown of ``channels``-channel inputs: ``chosen``, or all of 1 or 3, or the first.

    Raises:
        ValueError: a chosen index the inputs do not have.
    """
    if chosen is None:
        return tuple(range(channels)) if channels in (1, 3) else (0,)
    if max(chosen) >= channels:
        raise ValueError(
            f"{owner}: `display_channels={list(chosen)}` names a channel the probe images do not have: they have "
            f"{channels} (indices 0..{channels - 1})."
        )
    return chosen


def percentile_scale(
    images: torch.Tensor, low: float = DISPLAY_PERCENTILES[0], high: float = DISPLAY_PERCENTILES[1]
) -> torch.Tensor:
    """Each image's channels scaled to [0, 1] by their own percentiles: ``(x - P_low) / (P_high - P_low)``,
    clipped; a channel with ``P_high == P_low`` is 0. ``P_q`` is ``numpy.percentile(x, q)`` (linear
    interpolation between the sorted values); non-finite values are shown as 0.

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, H, W)`` float32
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"Expected percentiles 0 <= low < high <= 100, got {low!r} and {high!r}.")
    x = images.detach().float()
    n, c = x.shape[:2]
    flat = torch.nan_to_num(x.reshape(n, c, -1), nan=0.0, posinf=0.0, neginf=0.0)
    ordered = flat.sort(-1).values
    count = ordered.shape[-1]

    def at(q: float) -> torch.Tensor:
        pos = q / 100 * (count - 1)
        lo, hi = math.floor(pos), min(math.floor(pos) + 1, count - 1)
        a, b = ordered[..., lo], ordered[..., hi]
        return (a + (b - a) * (pos - lo)).view(n, c, 1)

    p_low, p_high = at(low), at(high)
    span = p_high - p_low
    scaled = torch.where(span > 0, (flat - p_low) / torch.where(span > 0, span, 1.0), torch.zeros_like(flat))
    return scaled.clamp(0, 1).view_as(x)


@dataclass(frozen=True)
class Display:
    """How model inputs become pictures: ``norm`` undone (photos) or, with ``norm=None``, robust percentile scaling
    per image and channel; then the ``channels`` shown (1 or 3 indices).

    Attributes:
        norm: the mapping to pixels (photos), or ``None``: the inputs are not photos.
        channels: the input channels shown, one (grey) or three (red, green, blue).
        percentiles: the low and high percentiles of the scaling (``norm=None`` only).
    """

    norm: Normalization | None
    channels: tuple[int, ...]
    percentiles: tuple[float, float] = DISPLAY_PERCENTILES

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Pictures of ``images``: ``(N, C, H, W)`` model inputs -> ``(N, 1 or 3, H, W)``."""
        if self.norm is not None:
            images = self.norm.denormalize(images)
        if images.shape[1] != len(self.channels) or list(self.channels) != list(range(images.shape[1])):
            images = images[:, list(self.channels)]
        return images if self.norm is not None else percentile_scale(images, *self.percentiles)

    def channels_of(self, tensor: torch.Tensor) -> torch.Tensor:
        """The shown channels of an input-shaped tensor that is not an input (a gradient image)."""
        if tensor.shape[1] == len(self.channels) and list(self.channels) == list(range(tensor.shape[1])):
            return tensor
        return tensor[:, list(self.channels)]

    def record(self) -> dict[str, Any]:
        """What the manifest records: ``{"scaling": "pixels" | "percentile", "channels", "percentiles"?}``."""
        if self.norm is not None:
            return {"scaling": "pixels", "channels": list(self.channels)}
        return {
            "scaling": "percentile",
            "per": "image and channel",
            "percentiles": list(self.percentiles),
            "channels": list(self.channels),
        }


def pictures(images: torch.Tensor, norm: Normalization | None, display: Display | None = None) -> torch.Tensor:
    """Pictures of model inputs: ``display(images)`` when a :class:`Display` is given, else ``norm`` undone
    (``None``: the images themselves)."""
    if display is not None:
        return display(images)
    return images if norm is None else norm.denormalize(images)
