"""Per-class map maths checked against hand-computed values, numpy/scipy and the model's own forward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from trainviz.models import ClassMapNet
from trainviz.ops.class_maps import (
    PatternTracker,
    class_pattern_means,
    formation_epochs,
    logits_and_maps,
    map_sharpness,
    normalize_maps,
    rank_correlation,
    select_class_maps,
    sharpness_confidence,
    stability_series,
)

NAN = float("nan")


# eq. 10 -----------------------------------------------------------------------------------------------
def test_normalize_maps_is_eq_10_after_clamping_negatives():
    maps = torch.tensor([[[-1.0, 2.0], [0.0, 4.0]], [[3.0, 3.0], [-6.0, 1.5]]])
    expected = torch.tensor([[[0.0, 0.5], [0.0, 1.0]], [[1.0, 1.0], [0.0, 0.5]]])
    assert torch.equal(normalize_maps(maps), expected)
    assert torch.equal(normalize_maps(normalize_maps(maps)), expected)  # idempotent


def test_normalize_maps_guards_maps_without_positive_values():
    maps = torch.stack([torch.zeros(3, 3), -torch.ones(3, 3), torch.full((3, 3), 1e-40)])
    out = normalize_maps(maps)
    assert torch.isfinite(out).all()
    assert torch.equal(out[:2], torch.zeros(2, 3, 3))
    assert torch.equal(out[2], torch.ones(3, 3))  # a tiny but positive map still peaks at 1


def test_normalize_maps_rejects_non_maps():
    with pytest.raises(ValueError, match=r"Expected floating maps of shape \(\*, H, W\)"):
        normalize_maps(torch.ones(4, dtype=torch.long))


# forward ---------------------------------------------------------------------------------------------
def test_logits_and_maps_match_the_models_own_forward_in_batches():
    torch.manual_seed(0)
    net = ClassMapNet(num_classes=5, encoder="small").eval()
    x = torch.randn(7, 3, 32, 32)
    ref_logits, ref_maps = net.forward_with_maps(x)
    rng = torch.get_rng_state()
    logits, maps = logits_and_maps(net, "decoder.class_maps", x, batch_size=3)
    assert torch.equal(torch.get_rng_state(), rng)
    assert not logits.requires_grad and not maps.requires_grad
    torch.testing.assert_close(logits, ref_logits.detach())
    torch.testing.assert_close(maps, ref_maps.detach())
    torch.testing.assert_close(maps.mean((-2, -1)), logits)  # seed eq. 8: GAP of the maps is the logit
    by_module = logits_and_maps(net, net.decoder.class_maps, x)[1]
    torch.testing.assert_close(by_module, maps)


def test_logits_and_maps_reject_a_layer_without_one_map_per_class():
    net = ClassMapNet(num_classes=5, encoder="small").eval()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(
        ValueError, match=r"layer 'encoder' to output per-class maps \(N, K, H, W\) with K = 5.*\(2, 64, 4"
    ):
        logits_and_maps(net, "encoder", x)
    with pytest.raises(ValueError, match="Closest matches: 'decoder.class_maps'"):
        logits_and_maps(net, "decoder.class_map", x)
    flat_out = nn.Sequential(nn.Conv2d(3, 5, 3))  # returns maps, not logits
    with pytest.raises(ValueError, match=r"logits of shape \(N, K\)"):
        logits_and_maps(flat_out, "0", x)


# patterns and stability --------------------------------------------------------------------------------
def test_select_class_maps_picks_each_images_class():
    maps = torch.arange(2 * 3 * 1 * 2, dtype=torch.float32).reshape(2, 3, 1, 2)
    out = select_class_maps(maps, torch.tensor([2, 0]))
    assert torch.equal(out, torch.stack([maps[0, 2], maps[1, 0]]))


def test_class_pattern_means_by_hand():
    maps = torch.zeros(3, 3, 1, 2)
    maps[0, 0] = torch.tensor([[2.0, 1.0]])  # class 0 image: own map normalised -> [1, .5]
    maps[1, 0] = torch.tensor([[-1.0, 3.0]])  # class 0 image: -> [0, 1]
    maps[2, 1] = torch.tensor([[4.0, 4.0]])  # class 1 image: -> [1, 1]
    maps[2, 0] = 100.0  # another class's map of that image: not part of class 0's pattern
    means, counts = class_pattern_means(maps, torch.tensor([0, 0, 1]))
    assert counts.tolist() == [2, 1, 0]
    torch.testing.assert_close(means, torch.tensor([[[0.5, 0.75]], [[1.0, 1.0]], [[0.0, 0.0]]]))


def test_stability_series_on_constructed_patterns():
    torch.manual_seed(0)
    base = torch.rand(2, 4, 4)
    other = torch.rand(2, 4, 4)
    runs = torch.stack([base, 2 * base + 3, other, torch.zeros_like(base)])  # same shape; unrelated; flat
    s = stability_series(runs)
    assert s.shape == (3, 2)
    torch.testing.assert_close(s[0], torch.ones(2), atol=1e-6, rtol=0)
    for c in range(2):
        expected = np.corrcoef(runs[1, c].flatten().numpy(), runs[2, c].flatten().numpy())[0, 1]
        assert s[1, c].item() == pytest.approx(expected, abs=1e-6)
    assert torch.isnan(s[2]).all()
    assert stability_series(runs[:1]).shape == (0, 2)


def test_formation_epoch_on_a_constructed_stability_series():
    s = torch.tensor(
        [
            [0.20, 0.95, 0.95, 0.95],
            [0.95, 0.50, 0.95, NAN],
            [0.97, 0.96, 0.80, 0.99],
            [0.93, 0.91, 0.92, 0.99],
        ]
    )
    # class 0 forms at 2 (stays above from there), class 1 at 3 (dropped at 2), class 2 at 4 (dropped at 3),
    # class 3 at 3 (NaN counts as below)
    assert formation_epochs(s, [1, 2, 3, 4], threshold=0.9).tolist() == [2, 3, 4, 3]
    assert formation_epochs(s, [1, 2, 3, 4], threshold=0.95).tolist() == [-1, -1, -1, 3]
    assert formation_epochs(s[:0], [], 0.9).tolist() == [-1, -1, -1, -1]
    with pytest.raises(ValueError, match=r"Expected `threshold` to be a float in \(0, 1\], got 1.5"):
        formation_epochs(s, [1, 2, 3, 4], threshold=1.5)
    with pytest.raises(ValueError, match="Expected 4 epochs"):
        formation_epochs(s, [1, 2], 0.9)


def test_pattern_tracker_agrees_with_the_functions_and_survives_a_state_round_trip():
    torch.manual_seed(1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    runs = [class_pattern_means(torch.randn(6, 3, 4, 4) + k, labels)[0] for k in range(4)]
    tracker = PatternTracker(threshold=0.5)
    assert tracker.update(0, runs[0]) is None
    torch.testing.assert_close(tracker.update(2, runs[2]), stability_series(torch.stack([runs[0], runs[2]]))[0])
    # a late epoch is inserted in order
    torch.testing.assert_close(tracker.update(1, runs[1]), stability_series(torch.stack(runs[:2]))[0])
    tracker.update(3, runs[0])
    tracker.update(3, runs[3])  # a repeated epoch replaces the earlier entry
    assert tracker.epochs == [0, 1, 2, 3]
    series = stability_series(torch.stack(runs))
    torch.testing.assert_close(tracker.stability(), series)
    assert torch.equal(tracker.formation_epochs(), formation_epochs(series, [1, 2, 3], 0.5))
    restored = PatternTracker(threshold=0.5)
    restored.load_state_dict(tracker.state_dict())
    torch.testing.assert_close(restored.stability(), series)
    assert PatternTracker().formation_epochs().tolist() == []


# sharpness ------------------------------------------------------------------------------------------
def test_sharpness_by_hand():
    flat, hot, two, zero = torch.ones(4, 4), torch.zeros(4, 4), torch.zeros(4, 4), torch.zeros(4, 4)
    hot[1, 2] = 5.0
    two[0, 0] = two[3, 3] = 1.0
    maps = torch.stack([flat, hot, two, zero, -hot])
    assert map_sharpness(maps, "peak_to_mean").tolist() == pytest.approx([1.0, 16.0, 8.0, 1.0, 1.0])
    # two equal hot pixels of 16: entropy log 2, sharpness 1 - log 2 / log 16 = 0.75
    assert map_sharpness(maps, "entropy").tolist() == pytest.approx([0.0, 1.0, 0.75, 0.0, 0.0], abs=1e-6)
    torch.testing.assert_close(map_sharpness(7 * maps), map_sharpness(maps))  # scale-invariant
    with pytest.raises(ValueError, match="at least 2 pixels"):
        map_sharpness(torch.ones(2, 1, 1))
    with pytest.raises(ValueError, match="Expected `measure` to be one of 'peak_to_mean', 'entropy'"):
        map_sharpness(maps, "gini")


@pytest.mark.parametrize("measure", ["peak_to_mean", "entropy"])
def test_sharpness_grows_as_a_blob_narrows(measure):
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    sigmas = [8.0, 4.0, 2.0, 1.0, 0.5]
    blobs = torch.stack([torch.exp(-((yy - 7) ** 2 + (xx - 9) ** 2) / (2 * s**2)) for s in sigmas])
    values = map_sharpness(blobs, measure)
    assert (values.diff() > 0).all(), values


def test_rank_correlation_matches_scipy_with_ties():
    g = torch.Generator().manual_seed(0)
    for n in (3, 10, 57):
        x = torch.randint(0, 5, (n,), generator=g).double()  # many ties
        y = x + torch.randn(n, generator=g, dtype=torch.float64)
        assert rank_correlation(x, y).item() == pytest.approx(spearmanr(x.numpy(), y.numpy())[0], abs=1e-12)
    assert math.isnan(rank_correlation(torch.ones(5), torch.arange(5.0)).item())
    assert math.isnan(rank_correlation(torch.arange(2.0), torch.arange(2.0)).item())


def test_sharpness_confidence_on_constructed_predictions():
    # 7 images, 2 classes, 4x4 maps: the predicted class's map of image i has i + 1 hot pixels on a flat
    # background, so its sharpness falls with i; the confidence falls with i for the correct ones (seed 5.2's
    # claim holds: rho = +1) and rises for the wrong ones (rho = -1).
    n, k = 7, 2
    pred = torch.zeros(n, dtype=torch.long)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    conf = torch.tensor([0.95, 0.9, 0.8, 0.7, 0.55, 0.6, 0.65])
    probs = torch.stack([conf, 1 - conf], 1)
    maps = torch.zeros(n, k, 4, 4)
    maps[:, 0] = 1.0
    for i in range(n):
        maps[i, 0].view(-1)[: i + 1] = 10.0
    sharp = map_sharpness(maps[:, 0])
    assert (sharp.diff() < 0).all()
    out = sharpness_confidence(maps, probs, labels)
    correct = pred == labels
    assert out["n_correct"].item() == 4 and out["n_wrong"].item() == 3
    assert out["corr_correct"].item() == pytest.approx(1.0)
    assert out["corr_wrong"].item() == pytest.approx(-1.0)
    assert out["corr_correct"].item() == pytest.approx(spearmanr(sharp[correct], conf[correct])[0])
    assert out["mean_correct"].item() == pytest.approx(sharp[correct].double().mean().item())
    assert out["mean_wrong"].item() == pytest.approx(sharp[~correct].double().mean().item())
    two_wrong = sharpness_confidence(maps[:6], probs[:6], labels[:6])
    assert math.isnan(two_wrong["corr_wrong"].item())  # fewer than 3 wrong predictions
    all_right = sharpness_confidence(maps, probs, pred)
    assert all_right["n_wrong"].item() == 0 and math.isnan(all_right["mean_wrong"].item())
