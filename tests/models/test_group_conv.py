import pytest
import torch
from torch import nn

from trainviz.models.group_conv import DECODERS, ClassMapNet, GroupConvDecoder, feature_channels
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


# The decoder of Zhang's code, transcribed from `res18GConv.__init__` in resnet_groupconv.py of
# zxh009123/visualization-DCNNs-CSE261-W19-UCSC (the modules after `self.res18_out`, in forward order).
def zhang_decoder_layers(num_class: int) -> list[nn.Module]:
    return [
        nn.Conv2d(512, num_class, 1, bias=False),  # self.expand
        nn.InstanceNorm2d(num_class, affine=True),  # self.expand_InsNorm0
        nn.ReLU(inplace=True),  # self.expand_relu0
        nn.Dropout2d(p=0.3),  # self.expand_drop0
        nn.ConvTranspose2d(num_class, num_class, kernel_size=4, stride=2, padding=1, bias=False),  # self.conv2dT2
        nn.BatchNorm2d(num_class, affine=True),  # self.InsNorm2
        nn.ReLU(inplace=True),  # self.relu2
        nn.Dropout2d(p=0.3),  # self.drop2
        nn.ConvTranspose2d(
            num_class, num_class, kernel_size=4, stride=2, padding=1, bias=False, groups=num_class
        ),  # self.conv2dT3
        nn.BatchNorm2d(num_class, affine=True),  # self.InsNorm3
        nn.ReLU(inplace=True),  # self.relu3
        nn.AdaptiveAvgPool2d(1),  # self.avgPool
    ]


def leaves_in_forward_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    order: list[nn.Module] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in leaves]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return order


