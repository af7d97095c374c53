"""Activation maximisation against references: a known optimum, hand-computed penalties, the seed's
``MultiScaleEdgeEnergy`` module and optimisation loop, kornia's TV and blur, Lucent's parameterisation; determinism,
batch independence and no trace."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainviz.core.guard import probe_guard
from trainviz.core.hooks import capture, count_hooks
from trainviz.data.base import Normalization
from trainviz.ops.maxact import (
    _decorrelate,
    edge_energy,
    fft_image,
    gaussian_blur,
    maximize,
    random_transform,
    target_key,
    total_variation,
)


class SeedMultiScaleEdgeEnergy(nn.Module):
    """Fleuret's module (EE-559, "Maximum response samples"), adapted to current torch: buffers instead of
    ``Parameter`` (no gradient), ``torch.tensor`` instead of ``Tensor``, ``zeros`` when no scale fits."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([[1.0, 4, 6, 4, 1]])
        k_5x5_pseudo_gaussian = k.t().mm(k).view(1, 1, 5, 5)
        k_5x5_pseudo_gaussian /= k_5x5_pseudo_gaussian.sum()
        self.register_buffer("k_5x5_pseudo_gaussian", k_5x5_pseudo_gaussian)
        self.register_buffer("k_2x2_uniform", torch.tensor([[0.25, 0.25], [0.25, 0.25]]).view(1, 1, 2, 2))

    def forward(self, x):
        if x.size(1) > 1:
            result = self(x.view(x.size(0) * x.size(1), 1, x.size(2), x.size(3)))
            result = result.view(x.size(0), -1).sum(1)
        else:
            result = x.new_zeros(x.size(0))
            while x.size(2) > 5 and x.size(3) > 5:
                blurry = F.conv2d(x, self.k_5x5_pseudo_gaussian, padding=2)
                result = result + (x - blurry).view(x.size(0), -1).pow(2).sum(1)
                x = F.conv2d(x, self.k_2x2_uniform, stride=2, padding=1)
        return result


def small_cnn(seed: int = 0, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, classes),
    ).eval()


TARGETS = [("logit", 0), ("logit", 3), ("channel", "3", 5), ("unit", "3", (2, 4, 1)), ("channel", "0", 7)]


# penalties -----------------------------------------------------------------------------------------------------
def test_total_variation_hand_computed_and_kornia():
    x = torch.tensor([[1.0, 2, 4], [0, 0, 0], [3, 3, 1]]).view(1, 1, 3, 3)
    # vertical |1-0|+|2-0|+|4-0| + |0-3|+|0-3|+|0-1| = 14; horizontal |1-2|+|2-4| + 0 + |3-3|+|3-1| = 5
    assert total_variation(x).tolist() == [19.0]
    kornia = pytest.importorskip("kornia")
    imgs = torch.randn(4, 3, 9, 7)
    torch.testing.assert_close(total_variation(imgs), kornia.losses.total_variation(imgs, reduction="sum").sum(1))


def test_edge_energy_hand_computed():
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 2, 2] = 1.0  # the 5x5 blur fits inside; 6x6 -> 4x4 after the downscale, so one scale only
    # (1 - 36/256)^2 + sum over the other taps of (k_i k_j / 256)^2, with sum k_i^2 = 70
    expected = (220**2 + 70**2 - 36**2) / 256**2
    assert edge_energy(x).item() == pytest.approx(expected, rel=1e-6)
    assert edge_energy(torch.rand(2, 3, 5, 9)).tolist() == [0.0, 0.0]  # no scale with a side <= 5
    two = torch.cat([x, 2 * x], 1)  # channels add, energy is quadratic
    assert edge_energy(two).item() == pytest.approx(5 * expected, rel=1e-6)


@pytest.mark.parametrize("shape", [(3, 1, 32, 32), (2, 3, 17, 23), (2, 3, 6, 9), (1, 3, 64, 48), (2, 1, 11, 7)])
def test_edge_energy_matches_the_seed_module(shape):
    torch.manual_seed(1)
    x = torch.rand(*shape, dtype=torch.float64)
    seed = SeedMultiScaleEdgeEnergy().double()
    torch.testing.assert_close(edge_energy(x), seed(x), rtol=1e-10, atol=1e-12)


def test_gaussian_blur_matches_kornia():
    kornia = pytest.importorskip("kornia")
    x = torch.rand(2, 3, 20, 15)
    ref = kornia.filters.gaussian_blur2d(x, (7, 7), (1.0, 1.0), border_type="reflect")
    torch.testing.assert_close(gaussian_blur(x, 1.0), ref, atol=1e-6, rtol=1e-5)
    assert torch.equal(gaussian_blur(x, 0.0), x)


