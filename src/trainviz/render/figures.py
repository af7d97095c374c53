"""Plotly figures for the HTML report: heat maps, curves, bars and reliability diagrams.

``plotly.graph_objects`` only (no pandas, no kaleido), no torch: the report is built from artifacts alone.
Labels are passed to plotly as they are; plotly renders them as text (it escapes ``<script>`` itself).
Missing values may be ``None`` or NaN: plotly leaves a gap or a blank cell.

Example:
    >>> fig = lines_figure([0, 1, 2], {"clean accuracy": [0.5, 0.7, 0.9]}, "Accuracy", "epoch", "accuracy")
    >>> fig.data[0].name
    'clean accuracy'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

__all__ = ["bars_figure", "heatmap_figure", "lines_figure", "reliability_figure"]

_LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 60, "b": 50}, "height": 420}


def heatmap_figure(
    tables: Mapping[str, np.ndarray],
    x: Sequence[str],
    y: Sequence[str],
    title: str,
    *,
    ranges: Mapping[str, tuple[float | None, float | None]] | None = None,
    diverging: bool = False,
) -> go.Figure:
    """Annotated heat map of one or several tables sharing axes; several get a drop-down to switch.

    Args:
        tables: ``{metric name: table}``, each of shape ``(len(y), len(x))``; NaN cells stay blank.
        x: column labels.
        y: row labels (drawn top to bottom).
        title: figure title.
        ranges: optional ``{metric name: (zmin, zmax)}``.
        diverging: blue-white-red scale centred on 0 (positive red: for drops) instead of Viridis.

    Shape:
        each table ``(len(y), len(x))``

    Example:
        >>> heatmap_figure({"accuracy": np.eye(2)}, ["s1", "s2"], ["fog", "snow"], "Accuracy").data[0].type
        'heatmap'
    """
    if not tables:
        raise ValueError("Expected at least one table.")
    ranges = ranges or {}
    traces = []
    for i, (name, z) in enumerate(tables.items()):
        z = np.asarray(z, dtype=np.float64)
        if z.shape != (len(y), len(x)):
            raise ValueError(f"Expected table {name!r} of shape ({len(y)}, {len(x)}), got {z.shape}.")
        zmin, zmax = ranges.get(name, (None, None))
        traces.append(
            go.Heatmap(
                z=z,
                x=list(x),
                y=list(y),
                name=name,
                visible=i == 0,
                zmin=zmin,
                zmax=zmax,
                colorscale="RdBu" if diverging else "Viridis",
                reversescale=diverging,
                zmid=0 if diverging else None,
                texttemplate="%{z:.2f}",
                hovertemplate="%{y}, %{x}: %{z:.3f}<extra>" + name + "</extra>",
                colorbar={"title": {"text": name}},
            )
        )
    fig = go.Figure(traces)
    fig.update_layout(**{**_LAYOUT, "height": max(320, 26 * len(y) + 140)}, title=title)
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(type="category")
    if len(traces) > 1:
        buttons = [
            {"label": name, "method": "update", "args": [{"visible": [j == i for j in range(len(traces))]}]}
            for i, name in enumerate(tables)
        ]
        menu = {"buttons": buttons, "x": 0.0, "xanchor": "left", "y": 1.01, "yanchor": "bottom", "direction": "down"}
        fig.update_layout(updatemenus=[menu], title={"text": title, "x": 0.2})
    return fig


def lines_figure(
    x: Sequence[float],
    series: Mapping[str, Sequence[float | None]],
    title: str,
    x_title: str,
    y_title: str,
    *,
    y_range: tuple[float, float] | None = None,
) -> go.Figure:
    """One line with markers per series over a shared x axis (epochs, epsilons).

    Example:
        >>> len(lines_figure([1, 2], {"a": [1, 2], "b": [2, None]}, "t", "x", "y").data)
        2
    """
    fig = go.Figure(
        [go.Scatter(x=list(x), y=list(values), mode="lines+markers", name=name) for name, values in series.items()]
    )
    fig.update_layout(**_LAYOUT, title=title, xaxis_title=x_title, yaxis_title=y_title)
    if len(x) and all(isinstance(v, int) for v in x):  # epochs: whole-number ticks
        fig.update_xaxes(tick0=0, dtick=max(1, -(-(max(x) - min(x)) // 10)))
    if y_range is not None:
        fig.update_yaxes(range=list(y_range))
    return fig


def bars_figure(
    categories: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    title: str,
    y_title: str,
) -> go.Figure:
    """Grouped bars: one bar per category and series.

    Example:
        >>> bars_figure(["fog", "snow"], {"accuracy": [0.5, 0.6]}, "t", "y").data[0].type
        'bar'
    """
    fig = go.Figure([go.Bar(x=list(categories), y=list(values), name=name) for name, values in series.items()])
    fig.update_layout(**_LAYOUT, title=title, yaxis_title=y_title, barmode="group")
    fig.update_xaxes(type="category")
    return fig


def reliability_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]], title: str) -> go.Figure:
    """Reliability diagram: accuracy against mean confidence per confidence bin, with the diagonal.

    Args:
        curves: ``{name: (mean confidence, accuracy, count)}`` per bin; empty bins (count 0) are dropped.
        title: figure title.

    Example:
        >>> conf, acc, count = np.array([0.5, 0.9]), np.array([0.4, 0.95]), np.array([3, 0])
        >>> len(reliability_figure({"clean": (conf, acc, count)}, "t").data[1].x)
        1
    """
    fig = go.Figure(
        [
            go.Scatter(
                x=[0, 1], y=[0, 1], mode="lines", name="perfect calibration", line={"dash": "dot", "color": "grey"}
            )
        ]
    )
    for name, (conf, acc, count) in curves.items():
        keep = np.asarray(count) > 0
        fig.add_trace(
            go.Scatter(
                x=np.asarray(conf)[keep],
                y=np.asarray(acc)[keep],
                mode="lines+markers",
                name=name,
                customdata=np.asarray(count)[keep],
                hovertemplate="confidence %{x:.2f}: accuracy %{y:.2f} (%{customdata} images)",
            )
        )
    fig.update_layout(**_LAYOUT, title=title, xaxis_title="confidence (top probability)", yaxis_title="accuracy")
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return fig
