"""What a network's units are and do, as plain tensors: filters as images, the lines of 2-D linear units,
activation statistics and the channels to show (pure torch).

Fleuret's "Under the hood" (EE-559, lecture 8) looks at a trained network through its parameters (filters as
images), its internal activations (as images) and the distributions of its activations over a population of
samples; for a one-hidden-layer network on 2-D points, each hidden unit is the line ``{x : w.x + b = 0}``. The
functions here compute those pictures' numbers; :mod:`trainviz.render.features` draws them and
:mod:`trainviz.probes.features` runs them on a probe set.

Units and statistics (defined once, here):
    - A *unit* is a channel of a convolutional output ``(N, C, *spatial)``, a feature of a linear output
      ``(N, F)``, and a channel of a token output ``(N, T, C)`` (the last axis); :func:`unit_view` lays any
      output out as ``(N, units, positions)``.
    - ``dead_fraction``: the fraction of units that are never ``> 0`` over all probe images and positions.
    - ``sparsity``: the fraction of all values (images x units x positions) that are ``<= 0``.
    - ``mean`` and ``std``: over all values; ``std`` is the population standard deviation (``ddof=0``, as
      ``numpy.std``).

Example:
    >>> import torch
    >>> from trainviz.ops.features import activation_stats, line_segments
    >>> stats = activation_stats(torch.tensor([[1.0, 0.0], [2.0, -1.0]]))  # 2 images, 2 features
    >>> float(stats.dead_fraction), float(stats.sparsity), float(stats.mean)
    (0.5, 0.5, 0.5)
    >>> segments, visible = line_segments(torch.tensor([[1.0, 0.0]]), torch.tensor([-0.5]), (-1.0, 1.0, -1.0, 1.0))
    >>> segments[0].tolist(), bool(visible[0])
    ([[0.5, -1.0], [0.5, 1.0]], True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from trainviz.core.checks import check_choice, check_positive_int

__all__ = [
    "FILTER_SCALINGS",
    "ActivationStats",
    "ActivationStatsAccumulator",
    "activation_stats",
    "filter_tiles",
    "line_segments",
    "plot_box",
    "scale_filters",
    "select_channels",
    "unit_view",
]

FILTER_SCALINGS = ("filter", "symmetric")
FilterScaling = Literal["filter", "symmetric"]


# --------------------------------------------------------------------------------------------------
# filters as images
# --------------------------------------------------------------------------------------------------
def scale_filters(weight: torch.Tensor, scaling: FilterScaling = "filter") -> torch.Tensor:
    """Conv weights mapped to [0, 1] for display.

    Args:
        weight: the weights of a convolution, ``(out_channels, in_channels, kh, kw)``.
        scaling: ``"filter"`` (as the seed's pictures): each filter (all its input channels together) min-max
            scaled to [0, 1] by its own minimum and maximum, so every filter uses the whole grey range and a
            filter's channels stay comparable; a constant filter is 0.5. ``"symmetric"``: every weight divided by
            the largest absolute weight of the layer and mapped as ``0.5 + 0.5 * w / max|w|``, so 0 is mid-grey
            and filters are comparable with each other (an all-zero layer is 0.5).

    Shape:
        ``(O, I, kh, kw)`` -> ``(O, I, kh, kw)`` in [0, 1]

    Example:
        >>> w = torch.tensor([[[[-1.0, 0.0], [1.0, 2.0]]]])
        >>> scale_filters(w).flatten().tolist(), scale_filters(w, "symmetric").flatten().tolist()
        ([0.0, 0.3333333432674408, 0.6666666865348816, 1.0], [0.25, 0.5, 0.75, 1.0])
    """
    check_choice("scaling", scaling, FILTER_SCALINGS)
    if weight.dim() != 4:
        raise ValueError(f"Expected conv weights (out, in, kh, kw), got shape {tuple(weight.shape)}.")
    w = weight.detach().float()
    if scaling == "symmetric":
        peak = w.abs().amax()
        return torch.where(peak > 0, 0.5 + 0.5 * w / peak.clamp_min(1e-30), torch.full_like(w, 0.5))
    flat = w.flatten(1)
    lo, hi = flat.amin(1)[:, None, None, None], flat.amax(1)[:, None, None, None]
    span = hi - lo
    return torch.where(span > 0, (w - lo) / span.clamp_min(1e-30), torch.full_like(w, 0.5))


def filter_tiles(
    weight: torch.Tensor,
    n_filters: int = 20,
    filter_channels: int = 15,
    scaling: FilterScaling = "filter",
    rgb: bool | None = None,
) -> tuple[torch.Tensor, int]:
    """Display tiles of a convolution's filters, scaled by :func:`scale_filters` over each *whole* filter.

    RGB (``rgb=True``, the default when ``in_channels == 3``): one colour tile per filter for the first
    ``n_filters`` filters. Grayscale otherwise: one tile per input channel, the first ``filter_channels`` input
    channels of the first ``n_filters`` filters, filter by filter (seed 001's AlexNet second layer: "first 15
    channels of the first 20 filters"). The selection is the first N by construction, so it is the same at
    every epoch of a run.

    Returns:
        ``(tiles, ncols)``: tiles in [0, 1] and the grid width that puts one filter per row (grayscale) or
        ``min(10, n)`` filters per row (RGB).

    Shape:
        weight ``(O, I, kh, kw)`` -> tiles ``(min(n_filters, O), 3, kh, kw)`` (RGB) or
        ``(min(n_filters, O) * min(filter_channels, I), 1, kh, kw)`` (grayscale)

    Example:
        >>> tiles, ncols = filter_tiles(torch.randn(64, 32, 3, 3), n_filters=20, filter_channels=15)
        >>> tuple(tiles.shape), ncols
        ((300, 1, 3, 3), 15)
    """
    check_positive_int("n_filters", n_filters)
    check_positive_int("filter_channels", filter_channels)
    scaled = scale_filters(weight, scaling)
    o, i = scaled.shape[:2]
    if rgb is None:
        rgb = i == 3
    if rgb:
        if i != 3:
            raise ValueError(f"Expected 3 input channels for RGB filter tiles, got {i}.")
        tiles = scaled[: min(n_filters, o)]
        return tiles, min(10, tiles.shape[0])
    c = min(filter_channels, i)
    tiles = scaled[: min(n_filters, o), :c]
    return tiles.reshape(-1, 1, *scaled.shape[-2:]), c


# --------------------------------------------------------------------------------------------------
# 2-D linear units as lines
# --------------------------------------------------------------------------------------------------
def plot_box(points: torch.Tensor, margin: float = 0.1) -> tuple[float, float, float, float]:
    """The plot box ``(x_min, x_max, y_min, y_max)`` around 2-D ``points``, grown by ``margin`` of its size
    on each side (a unit box around a single point). One device-to-host copy.

    Shape:
        ``(N, 2)``
    """
    lo, hi = points.detach().float().amin(0), points.detach().float().amax(0)
    span = (hi - lo).clamp_min(1e-6)
    lo, hi = lo - margin * span, hi + margin * span
    x0, y0, x1, y1 = torch.cat([lo, hi]).cpu().tolist()
    return x0, x1, y0, y1


def line_segments(
    weight: torch.Tensor, bias: torch.Tensor | None, box: tuple[float, float, float, float], eps: float = 1e-9
) -> tuple[torch.Tensor, torch.Tensor]:
    """The part inside ``box`` of each unit's line ``{x : w.x + b = 0}`` of a linear layer with 2 inputs.

    Each line is cut with the four sides of ``box = (x_min, x_max, y_min, y_max)``; of the cuts inside the box,
    the two farthest apart along the line are the segment's ends. Batched over units, on the weights' device.

    Args:
        weight: ``nn.Linear(2, k).weight``.
        bias: its bias (``None``: zeros).
        box: the plot box.
        eps: tolerance of "inside the box" and of a zero weight vector.

    Returns:
        ``(segments, visible)``: the end points ``[[x_a, y_a], [x_b, y_b]]`` of each unit (zeros where not
        visible), and whether the line crosses the box (``False`` for ``w = 0`` or a line outside the box).

    Shape:
        weight ``(K, 2)``, bias ``(K,)`` -> segments ``(K, 2, 2)``, visible ``(K,)``
    """
    if weight.dim() != 2 or weight.shape[1] != 2:
        raise ValueError(f"Expected the weight of a linear layer with 2 inputs (K, 2), got {tuple(weight.shape)}.")
    w = weight.detach().double()
    b = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if bias is None else bias.detach().double()
    x_min, x_max, y_min, y_max = (float(v) for v in box)
    w0, w1 = w[:, 0:1], w[:, 1:2]  # (K, 1)
    b_ = b[:, None]
    xs = torch.tensor([x_min, x_max], dtype=w.dtype, device=w.device)[None].expand(w.shape[0], 2)
    ys = torch.tensor([y_min, y_max], dtype=w.dtype, device=w.device)[None].expand(w.shape[0], 2)
    safe1 = torch.where(w1.abs() > eps, w1, torch.ones_like(w1))
    safe0 = torch.where(w0.abs() > eps, w0, torch.ones_like(w0))
    # cuts with the vertical sides x = x_min, x_max and the horizontal sides y = y_min, y_max
    vertical = torch.stack([xs, -(b_ + w0 * xs) / safe1], -1)  # (K, 2, 2)
    horizontal = torch.stack([-(b_ + w1 * ys) / safe0, ys], -1)
    cuts = torch.cat([vertical, horizontal], 1)  # (K, 4, 2)
    defined = torch.cat([(w1.abs() > eps).expand(-1, 2), (w0.abs() > eps).expand(-1, 2)], 1)
    tol = eps * max(1.0, abs(x_min), abs(x_max), abs(y_min), abs(y_max))
    inside = (
        (cuts[..., 0] >= x_min - tol)
        & (cuts[..., 0] <= x_max + tol)
        & (cuts[..., 1] >= y_min - tol)
        & (cuts[..., 1] <= y_max + tol)
    )
    valid = defined & inside
    direction = torch.cat([-w1, w0], 1)  # along the line
    t = (cuts * direction[:, None, :]).sum(-1)
    inf = torch.tensor(float("inf"), dtype=w.dtype, device=w.device)
    first = torch.where(valid, t, inf).argmin(1)
    last = torch.where(valid, t, -inf).argmax(1)
    rows = torch.arange(w.shape[0], device=w.device)
    segments = torch.stack([cuts[rows, first], cuts[rows, last]], 1)
    visible = valid.any(1) & (w.abs().amax(1) > eps)
    segments = torch.where(visible[:, None, None], segments, torch.zeros_like(segments))
    return segments.to(weight.dtype if weight.is_floating_point() else torch.float32), visible


# --------------------------------------------------------------------------------------------------
# activation statistics
# --------------------------------------------------------------------------------------------------
def unit_view(x: torch.Tensor) -> torch.Tensor:
    """Any layer output as ``(N, units, positions)``: ``(N, F)`` -> ``(N, F, 1)``; ``(N, T, C)`` (tokens) ->
    ``(N, C, T)``; ``(N, C, *spatial)`` -> ``(N, C, prod(spatial))`` (see the module docstring).

    Example:
        >>> unit_view(torch.zeros(2, 5)).shape, unit_view(torch.zeros(2, 17, 8)).shape
        (torch.Size([2, 5, 1]), torch.Size([2, 8, 17]))
    """
    if x.dim() < 2:
        raise ValueError(f"Expected a batched layer output (N, ...), got shape {tuple(x.shape)}.")
    if x.dim() == 2:
        return x[:, :, None]
    if x.dim() == 3:
        return x.transpose(1, 2)
    return x.flatten(2)


@dataclass(kw_only=True)
class ActivationStats:
    """Statistics of one layer's outputs over a population (definitions in the module docstring).

    Attributes:
        dead_fraction, sparsity, mean, std: 0-d tensors (on the device of the activations).
        unit_mean: the mean of each unit over images and positions; unit_max: its maximum.
        sample: the values for the histogram (all of them, or a uniform sample without replacement).
        count: how many values the statistics cover.

    Shape:
        unit_mean, unit_max ``(U,)``; sample ``(S,)``.
    """

    dead_fraction: torch.Tensor
    sparsity: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    unit_mean: torch.Tensor
    unit_max: torch.Tensor
    sample: torch.Tensor
    count: int


class ActivationStatsAccumulator:
    """Streaming :class:`ActivationStats` over batches (the class face of :func:`activation_stats`): per-unit
    sums and maxima, the count of values ``<= 0``, the mean and variance merged batch by batch (Chan et al.'s
    parallel update, in float32 on the device), and a uniform histogram sample of at most ``max_values`` values
    kept as the values with the smallest random keys from a private generator (seeded with ``seed``).

    Example:
        >>> acc = ActivationStatsAccumulator(max_values=100)
        >>> x = torch.randn(6, 3, 4, 4)
        >>> acc.update(x[:4]); acc.update(x[4:])
        >>> torch.allclose(acc.result().std, x.std(unbiased=False))
        True
    """

    def __init__(self, max_values: int = 4096, seed: int = 0) -> None:
        self.max_values = check_positive_int("max_values", max_values)
        self.seed = seed
        self._generator: torch.Generator | None = None
        self.count = 0
        self._unit_sum: torch.Tensor | None = None
        self._unit_max: torch.Tensor | None = None
        self._unit_count = 0
        self._nonpositive: torch.Tensor | None = None
        self._mean: torch.Tensor | None = None
        self._m2: torch.Tensor | None = None
        self._keys: torch.Tensor | None = None
        self._values: torch.Tensor | None = None

    def update(self, x: torch.Tensor) -> None:
        """Add one batch of a layer's outputs ``(N, ...)``."""
        v = unit_view(x.detach()).float()
        n_units = v.shape[1]
        flat = v.reshape(-1)
        m = flat.numel()
        if m == 0:
            return
        if self._unit_sum is None:
            self._unit_sum = torch.zeros(n_units, device=v.device)
            self._unit_max = torch.full((n_units,), float("-inf"), device=v.device)
            self._nonpositive = torch.zeros((), device=v.device)
            self._mean, self._m2 = torch.zeros((), device=v.device), torch.zeros((), device=v.device)
        elif self._unit_sum.shape[0] != n_units:
            raise ValueError(f"Expected {self._unit_sum.shape[0]} units in every batch, got {n_units}.")
        self._unit_sum += v.sum((0, 2))
        self._unit_max = torch.maximum(self._unit_max, v.amax((0, 2)))
        self._unit_count += v.shape[0] * v.shape[2]
        self._nonpositive += (flat <= 0).sum()
        batch_mean = flat.mean()
        batch_m2 = ((flat - batch_mean) ** 2).sum()
        total = self.count + m
        delta = batch_mean - self._mean
        self._mean = self._mean + delta * (m / total)
        self._m2 = self._m2 + batch_m2 + delta**2 * (self.count * m / total)
        self.count = total
        self._sample(flat)

    def _sample(self, flat: torch.Tensor) -> None:
        if self._generator is None or self._generator.device != flat.device:
            self._generator = torch.Generator(device=flat.device)
            self._generator.manual_seed(self.seed)
        keys = torch.rand(flat.numel(), generator=self._generator, device=flat.device)
        if self._keys is not None:
            keys, flat = torch.cat([self._keys, keys]), torch.cat([self._values, flat])
        if keys.numel() > self.max_values:
            keep = torch.topk(keys, self.max_values, largest=False, sorted=False).indices
            keys, flat = keys[keep], flat[keep]
        self._keys, self._values = keys, flat

    def result(self) -> ActivationStats:
        """The statistics of everything added so far.

        Raises:
            ValueError: nothing was added.
        """
        if self._unit_sum is None:
            raise ValueError("No activations were added.")
        unit_mean = self._unit_sum / max(1, self._unit_count)
        order = torch.argsort(self._keys)  # a sample independent of how the batches were split
        return ActivationStats(
            dead_fraction=(self._unit_max <= 0).float().mean(),
            sparsity=self._nonpositive / self.count,
            mean=self._mean.clone(),
            std=(self._m2 / self.count).clamp_min(0).sqrt(),
            unit_mean=unit_mean,
            unit_max=self._unit_max.clone(),
            sample=self._values[order],
            count=self.count,
        )


def activation_stats(x: torch.Tensor, max_values: int = 4096, seed: int = 0) -> ActivationStats:
    """:class:`ActivationStats` of a whole population of a layer's outputs at once (see the module docstring).

    Shape:
        ``(N, ...)`` (any layer output)
    """
    acc = ActivationStatsAccumulator(max_values, seed)
    acc.update(x)
    return acc.result()


def select_channels(channel_means: torch.Tensor, n: int) -> torch.Tensor:
    """The ``n`` channels with the largest mean activation, largest first (ties: the lower index first).

    Shape:
        ``(C,)`` -> ``(min(n, C),)`` long

    Example:
        >>> select_channels(torch.tensor([0.1, 0.5, 0.2, 0.5]), 3).tolist()
        [1, 3, 2]
    """
    check_positive_int("n", n)
    return torch.argsort(-channel_means.float(), stable=True)[: min(n, channel_means.shape[0])]
