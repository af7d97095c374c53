"""Per-class map pictures (Zhang's encoder-decoder paper): every class's map for a few images, the predicted class's
map with
true label, prediction and confidence (figures 6-7), and each class's mean pattern.

Maps are expected in [0, 1] (e.g. :func:`trainviz.ops.class_maps.normalize_maps`). Raw maps are shown
nearest-upscaled (each cell of an 8x8 map stays a visible square); overlays are bilinear, over the image.
Returns ``numpy.uint8`` arrays ``(H, W, 3)`` ready for a sink; nothing is written.

Example:
    >>> import torch
    >>> from trainviz.render.maps import class_map_grid
    >>> pixels, maps = torch.rand(2, 3, 32, 32), torch.rand(2, 4, 8, 8)
    >>> probs = torch.softmax(torch.randn(2, 4), 1)
    >>> class_map_grid(pixels, maps, probs, torch.tensor([0, 3]), ["a", "b", "c", "d"]).shape
    (246, 492, 3)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from trainviz.render.images import caption_tiles, image_grid, overlay_heatmaps, to_uint8, turbo, upscale

__all__ = ["class_map_grid", "class_pattern_image", "map_tiles", "prediction_grid", "shown_classes"]

GREEN, RED, BLACK = (20, 120, 40), (190, 30, 30), (0, 0, 0)


def map_tiles(maps: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Maps in [0, 1] -> Turbo-coloured uint8 tiles, nearest-resized to ``size``.

    Shape:
        ``(N, h, w)`` -> ``(N, H, W, 3)``
    """
    if maps.dim() != 3:
        raise ValueError(f"Expected maps of shape (N, h, w), got {tuple(maps.shape)}.")
    rgb = turbo(maps.detach().float().cpu()).permute(0, 3, 1, 2)  # colour at the maps' own size, then enlarge
    return to_uint8(F.interpolate(rgb, size=tuple(size), mode="nearest"))


