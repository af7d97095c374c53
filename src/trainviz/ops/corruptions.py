"""Image corruptions for robustness probes: the probes of Zhang's encoder-decoder paper and a CIFAR-10-C suite.

Every function takes images in pixel space ``[0, 1]`` of shape ``(N, C, H, W)`` (any floating dtype, any
device) and returns a new tensor of the same shape, dtype and device, clamped to ``[0, 1]``. Half precision
inputs are computed in float32 and cast back.

Randomness: every random corruption takes ``generator`` (a ``torch.Generator``) or, when that is ``None``,
``seed`` (a fresh CPU generator is seeded from it). The global torch and numpy RNGs are never used. Noise is
drawn on the generator's device (a CPU generator unless you pass another) and then moved to the images'
device, so one seed gives the same noise on CPU and GPU. Noise is drawn for the whole batch at once, so the
corruption of one image depends on its position in the batch and on the batch size: corrupt a fixed probe set
once and cache it.

Probes of Zhang's encoder-decoder with group convolution (the seed paper; one severity each, ``SEED_PROBES``).
Zhang's code (``test.py`` of zxh009123/visualization-DCNNs-CSE261-W19-UCSC) corrupts the uint8 BGR array of
``cv2.imread`` and then converts it to RGB for the network; trainviz corrupts RGB tensors in ``[0, 1]``, and
each probe below gives the network what Zhang's code gives it for the same photo (up to the uint8 rounding of
the blur and grey images, at most half a grey level):

=====================  ============================================================================
name                   what it does
=====================  ============================================================================
grayscale              ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` on every channel
                       (``cv2.cvtColor`` ``BGR2GRAY``, then ``GRAY2BGR``)
gaussian_blur_3x3      ``cv2.GaussianBlur(img, (3, 3), 0)``: OpenCV's fixed kernel ``[1, 2, 1] / 4``
                       per axis (not the sigma-0.8 Gaussian), reflect-101 border (OpenCV's default)
gaussian_blur_5x5      ``cv2.GaussianBlur(img, (5, 5), 0)``: ``[1, 4, 6, 4, 1] / 16`` per axis,
                       reflect-101 border
channels_bgr           RGB order (2, 1, 0): the network sees [B, G, R] where it saw [R, G, B] (the
                       paper's wording; also what feeding cv2's BGR array unconverted gives)
channels_brg           RGB order (1, 0, 2): red and green swapped, the network sees [G, R, B]. This
                       is Zhang's code: ``cv2.merge([b, r, g])`` of the BGR array, then ``BGR2RGB``;
                       the paper's label "[B, R, G]" names the BGR array's new order
salt_pepper_0.005      Zhang's salt and pepper at lambda 0.005 (``method="zhang"`` of
                       :func:`salt_and_pepper`): ``ceil(lambda C H W / 2)`` salt (1) and as many
                       pepper (0) coordinates, drawn with replacement per element (coloured specks),
                       never on the last row, last column or the red channel (see there)
salt_pepper_0.0005     the same at lambda 0.0005
=====================  ============================================================================

ImageNet-C corruptions with the CIFAR-10-C parameters of Hendrycks & Dietterich (hendrycks/robustness
``make_cifar_c.py``), severities 1..5 (``IMAGENET_C``):

=================  ==========================================  =========================================
name               parameter                                   severity 1 / 2 / 3 / 4 / 5
=================  ==========================================  =========================================
gaussian_noise     sigma of additive N(0, sigma)               .04 / .06 / .08 / .09 / .10
shot_noise         Poisson rate: Poisson(x rate) / rate        500 / 250 / 100 / 75 / 50
impulse_noise      salt-and-pepper amount (elements)           .01 / .02 / .03 / .05 / .07
defocus_blur       disk radius, anti-alias sigma               (.3,.4) (.4,.5) (.5,.6) (1,.2) (1.5,.1)
glass_blur         sigma, max shift, iterations                (.05,1,1) (.25,1,1) (.4,1,1) (.25,1,2)
                                                               (.4,1,2)
motion_blur        radius, sigma (angle U(-45, 45) deg)        (6,1) (6,1.5) (6,2) (8,2) (9,2.5)
zoom_blur          zooms 1.00, 1.01, ... up to                 1.06 / 1.11 / 1.15 / 1.20 / 1.25
snow               loc, scale, zoom, threshold, blur radius,   (.1,.2,1,.6,8,3,.95) (.1,.2,1,.5,10,4,.9)
                   blur sigma, image weight                    (.15,.3,1.75,.55,10,4,.9)
                                                               (.25,.3,2.25,.6,12,6,.85)
                                                               (.3,.3,1.25,.65,14,12,.8)
frost              image weight, frost weight                  (1,.2) (1,.3) (.9,.4) (.85,.4) (.75,.45)
fog                plasma strength, plasma decay               (.2,3) (.5,3) (.75,2.5) (1,2) (1.5,1.75)
brightness         added to V in HSV                           .05 / .1 / .15 / .2 / .3
contrast           factor around the per-channel mean          .75 / .5 / .4 / .3 / .15
elastic_transform  alpha, sigma, affine jitter (x image size)  (0,0,.08) (.05,.2,.07) (.08,.06,.06)
                                                               (.1,.04,.05) (.1,.03,.03)
pixelate           box down- and up-sampling factor            .95 / .9 / .85 / .75 / .65
jpeg_compression   JPEG quality                                80 / 65 / 58 / 50 / 40
=================  ==========================================  =========================================

Where trainviz departs from ``make_cifar_c.py`` (which works on uint8 PIL images of 32x32 pixels):

- Images stay float: the uint8 round trips inside glass blur, motion blur and snow (PNG for ImageMagick) and
  PIL's rounding between the two resize passes of pixelate are skipped. JPEG alone needs uint8: images are
  rounded to ``round(255 x)`` before encoding.
- ``impulse_noise`` sets exactly ``round(amount C H W)`` distinct elements per image (``method="distinct"`` of
  :func:`salt_and_pepper`) where scikit-image flips each element with probability ``amount``; the expected
  count is the same.
- Motion blur rebuilds ImageMagick's ``MotionBlurImage`` kernel (one-sided Gaussian of width
  ``2 ceil(radius) + 1`` along the angle, offsets rounded to whole pixels, edge pixels replicated) and applies
  it with ``kornia.filters.filter2d``, one kernel per image.
- ``frost`` blends photos of frost in the original, which trainviz cannot ship: it uses a procedural texture
  instead (bright ridges of a plasma fractal over a cloudy base, tinted bluish white). Its values are
  therefore not comparable with published CIFAR-10-C frost numbers.
- ``elastic_transform`` uses kornia: ``warp_affine`` with reflect-101 border (as OpenCV's default) for the
  random affine, then ``elastic_transform2d`` with uniform noise from our generator; kornia smooths that noise
  with zero padding where scikit-image reflects, which only changes displacements near the border. Sizes
  scale with ``min(H, W)`` (the original uses 32). As in CIFAR-10-C, higher severities trade the global
  affine for local distortion, so the mean pixel difference from the clean image shrinks with severity.
- The plasma fractal (fog, frost) is drawn on the next power of two at least ``max(H, W)`` and cropped.
- Parameters are CIFAR-10-C's whatever the image size; ImageNet-C (224 px) uses stronger ones.

Example:
    >>> import torch
    >>> x = torch.rand(4, 3, 32, 32)
    >>> y = corrupt(x, "gaussian_noise", severity=3, seed=0)
    >>> y.shape, bool(torch.equal(y, corrupt(x, "gaussian_noise", severity=3, seed=0)))
    (torch.Size([4, 3, 32, 32]), True)
"""

