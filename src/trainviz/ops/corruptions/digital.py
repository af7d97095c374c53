"""The ImageNet-C digital corruptions (Hendrycks & Dietterich 2019) with CIFAR-10-C parameters: contrast, elastic
transform, pixelate (PIL's box filter) and JPEG compression."""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
import torch
from kornia.geometry.transform import elastic_transform2d, warp_affine
from torch import Tensor

from trainviz.ops.corruptions._base import (
    _NOT_ONE_OR_THREE,
    _ONE_OR_THREE,
    _documented,
    _finish,
    _generator,
    _uniform,
    _work,
)
from trainviz.ops.corruptions.params import _params

__all__ = ["contrast", "elastic_transform", "jpeg_compression", "pixelate"]

_CONTRAST_EXAMPLE = """>>> contrast(torch.tensor([0.0, 1.0]).view(1, 1, 1, 2), 2).flatten().tolist()
[0.25, 0.75]"""


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


@_documented(random=False, example=_CONTRAST_EXAMPLE)
def contrast(x: Tensor, severity: int = 1, *, param_set: str = "auto") -> Tensor:
    """Scale each channel's deviation from its spatial mean by ``factor``."""
    factor = _params("contrast", x, severity, param_set)["factor"]
    xw = _work(x)
    means = xw.mean(dim=(2, 3), keepdim=True)
    return _finish((xw - means) * factor + means, x)


@_documented(random=True, x_shape="H and W at least 2")
def elastic_transform(
    x: Tensor, severity: int = 1, *, generator: torch.Generator | None = None, seed: int = 0, param_set: str = "auto"
) -> Tensor:
    """Random affine warp, then a smooth random displacement field (make_cifar_c.py's ``elastic_transform``).

    With ``s = min(H, W)``: three control points at the centre ``± s // 3`` move by ``U(-affine s, affine s)``
    each; then every pixel moves by uniform noise in ``[-1, 1]`` smoothed by a Gaussian of ``sigma s`` (radius
    ``int(3 sigma s + 0.5)``) and scaled by ``alpha s`` pixels. Bilinear sampling, reflect-101 border.
    """
    p = _params("elastic_transform", x, severity, param_set)
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


@_documented(random=False)
def pixelate(x: Tensor, severity: int = 1, *, param_set: str = "auto") -> Tensor:
    """Downsample to ``int(size factor)`` and back with PIL's box filter, as batched matrix products."""
    factor = _params("pixelate", x, severity, param_set)["factor"]
    xw = _work(x)
    h, w = xw.shape[-2:]
    sh, sw = max(int(h * factor), 1), max(int(w * factor), 1)
    rows = (_box_resize_matrix(sh, h) @ _box_resize_matrix(h, sh)).to(device=x.device, dtype=xw.dtype)
    cols = (_box_resize_matrix(sw, w) @ _box_resize_matrix(w, sw)).to(device=x.device, dtype=xw.dtype)
    return _finish(rows @ xw @ cols.T, x)


@_documented(
    random=False,
    images="with 1 or 3 channels",
    x_shape=_ONE_OR_THREE,
    output="multiples of 1/255",
    raises=_NOT_ONE_OR_THREE,
)
def jpeg_compression(x: Tensor, severity: int = 1, *, param_set: str = "auto") -> Tensor:
    """JPEG encode and decode at ``quality``, after rounding to 8 bits (``round(255 x)``).

    Uses ``torchvision.transforms.v2.functional.jpeg`` when torchvision is importable (its deprecation warning
    silenced), else PIL one image at a time; both give PIL's bytes exactly. Encoding runs on the CPU: the images
    are copied there and back.
    """
    quality = _params("jpeg_compression", x, severity, param_set)["quality"]
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
