"""Pictures of what units are and do: filter grids, activation maps (over the input and raw), the lines of
2-D linear units over the probe points, and activation histograms.

Everything returns ``numpy.uint8`` arrays ``(H, W, 3)`` ready for a sink; nothing is written.

Example:
    >>> import torch
    >>> from trainviz.render.features import filter_grid, line_plot
    >>> filter_grid(torch.rand(6, 3, 3, 3), ncols=3).shape
    (54, 80, 3)
    >>> segments = torch.tensor([[[0.0, -1.0], [0.0, 1.0]]])
    >>> line_plot(torch.rand(5, 2), torch.tensor([0, 1, 0, 1, 0]), segments, torch.tensor([True]),
    ...           (-1.0, 1.0, -1.0, 1.0)).shape
    (270, 256, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from trainviz.render.images import (
    caption_tiles,
    colorize,
    histogram_image,
    image_grid,
    overlay_heatmaps,
    to_uint8,
    upscale,
)

__all__ = ["CLASS_COLOURS", "activation_grids", "filter_grid", "histogram_panel", "line_plot"]

# Tableau 10: the class colours of the line plot.
CLASS_COLOURS = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
)


def filter_grid(tiles: torch.Tensor, ncols: int, min_size: int = 24, pad: int = 2) -> np.ndarray:
    """Filter tiles in [0, 1] (:func:`trainviz.ops.features.filter_tiles`) as one grid: each tile upscaled
    (nearest neighbour, an integer factor) to at least ``min_size`` pixels a side, ``pad`` white pixels between.
    A tile pixel of value ``v`` is ``round(255 * v)``.

    Shape:
        ``(M, 1 or 3, kh, kw)`` -> ``(H, W, 3)`` uint8
    """
    return image_grid(to_uint8(upscale(tiles.float(), min_size)), ncols, pad=pad)


def activation_grids(
    maps: torch.Tensor,
    channels: Sequence[int],
    pixels: torch.Tensor | None = None,
    row_captions: Sequence[str] | None = None,
    min_size: int = 64,
) -> tuple[np.ndarray | None, np.ndarray]:
    """Activation maps of a few images and channels, as two grids with one row per image.

    Args:
        maps: the maps in [0, 1].
        channels: the channel index of each column (captions).
        pixels: the images in [0, 1]; with them, the first grid: ``[image, each map over the image]`` per row
            (maps upsampled bilinearly to the image, Turbo colours at half opacity).
        row_captions: a caption of each image (under its input tile).
        min_size: smallest side of a tile in pixels.

    Returns:
        ``(overlay, raw)``: the overlay grid (``None`` without ``pixels``) and the raw maps in Turbo colours.

    Shape:
        maps ``(n, c, h, w)``, pixels ``(n, 1 or 3, H, W)``
    """
    n, c, h, w = maps.shape
    heads = [f"ch {k}" for k in channels]
    raw = to_uint8(upscale(colorize(maps.reshape(n * c, h, w).float()), min_size))
    raw_grid = image_grid(caption_tiles(raw, heads * n), c)
    if pixels is None:
        return None, raw_grid
    pixels = pixels.float()
    over = overlay_heatmaps(pixels.repeat_interleave(c, 0), maps.reshape(n * c, h, w).float(), min_size=min_size)
    inputs = to_uint8(upscale(pixels, min_size))
    if inputs.shape[1:] != over.shape[1:]:  # both upscaled by the same rule from the same size
        raise ValueError(f"Tile sizes differ: {inputs.shape[1:]} and {over.shape[1:]}.")
    tiles = np.concatenate([inputs[:, None], over.reshape(n, c, *over.shape[1:])], 1).reshape(-1, *over.shape[1:])
    captions = [
        (row_captions[r] if row_captions else "input") if k == 0 else heads[k - 1]
        for r in range(n)
        for k in range(c + 1)
    ]
    return image_grid(caption_tiles(tiles, captions), c + 1), raw_grid


def line_plot(
    points: torch.Tensor,
    labels: torch.Tensor,
    segments: torch.Tensor,
    visible: torch.Tensor,
    box: tuple[float, float, float, float],
    size: int = 256,
    title: str = "",
    radius: int = 2,
) -> np.ndarray:
    """Seed 001's picture of a linear layer with 2 inputs: each unit's line ``{x : w.x + b = 0}`` (the segments
    of :func:`trainviz.ops.features.line_segments`) drawn over the points, coloured by class (Tableau 10, cycled).

    The plot maps ``box = (x_min, x_max, y_min, y_max)`` onto ``size x size`` pixels (y up); a caption strip
    with ``title`` and the box sits under it.

    Shape:
        points ``(N, 2)``, labels ``(N,)``, segments ``(K, 2, 2)``, visible ``(K,)`` -> ``(size + 14, size, 3)``
    """
    from PIL import Image, ImageDraw

    x0, x1, y0, y1 = (float(v) for v in box)
    sx, sy = (size - 1) / max(x1 - x0, 1e-12), (size - 1) / max(y1 - y0, 1e-12)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (x - x0) * sx, (y1 - y) * sy

    canvas = Image.new("RGB", (size, size + 14), "white")
    draw = ImageDraw.Draw(canvas)
    draw.rectangle([0, 0, size - 1, size - 1], outline=(0, 0, 0))
    pts = points.detach().double().cpu().tolist()
    labs = [int(v) for v in labels.detach().cpu().tolist()]
    for (x, y), lab in zip(pts, labs):
        px, py = to_px(x, y)
        draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=CLASS_COLOURS[lab % len(CLASS_COLOURS)])
    for (a, b), show in zip(segments.detach().double().cpu().tolist(), visible.detach().cpu().tolist()):
        if show:
            draw.line([to_px(*a), to_px(*b)], fill=(40, 40, 40), width=1)
    caption = f"{title}  " if title else ""
    draw.text((2, size + 1), f"{caption}x [{x0:.2g}, {x1:.2g}] y [{y0:.2g}, {y1:.2g}]", fill=(0, 0, 0))
    return np.asarray(canvas)


def histogram_panel(values: Any, name: str, bins: int = 20) -> np.ndarray:
    """A histogram of any real ``values`` through :func:`trainviz.render.images.histogram_image` (which draws
    [0, 1]): the values are mapped linearly from their ``[min, max]`` onto [0, 1] and the title gives that
    range, so the axis reads from ``min`` (0) to ``max`` (1).

    Shape:
        ``(N,)`` -> ``(H, W, 3)`` uint8
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    scaled = (values - lo) / (hi - lo) if hi > lo else np.full_like(values, 0.5)
    title = f"{name}: values from {lo:.3g} (0) to {hi:.3g} (1)"
    return histogram_image({"activations": scaled}, bins=bins, bar=10, title=title)
