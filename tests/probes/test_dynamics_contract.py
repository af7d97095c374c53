"""The dynamics probe under the compute contract: shares merged equal one share; options declared once."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from trainviz.callbacks.dynamics import DynamicsCallback
from trainviz.core.contract import Credit, Share
from trainviz.core.options import signature_mismatches
from trainviz.core.probeset import ProbeSet
from trainviz.probes.dynamics import DynamicsConfig, DynamicsOptions, DynamicsProbe


def _close(a, b, tol=1e-5):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return a == b


@pytest.mark.parametrize("world", [2, 3])
def test_shares_merged_equal_the_one_share_result(world):
    torch.manual_seed(0)
    probe = ProbeSet(torch.rand(8, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0, 1, 2, 0]), torch.arange(10, 18))
    probe = probe.subset(0, 2) if world == 3 else probe  # 2 images in 3 shares: one share is empty
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4)).eval()
    p = DynamicsProbe(probe, DynamicsConfig(n_examples=3, batch_size=3))
    one = p.run(net, Credit(epoch=2))
    plan = p.plan(Credit(epoch=2))
    shares = Share.split(probe, world)
    assert world == 2 or len(shares[-1]) == 0
    many = p.merge([p.compute(net, s, plan, p.state()) for s in shares], plan)
    assert _close(one.record(), many.record())
    assert torch.allclose(one.probs, many.probs, atol=1e-5)
    assert torch.equal(one.confusion, many.confusion) and torch.equal(one.ids, many.ids)
    assert one.examples.shape == many.examples.shape


def test_the_callback_signature_matches_the_options():
    assert signature_mismatches(DynamicsCallback.__init__, DynamicsOptions) == []


def test_a_bad_option_names_itself():
    with pytest.raises(ValueError, match="Expected `n_examples` to be a positive int, got 0"):
        DynamicsOptions(n_examples=0)
    with pytest.raises(TypeError):
        DynamicsCallback(6, 256)  # options after the first are keyword-only
