"""Per-class spatial maps before global pooling (Zhang, Visualization of encoder-decoder structure of DCNNs):
normalisation, class patterns, their
stability over training, and how sharp a map is (pure torch).

A model with per-class maps ends in ``maps (N, K, H, W) -> global average pool -> logits (N, K)``
(:class:`trainviz.models.ClassMapNet`, or any network whose last convolution has one channel per class).

* :func:`logits_and_maps`: one forward per batch gives both the logits and the maps of a named layer,
  and checks that the layer has one map per logit.
* :func:`normalize_maps` (seed eq. 10): ``f / max(f)`` per map. The seed's maps came out of a ReLU; the
  maps of :class:`~trainviz.models.ClassMapNet` are signed (the logits need both signs), so negatives are
  clamped to 0 first, and a map with no positive value stays all zeros (no division by 0).
* :func:`class_pattern_means`: a class's *pattern* is the mean normalised map of class ``k`` over the
  images whose true class is ``k``.
* :func:`stability_series`: Pearson correlation of each class's pattern between consecutive runs
  (1 = unchanged shape; scale does not matter). NaN where a pattern is flat (e.g. all zeros).
* :func:`formation_epochs`: a class's pattern *forms* at the first run from which its stability stays at
  or above a threshold for every later run (a single lucky correlation followed by a drop does not count).
* :func:`map_sharpness`: ``"peak_to_mean"`` = ``max / mean`` of the clamped map (1 for a flat map, ``H*W``
  for a single hot pixel) or ``"entropy"`` = ``1 - H(p) / log(H*W)`` with ``p = map / sum(map)`` (0 for a
  flat map, 1 for a single hot pixel). Both are scale-invariant, so raw and normalised maps score the
  same; an all-zero map counts as flat.
* :func:`rank_correlation`: Spearman's rho (Pearson correlation of average ranks, ties averaged).
* :func:`sharpness_confidence`: seed 5.2's claim ("the higher P_k, the sharper the map") as numbers:
  Spearman's rho between the predicted class's map sharpness and the confidence ``P_k``, separately for
  correct and for wrong predictions, and the mean sharpness of each group.

:class:`PatternTracker` is the stateful face: it keeps each run's class patterns (checkpointable) and
calls the functions above.

Example:
    >>> import torch
    >>> from trainviz.ops.class_maps import normalize_maps, map_sharpness
    >>> maps = torch.tensor([[[-1.0, 2.0], [0.0, 4.0]]])
    >>> normalize_maps(maps).tolist()
    [[[0.0, 0.5], [0.0, 1.0]]]
    >>> map_sharpness(torch.tensor([[[0.0, 2.0], [0.0, 2.0]]]), "peak_to_mean").tolist()
    [2.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from trainviz.core.checks import check_choice, check_positive_int
from trainviz.core.hooks import capture
from trainviz.core.layers import LayerSpec, resolve_layer
from trainviz.core.outputs import expect_logits
from trainviz.ops.cam import class_mean_maps
from trainviz.ops.localization import map_correlation

__all__ = [
    "SHARPNESS_MEASURES",
    "PatternTracker",
    "class_pattern_means",
    "formation_epochs",
    "logits_and_maps",
    "map_sharpness",
    "normalize_maps",
    "rank_correlation",
    "select_class_maps",
    "sharpness_confidence",
    "stability_series",
]

Sharpness = Literal["peak_to_mean", "entropy"]
SHARPNESS_MEASURES: tuple[str, ...] = ("peak_to_mean", "entropy")


def _check_maps(maps: torch.Tensor, dims: int, what: str) -> None:
    if not isinstance(maps, torch.Tensor) or maps.dim() != dims or not maps.is_floating_point():
        shape = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"Expected {what} as a floating tensor with {dims} dims, got {shape}.")


def logits_and_maps(
    model: nn.Module, layer: LayerSpec, images: torch.Tensor, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and the per-class maps of ``layer``, from one forward per batch (no graph, detached).

    The model's train/eval mode is the caller's business (call it in eval mode, e.g. inside
    :func:`trainviz.core.guard.probe_guard`, else BatchNorm statistics change).

    Args:
        model: a classifier returning logits ``(N, K)``.
        layer: the module (or its dotted name) whose output holds one map per class before pooling.
        images: model inputs.
        batch_size: images per forward.

    Returns:
        ``(logits, maps)``.

    Raises:
        ValueError: the layer is unknown (the message names close matches), the model does not return
            2-D logits, or the layer's output is not ``(N, K, H, W)`` with ``K`` = number of logits.

    Shape:
        images ``(N, C, H, W)`` -> logits ``(N, K)``, maps ``(N, K, h, w)``

    Example:
        >>> from trainviz.models import ClassMapNet
        >>> net = ClassMapNet(num_classes=4, encoder="small").eval()
        >>> logits, maps = logits_and_maps(net, "decoder.class_maps", torch.randn(3, 3, 32, 32))
        >>> logits.shape, maps.shape
        (torch.Size([3, 4]), torch.Size([3, 4, 16, 16]))
    """
    check_positive_int("batch_size", batch_size)
    name, module = resolve_layer(model, layer)
    logits, maps = [], []
    with torch.no_grad():
        for start in range(0, images.shape[0], batch_size):
            with capture(model, {name: module}) as acts:
                out = expect_logits(model(images[start : start + batch_size]))
            got = acts.get(name)
            if got is None or got.dim() != 4 or got.shape[:2] != out.shape:
                shape = "no tensor" if got is None else tuple(got.shape)
                raise ValueError(
                    f"Expected layer {name!r} to output per-class maps (N, K, H, W) with K = {out.shape[1]} "
                    f"(the number of logits), got {shape}. Pass the layer whose output has one channel per "
                    "class before global pooling (see `trainviz.list_layers(model)`)."
                )
            logits.append(out)
            maps.append(got)
    return torch.cat(logits), torch.cat(maps)


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Seed eq. 10, ``f / max(f)`` per map, after clamping negatives to 0; an all-non-positive map gives zeros.

    Shape:
        ``(*, H, W)`` -> ``(*, H, W)`` with values in [0, 1]

    Example:
        >>> normalize_maps(torch.tensor([[[0.0, -2.0], [0.0, 0.0]]])).tolist()
        [[[0.0, 0.0], [0.0, 0.0]]]
    """
    if not isinstance(maps, torch.Tensor) or maps.dim() < 2 or not maps.is_floating_point():
        got = tuple(maps.shape) if isinstance(maps, torch.Tensor) else type(maps).__name__
        raise ValueError(f"Expected floating maps of shape (*, H, W), got {got}.")
    positive = maps.clamp_min(0)
    peak = positive.amax((-2, -1), keepdim=True)
    return positive / torch.where(peak > 0, peak, torch.ones_like(peak))  # an all-zero map stays zero


def select_class_maps(maps: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """The map of class ``classes[i]`` of each image ``i`` (e.g. its true or its predicted class).

    Shape:
        maps ``(N, K, H, W)``, classes ``(N,)`` -> ``(N, H, W)``
    """
    _check_maps(maps, 4, "maps (N, K, H, W)")
    if classes.shape != (maps.shape[0],):
        raise ValueError(f"Expected one class per map stack, shape ({maps.shape[0]},), got {tuple(classes.shape)}.")
    return maps[torch.arange(maps.shape[0], device=maps.device), classes.to(maps.device)]


def class_pattern_means(maps: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class's pattern: the mean normalised (eq. 10) map of class ``k`` over the images labelled ``k``.

    Normalising is idempotent, so already-normalised maps may be passed. A class without images gets zeros.

    Returns:
        ``(means, counts)``.

    Shape:
        maps ``(N, K, H, W)``, labels ``(N,)`` -> means ``(K, H, W)``, counts ``(K,)``
    """
    _check_maps(maps, 4, "maps (N, K, H, W)")
    own = select_class_maps(normalize_maps(maps), labels)
    return class_mean_maps(own, labels.to(maps.device), maps.shape[1])


