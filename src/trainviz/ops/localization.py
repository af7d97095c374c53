"""How good is a saliency map: localisation against masks, faithfulness to the model, stability over time.

All functions are batched over images, stay on the inputs' device and return per-image values (average
them for a score). Maps are non-negative, one per image, at the input size (e.g. ``CAMResult.aggregate``).

* :func:`pointing_game` (Zhang et al. 2016): a hit when the map's maximum lies on the object mask
  (optionally dilated by ``tolerance`` pixels). Chance level is the mask's area fraction
  (:func:`pointing_game_chance`): a uniformly random point hits with that probability.
* :func:`energy_pointing_game` (Wang et al. 2020, Score-CAM): the share of the map's mass inside the mask;
  a uniform map scores the area fraction.
* :func:`confidence_change` (Chattopadhay et al. 2018, Grad-CAM++): the input is multiplied by the map,
  ``x' = baseline + map (x - baseline)``; *average drop* is ``mean(max(0, p - p') / p)`` and *increase in
  confidence* the share of images with ``p' > p``, where ``p`` is the softmax probability of the target.
* :func:`deletion_curve` (Petsiuk et al. 2018, RISE): pixels are replaced by ``baseline`` in order of
  decreasing map value, ``1/steps`` of them at a time; the target probability after each step gives a curve
  whose area (trapezoid rule over the deleted fraction 0..1) is the deletion AUC: lower is more faithful.
* :func:`insertion_curve` (Petsiuk et al. 2018): the reverse, from an all-``baseline`` input the most salient
  pixels are put back first; the area under the target probability is the insertion AUC: higher is more
  faithful. (RISE starts insertion from a blurred image; here from ``baseline``, as deletion ends.)
* :func:`map_correlation`: Pearson correlation of two maps of each image (e.g. the same probe image at two
  epochs: CAM drift).

``baseline`` is in model-input space: for inputs normalised as ``(x - mean) / std``, ``0`` is the dataset's
mean colour; pass ``normalization.normalize(zeros)`` for black.

Example:
    >>> import torch
    >>> from trainviz.ops.localization import pointing_game, energy_pointing_game, map_correlation
    >>> maps = torch.zeros(2, 4, 4); maps[0, 0, 0] = 1; maps[1, 3, 3] = 1
    >>> masks = torch.zeros(2, 4, 4, dtype=torch.bool); masks[:, :2, :2] = True
    >>> pointing_game(maps, masks).tolist(), energy_pointing_game(maps, masks).tolist()
    ([True, False], [1.0, 0.0])
    >>> map_correlation(maps, maps).tolist()
    [1.0, 1.0]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainviz.core.checks import check_positive_int
from trainviz.ops.predict import predict_logits

__all__ = [
    "confidence_change",
    "deletion_curve",
    "energy_pointing_game",
    "insertion_curve",
    "map_correlation",
    "pointing_game",
    "pointing_game_chance",
]


def _check_maps(maps: torch.Tensor, other: torch.Tensor, other_name: str) -> None:
    if maps.dim() != 3:
        raise ValueError(f"Expected `maps` of shape (N, H, W), got {tuple(maps.shape)}.")
    if other.shape[0] != maps.shape[0] or tuple(other.shape[-2:]) != tuple(maps.shape[-2:]):
        raise ValueError(
            f"Expected `{other_name}` with {maps.shape[0]} items of size {tuple(maps.shape[-2:])}, "
            f"got {tuple(other.shape)}."
        )


def _check_tolerance(tolerance: int) -> int:
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"Expected `tolerance` to be a non-negative int (pixels), got {tolerance!r}.")
    return tolerance


def _dilate(masks: torch.Tensor, tolerance: int) -> torch.Tensor:
    """Masks grown by ``tolerance`` pixels (square neighbourhood)."""
    if tolerance == 0:
        return masks.bool()
    grown = F.max_pool2d(masks.float().unsqueeze(1), 2 * tolerance + 1, stride=1, padding=tolerance)
    return grown.squeeze(1) > 0


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Whether each map's maximum falls on its mask (grown by ``tolerance`` pixels). A flat map is a miss;
    among tied maxima the first in row-major order counts.

    Shape:
        maps ``(N, H, W)``, masks ``(N, H, W)`` bool -> ``(N,)`` bool
    """
    _check_maps(maps, masks, "masks")
    grown = _dilate(masks, _check_tolerance(tolerance)).flatten(1)
    flat = maps.flatten(1)
    peak = flat.argmax(1, keepdim=True)
    flat_map = flat.amax(1) == flat.amin(1)
    return grown.gather(1, peak).squeeze(1) & ~flat_map


