"""FGSM, steps-to-flip, trajectories and the random-direction control checked against hand computations on
linear models, the seed's own loop on a small CNN and the analytic caps of a sphere cut by a hyperplane."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from trainviz.ops.adversarial import (
    adversarial_trajectory,
    fgsm,
    fgsm_accuracy,
    random_direction_flips,
    sphere_points,
    steps_to_flip,
)


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


# trajectories and the random-direction control (Fleuret's "Under the hood", "Adversarial examples") ----------


def _trajectory_by_hand(W, b, x0, target, eta, steps, clamp):
    """Linear logits W x + b: d CE / d x = W^T (softmax(W x + b) - e_target); plain gradient steps."""
    x, preds, xs = np.array(x0, dtype=np.float64), [], []
    for _ in range(steps + 1):
        z = W @ x + b
        preds.append(int(np.argmax(z)))
        xs.append(x.copy())
        p = np.exp(z - z.max())
        p /= p.sum()
        x = x + eta * W.T @ (p - np.eye(len(b))[target])
        x = np.clip(x, 0, 1) if clamp else x
    flips = [k for k, c in enumerate(preds) if c != target]
    first = flips[0] if flips else -1
    return preds, first, xs[first] if flips else xs[-1]


@pytest.mark.parametrize("clamp", [False, True])
def test_trajectory_follows_the_analytic_gradient_steps_of_a_linear_model(clamp):
    W = np.array([[2.0, -1.0, 0.5], [-1.0, 2.0, 0.0], [0.0, 0.5, 1.5]])
    b = np.array([0.3, 0.0, -0.2])
    model = linear(W, b)
    x = torch.tensor([[0.6, 0.3, 0.4], [0.2, 0.8, 0.1], [0.1, 0.2, 0.9], [0.55, 0.5, 0.5]], dtype=torch.float64)
    target = model(x).argmax(1)
    path = adversarial_trajectory(model, x, target, step_size=0.4, max_steps=8, clamp=clamp)
    assert path.predictions.shape == (4, 9) and path.predictions.dtype == torch.long
    firsts = []
    for i in range(4):
        preds, first, x_adv = _trajectory_by_hand(W, b, x[i].numpy(), int(target[i]), 0.4, 8, clamp)
        assert path.predictions[i].tolist() == preds
        assert int(path.flip_step[i]) == first
        np.testing.assert_allclose(path.x_adv[i].numpy(), x_adv, rtol=0, atol=1e-12)
        firsts.append(first)
    assert all(f > 0 for f in firsts)  # every image flips here, none at the start
    assert (path.predictions[:, 0] == target).all()
    # the image keeps moving after its first flip (as in the seed's table), unlike steps-to-flip's frozen images
    assert all((path.predictions[i, f:] != target[i]).all() for i, f in enumerate(firsts))


def small_cnn(seed: int = 0, classes: int = 5) -> nn.Module:
    """A small torchvision-style CNN not written for trainviz."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, classes),
    ).double()