from __future__ import annotations

import functools
import io
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import torch
from kornia.filters import filter2d, filter2d_separable
from kornia.geometry.transform import elastic_transform2d, warp_affine
from torch import Tensor, nn

from trainviz.core.checks import check_choice, check_positive_int

__all__ = [
    "CORRUPTION_PARAMS",
    "IMAGENET_C",
    "SEED_PROBES",
    "Corruption",
    "CorruptionSpec",
    "brightness",
    "channel_order",
    "contrast",
    "corrupt",
    "corruption_spec",
    "defocus_blur",
    "elastic_transform",
    "fog",
    "frost",
    "gaussian_blur",
    "gaussian_noise",
    "glass_blur",
    "grayscale",
    "impulse_noise",
    "jpeg_compression",
    "list_corruptions",
    "motion_blur",
    "pixelate",
    "register_corruption",
    "salt_and_pepper",
    "shot_noise",
    "snow",
    "zoom_blur",
]

_LUMA = (0.299, 0.587, 0.114)


def _per_severity(keys: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[dict[str, Any], ...]:
    return tuple(dict(zip(keys, row, strict=True)) for row in rows)


CORRUPTION_PARAMS: Mapping[str, tuple[dict[str, Any], ...]] = MappingProxyType(
    {
        "grayscale": ({"weights": _LUMA},),
        # sigma 0 as in cv2.GaussianBlur(img, (k, k), 0): OpenCV's fixed kernels [1,2,1]/4 and [1,4,6,4,1]/16.
        "gaussian_blur_3x3": ({"kernel_size": 3, "sigma": 0},),
        "gaussian_blur_5x5": ({"kernel_size": 5, "sigma": 0},),
        "channels_bgr": ({"order": (2, 1, 0)},),
        "channels_brg": ({"order": (1, 0, 2)},),
        "salt_pepper_0.005": ({"amount": 0.005, "method": "zhang"},),
        "salt_pepper_0.0005": ({"amount": 0.0005, "method": "zhang"},),
        "gaussian_noise": _per_severity(["sigma"], [[0.04], [0.06], [0.08], [0.09], [0.10]]),
        "shot_noise": _per_severity(["rate"], [[500], [250], [100], [75], [50]]),
        "impulse_noise": _per_severity(["amount"], [[0.01], [0.02], [0.03], [0.05], [0.07]]),
        "defocus_blur": _per_severity(
            ["radius", "alias_sigma"], [[0.3, 0.4], [0.4, 0.5], [0.5, 0.6], [1, 0.2], [1.5, 0.1]]
        ),
        "glass_blur": _per_severity(
            ["sigma", "max_delta", "iterations"],
            [[0.05, 1, 1], [0.25, 1, 1], [0.4, 1, 1], [0.25, 1, 2], [0.4, 1, 2]],
        ),
        "motion_blur": _per_severity(["radius", "sigma"], [[6, 1], [6, 1.5], [6, 2], [8, 2], [9, 2.5]]),
        # make_cifar_c.py's numpy.arange(1, end, 0.01), kept exactly: its float steps decide the zoomed sizes.
        "zoom_blur": tuple(
            {"zooms": tuple(np.arange(1, end, 0.01).tolist())} for end in (1.06, 1.11, 1.16, 1.21, 1.26)
        ),
        "snow": _per_severity(
            ["loc", "scale", "zoom", "threshold", "blur_radius", "blur_sigma", "image_weight"],
            [
                [0.1, 0.2, 1, 0.6, 8, 3, 0.95],
                [0.1, 0.2, 1, 0.5, 10, 4, 0.9],
                [0.15, 0.3, 1.75, 0.55, 10, 4, 0.9],
                [0.25, 0.3, 2.25, 0.6, 12, 6, 0.85],
                [0.3, 0.3, 1.25, 0.65, 14, 12, 0.8],
            ],
        ),
        "frost": _per_severity(
            ["image_weight", "frost_weight"], [[1, 0.2], [1, 0.3], [0.9, 0.4], [0.85, 0.4], [0.75, 0.45]]
        ),
        "fog": _per_severity(["strength", "decay"], [[0.2, 3], [0.5, 3], [0.75, 2.5], [1, 2], [1.5, 1.75]]),
        "brightness": _per_severity(["delta_v"], [[0.05], [0.1], [0.15], [0.2], [0.3]]),
        "contrast": _per_severity(["factor"], [[0.75], [0.5], [0.4], [0.3], [0.15]]),
        "elastic_transform": _per_severity(
            ["alpha", "sigma", "affine"],
            [[0, 0, 0.08], [0.05, 0.2, 0.07], [0.08, 0.06, 0.06], [0.1, 0.04, 0.05], [0.1, 0.03, 0.03]],
        ),
        "pixelate": _per_severity(["factor"], [[0.95], [0.9], [0.85], [0.75], [0.65]]),
        "jpeg_compression": _per_severity(["quality"], [[80], [65], [58], [50], [40]]),
    }
)
"""Parameters of every built-in corruption, one dict per severity (severity ``s`` is entry ``s - 1``)."""

SEED_PROBES: tuple[str, ...] = (
    "grayscale",
    "gaussian_blur_3x3",
    "gaussian_blur_5x5",
    "channels_bgr",
    "channels_brg",
    "salt_pepper_0.005",
    "salt_pepper_0.0005",
)
"""The probes of Zhang's encoder-decoder paper (the seed paper), each registered with a single severity."""

IMAGENET_C: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
"""The 15 ImageNet-C corruptions, each registered with 5 severities."""


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _check_images(x: Any) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"Expected `x` to be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"Expected `x` to be a float tensor of shape (N, C, H, W) in [0, 1], got dtype {x.dtype} "
            f"and shape {tuple(x.shape)}"
        )


