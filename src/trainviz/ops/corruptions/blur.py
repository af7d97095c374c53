"""The ImageNet-C blur corruptions (Hendrycks & Dietterich 2019) with CIFAR-10-C parameters: defocus, glass,
motion (ImageMagick's ``MotionBlurImage`` kernel) and zoom blur."""

from __future__ import annotations

import math

import numpy as np
import torch
from kornia.filters import filter2d, filter2d_separable
from torch import Tensor

from trainviz.ops.corruptions._base import _documented, _finish, _gaussian_kernel1d, _generator, _work
from trainviz.ops.corruptions.params import _params

__all__ = ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur"]


def _blur(x: Tensor, sigma: float, radius: int, border: str) -> Tensor:
    if radius == 0:
        return x
    k = _gaussian_kernel1d(sigma, radius).to(device=x.device, dtype=x.dtype)[None]
    return filter2d_separable(x, k, k, border_type=border)


def _motion_kernels(radius: float, sigma: float, angles: Tensor) -> Tensor:
    """ImageMagick's ``MotionBlurImage`` kernels, one per angle (degrees), shape (N, K, K), float64, CPU.

    The one-sided Gaussian ``exp(-i^2 / 2 sigma^2)``, ``i = 0..width-1`` with ``width = 2 ceil(radius) + 1``,
    is laid along the angle with offsets ``ceil(i cos(a) - 0.5)`` (x) and ``ceil(i sin(a) - 0.5)`` (y).
    """
    width = 2 * math.ceil(radius) + 1
    i = torch.arange(width, dtype=torch.float64)
    w = torch.exp(-(i**2) / (2 * sigma**2))
    w = w / w.sum()
    a = torch.deg2rad(angles.to(torch.float64))[:, None]
    px, py = width * torch.sin(a), width * torch.cos(a)  # ImageMagick's point.x, point.y
    norm = torch.hypot(px, py)
    ox = torch.ceil(i * py / norm - 0.5).long()
    oy = torch.ceil(i * px / norm - 0.5).long()
    size, centre = 2 * width - 1, width - 1
    flat = (centre + oy) * size + (centre + ox)
    kernels = torch.zeros(angles.shape[0], size * size, dtype=torch.float64)
    kernels.scatter_add_(1, flat, w.expand_as(flat).contiguous())
    return kernels.view(-1, size, size)


