"""FGSM and steps-to-flip checked against hand computations on linear models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from trainviz.ops.adversarial import fgsm, fgsm_accuracy, steps_to_flip


def linear(weight, bias) -> nn.Linear:
    weight = torch.as_tensor(weight, dtype=torch.float64)
    model = nn.Linear(weight.shape[1], weight.shape[0]).double()
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(torch.as_tensor(bias, dtype=torch.float64))
    return model


def blobs(n: int = 400, d: int = 6, seed: int = 0):
    """Two Gaussian classes inside [0, 1]^d, overlapping a little."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    centres = torch.stack([torch.full((d,), 0.4), torch.full((d,), 0.6)])
    x = (centres[y] + 0.12 * torch.randn(n, d, generator=g)).clamp(0, 1)
    return x.double(), y


def trained_logistic_regression(x, y, steps: int = 300) -> nn.Linear:
    model = nn.Linear(x.shape[1], 2).double()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    for p in model.parameters():
        p.grad = None
    return model


def test_fgsm_equals_hand_computed_sign_of_input_gradient():
    w = [[1.0, -2.0, 0.5], [-0.5, 1.0, 2.0], [0.3, 0.3, -1.0]]
    model = linear(w, [0.1, -0.2, 0.0])
    x = torch.tensor([[0.2, 0.5, 0.7], [0.9, 0.1, 0.4]], dtype=torch.float64)
    y = torch.tensor([0, 2])
    W = torch.tensor(w, dtype=torch.float64)
    p = torch.softmax(x @ W.T + model.bias.detach(), dim=1)
    grad = (p - nn.functional.one_hot(y, 3)) @ W  # d CE / d x = W^T (p - e_y)
    expected = (x + 0.05 * grad.sign()).clamp(0, 1)
    assert torch.equal(fgsm(model, x, y, 0.05), expected)


def test_fgsm_binary_sign_is_the_weight_row_difference():
    # two classes: d CE / d x = (p_y - 1)(w_y - w_other), so the step is sign(w_other - w_y)
    model = linear([[2.0, -1.0, 0.0, 3.0], [-1.0, 1.0, 4.0, 3.5]], [0.0, 0.0])
    x = torch.full((2, 4), 0.5, dtype=torch.float64)
    y = torch.tensor([0, 1])
    w = model.weight.detach()
    out = fgsm(model, x, y, 0.1)
    assert torch.equal(out[0], 0.5 + 0.1 * (w[1] - w[0]).sign())
    assert torch.equal(out[1], 0.5 + 0.1 * (w[0] - w[1]).sign())


def test_fgsm_clamps_and_many_eps_share_one_gradient():
    model = linear([[1.0, -1.0], [-1.0, 1.0]], [0.0, 0.0])
    x = torch.tensor([[0.95, 0.02]], dtype=torch.float64)
    y = torch.tensor([1])
    batch = fgsm(model, x, y, [0.0, 0.1, 0.5])
    assert batch.shape == (3, 1, 2)
    for i, e in enumerate([0.0, 0.1, 0.5]):
        assert torch.equal(batch[i], fgsm(model, x, y, e))
    assert batch[2].tolist() == [[1.0, 0.0]]  # clamped to [0, 1]


def test_preprocess_gradient_is_taken_in_pixel_space():
    # a model on normalised inputs equals a linear model on pixels with the normalisation folded in
    mean, std = torch.tensor([0.4, 0.5], dtype=torch.float64), torch.tensor([0.2, 0.25], dtype=torch.float64)
    inner = linear([[1.0, -2.0], [0.5, 1.5]], [0.1, 0.0])
    folded = linear(inner.weight.detach() / std, inner.bias.detach() - (inner.weight.detach() / std) @ mean)
    x, y = blobs(20, 2)

    def preprocess(p):
        return (p - mean) / std

    assert torch.equal(fgsm(inner, x, y, 0.03, preprocess=preprocess), fgsm(folded, x, y, 0.03))
    np.testing.assert_allclose(
        fgsm_accuracy(inner, x, y, [0.0, 0.1], preprocess=preprocess).numpy(),
        fgsm_accuracy(folded, x, y, [0.0, 0.1]).numpy(),
    )


def test_fgsm_accuracy_eps_zero_is_clean_and_non_increasing_on_trained_model():
    x, y = blobs()
    model = trained_logistic_regression(x, y)
    clean = (model(x).argmax(1) == y).double().mean()
    assert clean > 0.9
    eps = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3]
    acc = fgsm_accuracy(model, x, y, eps)
    assert acc.shape == (len(eps),)
    assert acc[0] == clean
    # for a binary linear model the FGSM step lowers every margin monotonically in eps (clamping included)
    assert (acc[1:] <= acc[:-1]).all(), acc
    assert acc[-1] < 0.2
    for e, a in zip(eps, acc):
        assert a == (model(fgsm(model, x, y, e)).argmax(1) == y).double().mean()


