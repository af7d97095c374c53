"""Corruptions checked against hand computations, scipy, OpenCV, PIL and the make_cifar_c.py algorithms."""

from __future__ import annotations

import colorsys
import io
import math

import numpy as np
import pytest
import scipy.ndimage
import torch
from PIL import Image

from trainviz.ops import corruptions as C
from trainviz.ops.corruptions import (
    IMAGENET_C,
    SEED_PROBES,
    Corruption,
    blur,
    channel_order,
    corrupt,
    digital,
    gaussian_blur,
    grayscale,
    list_corruptions,
    register_corruption,
    registry,
    salt_and_pepper,
    weather,
)

DETERMINISTIC = {"defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "jpeg_compression"}
RANDOM = ["salt_pepper_0.005", "salt_pepper_0.0005"] + [n for n in IMAGENET_C if n not in DETERMINISTIC]


def scene(n: int = 4, size: int = 32, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """Smooth gradients with a disc and a square plus mild noise: image-like, values inside (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    base = torch.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.5 + 0.0 * xx])[:channels]
    images = []
    for i in range(n):
        img = base.clone()
        cx, cy = 0.3 + 0.1 * i, 0.4
        img[:, (xx - cx) ** 2 + (yy - cy) ** 2 < 0.05] = torch.tensor([0.9, 0.2, 0.1])[:channels, None]
        img[:, (xx > 0.6) & (xx < 0.9) & (yy > 0.55) & (yy < 0.85)] = torch.tensor([0.1, 0.2, 0.8])[:channels, None]
        images.append(img)
    x = torch.stack(images) + 0.03 * torch.randn(n, channels, size, size, generator=g)
    return x.clamp(0.02, 0.98)


# ----------------------------------------------------------------------------------------- seed probes


def test_grayscale_is_bt601_luma_by_hand():
    x = scene()
    y = grayscale(x)
    luma = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    for c in range(3):
        torch.testing.assert_close(y[:, c], luma, rtol=0, atol=1e-6)
    assert grayscale(torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)).flatten().tolist() == pytest.approx([0.299] * 3)
    one = scene(channels=1)
    assert torch.equal(grayscale(one), one)


@pytest.mark.parametrize("border, scipy_mode", [("reflect", "mirror"), ("replicate", "nearest")])
@pytest.mark.parametrize("k, sigma", [(3, 0.8), (5, 1.1), (5, 0.7), (11, None)])
def test_gaussian_blur_with_a_sigma_matches_scipy(k, sigma, border, scipy_mode):
    x = scene(n=2, size=16).double()
    y = gaussian_blur(x, k, sigma, border=border)
    s = 0.3 * ((k - 1) * 0.5 - 1) + 0.8 if sigma is None else sigma  # OpenCV's sigma for k > 7
    radius = k // 2
    ref = scipy.ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, s, s), mode=scipy_mode, truncate=radius / s)
    np.testing.assert_allclose(y.numpy(), ref, rtol=0, atol=1e-12)


# Zhang's test.py works on the uint8 BGR array of cv2.imread and converts it with BGR2RGB for the network;
# these helpers run an OpenCV operation that way on trainviz's RGB tensors.


def _bgr(x: torch.Tensor) -> np.ndarray:
    """The (H, W, 3) BGR array cv2.imread would give for the RGB image x[0] (float32, or uint8-valued)."""
    cv2 = pytest.importorskip("cv2")
    return np.ascontiguousarray(cv2.cvtColor(x[0].permute(1, 2, 0).numpy(), cv2.COLOR_RGB2BGR))


def _rgb_tensor(bgr: np.ndarray) -> torch.Tensor:
    cv2 = pytest.importorskip("cv2")
    return torch.from_numpy(np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))).permute(2, 0, 1)[None]


def _random_image(kind: str, seed: int = 0, h: int = 19, w: int = 24) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    if kind == "float32":
        img = rng.random((3, h, w), dtype=np.float32)
    else:  # uint8-valued floats, as ToTensor() of a photo
        img = (rng.integers(0, 256, (3, h, w)) / 255).astype(np.float32)
    return torch.from_numpy(img)[None]


@pytest.mark.parametrize("kind", ["float32", "uint8-valued"])
@pytest.mark.parametrize("k, sigma", [(3, 0), (5, 0), (3, None), (7, 0), (3, 0.8), (5, 1.1), (5, 2.3), (13, 0)])
def test_gaussian_blur_matches_opencv(kind, k, sigma):
    cv2 = pytest.importorskip("cv2")
    x = _random_image(kind)
    ref = cv2.GaussianBlur(x[0].permute(1, 2, 0).numpy(), (k, k), 0 if sigma is None else sigma)
    np.testing.assert_allclose(gaussian_blur(x, k, sigma)[0].permute(1, 2, 0).numpy(), ref, rtol=0, atol=1e-6)


def test_opencv_sigma_zero_is_a_fixed_kernel_not_the_sigma_rule():
    cv2 = pytest.importorskip("cv2")
    delta = torch.zeros(1, 1, 9, 9)
    delta[0, 0, 4, 4] = 1.0
    for k in (1, 3, 5, 7):
        kernel = cv2.getGaussianKernel(k, 0)
        r = k // 2
        np.testing.assert_allclose(
            gaussian_blur(delta, k)[0, 0, 4 - r : 5 + r, 4 - r : 5 + r].numpy(), kernel @ kernel.T, rtol=0, atol=1e-7
        )
    np.testing.assert_allclose(cv2.getGaussianKernel(3, 0).ravel(), [0.25, 0.5, 0.25])
    x = _random_image("float32")
    for k, rule in ((3, 0.8), (5, 1.1)):
        assert float((gaussian_blur(x, k) - gaussian_blur(x, k, rule)).abs().max()) > 0.01
    with pytest.raises(ValueError, match="`sigma`"):
        gaussian_blur(x, 3, -1.0)


@pytest.mark.parametrize("name, k", [("gaussian_blur_3x3", 3), ("gaussian_blur_5x5", 5)])
def test_blur_probes_are_zhangs_cv2_gaussian_blur_on_the_uint8_photo(name, k):
    cv2 = pytest.importorskip("cv2")
    x = _random_image("uint8-valued", seed=1, h=32, w=32)
    photo = (_bgr(x) * 255).round().astype(np.uint8)
    zhang = _rgb_tensor(cv2.GaussianBlur(photo, (k, k), 0)).double()  # uint8: OpenCV rounds to grey levels
    ours = corrupt(x, name).double() * 255
    assert float((ours - zhang).abs().max()) <= 0.5 + 1e-3
    float_ref = _rgb_tensor(cv2.GaussianBlur(_bgr(x), (k, k), 0))
    torch.testing.assert_close(corrupt(x, name), float_ref, rtol=0, atol=1e-6)


def test_grayscale_probe_is_opencvs_bgr2gray():
    cv2 = pytest.importorskip("cv2")
    x = _random_image("float32")
    grey = cv2.cvtColor(cv2.cvtColor(_bgr(x), cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    torch.testing.assert_close(corrupt(x, "grayscale"), _rgb_tensor(grey), rtol=0, atol=1e-6)
    u8 = _random_image("uint8-valued")
    photo = (_bgr(u8) * 255).round().astype(np.uint8)
    grey_u8 = _rgb_tensor(cv2.cvtColor(cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)).double()
    assert float((grayscale(u8).double() * 255 - grey_u8).abs().max()) <= 0.5 + 1e-2


def test_channel_probes_give_the_network_what_zhangs_code_gives_it():
    cv2 = pytest.importorskip("cv2")
    x = _random_image("uint8-valued")
    b, g, r = cv2.split(_bgr(x))
    zhang_brg = _rgb_tensor(cv2.merge([b, r, g]))  # test.py: merge([b, r, g]) of the BGR array, then BGR2RGB
    assert torch.equal(corrupt(x, "channels_brg"), zhang_brg)
    assert torch.equal(zhang_brg, torch.stack([x[:, 1], x[:, 0], x[:, 2]], 1))  # (G, R, B): red <-> green
    # [B, G, R] as the paper words it: the network sees B, G, R where it saw R, G, B (= cv2's BGR array as is)
    assert torch.equal(corrupt(x, "channels_bgr"), torch.from_numpy(_bgr(x)).permute(2, 0, 1)[None])
    assert C.CORRUPTION_PARAMS["channels_brg"][0]["order"] == (1, 0, 2)


def test_channel_orders_exact():
    x = scene()
    assert torch.equal(channel_order(x, (2, 1, 0)), torch.stack([x[:, 2], x[:, 1], x[:, 0]], 1))
    assert torch.equal(corrupt(x, "channels_bgr"), torch.stack([x[:, 2], x[:, 1], x[:, 0]], 1))
    assert torch.equal(corrupt(x, "channels_brg"), torch.stack([x[:, 1], x[:, 0], x[:, 2]], 1))
    with pytest.raises(ValueError, match="needs 3 channels"):
        channel_order(scene(channels=1), (0, 1, 2))
    with pytest.raises(ValueError, match="needs 3 channels"):
        corrupt(scene(channels=1), "channels_bgr")
    with pytest.raises(ValueError, match="permutation"):
        channel_order(x, (0, 0, 1))


def _zhang_salt_pepper_numpy(img_raw: np.ndarray, amount: float, rng: np.random.RandomState) -> np.ndarray:
    """test.py's salt and pepper, verbatim but for `tuple(coords)` (the numpy of 2019 read the list as one)."""
    s_vs_p = 0.5
    out = np.copy(img_raw)
    num_salt = np.ceil(amount * img_raw.size * s_vs_p)
    coords = [rng.randint(0, i - 1, int(num_salt)) for i in img_raw.shape]
    out[tuple(coords)] = 255
    num_pepper = np.ceil(amount * img_raw.size * (1.0 - s_vs_p))
    coords = [rng.randint(0, i - 1, int(num_pepper)) for i in img_raw.shape]
    out[tuple(coords)] = 0
    return out


def test_zhang_salt_and_pepper_matches_his_numpy_code_in_distribution():
    n, h, w, amount = 400, 12, 10, 0.05
    rng = np.random.RandomState(0)
    grey = np.full((h, w, 3), 128, np.uint8)  # BGR
    ref = np.stack([_zhang_salt_pepper_numpy(grey, amount, rng) for _ in range(n)])  # (n, h, w, 3) BGR
    ref_rgb = torch.from_numpy(ref[..., ::-1].copy()).permute(0, 3, 1, 2)  # (n, 3, h, w) RGB
    ours = salt_and_pepper(torch.full((n, 3, h, w), 0.5), amount, seed=0, method="zhang")
    # the same support: never the last row, the last column or red (BGR's last channel)
    assert torch.equal((ours != 0.5).any(0), (ref_rgb != 128).any(0))
    assert not (ours[:, 0] != 0.5).any() and not (ours[:, :, -1] != 0.5).any() and not (ours[..., -1] != 0.5).any()
    # the same counts: ceil(0.05 * 360 / 2) = 9 salt and 9 pepper draws with replacement, pepper last
    for value, ref_value in ((1.0, 255), (0.0, 0)):
        got = (ours == value).flatten(1).sum(1).double()
        want = torch.from_numpy((ref == ref_value).reshape(n, -1).sum(1)).double()
        assert got.max() <= 9 and want.max() <= 9
        se = math.sqrt(got.var() / n + want.var() / n)
        assert abs(float(got.mean() - want.mean())) < 4 * se, (float(got.mean()), float(want.mean()))


def test_salt_pepper_probes_draw_zhangs_counts():
    x = torch.full((64, 3, 64, 64), 0.5)
    for name, draws in (("salt_pepper_0.005", 31), ("salt_pepper_0.0005", 4)):  # ceil(lambda 12288 / 2)
        assert C.CORRUPTION_PARAMS[name][0] == {"amount": float(name.split("_")[-1]), "method": "zhang"}
        y = corrupt(x, name, seed=2)
        assert torch.equal(y, salt_and_pepper(x, C.CORRUPTION_PARAMS[name][0]["amount"], seed=2, method="zhang"))
        salt = (y == 1).flatten(1).sum(1)
        pepper = (y == 0).flatten(1).sum(1)
        assert int(salt.max()) == draws and int(pepper.max()) == draws  # most images draw no coordinate twice
        assert int(salt.min()) >= draws - 3 and int(pepper.min()) >= draws - 3
        assert not (y[:, 0] != 0.5).any()  # red never (test.py's randint(0, ch - 1))
    one = corrupt(torch.full((8, 1, 64, 64), 0.5), "salt_pepper_0.005", seed=2)
    assert int((one == 1).flatten(1).sum(1).max()) == math.ceil(0.005 * 4096 / 2)
    with pytest.raises(ValueError, match="at least 2"):
        salt_and_pepper(torch.zeros(1, 3, 1, 8), 0.1, method="zhang")
    with pytest.raises(ValueError, match="`method`"):
        salt_and_pepper(x, 0.1, method="numpy")  # type: ignore[arg-type]


def test_salt_and_pepper_counts_values_and_coloured_specks():
    n, amount = 64, 0.005
    x = scene(n=n)  # all values strictly inside (0, 1): every chosen element changes
    y = salt_and_pepper(x, amount, seed=3)
    changed = y != x
    m = round(amount * 3 * 32 * 32)
    assert changed.flatten(1).sum(1).tolist() == [m] * n
    assert set(y[changed].unique().tolist()) <= {0.0, 1.0}
    total = n * m
    salt = int((y[changed] == 1).sum())
    assert abs(salt - total / 2) < 4 * math.sqrt(total / 4)  # binomial(total, 1/2), 4 sigma
    pixels_hit = changed.any(1).sum()
    pixels_all_channels = changed.all(1).sum()
    assert pixels_all_channels < pixels_hit  # per element: specks are coloured, not grey
    assert pixels_hit > 0.9 * total  # with 15 of 3072 elements, chosen elements rarely share a pixel
    assert (salt_and_pepper(x, 0.0005, seed=3) != x).flatten(1).sum(1).eq(round(0.0005 * 3072)).all()
    assert torch.equal(C.impulse_noise(x, 1, seed=3), salt_and_pepper(x, 0.01, seed=3, method="distinct"))


# ----------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", RANDOM)
def test_same_seed_same_output_different_seed_differs(name):
    x = scene()
    a = corrupt(x, name, 5 if name in IMAGENET_C else 1, seed=7)
    b = corrupt(x, name, 5 if name in IMAGENET_C else 1, seed=7)
    c = corrupt(x, name, 5 if name in IMAGENET_C else 1, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_deterministic_corruptions_ignore_the_seed():
    x = scene()
    for name in sorted(DETERMINISTIC) + ["grayscale", "gaussian_blur_3x3", "channels_brg"]:
        assert torch.equal(corrupt(x, name, 1, seed=0), corrupt(x, name, 1, seed=1)), name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", RANDOM)
def test_same_noise_on_cpu_and_gpu(name):
    x = scene()
    severity = 3 if name in IMAGENET_C else 1
    on_gpu = corrupt(x.cuda(), name, severity, seed=4)
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), corrupt(x, name, severity, seed=4), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in RANDOM if n in IMAGENET_C])
def test_generator_argument_equals_seed(name):
    x = scene()
    fn = getattr(C, name)
    assert torch.equal(fn(x, 4, generator=torch.Generator().manual_seed(5)), fn(x, 4, seed=5))
    assert torch.equal(fn(x, 4, seed=5), corrupt(x, name, 4, seed=5))


