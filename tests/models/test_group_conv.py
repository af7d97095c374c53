import pytest
import torch
from torch import nn

from trainviz.models.group_conv import ClassMapNet, GroupConvDecoder, feature_channels
from trainviz.models.resnet import resnet18_backbone


@pytest.fixture(autouse=True)
def _seeded():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


def randomize_bn(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)


def capture(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(model output, output of `layer`) from one forward, via a forward hook."""
    seen = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    try:
        out = model(x)
    finally:
        handle.remove()
    (maps,) = seen
    return out, maps


def test_resnet18_shapes_and_hooked_maps():
    net = ClassMapNet(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert net.encoder(x).shape == (2, 512, 2, 2)
        logits, hooked = capture(net, "decoder.class_maps", x)
        logits2, maps = net.forward_with_maps(x)
    assert logits.shape == (2, 10)
    assert maps.shape == (2, 10, 8, 8)
    assert torch.equal(hooked, maps) and torch.equal(logits, logits2)
    assert net.decoder.group_conv.groups == 10
    assert all(stage.upsample.groups == 10 for stage in net.decoder.stages)


@pytest.mark.parametrize("train", [False, True])
def test_logits_are_spatial_means_of_maps(train):
    net = ClassMapNet(num_classes=4, encoder="small").train(train)
    logits, maps = net.forward_with_maps(torch.randn(3, 3, 32, 32))
    assert maps.shape == (3, 4, 16, 16)
    torch.testing.assert_close(logits, maps.sum(dim=(-2, -1)) / (16 * 16), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layer", ["decoder.group_conv", "decoder.stages.1", "decoder.stages.0.upsample"])
def test_class_channel_reaches_only_its_own_map(layer):
    num_classes = 5
    net = ClassMapNet(num_classes, encoder="small")
    randomize_bn(net)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _, base = net.forward_with_maps(x)
        for k in range(num_classes):

            def bump(module, args, k=k):
                (inp,) = args
                inp = inp.clone()
                inp[:, k] += torch.linspace(-5.0, 5.0, inp[0, k].numel()).view_as(inp[0, k])
                return (inp,)

            handle = net.get_submodule(layer).register_forward_pre_hook(bump)
            try:
                _, maps = net.forward_with_maps(x)
            finally:
                handle.remove()
            others = [c for c in range(num_classes) if c != k]
            assert not torch.equal(maps[:, k], base[:, k])
            assert torch.equal(maps[:, others], base[:, others])


def test_user_encoder_and_channel_inference_leaves_no_trace():
    encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5))
    encoder[1].eval()  # mixed flags must come back as they were
    flags = [m.training for m in encoder.modules()]
    stats = encoder[1].running_mean.clone()
    rng = torch.get_rng_state()
    assert feature_channels(encoder, in_channels=3) == 8
    assert torch.equal(torch.get_rng_state(), rng)
    assert [m.training for m in encoder.modules()] == flags
    assert torch.equal(encoder[1].running_mean, stats)

    net = ClassMapNet(num_classes=3, encoder=encoder).eval()
    assert net.encoder is encoder
    logits, maps = net.forward_with_maps(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3) and maps.shape == (2, 3, 32, 32)
    explicit = ClassMapNet(num_classes=3, encoder=encoder, encoder_channels=8)
    assert explicit.decoder.project.in_channels == 8


def test_encoder_must_return_feature_map():
    with pytest.raises(ValueError, match="4-D feature map"):
        ClassMapNet(num_classes=3, encoder=nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))


def test_torchvision_encoder():
    pytest.importorskip("torchvision")
    net = ClassMapNet(num_classes=6, encoder="torchvision_resnet18").eval()
    assert net.forward_with_maps(torch.zeros(1, 3, 64, 64))[1].shape == (1, 6, 8, 8)
    with pytest.raises(ValueError, match="`in_channels` to be 3"):
        ClassMapNet(num_classes=6, encoder="torchvision_resnet18", in_channels=1)


def test_pretrained_path_loads_the_encoder(tmp_path):
    source = resnet18_backbone()
    randomize_bn(source)
    state = source.state_dict()
    state["fc.weight"] = torch.zeros(1000, 512)  # an ImageNet head: ignored
    path = tmp_path / "encoder.pt"
    torch.save(state, path)
    net = ClassMapNet(num_classes=4, pretrained_path=path)
    for k, v in source.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[k], v), k

    del state["layer2.0.conv1.weight"]
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"missing \(1\): layer2\.0\.conv1\.weight"):
        ClassMapNet(num_classes=4, pretrained_path=path)


def test_relus_are_modules_used_once_and_not_inplace():
    net = ClassMapNet(num_classes=3)
    relus = {name: m for name, m in net.named_modules() if isinstance(m, nn.ReLU)}
    assert not any(m.inplace for m in relus.values())
    calls = dict.fromkeys(relus, 0)
    handles = [m.register_forward_hook(lambda *a, n=n: calls.__setitem__(n, calls[n] + 1)) for n, m in relus.items()]
    try:
        net(torch.zeros(1, 3, 64, 64))
    finally:
        for h in handles:
            h.remove()
    assert set(calls.values()) == {1}
    assert len(calls) == 17 + 2  # ResNet-18 (stem + 2 per block) + one per upsampling stage


def test_small_encoder_overfits_a_tiny_batch():
    net = ClassMapNet(num_classes=4, encoder="small")
    x = torch.randn(8, 3, 32, 32)
    y = torch.arange(8) % 4
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    net.eval()
    with torch.no_grad():
        assert (net(x).argmax(1) == y).float().mean() >= 0.75


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dropout": 1.0}, "`dropout`"),
        ({"upsample_stages": -1}, "`upsample_stages`"),
        ({"num_classes": 0}, "`num_classes`"),
    ],
)
def test_decoder_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupConvDecoder(**{"in_channels": 8, "num_classes": 3, **kwargs})


def test_decoder_without_upsampling_keeps_size():
    decoder = GroupConvDecoder(8, 3, upsample_stages=0).eval()
    logits, maps = decoder.forward_with_maps(torch.randn(2, 8, 5, 7))
    assert maps.shape == (2, 3, 5, 7) and logits.shape == (2, 3)


def test_classmapnet_argument_errors():
    with pytest.raises(ValueError, match="`encoder`"):
        ClassMapNet(num_classes=3, encoder="vgg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`encoder_channels`"):
        ClassMapNet(num_classes=3, encoder="small", encoder_channels=32)
