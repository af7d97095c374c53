"""Robustness metrics on tensors: accuracy, calibration, likelihood, prediction flips and corruption errors.

Corruption errors follow Hendrycks & Dietterich (ICLR 2019), with ``E`` an error rate per corruption ``c`` and
severity ``s`` and ``ref`` a reference model (AlexNet on real ImageNet-C; on anything else a reference run of
your own):

- ``CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c}``, ``mCE`` the mean of ``CE_c`` over corruptions;
- ``relative CE_c = sum_s (E_{s,c} - E_clean) / sum_s (E^ref_{s,c} - E^ref_clean)``, relative mCE its mean.

Errors may be fractions or percentages (the ratios do not care), as long as model and reference agree. A NaN
error marks a severity that was not measured (a table whose corruptions have different numbers of severities,
padded with NaN) and is left out of the sums.

Accuracies measured on a probe set of ``n`` images are binomial proportions: :func:`wilson_interval` gives
their confidence interval (on 64 images an accuracy of 0.75 is 0.63-0.84 at 95%).

Example:
    >>> import torch
    >>> corruption_error(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.2, 0.4, 0.6]))
    tensor(0.5000, dtype=torch.float64)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from trainviz.core.checks import check_positive_int
from trainviz.ops.metrics import check_same_samples, predicted_labels

__all__ = [
    "accuracy",
    "calibration_bins",
    "corruption_error",
    "expected_calibration_error",
    "flip_rate",
    "mean_corruption_error",
    "nll",
    "relative_corruption_error",
    "wilson_interval",
]


def accuracy(pred: Tensor, labels: Tensor) -> Tensor:
    """Fraction of correct predictions.

    Args:
        pred: predicted labels, or scores (logits or probabilities) whose argmax is the prediction.
        labels: true labels.

    Shape:
        - pred: :math:`(N,)` or :math:`(N, K)`, labels: :math:`(N,)`
        - output: scalar, float64

    Example:
        >>> accuracy(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]))
        tensor(0.7500, dtype=torch.float64)
    """
    pred = predicted_labels(pred, "pred")
    check_same_samples(pred, labels, "`pred` and `labels`")
    return (pred == labels).double().mean()


def wilson_interval(successes: Any, n: Any, z: float = 1.96) -> tuple[Tensor, Tensor]:
    """Wilson score interval of a binomial proportion ``successes / n`` (e.g. an accuracy on ``n`` images).

    ``(2 n p + z^2 -/+ z sqrt(4 n p (1 - p) + z^2)) / (2 (n + z^2))`` with ``p = successes / n`` (Wilson, 1927;
    Newcombe, 1998), the low end exactly 0 when ``successes == 0`` and the high end exactly 1 when
    ``successes == n``, as in ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``. Unlike the
    normal approximation it stays inside [0, 1] and does not collapse to a point at 0 or n successes.

    Args:
        successes: numbers of successes (ints, or counts as floats), broadcast against ``n``.
        n: numbers of trials, positive.
        z: the standard normal quantile of the two-sided level: 1.96 for 95% (scipy uses the exact
            ``statistics.NormalDist().inv_cdf(0.975)`` = 1.959964; the intervals differ by less than 1e-5).

    Shape:
        - successes, n: any shapes that broadcast, or numbers
        - output: ``(low, high)``, each of the broadcast shape, float64

    Example:
        >>> low, high = wilson_interval(torch.tensor([0, 48, 64]), 64)
        >>> [round(v, 3) for v in low.tolist()], [round(v, 3) for v in high.tolist()]
        ([0.0, 0.632, 0.943], [0.057, 0.84, 1.0])
    """
    k = torch.as_tensor(successes, dtype=torch.float64)
    trials = torch.as_tensor(n, dtype=torch.float64, device=k.device)
    if not 0 < z < float("inf"):
        raise ValueError(f"Expected `z` to be a positive number, got {z!r}")
    if bool((trials <= 0).any()) or bool(((k < 0) | (k > trials)).any()):
        raise ValueError(f"Expected 0 <= successes <= n and n > 0, got successes {k.tolist()} and n {trials.tolist()}")
    p = k / trials
    denom = 2 * (trials + z * z)
    center = (2 * trials * p + z * z) / denom
    delta = z / denom * torch.sqrt(4 * trials * p * (1 - p) + z * z)
    low = torch.where(k == 0, torch.zeros_like(center), center - delta)
    high = torch.where(k == trials, torch.ones_like(center), center + delta)
    return low, high


def flip_rate(pred: Tensor, clean_pred: Tensor) -> Tensor:
    """Fraction of samples whose prediction differs from the clean prediction (a corruption's flip rate).

    Args:
        pred: predictions on corrupted inputs (labels, or scores whose argmax is the prediction).
        clean_pred: predictions on the clean inputs, same form.

    Shape:
        - pred, clean_pred: :math:`(N,)` or :math:`(N, K)`
        - output: scalar, float64

    Example:
        >>> flip_rate(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 1, 1, 2]))
        tensor(0.5000, dtype=torch.float64)
    """
    pred, clean_pred = predicted_labels(pred, "pred"), predicted_labels(clean_pred, "clean_pred")
    check_same_samples(pred, clean_pred, "`pred` and `clean_pred`")
    return (pred != clean_pred).double().mean()


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> Tensor:
    """Expected calibration error with equal-width confidence bins (Guo et al., 2017).

    ``ECE = sum_b |B_b| / N |acc(B_b) - conf(B_b)|`` where the confidence is the top probability, bin ``b``
    holds confidences in ``(b / n_bins, (b + 1) / n_bins]`` (a confidence of 0 goes to the first bin).

    Args:
        probs: class probabilities (rows summing to 1, e.g. a softmax output), not logits.
        labels: true labels.
        n_bins: number of bins (positive int).

    Shape:
        - probs: :math:`(N, K)`, labels: :math:`(N,)`
        - output: scalar, float64

    Example:
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2]])
        >>> expected_calibration_error(probs, torch.tensor([0, 1]), n_bins=1)
        tensor(0.3500, dtype=torch.float64)
    """
    check_positive_int("n_bins", n_bins)
    if not isinstance(probs, Tensor) or probs.ndim != 2:
        raise ValueError(f"Expected `probs` to be a tensor of shape (N, K), got {probs!r:.80}")
    check_same_samples(probs, labels, "`probs` and `labels`")
    confidence, pred = probs.double().max(dim=1)
    confidence_sum, correct_sum, _ = _bin_sums(confidence, (pred == labels).double(), n_bins)
    return (correct_sum - confidence_sum).abs().sum() / max(probs.shape[0], 1)


def _bin_sums(confidence: Tensor, correct: Tensor, n_bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """Sums of confidence and correctness and counts per bin ``(b / n_bins, (b + 1) / n_bins]`` (float64)."""
    confidence, correct = confidence.double().reshape(-1), correct.double().reshape(-1)
    uppers = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=confidence.device)[1:]
    bins = torch.bucketize(confidence, uppers).clamp(max=n_bins - 1)
    zeros = torch.zeros(n_bins, dtype=torch.float64, device=confidence.device)
    sums = [zeros.index_add(0, bins, values) for values in (confidence, correct, torch.ones_like(correct))]
    return sums[0], sums[1], sums[2]


def calibration_bins(confidence: Tensor, correct: Tensor, n_bins: int = 15) -> tuple[Tensor, Tensor, Tensor]:
    """Mean confidence, accuracy and count per equal-width confidence bin: the bins of
    :func:`expected_calibration_error`, what a reliability diagram draws.

    Args:
        confidence: top probability of each prediction.
        correct: whether each prediction is right (bool or 0/1).
        n_bins: number of bins (positive int).

    Shape:
        - confidence, correct: any shape with ``N`` elements
        - output: three :math:`(n_bins,)` float64 tensors (NaN means in empty bins)

    Raises:
        ValueError: ``n_bins`` is not a positive int, or the inputs differ in size.

    Example:
        >>> conf, acc, count = calibration_bins(torch.tensor([0.95, 0.9, 0.3]), torch.tensor([1, 0, 1]), n_bins=2)
        >>> count.tolist(), acc.tolist()
        ([1.0, 2.0], [1.0, 0.5])
    """
    check_positive_int("n_bins", n_bins)
    if confidence.numel() != correct.numel():
        sizes = f"{confidence.numel()} and {correct.numel()}"
        raise ValueError(f"Expected `confidence` and `correct` of one size, got {sizes}")
    confidence_sum, correct_sum, count = _bin_sums(confidence, correct, n_bins)
    return confidence_sum / count, correct_sum / count, count


def nll(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean negative log-likelihood of the true labels, from logits.

    Takes logits (numerically stable ``log_softmax``). Log-probabilities work as well, since ``log_softmax``
    leaves them unchanged; for probabilities pass ``probs.log()``.

    Args:
        logits: unnormalised class scores.
        labels: true labels.

    Shape:
        - logits: :math:`(N, K)`, labels: :math:`(N,)`
        - output: scalar, in ``logits``' dtype

    Example:
        >>> nll(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
        tensor(0.6931)
    """
    if not isinstance(logits, Tensor) or logits.ndim != 2:
        raise ValueError(f"Expected `logits` to be a tensor of shape (N, K), got {logits!r:.80}")
    check_same_samples(logits, labels, "`logits` and `labels`")
    return F.cross_entropy(logits, labels.long())


