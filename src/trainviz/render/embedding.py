"""Embedding frames -> pictures: static scatter images (uint8, for TensorBoard) and plotly animations (HTML).

A frame is a ``(N, 2)`` array of 2-D positions of the probe points (PCA, UMAP or t-SNE of one layer's
features at one epoch). Points are coloured by true class with a fixed categorical palette (the same colour for
a class in every picture); misclassified points are drawn as rings instead of discs.

The static images are drawn with PIL (no matplotlib); the animations use ``plotly.graph_objects`` only (no
pandas). Nothing here writes to disk.

Example:
    >>> import numpy as np
    >>> frame = np.random.default_rng(0).normal(size=(60, 2))
    >>> labels = np.arange(60) % 3
    >>> scatter_image(frame, labels, ["a", "b", "c"], title="layer / pca").shape[2]
    3
    >>> fig = animation_figure({"layer": {0: frame, 1: frame * 2}}, labels, np.arange(60), ["a", "b", "c"])
    >>> len(fig.frames)
    2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

__all__ = [
    "PALETTE",
    "animation_figure",
    "animation_pages",
    "animation_spec",
    "depth_image",
    "figure_html",
    "scatter_image",
    "subplot_layout",
]

PALETTE: tuple[tuple[int, int, int], ...] = tuple(
    tuple(int(h[i : i + 2], 16) for i in (1, 3, 5))
    for h in (
        "#1f77b4",
        "#ff7f0e",
        "#2ca02c",
        "#d62728",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#7f7f7f",
        "#bcbd22",
        "#17becf",
        "#aec7e8",
        "#ffbb78",
        "#98df8a",
        "#ff9896",
        "#c5b0d5",
        "#c49c94",
        "#f7b6d2",
        "#c7c7c7",
        "#dbdb8d",
        "#9edae5",
    )
)
"""Categorical colours (matplotlib's tab10, then tab20's light shades); class ``c`` gets ``PALETTE[c % 20]``."""

_PAD = 0.05  # fraction of the data span left empty around the points
_LINE = 12  # pixels per text line (PIL's default bitmap font)


def _colour(c: int) -> tuple[int, int, int]:
    return PALETTE[c % len(PALETTE)]


def _hex(c: int) -> str:
    r, g, b = _colour(c)
    return f"#{r:02x}{g:02x}{b:02x}"


def _check_frame(frame: np.ndarray, n: int | None = None) -> np.ndarray:
    frame = np.asarray(frame, dtype=np.float64)
    if frame.ndim != 2 or frame.shape[1] != 2 or (n is not None and frame.shape[0] != n):
        want = f"({n}, 2)" if n is not None else "(N, 2)"
        raise ValueError(f"Expected a frame of shape {want}, got {frame.shape}.")
    if not np.isfinite(frame).all():
        raise ValueError("Expected a finite frame, found NaN or inf.")
    return frame


def _check_labels(labels: np.ndarray, n: int, class_names: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or (n and labels.min() < 0):
        raise ValueError(f"Expected `labels` to be {n} non-negative ints, got {labels.dtype} {labels.shape}.")
    k = int(labels.max()) + 1 if n else 0
    names = [str(c) for c in range(k)] if class_names is None else [str(c) for c in class_names]
    if len(names) < k:
        raise ValueError(f"Expected at least {k} class names, got {len(names)}.")
    return labels.astype(np.int64), names


def _square_range(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and half-width of a square window holding all ``points`` with a margin (equal axis scales)."""
    lo, hi = points.min(0), points.max(0)
    half = max(float((hi - lo).max()) / 2, 1e-12) * (1 + 2 * _PAD)
    return (lo + hi) / 2, half


# ------------------------------------------------------------------------------------------ static images


def _panel(frame: np.ndarray, labels: np.ndarray, wrong: np.ndarray | None, title: str, size: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    n = frame.shape[0]
    canvas = Image.new("RGB", (size, size + _LINE + 4), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), title, fill=(0, 0, 0))
    top = _LINE + 4
    draw.rectangle([0, top, size - 1, top + size - 1], outline=(200, 200, 200))
    if n:
        centre, half = _square_range(frame)
        xy = (frame - centre) / (2 * half) + 0.5  # in [0, 1], y up
        px = xy[:, 0] * (size - 1)
        py = top + (1 - xy[:, 1]) * (size - 1)
        r = 3 if n <= 500 else 2 if n <= 3000 else 1
        order = np.random.default_rng(0).permutation(n)  # a fixed mix of classes, so no class always lies on top
        for i in order:
            box = [px[i] - r, py[i] - r, px[i] + r, py[i] + r]
            colour = _colour(int(labels[i]))
            if wrong is not None and wrong[i]:
                draw.ellipse(box, outline=colour, fill="white")
            else:
                draw.ellipse(box, fill=colour)
    return np.asarray(canvas)


