"""Sanity checks for saliency maps (Adebayo et al. 2018): Spearman against scipy, cascading randomisation against
Quantus' MPRT, the Adebayo finding (guided backprop fails, gradients pass), the random-logit draw, and the
insertion curve added beside the deletion curve."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from trainviz.ops.localization import deletion_curve, insertion_curve
from trainviz.ops.sanity import (
    cascading_randomization,
    random_classes,
    random_logit,
    randomizable_layers,
    spearman,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def toy_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


def gradient_maps(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    x = images.clone().requires_grad_(True)
    score = model(x).gather(1, targets[:, None]).sum()
    return torch.autograd.grad(score, x)[0].abs().sum(1)


# spearman --------------------------------------------------------------------------------------------------------
def test_spearman_matches_scipy_with_and_without_ties():
    a = torch.randn(5, 6, 7, generator=gen(0))
    b = a + 0.8 * torch.randn(5, 6, 7, generator=gen(1))
    ties_a = torch.randint(0, 4, (5, 42), generator=gen(2)).float()  # many ties: average ranks
    ties_b = torch.randint(0, 3, (5, 42), generator=gen(3)).float()
    for x, y in [(a, b), (ties_a, ties_b), (a.flatten(1), ties_b)]:
        expected = [spearmanr(x[i].flatten().numpy(), y[i].flatten().numpy())[0] for i in range(5)]
        np.testing.assert_allclose(spearman(x, y).numpy(), expected, rtol=0, atol=1e-6)
    expected_abs = [spearmanr(a[i].abs().flatten().numpy(), b[i].abs().flatten().numpy())[0] for i in range(5)]
    np.testing.assert_allclose(spearman(a, b, absolute=True).numpy(), expected_abs, atol=1e-6)
    assert not np.allclose(spearman(a, b, absolute=True).numpy(), spearman(a, b).numpy())  # the variant differs
    assert spearman(a, a).tolist() == pytest.approx([1.0] * 5) and spearman(a, -a).tolist() == pytest.approx([-1.0] * 5)
    assert spearman(a, b).dtype == torch.float32 and spearman(a.half(), b.half()).dtype == torch.float32


def test_spearman_is_nan_for_constant_or_nan_maps_and_checks_shapes():
    a = torch.rand(3, 4, 4, generator=gen(0))
    b = a.clone()
    b[1] = 0.5  # constant
    b[2, 0, 0] = float("nan")
    rho = spearman(a, b)
    assert rho[0].item() == pytest.approx(1.0) and rho[1:].isnan().all()
    with pytest.raises(ValueError, match="same shape"):
        spearman(a, a[:2])


# cascading randomisation -----------------------------------------------------------------------------------------
def test_cascading_randomization_matches_quantus_mprt_layer_by_layer():
    quantus = pytest.importorskip("quantus")
    net = toy_net()
    x = torch.rand(6, 3, 10, 10, generator=gen(1))
    y = torch.tensor([0, 1, 2, 3, 0, 1])

    def quantus_explain(model, inputs, targets, **_):
        model.eval()
        return gradient_maps(model, torch.as_tensor(inputs), torch.as_tensor(targets).long()).detach().numpy()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric = quantus.MPRT(seed=41, disable_warnings=True, display_progressbar=False)  # seeds 41 + 1 per layer
        scores = metric(model=net, x_batch=x.numpy(), y_batch=y.numpy(), a_batch=None, explain_func=quantus_explain,
                        device="cpu")  # fmt: skip
    state = {k: v.clone() for k, v in net.state_dict().items()}
    reference = gradient_maps(net, x, y)
    ours = cascading_randomization(net, x, y, gradient_maps, seed=42)
    assert [name for name, _ in ours] == [k for k in scores if k != "original"] == ["7", "3", "1", "0"]
    assert randomizable_layers(net) == ["7", "3", "1", "0"]
    for name, maps in ours:
        np.testing.assert_allclose(spearman(reference, maps).numpy(), scores[name], atol=1e-6, err_msg=name)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # only the copy was randomised
    assert spearman(reference, ours[0][1]).mean() < 0.9  # randomising the classifier changes gradient maps


def test_cascade_is_cumulative_top_down_seeded_and_leaves_the_global_stream():
    net = toy_net()
    original = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = torch.rand(2, 3, 6, 6, generator=gen(0)), torch.tensor([1, 2])
    snapshots = []

    def record(model, images, targets):
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return gradient_maps(model, images, targets)

    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = cascading_randomization(net, x, y, record, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the training stream goes on untouched
    layers = ["7", "3", "1", "0"]
    for step, snap in enumerate(snapshots):
        for k, v in snap.items():
            owner = k.rsplit(".", 1)[0]
            if not v.is_floating_point() or owner not in layers:
                continue
            changed = not torch.equal(v, original[k])
            if layers.index(owner) > step:
                assert not changed, (step, k)  # not reached yet
            elif k.endswith("weight") and owner != "1":  # conv/linear weights are redrawn (BatchNorm resets to 1)
                assert changed, (step, k)
    again = cascading_randomization(net, x, y, gradient_maps, seed=5)
    other = cascading_randomization(net, x, y, gradient_maps, seed=6)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, again))
    assert not torch.allclose(first[0][1], other[0][1])
    assert all(torch.equal(v, original[k]) for k, v in net.state_dict().items())


def test_layers_argument_and_modules_without_reset_parameters():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.full((4,), 2.0) + 0.1 * torch.arange(4.0))

        def forward(self, z):
            return z * self.weight

    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), Scale()).eval()
    x, y = torch.rand(3, 3, 2, 2, generator=gen(0)), torch.tensor([0, 1, 2])
    seen = []

    def explain(model, images, targets):
        seen.append(model[2].weight.detach().clone())
        return gradient_maps(model, images, targets)

    out = cascading_randomization(net, x, y, explain, layers=["2"])
    assert [n for n, _ in out] == ["2"] and out[0][1].shape == (3, 2, 2)
    redrawn = seen[0]
    assert not torch.equal(redrawn, net[2].weight)
    assert abs(redrawn.mean().item() - 2.15) < 0.5  # redrawn around the parameter's own mean and spread
    with pytest.raises(ValueError, match="Layer 'fc' not found"):
        cascading_randomization(net, x, y, explain, layers=["fc"])
    with pytest.raises(ValueError, match="Expected layer '0' to have parameters"):
        cascading_randomization(net, x, y, explain, layers=["0"])


def shapes_images(n: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    from trainviz.data import ShapesDataModule

    dm = ShapesDataModule(n_train=16, n_val=16)
    dm.setup()
    return dm.val_set.images[:n], dm.val_set.labels[:n]


def test_adebayo_finding_guided_backprop_fails_the_cascade_gradients_pass():
    """Adebayo et al. 2018, fig. 2: with the top layer(s) re-initialised, gradient maps decorrelate from the
    original ones while guided backpropagation's maps barely change (they reconstruct the image)."""
    from trainviz.ops.saliency import saliency, saliency_map

    x, y = shapes_images()
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 6),
    ).eval()  # fmt: skip

    def explainer(method):
        return lambda model, images, targets: saliency_map(saliency(model, images, targets, method))

    scores = {}
    methods = [("gradient", "gradient"), ("guided", "guided_backprop"), ("deconvnet", "deconvnet")]
    for name, explain in [(name, explainer(method)) for name, method in methods]:
        reference = explain(net, x, y)
        steps = cascading_randomization(net, x, y, explain, seed=1)
        scores[name] = [spearman(reference, maps).mean().item() for _, maps in steps]
    top_gradient, top_guided = scores["gradient"][0], scores["guided"][0]
    assert top_gradient < 0.5 < 0.7 < top_guided, scores  # one layer: the gradient already changed, guided not
    assert top_guided - top_gradient > 0.4
    assert scores["guided"][1] > scores["gradient"][1] + 0.3  # and one layer further down still
    # Measured, not the expectation: deconvnet (no forward mask) follows the new classifier, as the gradient does
    assert scores["deconvnet"][0] < 0.5 < top_guided and top_guided - scores["deconvnet"][0] > 0.3, scores


