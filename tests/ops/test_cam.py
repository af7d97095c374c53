"""CAM, Grad-CAM, Grad-CAM++, aggregation and guided backprop against Captum, pytorch-grad-cam and hand values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainviz.core.hooks import count_hooks
from trainviz.ops.cam import (
    ClassActivationMaps,
    activations_and_gradients,
    cam,
    class_activation_maps,
    class_mean_maps,
    grad_cam,
    grad_cam_pp,
    minmax_scale,
    resize_maps,
)
from trainviz.ops.guided import guided_backprop, guided_grad_cam, guided_relu

SIZE = 20


class Residual(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)) + x)


def make_net(kind: str, seed: int = 0, inplace: bool = False) -> nn.Module:
    """Small random conv nets; the head is scaled up so raw maps are O(1) (pytorch-grad-cam adds 1e-7
    when it min-max scales, which would otherwise dominate tiny maps)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if kind == "plain":
            net = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1),
                nn.BatchNorm2d(8),
                nn.ReLU(inplace=inplace),
                nn.Conv2d(8, 16, 3, stride=2, padding=1),
                nn.ReLU(inplace=inplace),
                nn.Conv2d(16, 16, 3, stride=2, padding=1),
                nn.ReLU(inplace=inplace),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(16, 5),
            )
        elif kind == "maxpool":
            net = nn.Sequential(
                nn.Conv2d(3, 6, 5, padding=2),
                nn.ReLU(inplace=inplace),
                nn.MaxPool2d(2),
                nn.Conv2d(6, 12, 3),
                nn.ReLU(inplace=inplace),
                nn.Conv2d(12, 12, 3, padding=1),
                nn.ReLU(inplace=inplace),
                nn.Flatten(),
                nn.Linear(12 * 8 * 8, 5),
            )
        elif kind == "residual":
            net = nn.Sequential(
                nn.Conv2d(3, 8, 3, stride=2, padding=1),
                nn.ReLU(inplace=inplace),
                Residual(8),
                nn.Conv2d(8, 8, 3, padding=1),
                nn.ReLU(inplace=inplace),
                Residual(8),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(8, 5),
            )
        else:
            raise AssertionError(kind)
        for m in net.modules():  # non-trivial BatchNorm statistics
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
        net[-1].weight.data.mul_(1000.0)
    return net.eval()


LAYERS = {"plain": ["2", "4", "6"], "maxpool": ["1", "4", "6"], "residual": ["1", "2", "5"]}


