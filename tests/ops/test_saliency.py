"""Saliency, input x gradient, SmoothGrad, deconvnet, guided backprop and integrated gradients against Captum,
hand-computed ReLU rules and a hand SmoothGrad loop; the ReLU rules on nn.ReLU, in-place, reused and functional
relus; no trace left on the model, the RNG or the torch-function mode stack."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainviz.core.hooks import count_hooks
from trainviz.ops.guided import guided_backprop, relu_rule
from trainviz.ops.saliency import METHODS, Saliency, gauss_legendre, saliency, saliency_map

N, C, SIZE, K = 4, 3, 12, 5
TARGETS = torch.tensor([1, 0, 4, 2])
MEAN, STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])


def images(n: int = N, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, C, SIZE, SIZE, generator=g)


def normalised(n: int = N, seed: int = 0) -> torch.Tensor:
    from torchvision.transforms import Normalize

    pixels = torch.rand(n, C, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
    return Normalize(MEAN.tolist(), STD.tolist())(pixels)


def seeded(seed: int, build):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def cnn(inplace: bool = False, seed: int = 0) -> nn.Module:
    """conv-relu-pool-conv-relu-pool-linear, the shape of a user's small CNN."""
    return seeded(
        seed,
        lambda: nn.Sequential(
            nn.Conv2d(C, 8, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=inplace),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(32, K),
        ).eval(),
    )


