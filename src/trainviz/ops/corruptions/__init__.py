"""Image corruptions for robustness probes: Xiaohan Zhang's probes ("Visualization of encoder-decoder structure
of Deep Convolutional Neural Network", section 5.3) and the ImageNet-C corruptions of Hendrycks & Dietterich
2019 ("Benchmarking Neural Network Robustness to Common Corruptions and Perturbations") with the parameters of
CIFAR-10-C, Tiny-ImageNet-C or ImageNet-C, chosen by the images' shorter side (``param_set="auto"``) or forced.

Every function takes images in pixel space ``[0, 1]`` of shape ``(N, C, H, W)`` (any floating dtype, any
device) and returns a new tensor of the same shape, dtype and device, clamped to ``[0, 1]``. Half precision
inputs are computed in float32 and cast back.

Randomness: every random corruption takes ``generator`` (a ``torch.Generator``) or, when that is ``None``,
``seed`` (a fresh CPU generator is seeded from it). The global torch and numpy RNGs are never used. Noise is
drawn on the generator's device (a CPU generator unless you pass another) and then moved to the images'
device, so one seed gives the same noise on CPU and GPU. Noise is drawn for the whole batch at once, so the
corruption of one image depends on its position in the batch and on the batch size: corrupt a fixed probe set
once and cache it.

Modules:

- ``registry``: :func:`corrupt`, :class:`Corruption`, :func:`register_corruption`, :func:`list_corruptions`,
  :func:`corruption_spec`, the suites ``SEED_PROBES`` and ``IMAGENET_C``.
- ``params``: ``CORRUPTION_PARAM_SETS`` (``CORRUPTION_PARAMS``: the CIFAR-10-C set), one dict per severity,
  :func:`param_set_for` (the set of an image size), and where trainviz departs from ``make_cifar_c.py``.
- ``seed``: Zhang's probes (:func:`grayscale`, :func:`gaussian_blur` as ``cv2.GaussianBlur``,
  :func:`channel_order`, :func:`salt_and_pepper`), with the table of what each does.
- ``noise``, ``blur``, ``weather``, ``digital``: the four ImageNet-C families.

Example:
    >>> import torch
    >>> x = torch.rand(4, 3, 32, 32)
    >>> y = corrupt(x, "gaussian_noise", severity=3, seed=0)
    >>> y.shape, bool(torch.equal(y, corrupt(x, "gaussian_noise", severity=3, seed=0)))
    (torch.Size([4, 3, 32, 32]), True)
"""

from __future__ import annotations

from trainviz.ops.corruptions.blur import defocus_blur, glass_blur, motion_blur, zoom_blur
from trainviz.ops.corruptions.digital import contrast, elastic_transform, jpeg_compression, pixelate
from trainviz.ops.corruptions.noise import gaussian_noise, impulse_noise, shot_noise
from trainviz.ops.corruptions.params import (
    CORRUPTION_PARAM_SETS,
    CORRUPTION_PARAMS,
    PARAM_SETS,
    check_param_set,
    param_set_for,
    resolve_param_set,
)
from trainviz.ops.corruptions.registry import (
    IMAGENET_C,
    SEED_PROBES,
    Corruption,
    CorruptionSpec,
    corrupt,
    corruption_spec,
    list_corruptions,
    register_corruption,
)
from trainviz.ops.corruptions.seed import SaltPepperMethod, channel_order, gaussian_blur, grayscale, salt_and_pepper
from trainviz.ops.corruptions.weather import brightness, fog, frost, snow

__all__ = [
    "CORRUPTION_PARAMS",
    "CORRUPTION_PARAM_SETS",
    "IMAGENET_C",
    "PARAM_SETS",
    "SEED_PROBES",
    "Corruption",
    "CorruptionSpec",
    "SaltPepperMethod",
    "brightness",
    "channel_order",
    "check_param_set",
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
    "param_set_for",
    "pixelate",
    "register_corruption",
    "resolve_param_set",
    "salt_and_pepper",
    "shot_noise",
    "snow",
    "zoom_blur",
]
