"""The sanity cascade by blocks (issue 20): the blocks of a small ResNet-like model, each step re-initialising its
group and the ones above (checked against a hand-made cascade), the original model untouched, and the block steps
equal to the per-layer cascade's steps at the blocks' ends (exactly where the two have one layer a step)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from trainviz.ops.sanity import cascade_steps, cascading_randomization, randomizable_layers, randomization_blocks


class Basic(nn.Module):
    def __init__(self, c: int, down: bool = False):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1)
        self.downsample = nn.Sequential(nn.Conv2d(c, c, 1), nn.BatchNorm2d(c)) if down else None

    def forward(self, x):
        out = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return torch.relu(out + (x if self.downsample is None else self.downsample(x)))


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 3):
        super().__init__()
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()
        self.layer1 = nn.Sequential(Basic(4), Basic(4))
        self.layer2 = nn.Sequential(Basic(4, down=True))
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(4, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(self.act1(self.bn1(self.conv1(x)))))
        return self.fc(self.pool(x).flatten(1))


class Module(nn.Module):  # as a LightningModule holds its network
    def __init__(self):
        super().__init__()
        self.net = TinyResNet()

    def forward(self, x):
        return self.net(x)


def _explain(model, x, y):
    x = x.clone().requires_grad_(True)
    return torch.autograd.grad(model(x).gather(1, y[:, None]).sum(), x)[0].abs().sum(1)


def test_blocks_of_a_resnet_are_its_top_level_children_top_down():
    blocks = randomization_blocks(Module())
    assert [name for name, _ in blocks] == ["net.fc", "net.layer2", "net.layer1", "net.bn1", "net.conv1"]
    layer2 = ["net.layer2.0.downsample.1", "net.layer2.0.downsample.0", "net.layer2.0.conv2", "net.layer2.0.bn1"]
    assert dict(blocks)["net.layer2"] == [*layer2, "net.layer2.0.conv1"]
    # together the blocks are the per-layer cascade, in its order
    assert [m for _, members in blocks for m in members] == randomizable_layers(Module())


def test_blocks_split_until_three_and_never_past_eight():
    two = nn.Sequential(nn.Sequential(nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1)), nn.Linear(1, 1))
    assert [name for name, _ in randomization_blocks(two)] == ["1", "0.2", "0.1", "0.0"]  # the larger one split
    wide = nn.Sequential(nn.Sequential(*[nn.Conv2d(1, 1, 1) for _ in range(9)]), nn.Linear(1, 1))
    assert [name for name, _ in randomization_blocks(wide)] == ["1", "0"]  # 10 steps would pass 8: kept whole
    assert randomization_blocks(nn.Linear(2, 2)) == [("", [""])] and randomization_blocks(nn.ReLU()) == []


def _reference_cascade(model, groups, x, y, seed):
    """By hand: for each step, re-initialise (reset_parameters under a seeded global stream) every module of its
    group in order on a copy, then explain."""
    copy_ = copy.deepcopy(model)
    modules = dict(copy_.named_modules())
    out = []
    for members in groups:
        for name in members:
            state = torch.get_rng_state()
            torch.manual_seed(seed)
            modules[name].reset_parameters()
            torch.set_rng_state(state)
        out.append(_explain(copy_, x, y))
    return out, copy_


def test_each_block_step_reinitialises_its_group_and_those_above_and_leaves_the_model():
    torch.manual_seed(0)
    model = Module().eval()
    with torch.no_grad():  # as after training: no parameter equals its re-initialised value (BatchNorm's 1 and 0)
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    before = copy.deepcopy(model.state_dict())
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 2])
    blocks = randomization_blocks(model)
    seen = []

    def explain(m, images, targets):  # records which parameters differ from the original at each step
        now = dict(m.named_parameters())
        seen.append({n for n, p in model.named_parameters() if not torch.equal(p, now[n])})
        return _explain(m, images, targets)

    state = torch.get_rng_state()
    steps = cascading_randomization(model, x, y, explain, steps=blocks, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    assert all(p.grad is None for p in model.parameters())
    assert [name for name, _ in steps] == [name for name, _ in blocks]
    above: set[str] = set()
    for (_, members), changed in zip(blocks, seen):
        above |= {n for n, _ in model.named_parameters() if n.rsplit(".", 1)[0] in members}
        assert changed == above  # exactly this group and the ones above (all weights are redrawn)
    expected, _ = _reference_cascade(model, [m for _, m in blocks], x, y, seed=5)
    for (_, got), want in zip(steps, expected):
        assert torch.equal(got, want)


def test_block_steps_are_the_per_layer_steps_at_each_block_s_end():
    torch.manual_seed(1)
    model = Module().eval()
    x, y = torch.rand(3, 3, 8, 8), torch.tensor([0, 1, 2])
    blocks = randomization_blocks(model)
    per_layer = dict(cascading_randomization(model, x, y, _explain, seed=2))
    by_block = cascading_randomization(model, x, y, _explain, steps=blocks, seed=2)
    for (name, maps), (_, members) in zip(by_block, blocks):
        assert torch.equal(maps, per_layer[members[-1]]), name
    # where per-layer and per-block granularity coincide, the two modes agree exactly, names included
    flat = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()  # fmt: skip
    assert [members for _, members in randomization_blocks(flat)] == [[n] for n in randomizable_layers(flat)]
    a = cascading_randomization(flat, x, y, _explain, seed=3)
    b = cascading_randomization(flat, x, y, _explain, steps=randomization_blocks(flat), seed=3)
    assert [n for n, _ in a] == [n for n, _ in b] == ["6", "2", "0"]
    assert all(torch.equal(p, q) for (_, p), (_, q) in zip(a, b))


def test_given_groups_take_what_is_left_and_name_the_valid_layers():
    model = Module()
    steps = cascade_steps(model, [["net.fc"], ["net.layer2", "net.layer1"], ["net"]])
    assert [name for name, _ in steps] == ["net.fc", "net.layer2+net.layer1", "net"]
    assert steps[2][1] == ["net.bn1", "net.conv1"]  # what the steps above have not re-initialised
    assert [m for _, members in steps for m in members] == randomizable_layers(model)
    with pytest.raises(ValueError, match=r"'fc' of the sanity groups is not a module.*'net.fc', 'net.layer2'"):
        cascade_steps(model, [["fc"]])
    with pytest.raises(ValueError, match="parameters left to randomise"):
        cascade_steps(model, [["net"], ["net.fc"]])
    with pytest.raises(ValueError, match="not both"):
        cascading_randomization(model, torch.rand(1, 3, 8, 8), torch.tensor([0]), _explain, layers=["net.fc"],
                                steps=[("net.fc", ["net.fc"])])  # fmt: skip


def test_a_timm_resnet18_cascade_has_seven_block_steps_against_41_layers():
    timm = pytest.importorskip("timm")

    class Lit(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = timm.create_model("resnet18", pretrained=False, num_classes=10)

    model = Lit()
    names = [name for name, _ in randomization_blocks(model)]
    assert names == ["net.fc", "net.layer4", "net.layer3", "net.layer2", "net.layer1", "net.bn1", "net.conv1"]
    assert len(randomizable_layers(model)) == 41
