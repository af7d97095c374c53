import random

import numpy as np
import pytest
import torch
from torch import nn

from trainviz.core.guard import probe_guard
from trainviz.core.hooks import capture, count_hooks
from trainviz.core.layers import list_layers, resolve_layer, resolve_layers


def net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def test_resolve_by_name_module_and_auto():
    m = net()
    assert resolve_layer(m, "3") == ("3", m[3])
    assert resolve_layer(m, m[0])[0] == "0"
    # "auto": last module with a spatial (H*W > 1) 4-D output is the second ReLU, not the 1x1 pooling.
    assert resolve_layer(m, "auto", torch.randn(2, 3, 8, 8))[0] == "4"
    assert count_hooks(m) == 0
    assert list(resolve_layers(m, ["0", m[3], "0"])) == ["0", "3"]
    assert list_layers(m)[:2] == ["0", "1"]


def test_unknown_layer_names_close_matches():
    m = nn.Sequential()
    m.add_module("features", nn.Sequential(nn.Conv2d(1, 2, 3)))
    with pytest.raises(ValueError) as err:
        resolve_layer(m, "featurs")
    assert "'featurs'" in str(err.value) and "'features'" in str(err.value) and "list_layers" in str(err.value)
    wrapped = nn.Sequential()
    wrapped.add_module("net", m)
    assert resolve_layer(wrapped, "features")[0] == "net.features"  # a unique suffix
    with pytest.raises(ValueError, match="not a sub-module"):
        resolve_layer(m, nn.Linear(1, 1))


def test_capture_several_layers_one_forward_and_inplace_safety():
    m = net().eval()
    x = torch.randn(2, 3, 8, 8)
    layers = resolve_layers(m, ["1", "3"])
    with capture(m, layers, keep_graph=True) as acts:
        out = m(x)
    assert count_hooks(m) == 0
    # The BatchNorm output is followed by an in-place ReLU: the captured value must be pre-ReLU.
    expected_bn = m[1](m[0](x))
    assert torch.allclose(acts["1"], expected_bn)
    assert (acts["1"] < 0).any()
    # One autograd.grad gives gradients for both layers; compare with a manual recomputation.
    g1, g3 = torch.autograd.grad(out[:, 0].sum(), [acts["1"], acts["3"]])
    a = m[1](m[0](x)).detach().requires_grad_(True)
    b = m[3](torch.relu(a))
    manual = m[7](m[6](m[5](m[4](b))))
    r1, r3 = torch.autograd.grad(manual[:, 0].sum(), [a, b])
    assert torch.allclose(g1, r1, atol=1e-6) and torch.allclose(g3, r3, atol=1e-6)
    assert all(p.grad is None for p in m.parameters())


def test_capture_detached_copies_and_hooks_removed_after_error():
    m = net()
    with pytest.raises(RuntimeError, match="boom"):
        with capture(m, {"0": m[0]}) as acts:
            m(torch.randn(1, 3, 8, 8))
            raise RuntimeError("boom")
    assert not acts["0"].requires_grad
    assert count_hooks(m) == 0


def test_probe_guard_leaves_no_trace():
    m = net().train()
    m[1].eval()  # a frozen BatchNorm: mixed flags must survive
    flags = [mod.training for mod in m.modules()]
    bn_stats = (m[1].running_mean.clone(), m[1].running_var.clone())
    m[0].weight.grad = torch.ones_like(m[0].weight)
    grad_obj = m[0].weight.grad
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    expected = (torch.rand(3), np.random.rand(), random.random())
    torch.manual_seed(123)
    np.random.seed(5)
    random.seed(7)
    with torch.inference_mode():
        with probe_guard(m):
            assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
            assert not m.training
            x = torch.randn(4, 3, 8, 8, requires_grad=True)  # consumes the (forked) RNG
            np.random.rand(), random.random()
            (g,) = torch.autograd.grad(m(x).sum(), x)
            assert g.shape == x.shape
        assert torch.is_inference_mode_enabled()
    assert [mod.training for mod in m.modules()] == flags
    assert torch.equal(m[1].running_mean, bn_stats[0]) and torch.equal(m[1].running_var, bn_stats[1])
    assert m[0].weight.grad is grad_obj and torch.equal(grad_obj, torch.ones_like(grad_obj))
    assert m[3].weight.grad is None
    after = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]


def test_probe_guard_restores_after_exception():
    m = net().train()
    with pytest.raises(ValueError):
        with probe_guard(m):
            raise ValueError("x")
    assert all(mod.training for mod in m.modules())


def test_capture_reads_dict_like_module_outputs_and_auto_hooks_are_removed_for_tokens():
    from collections import OrderedDict

    class Backbone(nn.Module):  # Hugging Face style: a submodule returning a ModelOutput-like dict
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)

        def forward(self, x):
            h = self.conv(x)
            return OrderedDict(last_hidden_state=h, pooled=h.mean((2, 3)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Backbone()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.backbone(x)["pooled"])

    torch.manual_seed(0)
    m, x = Net().eval(), torch.rand(2, 3, 6, 6)
    with capture(m, {"backbone": m.backbone}) as acts:
        m(x)
    torch.testing.assert_close(acts["backbone"], m.backbone.conv(x).detach())
    # a transformer-like token model: "auto" runs a second, gradient pass; no hook survives either pass
    tokens = nn.Sequential(nn.Unflatten(1, (16, 3)), nn.Linear(3, 8), nn.LayerNorm(8), nn.Flatten(1), nn.Linear(128, 2))
    assert resolve_layer(tokens, "auto", torch.rand(1, 48))[0] == "2"
    assert count_hooks(tokens) == 0