def _legend(names: Sequence[str], height: int, rings: bool) -> np.ndarray:
    from PIL import Image, ImageDraw

    width = 24 + 6 * max([len(n) for n in names] + [len("misclassified") if rings else 0])
    rows = len(names) + (1 if rings else 0)
    canvas = Image.new("RGB", (width, max(height, rows * 14 + 8)), "white")
    draw = ImageDraw.Draw(canvas)
    y = _LINE + 8
    for c, name in enumerate(names):
        draw.ellipse([4, y + 2, 12, y + 10], fill=_colour(c))
        draw.text((16, y), name, fill=(0, 0, 0))
        y += 14
    if rings:
        draw.ellipse([4, y + 2, 12, y + 10], outline=(0, 0, 0), fill="white")
        draw.text((16, y), "misclassified", fill=(0, 0, 0))
    return np.asarray(canvas)


def _hstack(parts: Sequence[np.ndarray], gap: int = 6) -> np.ndarray:
    height = max(p.shape[0] for p in parts)
    padded = []
    for i, p in enumerate(parts):
        right = gap if i < len(parts) - 1 else 0
        padded.append(np.pad(p, ((0, height - p.shape[0]), (0, right), (0, 0)), constant_values=255))
    return np.concatenate(padded, axis=1)


def depth_image(
    frames: Mapping[str, np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    wrong: np.ndarray | None = None,
    size: int = 280,
    legend: bool = True,
) -> np.ndarray:
    """Scatter panels side by side, one per entry of ``frames`` (titled with its key), and one legend.

    With the layers of a network at one epoch this is the seed's "layers as embeddings" view: classes
    disentangle with depth. Each panel has its own square window (equal x and y scales).

    Args:
        frames: ``{panel title: frame}``, all frames of the same ``N`` points.
        labels: class index of each point (colour).
        class_names: legend names (default ``"0"``, ``"1"``, ...).
        wrong: optional bool mask of misclassified points, drawn as rings.
        size: side of each panel's plotting square in pixels.
        legend: add the class legend on the right.

    Returns:
        uint8 image.

    Shape:
        each frame ``(N, 2)``, labels ``(N,)``, wrong ``(N,)`` -> ``(H, W, 3)``

    Example:
        >>> import numpy as np
        >>> f = np.random.default_rng(0).normal(size=(30, 2))
        >>> depth_image({"conv1": f, "conv2": f}, np.arange(30) % 2).shape[1] > 2 * 280
        True
    """
    if not frames:
        raise ValueError("Expected at least one frame.")
    n = len(np.asarray(labels))
    checked = {str(k): _check_frame(v, n) for k, v in frames.items()}
    labels, names = _check_labels(labels, n, class_names)
    if wrong is not None:
        wrong = np.asarray(wrong, dtype=bool)
        if wrong.shape != (n,):
            raise ValueError(f"Expected `wrong` to have shape ({n},), got {wrong.shape}.")
    if not isinstance(size, int) or size < 32:
        raise ValueError(f"Expected `size` to be an int >= 32, got {size!r}.")
    parts = [_panel(f, labels, wrong, title, size) for title, f in checked.items()]
    if legend:
        parts.append(_legend(names, parts[0].shape[0], wrong is not None and bool(wrong.any())))
    return _hstack(parts)


def scatter_image(
    frame: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    wrong: np.ndarray | None = None,
    title: str = "",
    size: int = 320,
) -> np.ndarray:
    """One frame as a scatter plot coloured by class, with a legend (a one-panel :func:`depth_image`).

    Shape:
        frame ``(N, 2)``, labels ``(N,)`` -> ``(H, W, 3)`` uint8

    Example:
        >>> import numpy as np
        >>> img = scatter_image(np.zeros((4, 2)), np.array([0, 1, 0, 1]), ["cat", "dog"], title="pca")
        >>> img.dtype, img.shape[0] == 320 + 16
        (dtype('uint8'), True)
    """
    return depth_image({title: frame}, labels, class_names, wrong=wrong, size=size)


# ------------------------------------------------------------------------------------------- animations


def animation_figure(
    panels: Mapping[str, Mapping[int, np.ndarray]],
    labels: np.ndarray,
    ids: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    predictions: Mapping[int, np.ndarray] | None = None,
    title: str = "",
) -> go.Figure:
    """A plotly animation over epochs: one scatter panel per entry of ``panels``, side by side.

    Every point keeps its id in every frame (plotly tweens each point from its old to its new position), each
    panel's axis ranges are fixed from all its frames (so motion is real motion, not rescaling), points are
    coloured by true class (one legend entry per class, click to hide), and hovering shows the point's id,
    label and, when ``predictions`` are given, the epoch's prediction (misclassified points are open circles).

    Args:
        panels: ``{panel title: {epoch: frame}}``; every panel has frames at the same epochs.
        labels: class index of each point.
        ids: stable id of each point (e.g. its index in the dataset).
        class_names: class names (default ``"0"``, ``"1"``, ...).
        predictions: ``{epoch: predicted class of each point}`` (optional).
        title: figure title.

    Returns:
        A ``go.Figure`` with one frame per epoch, a slider and play/pause buttons.

    Shape:
        frames ``(N, 2)``, labels ``(N,)``, ids ``(N,)``, predictions ``(N,)``

    Example:
        >>> import numpy as np
        >>> f = np.random.default_rng(0).normal(size=(10, 2))
        >>> fig = animation_figure({"pca": {0: f, 2: f + 1}}, np.arange(10) % 2, np.arange(10))
        >>> [fr.name for fr in fig.frames]
        ['epoch 0', 'epoch 2']
    """
    return go.Figure(animation_spec(panels, labels, ids, class_names, predictions=predictions, title=title))


WHITE = {
    "layout": {
        "paper_bgcolor": "white",
        "plot_bgcolor": "white",
        "font": {"color": "#2a3f5f"},
        "hovermode": "closest",
        "hoverlabel": {"align": "left"},
        "title": {"x": 0.05},
        "colorway": [
            *("#636efa", "#EF553B", "#00cc96", "#ab63fa", "#FFA15A"),
            *("#19d3f3", "#FF6692", "#B6E880", "#FF97FF", "#FECB52"),
        ],
        **{
            axis: {"gridcolor": "#EBF0F8", "linecolor": "#EBF0F8", "zerolinecolor": "#EBF0F8", "zerolinewidth": 2}
            for axis in ("xaxis", "yaxis")
        },
    }
}
"""The look of plotly's ``plotly_white`` template that a page of :func:`animation_spec` uses, as a plain dict: building
the template object (``plotly.io.templates``) imports plotly's figure classes, which a fit end's first page then pays
for (that page took 0.297 s with them and 0.105 s without, ``benchmarks/animation_pages_cost.py``)."""


def subplot_layout(titles: Sequence[str], spacing: float = 0.04) -> dict:
    """The axes and titles of ``make_subplots(rows=1, cols=len(titles), subplot_titles=titles,
    horizontal_spacing=spacing)``, as a plain layout dict, without importing plotly's figure classes.

    Example:
        >>> layout = subplot_layout(["a", "b"])
        >>> layout["xaxis"]["domain"], layout["xaxis2"]["domain"], layout["annotations"][1]["x"]
        ([0.0, 0.48], [0.52, 1.0], 0.76)
    """
    n = len(titles)
    width = (1 - spacing * (n - 1)) / n
    layout: dict = {"annotations": []}
    for i, text in enumerate(titles):
        suffix = str(i + 1) if i else ""
        left = i * (width + spacing)
        right = 1.0 if i == n - 1 else left + width
        layout[f"xaxis{suffix}"] = {"anchor": f"y{suffix}", "domain": [left, right]}
        layout[f"yaxis{suffix}"] = {"anchor": f"x{suffix}", "domain": [0.0, 1.0]}
        layout["annotations"].append(
            {
                "font": {"size": 16},
                "showarrow": False,
                "text": text,
                "x": (left + right) / 2,
                "xanchor": "center",
                "xref": "paper",
                "y": 1.0,
                "yanchor": "bottom",
                "yref": "paper",
            }
        )
    return layout


def animation_spec(
    panels: Mapping[str, Mapping[int, np.ndarray]],
    labels: np.ndarray,
    ids: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    predictions: Mapping[int, np.ndarray] | None = None,
    title: str = "",
) -> dict:
    """:func:`animation_figure` as a plain figure dict (``data``, ``layout``, ``frames``), built without plotly's
    figure classes (the axes by :func:`subplot_layout`, the look by :data:`WHITE`) and rendered without validating
    every trace property (:func:`figure_html`): the pages of a fit end are built from it. At 6 epochs of 256 points
    (``benchmarks/animation_pages_cost.py``, one run) a page takes 0.13x the validated figure's time once plotly is
    warm (0.008 s against 0.061 s), and 0.35x for the first page of a process, which a fit end pays (0.105 s against
    0.297 s).

    Example:
        >>> import numpy as np
        >>> f = np.random.default_rng(0).normal(size=(10, 2))
        >>> spec = animation_spec({"pca": {0: f, 2: f + 1}}, np.arange(10) % 2, np.arange(10))
        >>> [frame["name"] for frame in spec["frames"]], spec["frames"][0]["traces"], len(spec["data"])
        (['epoch 0', 'epoch 2'], [0, 1], 4)
    """
    if not panels:
        raise ValueError("Expected at least one panel.")
    ids = np.asarray(ids)
    n = ids.shape[0]
    labels, names = _check_labels(labels, n, class_names)
    epochs = sorted(next(iter(panels.values())))
    if not epochs:
        raise ValueError("Expected at least one frame per panel.")
    for title_p, frames in panels.items():
        if sorted(frames) != epochs:
            raise ValueError(f"Expected every panel at epochs {epochs}, got {sorted(frames)} for {title_p!r}.")
    checked = {str(p): {e: _check_frame(f, n) for e, f in frames.items()} for p, frames in panels.items()}
    predictions = {} if predictions is None else {e: np.asarray(v).astype(np.int64) for e, v in predictions.items()}
    members = [np.flatnonzero(labels == c) for c in range(len(names))]
    members = [(c, idx) for c, idx in enumerate(members) if len(idx)]
    id_text = [[str(v) for v in ids[idx]] for _, idx in members]

    def hover(epoch: int, c: int, idx: np.ndarray) -> tuple[list[str], list[str]]:
        base = [f"id {v}<br>label {names[c]}" for v in ids[idx]]
        pred = predictions.get(epoch)
        if pred is None:
            return base, ["circle"] * len(idx)
        p = pred[idx]
        text = [f"{b}<br>prediction {names[q] if 0 <= q < len(names) else q}" for b, q in zip(base, p)]
        return text, ["circle" if q == c else "circle-open" for q in p]

    size = 6 if n <= 2000 else 4

    def traces(epoch: int) -> list[dict]:
        out = []
        for p, frames in enumerate(checked.values()):
            xy = frames[epoch]
            for (c, idx), point_ids in zip(members, id_text):
                text, symbols = hover(epoch, c, idx)
                out.append(
                    {
                        "type": "scatter",
                        "x": xy[idx, 0],
                        "y": xy[idx, 1],
                        "ids": point_ids,
                        "mode": "markers",
                        "name": names[c],
                        "legendgroup": names[c],
                        "showlegend": False,
                        "text": text,
                        "hovertemplate": "%{text}<extra></extra>",
                        "marker": {
                            "color": _hex(c),
                            "size": size,
                            "symbol": symbols,
                            "line": {"width": 1.5, "color": _hex(c)},
                        },
                        "xaxis": f"x{p + 1 if p else ''}",
                        "yaxis": f"y{p + 1 if p else ''}",
                    }
                )
        return out

    n_panels = len(checked)
    layout = subplot_layout(list(checked))
    first = traces(epochs[0])
    frames_spec = [{"data": traces(e), "name": f"epoch {e}", "traces": list(range(len(first)))} for e in epochs]
    legends = [  # legend entries (filled discs; clicking one hides the class in every panel)
        {
            "type": "scatter",
            "x": [None],
            "y": [None],
            "mode": "markers",
            "name": names[c],
            "legendgroup": names[c],
            "marker": {"color": _hex(c), "size": 9},
        }
        for c, _ in members
    ]
    for p, frames in enumerate(checked.values()):
        centre, half = _square_range(np.concatenate(list(frames.values())))
        axis = {"autorange": False, "zeroline": False, "showticklabels": False}
        suffix = str(p + 1) if p else ""
        layout[f"xaxis{suffix}"].update(range=[centre[0] - half, centre[0] + half], **axis)
        layout[f"yaxis{suffix}"].update(range=[centre[1] - half, centre[1] + half], **axis)
    play = {"frame": {"duration": 700, "redraw": False}, "transition": {"duration": 400}, "fromcurrent": True}
    jump = {"frame": {"duration": 0, "redraw": False}, "mode": "immediate", "transition": {"duration": 300}}
    layout.update(
        title={"text": title},
        template=WHITE,
        height=520,
        width=max(640, 440 * n_panels + 160),
        legend={"title": {"text": "label (open: misclassified)" if predictions else "label"}, "itemsizing": "constant"},
        updatemenus=[
            {
                "type": "buttons",
                "direction": "left",
                "x": 0.0,
                "y": -0.06,
                "xanchor": "left",
                "yanchor": "top",
                "buttons": [
                    {"label": "Play", "method": "animate", "args": [None, play]},
                    {
                        "label": "Pause",
                        "method": "animate",
                        "args": [[None], {"frame": {"duration": 0}, "mode": "immediate"}],
                    },
                ],
            }
        ],
        sliders=[
            {
                "x": 0.12,
                "y": -0.02,
                "len": 0.88,
                "currentvalue": {"prefix": ""},
                "steps": [{"label": f"epoch {e}", "method": "animate", "args": [[f"epoch {e}"], jump]} for e in epochs],
            }
        ],
    )
    return {"data": first + legends, "layout": layout, "frames": frames_spec}


def figure_html(fig: go.Figure | dict) -> str:
    """A full HTML page for ``fig`` (a figure, or a figure dict such as :func:`animation_spec`'s, rendered as it
    is, without validation) that loads ``plotly.min.js`` from its own folder (works offline once that file is
    written beside it; ~4.8 MB shared by all pages instead of inlined in each).

    Example:
        >>> 'src="plotly.min.js"' in figure_html(go.Figure()), 'src="plotly.min.js"' in figure_html({"data": []})
        (True, True)
    """
    import plotly.io as pio

    return pio.to_html(fig, include_plotlyjs="directory", full_html=True, auto_play=False, validate=False)


def animation_pages(
    frames: Mapping[tuple[str, str], Mapping[int, np.ndarray]],
    labels: np.ndarray,
    ids: np.ndarray,
    class_names: Sequence[str] | None = None,
    *,
    predictions: Mapping[int, np.ndarray] | None = None,
) -> dict[str, str]:
    """The fit-end pages of the embedding frames: ``{file name: HTML}``.

    ``<layer>_<method>.html`` animates one layer's frames of one method over epochs; ``depth_<method>.html``
    (several layers with frames at common epochs) shows all layers side by side over those epochs. The pages
    load ``plotly.min.js`` from their own folder (:func:`figure_html`).

    Args:
        frames: ``{(layer, method): {epoch: frame}}``.
        labels: class index of each point.
        ids: stable id of each point.
        class_names: class names.
        predictions: ``{epoch: predicted class of each point}``.

    Example:
        >>> f = np.random.default_rng(0).normal(size=(10, 2))
        >>> frames = {("a", "pca"): {0: f, 1: f}, ("b", "pca"): {1: f}}
        >>> sorted(animation_pages(frames, np.arange(10) % 2, np.arange(10)))
        ['a_pca.html', 'b_pca.html', 'depth_pca.html']
    """
    pages = {}
    for (layer, method), fr in frames.items():
        fig = animation_spec(
            {f"{layer} / {method}": fr},
            labels,
            ids,
            class_names,
            predictions=predictions,
            title=f"{layer}: {method} of the probe set over epochs",
        )
        pages[f"{layer}_{method}.html"] = figure_html(fig)
    for method in dict.fromkeys(m for _, m in frames):
        panels = {layer: fr for (layer, m), fr in frames.items() if m == method}
        common = set.intersection(*(set(fr) for fr in panels.values()))
        if len(panels) > 1 and common:
            panels = {layer: {e: fr[e] for e in common} for layer, fr in panels.items()}
            fig = animation_spec(
                panels,
                labels,
                ids,
                class_names,
                predictions=predictions,
                title=f"Layers as embeddings ({method}): classes across depth, over epochs",
            )
            pages[f"depth_{method}.html"] = figure_html(fig)
    return pages
