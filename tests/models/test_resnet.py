import sys
from collections import Counter

import pytest
import torch
from torch import nn

from trainviz.models.resnet import (
    BasicBlock,
    ResNetBackbone,
    ResNetClassifier,
    load_pretrained,
    resnet18_backbone,
    torchvision_resnet18_backbone,
)


def relu_calls(model: nn.Module, x: torch.Tensor) -> Counter:
    """Number of calls of each ReLU module (by name) during one forward."""
    calls: Counter = Counter()
    relus = {name: m for name, m in model.named_modules() if isinstance(m, nn.ReLU)}
    handles = [
        m.register_forward_hook(lambda mod, inp, out, name=name: calls.update([name])) for name, m in relus.items()
    ]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    assert set(calls) == set(relus)
    return calls


def tv_features(tv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    return tv.layer4(tv.layer3(tv.layer2(tv.layer1(x))))


def perturb(model: nn.Module) -> None:
    """Give BatchNorm non-trivial running statistics so eval-mode comparisons mean something."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


@pytest.fixture(autouse=True)
def _seeded():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


def test_resnet18_backbone_shapes():
    net = resnet18_backbone().eval()
    assert net.out_channels == 512
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 512, 2, 2)
    small = resnet18_backbone(in_channels=1, width=8, stem="small").eval()
    assert small.out_channels == 64
    assert small(torch.zeros(2, 1, 32, 32)).shape == (2, 64, 4, 4)


def test_resnet18_backbone_matches_torchvision(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    tv = torchvision.models.resnet18(weights=None)
    perturb(tv)
    tv.eval()
    ours = resnet18_backbone()
    tv_state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in tv_state.items()}

    path = tmp_path / "resnet18.pt"
    torch.save(tv.state_dict(), path)  # with its fc head, as torchvision ships it
    loaded = torchvision_resnet18_backbone(path).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), tv_features(tv, x), rtol=1e-5, atol=1e-5)


def test_torchvision_backbone_without_path_is_torchvision_initialised():
    pytest.importorskip("torchvision")
    net = torchvision_resnet18_backbone().eval()
    assert isinstance(net, ResNetBackbone)
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    # torchvision's init leaves no all-zero conv weights and unit BatchNorm weights
    assert all(m.weight.abs().sum() > 0 for m in net.modules() if isinstance(m, nn.Conv2d))
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) for m in net.modules() if isinstance(m, nn.BatchNorm2d))


def test_torchvision_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match="pip install torchvision"):
        torchvision_resnet18_backbone()


def test_basic_block_shortcut():
    same = BasicBlock(8, 8).eval()
    assert isinstance(same.downsample, nn.Identity)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        expected = torch.relu(same.bn2(same.conv2(torch.relu(same.bn1(same.conv1(x))))) + x)
        torch.testing.assert_close(same(x), expected)
    down = BasicBlock(8, 16, stride=2)
    assert isinstance(down.downsample, nn.Sequential)
    assert down(x).shape == (2, 16, 3, 3)


def test_resnet_classifier_is_gap_then_fc():
    net = ResNetClassifier(num_classes=5)
    perturb(net)
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        logits = net(x)
        features = net.features(x)
        assert logits.shape == (4, 5)
        assert features.shape == (4, 64, 8, 8)
        torch.testing.assert_close(logits, features.mean(dim=(2, 3)) @ net.fc.weight.T + net.fc.bias)
    assert net.get_submodule("features.layer3") is not None


def test_relus_are_modules_used_once_and_not_inplace():
    net = resnet18_backbone()
    assert not any(m.inplace for m in net.modules() if isinstance(m, nn.ReLU))
    calls = relu_calls(net, torch.zeros(1, 3, 64, 64))
    assert set(calls.values()) == {1}
    assert sum(calls.values()) == 1 + 8 * 2  # stem + two per basic block: every ReLU is a module
    clf = ResNetClassifier(num_classes=3)
    assert sum(relu_calls(clf, torch.zeros(1, 3, 32, 32)).values()) == 1 + 3 * 2


def test_load_pretrained_roundtrip(tmp_path):
    source = resnet18_backbone(width=8)
    perturb(source)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    target = resnet18_backbone(width=8)
    assert load_pretrained(target, path) == ([], [])
    for (k, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), k
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(source.eval()(x), target.eval()(x))


def test_load_pretrained_checkpoint_and_prefix(tmp_path):
    source = ResNetClassifier(num_classes=3)
    path = tmp_path / "ckpt.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}, "epoch": 3}, path)
    target = ResNetClassifier(num_classes=3)
    assert load_pretrained(target, path, prefix="model.") == ([], [])
    assert torch.equal(target.fc.weight, source.fc.weight)
    features = ResNetBackbone((16, 32, 64), (1, 1, 1))
    assert load_pretrained(features, path, prefix="model.features.") == ([], [])
    assert torch.equal(features.layer3[0].conv2.weight, source.features.layer3[0].conv2.weight)


def test_load_pretrained_key_errors(tmp_path):
    state = resnet18_backbone(width=8).state_dict()
    del state["layer1.0.bn1.weight"]
    state["head.weight"] = torch.zeros(2)
    path = tmp_path / "w.pt"
    torch.save(state, path)

    with pytest.raises(ValueError, match="missing") as err:
        load_pretrained(resnet18_backbone(width=8), path)
    assert "layer1.0.bn1.weight" in str(err.value) and "head.weight" in str(err.value)

    with pytest.raises(ValueError, match="missing") as err:
        load_pretrained(resnet18_backbone(width=8), path, strict="missing")
    assert "layer1.0.bn1.weight" in str(err.value) and "head.weight" not in str(err.value)

    target = resnet18_backbone(width=8)
    missing, unexpected = load_pretrained(target, path, strict=False)
    assert missing == ["layer1.0.bn1.weight"] and unexpected == ["head.weight"]
    assert torch.equal(target.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_load_pretrained_shape_mismatch_always_raises(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(resnet18_backbone(width=8).state_dict(), path)
    with pytest.raises(ValueError, match=r"shape mismatch .*conv1\.weight"):
        load_pretrained(resnet18_backbone(width=16), path, strict=False)


def test_load_pretrained_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_pretrained(nn.Linear(2, 2), tmp_path / "nope.pt")
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="state dict"):
        load_pretrained(nn.Linear(2, 2), path)
    torch.save(nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ValueError, match="`strict`"):
        load_pretrained(nn.Linear(2, 2), path, strict="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"widths": (8, 16), "blocks": (1,), "stem": "small"}, "`blocks`"),
        ({"widths": (8, 0), "blocks": (1, 1), "stem": "small"}, "`widths`"),
        ({"widths": (8,), "blocks": (1,), "stem": "tiny"}, "`stem`"),
        ({"widths": (8, 16), "blocks": (1, 1), "strides": (1,)}, "`strides`"),
    ],
)
def test_backbone_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNetBackbone(**kwargs)


def test_classifier_argument_errors():
    with pytest.raises(ValueError, match="Expected `num_classes` to be a positive int, got 0"):
        ResNetClassifier(num_classes=0)
