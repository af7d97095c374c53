"""The ImageNet-C weather corruptions (Hendrycks & Dietterich 2019) with CIFAR-10-C parameters: snow, frost (a
procedural texture, see :func:`frost`), fog (a plasma fractal) and brightness."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from trainviz.ops.corruptions._base import (
    _NOT_ONE_OR_THREE,
    _ONE_OR_THREE,
    _documented,
    _finish,
    _generator,
    _luma,
    _normal,
    _work,
)
from trainviz.ops.corruptions.blur import _clipped_zoom, _motion_blur
from trainviz.ops.corruptions.params import _params

__all__ = ["brightness", "fog", "frost", "snow"]

_BRIGHTNESS_EXAMPLE = """>>> brightness(torch.zeros(1, 3, 1, 1), 5).flatten().tolist()
[0.30000001192092896, 0.30000001192092896, 0.30000001192092896]"""


def _plasma_fractal(n: int, size: int, decay: float, g: torch.Generator) -> Tensor:
    """Diamond-square height maps of make_cifar_c.py, batched: shape (n, size, size), float64 in [0, 1], on CPU.

    ``size`` must be a power of two. Like the original, the random term of each level is
    ``wibble * U(-wibble, wibble)`` and ``wibble`` is divided by ``decay`` after each level.
    """
    m = torch.zeros(n, size, size, dtype=torch.float64)
    wibble = 100.0
    step = size

    def wibbled_mean(a: Tensor) -> Tensor:
        u = torch.rand(a.shape, generator=g, device=g.device, dtype=torch.float64).cpu()
        return a / 4 + wibble * (2 * u - 1) * wibble

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, dims=1)
        squares = squares + squares.roll(-1, dims=2)
        m[:, half::step, half::step] = wibbled_mean(squares)
        centres = m[:, half::step, half::step]
        corners = m[:, 0::step, 0::step]
        left = (centres + centres.roll(1, dims=1)) + (corners + corners.roll(-1, dims=2))
        m[:, 0::step, half::step] = wibbled_mean(left)
        top = (centres + centres.roll(1, dims=2)) + (corners + corners.roll(-1, dims=1))
        m[:, half::step, 0::step] = wibbled_mean(top)
        step = half
        wibble /= decay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True)


def _plasma_like(x: Tensor, decay: float, g: torch.Generator) -> Tensor:
    """Plasma fractals cropped to ``x``'s size, shape (N, 1, H, W), on ``x``'s device and dtype."""
    n, _, h, w = x.shape
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))
    return _plasma_fractal(n, size, decay, g)[:, None, :h, :w].to(device=x.device, dtype=x.dtype)


@_documented(random=True, images="with 1 or 3 channels", x_shape=_ONE_OR_THREE, raises=_NOT_ONE_OR_THREE)
def snow(
    x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0, param_set: str = "auto"
) -> Tensor:
    """Falling snow: a thresholded, zoomed noise layer smeared by motion blur, over a brightened image.

    Follows make_cifar_c.py: the layer is ``N(loc, scale)`` per pixel, zoomed by ``zoom``, set to 0 below
    ``threshold``, motion-blurred at an angle in ``U(-135, -45)`` degrees; the image becomes
    ``w x + (1 - w) max(x, 1.5 luma + 0.5)`` and the layer is added once as is and once rotated by 180 degrees.
    """
    p = _params("snow", x, severity, param_set)
    g, xw = _generator(generator, seed), _work(x)
    n, _, h, w = xw.shape
    layer = p["loc"] + p["scale"] * _normal((n, 1, h, w), g, xw)
    layer = _clipped_zoom(layer, p["zoom"])
    layer = torch.where(layer < p["threshold"], torch.zeros_like(layer), layer).clamp(0.0, 1.0)
    angles = torch.rand(n, generator=g, device=g.device).cpu() * 90 - 135
    layer = _motion_blur(layer, p["blur_radius"], p["blur_sigma"], angles)
    weight = p["image_weight"]
    xw = weight * xw + (1 - weight) * torch.maximum(xw, _luma(xw) * 1.5 + 0.5)
    return _finish(xw + layer + layer.flip(-2, -1), x)


@_documented(random=True)
def frost(
    x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0, param_set: str = "auto"
) -> Tensor:
    """Blend with a frost texture: ``image_weight x + frost_weight frost``.

    The original blends crops of frost photos; trainviz synthesises the texture (not comparable with
    CIFAR-10-C frost): a plasma fractal ``p`` (decay 1.5) gives ice ridges ``(1 - |2p - 1|)^4`` over a
    cloudy base ``p``, mixed ``0.6 ridges + 0.4 p``, tinted bluish white (0.85, 0.93, 1.0) on 3-channel
    images (grey on others).
    """
    p = _params("frost", x, severity, param_set)
    g, xw = _generator(generator, seed), _work(x)
    plasma = _plasma_like(xw, 1.5, g)
    texture = 0.6 * (1 - (2 * plasma - 1).abs()) ** 4 + 0.4 * plasma
    if xw.shape[1] == 3:
        texture = texture * torch.tensor((0.85, 0.93, 1.0), dtype=xw.dtype, device=xw.device).view(1, 3, 1, 1)
    return _finish(p["image_weight"] * xw + p["frost_weight"] * texture, x)


@_documented(random=True)
def fog(
    x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0, param_set: str = "auto"
) -> Tensor:
    """Add a plasma-fractal haze: ``(x + s plasma) max(x) / (max(x) + s)``, ``max`` per image."""
    p = _params("fog", x, severity, param_set)
    g, xw = _generator(generator, seed), _work(x)
    strength = p["strength"]
    peak = xw.amax(dim=(1, 2, 3), keepdim=True)
    out = (xw + strength * _plasma_like(xw, p["decay"], g)) * peak / (peak + strength)
    return _finish(out, x)


@_documented(random=False, example=_BRIGHTNESS_EXAMPLE)
def brightness(x: Tensor, severity: int = 1, *, param_set: str = "auto") -> Tensor:
    """Add ``delta_v`` to the value channel in HSV (clipped to 1), keeping hue and saturation.

    With hue and saturation fixed, RGB is proportional to V, so this is ``x V' / V`` where
    ``V = max_c x`` and ``V' = min(V + delta_v, 1)``; black pixels become grey ``V'``. On 1-channel
    images it is ``min(x + delta_v, 1)``.
    """
    delta = _params("brightness", x, severity, param_set)["delta_v"]
    xw = _work(x)
    v = xw.amax(dim=1, keepdim=True)
    v_new = (v + delta).clamp(max=1.0)
    scaled = xw * (v_new / v.clamp(min=torch.finfo(xw.dtype).tiny))
    return _finish(torch.where(v > 0, scaled, v_new.expand_as(xw)), x)
