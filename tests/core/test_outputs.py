"""``output=`` specs (trainviz.core.outputs): defaults, keys, indices, callables, the error for an unknown output,
and :class:`LogitsModel` as a transparent adapter (layer names, hooks, modes) checked against Captum."""

from __future__ import annotations

import warnings
from collections import OrderedDict, namedtuple
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from trainviz.core.hooks import capture, count_hooks
from trainviz.core.layers import list_layers, resolve_layer, resolve_layers
from trainviz.core.outputs import LogitsModel, as_logits_model, check_output_spec, describe_output, to_logits, unwrap
from trainviz.ops.adversarial import fgsm_accuracy
from trainviz.ops.cam import grad_cam
from trainviz.ops.class_maps import logits_and_maps
from trainviz.ops.predict import predict_logits

HOW = "pass `output=` to the callback (or `default_callbacks(output=...)`): a key, an index or a callable"
L = torch.arange(6.0).reshape(2, 3)
AUX = torch.zeros(2, 7)


class ModelOutput(OrderedDict):
    """Hugging Face style: dict-like, fields also attributes."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError as err:
            raise AttributeError(name) from err


Pair = namedtuple("Pair", ["aux", "scores"])


@pytest.mark.parametrize(
    "out",
    [
        L,
        (L, AUX),
        [L, AUX],
        (L,),
        ModelOutput(loss=torch.tensor(1.0), logits=L),
        SimpleNamespace(logits=L, hidden=AUX),
        {"aux": AUX, "logits": L},
    ],
    ids=["tensor", "tuple", "list", "1-tuple", "model-output", "attribute", "dict"],
)
def test_defaults_find_the_logits(out):
    assert to_logits(out) is L


@pytest.mark.parametrize(
    ("out", "spec"),
    [
        ((AUX[:, :1, None], L), 1),
        ((AUX, L), -1),
        ([torch.zeros(2, 1, 4, 4), L], 1),
        ({"scores": L, "aux": AUX}, "scores"),
        (ModelOutput(logits=AUX, other=L), "other"),
        (Pair(AUX, L), "scores"),  # a namedtuple field by name
        (SimpleNamespace(head=L), "head"),
        ({"head": (L, AUX)}, lambda out: out["head"][0]),
    ],
    ids=[
        "index",
        "negative-index",
        "list-index",
        "key",
        "model-output-key",
        "namedtuple-field",
        "attribute",
        "callable",
    ],
)
def test_specs_pick_the_logits(out, spec):
    assert to_logits(out, spec) is L
    assert LogitsModel(nn.Identity(), spec)(out) is L


@pytest.mark.parametrize(
    ("out", "spec", "message"),
    [
        ({"scores": L, "aux": AUX}, None, "it returned dict\\(scores: Tensor\\[2, 3\\], aux: Tensor\\[2, 7\\]\\)"),
        ((torch.zeros(2, 1, 4, 4), L), None, "it returned tuple\\(Tensor\\[2, 1, 4, 4\\], Tensor\\[2, 3\\]\\)"),
        (torch.zeros(2, 3, 1), None, "the model returned Tensor\\[2, 3, 1\\]"),
        ("text", None, "it returned str"),
        (Pair(AUX[:, :1, None], L), None, "Pair\\(aux: Tensor\\[2, 1, 1\\], scores: Tensor\\[2, 3\\]\\)"),
        ((L, AUX), 2, "`output=2` is out of range for the model's tuple\\(Tensor\\[2, 3\\], Tensor\\[2, 7\\]\\)"),
        (L, 0, "`output=0` is an index, but the model returned Tensor\\[2, 3\\]"),
        ({"logits": L}, "scores", "`output='scores'`: no such key in the model's dict\\(logits: Tensor\\[2, 3\\]\\)"),
        (SimpleNamespace(logits=L), "scores", "has no such key or attribute"),
        ((AUX[:, :1, None], L), 0, "`output=0` picked Tensor\\[2, 1, 1\\] from the model's tuple"),
        ((L, AUX), lambda out: out, "`output='<lambda>'` picked tuple"),
    ],
)
def test_errors_say_what_the_model_returned_and_how_to_pass_output(out, spec, message):
    with pytest.raises(ValueError, match=message) as info:
        to_logits(out, spec)
    assert HOW in str(info.value)


@pytest.mark.parametrize("bad", [1.5, True, "", ["logits"], b"logits"])
def test_spec_type_is_checked(bad):
    with pytest.raises(
        ValueError, match="Expected `output` to be None, a key \\(str\\), an index \\(int\\) or a callable"
    ):
        check_output_spec(bad)
    with pytest.raises(ValueError, match="Expected `output`"):
        LogitsModel(nn.Identity(), bad)
    for good in (None, 0, -1, "logits", len):
        assert check_output_spec(good) is good


def test_describe_output_limits_long_containers():
    assert describe_output(tuple(torch.zeros(1) for _ in range(9))).endswith(", ...)")
    assert describe_output(None) == "None"


# ------------------------------------------------------------------------------------------------
# LogitsModel: a transparent adapter
# ------------------------------------------------------------------------------------------------
class TupleNet(nn.Module):
    """A CNN returning ``(logits, aux)``; an aux linear head registered after the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(inplace=True),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)
        self.aux = nn.Linear(8, 2)
        self.dropout = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor):
        z = self.dropout(self.pool(self.features(x)).flatten(1))
        return self.fc(z), {"aux": self.aux(z), "features": z}


