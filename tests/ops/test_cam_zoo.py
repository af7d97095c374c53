"""``layers="auto"`` and Grad-CAM on the model zoo: timm's ViT (class token), DeiT distilled (2 prefix tokens), a
register-token ViT, a mean-pooled register ViT, Swin (channels-last), ConvNeXt, EfficientNet, MobileNetV3 and
ResNet, with random weights and small inputs; Hugging Face ``transformers`` classifiers built from configs.

References: pytorch-grad-cam's ``GradCAM`` at the same layer with the equivalent ``reshape_transform`` (prefix
tokens dropped and patches laid out; a permute for Swin; none for CNNs), its maps taken at the layer's own
resolution; pytorch-grad-cam's documented layers (ViT ``blocks[-1].norm1``, Swin ``layers[-1].blocks[-1].norm1``,
ResNet ``layer4``, ConvNeXt ``stages[-1]``); timm's own pooled features (``forward_head(pre_logits=True)``)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from trainviz.core.hooks import count_hooks
from trainviz.core.layers import Layout, find_last_spatial_layer, model_layout, resolve_layer, stride_fits
from trainviz.core.outputs import LogitsModel
from trainviz.ops.cam import grad_cam, minmax_scale

timm = pytest.importorskip("timm")
pgc = pytest.importorskip("pytorch_grad_cam")

# name, timm model, kwargs, input side, the layer "auto" takes, pytorch-grad-cam's documented layer (or None)
ZOO = {
    "vit": ("vit_tiny_patch16_224", {"img_size": 64, "depth": 2}, 64, "blocks.1.norm1", "blocks.1.norm1"),
    "deit_distilled": (
        "deit_tiny_distilled_patch16_224",
        {"img_size": 64, "depth": 2},
        64,
        "blocks.1.norm1",
        "blocks.1.norm1",
    ),
    "vit_registers": (
        "vit_small_patch14_reg4_dinov2",
        {"img_size": 56, "depth": 2, "embed_dim": 64, "num_heads": 2},
        56,
        "blocks.1.norm1",
        "blocks.1.norm1",
    ),
    "vit_registers_gap": (
        "vit_base_patch16_reg4_gap_256",
        {"img_size": 64, "depth": 2, "embed_dim": 64, "num_heads": 2},
        64,
        "blocks",
        "blocks.1.norm1",
    ),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"img_size": 128, "window_size": 2, "depths": (1, 1, 1, 1), "embed_dim": 48, "num_heads": (2, 2, 2, 2)},
        128,
        "norm",
        "layers.3.blocks.0.norm1",
    ),
    "convnext": ("convnext_tiny", {"depths": (1, 1, 1, 1), "dims": (16, 32, 48, 64)}, 128, "norm_pre", "stages.3"),
    "efficientnet": ("efficientnet_b0", {}, 128, "bn2", None),
    "mobilenetv3": ("mobilenetv3_small_050", {}, 128, "blocks", None),
    "resnet": ("resnet18", {}, 128, "layer4", "layer4"),
}


def make(key: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The model (eval, random weights, head scaled up so raw maps are O(1)) and 2 images."""
    name, kwargs, side, _, _ = ZOO[key]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = timm.create_model(name, pretrained=False, num_classes=5, **kwargs).eval()
        for head in (net.get_classifier(), getattr(net, "head_dist", None)):
            if isinstance(head, nn.Linear):
                head.weight.data.mul_(1000.0)
    return net, torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(seed + 1))


def pgc_reshape(net: nn.Module, key: str):
    """pytorch-grad-cam's ``reshape_transform`` for the model: drop the prefix tokens and lay out the patches
    (ViT), permute channels-last maps (Swin), nothing (CNNs)."""
    if key == "swin":
        return lambda t: t.permute(0, 3, 1, 2)
    prefix = getattr(net, "num_prefix_tokens", None)
    if prefix is None:
        return None

    def vit(t: torch.Tensor) -> torch.Tensor:
        side = math.isqrt(t.shape[1] - prefix)
        return t[:, prefix:].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

    return vit