def test_global_rng_untouched_by_every_corruption():
    x = scene(n=2)
    torch.manual_seed(1234)
    np.random.seed(1234)
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    for name in list_corruptions():
        for severity in range(1, C.corruption_spec(name).severities + 1):
            corrupt(x, name, severity, seed=1)
        assert torch.equal(torch.get_rng_state(), torch_state), name
        after = np.random.get_state()
        assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:], name


def test_dtype_and_half_precision_kept():
    x = scene(n=2)
    for name in ("gaussian_noise", "motion_blur", "jpeg_compression", "elastic_transform"):
        y64 = corrupt(x.double(), name, 3)
        y16 = corrupt(x.half(), name, 3)
        assert y64.dtype == torch.float64 and y16.dtype == torch.float16
        torch.testing.assert_close(y64.float(), corrupt(x, name, 3), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------- the ImageNet-C suite


@pytest.mark.parametrize("name", IMAGENET_C)
def test_every_severity_valid_and_severity_5_stronger_than_1(name):
    x = scene()
    diffs = []
    for severity in range(1, 6):
        y = corrupt(x, name, severity, seed=2)
        assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1
        diffs.append(float((y - x).abs().mean()))
    if name != "elastic_transform":  # see test_elastic_local_distortion_grows_with_severity
        assert diffs[4] > diffs[0], diffs


def test_elastic_local_distortion_grows_with_severity():
    """CIFAR-10-C's elastic trades a global affine (jitter .08 -> .03 of the size) for local displacement
    (alpha .0 -> .1), so the mean difference from the clean image shrinks with severity. On a linear ramp an
    affine warp stays linear, so the interior Laplacian measures the local part alone: it must grow."""
    i = torch.arange(32.0)
    ramp = (0.1 + 0.8 * (i[:, None] + 2 * i[None, :]) / 93).expand(4, 3, 32, 32)

    def roughness(severity):
        y = corrupt(ramp, "elastic_transform", severity, seed=2)[..., 4:-4, 4:-4]
        lap = 4 * y[..., 1:-1, 1:-1] - y[..., :-2, 1:-1] - y[..., 2:, 1:-1] - y[..., 1:-1, :-2] - y[..., 1:-1, 2:]
        return float(lap.abs().mean())

    assert roughness(1) < 1e-5
    assert roughness(5) > 10 * roughness(2) > 0


@pytest.mark.parametrize("name", IMAGENET_C)
def test_one_channel_images(name):
    x = scene(channels=1)
    y = corrupt(x, name, 3, seed=1)
    assert y.shape == x.shape and torch.isfinite(y).all() and y.min() >= 0 and y.max() <= 1


def test_gaussian_noise_statistics():
    x = torch.full((8, 3, 32, 32), 0.5)
    noise = corrupt(x, "gaussian_noise", 5, seed=0) - x  # sigma 0.1: clipping at 5 sigma never happens
    assert abs(float(noise.mean())) < 4 * 0.1 / math.sqrt(noise.numel())
    assert float(noise.std()) == pytest.approx(0.1, rel=0.03)


def test_shot_noise_is_poisson_over_rate():
    x = torch.full((8, 3, 32, 32), 0.4)
    y = corrupt(x, "shot_noise", 5, seed=0)  # rate 50: Poisson(20) / 50
    counts = y * 50
    torch.testing.assert_close(counts, counts.round(), rtol=0, atol=1e-4)
    assert float(counts.mean()) == pytest.approx(20, rel=0.02)
    assert float(counts.var()) == pytest.approx(20, rel=0.1)


def test_defocus_blur_matches_make_cifar_c_with_opencv():
    cv2 = pytest.importorskip("cv2")
    x = scene(n=2)
    for severity, (radius, alias) in enumerate([(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)], 1):
        L = np.arange(-8, 8 + 1)
        X, Y = np.meshgrid(L, L)
        disk = np.array((X**2 + Y**2) <= radius**2, dtype=np.float32)
        disk /= disk.sum()
        kernel = cv2.GaussianBlur(disk, ksize=(3, 3), sigmaX=alias)
        ref = np.stack([np.stack([cv2.filter2D(img[c], -1, kernel) for c in range(3)]) for img in x.numpy()]).clip(0, 1)
        np.testing.assert_allclose(corrupt(x, "defocus_blur", severity).numpy(), ref, atol=2e-6)


def _clipped_zoom_scipy(img: np.ndarray, zoom: float) -> np.ndarray:
    h = img.shape[0]
    ch = int(np.ceil(h / zoom))
    top = (h - ch) // 2
    out = scipy.ndimage.zoom(img[top : top + ch, top : top + ch], (zoom, zoom, 1), order=1)
    trim = (out.shape[0] - h) // 2
    return out[trim : trim + h, trim : trim + h]


def test_zoom_blur_matches_make_cifar_c_with_scipy():
    x = scene(n=2).double()
    for severity, end in enumerate([1.06, 1.11, 1.16, 1.21, 1.26], 1):
        zooms = np.arange(1, end, 0.01)
        assert len(zooms) == len(C.CORRUPTION_PARAMS["zoom_blur"][severity - 1]["zooms"])
        ref = []
        for img in x.permute(0, 2, 3, 1).numpy():
            out = np.zeros_like(img)
            for z in zooms:
                out += _clipped_zoom_scipy(img, z)
            ref.append(np.clip((img + out) / (len(zooms) + 1), 0, 1))
        ref = np.stack(ref).transpose(0, 3, 1, 2)
        np.testing.assert_allclose(corrupt(x, "zoom_blur", severity).numpy(), ref, atol=1e-9)


def test_pixelate_matches_pil_box_resize():
    x = scene(n=2)
    for severity, factor in enumerate([0.95, 0.9, 0.85, 0.75, 0.65], 1):
        small = int(32 * factor)
        ref = np.empty(x.shape, dtype=np.float32)
        for i, img in enumerate(x.numpy()):
            for c in range(3):
                pil = Image.fromarray(img[c], mode="F").resize((small, small), Image.BOX).resize((32, 32), Image.BOX)
                ref[i, c] = np.asarray(pil)
        np.testing.assert_allclose(corrupt(x, "pixelate", severity).numpy(), ref.clip(0, 1), atol=1e-6)


@pytest.mark.parametrize("quality_severity", [1, 3, 5])
def test_jpeg_matches_pil_exactly(quality_severity):
    quality = C.CORRUPTION_PARAMS["jpeg_compression"][quality_severity - 1]["quality"]
    x = scene(n=3)
    u8 = (x * 255).round().to(torch.uint8)
    ref = []
    for img in u8.permute(0, 2, 3, 1).numpy():
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        ref.append(np.asarray(Image.open(io.BytesIO(buf.getvalue()))))
    ref = torch.from_numpy(np.stack(ref)).permute(0, 3, 1, 2)
    y = corrupt(x, "jpeg_compression", quality_severity)
    assert torch.equal((y * 255).round().to(torch.uint8), ref)
    assert torch.equal(digital._jpeg_pil(u8, quality), ref)  # the fallback without torchvision
    gray = u8[:, :1]
    gray_out = corrupt(x[:, :1], "jpeg_compression", quality_severity)
    assert torch.equal(digital._jpeg_pil(gray, quality), (gray_out * 255).round().to(torch.uint8))


def test_brightness_matches_hsv_round_trip():
    x = scene(n=1, size=8)
    x[0, :, 0, 0] = 0.0  # a black pixel becomes grey
    for severity, delta in enumerate([0.05, 0.1, 0.15, 0.2, 0.3], 1):
        y = corrupt(x, "brightness", severity)
        ref = torch.empty_like(x)
        for i in range(8):
            for j in range(8):
                h, s, v = colorsys.rgb_to_hsv(*x[0, :, i, j].tolist())
                ref[0, :, i, j] = torch.tensor(colorsys.hsv_to_rgb(h, s, min(v + delta, 1.0)))
        torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)