def tuple_net(seed: int = 0) -> TupleNet:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = TupleNet()
        net.features[1].running_mean.uniform_(-0.5, 0.5)
        net.fc.weight.data.mul_(100.0)  # raw maps O(1)
    return net.eval()


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, 10, 10, generator=torch.Generator().manual_seed(1))


def test_layer_names_parameters_and_modes_are_the_models_own():
    net = tuple_net()
    model = LogitsModel(net, 0)
    assert list_layers(model) == list_layers(net) and list(dict(model.named_modules())) == list(
        dict(net.named_modules())
    )
    assert [id(p) for p in model.parameters()] == [id(p) for p in net.parameters()]
    assert resolve_layer(model, "features.3")[1] is net.features[3]
    assert resolve_layers(model, "auto", images(1)) == {"features": net.features}  # the CNN rule on the real tree
    assert resolve_layer(net, "auto", images(1))[0] == "features"
    assert model.state_dict() == {} and unwrap(model) is net and as_logits_model(model) is model
    model.train()
    assert net.training and net.dropout.training and model.training
    model.eval()
    assert not net.training and not net.features[1].training
    model.to(torch.float64)
    assert net.fc.weight.dtype == torch.float64
    with pytest.raises(ValueError, match="Layer 'featurez' not found in TupleNet"):
        resolve_layer(model, "featurez")


def test_hooks_on_the_models_modules_fire_through_the_wrapper():
    net, x = tuple_net(), images()
    model = LogitsModel(net)
    with capture(model, {"features.3": net.features[3]}) as acts:
        logits = model(x)
    torch.testing.assert_close(logits, net(x)[0])
    assert acts["features.3"].shape == (4, 8, 10, 10) and count_hooks(net) == 0


@pytest.mark.parametrize("spec", [None, 0, lambda out: out[0]])
def test_grad_cam_through_the_wrapper_matches_captum_on_the_tuple_model(spec):
    from captum.attr import LayerGradCam

    net, x = tuple_net(), images()
    targets = torch.tensor([0, 3, 1, 2])
    result = grad_cam(LogitsModel(net, spec), x, "features.3", targets)
    reference = LayerGradCam(lambda inp: net(inp)[0], net.features[3]).attribute(x, targets, relu_attributions=True)[
        :, 0
    ]
    assert reference.abs().amax() > 0
    torch.testing.assert_close(result.raw["features.3"], reference.detach(), atol=1e-5, rtol=1e-4)
    assert count_hooks(net) == 0 and all(p.grad is None for p in net.parameters())


def test_cam_fc_layer_and_guided_see_the_real_tree():
    from trainviz.ops.cam import cam
    from trainviz.ops.guided import guided_backprop

    net, x = tuple_net(), images()
    model = LogitsModel(net)
    # the default final linear is the model's last nn.Linear, the aux head here: CAM says it does not apply
    with pytest.raises(ValueError, match="CAM does not apply at layer 'features.4'.*fc_layer="):
        cam(model, x, "features.4", 0)
    with torch.no_grad():
        a = net.features(x)
    expected = torch.einsum("c,nchw->nhw", net.fc.weight[0].detach(), a).clamp_min(0)  # CAM by hand
    torch.testing.assert_close(
        cam(model, x, "features.4", 0, fc_layer="fc").raw["features.4"], expected, atol=1e-4, rtol=1e-5
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the ReLU modules are found through the wrapper: no "no nn.ReLU" warning
        guided = guided_backprop(model, x, 0)
    assert guided.shape == x.shape


def test_ops_given_a_raw_tuple_model_name_the_way_out():
    net, x = tuple_net(), images()
    for call in (
        lambda: grad_cam(net, x, "features.3", 0),
        lambda: predict_logits(net, x),
        lambda: fgsm_accuracy(net, x, torch.zeros(4, dtype=torch.long), [0.1]),
        lambda: logits_and_maps(net, "features.3", x),
    ):
        with pytest.raises(ValueError, match="but it returned tuple\\(Tensor\\[4, 4\\], dict\\)") as info:
            call()
        assert "LogitsModel(model, output=...)" in str(info.value) and HOW in str(info.value)
    torch.testing.assert_close(predict_logits(LogitsModel(net), x, batch_size=3), net(x)[0])