def stability_series(means: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each class's pattern between consecutive runs; NaN where a pattern is flat.

    Shape:
        ``(E, K, H, W)`` (one stack of patterns per run) -> ``(E - 1, K)``; row ``i`` compares run ``i + 1``
        with run ``i``.
    """
    _check_maps(means, 4, "class patterns (E, K, H, W)")
    if means.shape[0] < 2:
        return means.new_zeros(0, means.shape[1])
    e, k = means.shape[:2]
    return map_correlation(means[:-1].flatten(0, 1), means[1:].flatten(0, 1)).reshape(e - 1, k)


def formation_epochs(
    stability: torch.Tensor, epochs: Sequence[int] | torch.Tensor, threshold: float = 0.9
) -> torch.Tensor:
    """Epoch at which each class's pattern forms: the first run from which the stability stays
    ``>= threshold`` through the last run (NaN counts as below); ``-1`` if the last run is below.

    Args:
        stability: one row per run after the first (:func:`stability_series`).
        epochs: the epoch of each row (the later run of each compared pair).
        threshold: correlation a stable pattern reaches, in (0, 1].

    Shape:
        stability ``(S, K)``, epochs ``(S,)`` -> ``(K,)`` int64

    Example:
        >>> s = torch.tensor([[0.2, 0.95], [0.95, 0.5], [0.97, 0.96]])
        >>> formation_epochs(s, [1, 2, 3], 0.9).tolist()
        [2, 3]
    """
    _check_threshold(threshold)
    if stability.dim() != 2:
        raise ValueError(f"Expected a stability series of shape (S, K), got {tuple(stability.shape)}.")
    epochs = torch.as_tensor(epochs, dtype=torch.long, device=stability.device)
    if epochs.shape != stability.shape[:1]:
        raise ValueError(f"Expected {stability.shape[0]} epochs, one per stability row, got {tuple(epochs.shape)}.")
    never = torch.full((stability.shape[1],), -1, dtype=torch.long, device=stability.device)
    if stability.shape[0] == 0:
        return never
    ok = stability >= threshold  # NaN compares False
    count = ok.flip(0).long().cumprod(0).sum(0)  # length of the final run of rows at or above the threshold
    first = (stability.shape[0] - count).clamp_max(stability.shape[0] - 1)
    return torch.where(count > 0, epochs[first], never)


def _check_threshold(threshold: Any) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 1:
        raise ValueError(f"Expected `threshold` to be a float in (0, 1], got {threshold!r}.")
    return float(threshold)


def map_sharpness(maps: torch.Tensor, measure: Sharpness = "peak_to_mean") -> torch.Tensor:
    """How concentrated each map is (negatives clamped to 0; an all-zero map counts as flat).

    ``"peak_to_mean"``: ``max / mean``, from 1 (flat) to ``H*W`` (one hot pixel). ``"entropy"``:
    ``1 - H(p) / log(H*W)`` with ``p = map / sum(map)``, from 0 (flat) to 1 (one hot pixel).
    Both ignore the map's scale.

    Shape:
        ``(N, H, W)`` -> ``(N,)``

    Example:
        >>> hot = torch.zeros(1, 4, 4); hot[0, 1, 2] = 3.0
        >>> map_sharpness(hot, "peak_to_mean").tolist(), map_sharpness(hot, "entropy").tolist()
        ([16.0], [1.0])
    """
    _check_maps(maps, 3, "maps (N, H, W)")
    check_choice("measure", measure, SHARPNESS_MEASURES)
    flat = maps.clamp_min(0).flatten(1)
    n = flat.shape[1]
    if n < 2:
        raise ValueError(f"Expected maps with at least 2 pixels to measure sharpness, got {tuple(maps.shape[1:])}.")
    total = flat.sum(1, keepdim=True)
    p = torch.where(total > 0, flat / total.clamp_min(torch.finfo(flat.dtype).tiny), torch.full_like(flat, 1.0 / n))
    if measure == "peak_to_mean":
        return p.amax(1) * n
    entropy = -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(1)
    return (1 - entropy / math.log(n)).clamp(0, 1)


def _average_ranks(x: torch.Tensor) -> torch.Tensor:
    order = x.argsort()
    _, inverse, counts = torch.unique_consecutive(x[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0)
    mean_rank = (ends - counts + ends + 1).double() / 2  # 1-based average of positions start+1 .. end
    ranks = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    ranks[order] = mean_rank[inverse]
    return ranks


def rank_correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Spearman's rank correlation (ties get average ranks); NaN with fewer than 3 pairs or a constant input.

    Shape:
        ``(N,)``, ``(N,)`` -> ``()`` float64

    Example:
        >>> round(rank_correlation(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 9.0, 4.0, 16.0])).item(), 6)
        0.8
    """
    if x.dim() != 1 or x.shape != y.shape:
        raise ValueError(f"Expected two 1-D tensors of the same length, got {tuple(x.shape)} and {tuple(y.shape)}.")
    if x.shape[0] < 3:
        return torch.tensor(float("nan"), dtype=torch.float64, device=x.device)
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = rx.norm() * ry.norm()
    return torch.where(denom > 0, (rx * ry).sum() / denom.clamp_min(1e-300), torch.full_like(denom, float("nan")))


def sharpness_confidence(
    maps: torch.Tensor, probs: torch.Tensor, labels: torch.Tensor, measure: Sharpness = "peak_to_mean"
) -> dict[str, torch.Tensor]:
    """Seed 5.2's "confident predictions have sharper maps", measured: sharpness of the predicted class's
    map against the confidence ``P_k`` (top softmax probability), for correct and for wrong predictions.

    Returns:
        ``corr_correct``, ``corr_wrong`` (Spearman's rho of sharpness vs confidence within each group, NaN with
        fewer than 3 predictions or constant values), ``mean_correct``, ``mean_wrong`` (mean sharpness, NaN for
        an empty group), ``n_correct``, ``n_wrong``: 0-d tensors.

    Shape:
        maps ``(N, K, H, W)``, probs ``(N, K)``, labels ``(N,)``
    """
    _check_maps(maps, 4, "maps (N, K, H, W)")
    if probs.shape != maps.shape[:2] or labels.shape != maps.shape[:1]:
        raise ValueError(
            f"Expected probs {tuple(maps.shape[:2])} and labels ({maps.shape[0]},) for maps {tuple(maps.shape)}, "
            f"got {tuple(probs.shape)} and {tuple(labels.shape)}."
        )
    confidence, pred = probs.max(1)
    sharp = map_sharpness(select_class_maps(maps, pred), measure).double()
    correct = pred == labels.to(pred.device)
    out: dict[str, torch.Tensor] = {}
    for group, mask in (("correct", correct), ("wrong", ~correct)):
        out[f"corr_{group}"] = rank_correlation(sharp[mask], confidence[mask].double())
        out[f"mean_{group}"] = sharp[mask].mean()  # NaN for an empty group
        out[f"n_{group}"] = mask.sum()
    return out


class PatternTracker:
    """Keeps each run's class patterns and gives their stability and formation epochs.

    The stateful face of :func:`stability_series` and :func:`formation_epochs` (patterns from
    :func:`class_pattern_means`); ``state_dict()`` holds plain lists of CPU tensors for checkpoints.

    Args:
        threshold: stability at which a pattern counts as formed, in (0, 1].

    Example:
        >>> tracker = PatternTracker(threshold=0.9)
        >>> means, _ = class_pattern_means(torch.rand(6, 3, 4, 4), torch.tensor([0, 0, 1, 1, 2, 2]))
        >>> tracker.update(0, means) is None, tracker.update(1, means).tolist()
        (True, [1.0, 1.0, 1.0])
        >>> tracker.formation_epochs().tolist()
        [1, 1, 1]
    """

    def __init__(self, threshold: float = 0.9) -> None:
        self.threshold = _check_threshold(threshold)
        self.epochs: list[int] = []
        self.means: list[torch.Tensor] = []

    def update(self, epoch: int, means: torch.Tensor) -> torch.Tensor | None:
        """Add a run's class patterns (replacing an earlier entry for ``epoch``, kept on the CPU); return the
        stability against the run before it, or None if it is the first.

        Shape:
            means ``(K, H, W)`` -> ``(K,)`` or None
        """
        _check_maps(means, 3, "class patterns (K, H, W)")
        if epoch in self.epochs:
            i = self.epochs.index(epoch)
            del self.epochs[i], self.means[i]
        i = sum(e < epoch for e in self.epochs)
        self.epochs.insert(i, int(epoch))
        self.means.insert(i, means.detach().float().cpu())
        return None if i == 0 else stability_series(torch.stack(self.means[i - 1 : i + 1]))[0]

    def stability(self) -> torch.Tensor:
        """Stability of every run after the first. Shape: ``(E - 1, K)``."""
        if not self.means:
            return torch.zeros(0, 0)
        return stability_series(torch.stack(self.means))

    def formation_epochs(self) -> torch.Tensor:
        """Per class, the epoch its pattern formed, ``-1`` if not (yet). Shape: ``(K,)``."""
        return formation_epochs(self.stability(), self.epochs[1:], self.threshold)

    def state_dict(self) -> dict[str, Any]:
        return {"epochs": list(self.epochs), "means": [m.clone() for m in self.means]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs = [int(e) for e in state.get("epochs", [])]
        self.means = [torch.as_tensor(m).float() for m in state.get("means", [])]