def _steps_by_hand(x0: float, label: int, a: float, t: float, eta: float, max_steps: int) -> int:
    """1-D classifier, logits (0, a (x - t)): class 1 iff x > t. CE gradient w.r.t. x is a (p1 - [label == 1])."""
    x = x0
    for k in range(max_steps + 1):
        pred = 1 if a * (x - t) > 0 else 0  # argmax of (0, z) picks class 0 on a tie
        if pred != label:
            return k
        if k == max_steps:
            return -1
        p1 = 1 / (1 + math.exp(-a * (x - t)))
        x = min(max(x + eta * a * (p1 - (label == 1)), 0.0), 1.0)
    return -1


def test_steps_to_flip_matches_hand_loop_on_1d_linear_classifier():
    a, t, eta, max_steps = 4.0, 0.5, 0.05, 6
    model = linear([[0.0], [a]], [0.0, -a * t])
    starts = [0.9, 0.7, 0.55, 0.52, 0.1, 0.3, 0.45, 0.99, 0.3]
    labels = [1, 1, 1, 1, 0, 0, 0, 1, 1]  # the last one is misclassified from the start
    x = torch.tensor(starts, dtype=torch.float64)[:, None]
    y = torch.tensor(labels)
    steps = steps_to_flip(model, x, y, step_size=eta, max_steps=max_steps)
    expected = [_steps_by_hand(s, lab, a, t, eta, max_steps) for s, lab in zip(starts, labels)]
    assert steps.dtype == torch.long
    assert steps.tolist() == expected
    assert expected[-1] == 0 and -1 in expected and len(set(expected)) > 3
    # first step by hand for x0 = 0.52, label 1: p1 = sigmoid(0.08), x1 = 0.52 - 0.05 * 4 * (1 - p1)
    x1 = 0.52 - 0.05 * 4 * (1 - 1 / (1 + math.exp(-0.08)))
    assert x1 < 0.5 and steps[3] == 1
    # batched equals one image at a time: finished images are frozen and do not affect the others
    for i in range(len(starts)):
        assert steps_to_flip(model, x[i : i + 1], y[i : i + 1], step_size=eta, max_steps=max_steps) == steps[i]


def test_no_parameter_grad_mode_kept_global_rng_unchanged():
    x, y = blobs(40)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)).double()
    for mode in (True, False):
        model.train(mode)
        torch.manual_seed(5)
        state = torch.get_rng_state()
        fgsm(model, x, y, 0.1)
        fgsm_accuracy(model, x, y, [0.0, 0.1])
        steps_to_flip(model, x, y, step_size=0.5, max_steps=3)
        assert torch.equal(torch.get_rng_state(), state)
        assert all(p.grad is None for p in model.parameters())
        assert all(m.training == mode for m in model.modules())
        assert torch.is_grad_enabled()


def test_works_under_inference_mode():
    x, y = blobs(30)
    model = trained_logistic_regression(x, y, steps=50)

    def probes(x, y):
        return (
            fgsm(model, x, y, 0.05),
            fgsm_accuracy(model, x, y, [0.0, 0.05]),
            steps_to_flip(model, x, y, step_size=1.0, max_steps=5),
        )

    expected = probes(x, y)
    with torch.inference_mode():
        got = probes(x.clone(), y.clone())  # inference tensors, as in Lightning's validation
    for e, g in zip(expected, got):
        assert torch.equal(e, g)
    assert all(p.grad is None for p in model.parameters())


def test_argument_errors():
    model = linear([[1.0], [0.0]], [0.0, 0.0])
    x, y = torch.rand(3, 1, dtype=torch.float64), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="`eps` to be a finite number >= 0, got -0.1"):
        fgsm(model, x, y, -0.1)
    with pytest.raises(ValueError, match="non-empty"):
        fgsm(model, x, y, [])
    with pytest.raises(ValueError, match="`target` to be an integer tensor of shape \\(3,\\)"):
        fgsm(model, x, y[:2], 0.1)
    with pytest.raises(ValueError, match="`epsilons` to be a non-empty sequence"):
        fgsm_accuracy(model, x, y, 0.1)
    with pytest.raises(ValueError, match="`step_size` to be a positive number"):
        steps_to_flip(model, x, y, step_size=0, max_steps=3)
    with pytest.raises(ValueError, match="`max_steps` to be an int >= 0, got -1"):
        steps_to_flip(model, x, y, step_size=0.1, max_steps=-1)