def _seed_loop(model, images, lr, iterations):
    """The lecture's code, verbatim in spirit: SGD on the input, loss ``-cross_entropy`` (batch mean), target
    the model's own prediction at the start; the class predicted at each of the ``iterations`` forwards."""
    for p in model.parameters():
        p.requires_grad_(False)
    inp = images.clone().requires_grad_(True)
    optimizer = torch.optim.SGD([inp], lr=lr)
    target = model(inp).data.max(1)[1].view(-1)
    classes = []
    for _ in range(iterations):
        output = model(inp)
        classes.append(output.argmax(1))
        loss = -nn.functional.cross_entropy(output, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for p in model.parameters():
        p.requires_grad_(True)
    return torch.stack(classes, 1), target


def test_flip_iteration_matches_the_seed_loop_on_a_small_cnn():
    model = small_cnn().eval()
    x = torch.rand(6, 3, 12, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lr, iterations = 2.0, 16
    got = adversarial_trajectory(
        model, x, model(x).argmax(1), step_size=lr, max_steps=iterations - 1, clamp=False
    ).predictions
    flips = []
    for i in range(len(x)):  # one image at a time: the lecture's batch mean is the image's own loss
        classes, target = _seed_loop(model, x[i : i + 1], lr, iterations)
        assert got[i].tolist() == classes[0].tolist(), i
        changed = (classes[0] != target).nonzero()
        flips.append(int(changed[0]) if len(changed) else -1)
    path = adversarial_trajectory(model, x, model(x).argmax(1), step_size=lr, max_steps=iterations - 1, clamp=False)
    assert path.flip_step.tolist() == flips
    assert sum(f > 0 for f in flips) >= 4 and -1 in flips  # flips at various iterations, one never within 15
    assert len(set(flips)) >= 4
    # a batch of B in the lecture's code (mean loss) at lr is step_size = lr / B here
    classes, _ = _seed_loop(model, x, lr * len(x), iterations)
    assert torch.equal(classes, got)
    assert all(p.grad is None for p in model.parameters())


def test_steps_to_flip_is_the_trajectory_s_first_flip():
    model = small_cnn(2).eval()
    x = torch.rand(8, 3, 12, 12, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    target = model(x).argmax(1)
    path = adversarial_trajectory(model, x, target, step_size=10.0, max_steps=10)
    steps = steps_to_flip(model, x, target, step_size=10.0, max_steps=10)
    assert torch.equal(steps, path.flip_step) and (steps > 0).sum() >= 3 and (steps < 0).sum() >= 2
    assert path.x_adv.min() >= 0 and path.x_adv.max() <= 1
    flipped = steps > 0
    assert (model(path.x_adv[flipped]).argmax(1) != target[flipped]).all()  # x_adv is the first adversarial image


class Recorder(nn.Module):
    """A model that keeps its inputs (the points of the sphere) and answers with a linear map."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x.flatten(1))


def test_random_points_lie_on_the_sphere_and_a_generator_makes_them_repeatable():
    x = torch.rand(3, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    x_adv = x + 0.2 * torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    rec = Recorder(nn.Linear(32, 3))
    labels = torch.tensor([0, 1, 2])
    torch.manual_seed(7)
    state = torch.get_rng_state()
    out = random_direction_flips(
        rec, x, x_adv, labels, samples=50, radius_factor=2.0, generator=torch.Generator().manual_seed(0), batch_size=40
    )
    assert torch.equal(torch.get_rng_state(), state)  # the private generator only
    points = torch.cat(rec.seen)
    assert points.shape == (150, 2, 4, 4) and max(len(s) for s in rec.seen) <= 40  # batched under the cap
    centres = x.repeat_interleave(50, 0)
    radius = 2.0 * (x_adv - x).flatten(1).norm(dim=1).repeat_interleave(50)
    torch.testing.assert_close((points - centres).flatten(1).norm(dim=1), radius, atol=1e-5, rtol=0)
    assert points.min() < 0  # not clamped to [0, 1] (documented): the radius is exact
    again = random_direction_flips(
        rec, x, x_adv, labels, samples=50, radius_factor=2.0, generator=torch.Generator().manual_seed(0), batch_size=40
    )
    other = random_direction_flips(rec, x, x_adv, labels, samples=50, generator=torch.Generator().manual_seed(9))
    assert torch.equal(out, again) and not torch.equal(out, other)
    g = torch.Generator().manual_seed(0)
    p = sphere_points(x, torch.tensor([0.5, 1.0, 2.0]), 20, generator=g)
    torch.testing.assert_close(
        (p - x[:, None]).flatten(2).norm(dim=2), torch.tensor([0.5, 1.0, 2.0])[:, None].expand(3, 20), atol=1e-5, rtol=0
    )


def _hyperplane_model(d: int) -> nn.Linear:
    """Two classes split by the hyperplane x_0 = 0.5: logits (0, x_0 - 0.5)."""
    w = torch.zeros(2, d, dtype=torch.float64)
    w[1, 0] = 1.0
    return linear(w, [0.0, -0.5])


@pytest.mark.parametrize("dim", [2, 3, 3072])
def test_random_direction_flips_match_the_analytic_cap_of_the_sphere(dim):
    # a point at distance h from the plane, sphere radius r: fraction beyond the plane is
    # arccos(h / r) / pi in 2-D, (1 - h / r) / 2 in 3-D, and the Beta(1/2, (D-1)/2) tail of u_0^2 in D dimensions
    from scipy import stats

    model = _hyperplane_model(dim)
    ratios = [0.0, 0.3, 0.6, 0.9] if dim < 100 else [0.02, 0.05, 0.1]
    r = 0.4
    x = torch.full((len(ratios), dim), 0.5, dtype=torch.float64)
    x[:, 0] = 0.5 - torch.tensor(ratios, dtype=torch.float64) * r - 1e-9  # class 0, at distance h = ratio * r
    direction = torch.randn(len(ratios), dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x_adv = x + (r / 2) * direction / direction.norm(dim=1, keepdim=True)  # ||x - x_adv|| = r / 2: radius r
    labels = torch.zeros(len(ratios), dtype=torch.long)
    samples = 20000 if dim < 100 else 4000
    got = random_direction_flips(
        model, x, x_adv, labels, samples=samples, generator=torch.Generator().manual_seed(0), batch_size=8192
    )
    t = np.array(ratios)
    if dim == 2:
        expected = np.arccos(t) / np.pi
    elif dim == 3:
        expected = (1 - t) / 2
    else:
        expected = 0.5 * stats.beta(0.5, (dim - 1) / 2).sf(t**2)
    tolerance = 4 * np.sqrt(expected * (1 - expected) / samples) + 2e-3
    assert np.all(np.abs(got.numpy() - expected) <= tolerance), (got, expected)
    if dim > 100:
        assert got.max() < 0.35  # in high dimension the cap is small even close to the plane


def test_trajectory_and_random_flips_leave_no_trace_and_work_under_inference_mode():
    model = small_cnn(1).eval()
    x = torch.rand(5, 3, 12, 12, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    target = model(x).argmax(1)

    def run(x, target):
        path = adversarial_trajectory(model, x, target, step_size=30.0, max_steps=6)
        rand = random_direction_flips(
            model, x, path.x_adv, target, samples=64, generator=torch.Generator().manual_seed(0)
        )
        return path.predictions, path.flip_step, path.x_adv, rand

    torch.manual_seed(3)
    state = torch.get_rng_state()
    expected = run(x, target)
    assert torch.equal(torch.get_rng_state(), state)
    with torch.inference_mode():
        got = run(x.clone(), target.clone())
    for e, g in zip(expected, got):
        assert torch.equal(e, g)
    assert all(p.grad is None for p in model.parameters()) and not model.training


def test_trajectory_and_random_direction_argument_errors():
    model = linear([[1.0], [0.0]], [0.0, 0.0])
    x, y = torch.rand(3, 1, dtype=torch.float64), torch.zeros(3, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="`step_size` to be a positive number"):
        adversarial_trajectory(model, x, y, step_size=-1.0, max_steps=3)
    with pytest.raises(ValueError, match="`max_steps` to be an int >= 0"):
        adversarial_trajectory(model, x, y, step_size=1.0, max_steps=-2)
    with pytest.raises(ValueError, match="`samples` to be a positive int, got 0"):
        random_direction_flips(model, x, x, y, samples=0, generator=g)
    with pytest.raises(ValueError, match="`radius_factor` to be a positive number"):
        random_direction_flips(model, x, x, y, radius_factor=0, generator=g)
    with pytest.raises(ValueError, match="`x_adv` to be a tensor of the shape"):
        random_direction_flips(model, x, x[:2], y, generator=g)
    with pytest.raises(TypeError, match="`generator` to be a torch.Generator"):
        random_direction_flips(model, x, x, y, generator=0)
