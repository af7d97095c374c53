"""Finding the user's normalisation (torchvision pipelines, wrapped datasets), and refusing a wrong one."""

from __future__ import annotations

import pytest
import torch
from _support import DictItems
from torch.utils.data import ConcatDataset, Subset, TensorDataset
from torchvision import transforms
from torchvision.datasets import FakeData
from torchvision.transforms import v2

from trainviz.core.pixels import as_normalization, check_pixel_range, find_normalization, resolve_normalization
from trainviz.data import Normalization

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _fake(transform):
    return FakeData(size=8, image_size=(3, 8, 8), num_classes=2, transform=transform, random_offset=3)


@pytest.mark.parametrize(
    "pipeline",
    [
        transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)]),
        transforms.Compose(
            [transforms.Compose([transforms.Resize(8), transforms.ToTensor()]), transforms.Normalize(MEAN, STD)]
        ),
        v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(MEAN), list(STD))]),
        torch.nn.Sequential(transforms.Normalize(MEAN, STD)),
    ],
    ids=["v1", "nested", "v2", "sequential"],
)
def test_normalize_is_found_in_the_pipeline(pipeline):
    norm = find_normalization(_fake(pipeline))
    assert norm.mean == pytest.approx(MEAN) and norm.std == pytest.approx(STD)


def test_normalize_is_found_through_subset_concat_and_wrappers():
    ds = _fake(transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)]))

    for wrapped in (Subset(ds, [0, 1]), ConcatDataset([ds, ds]), DictItems(Subset(ds, [2, 3]))):
        assert find_normalization(wrapped).mean == pytest.approx(MEAN)
    assert find_normalization(TensorDataset(torch.rand(2, 3, 4, 4), torch.zeros(2))) is None
    # a Normalize applied only at random is not followed
    assert find_normalization(_fake(transforms.RandomApply([transforms.Normalize(MEAN, STD)], p=0.5))) is None


def test_two_normalize_steps_compose_into_the_mapping_they_apply():
    first, then = transforms.Normalize((0.5, 0.4), (0.2, 0.25)), transforms.Normalize((0.1, -0.3), (2.0, 0.5))
    norm = find_normalization(transforms.Compose([first, then]))
    x = torch.rand(2, 2, 3, 3)
    assert torch.allclose(norm.normalize(x), then(first(x)), atol=1e-6)


def test_specs_accepted_everywhere_and_bad_ones_named():
    assert as_normalization(([0.5, 0.5], [0.25, 0.25])) == Normalization((0.5, 0.5), (0.25, 0.25))
    assert as_normalization({"mean": [0.5], "std": [0.2]}) == Normalization((0.5,), (0.2,))
    assert as_normalization(Normalization((0.1,), (0.3,))) == Normalization((0.1,), (0.3,))
    for bad, match in ((0.5, "pair"), (([0.5], [0.0]), "positive"), (([0.5, 0.5], [0.2]), "same non-zero length")):
        with pytest.raises(ValueError, match=match):
            as_normalization(bad)


def test_resolution_order_and_sources():
    ds = _fake(transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)]))

    class DM:
        normalization = ((0.3, 0.3, 0.3), (0.1, 0.1, 0.1))

    own, shared = Normalization((0.1,) * 3, (0.2,) * 3), ((0.2,) * 3, (0.3,) * 3)
    assert resolve_normalization(own, shared, DM(), ds, 3) == (own, "callback")
    assert resolve_normalization(None, shared, DM(), ds, 3)[1] == "default_callbacks"
    assert resolve_normalization(None, None, DM(), ds, 3)[1] == "datamodule"
    norm, source = resolve_normalization(None, None, None, ds, 3)
    assert source == "transform" and norm.std == pytest.approx(STD)
    assert resolve_normalization(None, None, None, None, 3) == (Normalization.identity(3), "identity")
    with pytest.raises(ValueError, match="2 channels but the probe images have 3"):
        resolve_normalization(((0.5, 0.5), (0.2, 0.2)), None, None, None, 3)


def test_pixel_range_check_names_the_range_and_the_three_fixes():
    pixels = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    pixels[0, :, 0, 0] = 1.0
    norm = Normalization(MEAN, STD)
    check_pixel_range(norm.normalize(pixels), norm, "transform")  # the right mapping passes
    with pytest.raises(ValueError) as err:
        check_pixel_range(norm.normalize(pixels), Normalization.identity(3), "identity")
    message = str(err.value)
    low = float(norm.normalize(pixels)[:, 0].min())
    assert f"[{low:.3g}," in message  # the observed range of channel 0
    for fix in ("`normalization=(mean, std)` on the callback", "default_callbacks(normalization=", "attribute"):
        assert fix in message
    # within the tolerance (float rounding) passes; just outside it does not
    check_pixel_range(pixels + 5e-4, Normalization.identity(3), "identity")
    with pytest.raises(ValueError):
        check_pixel_range(pixels + 5e-3, Normalization.identity(3), "identity")
