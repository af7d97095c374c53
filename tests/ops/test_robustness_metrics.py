"""Robustness metrics against hand-computed values, numpy loops and known identities."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from trainviz.ops.metrics import per_class_accuracy
from trainviz.ops.robustness import (
    accuracy,
    calibration_bins,
    corruption_error,
    expected_calibration_error,
    flip_rate,
    mean_corruption_error,
    nll,
    relative_corruption_error,
    wilson_interval,
)


def ece_numpy_loop(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """The textbook loop (Guo et al.): bins (lower, upper] from linspace, weighted |accuracy - confidence|."""
    edges = np.linspace(0, 1, n_bins + 1)
    conf, pred = probs.max(1), probs.argmax(1)
    ece = 0.0
    for lower, upper in zip(edges[:-1], edges[1:]):
        inside = [i for i in range(len(conf)) if lower < conf[i] <= upper]
        if inside:
            acc = np.mean([pred[i] == labels[i] for i in inside])
            ece += len(inside) / len(conf) * abs(acc - np.mean(conf[inside]))
    return ece


@pytest.mark.parametrize("n_bins", [1, 5, 15])
def test_ece_matches_numpy_loop(n_bins):
    g = torch.Generator().manual_seed(0)
    logits = 2 * torch.randn(500, 7, generator=g)
    probs = logits.softmax(1)
    labels = torch.randint(0, 7, (500,), generator=g)
    labels[:250] = probs[:250].argmax(1)  # half right, so bins have mixed accuracy
    ours = expected_calibration_error(probs, labels, n_bins)
    assert ours.dtype == torch.float64 and ours.ndim == 0
    assert float(ours) == pytest.approx(ece_numpy_loop(probs.double().numpy(), labels.numpy(), n_bins), abs=1e-12)


def test_calibration_bins_give_the_ece_and_match_the_textbook_bins():
    g = torch.Generator().manual_seed(1)
    probs = (3 * torch.randn(300, 5, generator=g)).softmax(1)
    labels = torch.randint(0, 5, (300,), generator=g)
    conf, pred = probs.double().max(1)
    mean_conf, acc, count = calibration_bins(conf, pred == labels)
    assert float(count.sum()) == 300 and mean_conf.shape == acc.shape == (15,)
    gaps = (count / 300 * (acc - mean_conf).abs()).nansum()
    assert float(gaps) == pytest.approx(float(expected_calibration_error(probs, labels)), abs=1e-12)
    edges = np.linspace(0, 1, 16)  # bins (lower, upper]
    hand = [((conf.numpy() > lo) & (conf.numpy() <= hi)).sum() for lo, hi in zip(edges[:-1], edges[1:])]
    assert count.tolist() == hand
    assert torch.isnan(mean_conf[count == 0]).all() and torch.isnan(acc[count == 0]).all()


def test_ece_identities():
    # perfectly calibrated bins: confidence 0.75 with 3 of 4 right, confidence 0.5 (two classes) with 1 of 2 right
    probs = torch.tensor([[0.75, 0.25]] * 4 + [[0.5, 0.5]] * 2)
    labels = torch.tensor([0, 0, 0, 1, 0, 1])
    assert float(expected_calibration_error(probs, labels)) == pytest.approx(0.0, abs=1e-12)
    # confident and always wrong: ECE 1
    assert float(expected_calibration_error(torch.tensor([[1.0, 0.0]] * 3), torch.tensor([1, 1, 1]))) == 1.0
    # one bin: |accuracy - mean confidence|
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 1])
    assert float(expected_calibration_error(probs, labels, 1)) == pytest.approx(abs(2 / 3 - (0.9 + 0.6 + 0.7) / 3))
    # two bins: confidences .9, .6 and .7 all land in (.5, 1], so the same value
    assert float(expected_calibration_error(probs, labels, 2)) == pytest.approx(abs(2 / 3 - (0.9 + 0.6 + 0.7) / 3))
    # a boundary confidence belongs to the lower bin (lower, upper]: 0.5 goes to (0, .5]
    probs = torch.tensor([[0.5, 0.5], [0.8, 0.2]], dtype=torch.float64)
    assert float(expected_calibration_error(probs, torch.tensor([0, 1]), 2)) == pytest.approx(0.5 * 0.5 + 0.5 * 0.8)


def test_nll_from_logits_and_log_probs():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 2])
    z = logits.exp().sum(1)
    hand = (-(2.0 - math.log(z[0])) - (0.0 - math.log(z[1]))) / 2
    assert float(nll(logits, labels)) == pytest.approx(hand)
    assert float(nll(logits.log_softmax(1), labels)) == pytest.approx(hand)  # log-probabilities work as well
    assert float(nll(torch.zeros(4, 10), torch.arange(4))) == pytest.approx(math.log(10), rel=1e-6)


def test_accuracy_flip_rate_per_class_by_hand():
    pred = torch.tensor([0, 1, 2, 2, 1, 0])
    labels = torch.tensor([0, 1, 1, 2, 1, 2])
    assert float(accuracy(pred, labels)) == pytest.approx(4 / 6)
    scores = torch.nn.functional.one_hot(pred, 4).double()
    assert float(accuracy(scores, labels)) == pytest.approx(4 / 6)  # scores: argmax is the prediction
    per_class = per_class_accuracy(pred, labels, 4)
    assert per_class[:3].tolist() == pytest.approx([1.0, 2 / 3, 1 / 2]) and math.isnan(per_class[3])
    assert torch.equal(per_class_accuracy(scores, labels, 4).nan_to_num(-1), per_class.nan_to_num(-1))
    clean = torch.tensor([0, 1, 1, 2, 1, 2])
    assert float(flip_rate(pred, clean)) == pytest.approx(2 / 6)
    assert float(flip_rate(clean, clean)) == 0.0


def test_corruption_errors_by_hand_and_identities():
    err = torch.tensor([[0.10, 0.20, 0.30, 0.40, 0.50], [0.05, 0.05, 0.10, 0.10, 0.20]])
    ref = torch.tensor([[0.20, 0.30, 0.40, 0.50, 0.60], [0.10, 0.10, 0.20, 0.20, 0.40]])
    ce = corruption_error(err, ref)
    assert ce.tolist() == pytest.approx([1.5 / 2.0, 0.5 / 1.0])
    assert float(corruption_error(ref, ref).prod()) == pytest.approx(1.0)  # reference against itself: 1
    assert float(mean_corruption_error(err, ref)) == pytest.approx((0.75 + 0.5) / 2)
    # relative: subtract the clean error at every severity before summing
    rel = relative_corruption_error(err, 0.05, ref, 0.1)
    assert rel.tolist() == pytest.approx([(1.5 - 0.25) / (2.0 - 0.5), (0.5 - 0.25) / (1.0 - 0.5)])
    assert relative_corruption_error(err, 0.0, ref, 0.0).tolist() == pytest.approx(ce.tolist())
    # NaN marks a severity not measured: a corruption with fewer severities in the same table
    padded, padded_ref = err.clone(), ref.clone()
    padded[1, 2:], padded_ref[1, 2:] = float("nan"), float("nan")
    assert corruption_error(padded, padded_ref)[1].item() == pytest.approx(0.1 / 0.2)
    assert float(mean_corruption_error(padded, padded_ref)) == pytest.approx((0.75 + 0.5) / 2)
    relative = relative_corruption_error(padded, 0.0, padded_ref, 0.05)[1].item()
    assert relative == pytest.approx((0.05 + 0.05) / (0.05 + 0.05))
    per_row = relative_corruption_error(err, torch.tensor([0.05, 0.0]), ref, torch.tensor([0.1, 0.0]))
    assert per_row.tolist() == pytest.approx([(1.5 - 0.25) / 1.5, 0.5])
    assert float(mean_corruption_error(err, ref, clean_err=0.05, ref_clean_err=0.1)) == pytest.approx(float(rel.mean()))
    # percentages give the same ratios
    assert corruption_error(100 * err, 100 * ref).tolist() == pytest.approx(ce.tolist())


def test_argument_errors():
    with pytest.raises(ValueError, match="same shape"):
        corruption_error(torch.ones(2, 5), torch.ones(2, 4))
    with pytest.raises(ValueError, match="given together"):
        mean_corruption_error(torch.ones(2, 5), torch.ones(2, 5), clean_err=0.1)
    with pytest.raises(ValueError, match=r"shape \(corruptions, severities\)"):
        mean_corruption_error(torch.ones(5), torch.ones(5))
    with pytest.raises(ValueError, match="Expected `n_bins` to be a positive int, got 0"):
        expected_calibration_error(torch.ones(2, 2) / 2, torch.zeros(2, dtype=torch.long), 0)
    with pytest.raises(ValueError, match="same N samples"):
        accuracy(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"labels \(N,\) or scores \(N, K\)"):
        flip_rate(torch.zeros(2, 3, 4), torch.zeros(2))


def test_wilson_interval_matches_scipy_vectorised():
    """Against scipy's Wilson interval for several k and n, k = 0 and k = n included, in one batched call."""
    pairs = [
        (0, 1),
        (1, 1),
        (0, 10),
        (10, 10),
        (3, 10),
        (0, 64),
        (1, 64),
        (32, 64),
        (48, 64),
        (63, 64),
        (64, 64),
        (7, 24),
        (999, 1000),
    ]
    k = torch.tensor([p[0] for p in pairs])
    n = torch.tensor([p[1] for p in pairs])
    ci = [binomtest(a, b).proportion_ci(confidence_level=0.95, method="wilson") for a, b in pairs]
    expected_low, expected_high = np.array([c.low for c in ci]), np.array([c.high for c in ci])
    low, high = wilson_interval(k, n, z=NormalDist().inv_cdf(0.975))  # scipy's exact quantile
    assert low.dtype == torch.float64 and low.shape == (len(pairs),)
    np.testing.assert_allclose(low.numpy(), expected_low, rtol=0, atol=1e-12)
    np.testing.assert_allclose(high.numpy(), expected_high, rtol=0, atol=1e-12)
    assert low[k == 0].eq(0).all() and high[k == n].eq(1).all()  # exactly 0 and 1 at the ends, as scipy
    low, high = wilson_interval(k, n)  # the default z = 1.96 differs from the exact quantile by 4e-5
    np.testing.assert_allclose(low.numpy(), expected_low, rtol=0, atol=1e-5)
    np.testing.assert_allclose(high.numpy(), expected_high, rtol=0, atol=1e-5)


def test_wilson_interval_broadcasts_and_checks():
    low, high = wilson_interval(torch.tensor([[0.0], [5.0]]), torch.tensor([10, 20]))  # (2, 1) with (2,)
    assert low.shape == high.shape == (2, 2)
    assert float(high[1, 1]) == pytest.approx(binomtest(5, 20).proportion_ci(method="wilson").high, abs=1e-4)
    low, high = wilson_interval(48, 64)  # plain numbers
    assert (
        low.ndim == 0
        and float(low) == pytest.approx(0.6318, abs=1e-4)
        and float(high) == pytest.approx(0.8399, abs=1e-4)
    )
    assert bool(((low < 0.75) & (0.75 < high)).all())
    with pytest.raises(ValueError, match="0 <= successes <= n"):
        wilson_interval(torch.tensor([11]), 10)
    with pytest.raises(ValueError, match="n > 0"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="`z` to be a positive number"):
        wilson_interval(1, 2, z=0)