def pgc_at_layer_resolution(net: nn.Module, layer: str, x: torch.Tensor, targets: list[int], reshape) -> torch.Tensor:
    """pytorch-grad-cam's Grad-CAM, min-max scaled at the layer's own resolution (no resize to the input)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    class AtLayer(pgc.GradCAM):
        def get_target_width_height(self, input_tensor):  # the size its maps are scaled to: the layer's own
            return self._layer_size

    ref = copy.deepcopy(net)  # pytorch-grad-cam calls .eval() and .backward() on its model
    module = ref.get_submodule(layer)
    out = {}
    handle = module.register_forward_hook(lambda _m, _i, o: out.setdefault("t", o))
    try:
        with torch.no_grad():
            ref(x[:1])
    finally:
        handle.remove()
    grid = reshape(out["t"]) if reshape is not None else out["t"]
    with AtLayer(ref, [module], reshape_transform=reshape) as explainer:
        explainer._layer_size = (int(grid.shape[-1]), int(grid.shape[-2]))
        return torch.from_numpy(explainer(x, [ClassifierOutputTarget(t) for t in targets]))


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


# ------------------------------------------------------------------------------------------------
# the layout rules
# ------------------------------------------------------------------------------------------------
def test_stride_fits_and_layouts_by_hand():
    # 64 over whole strides, rounded down or up: 64, 32, 21 (or 22), 16, 13, ...
    assert [s for s in range(1, 65) if stride_fits(s, 64)][-6:] == [13, 16, 21, 22, 32, 64]
    assert not stride_fits(17, 64) and not stride_fits(65, 64) and stride_fits(64, 64)
    layout = Layout((64, 64), prefix=2, class_token=True)
    assert layout.spatial((1, 96, 16, 16)) == "nchw"
    assert layout.spatial((1, 16, 16, 96)) == "nhwc"  # channels-last: 96 is no side of a 64-px input
    assert layout.spatial((1, 3, 17, 64)) is None  # 17 tokens of a ViT's attention are no side either
    assert layout.spatial((1, 16, 16, 16)) == "nchw"  # both readings fit: (N, C, H, W)
    x = torch.randn(2, 4, 4, 48)
    torch.testing.assert_close(layout.to_maps(x), x.permute(0, 3, 1, 2))
    tokens = torch.randn(2, 2 + 16, 8)  # class and distillation tokens, then 4 x 4 patches
    grid = layout.to_maps(tokens)
    torch.testing.assert_close(grid[:, :, 1, 2], tokens[:, 2 + 1 * 4 + 2])
    torch.testing.assert_close(layout.pool(tokens), tokens[:, 0])  # the class token
    no_class = Layout((64, 64), prefix=4, class_token=False)  # register tokens only: the mean patch token
    regs = torch.randn(2, 4 + 16, 8)
    torch.testing.assert_close(no_class.pool(regs), regs[:, 4:].mean(1))
    with pytest.raises(ValueError, match="2 prefix tokens .* pass `reshape=`"):
        layout.to_maps(torch.randn(2, 2 + 12, 8), "blocks.0")


def test_auto_never_takes_attention_internals_and_reads_channels_last_maps():
    class Heads(nn.Module):
        def forward(self, t):
            return t.unflatten(2, (2, 4)).transpose(1, 2)

    class Internals(nn.Module):  # a token net whose 4-D outputs are attention tensors: never feature maps
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 8, stride=8)
            self.norm = nn.LayerNorm(8)
            self.heads = Heads()
            self.weights = nn.Identity()
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            t = self.norm(self.embed(x).flatten(2).transpose(1, 2))  # (N, 16, 8)
            q = self.heads(t)  # (N, 2 heads, 16, 4): its sides 16 and 4 fit a 32-px input
            self.weights(q @ q.transpose(-2, -1))  # (N, 2, 16, 16)
            return self.head(t.mean(1))

    torch.manual_seed(0)
    net, x = Internals().eval(), torch.rand(1, 3, 32, 32)
    assert find_last_spatial_layer(net, x) == "norm"

    class ChannelsLast(nn.Module):  # a Swin-like net: the last maps are (N, H, W, C)
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Conv2d(3, 48, 4, stride=4)
            self.norm = nn.LayerNorm(48)
            self.head = nn.Linear(48, 3)

        def forward(self, x):
            return self.head(self.norm(self.embed(x).permute(0, 2, 3, 1)).mean((1, 2)))

    net, x = ChannelsLast().eval(), torch.rand(2, 3, 32, 32)
    assert find_last_spatial_layer(net, x[:1]) == "norm"
    result = grad_cam(net, x, "auto", 1)
    assert result.raw["norm"].shape == (2, 8, 8)  # (N, 8, 8, 48) read as 8 x 8 maps of 48 channels


def test_auto_warns_for_maps_without_a_whole_stride(caplog):
    net = nn.Sequential(nn.Conv2d(3, 4, 5), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))  # 28 -> 24: no whole stride
    net(torch.rand(1, 3, 28, 28))
    with caplog.at_level("WARNING", logger="trainviz.core.layers"):
        assert resolve_layer(net.eval(), "auto", torch.rand(1, 3, 28, 28))[0] == "1"
    assert "whole-number stride" in caplog.text


# ------------------------------------------------------------------------------------------------
# timm
# ------------------------------------------------------------------------------------------------
SLOW = {"efficientnet", "resnet"}  # 128-px CNNs: a few seconds each


@pytest.mark.parametrize("key", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW else k for k in ZOO])
def test_auto_layer_and_grad_cam_match_pytorch_grad_cam(key):
    net, x = make(key)
    expected, documented = ZOO[key][3], ZOO[key][4]
    assert find_last_spatial_layer(net, x[:1]) == expected
    targets = [0, 3]
    result = grad_cam(net, x, "auto", torch.tensor(targets))
    assert list(result.maps) == [expected] and count_hooks(net) == 0
    raw = result.raw[expected]
    live = raw.flatten(1).std(1) > 0  # Grad-CAM's ReLU may blank an image of a random net
    assert bool(live.any())  # non-degenerate maps
    reference = pgc_at_layer_resolution(net, expected, x, targets, pgc_reshape(net, key))
    assert reference.shape == raw.shape
    torch.testing.assert_close(minmax_scale(raw), reference.float(), atol=1e-5, rtol=0)
    if documented is not None and key not in DOCUMENTED_ELSEWHERE:
        at_documented = grad_cam(net, x, documented, torch.tensor(targets)).maps[documented]
        for a, b in zip(result.maps[expected][live], at_documented[live]):
            assert pearson(a, b) >= 0.95


# auto takes another layer than pytorch-grad-cam's documented one, and the README says why
DOCUMENTED_ELSEWHERE = {"vit_registers_gap", "swin"}


def test_timm_declarations_are_read():
    net, x = make("deit_distilled")
    assert model_layout(net, x) == Layout((64, 64), prefix=2, class_token=True)
    net, x = make("vit_registers_gap")
    assert model_layout(net, x) == Layout((64, 64), prefix=4, class_token=False)
    net, x = make("resnet")
    assert model_layout(net, x) == Layout((128, 128), None, None)


@pytest.mark.parametrize(("key", "layer"), [("vit", "norm"), ("vit_registers_gap", "blocks"), ("swin", "norm")])
def test_embedding_auto_is_the_models_own_pooled_features(key, layer):
    from trainviz.probes.embedding import EmbeddingOptions, capture

    net, x = make(key)
    layout = model_layout(net, x)
    assert find_last_spatial_layer(net, x[:1], layout, gradient=False) == layer
    features, logits = capture(net, {layer: net.get_submodule(layer)}, x, EmbeddingOptions(methods="pca"), layout)
    with torch.no_grad():
        tokens = net.forward_features(x)
        if key == "vit_registers_gap":  # timm averages the patch tokens, then applies fc_norm
            expected = tokens[:, net.num_prefix_tokens :].mean(1)
        else:  # the class token after the final norm / the average of Swin's channels-last maps
            expected = net.forward_head(tokens, pre_logits=True)
        torch.testing.assert_close(logits, net(x))
    torch.testing.assert_close(features[layer], expected, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------
# Hugging Face transformers, from configs (random weights, no download)
# ------------------------------------------------------------------------------------------------
def hf_model(kind: str) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if kind == "vit":
            config = transformers.ViTConfig(
                image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=64, num_labels=5,
            )  # fmt: skip
            net = transformers.ViTForImageClassification(config)
        elif kind == "swin":
            config = transformers.SwinConfig(
                image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=5
            )
            net = transformers.SwinForImageClassification(config)
        else:
            config = transformers.ConvNextConfig(num_stages=2, hidden_sizes=[16, 32], depths=[1, 1], num_labels=5)
            net = transformers.ConvNextForImageClassification(config)
        net.classifier.weight.data.mul_(1000.0)
    return net.eval()


class Logits(nn.Module):
    """pytorch-grad-cam's side: a model returning ``.logits``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).logits