def _check_severity(severity: Any, n: int = 5) -> None:
    if isinstance(severity, bool) or not isinstance(severity, int) or not 1 <= severity <= n:
        raise ValueError(f"Expected `severity` to be an int in 1..{n}, got {severity!r}")


def _generator(generator: torch.Generator | None, seed: int) -> torch.Generator:
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"Expected `generator` to be a torch.Generator or None, got {type(generator).__name__}")
        return generator
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"Expected `seed` to be an int, got {seed!r}")
    return torch.Generator().manual_seed(seed)


def _work(x: Tensor) -> Tensor:
    """The tensor to compute on: float32 for half precision inputs (CPU kernels lack some half ops)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _finish(out: Tensor, x: Tensor) -> Tensor:
    return out.clamp(0.0, 1.0).to(x.dtype)


def _uniform(shape: Sequence[int], g: torch.Generator, like: Tensor, low: float = 0.0, high: float = 1.0) -> Tensor:
    """Uniform noise drawn on the generator's device in float32, then moved to ``like``'s device and dtype."""
    u = torch.rand(tuple(shape), generator=g, device=g.device)
    return (low + (high - low) * u).to(device=like.device, dtype=like.dtype)


def _normal(shape: Sequence[int], g: torch.Generator, like: Tensor) -> Tensor:
    return torch.randn(tuple(shape), generator=g, device=g.device).to(device=like.device, dtype=like.dtype)


def _luma(x: Tensor) -> Tensor:
    """BT.601 luma, shape (N, 1, H, W); a 1-channel image is its own luma."""
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"Expected 1 or 3 channels for luma, got C={x.shape[1]}")
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _gaussian_kernel1d(sigma: float, radius: int) -> Tensor:
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


# OpenCV's ``small_gaussian_tab`` (imgproc/src/smooth.dispatch.cpp): ``getGaussianKernel(k, sigma <= 0)`` returns
# these for k = 1, 3, 5, 7 instead of sampling a Gaussian (k = 7 is not binomial); the same in OpenCV 3, 4 and 5.
_OPENCV_SMALL_KERNELS: Mapping[int, tuple[float, ...]] = MappingProxyType(
    {
        1: (1.0,),
        3: (0.25, 0.5, 0.25),
        5: (0.0625, 0.25, 0.375, 0.25, 0.0625),
        7: (0.03125, 0.109375, 0.21875, 0.28125, 0.21875, 0.109375, 0.03125),
    }
)


def _opencv_gaussian_kernel1d(kernel_size: int, sigma: float) -> Tensor:
    """``cv2.getGaussianKernel(kernel_size, sigma)`` in float64: sigma <= 0 takes OpenCV's fixed kernel for
    ``kernel_size <= 7`` and else ``sigma = 0.3 ((kernel_size - 1) / 2 - 1) + 0.8``."""
    if sigma <= 0:
        if kernel_size in _OPENCV_SMALL_KERNELS:
            return torch.tensor(_OPENCV_SMALL_KERNELS[kernel_size], dtype=torch.float64)
        sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    return _gaussian_kernel1d(sigma, kernel_size // 2)


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


def _motion_blur(x: Tensor, radius: float, sigma: float, angles: Tensor) -> Tensor:
    k = _motion_kernels(radius, sigma, angles).to(device=x.device, dtype=x.dtype)
    return filter2d(x, k, border_type="replicate")


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


@functools.lru_cache(maxsize=64)
def _box_resize_matrix(in_size: int, out_size: int) -> Tensor:
    """PIL's ``Image.BOX`` resampling along one axis as an (out_size, in_size) float64 matrix."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    m = torch.zeros(out_size, in_size, dtype=torch.float64)
    for o in range(out_size):
        centre = (o + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        for i in range(lo, hi):
            t = (i - centre + 0.5) / filterscale
            if -0.5 < t <= 0.5:  # PIL's box filter
                m[o, i] = 1.0
        m[o] /= m[o].sum()
    return m


def _jpeg_pil(u8: Tensor, quality: int) -> Tensor:
    """JPEG round trip of a (N, C, H, W) uint8 CPU batch with PIL, one image at a time."""
    from PIL import Image

    out = []
    for img in u8.permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out.append(np.asarray(Image.open(buf)).reshape(img.shape))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------------
# Probes of Zhang's encoder-decoder paper
# --------------------------------------------------------------------------------------------------


def grayscale(x: Tensor) -> Tensor:
    """Remove colour: ITU-R BT.601 luma ``0.299 R + 0.587 G + 0.114 B`` on every channel.

    The same as OpenCV's ``cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)`` followed by ``COLOR_GRAY2BGR`` on the BGR
    array of the same photo (in float; OpenCV rounds uint8 images to whole grey levels). A 1-channel image is
    returned unchanged (as a copy).

    Args:
        x: images in ``[0, 1]`` with 1 or 3 channels.

    Returns:
        Grey images with ``x``'s number of channels.

    Shape:
        - x: :math:`(N, C, H, W)` with :math:`C \\in \\{1, 3\\}`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> grayscale(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)).flatten().tolist()
        [0.29899999499320984, 0.29899999499320984, 0.29899999499320984]
    """
    _check_images(x)
    xw = _work(x)
    return _finish(_luma(xw).expand_as(xw).clone(), x)


def gaussian_blur(
    x: Tensor,
    kernel_size: int,
    sigma: float | None = None,
    *,
    border: Literal["reflect", "replicate"] = "reflect",
) -> Tensor:
    """Blur as ``cv2.GaussianBlur(img, (kernel_size, kernel_size), sigma)`` does (Zhang uses 3x3 and 5x5, sigma 0).

    The 2-D kernel is the outer product of one 1-D kernel, ``cv2.getGaussianKernel(kernel_size, sigma)``:

    - ``sigma`` ``None`` or ``0`` (OpenCV's "sigma 0", what Zhang passes): for ``kernel_size <= 7`` OpenCV's
      fixed kernels, ``[1]``, ``[1, 2, 1] / 4``, ``[1, 4, 6, 4, 1] / 16``,
      ``[1, 3.5, 7, 9, 7, 3.5, 1] / 32``, which are *not* samples of a Gaussian of the sigma
      ``0.3 ((kernel_size - 1) / 2 - 1) + 0.8`` (0.8 for 3x3, 1.1 for 5x5): they differ from it by up to
      0.02 on random images. For ``kernel_size >= 9``, a Gaussian of that sigma (OpenCV 3 and 4; OpenCV 5
      also has a fixed kernel for 9, ``[4, 13, 30, 51, 60, 51, 30, 13, 4] / 256``, which trainviz does not
      follow).
    - ``sigma > 0``: a Gaussian of that sigma sampled at ``-(kernel_size // 2) .. kernel_size // 2`` and
      normalised to sum 1 (as OpenCV does).

    Args:
        x: images in ``[0, 1]``.
        kernel_size: odd positive int, the kernel's width.
        sigma: standard deviation in pixels, or ``None`` / ``0`` for OpenCV's sigma-0 kernel (above).
        border: ``"reflect"`` mirrors about the edge pixel without repeating it (OpenCV's default
            ``BORDER_REFLECT_101``, scipy's ``"mirror"``); ``"replicate"`` repeats the edge pixel (scipy's
            ``"nearest"``).

    Returns:
        Blurred images, equal to OpenCV's on float32 images to ~1e-7 (OpenCV rounds uint8 images to whole
        grey levels).

    Shape:
        - x: :math:`(N, C, H, W)`, with H and W larger than ``kernel_size // 2`` for ``"reflect"``
        - output: :math:`(N, C, H, W)`

    Example:
        >>> gaussian_blur(torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 5).expand(1, 1, 3, 5), 3)[0, 0, 0]
        tensor([0.0000, 0.2500, 0.5000, 0.2500, 0.0000])
    """
    _check_images(x)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"Expected `kernel_size` to be an odd positive int, got {kernel_size!r}")
    if sigma is None:
        sigma = 0.0
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0 or math.isinf(sigma):
        raise ValueError(f"Expected `sigma` to be a positive float, 0 or None, got {sigma!r}")
    check_choice("border", border, ("reflect", "replicate"))
    xw = _work(x)
    if kernel_size == 1:
        return _finish(xw.clone(), x)
    k = _opencv_gaussian_kernel1d(kernel_size, float(sigma)).to(device=x.device, dtype=xw.dtype)[None]
    return _finish(filter2d_separable(xw, k, k, border_type=border), x)


