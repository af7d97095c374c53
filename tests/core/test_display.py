"""Pictures of inputs that are not photos: robust percentile scaling against numpy, and the channels shown."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainviz.core.display import (
    Display,
    check_display_channels,
    display_channels_for,
    percentile_scale,
    pictures,
)
from trainviz.core.pixels import check_pixel_range
from trainviz.data.base import Normalization


def _numpy_scale(x: np.ndarray, low: float, high: float) -> np.ndarray:
    out = np.empty_like(x, dtype=np.float64)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            p_low, p_high = np.percentile(x[i, c], [low, high])  # numpy's default: linear interpolation
            out[i, c] = 0.0 if p_high == p_low else np.clip((x[i, c] - p_low) / (p_high - p_low), 0, 1)
    return out


@pytest.mark.parametrize("low, high", [(1.0, 99.0), (0.0, 100.0), (2.5, 97.5), (25.0, 75.0)])
def test_percentile_scale_matches_numpy_per_image_and_channel(low, high):
    g = torch.Generator().manual_seed(0)
    # CT-like values in Hounsfield units (air -1000 .. bone 2000), each image and channel with its own spread
    x = -1000 + 3000 * torch.rand(3, 2, 17, 23, generator=g) ** torch.tensor([1.0, 3.0]).view(1, 2, 1, 1)
    got = percentile_scale(x, low, high).numpy()
    np.testing.assert_allclose(got, _numpy_scale(x.double().numpy(), low, high), atol=1e-5)
    assert got.min() == 0 and got.max() == 1


def test_percentile_scale_is_robust_to_outliers_and_flat_channels():
    x = torch.linspace(0, 1, 1000).view(1, 1, 25, 40).repeat(1, 2, 1, 1)
    x[0, 0, 0, 0] = 1e6  # one hot outlier: the 99th percentile ignores it, min-max would squash the image
    x[0, 1] = 7.0  # a flat channel shows as 0
    out = percentile_scale(x)
    assert out[0, 1].abs().max() == 0
    assert 0.4 < out[0, 0].median() < 0.6
    with pytest.raises(ValueError, match="percentiles"):
        percentile_scale(x, 99, 1)


def test_display_of_photos_is_the_normalisation_undone_and_of_other_inputs_the_percentiles():
    norm = Normalization((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(Display(norm, (0, 1, 2))(x), norm.denormalize(x))
    assert torch.equal(pictures(x, norm, None), norm.denormalize(x)) and torch.equal(pictures(x, None), x)
    hu = 3000 * torch.rand(2, 4, 8, 8) - 1000
    shown = Display(None, (3, 1, 0))(hu)
    assert shown.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(shown.numpy(), _numpy_scale(hu[:, [3, 1, 0]].double().numpy(), 1, 99), atol=1e-5)
    assert Display(None, (0,)).channels_of(hu).shape == (2, 1, 8, 8)
    assert Display(None, (0,), (1.0, 99.0)).record() == {
        "scaling": "percentile",
        "per": "image and channel",
        "percentiles": [1.0, 99.0],
        "channels": [0],
    }


def test_display_channels_default_and_checks():
    assert [display_channels_for(c, None) for c in (1, 2, 3, 4, 13)] == [(0,), (0,), (0, 1, 2), (0,), (0,)]
    assert check_display_channels(2) == (2,) and check_display_channels([3, 1, 0]) == (3, 1, 0)
    assert display_channels_for(4, (3, 1, 0)) == (3, 1, 0)
    for bad in ([0, 1], [-1], "rgb", [True], 1.5):
        with pytest.raises(ValueError, match="Expected `display_channels`"):
            check_display_channels(bad)
    with pytest.raises(ValueError, match=r"display_channels=\[4\].*have 4"):
        display_channels_for(4, (4,))


def test_the_pixel_range_error_names_pixels_false_for_both_kinds_of_probe():
    hu = torch.full((2, 1, 4, 4), 1500.0)
    with pytest.raises(ValueError, match=r"outside \[0, 1\].*`pixels=False` on Dyn"):
        check_pixel_range(hu, Normalization.identity(1), "identity", "Dyn", needs_pixels=False)
    with pytest.raises(ValueError, match=r"Rob does not apply.*default_callbacks\(pixels=False\)` leaves it out"):
        check_pixel_range(hu, Normalization.identity(1), "identity", "Rob", needs_pixels=True)