@pytest.mark.parametrize(
    ("kind", "layer"),
    [
        ("vit", "vit.layers.1.layernorm_before"),  # pytorch-grad-cam's documented layer for Hugging Face's ViT
        ("swin", "swin.layernorm"),
        ("convnext", "convnext.encoder.stages.1"),
    ],
)
def test_hugging_face_classifiers(kind, layer):
    net = hf_model(kind)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model = LogitsModel(net)  # the default finds ImageClassifierOutput.logits
    torch.testing.assert_close(model(x), net(x).logits)
    assert find_last_spatial_layer(model, x[:1]) == layer
    targets = [1, 4]
    result = grad_cam(model, x, "auto", torch.tensor(targets))
    raw = result.raw[layer]
    assert bool((raw.flatten(1).std(1) > 0).any())
    if kind == "convnext":
        reshape = None
    else:
        prefix = 1 if kind == "vit" else 0

        def reshape(t):
            side = math.isqrt(t.shape[1] - prefix)
            return t[:, prefix:].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

    wrapped = Logits(net)
    reference = pgc_at_layer_resolution(wrapped, "net." + layer, x, targets, reshape)
    torch.testing.assert_close(minmax_scale(raw), reference.float(), atol=1e-5, rtol=0)
    if kind != "convnext":  # the embedding: ViT's class token, Swin's average token (Hugging Face's own pooling)
        from trainviz.probes.embedding import EmbeddingOptions, capture

        layout = model_layout(model, x)
        name = find_last_spatial_layer(model, x[:1], layout, gradient=False)
        assert name == f"{kind}.layernorm"
        features, _ = capture(model, {name: net.get_submodule(name)}, x, EmbeddingOptions(methods="pca"), layout)
        with torch.no_grad():
            base = getattr(net, kind)(x)
        expected = base.last_hidden_state[:, 0] if kind == "vit" else base.pooler_output
        torch.testing.assert_close(features[name], expected, atol=1e-5, rtol=1e-5)