def channel_order(x: Tensor, order: Sequence[int]) -> Tensor:
    """Reorder colour channels: output channel ``i`` is input channel ``order[i]``.

    From RGB images, ``(2, 1, 0)`` gives [B, G, R] and ``(1, 0, 2)`` swaps red and green, [G, R, B].
    Zhang's probes are ``channels_bgr`` = ``(2, 1, 0)`` and ``channels_brg`` = ``(1, 0, 2)``: his code reorders
    OpenCV's BGR array with ``cv2.merge([b, r, g])`` and then converts it with ``BGR2RGB``, so the network
    gets (G, R, B); the label "[B, R, G]" is the BGR array's new order, not the network's.

    Args:
        x: images in ``[0, 1]`` with 3 channels.
        order: a permutation of ``(0, 1, 2)``.

    Returns:
        Images with their channels reordered.

    Shape:
        - x: :math:`(N, 3, H, W)`
        - output: :math:`(N, 3, H, W)`

    Example:
        >>> channel_order(torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1), (2, 0, 1)).flatten().tolist()
        [0.30000001192092896, 0.10000000149011612, 0.20000000298023224]
    """
    _check_images(x)
    if x.shape[1] != 3:
        raise ValueError(f"`channel_order` needs 3 channels, got C={x.shape[1]}")
    if sorted(order) != [0, 1, 2]:
        raise ValueError(f"Expected `order` to be a permutation of (0, 1, 2), got {order!r}")
    return _finish(x[:, list(order)], x)


SaltPepperMethod = Literal["distinct", "zhang"]
_SALT_PEPPER_METHODS = ("distinct", "zhang")


