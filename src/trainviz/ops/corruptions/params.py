"""Parameters of every built-in corruption: Zhang's probes (one severity each) and the ImageNet-C corruptions with
the CIFAR-10-C parameters of Hendrycks & Dietterich 2019, "Benchmarking Neural Network Robustness to Common
Corruptions and Perturbations" (hendrycks/robustness ``make_cifar_c.py``), severities 1..5:

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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
from torch import Tensor

from trainviz.core.checks import check_images, check_int
from trainviz.ops.corruptions._base import _LUMA

__all__ = ["CORRUPTION_PARAMS"]


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


def _params(name: str, x: Tensor, severity: int) -> dict[str, Any]:
    """The parameters of corruption ``name`` at ``severity``, after checking the images and the severity."""
    check_images(x, "x")
    table = CORRUPTION_PARAMS[name]
    return table[check_int("severity", severity, 1, len(table)) - 1]