def test_contrast_by_hand():
    x = scene(n=2)
    means = x.mean(dim=(2, 3), keepdim=True)
    torch.testing.assert_close(corrupt(x, "contrast", 4), ((x - means) * 0.3 + means).clamp(0, 1), rtol=0, atol=1e-7)


def test_glass_blur_severity_1_only_permutes_pixels_locally():
    x = scene(n=2, size=16)
    y = corrupt(x, "glass_blur", 1, seed=4)  # sigma 0.05: blur radius int(0.7) = 0, only the shuffle acts
    assert not torch.equal(x, y)
    for i in range(2):  # each image is a permutation of its own pixels (RGB triples move together)
        a, b = x[i].flatten(1).T.tolist(), y[i].flatten(1).T.tolist()
        assert sorted(a) == sorted(b)
    assert torch.equal(y[:, :, 0], x[:, :, 0]) and torch.equal(y[:, :, :, 0], x[:, :, :, 0])  # never reached


def test_motion_kernel_is_imagemagicks():
    k = blur._motion_kernels(6, 1.5, torch.tensor([0.0, 90.0]))
    width = 13
    w = np.exp(-(np.arange(width) ** 2) / (2 * 1.5**2))
    w /= w.sum()
    centre = width - 1
    np.testing.assert_allclose(k[0, centre, centre:].numpy(), w)  # angle 0: trail along +x
    np.testing.assert_allclose(k[1, centre:, centre].numpy(), w)  # angle 90: trail along +y
    assert k.sum(dim=(1, 2)).tolist() == pytest.approx([1.0, 1.0])
    # applied with replicated edges: out[y, x] = sum_i w_i in[y, min(x + i, W - 1)]
    x = scene(n=1, size=16).double()
    out = blur._motion_blur(x, 6, 1.5, torch.tensor([0.0]))
    idx = torch.clamp(torch.arange(16)[:, None] + torch.arange(width)[None], max=15)
    ref = (x[..., idx] * torch.from_numpy(w)).sum(-1)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)


