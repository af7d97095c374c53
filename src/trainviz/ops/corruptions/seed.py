"""Xiaohan Zhang's probes, from "Visualization of encoder-decoder structure of Deep Convolutional Neural Network"
(section 5.3): grayscale, OpenCV's 3x3 and 5x5 Gaussian blur, two channel orders and salt-and-pepper noise.

Zhang's code (``test.py`` of zxh009123/visualization-DCNNs-CSE261-W19-UCSC) corrupts the uint8 BGR array of
``cv2.imread`` and then converts it to RGB for the network; trainviz corrupts RGB tensors in ``[0, 1]``, and
each probe below gives the network what Zhang's code gives it for the same photo (up to the uint8 rounding of
the blur and grey images, at most half a grey level). Each is registered with one severity (``SEED_PROBES``):

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Literal

import torch
from kornia.filters import filter2d_separable
from torch import Tensor

from trainviz.core.checks import check_choice, check_float, check_images, check_positive_int
from trainviz.ops.corruptions._base import _finish, _gaussian_kernel1d, _generator, _luma, _work

__all__ = ["SaltPepperMethod", "channel_order", "gaussian_blur", "grayscale", "salt_and_pepper"]

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
    check_images(x, "x")
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
    check_images(x, "x")
    if check_positive_int("kernel_size", kernel_size) % 2 == 0:
        raise ValueError(f"Expected `kernel_size` to be an odd positive int, got {kernel_size!r}")
    sigma = check_float("sigma", 0.0 if sigma is None else sigma, minimum=0)
    check_choice("border", border, ("reflect", "replicate"))
    xw = _work(x)
    if kernel_size == 1:
        return _finish(xw.clone(), x)
    k = _opencv_gaussian_kernel1d(kernel_size, sigma).to(device=x.device, dtype=xw.dtype)[None]
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
    check_images(x, "x")
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
    check_images(x, "x")
    check_float("amount", amount, 0.0, 1.0)
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
