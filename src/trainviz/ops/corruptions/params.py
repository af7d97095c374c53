"""Parameters of every built-in corruption: Zhang's probes (one severity each) and the ImageNet-C corruptions of
Hendrycks & Dietterich 2019, "Benchmarking Neural Network Robustness to Common Corruptions and Perturbations", in
three sets transcribed from hendrycks/robustness, severities 1..5:

- ``"cifar10-c"`` (``make_cifar_c.py``, made for 32 px), tabled below;
- ``"tinyimagenet-c"`` (``make_tinyimagenet_c.py``, 64 px) and ``"imagenet-c"`` (``make_imagenet_c.py``, 224 px):
  stronger noise, larger blur radii and zooms, other snow, fog, frost, elastic, pixelate and JPEG values (see
  :data:`CORRUPTION_PARAM_SETS`; e.g. Gaussian noise sigma .08 to .38 at 224 px, .04 to .10 at 32 px).

Which set: each corruption takes ``param_set=`` (default ``"auto"``), resolved by :func:`param_set_for` from the
images' size: the set whose image side is nearest to the **shorter** side ``min(H, W)`` on a log scale (CIFAR-10-C
up to 45 px, Tiny-ImageNet-C up to 119 px, ImageNet-C above). Non-square images get the set of their shorter side;
the parameters that the originals give in pixels (noise, blur radii and sigmas, zooms, motion lengths, JPEG
quality) apply as they are along both axes, those given as a fraction of the image (elastic, as ``x min(H, W)``;
pixelate's factor per axis) follow the image, and the fog and frost plasma is drawn on the next power of two
at least ``max(H, W)`` and cropped. An image far from the set's side (say 128 px with the ImageNet-C set) gets
the set's pixel values unchanged, so its numbers compare with neither dataset exactly.

The CIFAR-10-C set:

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
  :func:`~trainviz.ops.corruptions.salt_and_pepper`) where scikit-image flips each element with probability
  ``amount``; the expected count is the same.
- Motion blur rebuilds ImageMagick's ``MotionBlurImage`` kernel (one-sided Gaussian of width
  ``2 ceil(radius) + 1`` along the angle, offsets rounded to whole pixels, edge pixels replicated) and applies
  it tap by tap (one shifted copy of the image per tap), one angle per image.
- ``frost`` blends photos of frost in the original, which trainviz cannot ship: it uses a procedural texture
  instead (bright ridges of a plasma fractal over a cloudy base, tinted bluish white). Its values are
  therefore not comparable with published CIFAR-10-C frost numbers.
- ``elastic_transform`` uses kornia: ``warp_affine`` with reflect-101 border (as OpenCV's default) for the
  random affine, then ``elastic_transform2d`` with uniform noise from our generator; kornia smooths that noise
  with zero padding where scikit-image reflects, which only changes displacements near the border. Sizes
  scale with ``min(H, W)`` (the original uses 32). As in CIFAR-10-C, higher severities trade the global
  affine for local distortion, so the mean pixel difference from the clean image shrinks with severity.
- The plasma fractal (fog, frost) is drawn on the next power of two at least ``max(H, W)`` and cropped.
- ``elastic_transform`` at ImageNet-C's severities 1-2 smooths the displacement with sigma 0.76 x the image
  side: kornia's zero padding then shrinks the displacement (make_imagenet_c.py reflects), so those two rows
  move pixels less than the original; the affine part, which dominates there, is unchanged.
- ImageNet-C's ``elastic_transform`` values are ``244 x`` fractions at 224 px (the original's comment: "244
  should have been 224"); they are kept as fractions ``244 / 224 x`` of ``min(H, W)``, exact at 224 px.
- ``defocus_blur`` above radius 8 (ImageNet-C severity 5) uses the original's 5x5 anti-aliasing Gaussian on the
  disk's own ``2r + 1`` grid with OpenCV's reflect-101 border, as ``disk`` in make_imagenet_c.py.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
from torch import Tensor

from trainviz.core.checks import check_images, check_int
from trainviz.ops.corruptions._base import _LUMA

__all__ = [
    "IMAGENET_C_ORDER",
    "CORRUPTION_PARAMS",
    "CORRUPTION_PARAM_SETS",
    "PARAM_SETS",
    "check_param_set",
    "param_set_for",
    "resolve_param_set",
]


def _per_severity(keys: Sequence[str], rows: Sequence[Sequence[Any]]) -> tuple[dict[str, Any], ...]:
    return tuple(dict(zip(keys, row, strict=True)) for row in rows)


_SEED_PARAMS: dict[str, tuple[dict[str, Any], ...]] = {
    "grayscale": ({"weights": _LUMA},),
    # sigma 0 as in cv2.GaussianBlur(img, (k, k), 0): OpenCV's fixed kernels [1,2,1]/4 and [1,4,6,4,1]/16.
    "gaussian_blur_3x3": ({"kernel_size": 3, "sigma": 0},),
    "gaussian_blur_5x5": ({"kernel_size": 5, "sigma": 0},),
    "channels_bgr": ({"order": (2, 1, 0)},),
    "channels_brg": ({"order": (1, 0, 2)},),
    "salt_pepper_0.005": ({"amount": 0.005, "method": "zhang"},),
    "salt_pepper_0.0005": ({"amount": 0.0005, "method": "zhang"},),
}

_KEYS = {
    "gaussian_noise": ["sigma"],
    "shot_noise": ["rate"],
    "impulse_noise": ["amount"],
    "defocus_blur": ["radius", "alias_sigma"],
    "glass_blur": ["sigma", "max_delta", "iterations"],
    "motion_blur": ["radius", "sigma"],
    "snow": ["loc", "scale", "zoom", "threshold", "blur_radius", "blur_sigma", "image_weight"],
    "frost": ["image_weight", "frost_weight"],
    "fog": ["strength", "decay"],
    "brightness": ["delta_v"],
    "contrast": ["factor"],
    "elastic_transform": ["alpha", "sigma", "affine"],
    "pixelate": ["factor"],
    "jpeg_compression": ["quality"],
}


def _imagenet_c_set(rows: dict[str, Sequence[Any]], zooms: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """One parameter set: Zhang's probes, ``rows`` (one entry per severity, a value or a tuple in ``_KEYS``'
    order) and the zoom blur's ``numpy.arange(1, end, step)`` for each ``(end, step)``, kept exactly: the float
    steps decide the zoomed sizes."""
    table: dict[str, Any] = dict(_SEED_PARAMS)
    for name, keys in _KEYS.items():
        table[name] = _per_severity(keys, [r if isinstance(r, (tuple, list)) else [r] for r in rows[name]])
    table["zoom_blur"] = tuple({"zooms": tuple(np.arange(1, end, step).tolist())} for end, step in zooms)
    return {name: table[name] for name in [*_SEED_PARAMS, *IMAGENET_C_ORDER]}


IMAGENET_C_ORDER: tuple[str, ...] = (
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
"""The 15 ImageNet-C corruptions in Hendrycks & Dietterich's order (the registry's ``IMAGENET_C``)."""

_CIFAR10_C = _imagenet_c_set(
    {
        "gaussian_noise": [0.04, 0.06, 0.08, 0.09, 0.10],
        "shot_noise": [500, 250, 100, 75, 50],
        "impulse_noise": [0.01, 0.02, 0.03, 0.05, 0.07],
        "defocus_blur": [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)],
        "glass_blur": [(0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)],
        "motion_blur": [(6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)],
        "snow": [
            (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
        ],
        "frost": [(1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)],
        "fog": [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)],
        "brightness": [0.05, 0.1, 0.15, 0.2, 0.3],
        "contrast": [0.75, 0.5, 0.4, 0.3, 0.15],
        "elastic_transform": [
            (0, 0, 0.08),
            (0.05, 0.2, 0.07),
            (0.08, 0.06, 0.06),
            (0.1, 0.04, 0.05),
            (0.1, 0.03, 0.03),
        ],
        "pixelate": [0.95, 0.9, 0.85, 0.75, 0.65],
        "jpeg_compression": [80, 65, 58, 50, 40],
    },
    [(1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)],
)

_TINYIMAGENET_C = _imagenet_c_set(
    {
        "gaussian_noise": [0.04, 0.08, 0.12, 0.15, 0.18],
        "shot_noise": [250, 100, 50, 30, 15],
        "impulse_noise": [0.01, 0.02, 0.05, 0.08, 0.14],
        "defocus_blur": [(0.5, 0.6), (1, 0.1), (1.5, 0.1), (2.5, 0.01), (3, 0.1)],
        "glass_blur": [(0.1, 1, 1), (0.5, 1, 1), (0.6, 1, 2), (0.7, 2, 1), (0.9, 2, 2)],
        "motion_blur": [(10, 1), (10, 1.5), (10, 2), (10, 2.5), (12, 3)],
        "snow": [
            (0.1, 0.2, 1, 0.6, 8, 3, 0.8),
            (0.1, 0.2, 1, 0.5, 10, 4, 0.8),
            (0.15, 0.3, 1.75, 0.55, 10, 4, 0.7),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.65),
            (0.3, 0.3, 1.25, 0.65, 14, 12, 0.6),
        ],
        "frost": [(1, 0.3), (0.9, 0.4), (0.8, 0.45), (0.75, 0.5), (0.7, 0.55)],
        "fog": [(0.4, 3), (0.7, 3), (1, 2.5), (1.5, 2), (2, 1.75)],
        "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
        "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
        # make_tinyimagenet_c.py: IMSIZE * (alpha, sigma, affine) with IMSIZE = 64.
        "elastic_transform": [
            (0, 0, 0.08),
            (0.05, 0.3, 0.06),
            (0.1, 0.08, 0.06),
            (0.1, 0.03, 0.03),
            (0.16, 0.03, 0.02),
        ],
        "pixelate": [0.9, 0.8, 0.7, 0.6, 0.5],
        "jpeg_compression": [65, 58, 50, 40, 25],
    },
    [(1.06, 0.01), (1.11, 0.01), (1.16, 0.01), (1.21, 0.01), (1.26, 0.01)],
)

_E = 244 / 224  # make_imagenet_c.py writes 244 x (alpha, sigma, affine) at 224 px ("244 should have been 224")

_IMAGENET_C = _imagenet_c_set(
    {
        "gaussian_noise": [0.08, 0.12, 0.18, 0.26, 0.38],
        "shot_noise": [60, 25, 12, 5, 3],
        "impulse_noise": [0.03, 0.06, 0.09, 0.17, 0.27],
        "defocus_blur": [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)],
        "glass_blur": [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)],
        "motion_blur": [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)],
        "snow": [
            (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
            (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
            (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
            (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
            (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
        ],
        "frost": [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)],
        "fog": [(1.5, 2), (2, 2), (2.5, 1.7), (2.5, 1.5), (3, 1.4)],
        "brightness": [0.1, 0.2, 0.3, 0.4, 0.5],
        "contrast": [0.4, 0.3, 0.2, 0.1, 0.05],
        "elastic_transform": [
            (2 * _E, 0.7 * _E, 0.1 * _E),
            (2 * _E, 0.08 * _E, 0.2 * _E),
            (0.05 * _E, 0.01 * _E, 0.02 * _E),
            (0.07 * _E, 0.01 * _E, 0.02 * _E),
            (0.12 * _E, 0.01 * _E, 0.02 * _E),
        ],
        "pixelate": [0.6, 0.5, 0.4, 0.3, 0.25],
        "jpeg_compression": [25, 18, 15, 10, 7],
    },
    [(1.11, 0.01), (1.16, 0.01), (1.21, 0.02), (1.26, 0.02), (1.31, 0.03)],
)

PARAM_SETS: Mapping[str, int] = MappingProxyType({"cifar10-c": 32, "tinyimagenet-c": 64, "imagenet-c": 224})
"""The parameter sets by name, with the image side each was made for."""

CORRUPTION_PARAM_SETS: Mapping[str, Mapping[str, tuple[dict[str, Any], ...]]] = MappingProxyType(
    {
        name: MappingProxyType(table)
        for name, table in zip(PARAM_SETS, (_CIFAR10_C, _TINYIMAGENET_C, _IMAGENET_C), strict=True)
    }
)
"""Parameters of every built-in corruption in each set (``PARAM_SETS``), one dict per severity (severity ``s``
is entry ``s - 1``). Zhang's probes have one severity and the same parameters in every set."""

