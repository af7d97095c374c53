"""Tensors -> uint8 pictures: colour maps, heat-map overlays, captioned grids, confusion matrices, bar charts.

Everything here returns ``numpy.uint8`` arrays of shape ``(H, W, 3)`` ready for a sink; nothing is written.

Example:
    >>> import torch
    >>> from trainviz.render.images import overlay_heatmaps, image_grid
    >>> imgs, maps = torch.rand(4, 3, 32, 32), torch.rand(4, 32, 32)
    >>> image_grid(overlay_heatmaps(imgs, maps), ncols=2).shape
    (198, 198, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "histogram_image",
    "turbo",
    "to_uint8",
    "upscale",
    "overlay_heatmaps",
    "colorize",
    "image_grid",
    "caption_tiles",
    "confusion_matrix_image",
    "probability_bars_image",
    "probability_panels",
]

# Polynomial fit of Google's Turbo colour map (Mikhailov 2019), input t in [0, 1].
_TURBO = torch.tensor(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)


def turbo(t: torch.Tensor) -> torch.Tensor:
    """Map values in [0, 1] to RGB in [0, 1] with the Turbo colour map.

    Shape:
        ``(*)`` -> ``(*, 3)``
    """
    t = t.clamp(0, 1).to(torch.float32).unsqueeze(-1)
    powers = torch.cat([t**i for i in range(6)], dim=-1)
    return (powers @ _TURBO.to(t.device).T).clamp(0, 1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Images in [0, 1] -> uint8 ``(N, H, W, 3)`` on the CPU (grey images repeated to 3 channels).

    Shape:
        ``(N, C, H, W)`` with C in {1, 3} -> ``(N, H, W, 3)``
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"Expected images of shape (N, 1 or 3, H, W), got {tuple(images.shape)}.")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def upscale(images: torch.Tensor, min_size: int = 96) -> torch.Tensor:
    """Nearest-neighbour upscale by an integer factor so the shorter side is at least ``min_size``.

    Shape:
        ``(N, C, H, W)`` -> ``(N, C, kH, kW)``
    """
    k = max(1, -(-min_size // min(images.shape[-2:])))
    return images if k == 1 else images.repeat_interleave(k, -2).repeat_interleave(k, -1)


def colorize(maps: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Heat maps in [0, 1] -> Turbo RGB images, optionally bilinearly resized to ``size``.

    Shape:
        ``(N, h, w)`` -> ``(N, 3, H, W)``
    """
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps.unsqueeze(1).float(), size=size, mode="bilinear", align_corners=False).squeeze(1)
    return turbo(maps).permute(0, 3, 1, 2)


def overlay_heatmaps(images: torch.Tensor, maps: torch.Tensor, alpha: float = 0.5, min_size: int = 96) -> np.ndarray:
    """Blend Turbo-coloured maps over images (pixels in [0, 1]); returns upscaled uint8 tiles.

    Shape:
        images ``(N, C, H, W)``, maps ``(N, h, w)`` in [0, 1] -> ``(N, kH, kW, 3)`` uint8
    """
    if images.shape[0] != maps.shape[0]:
        raise ValueError(f"Expected as many maps as images, got {maps.shape[0]} and {images.shape[0]}.")
    rgb = images.float().expand(-1, 3, -1, -1) if images.shape[1] == 1 else images.float()
    heat = colorize(maps.to(rgb.device), size=tuple(rgb.shape[-2:]))
    return to_uint8(upscale((1 - alpha) * rgb + alpha * heat, min_size))