def _plasma_numpy(uniform, mapsize: int, wibbledecay: float) -> np.ndarray:
    """make_cifar_c.py's plasma_fractal with its np.random.uniform(-w, w, shape) replaced by ``uniform``."""
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize, wibble = mapsize, 100.0

    def wibbledmean(array):
        return array / 4 + wibble * uniform(-wibble, wibble, array.shape)

    while stepsize >= 2:
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(squareaccum)
        drgrid = maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ltsum = drgrid + np.roll(drgrid, 1, axis=0) + (ulgrid + np.roll(ulgrid, -1, axis=1))
        maparray[0:mapsize:stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(ltsum)
        ttsum = drgrid + np.roll(drgrid, 1, axis=1) + (ulgrid + np.roll(ulgrid, -1, axis=0))
        maparray[stepsize // 2 : mapsize : stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)
        stepsize //= 2
        wibble /= wibbledecay
    maparray -= maparray.min()
    return maparray / maparray.max()


def test_plasma_fractal_and_fog_follow_make_cifar_c():
    g = torch.Generator().manual_seed(9)

    def uniform(low, high, shape):
        return low + (high - low) * torch.rand(shape, generator=g, dtype=torch.float64).numpy()

    ref = _plasma_numpy(uniform, 32, 2.5)
    ours = weather._plasma_fractal(1, 32, 2.5, torch.Generator().manual_seed(9))[0].numpy()
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert ours.min() == 0 and ours.max() == 1
    # fog: (x + s plasma) max / (max + s), with the plasma drawn from the same seed
    x = scene(n=2).double()
    plasma = weather._plasma_fractal(2, 32, 2.5, torch.Generator().manual_seed(3))[:, None]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    ref = ((x + 0.75 * plasma) * peak / (peak + 0.75)).clamp(0, 1)
    torch.testing.assert_close(corrupt(x, "fog", 3, seed=3), ref, rtol=0, atol=1e-12)


def test_snow_only_brightens_and_frost_blends_in_bounds():
    x = scene()
    for severity in range(1, 6):
        assert (corrupt(x, "snow", severity, seed=1) >= x - 1e-6).all()
        a, b = C.CORRUPTION_PARAMS["frost"][severity - 1].values()
        y = corrupt(x, "frost", severity, seed=1)
        assert (y >= a * x - 1e-6).all() and (y <= a * x + b + 1e-6).all()
        assert (y - a * x).mean() > 0.05 * b  # the texture is there


def test_elastic_severity_1_is_the_affine_warp_of_opencv():
    cv2 = pytest.importorskip("cv2")
    x = scene(n=2)
    y = corrupt(x, "elastic_transform", 1, seed=6)  # alpha 0: only the random affine
    g = torch.Generator().manual_seed(6)
    jitter = 0.08 * 32
    shifts = (-jitter + 2 * jitter * torch.rand((2, 3, 2), generator=g)).double().numpy()
    pts1 = np.float32([[16 + 10, 16 + 10], [16 + 10, 16 - 10], [16 - 10, 16 - 10]])
    for i, img in enumerate(x.permute(0, 2, 3, 1).numpy()):
        m = cv2.getAffineTransform(pts1, (pts1 + shifts[i]).astype(np.float32))
        ref = cv2.warpAffine(img, m, (32, 32), borderMode=cv2.BORDER_REFLECT_101)
        np.testing.assert_allclose(y[i].permute(1, 2, 0).numpy(), ref.clip(0, 1), atol=2e-3)
    # a larger severity moves pixels further: the displacement field adds to the affine
    assert float((corrupt(x, "elastic_transform", 5, seed=6) - x).abs().mean()) > 0


# ----------------------------------------------------------------------------------------- registry and module


def test_lists_and_registry_contents():
    names = list_corruptions()
    assert names[: len(SEED_PROBES)] == list(SEED_PROBES)
    assert set(IMAGENET_C) <= set(names) and len(IMAGENET_C) == 15
    for name in SEED_PROBES:
        assert C.corruption_spec(name).severities == 1
    for name in IMAGENET_C:
        spec = C.corruption_spec(name)
        assert spec.severities == 5 and spec.params == C.CORRUPTION_PARAMS[name]


def test_unknown_name_and_bad_severity_raise_clear_errors():
    x = scene(n=1)
    with pytest.raises(ValueError, match=r"Unknown corruption 'nope'; valid names: grayscale, "):
        corrupt(x, "nope")
    with pytest.raises(ValueError, match=r"Expected `severity` to be an int in 1\.\.5, got 7"):
        corrupt(x, "fog", 7)
    with pytest.raises(ValueError, match=r"Expected `severity` to be an int in 1\.\.1, got 2"):
        corrupt(x, "grayscale", 2)
    with pytest.raises(ValueError, match=r"in 1\.\.5, got 0"):
        C.gaussian_noise(x, 0)
    with pytest.raises(ValueError, match="shape \\(N, C, H, W\\)"):
        corrupt(x[0], "fog")
    with pytest.raises(ValueError, match="Unknown corruption"):
        Corruption("nope")
    with pytest.raises(ValueError, match="severity"):
        Corruption("fog", severity=6)


def test_register_custom_corruption():
    def invert(x, severity, generator):
        return (1 - x) * (severity / 2) + torch.rand(x.shape, generator=generator) * 0

    register_corruption("test_invert", invert, severities=2, params=[{"scale": 0.5}, {"scale": 1.0}])
    try:
        x = scene(n=2)
        assert "test_invert" in list_corruptions()
        assert torch.equal(corrupt(x, "test_invert", 2), 1 - x)
        assert torch.equal(Corruption("test_invert", 1)(x), (1 - x) * 0.5)
        with pytest.raises(ValueError, match="already registered"):
            register_corruption("test_invert", invert)
        register_corruption("test_invert", lambda x, s, g: x[:, :1], severities=1, overwrite=True)
        with pytest.raises(ValueError, match="returned \\(2, 1, 32, 32\\), expected"):
            corrupt(x, "test_invert")
        with pytest.raises(ValueError, match="one entry per severity"):
            register_corruption("test_bad", invert, severities=3, params=[1])
    finally:
        registry._REGISTRY.pop("test_invert", None)


@pytest.mark.parametrize(
    "name, severity", [("fog", 4), ("grayscale", 1), ("salt_pepper_0.005", 1), ("jpeg_compression", 2)]
)
def test_module_face_agrees_with_function(name, severity):
    x = scene()
    module = Corruption(name, severity, seed=11)
    assert torch.equal(module(x), corrupt(x, name, severity, seed=11))
    assert "seed=11" in repr(module)