def images(n: int = 4, seed: int = 1, channels: int = 3, size: int = SIZE) -> torch.Tensor:
    return torch.randn(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def close_scaled(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> None:
    torch.testing.assert_close(minmax_scale(a.float()), minmax_scale(b.float()), atol=atol, rtol=0)


# ------------------------------------------------------------------------------------------------
# references
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["plain", "maxpool", "residual"])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_grad_cam_matches_captum_layer_grad_cam(kind, n_layers):
    from captum.attr import LayerAttribution, LayerGradCam

    net, x = make_net(kind), images()
    names = LAYERS[kind][-n_layers:]
    targets = torch.tensor([0, 1, 4, 2])
    result = grad_cam(net, x, names, targets)
    modules = dict(net.named_modules())
    for name in names:
        attr = LayerGradCam(net, modules[name]).attribute(x, targets, relu_attributions=True)
        reference = LayerAttribution.interpolate(attr, (SIZE, SIZE), interpolate_mode="bilinear")[:, 0]
        assert reference.abs().amax() > 0
        close_scaled(result.maps[name], reference)
        torch.testing.assert_close(result.raw[name], attr[:, 0].detach(), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
@pytest.mark.parametrize("kind", ["plain", "maxpool", "residual"])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_maps_and_mean_aggregate_match_pytorch_grad_cam(method, kind, n_layers):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    net, x = make_net(kind, seed=3), images(seed=4)
    names = LAYERS[kind][-n_layers:]
    targets = [3, 0, 1, 1]
    result = class_activation_maps(net, x, names, torch.tensor(targets), method=method, aggregate="mean")
    cls = pgc.GradCAM if method == "gradcam" else pgc.GradCAMPlusPlus
    modules = dict(net.named_modules())
    with cls(net, [modules[n] for n in names]) as explainer:
        reference = torch.from_numpy(explainer(x, [ClassifierOutputTarget(t) for t in targets]))
    close_scaled(result.aggregate, reference)
    if n_layers == 1:
        close_scaled(result.maps[names[0]], reference)


def test_max_aggregate_scales_each_layer_at_its_own_resolution_first():
    net, x = make_net("plain"), images()
    names = LAYERS["plain"]
    result = grad_cam(net, x, names, 2, aggregate="max")
    per_layer = [
        F.interpolate(minmax_scale(result.raw[n])[:, None], (SIZE, SIZE), mode="bilinear")[:, 0] for n in names
    ]
    expected = minmax_scale(torch.stack(per_layer).amax(0))
    torch.testing.assert_close(result.aggregate, expected, atol=1e-6, rtol=0)
    mean = grad_cam(net, x, names, 2, aggregate="mean").aggregate
    assert (mean - result.aggregate).abs().max() > 1e-3  # the two modes differ


def test_cam_equals_grad_cam_for_global_average_pooling_and_linear():
    from trainviz.models.small import SmallCNN

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = SmallCNN(num_classes=6).eval()
    x = images(n=5, size=32)
    targets = torch.tensor([0, 1, 2, 3, 5])
    by_cam = cam(net, x, "features", targets)
    by_grad = grad_cam(net, x, "features", targets)
    h, w = by_cam.raw["features"].shape[-2:]
    torch.testing.assert_close(by_cam.raw["features"], by_grad.raw["features"] * (h * w), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(by_cam.maps["features"], by_grad.maps["features"], atol=1e-5, rtol=0)
    assert by_cam.raw["features"].amax() > 0


def test_cam_explains_when_it_does_not_apply():
    net = make_net("maxpool")  # flatten + linear: no global average pooling
    with pytest.raises(ValueError, match="CAM does not apply at layer '6'.*12 channels"):
        cam(net, images(), "6")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        mlp_head = nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 4),
            nn.ReLU(),
            nn.Linear(4, 3),
        ).eval()
    with pytest.raises(ValueError, match="logits are not 6\\(global average pooling of 1\\)"):
        cam(mlp_head, images(), "1")
    with pytest.raises(ValueError, match="Expected `fc_layer` '0' to be an nn.Linear"):
        cam(mlp_head, images(), "1", fc_layer="0")


# ------------------------------------------------------------------------------------------------
# hand-computed values
# ------------------------------------------------------------------------------------------------
def tiny_net() -> nn.Module:
    """x (1x2x2) -> 1x1 conv with weights [1, -1] -> ReLU (A) -> GAP -> linear W = [[1, 2], [3, -1]]."""
    net = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 2, bias=False)
    )
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        net[4].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -1.0]]))
    return net.eval()


def test_hand_computed_values_on_a_tiny_net():
    # x = [[1, 2], [-1, 3]]: A_0 = [[1, 2], [0, 3]], A_1 = [[0, 0], [1, 0]]; GAP = [1.5, 0.25].
    # dy_c/dA_k = W[c, k] / 4 everywhere.
    x = torch.tensor([[[[1.0, 2.0], [-1.0, 3.0]]]])
    net = tiny_net()
    two = torch.cat([x, x])
    targets = torch.tensor([0, 1])
    # Grad-CAM: class 0 weights [0.25, 0.5]; class 1 weights [0.75, -0.25] -> ReLU([[.75, 1.5], [-.25, 2.25]]).
    expected_grad = torch.tensor([[[0.25, 0.5], [0.5, 0.75]], [[0.75, 1.5], [0.0, 2.25]]])
    torch.testing.assert_close(grad_cam(net, two, "1", targets).raw["1"], expected_grad)
    # CAM: W[c] . A = 4 x Grad-CAM (before the ReLU class 1 has -1 at the bottom left).
    torch.testing.assert_close(cam(net, two, "1", targets).raw["1"], 4 * expected_grad)
    # Grad-CAM++ class 0: g = [0.25, 0.5], sum(A) = [6, 1]; alpha = g^2 / (2 g^2 + sum(A) g^3) = [2/7, 0.4];
    # w = 4 alpha g = [2/7, 0.8]; map = 2/7 A_0 + 0.8 A_1.
    expected_pp = torch.tensor([[2 / 7, 4 / 7], [0.8, 6 / 7]])
    pp = grad_cam_pp(net, x, "1", 0)
    torch.testing.assert_close(pp.raw["1"][0], expected_pp, atol=1e-5, rtol=0)
    torch.testing.assert_close(pp.maps["1"][0], (expected_pp - 2 / 7) / (6 / 7 - 2 / 7), atol=1e-5, rtol=0)
    # logits: y = [1.5 + 0.5, 4.5 - 0.25] = [2, 4.25] -> predicted class 1.
    result = grad_cam(net, x, "1")
    torch.testing.assert_close(result.logits, torch.tensor([[2.0, 4.25]]))
    assert result.targets.tolist() == [1]