def image_grid(tiles: np.ndarray, ncols: int | None = None, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Arrange ``(N, H, W, 3)`` uint8 tiles in a grid with ``pad`` pixels of ``fill`` between them."""
    n, h, w, c = tiles.shape
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    out = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), fill, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncols)
        out[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = tiles[i]
    return out


def caption_tiles(
    tiles: np.ndarray, captions: Sequence[str], colours: Sequence[tuple[int, int, int]] | None = None
) -> np.ndarray:
    """Add a caption strip (one or two short lines) under each tile.

    Shape:
        ``(N, H, W, 3)`` -> ``(N, H + 24, W, 3)``
    """
    from PIL import Image, ImageDraw

    n, h, w, _ = tiles.shape
    if len(captions) != n:
        raise ValueError(f"Expected {n} captions, got {len(captions)}.")
    out = np.full((n, h + 24, w, 3), 255, np.uint8)
    out[:, :h] = tiles
    for i, text in enumerate(captions):
        canvas = Image.fromarray(out[i])
        ImageDraw.Draw(canvas).multiline_text((2, h + 1), text, fill=(colours[i] if colours else (0, 0, 0)), spacing=1)
        out[i] = np.asarray(canvas)
    return out


def confusion_matrix_image(cm: torch.Tensor, class_names: Sequence[str], cell: int = 28) -> np.ndarray:
    """Row-normalised confusion matrix (rows: true, columns: predicted) with counts in the cells."""
    from PIL import Image, ImageDraw

    cm = cm.detach().cpu().to(torch.float64)
    k = cm.shape[0]
    rows = cm / cm.sum(1, keepdim=True).clamp_min(1)
    colours = (turbo(rows) * 255).round().to(torch.uint8).numpy()
    margin = 8 + 6 * max(len(str(n)) for n in class_names)
    size = margin + k * cell + 4
    canvas = Image.new("RGB", (size, size + 14), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((2, size), "rows: true, cols: predicted", fill=(0, 0, 0))
    for i in range(k):
        draw.text((2, margin + i * cell + cell // 3), str(class_names[i]), fill=(0, 0, 0))
        draw.text((margin + i * cell + 2, 2 + (i % 2) * 10), str(class_names[i])[:4], fill=(0, 0, 0))
        for j in range(k):
            x0, y0 = margin + j * cell, margin + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=tuple(int(v) for v in colours[i, j]))
            value = rows[i, j].item()
            ink = (255, 255, 255) if value < 0.35 or value > 0.85 else (0, 0, 0)
            draw.text((x0 + 3, y0 + cell // 3), str(int(cm[i, j].item())), fill=ink)
    return np.asarray(canvas)


def probability_bars_image(
    image: torch.Tensor, probs: torch.Tensor, class_names: Sequence[str], true_label: int, min_size: int = 96
) -> np.ndarray:
    """One probe image beside horizontal bars of its probability for every class (true class in green,
    the predicted class, when wrong, in red).

    Shape:
        image ``(C, H, W)`` in [0, 1], probs ``(K,)`` -> ``(max(H', 14K+8), W' + 200, 3)`` uint8
    """
    from PIL import Image, ImageDraw

    tile = to_uint8(upscale(image.unsqueeze(0), min_size))[0]
    probs = probs.detach().float().cpu()
    k = probs.shape[0]
    pred = int(probs.argmax())
    height = max(tile.shape[0], 14 * k + 8)
    canvas = Image.new("RGB", (tile.shape[1] + 200, height), "white")
    canvas.paste(Image.fromarray(tile), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = tile.shape[1] + 6
    for c in range(k):
        y = 4 + 14 * c
        colour = (40, 160, 60) if c == true_label else (200, 50, 50) if c == pred else (90, 110, 200)
        draw.text((x0, y), str(class_names[c])[:10], fill=(0, 0, 0))
        draw.rectangle([x0 + 66, y + 2, x0 + 66 + int(100 * probs[c]), y + 10], fill=colour)
        draw.text((x0 + 170, y), f"{probs[c]:.2f}", fill=(0, 0, 0))
    return np.asarray(canvas)


def probability_panels(
    pixels: torch.Tensor, probs: torch.Tensor, class_names: Sequence[str], labels: Sequence[int], pad: int = 4
) -> np.ndarray:
    """:func:`probability_bars_image` of several images, stacked top to bottom (``pad`` white pixels between).

    Shape:
        pixels ``(N, C, H, W)`` in [0, 1], probs ``(N, K)``, labels ``(N,)`` -> ``(H', W', 3)`` uint8
    """
    panels = [probability_bars_image(pixels[j], probs[j], class_names, labels[j]) for j in range(len(labels))]
    width = max(p.shape[1] for p in panels)
    panels = [np.pad(p, ((0, pad), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in panels]
    return np.concatenate(panels, axis=0)


def histogram_image(
    sets: dict[str, Any], bins: int = 10, bar: int = 18, height: int = 110, title: str = ""
) -> np.ndarray:
    """Histograms of values in [0, 1] (one panel per named set, ``bins`` equal bins), as a uint8 picture: the
    bars are the fraction of the values in each bin, the tallest panel bar reaching ``height`` pixels.

    Example:
        >>> import numpy as np
        >>> histogram_image({"confidence": np.array([0.95, 0.97, 0.12])}).shape[2]
        3

    Shape:
        each set ``(N,)`` -> ``(H, W, 3)`` uint8
    """
    from PIL import Image, ImageDraw

    width_panel = bins * bar + 40
    canvas = Image.new("RGB", (width_panel * len(sets) + 10, height + 52), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((6, 2), title, fill=(0, 0, 0))
    for p, (name, values) in enumerate(sets.items()):
        values = np.asarray(values, dtype=np.float64).ravel()
        counts, _ = np.histogram(values, bins=bins, range=(0.0, 1.0))
        share = counts / max(1, values.size)
        x0, y0 = 10 + p * width_panel, 16
        draw.text((x0, y0), f"{name} (n={values.size})", fill=(0, 0, 0))
        base = y0 + 14 + height
        for b, frac in enumerate(share):
            top = base - int(round(frac * height))
            if frac > 0:
                draw.rectangle([x0 + b * bar + 1, top, x0 + (b + 1) * bar - 2, base], fill=(70, 110, 200))
        draw.line([x0, base + 1, x0 + bins * bar, base + 1], fill=(0, 0, 0))
        draw.text((x0, base + 4), "0", fill=(0, 0, 0))
        draw.text((x0 + bins * bar - 6, base + 4), "1", fill=(0, 0, 0))
    return np.asarray(canvas)
