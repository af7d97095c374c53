"""Robustness pictures for TensorBoard: a value table as a coloured heat map, clean-vs-corrupted example grids and
the table of predicted classes along adversarial trajectories.

Both return ``numpy.uint8`` arrays of shape ``(H, W, 3)``; nothing is written.

Example:
    >>> import numpy as np
    >>> table_heatmap_image(np.array([[0.9, np.nan], [0.5, 0.2]]), ["grayscale", "fog"], ["s1", "s2"]).dtype
    dtype('uint8')
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import numpy as np
import torch

from trainviz.render.images import turbo

__all__ = ["example_grid_image", "table_heatmap_image", "trajectory_table_image"]

_CHAR_W = 6  # width of a character of PIL's default bitmap font, in pixels


def table_heatmap_image(
    values: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    cell: tuple[int, int] = (40, 16),
    vmin: float = 0.0,
    vmax: float = 1.0,
    corner: str = "",
) -> np.ndarray:
    """A table of values as Turbo-coloured cells with the value printed in each (NaN cells left blank).

    Args:
        values: the table, rows by columns.
        row_labels: one label per row (drawn on the left).
        col_labels: one label per column (drawn on top).
        cell: cell width and height in pixels.
        vmin: value shown as the low end of the colour map.
        vmax: value shown as the high end.
        corner: a note in the top-left corner, above the row labels (what the table leaves out), cut to fit.

    Shape:
        values ``(R, S)`` -> ``(24 + R * cell_h, margin + S * cell_w, 3)`` uint8

    Example:
        >>> table_heatmap_image(np.eye(2), ["a", "b"], ["x", "y"]).shape[2]
        3
    """
    from PIL import Image, ImageDraw

    values = np.asarray(values, dtype=np.float64)
    if values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"Expected values of shape ({len(row_labels)}, {len(col_labels)}), got {values.shape}.")
    cw, ch = cell
    margin = 8 + _CHAR_W * max((len(str(r)) for r in row_labels), default=1)
    top = 18
    canvas = Image.new("RGB", (margin + cw * values.shape[1] + 4, top + ch * values.shape[0] + 4), "white")
    draw = ImageDraw.Draw(canvas)
    t = torch.from_numpy(np.nan_to_num((values - vmin) / max(vmax - vmin, 1e-12), nan=0.0))
    colours = (turbo(t) * 255).round().to(torch.uint8).numpy()
    draw.text((3, 3), corner[: (margin - 4) // _CHAR_W], fill=(90, 90, 90))
    for j, label in enumerate(col_labels):
        draw.text((margin + j * cw + 2, 3), str(label)[: cw // _CHAR_W], fill=(0, 0, 0))
    for i, label in enumerate(row_labels):
        y0 = top + i * ch
        draw.text((3, y0 + 2), str(label), fill=(0, 0, 0))
        for j in range(values.shape[1]):
            if np.isnan(values[i, j]):
                continue
            x0 = margin + j * cw
            draw.rectangle([x0, y0, x0 + cw - 1, y0 + ch - 1], fill=tuple(int(c) for c in colours[i, j]))
            dark = t[i, j] < 0.3 or t[i, j] > 0.85
            draw.text((x0 + 4, y0 + 2), f"{values[i, j]:.2f}", fill=(255, 255, 255) if dark else (0, 0, 0))
    return np.asarray(canvas)


def _header(title: str, width: int, max_lines: int = 3) -> str:
    """A column title wrapped to ``width`` pixels, breaking names at underscores, at most ``max_lines`` lines."""
    chars = max(width // _CHAR_W + 1, 1)  # the last character may run into the padding
    lines = [w.replace("_ ", "_") for part in title.split("\n") for w in textwrap.wrap(part.replace("_", "_ "), chars)]
    return "\n".join(line[:chars] for line in lines[:max_lines])


def example_grid_image(
    tiles: np.ndarray,
    column_titles: Sequence[str],
    captions: Sequence[Sequence[str]],
    correct: np.ndarray,
    pad: int = 2,
) -> np.ndarray:
    """Example images in columns (clean, then each corruption) and rows (images), each captioned with its
    prediction and confidence, green when right and red when wrong (Zhang's encoder-decoder paper, figures 9-12).

    All text is drawn on one canvas (cheap enough to redraw at every epoch).

    Args:
        tiles: uint8 tiles, one column per condition and one row per example image.
        column_titles: one title per column (``"clean"``, corruption names; ``"\\n"`` starts a line), wrapped
            on at most three lines.
        captions: caption of each tile, ``captions[column][row]`` (one or two short lines).
        correct: whether each tile's prediction is right, ``correct[column][row]``.
        pad: white pixels between tiles.

    Shape:
        tiles ``(S, N, H, W, 3)``, correct ``(S, N)`` -> ``(38 + N * (H + 26), S * (W + 2) + 2, 3)`` uint8

    Example:
        >>> tiles = np.zeros((2, 3, 8, 8, 3), np.uint8)
        >>> caps = [["a"] * 3, ["b"] * 3]
        >>> example_grid_image(tiles, ["clean", "fog"], caps, np.ones((2, 3), bool)).shape
        (140, 22, 3)
    """
    from PIL import Image, ImageDraw

    s, n, h, w, _ = tiles.shape
    if len(column_titles) != s or len(captions) != s or np.shape(correct) != (s, n):
        raise ValueError(f"Expected {s} column titles, {s} caption lists and `correct` of shape ({s}, {n}).")
    head, cap = 36, 24
    canvas = np.full((head + pad + n * (h + cap + pad), pad + s * (w + pad), 3), 255, np.uint8)
    for c in range(s):
        x = pad + c * (w + pad)
        for r in range(n):
            y = head + pad + r * (h + cap + pad)
            canvas[y : y + h, x : x + w] = tiles[c, r]
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for c, title in enumerate(column_titles):
        x = pad + c * (w + pad)
        draw.multiline_text((x + 2, 1), _header(title, w), fill=(0, 0, 0), spacing=1)
        for r in range(n):
            y = head + pad + r * (h + cap + pad) + h
            colour = (30, 140, 50) if correct[c][r] else (200, 40, 40)
            draw.multiline_text((x + 2, y + 1), captions[c][r], fill=colour, spacing=1)
    return np.asarray(image)


def trajectory_table_image(
    predictions: np.ndarray | Sequence[Sequence[int]],
    class_names: Sequence[str],
    row_labels: Sequence[str] | None = None,
    flip_step: Sequence[int] | None = None,
    cell: tuple[int, int] = (64, 14),
) -> np.ndarray:
    """The table of Fleuret's lecture ("Adversarial examples"): the class predicted at each gradient-ascent
    iteration, one row per image and one column per iteration (0: the clean image). Cells whose class differs
    from the row's iteration 0 are filled red, the first of them (``flip_step``, default the first change) is
    framed; class names are cut to the cell width.

    Args:
        predictions: class indices, rows by iterations.
        class_names: display name of each class index (indices beyond them are shown as numbers).
        row_labels: one label per row (default ``#0``, ``#1``, ...).
        flip_step: the first changed iteration of each row (-1: none), when known.
        cell: cell width and height in pixels.

    Shape:
        predictions ``(N, T + 1)`` -> ``(18 + N * cell_h + 4, margin + (T + 1) * cell_w + 4, 3)`` uint8

    Example:
        >>> image = trajectory_table_image([[0, 0, 1], [2, 2, 2]], ["cat", "dog", "ship"], ["a", "b"])
        >>> image.shape, image.dtype
        ((50, 210, 3), dtype('uint8'))
    """
    from PIL import Image, ImageDraw

    pred = np.asarray(predictions, dtype=np.int64)
    if pred.ndim != 2 or pred.shape[1] == 0:
        raise ValueError(f"Expected `predictions` of shape (N, T + 1), got {pred.shape}.")
    n, t = pred.shape
    labels = [f"#{i}" for i in range(n)] if row_labels is None else [str(r) for r in row_labels]
    if len(labels) != n or (flip_step is not None and len(flip_step) != n):
        raise ValueError(f"Expected {n} row labels and flip steps (one per row of `predictions`).")
    changed = pred != pred[:, :1]
    firsts = [int(np.argmax(row)) if row.any() else -1 for row in changed] if flip_step is None else list(flip_step)
    cw, ch = cell
    margin, top, chars = 8 + _CHAR_W * max((len(r) for r in labels), default=1), 18, max(1, (cw - 4) // _CHAR_W)
    canvas = Image.new("RGB", (margin + cw * t + 4, top + ch * n + 4), "white")
    draw = ImageDraw.Draw(canvas)
    names = [str(c) for c in class_names]
    for k in range(t):
        draw.text((margin + k * cw + 2, 3), str(k), fill=(0, 0, 0))
    for i, label in enumerate(labels):
        y0 = top + i * ch
        draw.text((3, y0 + 1), label, fill=(0, 0, 0))
        for k in range(t):
            x0, c = margin + k * cw, int(pred[i, k])
            fill = (250, 200, 195) if changed[i, k] else ((240, 240, 240) if i % 2 else (255, 255, 255))
            draw.rectangle([x0, y0, x0 + cw - 1, y0 + ch - 1], fill=fill)
            if k == firsts[i]:
                draw.rectangle([x0, y0, x0 + cw - 1, y0 + ch - 1], outline=(180, 20, 20), width=2)
            name = names[c] if 0 <= c < len(names) else str(c)
            draw.text((x0 + 3, y0 + 1), name[:chars], fill=(120, 0, 0) if changed[i, k] else (0, 0, 0))
    return np.asarray(canvas)