# ------------------------------------------------------------------------------------------------
# targets, faces, batching
# ------------------------------------------------------------------------------------------------
def test_function_and_class_faces_agree():
    net, x = make_net("residual"), images()
    explain = ClassActivationMaps(net, LAYERS["residual"], method="gradcam++", aggregate="max")
    a = explain(x, targets="topk", k=2)
    b = grad_cam_pp(net, x, LAYERS["residual"], "topk", k=2, aggregate="max")
    torch.testing.assert_close(a.aggregate, b.aggregate)
    for name in LAYERS["residual"]:
        torch.testing.assert_close(a.maps[name], b.maps[name])


def test_topk_and_class_list_equal_one_call_per_class():
    net, x = make_net("plain"), images()
    names = LAYERS["plain"]
    top = grad_cam(net, x, names, "topk", k=3)
    assert top.aggregate.shape == (4, 3, SIZE, SIZE) and top.targets.shape == (4, 3)
    torch.testing.assert_close(top.targets, top.logits.topk(3, 1).indices)
    for j in range(3):
        single = grad_cam(net, x, names, top.targets[:, j])
        torch.testing.assert_close(top.aggregate[:, j], single.aggregate)
        torch.testing.assert_close(top.raw["4"][:, j], single.raw["4"])
    listed = grad_cam(net, x, names, [4, 0])
    torch.testing.assert_close(listed.aggregate[:, 1], grad_cam(net, x, names, 0).aggregate)
    predicted = grad_cam(net, x, names)
    torch.testing.assert_close(predicted.targets, predicted.logits.argmax(1))


def test_batched_equals_one_batch():
    net, x = make_net("plain"), images(n=7)
    whole = grad_cam(net, x, LAYERS["plain"], torch.arange(7) % 5)
    parts = grad_cam(net, x, LAYERS["plain"], torch.arange(7) % 5, batch_size=3)
    torch.testing.assert_close(whole.aggregate, parts.aggregate)
    torch.testing.assert_close(whole.logits, parts.logits)


class Counter:
    def __init__(self, monkeypatch, net):
        self.forwards = 0
        self.grads = 0
        real = torch.autograd.grad

        def counting_grad(*args, **kwargs):
            self.grads += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", counting_grad)
        net.register_forward_pre_hook(self._count)

    def _count(self, *_):
        self.forwards += 1


@pytest.mark.parametrize(
    ("call", "forwards", "grads"),
    [
        (lambda net, x: grad_cam(net, x, LAYERS["plain"], 1), 1, 1),
        (lambda net, x: grad_cam_pp(net, x, LAYERS["plain"], "topk", k=3), 1, 3),
        (lambda net, x: cam(net, x, "6", 1), 1, 0),
        (lambda net, x: guided_grad_cam(net, x, LAYERS["plain"], 1), 1, 2),
        (lambda net, x: guided_backprop(net, x, 1), 1, 1),
    ],
)
def test_one_forward_and_one_autograd_grad_per_target_for_all_layers(monkeypatch, call, forwards, grads):
    net, x = make_net("plain"), images()
    counter = Counter(monkeypatch, net)
    call(net, x)
    assert (counter.forwards, counter.grads) == (forwards, grads)