# the optimisation ----------------------------------------------------------------------------------------------
def test_linear_unit_reaches_the_known_optimum():
    torch.manual_seed(0)
    w = torch.randn(3, 8, 8)
    net = nn.Sequential(nn.Flatten(), nn.Linear(192, 2, bias=False))
    net[1].weight.data = torch.stack([w.flatten(), -w.flatten()])
    lam = 0.5
    out = maximize(net, [("logit", 0), ("logit", 1)], (3, 8, 8), steps=300, tv_weight=0, norm_weight=lam, space="input")
    for k, sign in enumerate([1, -1]):
        optimum = sign * w.flatten() / (2 * lam)
        corr = torch.corrcoef(torch.stack([out.inputs[k].flatten(), optimum]))[0, 1]
        assert corr >= 0.99
        torch.testing.assert_close(out.inputs[k].flatten(), optimum, atol=1e-3, rtol=1e-3)
    # the objective at the optimum: <w, x*> - lam ||x*||^2 = ||w||^2 / (4 lam)
    torch.testing.assert_close(out.objective, (w.pow(2).sum() / (4 * lam)).repeat(2), rtol=1e-4, atol=1e-4)


def test_matches_the_seed_loop_with_torch_adam():
    """The seed's loop (score = edge_energy(x) - output[0, k], torch.optim.Adam on the input) step for step."""
    net = small_cnn()
    torch.manual_seed(3)
    start = torch.empty(2, 3, 16, 16).normal_(0, 0.01)
    steps, lr = 12, 0.1
    out = maximize(
        net, [("logit", 1), ("logit", 4)], (3, 16, 16), steps=steps, lr=lr, tv_weight=0, norm_weight=0,
        edge_weight=1.0, space="input", init=start,
    )  # fmt: skip
    x = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=lr)
    energy = SeedMultiScaleEdgeEnergy()
    for _ in range(steps):
        output = net(x)
        score = (energy(x) - output[[0, 1], [1, 4]]).sum()
        optimizer.zero_grad()
        score.backward()
        optimizer.step()
    torch.testing.assert_close(out.inputs, x.detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.activation, net(x).detach()[[0, 1], [1, 4]], atol=1e-5, rtol=1e-4)


def test_activations_are_the_hooked_values_and_rise():
    net = small_cnn()
    out = maximize(net, TARGETS, (3, 16, 16), steps=30, normalization=Normalization((0.5,) * 3, (0.25,) * 3))
    assert out.keys == ["classes/0", "classes/3", "3/channel_5", "3/unit_2_4_1", "0/channel_7"]
    with torch.no_grad(), capture(net, {"0": net[0], "3": net[3]}) as acts:
        logits = net(out.inputs)
    expected = torch.stack(
        [
            logits[0, 0],
            logits[1, 3],
            acts["3"][2, 5].mean(),
            acts["3"][3, 2, 4, 1],
            acts["0"][4, 7].mean(),
        ]
    )
    torch.testing.assert_close(out.activation, expected)
    assert out.images.min() >= 0 and out.images.max() <= 1  # sigmoid pixels
    torch.testing.assert_close(out.inputs, (out.images - 0.5) / 0.25)
    assert (out.activation > out.history[0]).all()  # each target's activation went up
    assert out.history.shape == (30, 5)