def salt_and_pepper(
    x: Tensor,
    amount: float,
    generator: torch.Generator | None = None,
    *,
    seed: int = 0,
    method: SaltPepperMethod = "distinct",
) -> Tensor:
    """Set elements (not pixels: the specks are coloured) of each image to 1 (salt) or 0 (pepper).

    With ``M = amount C H W`` (Zhang's equation 12):

    - ``"distinct"``: exactly ``round(M)`` distinct elements per image, each salt or pepper with probability
      1/2.
    - ``"zhang"``: what Zhang's ``test.py`` does on the ``H x W x C`` BGR array of ``cv2.imread`` (with the
      numpy of 2019, which read the list of coordinate arrays as a tuple): ``ceil(M / 2)`` salt coordinates,
      then ``ceil(M / 2)`` pepper coordinates (pepper written last), each drawn with replacement, one
      ``np.random.randint(0, size - 1)`` per axis. ``randint`` excludes its upper bound, so the last row, the
      last column and the BGR array's last channel, red, are never hit: in RGB terms, only green and blue
      get specks (a 1-channel image, which ``cv2.imread`` never gives, keeps its only channel). Repeated
      coordinates make the number of changed elements slightly smaller than ``2 ceil(M / 2)``.

    Args:
        x: images in ``[0, 1]``.
        amount: the fraction ``lambda``, in ``[0, 1]`` (Zhang: 0.005 and 0.0005).
        generator: source of randomness; ``None`` seeds a fresh CPU generator from ``seed``.
        seed: used only when ``generator`` is ``None``.
        method: ``"distinct"`` or ``"zhang"`` (above).

    Returns:
        Noisy images.

    Shape:
        - x: :math:`(N, C, H, W)`, with H and W at least 2 for ``"zhang"``
        - output: :math:`(N, C, H, W)`

    Example:
        >>> y = salt_and_pepper(torch.full((1, 3, 10, 10), 0.5), 0.1, seed=1)
        >>> int((y != 0.5).sum())
        30
        >>> z = salt_and_pepper(torch.full((1, 3, 10, 10), 0.5), 0.1, seed=1, method="zhang")
        >>> int((z[:, 0] != 0.5).sum()), int((z[:, :, -1] != 0.5).sum())  # red and the last row untouched
        (0, 0)
    """
    _check_images(x)
    if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not 0.0 <= amount <= 1.0:
        raise ValueError(f"Expected `amount` to be in [0, 1], got {amount!r}")
    check_choice("method", method, _SALT_PEPPER_METHODS)
    g = _generator(generator, seed)
    n, c, h, w = x.shape
    total = c * h * w
    out = _work(x).reshape(n, total).clone()
    if n == 0 or total == 0:
        return _finish(out.view_as(x), x)
    if method == "distinct":
        m = round(amount * total)
        if m > 0:
            idx = torch.rand(n, total, generator=g, device=g.device).topk(m, dim=1).indices
            values = torch.randint(0, 2, (n, m), generator=g, device=g.device)
            out.scatter_(1, idx.to(x.device), values.to(device=x.device, dtype=out.dtype))
        return _finish(out.view_as(x), x)
    if h < 2 or w < 2:
        raise ValueError(f"`salt_and_pepper` with method='zhang' needs H and W of at least 2, got {(h, w)}")
    # np.ceil(amount * img.size * s_vs_p) with s_vs_p = 0.5, for salt and for pepper
    count = math.ceil(amount * total * 0.5)
    for value in (1.0, 0.0):  # salt first, then pepper over it
        if count == 0:
            break
        rows = torch.randint(0, h - 1, (n, count), generator=g, device=g.device)
        cols = torch.randint(0, w - 1, (n, count), generator=g, device=g.device)
        if c == 1:
            chans = torch.zeros_like(rows)
        else:  # BGR channel j = RGB channel c - 1 - j, j in [0, c - 1): never RGB channel 0 (red)
            chans = c - 1 - torch.randint(0, c - 1, (n, count), generator=g, device=g.device)
        idx = (chans * h + rows) * w + cols
        out.scatter_(1, idx.to(x.device), value)
    return _finish(out.view_as(x), x)


# --------------------------------------------------------------------------------------------------
# ImageNet-C corruptions (CIFAR-10-C parameters)
# --------------------------------------------------------------------------------------------------


def _params(name: str, x: Tensor, severity: int) -> dict[str, Any]:
    _check_images(x)
    _check_severity(severity, len(CORRUPTION_PARAMS[name]))
    return CORRUPTION_PARAMS[name][severity - 1]


def gaussian_noise(
    x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0
) -> Tensor:
    """Add Gaussian noise of standard deviation ``sigma`` (see the module's table).

    Args:
        x: images in ``[0, 1]``.
        severity: 1..5.
        generator: source of randomness; ``None`` seeds a fresh CPU generator from ``seed``.
        seed: used only when ``generator`` is ``None``.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> gaussian_noise(torch.rand(2, 3, 8, 8), 5, seed=0).shape
        torch.Size([2, 3, 8, 8])
    """
    p = _params("gaussian_noise", x, severity)
    g, xw = _generator(generator, seed), _work(x)
    return _finish(xw + p["sigma"] * _normal(xw.shape, g, xw), x)


def shot_noise(x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0) -> Tensor:
    """Poisson (photon) noise: ``Poisson(x rate) / rate``.

    The Poisson draw needs the images on the generator's device: they are copied there and back.

    Args:
        x: images in ``[0, 1]``.
        severity: 1..5.
        generator: source of randomness; ``None`` seeds a fresh CPU generator from ``seed``.
        seed: used only when ``generator`` is ``None``.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> shot_noise(torch.rand(2, 3, 8, 8), 5, seed=0).shape
        torch.Size([2, 3, 8, 8])
    """
    rate = _params("shot_noise", x, severity)["rate"]
    g, xw = _generator(generator, seed), _work(x)
    counts = torch.poisson((xw * rate).to(device=g.device, dtype=torch.float32), generator=g)
    return _finish(counts.to(device=x.device, dtype=xw.dtype) / rate, x)


def impulse_noise(
    x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0
) -> Tensor:
    """Salt-and-pepper noise on ``round(amount C H W)`` elements per image (see :func:`salt_and_pepper`).

    Args:
        x: images in ``[0, 1]``.
        severity: 1..5.
        generator: source of randomness; ``None`` seeds a fresh CPU generator from ``seed``.
        seed: used only when ``generator`` is ``None``.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> impulse_noise(torch.rand(2, 3, 8, 8), 5, seed=0).shape
        torch.Size([2, 3, 8, 8])
    """
    amount = _params("impulse_noise", x, severity)["amount"]
    return salt_and_pepper(x, amount, _generator(generator, seed))


def defocus_blur(x: Tensor, severity: int = 1) -> Tensor:
    """Convolve with an anti-aliased disk (a disk of ``radius`` blurred by a 3x3 Gaussian of ``alias_sigma``).

    As make_cifar_c.py's ``disk`` + ``cv2.filter2D``: reflect-101 border.

    Args:
        x: images in ``[0, 1]``, at least 4x4 pixels.
        severity: 1..5.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> defocus_blur(torch.rand(2, 3, 8, 8), 5).shape
        torch.Size([2, 3, 8, 8])
    """
    p = _params("defocus_blur", x, severity)
    radius = p["radius"]
    half = math.floor(radius) + 1  # the disk and its 3x3 anti-aliasing fit in this half-width
    t = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((t[:, None] ** 2 + t[None, :] ** 2) <= radius**2).to(torch.float64)
    disk = (disk / disk.sum())[None, None]
    alias = _gaussian_kernel1d(p["alias_sigma"], 1)
    kernel = torch.nn.functional.conv2d(disk, torch.outer(alias, alias)[None, None], padding=1)[0]
    xw = _work(x)
    return _finish(filter2d(xw, kernel.to(device=x.device, dtype=xw.dtype), border_type="reflect"), x)