def test_seed003_decoder_is_zhangs_layer_for_layer():
    k = 7
    net = ClassMapNet(num_classes=k, decoder="seed003").eval()
    ours = [
        m
        for m in leaves_in_forward_order(net.decoder, torch.randn(2, 512, 2, 2))
        if not isinstance(m, (nn.Identity, nn.Flatten))
    ]
    reference = zhang_decoder_layers(k)
    assert [type(m) for m in ours] == [type(m) for m in reference]
    for mine, zhang in zip(ours, reference, strict=True):
        # same module and arguments (kernel, stride, padding, groups, bias, affine, p, ...); trainviz's ReLUs
        # are not in-place (hooks and guided backprop need that), which changes no value
        assert repr(mine).replace("inplace=True", "") == repr(zhang).replace("inplace=True", ""), (mine, zhang)
        assert [p.shape for p in mine.parameters()] == [p.shape for p in zhang.parameters()]
    convs = [m for m in ours if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert [m.groups for m in convs] == [1, 1, k] and all(m.bias is None for m in convs)
    assert [(m.kernel_size, m.stride, m.padding) for m in convs[1:]] == [((4, 4), (2, 2), (1, 1))] * 2


def test_seed003_matches_zhangs_forward_with_the_same_weights():
    k = 5
    net = ClassMapNet(num_classes=k, decoder="seed003")
    randomize_bn(net)
    net.eval()
    zhang = nn.Sequential(*zhang_decoder_layers(k)).eval()
    ours = [m for m in net.decoder.modules() if not list(m.children()) and list(m.parameters(recurse=False))]
    theirs = [m for m in zhang if list(m.parameters(recurse=False))]
    for mine, ref in zip(ours, theirs, strict=True):
        ref.load_state_dict(mine.state_dict())
    features = torch.randn(3, 512, 2, 2)
    with torch.no_grad():
        logits, maps = net.decoder.forward_with_maps(features)
        torch.testing.assert_close(logits, zhang(features).flatten(1), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(maps, zhang[:-1](features), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("decoder", DECODERS)
def test_resnet18_shapes_and_hooked_maps(decoder):
    net = ClassMapNet(num_classes=10, decoder=decoder).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert net.encoder(x).shape == (2, 512, 2, 2)
        logits, hooked = capture(net, "decoder.class_maps", x)
        logits2, maps = net.forward_with_maps(x)
    assert logits.shape == (2, 10)
    assert maps.shape == (2, 10, 8, 8)
    assert torch.equal(hooked, maps) and torch.equal(logits, logits2)
    if decoder == "grouped":
        assert net.decoder.group_conv.groups == 10
        assert all(stage.upsample.groups == 10 for stage in net.decoder.stages)
    else:
        assert [stage.upsample.groups for stage in net.decoder.stages] == [1, 10]
        assert not hasattr(net.decoder, "group_conv")


def test_default_decoder_is_seed003():
    assert ClassMapNet(num_classes=3, encoder="small").decoder.variant == "seed003"
    assert GroupConvDecoder(8, 3).variant == "seed003"


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("train", [False, True])
def test_logits_are_spatial_means_of_maps(train, decoder):
    net = ClassMapNet(num_classes=4, encoder="small", decoder=decoder).train(train)
    logits, maps = net.forward_with_maps(torch.randn(3, 3, 32, 32))
    assert maps.shape == (3, 4, 16, 16)
    torch.testing.assert_close(logits, maps.sum(dim=(-2, -1)) / (16 * 16), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("train", [False, True])
def test_seed003_maps_are_non_negative_and_grouped_maps_signed(train):
    x = torch.randn(4, 3, 32, 32)
    maps = ClassMapNet(num_classes=6, encoder="small", decoder="seed003").train(train).forward_with_maps(x)[1]
    assert (maps >= 0).all() and (maps > 0).any()
    signed = ClassMapNet(num_classes=6, encoder="small", decoder="grouped").train(train).forward_with_maps(x)[1]
    assert (signed < 0).any()


def bumped_maps(net: ClassMapNet, layer: str, x: torch.Tensor, k: int) -> torch.Tensor:
    """Maps when input channel `k` of `layer` gets a ramp added."""

    def bump(module, args):
        (inp,) = args
        inp = inp.clone()
        inp[:, k] += torch.linspace(-5.0, 5.0, inp[0, k].numel()).view_as(inp[0, k])
        return (inp,)

    handle = net.get_submodule(layer).register_forward_pre_hook(bump)
    try:
        return net.forward_with_maps(x)[1]
    finally:
        handle.remove()


def _net_input_and_maps(decoder: str, num_classes: int):
    """An eval-mode net with random BatchNorm statistics, an input and its class maps."""
    net = ClassMapNet(num_classes, encoder="small", decoder=decoder)
    randomize_bn(net)
    net.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        return net, x, net.forward_with_maps(x)[1]


@pytest.mark.parametrize("layer", ["decoder.group_conv", "decoder.stages.1", "decoder.stages.0.upsample"])
def test_grouped_class_channel_reaches_only_its_own_map(layer):
    num_classes = 5
    net, x, base = _net_input_and_maps("grouped", num_classes)
    with torch.no_grad():
        for k in range(num_classes):
            maps = bumped_maps(net, layer, x, k)
            others = [c for c in range(num_classes) if c != k]
            assert not torch.equal(maps[:, k], base[:, k])
            assert torch.equal(maps[:, others], base[:, others])


def test_seed003_only_the_last_stage_keeps_classes_apart():
    num_classes = 5
    net, x, base = _net_input_and_maps("seed003", num_classes)
    with torch.no_grad():
        for k in range(num_classes):
            others = [c for c in range(num_classes) if c != k]
            last = bumped_maps(net, "decoder.stages.1", x, k)  # the grouped stage: class k only
            assert not torch.equal(last[:, k], base[:, k])
            assert torch.equal(last[:, others], base[:, others])
            first = bumped_maps(net, "decoder.stages.0.upsample", x, k)  # ungrouped: reaches other classes
            assert not torch.equal(first[:, others], base[:, others])


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


@pytest.mark.parametrize("decoder, decoder_relus", [("seed003", 3), ("grouped", 2)])
def test_relus_are_modules_used_once_and_not_inplace(decoder, decoder_relus):
    net = ClassMapNet(num_classes=3, decoder=decoder)
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
    assert len(calls) == 17 + decoder_relus  # ResNet-18 (stem + 2 per block) + the decoder's


@pytest.mark.parametrize("decoder", DECODERS)
def test_small_encoder_overfits_a_tiny_batch(decoder):
    net = ClassMapNet(num_classes=4, encoder="small", decoder=decoder)
    x = torch.randn(8, 3, 32, 32)
    y = torch.arange(8) % 4

    def eval_loss() -> float:
        net.eval()
        with torch.no_grad():
            loss = nn.functional.cross_entropy(net(x), y).item()
        net.train()
        return loss

    before = eval_loss()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(30):
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    # seed003's logits are means of BatchNorm + ReLU maps, small at first: its loss falls slowly (1.39 -> 1.16
    # here, the grouped decoder's to 0.4) while the predictions are already right
    assert eval_loss() < before - 0.1
    net.eval()
    with torch.no_grad():
        assert (net(x).argmax(1) == y).float().mean() >= 0.75


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dropout": 1.0}, "`dropout`"),
        ({"upsample_stages": -1}, "`upsample_stages`"),
        ({"num_classes": 0}, "`num_classes`"),
        ({"upsample_stages": 0}, "`upsample_stages` to be a positive int with variant='seed003'"),
        ({"variant": "ungrouped"}, "`variant`"),
    ],
)
def test_decoder_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GroupConvDecoder(**{"in_channels": 8, "num_classes": 3, **kwargs})


def test_decoder_without_upsampling_keeps_size():
    decoder = GroupConvDecoder(8, 3, upsample_stages=0, variant="grouped").eval()
    logits, maps = decoder.forward_with_maps(torch.randn(2, 8, 5, 7))
    assert maps.shape == (2, 3, 5, 7) and logits.shape == (2, 3)


def test_seed003_with_more_stages_groups_only_the_last():
    decoder = GroupConvDecoder(8, 3, upsample_stages=3).eval()
    assert [stage.upsample.groups for stage in decoder.stages] == [1, 1, 3]
    assert [isinstance(stage[-1], nn.Dropout2d) for stage in decoder.stages] == [True, True, False]
    assert decoder.forward_with_maps(torch.randn(2, 8, 2, 3))[1].shape == (2, 3, 16, 24)


def test_classmapnet_argument_errors():
    with pytest.raises(ValueError, match="`encoder`"):
        ClassMapNet(num_classes=3, encoder="vgg")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`encoder_channels`"):
        ClassMapNet(num_classes=3, encoder="small", encoder_channels=32)
    with pytest.raises(ValueError, match="`decoder` to be one of"):
        ClassMapNet(num_classes=3, encoder="small", decoder="ungrouped")  # type: ignore[arg-type]