def _fit(text: str, width: int) -> str:
    """Cut each line of ``text`` to what fits in ``width`` pixels of PIL's default font (6 px a character)."""
    chars = max(1, (width - 2) // 6)
    return "\n".join(line[:chars] for line in text.split("\n"))


def _image_tiles(pixels: torch.Tensor, min_size: int) -> np.ndarray:
    return to_uint8(upscale(pixels.detach().float().cpu(), min_size))


def shown_classes(probs: torch.Tensor, labels: torch.Tensor, max_classes: int = 16) -> torch.Tensor:
    """The classes a row of :func:`class_map_grid` shows: all of them in order when there are at most
    ``max_classes``, else the ``max_classes`` most probable, most probable first, the true class replacing
    the last one when it is not among them.

    Shape:
        probs ``(N, K)``, labels ``(N,)`` -> ``(N, min(K, max_classes))`` int64
    """
    n, k = probs.shape
    if k <= max_classes:
        return torch.arange(k, device=probs.device).expand(n, k)
    order = probs.argsort(1, descending=True)[:, :max_classes].clone()
    missing = (order != labels[:, None]).all(1)
    order[missing, -1] = labels[missing]
    return order


def class_map_grid(
    pixels: torch.Tensor,
    maps: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    max_classes: int = 16,
    min_size: int = 96,
) -> np.ndarray:
    """One row per image: the image (caption: true class), then the map of each class (caption: class and
    ``P_k``; the true class in green, a wrong prediction in red).

    With more than ``max_classes`` classes, each row shows the ``max_classes`` most probable classes
    (the true class always among them), most probable first.

    Shape:
        pixels ``(N, C, H, W)`` in [0, 1], maps ``(N, K, h, w)`` in [0, 1], probs ``(N, K)``, labels ``(N,)``
        -> ``(H', W', 3)`` uint8
    """
    n, k = probs.shape
    if maps.shape[:2] != (n, k) or pixels.shape[0] != n or labels.shape != (n,) or len(class_names) != k:
        raise ValueError(
            f"Expected {n} images, maps (N, {k}, h, w), {n} labels and {k} class names, got {tuple(pixels.shape)}, "
            f"{tuple(maps.shape)}, {tuple(labels.shape)} and {len(class_names)} names."
        )
    probs, labels, maps = probs.detach().float().cpu(), labels.cpu(), maps.detach().float().cpu()
    pred = probs.argmax(1)
    images = _image_tiles(pixels, min_size)
    size = images.shape[1:3]
    columns = shown_classes(probs, labels, max_classes)
    tiles, captions, colours = [], [], []
    for i in range(n):
        tiles.append(images[i])
        captions.append(_fit(f"true: {class_names[labels[i]]}", size[1]))
        colours.append(BLACK)
        row = map_tiles(maps[i, columns[i]], size)
        for j, c in enumerate(columns[i].tolist()):
            tiles.append(row[j])
            captions.append(_fit(f"{class_names[c]}\nP={probs[i, c]:.2f}", size[1]))
            colours.append(GREEN if c == labels[i] else RED if c == pred[i] else BLACK)
    return image_grid(caption_tiles(np.stack(tiles), captions, colours), ncols=columns.shape[1] + 1)


def prediction_grid(
    pixels: torch.Tensor,
    maps: torch.Tensor,
    probs: torch.Tensor,
    labels: torch.Tensor,
    class_names: Sequence[str],
    ncols: int = 4,
    alpha: float = 0.5,
    min_size: int = 96,
) -> np.ndarray:
    """Seed figures 6-7: per image, the predicted class's map over the image (caption: true class) beside
    the raw map (caption: prediction and its ``P_k``, green if right, red if wrong); ``ncols`` pairs a row.

    Shape:
        pixels ``(N, C, H, W)`` in [0, 1], maps ``(N, h, w)`` (the predicted class's map, in [0, 1]),
        probs ``(N, K)``, labels ``(N,)`` -> ``(H', W', 3)`` uint8
    """
    n = pixels.shape[0]
    if maps.shape[0] != n or probs.shape[0] != n or labels.shape != (n,):
        raise ValueError(
            f"Expected {n} maps, probability rows and labels, got {maps.shape[0]}, {probs.shape[0]}, "
            f"{tuple(labels.shape)}."
        )
    if n == 0:
        raise ValueError("Expected at least one image.")
    probs, labels = probs.detach().float().cpu(), labels.cpu()
    conf, pred = probs.max(1)
    overlays = overlay_heatmaps(pixels.detach().float().cpu(), maps.detach().float().cpu(), alpha, min_size)
    raw = map_tiles(maps, overlays.shape[1:3])
    width = overlays.shape[2]
    tiles, captions, colours = [], [], []
    for i in range(n):
        ok = bool(pred[i] == labels[i])
        tiles += [overlays[i], raw[i]]
        captions.append(_fit(f"true: {class_names[labels[i]]}", width))
        captions.append(_fit(f"{class_names[pred[i]]}\nP={conf[i]:.2f}", width))
        colours += [BLACK, GREEN if ok else RED]
    return image_grid(caption_tiles(np.stack(tiles), captions, colours), ncols=2 * min(ncols, n))


def class_pattern_image(
    means: torch.Tensor,
    counts: torch.Tensor,
    class_names: Sequence[str],
    stability: torch.Tensor | None = None,
    ncols: int = 8,
    min_size: int = 96,
) -> np.ndarray:
    """Each class's mean map (its pattern), captioned with the class, the number of images averaged and,
    when given, the pattern's stability (correlation with the previous run).

    Shape:
        means ``(K, h, w)`` in [0, 1], counts ``(K,)``, stability ``(K,)`` -> ``(H', W', 3)`` uint8
    """
    k = means.shape[0]
    if counts.shape != (k,) or len(class_names) != k or (stability is not None and stability.shape != (k,)):
        raise ValueError(f"Expected {k} counts, class names and stability values for {k} patterns.")
    side = upscale(means[:1, None], min_size).shape[-2:]
    tiles = map_tiles(means, side)
    counts = counts.cpu().tolist()
    stab = stability.detach().float().cpu().tolist() if stability is not None else [None] * k
    captions = []
    for c in range(k):
        text = f"{class_names[c]} n={counts[c]}"
        if stab[c] is not None:
            text += f"\nstab={stab[c]:.2f}" if stab[c] == stab[c] else "\nstab=n/a"  # NaN: a flat pattern
        captions.append(_fit(text, side[1]))
    return image_grid(caption_tiles(tiles, captions), ncols=min(ncols, k))