def _errors(value: Any, name: str) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.ndim < 1 or t.shape[-1] < 1:
        raise ValueError(f"Expected `{name}` to have a last dimension of severities, got shape {tuple(t.shape)}")
    return t


def _same_shape(a: Tensor, b: Tensor, names: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"Expected {names} to have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def corruption_error(err_by_severity: Tensor, ref_err_by_severity: Tensor) -> Tensor:
    """``CE_c = sum_s E_{s,c} / sum_s E^ref_{s,c}``, the error summed over severities relative to a reference.

    Args:
        err_by_severity: the model's error rates, severities along the last dimension (NaN: not measured).
        ref_err_by_severity: the reference model's error rates, same shape (NaN where ``err_by_severity`` is).

    Shape:
        - inputs: :math:`(*, S)`, e.g. :math:`(S,)` for one corruption or :math:`(C, S)` for several
        - output: :math:`(*)`, float64

    Example:
        >>> corruption_error(torch.tensor([[0.1, 0.3], [0.2, 0.2]]), torch.tensor([[0.2, 0.2], [0.4, 0.4]]))
        tensor([1.0000, 0.5000], dtype=torch.float64)
    """
    err, ref = _errors(err_by_severity, "err_by_severity"), _errors(ref_err_by_severity, "ref_err_by_severity")
    _same_shape(err, ref, "`err_by_severity` and `ref_err_by_severity`")
    return err.nansum(dim=-1) / ref.nansum(dim=-1)


def relative_corruption_error(err: Tensor, clean_err: Tensor, ref_err: Tensor, ref_clean_err: Tensor) -> Tensor:
    """Relative CE: ``sum_s (E_{s,c} - E_clean) / sum_s (E^ref_{s,c} - E^ref_clean)``.

    It measures the degradation caused by the corruption rather than the error itself.

    Args:
        err: the model's error rates, severities along the last dimension.
        clean_err: the model's clean error rate (a number, or one per leading index of ``err``).
        ref_err: the reference's error rates, same shape as ``err``.
        ref_clean_err: the reference's clean error rate.

    Shape:
        - err, ref_err: :math:`(*, S)`; clean_err, ref_clean_err: scalars or :math:`(*)`
        - output: :math:`(*)`, float64

    Example:
        >>> relative_corruption_error(torch.tensor([0.2, 0.3]), 0.1, torch.tensor([0.4, 0.6]), 0.3)
        tensor(0.7500, dtype=torch.float64)
    """
    err, ref = _errors(err, "err"), _errors(ref_err, "ref_err")
    _same_shape(err, ref, "`err` and `ref_err`")
    clean = torch.as_tensor(clean_err, dtype=torch.float64).unsqueeze(-1)
    ref_clean = torch.as_tensor(ref_clean_err, dtype=torch.float64).unsqueeze(-1)
    return (err - clean).nansum(dim=-1) / (ref - ref_clean).nansum(dim=-1)


def mean_corruption_error(
    err: Tensor,
    ref_err: Tensor,
    *,
    clean_err: Tensor | float | None = None,
    ref_clean_err: Tensor | float | None = None,
) -> Tensor:
    """mCE: the mean over corruptions of :func:`corruption_error`; relative mCE when both clean errors are given.

    Args:
        err: the model's error rates, one row per corruption, one column per severity.
        ref_err: the reference's error rates, same shape.
        clean_err: the model's clean error rate; with ``ref_clean_err``, gives the relative mCE.
        ref_clean_err: the reference's clean error rate.

    Shape:
        - err, ref_err: :math:`(C, S)`
        - output: scalar, float64

    Example:
        >>> mean_corruption_error(torch.tensor([[0.1, 0.3], [0.2, 0.2]]), torch.tensor([[0.2, 0.2], [0.4, 0.4]]))
        tensor(0.7500, dtype=torch.float64)
    """
    if (clean_err is None) != (ref_clean_err is None):
        raise ValueError("Expected `clean_err` and `ref_clean_err` to be given together (relative mCE) or not at all")
    e = _errors(err, "err")
    if e.ndim != 2:
        raise ValueError(f"Expected `err` to have shape (corruptions, severities), got {tuple(e.shape)}")
    if clean_err is None:
        return corruption_error(e, ref_err).mean()
    return relative_corruption_error(e, clean_err, ref_err, ref_clean_err).mean()