def glass_blur(x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0) -> Tensor:
    """Blur, shuffle pixels locally, blur again (make_cifar_c.py's ``glass_blur``).

    The Gaussian blurs are scikit-image's (truncate 4, replicated border). The shuffle visits pixels from the
    bottom-right inwards and swaps each with a neighbour at offset ``U{-max_delta..max_delta-1}`` per axis, in
    order, ``iterations`` times; the swaps are resolved into one permutation per image (a sequential loop over
    pixel positions, vectorised over the batch).

    Args:
        x: images in ``[0, 1]``.
        severity: 1..5.
        generator: source of randomness; ``None`` seeds a fresh CPU generator from ``seed``.
        seed: used only when ``generator`` is ``None``.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> glass_blur(torch.rand(2, 3, 8, 8), 5, seed=0).shape
        torch.Size([2, 3, 8, 8])
    """
    p = _params("glass_blur", x, severity)
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


def motion_blur(
    x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0
) -> Tensor:
    """ImageMagick-style motion blur along a random angle in ``U(-45, 45)`` degrees, one angle per image.

    Args:
        x: images in ``[0, 1]``.
        severity: 1..5.
        generator: source of randomness; ``None`` seeds a fresh CPU generator from ``seed``.
        seed: used only when ``generator`` is ``None``.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> motion_blur(torch.rand(2, 3, 8, 8), 5, seed=0).shape
        torch.Size([2, 3, 8, 8])
    """
    p = _params("motion_blur", x, severity)
    g = _generator(generator, seed)
    angles = torch.rand(x.shape[0], generator=g, device=g.device).cpu() * 90 - 45
    return _finish(_motion_blur(_work(x), p["radius"], p["sigma"], angles), x)


def zoom_blur(x: Tensor, severity: int = 1) -> Tensor:
    """Average the image with centre zooms of it by 1.00, 1.01, ... (see the module's table).

    Args:
        x: images in ``[0, 1]``.
        severity: 1..5.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> zoom_blur(torch.rand(2, 3, 8, 8), 5).shape
        torch.Size([2, 3, 8, 8])
    """
    zooms = _params("zoom_blur", x, severity)["zooms"]
    xw = _work(x)
    out = xw.clone()
    for z in zooms:
        out = out + _clipped_zoom(xw, z)
    return _finish(out / (len(zooms) + 1), x)


def snow(x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0) -> Tensor:
    """Falling snow: a thresholded, zoomed noise layer smeared by motion blur, over a brightened image.

    Follows make_cifar_c.py: the layer is ``N(loc, scale)`` per pixel, zoomed by ``zoom``, set to 0 below
    ``threshold``, motion-blurred at an angle in ``U(-135, -45)`` degrees; the image becomes
    ``w x + (1 - w) max(x, 1.5 luma + 0.5)`` and the layer is added once as is and once rotated by 180 degrees.

    Args:
        x: images in ``[0, 1]`` with 1 or 3 channels.
        severity: 1..5.
        generator: source of randomness; ``None`` seeds a fresh CPU generator from ``seed``.
        seed: used only when ``generator`` is ``None``.

    Shape:
        - x: :math:`(N, C, H, W)` with :math:`C \\in \\{1, 3\\}`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> snow(torch.rand(2, 3, 8, 8), 5, seed=0).shape
        torch.Size([2, 3, 8, 8])
    """
    p = _params("snow", x, severity)
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


def frost(x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0) -> Tensor:
    """Blend with a frost texture: ``image_weight x + frost_weight frost``.

    The original blends crops of frost photos; trainviz synthesises the texture (not comparable with
    CIFAR-10-C frost): a plasma fractal ``p`` (decay 1.5) gives ice ridges ``(1 - |2p - 1|)^4`` over a
    cloudy base ``p``, mixed ``0.6 ridges + 0.4 p``, tinted bluish white (0.85, 0.93, 1.0) on 3-channel
    images (grey on others).

    Args:
        x: images in ``[0, 1]``.
        severity: 1..5.
        generator: source of randomness; ``None`` seeds a fresh CPU generator from ``seed``.
        seed: used only when ``generator`` is ``None``.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> frost(torch.rand(2, 3, 8, 8), 5, seed=0).shape
        torch.Size([2, 3, 8, 8])
    """
    p = _params("frost", x, severity)
    g, xw = _generator(generator, seed), _work(x)
    plasma = _plasma_like(xw, 1.5, g)
    texture = 0.6 * (1 - (2 * plasma - 1).abs()) ** 4 + 0.4 * plasma
    if xw.shape[1] == 3:
        texture = texture * torch.tensor((0.85, 0.93, 1.0), dtype=xw.dtype, device=xw.device).view(1, 3, 1, 1)
    return _finish(p["image_weight"] * xw + p["frost_weight"] * texture, x)


def fog(x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0) -> Tensor:
    """Add a plasma-fractal haze: ``(x + s plasma) max(x) / (max(x) + s)``, ``max`` per image.

    Args:
        x: images in ``[0, 1]``.
        severity: 1..5.
        generator: source of randomness; ``None`` seeds a fresh CPU generator from ``seed``.
        seed: used only when ``generator`` is ``None``.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> fog(torch.rand(2, 3, 8, 8), 5, seed=0).shape
        torch.Size([2, 3, 8, 8])
    """
    p = _params("fog", x, severity)
    g, xw = _generator(generator, seed), _work(x)
    strength = p["strength"]
    peak = xw.amax(dim=(1, 2, 3), keepdim=True)
    out = (xw + strength * _plasma_like(xw, p["decay"], g)) * peak / (peak + strength)
    return _finish(out, x)