CORRUPTION_PARAMS: Mapping[str, tuple[dict[str, Any], ...]] = CORRUPTION_PARAM_SETS["cifar10-c"]
"""The CIFAR-10-C set of :data:`CORRUPTION_PARAM_SETS` (the parameters of images up to 45 pixels)."""


def param_set_for(height: int, width: int) -> str:
    """The parameter set made for the image side nearest to ``min(height, width)`` on a log scale: CIFAR-10-C
    (32 px) up to 45 px (``sqrt(32 x 64)``), Tiny-ImageNet-C (64 px) up to 119 px (``sqrt(64 x 224)``),
    ImageNet-C (224 px) above.

    Example:
        >>> param_set_for(32, 32), param_set_for(64, 64), param_set_for(224, 224), param_set_for(100, 300)
        ('cifar10-c', 'tinyimagenet-c', 'imagenet-c', 'tinyimagenet-c')
    """
    side = math.log(max(1, min(height, width)))
    return min(PARAM_SETS, key=lambda name: (abs(side - math.log(PARAM_SETS[name])), PARAM_SETS[name]))


def check_param_set(param_set: str, name: str = "param_set") -> str:
    """``param_set`` if it is ``"auto"`` or a name of :data:`PARAM_SETS`.

    Raises:
        ValueError: naming ``name`` and the valid choices.
    """
    if not isinstance(param_set, str) or (param_set != "auto" and param_set not in PARAM_SETS):
        raise ValueError(f"Expected `{name}` to be 'auto' or one of {', '.join(PARAM_SETS)}; got {param_set!r}.")
    return param_set


def resolve_param_set(param_set: str, height: int, width: int) -> str:
    """The name of the set: ``param_set`` itself, or for ``"auto"`` :func:`param_set_for` of the size."""
    return param_set_for(height, width) if check_param_set(param_set) == "auto" else param_set


def _params(name: str, x: Tensor, severity: int, param_set: str = "auto") -> dict[str, Any]:
    """The parameters of corruption ``name`` at ``severity`` in ``param_set`` (``"auto"``: by ``x``'s size),
    after checking the images, the set and the severity."""
    check_images(x, "x")
    table = CORRUPTION_PARAM_SETS[resolve_param_set(param_set, x.shape[-2], x.shape[-1])][name]
    return table[check_int("severity", severity, 1, len(table)) - 1]
