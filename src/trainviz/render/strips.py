"""Evolution strips (one probe image's map across epochs, figures 3-5 of Zhang's encoder-decoder paper) and gradient
pictures.

Returns ``numpy.uint8`` arrays ``(H, W, 3)`` ready for a sink; nothing is written.

Example:
    >>> import torch
    >>> from trainviz.render.strips import evolution_strip
    >>> strip = evolution_strip(
    ...     torch.rand(2, 3, 32, 32), torch.rand(3, 2, 32, 32), epochs=[0, 4, 9], row_labels=["a", "b"]
    ... )
    >>> strip.shape
    (236, 394, 3)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from trainviz.render.images import overlay_heatmaps, to_uint8, upscale

__all__ = ["evolution_strip", "gradient_images"]

_HEADER = 14  # pixels of the epoch labels above the strip
_PAD = 2


def evolution_strip(
    images: torch.Tensor,
    maps: torch.Tensor,
    epochs: Sequence[int],
    row_labels: Sequence[str] | None = None,
    alpha: float = 0.5,
    min_size: int = 80,
) -> np.ndarray:
    """Rows of ``[image, map at epoch e_1, map at e_2, ...]`` overlays, epoch indices (0-based, as the
    TensorBoard steps) on top,
    an optional label under each input image.

    Args:
        images: the tracked probe images, pixels in [0, 1].
        maps: their maps in [0, 1], one stack per epoch.
        epochs: 0-based epoch index of each stack.
        row_labels: short text under each input image (e.g. the class).
        alpha: heat-map opacity.
        min_size: tiles are upscaled (nearest) to at least this many pixels.

    Shape:
        images ``(T, C, H, W)``, maps ``(E, T, h, w)`` -> ``(H', W', 3)`` uint8
    """
    from PIL import Image, ImageDraw

    t, e = images.shape[0], maps.shape[0]
    if maps.dim() != 4 or maps.shape[1] != t:
        raise ValueError(f"Expected maps of shape (epochs, {t}, h, w), got {tuple(maps.shape)}.")
    if len(epochs) != e:
        raise ValueError(f"Expected {e} epoch numbers, got {len(epochs)}.")
    if row_labels is not None and len(row_labels) != t:
        raise ValueError(f"Expected {t} row labels, got {len(row_labels)}.")
    pixels = images.float().cpu()
    inputs = to_uint8(upscale(pixels, min_size))  # (T, s, s, 3)
    overlays = [overlay_heatmaps(pixels, maps[i].float().cpu(), alpha, min_size) for i in range(e)]
    th, tw = inputs.shape[1:3]
    label_h = 12 if row_labels is not None else 0
    row_h = th + label_h + _PAD
    canvas = np.full((_HEADER + t * row_h + _PAD, (e + 1) * (tw + _PAD) + _PAD, 3), 255, np.uint8)
    for r in range(t):
        y = _HEADER + r * row_h
        canvas[y : y + th, _PAD : _PAD + tw] = inputs[r]
        for c in range(e):
            x = _PAD + (c + 1) * (tw + _PAD)
            canvas[y : y + th, x : x + tw] = overlays[c][r]
    out = Image.fromarray(canvas)
    draw = ImageDraw.Draw(out)
    draw.text((_PAD + 1, 1), "input", fill=(0, 0, 0))
    for c, epoch in enumerate(epochs):
        draw.text((_PAD + (c + 1) * (tw + _PAD) + 1, 1), f"epoch {int(epoch)}", fill=(0, 0, 0))
    for r, label in enumerate(row_labels or []):
        draw.text((_PAD + 1, _HEADER + r * row_h + th), str(label)[: tw // 6], fill=(0, 0, 0))
    return np.asarray(out)


def gradient_images(gradients: torch.Tensor) -> torch.Tensor:
    """Input-space gradients (guided backprop, guided Grad-CAM) -> displayable images in [0, 1]:
    per image ``0.5 + 0.1 (g - mean) / std``, clipped (the usual deprocessing of pytorch-grad-cam).

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, H, W)``
    """
    g = gradients.float()
    mean = g.mean((1, 2, 3), keepdim=True)
    std = g.std((1, 2, 3), keepdim=True)
    return (0.5 + 0.1 * (g - mean) / (std + 1e-5)).clamp(0, 1)