def pointing_game_chance(masks: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Chance level of the pointing game per image: the area fraction of the (grown) mask.

    Shape:
        ``(N, H, W)`` -> ``(N,)``
    """
    return _dilate(masks, _check_tolerance(tolerance)).flatten(1).float().mean(1)


def energy_pointing_game(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Share of each map's mass inside its mask, ``sum(map * mask) / sum(map)`` (0 for an all-zero map).

    Shape:
        maps ``(N, H, W)`` non-negative, masks ``(N, H, W)`` -> ``(N,)``
    """
    _check_maps(maps, masks, "masks")
    flat = maps.flatten(1).float()
    inside = (flat * masks.flatten(1).float()).sum(1)
    total = flat.sum(1)
    return torch.where(
        total > 0, inside / torch.where(total > 0, total, torch.ones_like(total)), torch.zeros_like(total)
    )


def _target_probs(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
    probs = predict_logits(model, images, batch_size).float().softmax(1)
    return probs.gather(1, targets.view(-1, 1).to(probs.device)).squeeze(1)


def _check_faithfulness_args(images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, batch_size: int) -> None:
    if images.dim() != 4:
        raise ValueError(f"Expected `images` of shape (N, C, H, W), got {tuple(images.shape)}.")
    _check_maps(maps, images, "images")
    if targets.shape != (images.shape[0],) or targets.is_floating_point():
        raise ValueError(
            f"Expected integer `targets` of shape ({images.shape[0]},), got {targets.dtype} {tuple(targets.shape)}."
        )
    check_positive_int("batch_size", batch_size)


def confidence_change(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    *,
    baseline: float | torch.Tensor = 0.0,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop and increase of the target probability when each image is multiplied by its map (Grad-CAM++'s
    "average drop" and "increase in confidence", per image). Two forward passes, no gradients.

    Args:
        model: the classifier, in eval mode.
        images: model inputs.
        maps: saliency maps in [0, 1] at the input size.
        targets: the class each map explains.
        baseline: the input value a zero map leaves (model-input space; scalar or broadcastable to ``images``).
        batch_size: forward batch size.

    Returns:
        ``(drop, increase)``: ``max(0, p - p') / p`` and ``p' > p``.

    Shape:
        images ``(N, C, H, W)``, maps ``(N, H, W)``, targets ``(N,)`` -> ``(N,)`` float, ``(N,)`` bool
    """
    _check_faithfulness_args(images, maps, targets, batch_size)
    p = _target_probs(model, images, targets, batch_size)
    m = maps.unsqueeze(1).to(images.dtype)
    masked = baseline + m * (images - baseline)
    q = _target_probs(model, masked, targets, batch_size)
    return (p - q).clamp_min(0) / p.clamp_min(torch.finfo(p.dtype).tiny), q > p


def deletion_curve(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int = 16,
    baseline: float | torch.Tensor = 0.0,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target probability as the most salient pixels are deleted, and its area (deletion AUC).

    Step ``s`` (0..steps) replaces the ``round(s H W / steps)`` highest-ranked pixels (all channels) by
    ``baseline``; ties are ranked in row-major order. ``steps + 1`` forward passes, no gradients.

    Args:
        model: the classifier, in eval mode.
        images: model inputs.
        maps: saliency maps at the input size (only their order matters).
        targets: the class each map explains.
        steps: number of deletion steps.
        baseline: value of deleted pixels (model-input space).
        batch_size: forward batch size.

    Returns:
        ``(curve, auc)``: probabilities after 0, 1/steps, ..., 1 of the pixels are deleted, and the
        trapezoid area under them over the deleted fraction in [0, 1].

    Shape:
        images ``(N, C, H, W)``, maps ``(N, H, W)``, targets ``(N,)`` -> ``(N, steps + 1)``, ``(N,)``
    """
    return _pixel_curve(model, images, maps, targets, steps, baseline, batch_size, insert=False)


def insertion_curve(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    *,
    steps: int = 16,
    baseline: float | torch.Tensor = 0.0,
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target probability as the most salient pixels are inserted into an all-``baseline`` input, and its
    area (insertion AUC, higher is more faithful): the mirror of :func:`deletion_curve`.

    Step ``s`` (0..steps) keeps the ``round(s H W / steps)`` highest-ranked pixels (all channels) of the image
    and ``baseline`` elsewhere (step 0: the baseline alone, step ``steps``: the image); ties are ranked in
    row-major order, as in :func:`deletion_curve`, so insertion step ``s`` shows exactly the pixels deletion step
    ``s`` removed. ``steps + 1`` forward passes, no gradients.

    Args:
        model: the classifier, in eval mode.
        images: model inputs.
        maps: saliency maps at the input size (only their order matters).
        targets: the class each map explains.
        steps: number of insertion steps.
        baseline: value of the pixels not yet inserted (model-input space).
        batch_size: forward batch size.

    Returns:
        ``(curve, auc)``: probabilities after 0, 1/steps, ..., 1 of the pixels are inserted, and the
        trapezoid area under them over the inserted fraction in [0, 1].

    Shape:
        images ``(N, C, H, W)``, maps ``(N, H, W)``, targets ``(N,)`` -> ``(N, steps + 1)``, ``(N,)``

    Example:
        >>> import torch, torch.nn as nn
        >>> from trainviz.ops.localization import insertion_curve
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).eval()
        >>> curve, auc = insertion_curve(net, torch.rand(3, 1, 4, 4), torch.rand(3, 4, 4), torch.tensor([0, 1, 0]),
        ...                              steps=4)
        >>> curve.shape, auc.shape
        (torch.Size([3, 5]), torch.Size([3]))
    """
    return _pixel_curve(model, images, maps, targets, steps, baseline, batch_size, insert=True)


def _pixel_curve(
    model: nn.Module,
    images: torch.Tensor,
    maps: torch.Tensor,
    targets: torch.Tensor,
    steps: int,
    baseline: float | torch.Tensor,
    batch_size: int,
    *,
    insert: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion (``insert=False``) or insertion curve and its trapezoid AUC."""
    _check_faithfulness_args(images, maps, targets, batch_size)
    check_positive_int("steps", steps)
    n, _, h, w = images.shape
    order = maps.flatten(1).argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=order.device).expand(n, -1))
    rank = rank.view(n, 1, h, w)
    curve = []
    for s in range(steps + 1):
        top = rank < round(s * h * w / steps)
        step = torch.where(top, images, baseline) if insert else torch.where(top, baseline, images)
        curve.append(_target_probs(model, step, targets, batch_size))
    curve_t = torch.stack(curve, 1)
    return curve_t, torch.trapezoid(curve_t, dx=1.0 / steps, dim=1)


def map_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation between ``a[i]`` and ``b[i]`` over pixels; NaN when either map is flat.

    Shape:
        ``(N, H, W)``, ``(N, H, W)`` -> ``(N,)``
    """
    if a.shape != b.shape or a.dim() < 2:
        raise ValueError(
            f"Expected two stacks of maps of the same shape (N, ...), got {tuple(a.shape)} and {tuple(b.shape)}."
        )
    x = a.flatten(1).double()
    y = b.flatten(1).double()
    x = x - x.mean(1, keepdim=True)
    y = y - y.mean(1, keepdim=True)
    return ((x * y).sum(1) / (x.norm(dim=1) * y.norm(dim=1))).to(torch.promote_types(a.dtype, torch.float32))