@pytest.mark.parametrize("robust", [False, True])
def test_deterministic_and_independent_of_the_other_targets(robust):
    net = small_cnn()
    kw = dict(steps=10, robust=robust, seed=7, edge_weight=1e-3)
    a = maximize(net, TARGETS, (3, 16, 16), **kw)
    b = maximize(net, TARGETS, (3, 16, 16), **kw)
    assert torch.equal(a.images, b.images) and torch.equal(a.activation, b.activation)
    alone = maximize(net, [TARGETS[2]], (3, 16, 16), **kw)
    shuffled = maximize(net, [TARGETS[4], TARGETS[2], ("logit", 2)], (3, 16, 16), **kw)
    torch.testing.assert_close(alone.images[0], a.images[2], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(shuffled.images[1], a.images[2], atol=1e-5, rtol=1e-4)
    other = maximize(net, TARGETS, (3, 16, 16), **{**kw, "seed": 8})
    assert not torch.allclose(other.images, a.images)
    gen = torch.Generator().manual_seed(7)
    assert torch.equal(maximize(net, TARGETS, (3, 16, 16), **{**kw, "generator": gen}).images, a.images)


def test_start_noise_is_per_target():
    net = small_cnn()
    a = maximize(net, [("logit", 0), ("logit", 1)], (3, 8, 8), steps=0)
    b = maximize(net, [("logit", 1)], (3, 8, 8), steps=0)
    assert torch.equal(a.images[1], b.images[0]) and not torch.equal(a.images[0], a.images[1])
    assert (a.images - 0.5).abs().max() < 0.02  # sigmoid(0.01 N(0, 1)): a mid-grey start


def test_no_trace():
    net = small_cnn()
    net[1].train()  # a BatchNorm in train mode: the guard puts eval and back
    flags = [m.training for m in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    with probe_guard(net):
        maximize(net, TARGETS, (3, 16, 16), steps=3, robust=True)
        maximize(net, TARGETS, (3, 16, 16), steps=3)
    assert torch.equal(torch.get_rng_state(), rng)
    maximize(net.eval(), TARGETS, (3, 16, 16), steps=3)  # private generators: no global draw even unguarded
    assert torch.equal(torch.get_rng_state(), rng)
    net[1].train()
    assert [m.training for m in net.modules()] == flags
    assert all(p.grad is None for p in net.parameters()) and count_hooks(net) == 0
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_hooks_removed_when_the_forward_raises():
    net = small_cnn()

    def explode(*_):
        raise RuntimeError("boom")

    net[7].forward = explode
    with pytest.raises(RuntimeError, match="boom"):
        maximize(net, [("channel", "3", 0)], (3, 8, 8), steps=2)
    assert count_hooks(net) == 0


def test_smoothing_blurs_the_result():
    net = small_cnn()
    sharp = maximize(net, TARGETS[:2], (3, 16, 16), steps=5)
    smooth = maximize(net, TARGETS[:2], (3, 16, 16), steps=5, smoothing=1.0)
    torch.testing.assert_close(smooth.images, gaussian_blur(sharp.images, 1.0))
    assert total_variation(smooth.images).lt(total_variation(sharp.images)).all()


# Lucent's parameterisation -------------------------------------------------------------------------------------
def test_fft_image_and_colour_match_lucent(monkeypatch):
    import importlib.util
    import sys
    import types

    if importlib.util.find_spec("IPython") is None:  # lucent.optvis imports IPython.display and never uses it here
        display = types.ModuleType("IPython.display")
        display.display = display.HTML = lambda *args, **kwargs: None
        ipython = types.ModuleType("IPython")
        ipython.display = display
        monkeypatch.setitem(sys.modules, "IPython", ipython)
        monkeypatch.setitem(sys.modules, "IPython.display", display)
    spatial = pytest.importorskip("lucent.optvis.param.spatial")
    color = pytest.importorskip("lucent.optvis.param.color")
    shape = (2, 3, 12, 16)
    params, image_f = spatial.fft_image(shape)
    torch.manual_seed(0)
    spectrum = torch.randn(2, 3, 12, 9, 2) * 0.05
    params[0].data.copy_(spectrum)
    torch.testing.assert_close(fft_image(spectrum, (12, 16)), image_f().detach(), atol=1e-6, rtol=1e-5)
    x = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(_decorrelate(x), color._linear_decorrelate_color(x), atol=1e-6, rtol=1e-5)


def test_random_transform_shape_determinism_and_content():
    x = torch.rand(2, 3, 40, 40)
    a = random_transform(x, torch.Generator().manual_seed(1))
    b = random_transform(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    # a small rigid motion: the images stay correlated with the originals (blurred by bilinear resampling)
    smooth = gaussian_blur(torch.rand(2, 3, 40, 40), 3.0)
    moved = random_transform(smooth, torch.Generator().manual_seed(2))
    corr = torch.corrcoef(torch.stack([moved[:, :, 8:-8, 8:-8].flatten(), smooth[:, :, 8:-8, 8:-8].flatten()]))
    assert corr[0, 1] > 0.5


def test_bad_arguments():
    net = small_cnn()
    with pytest.raises(ValueError, match="Expected a target"):
        maximize(net, [("logit", -1)], (3, 8, 8), steps=1)
    with pytest.raises(ValueError, match="Expected a target"):
        maximize(net, [("unit", "3", ())], (3, 8, 8), steps=1)
    with pytest.raises(ValueError, match="Layer 'nope' not found"):
        maximize(net, [("channel", "nope", 0)], (3, 8, 8), steps=1)
    with pytest.raises(ValueError, match="robust=True"):
        maximize(net, [("logit", 0)], (3, 8, 8), robust=True, space="input")
    with pytest.raises(ValueError, match="space"):
        maximize(net, [("logit", 0)], (3, 8, 8), space="fft")  # type: ignore[arg-type]
    assert target_key(("unit", "net.fc", [3])) == "net.fc/unit_3"
