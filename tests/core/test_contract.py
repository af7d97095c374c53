"""The compute contract's shares (trainviz.core.contract) and the options base (trainviz.core.options)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from trainviz.core.checks import check_positive_int
from trainviz.core.contract import Share
from trainviz.core.options import Options, signature_mismatches
from trainviz.core.probeset import ProbeSet


@pytest.mark.parametrize(
    ("n", "world", "sizes"),
    [(10, 1, [10]), (10, 3, [4, 3, 3]), (2, 3, [1, 1, 0]), (0, 2, [0, 0]), (7, 7, [1] * 7)],
)
def test_shares_are_contiguous_cover_the_set_and_differ_by_at_most_one(n, world, sizes):
    bounds = [Share.bounds(n, world, r) for r in range(world)]
    assert [b - a for a, b in bounds] == sizes
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[i][1] == bounds[i + 1][0] for i in range(world - 1))


def test_a_share_of_a_probe_set_cuts_every_field_and_may_be_empty():
    probe = ProbeSet(
        torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2]), torch.tensor([7, 8, 9]), masks=torch.rand(3, 4, 4) > 0.5
    )
    shares = Share.split(probe, 4)
    assert [len(s) for s in shares] == [1, 1, 1, 0]
    assert shares[1].data.ids.tolist() == [8] and shares[1].indices.tolist() == [1]
    assert torch.equal(shares[2].data.masks, probe.masks[2:3])
    assert shares[3].data.images.shape == (0, 1, 4, 4)
    assert Share.of(probe).data is probe  # one process: the whole set, not a copy
    assert Share.of_items(["a", "b", "c"], 2, 1).data == ["c"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Demo(Options):
    steps: int = 3
    layers: tuple[str, ...] = ("auto",)

    def check(self) -> None:
        self.set(steps=check_positive_int("steps", self.steps), layers=tuple(self.layers))


def test_options_check_themselves_and_normalise():
    assert _Demo(layers=["a"]).layers == ("a",)
    with pytest.raises(ValueError, match="Expected `steps` to be a positive int, got 0"):
        _Demo(steps=0)
    with pytest.raises(TypeError):
        _Demo(4)  # keyword only
    assert _Demo.pick({"steps": 2, "every_n_epochs": 5}).asdict() == {"steps": 2, "layers": ("auto",)}


def test_signature_mismatches_finds_a_missing_option_and_a_drifted_default():
    def same(steps=3, layers=("auto",), probe_size=None): ...

    def drifted(steps=4): ...

    assert signature_mismatches(same, _Demo) == []
    assert signature_mismatches(drifted, _Demo) == ["steps: default 4 != 3", "layers: missing"]