def brightness(x: Tensor, severity: int = 1) -> Tensor:
    """Add ``delta_v`` to the value channel in HSV (clipped to 1), keeping hue and saturation.

    With hue and saturation fixed, RGB is proportional to V, so this is ``x V' / V`` where
    ``V = max_c x`` and ``V' = min(V + delta_v, 1)``; black pixels become grey ``V'``. On 1-channel
    images it is ``min(x + delta_v, 1)``.

    Args:
        x: images in ``[0, 1]``.
        severity: 1..5.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> brightness(torch.zeros(1, 3, 1, 1), 5).flatten().tolist()
        [0.30000001192092896, 0.30000001192092896, 0.30000001192092896]
    """
    delta = _params("brightness", x, severity)["delta_v"]
    xw = _work(x)
    v = xw.amax(dim=1, keepdim=True)
    v_new = (v + delta).clamp(max=1.0)
    scaled = xw * (v_new / v.clamp(min=torch.finfo(xw.dtype).tiny))
    return _finish(torch.where(v > 0, scaled, v_new.expand_as(xw)), x)


def contrast(x: Tensor, severity: int = 1) -> Tensor:
    """Scale each channel's deviation from its spatial mean by ``factor``.

    Args:
        x: images in ``[0, 1]``.
        severity: 1..5.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> contrast(torch.tensor([0.0, 1.0]).view(1, 1, 1, 2), 2).flatten().tolist()
        [0.25, 0.75]
    """
    factor = _params("contrast", x, severity)["factor"]
    xw = _work(x)
    means = xw.mean(dim=(2, 3), keepdim=True)
    return _finish((xw - means) * factor + means, x)


def elastic_transform(
    x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0
) -> Tensor:
    """Random affine warp, then a smooth random displacement field (make_cifar_c.py's ``elastic_transform``).

    With ``s = min(H, W)``: three control points at the centre ``± s // 3`` move by ``U(-affine s, affine s)``
    each; then every pixel moves by uniform noise in ``[-1, 1]`` smoothed by a Gaussian of ``sigma s`` (radius
    ``int(3 sigma s + 0.5)``) and scaled by ``alpha s`` pixels. Bilinear sampling, reflect-101 border.

    Args:
        x: images in ``[0, 1]``.
        severity: 1..5.
        generator: source of randomness; ``None`` seeds a fresh CPU generator from ``seed``.
        seed: used only when ``generator`` is ``None``.

    Shape:
        - x: :math:`(N, C, H, W)`, H and W at least 2
        - output: :math:`(N, C, H, W)`

    Example:
        >>> elastic_transform(torch.rand(2, 3, 8, 8), 5, seed=0).shape
        torch.Size([2, 3, 8, 8])
    """
    p = _params("elastic_transform", x, severity)
    g, xw = _generator(generator, seed), _work(x)
    n, _, h, w = xw.shape
    s = min(h, w)
    alpha, sigma, affine = p["alpha"] * s, p["sigma"] * s, p["affine"] * s
    cx, cy, q = w // 2, h // 2, s // 3
    src = torch.tensor([[cx + q, cy + q], [cx + q, cy - q], [cx - q, cy - q]], dtype=torch.float64)
    dst = src + _uniform((n, 3, 2), g, src, -affine, affine)
    # M maps src onto dst: [x y 1] M^T = [x' y'] for the three points.
    homogeneous = torch.cat([src, torch.ones(3, 1, dtype=torch.float64)], dim=1)
    matrix = torch.linalg.solve(homogeneous, dst).transpose(1, 2).to(device=x.device, dtype=xw.dtype)
    out = warp_affine(xw, matrix, (h, w), padding_mode="reflection", align_corners=True)
    if alpha > 0:
        noise = _uniform((n, 2, h, w), g, xw, -1.0, 1.0)
        size = 2 * int(3 * sigma + 0.5) + 1
        scale = (2 * alpha / (w - 1), 2 * alpha / (h - 1))  # pixels -> normalised grid units
        out = elastic_transform2d(
            out, noise, (size, size), (sigma, sigma), scale, align_corners=True, padding_mode="reflection"
        )
    return _finish(out, x)


def pixelate(x: Tensor, severity: int = 1) -> Tensor:
    """Downsample to ``int(size factor)`` and back with PIL's box filter, as batched matrix products.

    Args:
        x: images in ``[0, 1]``.
        severity: 1..5.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> pixelate(torch.rand(2, 3, 8, 8), 5).shape
        torch.Size([2, 3, 8, 8])
    """
    factor = _params("pixelate", x, severity)["factor"]
    xw = _work(x)
    h, w = xw.shape[-2:]
    sh, sw = max(int(h * factor), 1), max(int(w * factor), 1)
    rows = (_box_resize_matrix(sh, h) @ _box_resize_matrix(h, sh)).to(device=x.device, dtype=xw.dtype)
    cols = (_box_resize_matrix(sw, w) @ _box_resize_matrix(w, sw)).to(device=x.device, dtype=xw.dtype)
    return _finish(rows @ xw @ cols.T, x)


def jpeg_compression(x: Tensor, severity: int = 1) -> Tensor:
    """JPEG encode and decode at ``quality``, after rounding to 8 bits (``round(255 x)``).

    Uses ``torchvision.transforms.v2.functional.jpeg`` when torchvision is importable (its deprecation warning
    silenced), else PIL one image at a time; both give PIL's bytes exactly. Encoding runs on the CPU: the images
    are copied there and back.

    Args:
        x: images in ``[0, 1]`` with 1 or 3 channels.
        severity: 1..5.

    Shape:
        - x: :math:`(N, C, H, W)` with :math:`C \\in \\{1, 3\\}`
        - output: :math:`(N, C, H, W)`, multiples of 1/255

    Example:
        >>> jpeg_compression(torch.rand(2, 3, 8, 8), 5).shape
        torch.Size([2, 3, 8, 8])
    """
    quality = _params("jpeg_compression", x, severity)["quality"]
    if x.shape[1] not in (1, 3):
        raise ValueError(f"`jpeg_compression` needs 1 or 3 channels, got C={x.shape[1]}")
    xw = _work(x)
    u8 = (xw.clamp(0.0, 1.0) * 255).round().to(device="cpu", dtype=torch.uint8)
    try:
        from torchvision.transforms.v2.functional import jpeg
    except ImportError:
        decoded = _jpeg_pil(u8, quality)
    else:
        with warnings.catch_warnings():  # torchvision >= 0.29 deprecates its codecs for torchcodec's
            warnings.filterwarnings("ignore", "The image decoding and encoding", DeprecationWarning)
            decoded = jpeg(u8, quality)
    return _finish(decoded.to(device=x.device, dtype=xw.dtype) / 255, x)


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CorruptionSpec:
    """A registered corruption.

    Attributes:
        name: registry key.
        fn: ``fn(x, severity, generator) -> Tensor`` with ``x`` of shape (N, C, H, W) in ``[0, 1]``.
        severities: number of severities; valid severities are ``1..severities``.
        params: one entry per severity describing it, or ``None``.
    """

    name: str
    fn: Callable[[Tensor, int, torch.Generator], Tensor]
    severities: int
    params: tuple[Any, ...] | None