# ------------------------------------------------------------------------------------------------
# no trace
# ------------------------------------------------------------------------------------------------
def test_parameter_grads_modes_and_hooks_untouched():
    net, x = make_net("plain"), images()
    net[1].train()  # a mixed-mode model stays mixed
    sentinel = {n: torch.full_like(p, 0.5) for n, p in net.named_parameters() if n.startswith("0.")}
    for n, p in net.named_parameters():
        p.grad = sentinel.get(n)
    before = {n: p.grad for n, p in net.named_parameters()}
    guided_grad_cam(net, x, LAYERS["plain"], "topk", k=2)
    for n, p in net.named_parameters():
        assert p.grad is before[n]
        if n in sentinel:
            assert torch.equal(p.grad, torch.full_like(p, 0.5))
    assert [m.training for m in net.modules()] == [m is net[1] for m in net.modules()]
    assert count_hooks(net) == 0


def test_hooks_removed_when_the_forward_raises():
    net, x = make_net("plain"), images()

    def boom(*_):
        raise RuntimeError("boom")

    handle = net[-1].register_forward_pre_hook(boom)
    for call in (lambda: grad_cam(net, x, LAYERS["plain"]), lambda: guided_grad_cam(net, x, LAYERS["plain"])):
        with pytest.raises(RuntimeError, match="boom"):
            call()
        assert count_hooks(net) == 1  # only the test's own hook
    handle.remove()
    assert count_hooks(net) == 0


def test_works_inside_inference_mode_and_with_frozen_parameters():
    net, x = make_net("residual"), images()
    expected = grad_cam(net, x, LAYERS["residual"], 3).aggregate
    with torch.inference_mode():
        inside = grad_cam(net, x.clone(), LAYERS["residual"], 3).aggregate
    torch.testing.assert_close(inside, expected)
    for p in net.parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(grad_cam(net, x, LAYERS["residual"], 3).aggregate, expected)


def test_global_rng_untouched():
    net, x = make_net("plain"), images()
    state = torch.get_rng_state()
    grad_cam_pp(net, x, LAYERS["plain"])
    guided_backprop(net, x)
    assert torch.equal(torch.get_rng_state(), state)


# ------------------------------------------------------------------------------------------------
# guided backprop
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["plain", "residual"])
def test_guided_backprop_matches_captum_and_survives_inplace_relu(kind):
    from captum.attr import GuidedBackprop

    x = images()
    targets = torch.tensor([1, 0, 3, 3])
    reference = GuidedBackprop(make_net(kind)).attribute(x.clone(), targets)
    ours = guided_backprop(make_net(kind), x, targets)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-5)
    inplace = make_net(kind, inplace=True)
    flags = [m.inplace for m in inplace.modules() if isinstance(m, nn.ReLU)]
    assert any(flags)
    torch.testing.assert_close(guided_backprop(inplace, x, targets), reference, atol=1e-6, rtol=1e-5)
    assert [m.inplace for m in inplace.modules() if isinstance(m, nn.ReLU)] == flags  # no permanent change
    assert count_hooks(inplace) == 0


def test_guided_rule_differs_from_plain_gradient_only_where_gradients_are_negative():
    net, x = make_net("plain"), images()
    x = x.clone().requires_grad_()
    (plain,) = torch.autograd.grad(net(x)[:, 2].sum(), x)
    guided = guided_backprop(net, x.detach(), 2)
    assert not torch.allclose(plain, guided)
    with guided_relu(net):  # the switch is never activated: the plain gradient
        y = net(x)
        (inactive,) = torch.autograd.grad(y[:, 2].sum(), x)
    torch.testing.assert_close(inactive, plain)
    assert count_hooks(net) == 0


