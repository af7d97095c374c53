"""L-inf PGD checked against ``torchattacks.PGD`` 3.5.1 (the reference, a test-only dependency) with the same
random start, against FGSM (one step from zero; a binary linear model from any start) and against the clean
accuracy (eps 0); its random start does not depend on batching."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainviz.data import Normalization
from trainviz.ops.adversarial import fgsm, fgsm_accuracy, pgd, pgd_accuracy, pgd_start

torchattacks = pytest.importorskip("torchattacks")

MEAN, STD = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)


def small_cnn(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 5),
    )
    return net.to(dtype).eval()


def images(n: int = 64, size: int = 12, dtype: torch.dtype = torch.float32, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=dtype)


class Normalize(nn.Module):
    def __init__(self, norm: Normalization) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm.normalize(x)


def torchattacks_pgd(model, x, y, eps, steps, unit, monkeypatch, norm=None, wrapped=True):
    """torchattacks' PGD whose random start is ours: its one ``uniform_`` call (``torch.empty_like(x).uniform_(
    -eps, eps)``) is made to return ``eps * unit``. With ``wrapped``, the model carries the normalisation and
    takes pixels; otherwise the attack is told the normalisation (``set_normalization_used``) and takes and
    returns normalised images (it converts to pixels and back inside)."""
    net = nn.Sequential(Normalize(norm), model).eval() if wrapped else model
    attack = torchattacks.PGD(net, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    calls = []

    def uniform_(tensor, a, b):
        calls.append((a, b))
        return tensor.copy_(eps * unit)

    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "uniform_", uniform_)
        if wrapped:
            out = attack(x, y)
        else:
            attack.set_normalization_used(mean=list(MEAN), std=list(STD))
            out = norm.denormalize(attack(norm.normalize(x), y))
    assert calls == [(-eps, eps)]  # the start was drawn once, and it was ours
    with torch.no_grad():
        accuracy = (net(out) if wrapped else model(norm.normalize(out))).argmax(1).eq(y).double().mean()
    return out, float(accuracy)


@pytest.mark.parametrize("wrapped", [True, False], ids=["model-normalises", "set_normalization_used"])
def test_pgd_matches_torchattacks_with_the_same_start(monkeypatch, wrapped):
    model, x, norm = small_cnn(), images(), Normalization(MEAN, STD)
    with torch.no_grad():
        y = model(norm.normalize(x)).argmax(1)  # clean accuracy 1: every flip shows
    unit = pgd_start(torch.arange(len(x)) + 100, x.shape[1:], seed=3)
    accuracies = []
    for eps in (2 / 255, 8 / 255):
        ours = pgd(model, x, y, eps, steps=10, start=unit, preprocess=norm.normalize)
        theirs, acc = torchattacks_pgd(model, x, y, eps, 10, unit, monkeypatch, norm, wrapped)
        # the same iterate to float rounding (their route through normalised images and back costs ~1e-7)
        same = (ours - theirs).abs() <= (0.0 if wrapped else 1e-6)
        perturbed = (ours != x) | (theirs != x)
        assert same[perturbed].double().mean() >= 0.999, (eps, same[perturbed].double().mean())
        assert ((ours - x).abs() <= eps + 1e-6).all() and ours.min() >= 0 and ours.max() <= 1
        mine = pgd_accuracy(model, x, y, [eps], steps=10, start=unit, preprocess=norm.normalize)
        assert float(mine) == acc
        accuracies.append(acc)
    assert accuracies[1] < accuracies[0] < 1.0  # the attack bites, more at the larger eps


def test_one_step_from_zero_start_is_fgsm():
    model, x, norm = small_cnn(torch.float64), images(16, dtype=torch.float64), Normalization(MEAN, STD)
    y = torch.arange(16) % 5
    zero = torch.zeros_like(x)
    eps = 4 / 255
    # the default step 2.5 eps is projected back to eps: FGSM at eps
    one = pgd(model, x, y, eps, steps=1, start=zero, preprocess=norm.normalize)
    assert torch.equal(one, fgsm(model, x, y, eps, preprocess=norm.normalize))
    # a step inside the ball is FGSM at that step
    half = pgd(model, x, y, eps, steps=1, step_factor=0.5, start=zero, preprocess=norm.normalize)
    assert torch.equal(half, fgsm(model, x, y, 0.5 * eps, preprocess=norm.normalize))
    acc = pgd_accuracy(model, x, y, [eps], steps=1, start=zero, preprocess=norm.normalize)
    assert torch.equal(acc, fgsm_accuracy(model, x, y, [eps], preprocess=norm.normalize))


def test_binary_linear_model_pgd_reaches_the_fgsm_corner_from_any_start():
    """For two classes and a linear model the loss gradient's sign is ``sign(w_other - w_y)`` everywhere, so 10
    steps of 0.25 eps carry every coordinate from anywhere in the ball to the face that FGSM jumps to."""
    torch.manual_seed(0)
    model = nn.Linear(20, 2).double()
    x = torch.rand(32, 20, dtype=torch.float64)
    y = torch.randint(0, 2, (32,))
    for eps in (0.01, 0.1):
        expected = fgsm(model, x, y, eps)
        assert torch.equal(pgd(model, x, y, eps, ids=torch.arange(32), seed=5), expected)
    assert not torch.equal(pgd_start(torch.arange(32), (20,), 5), torch.zeros(32, 20))


def test_eps_zero_is_the_clean_accuracy():
    model, x = small_cnn(), images(32)
    y = torch.arange(32) % 5
    with torch.no_grad():
        clean = model(x).argmax(1).eq(y).float().mean()
    acc = pgd_accuracy(model, x, y, [0.0, 8 / 255], ids=torch.arange(32))
    assert acc[0] == clean and acc[1] <= clean
    assert torch.equal(pgd(model, x, y, 0.0, ids=torch.arange(32)), x)


def test_an_image_gives_the_same_result_in_any_batch_and_order():
    model, x = small_cnn(torch.float64), images(16, dtype=torch.float64)
    y, ids = torch.arange(16) % 5, torch.arange(16) * 7 + 3
    eps = 8 / 255
    whole = pgd(model, x, y, eps, ids=ids, seed=11)
    alone = torch.cat([pgd(model, x[i : i + 1], y[i : i + 1], eps, ids=ids[i : i + 1], seed=11) for i in range(16)])
    order = torch.randperm(16, generator=torch.Generator().manual_seed(0))
    shuffled = pgd(model, x[order], y[order], eps, ids=ids[order], seed=11)
    assert torch.equal(whole, alone)
    assert torch.equal(whole[order], shuffled)
    assert not torch.equal(whole, pgd(model, x, y, eps, ids=ids, seed=12))  # the seed matters
    assert torch.equal(pgd_start(ids[order], x.shape[1:], 11), pgd_start(ids, x.shape[1:], 11)[order])


def test_random_start_is_uniform_per_element_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    unit = pgd_start(range(200), (3, 8, 8), seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    assert unit.min() >= -1 and unit.max() < 1
    # U(-1, 1): mean 0, variance 1/3; 38,400 draws give a standard error of 0.003 on the mean
    assert abs(float(unit.mean())) < 0.015 and abs(float(unit.var()) - 1 / 3) < 0.01
    # neighbouring ids and seeds give unrelated starts
    assert abs(float(torch.corrcoef(unit[:2].flatten(1))[0, 1])) < 0.1
    other = pgd_start(range(200), (3, 8, 8), seed=1)
    assert abs(float(torch.corrcoef(torch.stack([unit.flatten(), other.flatten()]))[0, 1])) < 0.02


def test_pgd_leaves_no_trace_and_works_under_inference_mode():
    model, x = small_cnn(), images(8)
    model.train()
    y = torch.arange(8) % 5
    state = torch.get_rng_state()
    with torch.inference_mode():
        acc = pgd_accuracy(model, x, y, [4 / 255], steps=2, ids=torch.arange(8))
    assert acc.shape == (1,) and model.training
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), state)


def test_pgd_argument_errors():
    model, x, y = small_cnn(), images(4), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, 0.1, steps=0)
    with pytest.raises(ValueError, match="step_factor"):
        pgd(model, x, y, 0.1, step_factor=0.0)
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, -0.1)
    with pytest.raises(ValueError, match="start"):
        pgd(model, x, y, 0.1, start=torch.zeros(3, 3, 12, 12))
    with pytest.raises(ValueError, match="ids"):
        pgd(model, x, y, 0.1, ids=torch.arange(3))
    with pytest.raises(ValueError, match="epsilons"):
        pgd_accuracy(model, x, y, [])
    with pytest.raises(ValueError, match="ints"):
        pgd_start([0.5, 2], (3,), 0)
    assert not torch.equal(pgd_start([-1], (3,), -1), pgd_start([1], (3,), 1))  # negative ids and seeds work
