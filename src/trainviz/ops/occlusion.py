"""Occlusion sensitivity (Zeiler and Fergus 2014; Fleuret, EE-559 'Under the hood'), pure torch.

The importance of a part of the image is the score of the target unit on the image minus its score with that
part occluded (replaced by ``baseline``). A ``window x window`` patch, spanning all channels, slides with
``stride``; each pixel gets the mean, over the windows covering it, of ``score(x) - score(x occluded)``:
the semantics and the output of Captum's
``Occlusion(model).attribute(x, target=t, sliding_window_shapes=(C, window, window), strides=(C, stride, stride),
baselines=baseline)``.

Window placement (Captum's): along a side of length ``L`` the windows start at ``0, stride, 2 * stride, ...``,
``ceil((L - window) / stride) + 1`` of them, so when ``stride`` does not divide ``L - window`` the last one
runs past the border and is cropped (a partial window). The windows per image are therefore

    ``windows = (ceil((H - window) / stride) + 1) * (ceil((W - window) / stride) + 1)``

(:func:`occlusion_windows`). Cost: ``N * windows`` forward rows for the occluded copies plus ``N`` for the
originals, no backward; the copies are built batched (images x windows) and run in chunks of at most
``max_elements`` input elements per forward.

Example:
    >>> import torch, torch.nn as nn
    >>> from trainviz.ops.occlusion import occlusion, occlusion_windows
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    >>> occlusion_windows(8, 8, window=4, stride=3)  # starts 0, 3, 6 (the last cropped to 2 px) per side
    9
    >>> occlusion(net, torch.randn(2, 3, 8, 8), torch.tensor([1, 4]), window=4, stride=3).shape
    torch.Size([2, 3, 8, 8])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from trainviz.core.checks import check_images, check_int, check_positive_int
from trainviz.core.outputs import expect_logits
from trainviz.ops.saliency import check_targets, default_rows

__all__ = ["occlusion", "occlusion_masks", "occlusion_windows"]

Model = Callable[[torch.Tensor], torch.Tensor]


def _starts(length: int, window: int, stride: int) -> int:
    return -(-(length - window) // stride) + 1  # ceil((length - window) / stride) + 1


def occlusion_windows(height: int, width: int, window: int, stride: int) -> int:
    """Number of occlusion windows per image, as Captum places them:
    ``(ceil((height - window) / stride) + 1) * (ceil((width - window) / stride) + 1)``.

    Raises:
        ValueError: for non-positive sizes, a window larger than the image, or a stride larger than the window
            (pixels left uncovered; Captum refuses it too).

    Example:
        >>> occlusion_windows(32, 32, window=8, stride=4), occlusion_windows(10, 10, window=4, stride=4)
        (49, 9)
    """
    height, width = check_positive_int("height", height), check_positive_int("width", width)
    window = check_int("window", window, minimum=1, maximum=min(height, width))
    stride = check_positive_int("stride", stride)
    if stride > window and max(height, width) > window:
        raise ValueError(
            f"Expected `stride` to be at most `window` ({window}) so that every pixel is occluded by some window "
            f"(as Captum requires), got {stride}."
        )
    return _starts(height, window, stride) * _starts(width, window, stride)


def occlusion_masks(
    height: int, width: int, window: int, stride: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """The occluded region of every window, row-major over the window positions (top-left first).

    Shape:
        ``(windows, height, width)`` bool, ``windows`` = :func:`occlusion_windows`.

    Example:
        >>> occlusion_masks(3, 3, window=2, stride=2)[3].int()
        tensor([[0, 0, 0],
                [0, 0, 0],
                [0, 0, 1]], dtype=torch.int32)
    """
    occlusion_windows(height, width, window, stride)  # checks

    def side(length: int) -> torch.Tensor:
        starts = torch.arange(_starts(length, window, stride), device=device)[:, None] * stride
        pos = torch.arange(length, device=device)
        return (pos >= starts) & (pos < starts + window)  # (positions, length)

    rows, cols = side(height), side(width)
    return (rows[:, None, :, None] & cols[None, :, None, :]).flatten(0, 1)


def occlusion(
    model: Model,
    images: torch.Tensor,
    targets: torch.Tensor | Sequence[int] | int,
    *,
    window: int = 8,
    stride: int = 4,
    baseline: float | torch.Tensor = 0.0,
    max_elements: int | None = None,
) -> torch.Tensor:
    """Occlusion sensitivity of each image's target logit: per pixel, the mean over the windows covering it of
    ``logit(x) - logit(x with the window set to baseline)``.

    Args:
        model: a logits model, ``(N, C, H, W) -> (N, K)``, in the mode the caller wants (eval for probes).
        images: model inputs (normalised or not); not modified.
        targets: the class of each image, an int tensor ``(N,)`` (a list, or one int for all, is accepted).
        window: side of the square occluding patch (all channels), ``1..min(H, W)``.
        stride: step between window positions, ``1..window`` (so every pixel is covered).
        baseline: what the patch is filled with, in model-input space: a float, or a ``(C,)`` / ``(C, 1, 1)``
            tensor (per channel, e.g. the normalised value of black), or anything broadcastable to ``(C, H, W)``.
        max_elements: at most this many input elements (rows x C x H x W) per forward, at least one row;
            ``None``: ``2**19`` on the CPU, ``2**24`` elsewhere (:func:`trainviz.ops.saliency.default_rows`).

    Returns:
        The attributions ``(N, C, H, W)`` (the same map repeated over the channels, as Captum's), in the
        images' dtype and device.

    Raises:
        ValueError: for bad ``images``, ``targets`` (shape, dtype, range), ``window``, ``stride``, ``baseline``
            or ``max_elements``, or a model that does not return ``(N, K)`` logits.

    Shape:
        images ``(N, C, H, W)``, targets ``(N,)`` -> ``(N, C, H, W)``

    Example:
        >>> import torch, torch.nn as nn
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()  # linear: occluding a pixel costs w * x
        >>> x = torch.ones(1, 1, 2, 2)
        >>> a = occlusion(net, x, torch.tensor([1]), window=1, stride=1)
        >>> torch.allclose(a.flatten(), net[1].weight[1])
        True
    """
    images = check_images(images)
    n, c, h, w = images.shape
    occlusion_windows(h, w, window, stride)  # checks window and stride
    per = (
        default_rows(images)
        if max_elements is None
        else max(1, check_positive_int("max_elements", max_elements) // (c * h * w))
    )
    t = check_targets(targets, images)
    base = _baseline(baseline, images)
    masks = occlusion_masks(h, w, window, stride, images.device)  # (J, H, W)
    windows = masks.shape[0]
    with torch.no_grad():
        x = images.detach()
        original = torch.cat([_scores(model, x[lo : lo + per], t[lo : lo + per]) for lo in range(0, n, per)])
        diffs = torch.empty(n * windows, dtype=original.dtype, device=images.device)
        for lo in range(0, n * windows, per):
            rows = torch.arange(lo, min(n * windows, lo + per), device=images.device)
            image, j = rows // windows, rows % windows
            occluded = torch.where(masks[j][:, None], base, x[image])
            diffs[lo : lo + rows.shape[0]] = original[image] - _scores(model, occluded, t[image])
        weights = masks.flatten(1).to(diffs.dtype)  # (J, H*W)
        total = diffs.view(n, windows) @ weights  # (N, H*W): sum over the covering windows
        attribution = total / weights.sum(0)  # every pixel is covered by >= 1 window
    return attribution.view(n, 1, h, w).to(images.dtype).expand(n, c, h, w).contiguous()


def _scores(model: Model, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    logits = expect_logits(model(x))
    bad = (t < 0) | (t >= logits.shape[1])
    if bool(bad.any()):  # one sync per forward, not per sample
        raise ValueError(
            f"Expected `targets` in 0..{logits.shape[1] - 1} (the model has {logits.shape[1]} outputs), got "
            f"{t[bad][:5].tolist()}."
        )
    return logits.gather(1, t[:, None])[:, 0]


def _baseline(baseline: float | torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    _, c, h, w = images.shape
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float, torch.Tensor)):
        raise ValueError(f"Expected `baseline` to be a float or a tensor, got {type(baseline).__name__}.")
    b = torch.as_tensor(baseline, dtype=images.dtype, device=images.device).detach()
    if b.dim() == 1 and b.shape[0] == c:
        b = b.view(c, 1, 1)
    try:
        b = b.expand(c, h, w)
    except RuntimeError as error:
        raise ValueError(
            f"Expected `baseline` to be a float, a ({c},) or ({c}, 1, 1) tensor, or broadcastable to ({c}, {h}, {w}); "
            f"got shape {tuple(b.shape)}."
        ) from error
    if not bool(torch.isfinite(b).all()):
        raise ValueError("Expected `baseline` to be finite.")
    return b