_REGISTRY: dict[str, CorruptionSpec] = {}


def register_corruption(
    name: str,
    fn: Callable[[Tensor, int, torch.Generator], Tensor],
    severities: int = 5,
    params: Sequence[Any] | None = None,
    overwrite: bool = False,
) -> None:
    """Register a corruption so that :func:`corrupt` and :class:`Corruption` can use it by name.

    Args:
        name: registry key.
        fn: called as ``fn(x, severity, generator)``; must return images of ``x``'s shape. ``generator`` is a
            CPU ``torch.Generator`` seeded by :func:`corrupt`: draw all randomness from it.
        severities: number of severities (positive int).
        params: optional description of each severity, one entry per severity.
        overwrite: replace an existing corruption of that name instead of raising.

    Example:
        >>> register_corruption("invert", lambda x, severity, generator: 1 - x, severities=1, overwrite=True)
        >>> corrupt(torch.zeros(1, 1, 2, 2), "invert").flatten().tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"Expected `name` to be a non-empty str, got {name!r}")
    if not callable(fn):
        raise TypeError(f"Expected `fn` to be callable, got {type(fn).__name__}")
    check_positive_int("severities", severities)
    if params is not None and len(params) != severities:
        raise ValueError(f"Expected `params` to have one entry per severity ({severities}), got {len(params)}")
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"Corruption {name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[name] = CorruptionSpec(name, fn, severities, None if params is None else tuple(params))


def list_corruptions() -> list[str]:
    """Names of all registered corruptions, in registration order (the seed probes, then ImageNet-C).

    Example:
        >>> list_corruptions()[:2]
        ['grayscale', 'gaussian_blur_3x3']
    """
    return list(_REGISTRY)


def corruption_spec(name: str) -> CorruptionSpec:
    """The registered :class:`CorruptionSpec` of ``name`` (its function, number of severities, parameters).

    Example:
        >>> corruption_spec("fog").severities
        5
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown corruption {name!r}; valid names: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def corrupt(x: Tensor, name: str, severity: int = 1, *, seed: int = 0) -> Tensor:
    """Apply the registered corruption ``name`` at ``severity``, with noise from a CPU generator seeded by ``seed``.

    The same ``(x, name, severity, seed)`` always gives bitwise the same output; the global RNGs are untouched.

    Args:
        x: images in ``[0, 1]``.
        name: a name from :func:`list_corruptions`.
        severity: ``1..severities`` of that corruption (1 for the seed probes, 1..5 for ImageNet-C).
        seed: seed of the private generator.

    Returns:
        Corrupted images.

    Shape:
        - x: :math:`(N, C, H, W)`
        - output: :math:`(N, C, H, W)`

    Example:
        >>> corrupt(torch.rand(2, 3, 32, 32), "snow", 5, seed=1).shape
        torch.Size([2, 3, 32, 32])
    """
    spec = corruption_spec(name)
    _check_images(x)
    _check_severity(severity, spec.severities)
    out = spec.fn(x, severity, _generator(None, seed))
    if not isinstance(out, Tensor) or out.shape != x.shape:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"Corruption {name!r} returned {shape}, expected a tensor of shape {tuple(x.shape)}")
    return out


class Corruption(nn.Module):
    """Module face of :func:`corrupt`: a fixed corruption, severity and seed, checked at construction.

    Args:
        name: a name from :func:`list_corruptions`.
        severity: ``1..severities`` of that corruption.
        seed: seed of the private generator (the same noise on every call).

    Shape:
        - input: :math:`(N, C, H, W)` in ``[0, 1]``
        - output: :math:`(N, C, H, W)`

    Example:
        >>> Corruption("contrast", 2)(torch.rand(1, 3, 4, 4)).shape
        torch.Size([1, 3, 4, 4])
    """

    def __init__(self, name: str, severity: int = 1, seed: int = 0) -> None:
        super().__init__()
        _check_severity(severity, corruption_spec(name).severities)
        _generator(None, seed)
        self.name, self.severity, self.seed = name, severity, seed

    def forward(self, x: Tensor) -> Tensor:
        return corrupt(x, self.name, self.severity, seed=self.seed)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, severity={self.severity}, seed={self.seed}"


def _register_builtins() -> None:
    probes: dict[str, Callable[[Tensor, int, torch.Generator], Tensor]] = {
        "grayscale": lambda x, s, g: grayscale(x),
        "gaussian_blur_3x3": lambda x, s, g: gaussian_blur(x, 3),
        "gaussian_blur_5x5": lambda x, s, g: gaussian_blur(x, 5),
        "channels_bgr": lambda x, s, g: channel_order(x, (2, 1, 0)),
        "channels_brg": lambda x, s, g: channel_order(x, (1, 0, 2)),
        "salt_pepper_0.005": lambda x, s, g: salt_and_pepper(x, 0.005, g, method="zhang"),
        "salt_pepper_0.0005": lambda x, s, g: salt_and_pepper(x, 0.0005, g, method="zhang"),
    }
    for name, fn in probes.items():
        register_corruption(name, fn, 1, CORRUPTION_PARAMS[name])
    deterministic = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}
    for name in IMAGENET_C:
        op = _adapt(globals()[name], random=name not in deterministic)
        register_corruption(name, op, 5, CORRUPTION_PARAMS[name])


def _adapt(op: Callable[..., Tensor], random: bool) -> Callable[[Tensor, int, torch.Generator], Tensor]:
    if random:
        return lambda x, severity, generator: op(x, severity, generator=generator)
    return lambda x, severity, generator: op(x, severity)


_register_builtins()