def _motion_offsets(radius: float, sigma: float, angles: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The taps of ImageMagick's ``MotionBlurImage`` kernels: weights ``(width,)`` and whole-pixel offsets
    ``(N, width)`` in y and x, one row per angle (see :func:`_motion_kernels`)."""
    width = 2 * math.ceil(radius) + 1
    i = torch.arange(width, dtype=torch.float64)
    w = torch.exp(-(i**2) / (2 * sigma**2))
    a = torch.deg2rad(angles.to(torch.float64))[:, None]
    px, py = width * torch.sin(a), width * torch.cos(a)
    norm = torch.hypot(px, py)
    return w / w.sum(), torch.ceil(i * px / norm - 0.5).long(), torch.ceil(i * py / norm - 0.5).long()


def _motion_blur(x: Tensor, radius: float, sigma: float, angles: Tensor) -> Tensor:
    """``sum_i w_i x(y + oy_i, x + ox_i)`` with edge pixels replicated: the kernel of :func:`_motion_kernels`
    applied tap by tap (``width`` gathers instead of a ``(2 width - 1)^2`` convolution)."""
    w, oy, ox = _motion_offsets(radius, sigma, angles)
    n, c, h, wd = x.shape
    rows, cols = torch.arange(h, device=x.device), torch.arange(wd, device=x.device)
    oy, ox, batch = oy.to(x.device), ox.to(x.device), torch.arange(n, device=x.device)[:, None, None]
    out = torch.zeros_like(x)
    for i, weight in enumerate(w.tolist()):
        r = (rows[None, :] + oy[:, i : i + 1]).clamp(0, h - 1)[:, :, None]
        q = (cols[None, :] + ox[:, i : i + 1]).clamp(0, wd - 1)[:, None, :]
        out += weight * x[batch, :, r, q].permute(0, 3, 1, 2)
    return out


def _clipped_zoom(x: Tensor, zoom: float) -> Tensor:
    """make_cifar_c.py's ``clipped_zoom``: crop the centre, zoom it linearly (scipy's zoom, order 1), trim."""
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top : top + ch, left : left + cw]
    oh, ow = round(ch * zoom), round(cw * zoom)
    # scipy.ndimage.zoom (grid_mode=False) maps the corner pixels onto each other: align_corners=True.
    up = torch.nn.functional.interpolate(crop, size=(oh, ow), mode="bilinear", align_corners=True)
    th, tw = (oh - h) // 2, (ow - w) // 2
    return up[..., th : th + h, tw : tw + w]


@_documented(random=False, images="at least 4x4 pixels")
def defocus_blur(x: Tensor, severity: int = 1, *, param_set: str = "auto") -> Tensor:
    """Convolve with an anti-aliased disk (a disk of ``radius`` blurred by a 3x3 Gaussian of ``alias_sigma``).

    As make_cifar_c.py's ``disk`` + ``cv2.filter2D``: reflect-101 border; above radius 8 (ImageNet-C severity 5)
    a 5x5 anti-aliasing Gaussian, as make_imagenet_c.py's ``disk``.
    """
    p = _params("defocus_blur", x, severity, param_set)
    radius = p["radius"]
    if radius <= 8:
        half = math.floor(radius) + 1  # the disk and its 3x3 anti-aliasing fit in this half-width
        t = torch.arange(-half, half + 1, dtype=torch.float64)
        disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).to(torch.float64)
        disk = (disk / disk.sum())[None, None]
        alias = _gaussian_kernel1d(p["alias_sigma"], 1)
        kernel = torch.nn.functional.conv2d(disk, torch.outer(alias, alias)[None, None], padding=1)[0]
    else:  # make_imagenet_c.py's disk: the grid is the disk's own, the 5x5 blur reflects (cv2's default border)
        t = torch.arange(-math.floor(radius), math.floor(radius) + 1, dtype=torch.float64)
        disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).to(torch.float64)
        disk = torch.nn.functional.pad((disk / disk.sum())[None, None], (2, 2, 2, 2), mode="reflect")
        alias = _gaussian_kernel1d(p["alias_sigma"], 2)
        kernel = torch.nn.functional.conv2d(disk, torch.outer(alias, alias)[None, None])[0]
    xw = _work(x)
    return _finish(filter2d(xw, kernel.to(device=x.device, dtype=xw.dtype), border_type="reflect"), x)


@_documented(random=True)
def glass_blur(
    x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0, param_set: str = "auto"
) -> Tensor:
    """Blur, shuffle pixels locally, blur again (make_cifar_c.py's ``glass_blur``).

    The Gaussian blurs are scikit-image's (truncate 4, replicated border). The shuffle visits pixels from the
    bottom-right inwards and swaps each with a neighbour at offset ``U{-max_delta..max_delta-1}`` per axis, in
    order, ``iterations`` times; the swaps are resolved into one permutation per image (a sequential loop over
    pixel positions, vectorised over the batch).
    """
    p = _params("glass_blur", x, severity, param_set)
    g, xw = _generator(generator, seed), _work(x)
    sigma, delta, iterations = p["sigma"], p["max_delta"], p["iterations"]
    radius = int(4.0 * sigma + 0.5)
    xw = _blur(xw, sigma, radius, "replicate")
    n, c, h, w = xw.shape
    rows, cols = range(h - delta, delta, -1), range(w - delta, delta, -1)
    shifts = torch.randint(-delta, delta, (iterations, len(rows) * len(cols), 2, n), generator=g, device=g.device)
    shifts = shifts.cpu().numpy()
    src = np.tile(np.arange(h * w), (n, 1))
    batch = np.arange(n)
    for it in range(iterations):
        k = 0
        for r in rows:
            for col in cols:
                dx, dy = shifts[it, k]
                here, there = r * w + col, (r + dy) * w + (col + dx)
                kept = src[:, here].copy()
                src[:, here] = src[batch, there]
                src[batch, there] = kept
                k += 1
    index = torch.from_numpy(src).to(x.device)[:, None, :].expand(n, c, h * w)
    shuffled = xw.reshape(n, c, h * w).gather(2, index).view(n, c, h, w)
    return _finish(_blur(shuffled, sigma, radius, "replicate"), x)


@_documented(random=True)
def motion_blur(
    x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0, param_set: str = "auto"
) -> Tensor:
    """ImageMagick-style motion blur along a random angle in ``U(-45, 45)`` degrees, one angle per image."""
    p = _params("motion_blur", x, severity, param_set)
    g = _generator(generator, seed)
    angles = torch.rand(x.shape[0], generator=g, device=g.device).cpu() * 90 - 45
    return _finish(_motion_blur(_work(x), p["radius"], p["sigma"], angles), x)


@_documented(random=False)
def zoom_blur(x: Tensor, severity: int = 1, *, param_set: str = "auto") -> Tensor:
    """Average the image with centre zooms of it by 1.00, 1.01, ... (see :mod:`~trainviz.ops.corruptions.params`)."""
    zooms = _params("zoom_blur", x, severity, param_set)["zooms"]
    xw = _work(x)
    out = xw.clone()
    for z in zooms:
        out = out + _clipped_zoom(xw, z)
    return _finish(out / (len(zooms) + 1), x)