class Reused(nn.Module):
    """One ReLU module called twice per forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(C, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 4, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.relu(self.conv1(x)), 2)
        return self.fc(F.adaptive_avg_pool2d(self.relu(self.conv2(x)), 2).flatten(1))


class Functional(nn.Module):
    """The same network as :func:`cnn`, written with functional relus (one variant per call site)."""

    def __init__(self, source: nn.Sequential, variant: str) -> None:
        super().__init__()
        self.conv1, self.conv2, self.bn, self.fc = source[0], source[3], source[4], source[8]
        self.variant = variant

    def relu(self, x: torch.Tensor) -> torch.Tensor:
        return {
            "torch.relu": torch.relu,
            "torch.relu_": torch.relu_,
            "F.relu": F.relu,
            "F.relu(inplace)": lambda t: F.relu(t, inplace=True),
            "F.relu_": F.relu_,
            "Tensor.relu": lambda t: t.relu(),
            "Tensor.relu_": lambda t: t.relu_(),
        }[self.variant](x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.relu(self.conv1(x)), 2)
        x = self.relu(self.bn(self.conv2(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 2).flatten(1))


def resnet(seed: int = 0) -> nn.Module:
    """A torchvision ResNet-18 (in-place ReLU modules, each block's ReLU called twice)."""
    from torchvision.models import resnet18

    return seeded(seed, lambda: resnet18(num_classes=K).eval())


def captum(cls, net: nn.Module, x: torch.Tensor, targets: torch.Tensor, **kwargs) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum's "input does not require grad" / backward-hook notices
        return cls(net).attribute(x.clone(), target=targets, **kwargs).detach()


def not_inplace(net: nn.Module) -> nn.Module:
    """A copy with in-place ReLU modules made out of place, for Captum (whose module hooks need that)."""
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return net


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert b.abs().amax() > 0  # a zero reference would make the comparison vacuous
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# against Captum
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("data", [images, normalised])
def test_gradient_and_input_x_gradient_match_captum(data):
    from captum.attr import InputXGradient
    from captum.attr import Saliency as CaptumSaliency

    net, x = cnn(), data()
    close(saliency(net, x, TARGETS), captum(CaptumSaliency, net, x, TARGETS, abs=False))
    close(saliency(net, x, TARGETS, "input_x_gradient"), captum(InputXGradient, net, x, TARGETS))


@pytest.mark.parametrize(
    "build",
    [lambda: cnn(inplace=True), lambda: seeded(1, Reused).eval(), resnet],
    ids=["inplace", "reused", "resnet18"],
)
def test_guided_and_deconvnet_match_captum_on_inplace_reused_and_torchvision_relus(build):
    from captum.attr import Deconvolution, GuidedBackprop

    net, x = build(), normalised()
    reference = not_inplace(net)
    guided = saliency(net, x, TARGETS, "guided_backprop")
    deconv = saliency(net, x, TARGETS, "deconvnet")
    close(guided, captum(GuidedBackprop, reference, x, TARGETS))
    close(deconv, captum(Deconvolution, reference, x, TARGETS))
    assert not torch.allclose(guided, deconv, atol=1e-4)  # deconvnet is not modulated by s: the rules differ here
    assert not torch.allclose(guided, saliency(net, x, TARGETS), atol=1e-4)
    assert count_hooks(net) == 0


@pytest.mark.parametrize(
    "variant", ["torch.relu", "torch.relu_", "F.relu", "F.relu(inplace)", "F.relu_", "Tensor.relu", "Tensor.relu_"]
)
def test_functional_relus_follow_the_rule_like_relu_modules_under_captum(variant):
    from captum.attr import Deconvolution, GuidedBackprop

    modules, x = cnn(), images()
    functional = Functional(modules, variant).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # relus are seen: no "plain gradient" warning
        guided = saliency(functional, x, TARGETS, "guided_backprop")
        deconv = saliency(functional, x, TARGETS, "deconvnet")
    close(guided, captum(GuidedBackprop, modules, x, TARGETS))
    close(deconv, captum(Deconvolution, modules, x, TARGETS))
    # Captum only hooks nn.ReLU modules: on the functional net it silently returns the plain gradient
    plain = saliency(functional, x, TARGETS)
    close(captum(GuidedBackprop, functional, x, TARGETS), plain)
    assert not torch.allclose(guided, plain, atol=1e-4)
    # guided_backprop (ops/guided.py, used by the CAM callback) takes the same route
    close(guided_backprop(functional, x, TARGETS), guided)


@pytest.mark.parametrize(("steps", "baseline"), [(8, 0.0), (5, -0.5), (16, "tensor")])
def test_integrated_gradients_match_captum_gauss_legendre(steps, baseline):
    from captum.attr import IntegratedGradients

    net, x = cnn(), normalised()
    if baseline == "tensor":  # per-channel black in normalised space, broadcast to the images
        baseline = ((0 - MEAN) / STD).view(1, C, 1, 1)
    ours = saliency(net, x, TARGETS, "integrated_gradients", steps=steps, baseline=baseline)
    reference = captum(IntegratedGradients, net, x, TARGETS, baselines=baseline, n_steps=steps, method="gausslegendre")
    close(ours, reference)
    chunked = saliency(net, x, TARGETS, "integrated_gradients", steps=steps, baseline=baseline, batch_size=3)
    close(chunked, reference)


def test_integrated_gradients_completeness_on_a_smooth_net():
    net = seeded(2, lambda: nn.Sequential(nn.Conv2d(C, 6, 3), nn.Softplus(), nn.Flatten(), nn.Linear(600, K)))
    x = images()
    ig = saliency(net, x, TARGETS, "integrated_gradients", steps=24, baseline=0.0)
    with torch.no_grad():
        expected = net(x).gather(1, TARGETS[:, None])[:, 0] - net(torch.zeros_like(x)).gather(1, TARGETS[:, None])[:, 0]
    torch.testing.assert_close(ig.sum((1, 2, 3)), expected, atol=1e-4, rtol=1e-4)


def test_gauss_legendre_matches_numpy_and_integrates_polynomials():
    import numpy as np

    for n in (1, 2, 7, 16, 50):
        nodes, weights = gauss_legendre(n)
        ref_nodes, ref_weights = np.polynomial.legendre.leggauss(n)
        np.testing.assert_allclose(nodes.numpy(), 0.5 * (1 + ref_nodes), atol=1e-12)
        np.testing.assert_allclose(weights.numpy(), 0.5 * ref_weights, atol=1e-12)
        degree = 2 * n - 1
        assert abs(float((weights * nodes**degree).sum()) - 1 / (degree + 1)) < 1e-12


# ------------------------------------------------------------------------------------------------
# hand-computed rules
# ------------------------------------------------------------------------------------------------
def tiny() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (3 values) -> s = W1 x -> relu -> y = W2 relu(s); the four hidden units cover every case of
    (s > 0, g > 0), g = W2[target]."""
    w1 = torch.tensor([[1.0, 0.5, 0.0], [-1.0, 0.0, 1.0], [0.5, 1.0, -1.0], [-0.5, -1.0, 0.5]])
    w2 = torch.tensor([[2.0, 3.0, -1.0, -2.0], [1.0, -1.0, 1.0, 1.0]])
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False)).eval()
    with torch.no_grad():
        net[1].weight.copy_(w1)
        net[3].weight.copy_(w2)
    return net, w1, w2, torch.tensor([1.0, -1.0, 0.5]).view(1, 3, 1, 1)


def test_the_three_rules_by_hand_on_a_two_layer_net():
    net, w1, w2, x = tiny()
    s = w1 @ x.flatten()  # [0.5, -0.5, -1.0, 0.75]: units 0, 3 active
    g = w2[0]  # [2, 3, -1, -2]: units 0, 1 positive
    active, positive = (s > 0).float(), (g > 0).float()
    assert (active * positive).tolist() == [1, 0, 0, 0] and (active * (1 - positive)).tolist() == [0, 0, 0, 1]
    expected = {
        "gradient": w1.T @ (active * g),
        "deconvnet": w1.T @ (positive * g),
        "guided_backprop": w1.T @ (active * positive * g),
    }
    for method, value in expected.items():
        ours = saliency(net, x, torch.tensor([0]), method)
        torch.testing.assert_close(ours.flatten(), value)
    assert len({tuple(v.tolist()) for v in expected.values()}) == 3  # the three rules give three answers here
    torch.testing.assert_close(
        saliency(net, x, torch.tensor([0]), "input_x_gradient").flatten(), x.flatten() * expected["gradient"]
    )


def test_relu_rule_switch_off_gives_the_plain_gradient_and_on_the_rule():
    net, w1, w2, x = tiny()
    x = x.clone().requires_grad_(True)
    s = w1 @ x.detach().flatten()
    for rule, mask in [("gradient", s > 0), ("deconvnet", w2[0] > 0), ("guided", (s > 0) & (w2[0] > 0))]:
        with relu_rule(net, rule) as switch:
            y = net(x)[:, 0].sum()
            (off,) = torch.autograd.grad(y, x, retain_graph=True)
            switch.active = True
            (on,) = torch.autograd.grad(y, x)
        torch.testing.assert_close(off.flatten(), w1.T @ ((s > 0) * w2[0]))
        torch.testing.assert_close(on.flatten(), w1.T @ (mask * w2[0]))
    with pytest.raises(ValueError, match="`rule` to be one of 'gradient', 'deconvnet', 'guided'"):
        with relu_rule(net, "guidedd"):
            pass


# ------------------------------------------------------------------------------------------------
# SmoothGrad
# ------------------------------------------------------------------------------------------------
def hand_smoothgrad(net, x, targets, samples, sigma, seed):
    """The seed's loop, one noisy copy at a time, with the noise drawn as saliency() documents."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros_like(x)
    for i in range(x.shape[0]):
        noise = torch.randn((samples, *x.shape[1:]), generator=g) * sigma * (x[i].max() - x[i].min())
        for k in range(samples):
            noisy = (x[i : i + 1] + noise[k]).requires_grad_(True)
            (grad,) = torch.autograd.grad(net(noisy)[0, targets[i]], noisy)
            out[i] += grad[0] / samples
    return out


class Forwards:
    def __init__(self, net: nn.Module) -> None:
        self.rows: list[int] = []
        self.handle = net.register_forward_hook(lambda _m, inputs, _o: self.rows.append(inputs[0].shape[0]))


def test_smoothgrad_matches_the_hand_loop_and_batches_the_samples():
    net, x = cnn(), normalised()
    expected = hand_smoothgrad(net, x, TARGETS, samples=6, sigma=0.2, seed=3)
    counter = Forwards(net)
    ours = saliency(net, x, TARGETS, "smoothgrad", samples=6, sigma=0.2, generator=torch.Generator().manual_seed(3))
    assert counter.rows == [N * 6]  # every noisy copy in one forward
    close(ours, expected)
    counter.rows.clear()
    chunked = saliency(
        net, x, TARGETS, "smoothgrad", samples=6, sigma=0.2, generator=torch.Generator().manual_seed(3), batch_size=5
    )
    assert counter.rows == [5, 5, 5, 5, 4]  # chunks cut across images: the noise does not depend on them
    close(chunked, expected)
    counter.handle.remove()
    assert not torch.allclose(ours, saliency(net, x, TARGETS), atol=1e-4)


def test_default_chunks_hold_half_a_million_input_elements_on_the_cpu():
    from trainviz.ops.saliency import default_rows

    assert default_rows(torch.zeros(1, 3, 64, 64)) == 2**19 // (3 * 64 * 64) == 42
    assert default_rows(torch.zeros(1, 3, 1024, 1024)) == 1  # at least one row
    net, x = cnn(), normalised()
    counter = Forwards(net)
    rows = 2**19 // x[0].numel()
    samples = rows // N + 2  # more noisy copies than one chunk holds
    default = saliency(net, x, TARGETS, "smoothgrad", samples=samples, generator=torch.Generator().manual_seed(1))
    assert counter.rows[0] == rows and sum(counter.rows) == N * samples and len(counter.rows) == 2
    counter.handle.remove()
    explicit = saliency(
        net,
        x,
        TARGETS,
        "smoothgrad",
        samples=samples,
        generator=torch.Generator().manual_seed(1),
        batch_size=N * samples,
    )
    close(default, explicit)


def test_smoothgrad_default_generator_sigma_zero_and_global_rng():
    net, x = cnn(), images()
    state = torch.get_rng_state()
    first = saliency(net, x, TARGETS, "smoothgrad", samples=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(saliency(net, x, TARGETS, "smoothgrad", samples=3), first)  # seeded 0 by default
    torch.testing.assert_close(
        first, saliency(net, x, TARGETS, "smoothgrad", samples=3, generator=torch.Generator().manual_seed(0))
    )
    close(saliency(net, x, TARGETS, "smoothgrad", samples=2, sigma=0.0), saliency(net, x, TARGETS))


# ------------------------------------------------------------------------------------------------
# user-shaped data, modes, no trace
# ------------------------------------------------------------------------------------------------
def test_attributions_live_in_model_input_space():
    """On normalised inputs the attribution is w.r.t. the normalised values: the chain rule through a
    Normalize layer divides by std."""
    from torchvision.transforms import Normalize

    net = cnn()
    pixels = torch.rand(N, C, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    normalize = Normalize(MEAN.tolist(), STD.tolist())
    with_norm = nn.Sequential(normalize, net)
    close(saliency(with_norm, pixels, TARGETS), saliency(net, normalize(pixels), TARGETS) / STD.view(1, C, 1, 1))


@pytest.mark.parametrize("method", METHODS)
def test_no_trace(method):
    net, x = cnn(inplace=True), normalised()
    net[4].train()  # a mixed-mode model stays mixed: the op changes no mode
    flags = [m.training for m in net.modules()]
    state = torch.get_rng_state()
    saliency(net, x, TARGETS, method, samples=2, steps=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert [m.training for m in net.modules()] == flags
    assert all(p.grad is None for p in net.parameters())
    assert count_hooks(net) == 0 and not torch._C._is_torch_function_mode_enabled()
    assert x.grad is None and not x.requires_grad


def test_inference_mode_gives_the_same_values():
    net, x = cnn(), normalised()
    for method in METHODS:
        expected = saliency(net, x, TARGETS, method, samples=2, steps=3)
        with torch.inference_mode():
            inside = saliency(net, x.clone(), TARGETS, method, samples=2, steps=3)
        torch.testing.assert_close(inside.clone(), expected, atol=1e-6, rtol=1e-5)


def test_frozen_parameters_still_give_input_gradients():
    net, x = cnn(), images()
    expected = saliency(net, x, TARGETS, "guided_backprop")
    for p in net.parameters():
        p.requires_grad_(False)
    close(saliency(net, x, TARGETS, "guided_backprop"), expected)


def test_nothing_left_active_after_an_exception():
    net, x = cnn(), images()

    def boom(*_):
        raise RuntimeError("boom")

    handle = net[-1].register_forward_pre_hook(boom)
    for method in ("guided_backprop", "deconvnet", "smoothgrad"):
        with pytest.raises(RuntimeError, match="boom"):
            saliency(net, x, TARGETS, method)
        assert not torch._C._is_torch_function_mode_enabled() and count_hooks(net) == 1
    seen = []
    probe = net[0].register_forward_hook(lambda *_: seen.append(torch._C._is_torch_function_mode_enabled()))
    with pytest.raises(RuntimeError, match="boom"):
        with relu_rule(net, "guided"):
            assert not torch._C._is_torch_function_mode_enabled()  # only during the model's forward
            net(x)
    assert seen == [True] and not torch._C._is_torch_function_mode_enabled()
    probe.remove()
    with pytest.raises(RuntimeError, match="inside"):
        with relu_rule(net, "deconvnet"):
            raise RuntimeError("inside")
    assert not torch._C._is_torch_function_mode_enabled()
    handle.remove()
    assert all(p.grad is None for p in net.parameters())


def test_hooks_before_ours_that_raise_and_the_users_own_modes_are_respected():
    from torch.overrides import TorchFunctionMode

    from trainviz.core.outputs import LogitsModel

    net, x = cnn(), images()
    expected = saliency(net, x, TARGETS, "guided_backprop")

    class UserMode(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    with UserMode():
        close(saliency(LogitsModel(net), x, TARGETS, "guided_backprop"), expected)  # through a wrapper
        assert torch._C._is_torch_function_mode_enabled()  # the user's mode is still there

    def boom(*_):
        raise RuntimeError("boom")

    handle = net.register_forward_pre_hook(boom)  # raises before relu_rule's own pre-hook
    with pytest.raises(RuntimeError, match="boom"):
        saliency(net, x, TARGETS, "deconvnet")
    handle.remove()
    assert not torch._C._is_torch_function_mode_enabled() and count_hooks(net) == 0
    close(saliency(net, x, TARGETS, "guided_backprop"), expected)


def test_a_net_without_relu_warns_that_the_result_is_the_plain_gradient():
    net = seeded(0, lambda: nn.Sequential(nn.Conv2d(C, 4, 3), nn.GELU(), nn.Flatten(), nn.Linear(400, K)).eval())
    x = images()
    with pytest.warns(UserWarning, match="saw no relu in the forward of Sequential.*plain input gradient"):
        guided = saliency(net, x, TARGETS, "guided_backprop")
    torch.testing.assert_close(guided, saliency(net, x, TARGETS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        saliency(net, x, TARGETS, "gradient")  # no rule asked: no warning


def test_class_face_agrees_and_saliency_map():
    net, x = cnn(), images()
    for method in METHODS:
        face = Saliency(net, method, samples=3, steps=4, sigma=0.1, batch_size=7)
        torch.testing.assert_close(
            face(x, TARGETS), saliency(net, x, TARGETS, method, samples=3, steps=4, sigma=0.1, batch_size=7)
        )
    a = saliency(net, x, TARGETS)
    torch.testing.assert_close(saliency_map(a), a.abs().sum(1))
    assert saliency_map(a).shape == (N, SIZE, SIZE)


def test_a_model_returning_a_dict_through_logits_model():
    from trainviz.core.outputs import LogitsModel

    class DictNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = cnn()

        def forward(self, x):
            return {"logits": self.net(x), "features": x.mean((2, 3))}

    model, x = DictNet().eval(), normalised()
    with pytest.raises(ValueError, match="Expected the model to return logits of shape"):
        saliency(model, x, TARGETS)
    for method in ("gradient", "guided_backprop"):
        close(saliency(LogitsModel(model), x, TARGETS, method), saliency(model.net, x, TARGETS, method))


def test_targets_as_int_or_list():
    net, x = cnn(), images()
    torch.testing.assert_close(saliency(net, x, 2), saliency(net, x, torch.full((N,), 2)))
    torch.testing.assert_close(saliency(net, x, TARGETS.tolist()), saliency(net, x, TARGETS))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "grad"}, "`method` to be one of 'gradient', 'input_x_gradient', 'smoothgrad'"),
        ({"samples": 0}, "`samples` to be a positive int, got 0"),
        ({"steps": 1.5}, "`steps` to be a positive int"),
        ({"sigma": -0.1}, "`sigma` to be a finite number >= 0"),
        ({"batch_size": 0}, "`batch_size` to be a positive int"),
        ({"targets": torch.tensor([1, 2])}, r"`targets` to be an int tensor of shape \(4,\), got \(2,\)"),
        ({"targets": torch.zeros(N)}, "`targets` to be an int tensor"),
        ({"targets": torch.tensor([0, 1, 2, 5])}, r"`targets` in 0..4 \(the model has 5 outputs\), got \[5\]"),
        ({"targets": torch.tensor([0, -1, 2, 3])}, r"got \[-1\]"),
        ({"method": "integrated_gradients", "baseline": torch.zeros(2, 3)}, "`baseline` to broadcast"),
        ({"method": "integrated_gradients", "baseline": "black"}, "`baseline` to be a float or a tensor"),
        ({"generator": 0}, "`generator` to be a torch.Generator"),
        ({"images": torch.zeros(3, 4)}, "`images` to be a floating tensor of shape"),
    ],
)
def test_bad_arguments_are_refused_with_clear_messages(kwargs, match):
    args = {"model": cnn(), "images": images(), "targets": TARGETS, **kwargs}
    with pytest.raises(ValueError, match=match):
        saliency(**args)
