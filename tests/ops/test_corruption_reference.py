"""The corruptions against reference code: the parameter sets of hendrycks/robustness (``make_cifar_c.py``,
``make_tinyimagenet_c.py``, ``make_imagenet_c.py``) chosen by image size, and the ImageNet-C set against
``imagecorruptions`` (the ``imagecorruptions-imaug`` fork of Michaelis et al.'s package, which ships
``make_imagenet_c.py``'s functions with ImageNet-C's parameters, for any image size).

What is compared, and how closely:

- deterministic corruptions (defocus blur, zoom blur, brightness, contrast, pixelate, JPEG) on the same uint8
  images: to the stated tolerance (float32 arithmetic in the reference; pixelate and JPEG round to uint8);
- motion blur: imagecorruptions re-implements ImageMagick's ``MotionBlurImage`` in numpy (no Wand); our kernel
  is compared with it at the same angles, to float32 precision. ImageMagick itself (Wand) is not installed;
- random corruptions (noise, glass blur, snow, fog, elastic): in distribution, the mean and standard deviation
  of the change ``y - x`` over a few images, to a tolerance stated per corruption;
- frost is left out: the reference blends frost photographs, trainviz a procedural texture.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainviz.ops.corruptions import (
    CORRUPTION_PARAM_SETS,
    CORRUPTION_PARAMS,
    PARAM_SETS,
    check_param_set,
    corrupt,
    param_set_for,
)
from trainviz.ops.corruptions import blur as blur_module


def test_the_set_is_the_nearest_on_a_log_scale_of_the_shorter_side():
    assert [param_set_for(s, s) for s in (8, 32, 45, 46, 64, 119, 120, 224, 512)] == [
        "cifar10-c",
        "cifar10-c",
        "cifar10-c",
        "tinyimagenet-c",
        "tinyimagenet-c",
        "tinyimagenet-c",
        "imagenet-c",
        "imagenet-c",
        "imagenet-c",
    ]
    assert param_set_for(32, 400) == "cifar10-c" and param_set_for(400, 64) == "tinyimagenet-c"  # shorter side
    assert CORRUPTION_PARAMS is CORRUPTION_PARAM_SETS["cifar10-c"] and list(PARAM_SETS.values()) == [32, 64, 224]
    with pytest.raises(ValueError, match="`param_set` to be 'auto' or one of cifar10-c, tinyimagenet-c, imagenet-c"):
        check_param_set("imagenet")


def test_the_sets_hold_the_published_values():
    sets = CORRUPTION_PARAM_SETS
    # the example and a few values per file, read off the three scripts
    assert [p["sigma"] for p in sets["imagenet-c"]["gaussian_noise"]] == [0.08, 0.12, 0.18, 0.26, 0.38]
    assert [p["sigma"] for p in sets["cifar10-c"]["gaussian_noise"]] == [0.04, 0.06, 0.08, 0.09, 0.10]
    assert [p["sigma"] for p in sets["tinyimagenet-c"]["gaussian_noise"]] == [0.04, 0.08, 0.12, 0.15, 0.18]
    assert [p["quality"] for p in sets["imagenet-c"]["jpeg_compression"]] == [25, 18, 15, 10, 7]
    assert sets["imagenet-c"]["motion_blur"][4] == {"radius": 20, "sigma": 15}
    assert sets["tinyimagenet-c"]["glass_blur"][3] == {"sigma": 0.7, "max_delta": 2, "iterations": 1}
    zooms = sets["imagenet-c"]["zoom_blur"][4]["zooms"]
    np.testing.assert_array_equal(zooms, np.arange(1, 1.31, 0.03))
    elastic = sets["imagenet-c"]["elastic_transform"][0]
    assert [v * 224 for v in elastic.values()] == pytest.approx([244 * 2, 244 * 0.7, 244 * 0.1])
    for table in sets.values():  # Zhang's probes are the same in every set
        assert table["grayscale"] == CORRUPTION_PARAMS["grayscale"] and len(table) == len(CORRUPTION_PARAMS)


def test_auto_picks_by_size_and_a_forced_set_wins():
    x = torch.rand(2, 3, 64, 64)
    auto = corrupt(x, "gaussian_noise", 5, seed=0)
    assert torch.equal(auto, corrupt(x, "gaussian_noise", 5, seed=0, param_set="tinyimagenet-c"))
    forced = corrupt(x, "gaussian_noise", 5, seed=0, param_set="imagenet-c")
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(forced, (x + 0.38 * noise).clamp(0, 1), atol=1e-6)  # sigma .38, not .18
    with pytest.raises(ValueError, match="param_set"):
        corrupt(x, "contrast", 1, param_set="imagenet")


def test_motion_blur_tap_by_tap_equals_the_kernel_convolution():
    from kornia.filters import filter2d

    x = torch.rand(3, 2, 20, 24, dtype=torch.float64)
    angles = torch.tensor([-45.0, 12.5, 90.0])
    kernels = blur_module._motion_kernels(6, 2.0, angles)
    expected = filter2d(x, kernels, border_type="replicate")
    torch.testing.assert_close(blur_module._motion_blur(x, 6, 2.0, angles), expected, rtol=0, atol=1e-12)


# against imagecorruptions (ImageNet-C's parameters) -----------------------------------------------------

ic = pytest.importorskip("imagecorruptions.corruptions", reason="imagecorruptions-imaug (dev extra) not installed")


def _images(n: int = 3, size: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth-ish uint8 images (a gradient plus noise), (n, H, W, 3)."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)[None, :, None, None] * np.linspace(0.3, 1, size)[None, None, :, None]
    x = 0.6 * ramp + 0.4 * rng.random((n, size, size, 3))
    return np.round(255 * x).astype(np.uint8)


def _ours(u8: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    x = torch.from_numpy(u8).permute(0, 3, 1, 2).double() / 255
    return corrupt(x, name, severity, seed=seed, param_set="imagenet-c").permute(0, 2, 3, 1).numpy()


def _reference(u8: np.ndarray, name: str, severity: int) -> np.ndarray:
    from PIL import Image

    fn = getattr(ic, name)
    takes_pil = name in ("pixelate", "jpeg_compression")
    # glass blur draws its shuffle in numba from a seed of its own (numpy's global seed does not reach it)
    seeded = {"seed": 0} if name == "glass_blur" else {}
    out = [
        np.asarray(fn(Image.fromarray(img) if takes_pil else img, severity, **seeded), dtype=np.float64) for img in u8
    ]
    return np.stack(out) / 255


@pytest.mark.parametrize(
    "name, atol",
    [
        ("defocus_blur", 1e-6),  # float32 kernel and filter in cv2
        ("zoom_blur", 1e-5),  # float32 in scipy's zoom
        ("brightness", 1e-6),  # via HSV in scikit-image
        ("contrast", 1e-12),
        ("pixelate", 1.01 / 255),  # PIL rounds to uint8 after each resize; trainviz stays float
        ("jpeg_compression", 0.0),  # the same libjpeg through PIL
    ],
)
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_deterministic_corruptions_match_imagecorruptions(name, atol, severity):
    u8 = _images(2)
    np.testing.assert_allclose(_ours(u8, name, severity), _reference(u8, name, severity), rtol=0, atol=atol)


@pytest.mark.parametrize("severity", [1, 5])
def test_motion_blur_matches_the_reference_kernel_at_the_same_angle(severity):
    p = CORRUPTION_PARAM_SETS["imagenet-c"]["motion_blur"][severity - 1]
    u8 = _images(2, size=56)
    angles = [-31.0, 40.0]
    ours = blur_module._motion_blur(
        torch.from_numpy(u8).permute(0, 3, 1, 2).double(), p["radius"], p["sigma"], torch.tensor(angles)
    )
    ref = np.stack([ic._motion_blur(img, p["radius"], p["sigma"], a) for img, a in zip(u8, angles)])
    np.testing.assert_allclose(ours.permute(0, 2, 3, 1).numpy(), ref, rtol=0, atol=1e-3)  # float32, 0..255


# Random corruptions: the change y - x over images, pixels and channels. Tolerances: the reference's own spread
# between two seeds is well inside them on these images; the uint8 round trips inside the reference (glass blur,
# snow) shift its mean by less than 1/255.
RANDOM = [
    ("gaussian_noise", 3, 0.01),
    ("shot_noise", 3, 0.01),
    ("impulse_noise", 3, 0.015),
    # the reference's mean change is -0.0096 to -0.0106 over its seeds 0-4 on these images, ours 0.00002; std and
    # mean |change| agree to 3e-4. Its uint8 floor explains about 0.002 of the offset; the rest is not traced yet.
    ("glass_blur", 2, 0.015),
    ("snow", 3, 0.04),
    ("fog", 3, 0.03),
    ("elastic_transform", 4, 0.015),
]


@pytest.mark.parametrize("name, severity, atol", RANDOM)
def test_random_corruptions_match_imagecorruptions_in_distribution(name, severity, atol):
    u8 = _images(4, size=48, seed=1)
    x = u8.astype(np.float64) / 255
    np.random.seed(0)  # the reference draws from numpy's global generator
    ref = _reference(u8, name, severity) - x
    ours = _ours(u8, name, severity, seed=0) - x
    assert abs(ours.mean() - ref.mean()) < atol, (ours.mean(), ref.mean())
    assert abs(ours.std() - ref.std()) < 2 * atol, (ours.std(), ref.std())
    assert abs(np.abs(ours).mean() - np.abs(ref).mean()) < 2 * atol