# random logit ----------------------------------------------------------------------------------------------------
def test_random_classes_are_uniform_over_the_other_classes_and_seeded():
    targets = torch.tensor([0, 1, 2, 3] * 2500)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    drawn = random_classes(targets, 4, gen(0))
    assert torch.equal(torch.get_rng_state(), state)
    assert (drawn != targets).all() and drawn.min() >= 0 and drawn.max() <= 3
    for t in range(4):  # each of the 3 other classes about a third of the time
        counts = torch.bincount(drawn[targets == t], minlength=4).float() / 2500
        assert counts[t] == 0 and ((counts[[c for c in range(4) if c != t]] - 1 / 3).abs() < 0.04).all()
    assert torch.equal(drawn, random_classes(targets, 4, gen(0)))
    with pytest.raises(ValueError, match="num_classes"):
        random_classes(targets, 1)


def test_random_logit_explains_the_drawn_classes():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(2 * 3 * 3, 5)).eval()  # gradient of class c: its weight row
    x, y = torch.rand(6, 2, 3, 3, generator=gen(1)), torch.tensor([0, 1, 2, 3, 4, 0])
    maps = random_logit(net, x, y, gradient_maps, num_classes=5, generator=gen(3))
    other = random_classes(y, 5, gen(3))
    by_hand = net[1].weight.detach()[other].view(6, 2, 3, 3).abs().sum(1)
    torch.testing.assert_close(maps, by_hand)
    score = spearman(gradient_maps(net, x, y), maps)
    assert (score < 0.99).all()  # a class-sensitive method: other maps


# insertion curve -------------------------------------------------------------------------------------------------
def test_insertion_curve_by_hand_and_mirrors_deletion():
    class Mean(nn.Module):  # logits (0, 4 * mean): p1 = sigmoid(4 * mean)
        def forward(self, z):
            m = z.flatten(1).mean(1, keepdim=True)
            return torch.cat([torch.zeros_like(m), 4 * m], 1)

    x = torch.rand(2, 1, 2, 2, generator=gen(0))
    maps = torch.rand(2, 2, 2, generator=gen(1))
    t = torch.tensor([1, 1])
    curve, auc = insertion_curve(Mean(), x, maps, t, steps=4, baseline=-1.0)
    order = maps.flatten(1).argsort(1, descending=True)
    for i in range(2):
        flat = torch.full((4,), -1.0)
        expected = [torch.sigmoid(torch.tensor(-4.0))]
        for s in range(1, 5):
            flat[order[i, s - 1]] = x[i].flatten()[order[i, s - 1]]
            expected.append(torch.sigmoid(4 * flat.mean()))
        torch.testing.assert_close(curve[i], torch.stack(expected))
        torch.testing.assert_close(auc[i], torch.trapezoid(torch.stack(expected), dx=0.25))
    deletion, _ = deletion_curve(Mean(), x, maps, t, steps=4, baseline=-1.0)
    torch.testing.assert_close(curve[:, -1], deletion[:, 0])  # all inserted = nothing deleted
    torch.testing.assert_close(curve[:, 0], deletion[:, -1])
    with pytest.raises(ValueError, match="steps"):
        insertion_curve(Mean(), x, maps, t, steps=0)