def test_guided_grad_cam_is_guided_backprop_times_the_map():
    net, x = make_net("plain"), images()
    names = LAYERS["plain"]
    result = guided_grad_cam(net, x, names, 1)
    torch.testing.assert_close(result.guided, guided_backprop(net, x, 1))
    torch.testing.assert_close(result.aggregate, grad_cam(net, x, names, 1).aggregate)
    torch.testing.assert_close(result.guided_grad_cam, result.guided * result.aggregate[:, None])
    with pytest.raises(ValueError, match="no guided backpropagation"):
        _ = grad_cam(net, x, names, 1).guided_grad_cam


def test_guided_backprop_follows_functional_relus_without_a_warning():
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean((2, 3)))

    import warnings

    with warnings.catch_warnings():  # functional relus are guided now (relu_rule): no "plain gradient" warning
        warnings.simplefilter("error")
        guided_backprop(Functional().eval(), images())


def test_guided_backprop_warns_when_the_forward_runs_no_relu_and_returns_the_plain_gradient():
    class NoRelu(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(F.gelu(self.conv(x)).mean((2, 3)))

    torch.manual_seed(0)
    net, x = NoRelu().eval(), images()
    with pytest.warns(UserWarning, match="guided backpropagation saw no relu in the forward of NoRelu.*plain input"):
        guided = guided_backprop(net, x)
    x = x.clone().requires_grad_(True)
    logits = net(x)
    target = logits.argmax(1)
    (plain,) = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
    torch.testing.assert_close(guided, plain)


# ------------------------------------------------------------------------------------------------
# helpers and argument checks
# ------------------------------------------------------------------------------------------------
def test_minmax_resize_and_class_means():
    maps = torch.tensor([[[1.0, 3.0], [2.0, 5.0]], [[2.0, 2.0], [2.0, 2.0]]])
    torch.testing.assert_close(minmax_scale(maps), torch.tensor([[[0.0, 0.5], [0.25, 1.0]], [[0.0, 0.0], [0.0, 0.0]]]))
    assert minmax_scale(maps * 1e-20)[0, 1, 1] == 1.0  # scale-invariant
    assert resize_maps(maps, (2, 2)) is maps
    torch.testing.assert_close(resize_maps(maps, (4, 4)), F.interpolate(maps[:, None], (4, 4), mode="bilinear")[:, 0])
    means, counts = class_mean_maps(torch.stack([maps[0], maps[1], 3 * maps[0]]), torch.tensor([2, 0, 2]), 4)
    assert counts.tolist() == [1, 0, 2, 0]
    torch.testing.assert_close(means[2], 2 * maps[0])
    torch.testing.assert_close(means[1], torch.zeros(2, 2))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "scorecam"}, "Expected `method` to be one of 'cam', 'gradcam', 'gradcam\\+\\+'"),
        ({"aggregate": "sum"}, "Expected `aggregate` to be one of 'mean', 'max'"),
        ({"targets": torch.tensor([0.5, 1, 2, 3])}, "integer tensor of shape \\(4,\\)"),
        ({"targets": torch.tensor([0, 1])}, "integer tensor of shape \\(4,\\)"),
        ({"targets": 7}, "target classes in 0..4"),
        ({"targets": "best"}, "Expected `targets` to be one of 'predicted', 'topk'"),
        ({"targets": "topk", "k": 0}, "Expected `k` to be a positive int"),
        ({"targets": "topk", "k": 6}, "Expected `k` <= the 5 classes"),
        ({"layers": "9"}, "Expected layer '9' to output feature maps"),
        ({"layers": "nope"}, "Layer 'nope' not found"),
        ({"layers": []}, "at least one layer"),
        ({"batch_size": 0}, "Expected `batch_size` to be a positive int"),
    ],
)
def test_arguments_are_checked(kwargs, message):
    net, x = make_net("plain"), images()
    kwargs = {"layers": "6", **kwargs}
    layers = kwargs.pop("layers")
    targets = kwargs.pop("targets", "predicted")
    with pytest.raises(ValueError, match=message):
        class_activation_maps(net, x, layers, targets, **kwargs)
    with pytest.raises(ValueError, match="floating tensor of shape \\(N, C, H, W\\)"):
        activations_and_gradients(net, x[0], "6")
