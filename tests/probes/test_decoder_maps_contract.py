"""The decoder-map probe under the compute contract: shares merged equal one share, stability against the history
included; options declared once."""

from __future__ import annotations

import math

import pytest
import torch

from trainviz.callbacks.decoder_maps import DecoderMapCallback
from trainviz.core.contract import Credit, Share
from trainviz.core.options import signature_mismatches
from trainviz.core.probeset import ProbeSet
from trainviz.models import ClassMapNet
from trainviz.ops.class_maps import PatternTracker
from trainviz.probes.decoder_maps import DecoderMapConfig, DecoderMapOptions, DecoderMapProbe


def _close(a, b, tol=1e-5):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    return a == b


@pytest.mark.parametrize("world", [2, 3])
def test_shares_merged_equal_the_one_share_result(world):
    torch.manual_seed(0)
    n = 10 if world == 2 else 2  # 2 images in 3 shares: one share is empty
    probe = ProbeSet(torch.rand(n, 3, 32, 32), torch.arange(n) % 4, torch.arange(n) + 100)
    net = ClassMapNet(num_classes=4, encoder="small").eval()
    config = DecoderMapConfig("decoder.class_maps", n_tracked=3, n_grid=2, n_examples=2, batch_size=3)
    one, many = DecoderMapProbe(probe, config, PatternTracker()), DecoderMapProbe(probe, config, PatternTracker())
    for epoch in (0, 1):  # the second run's stability comes from each probe's own history
        with torch.no_grad():
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p) * epoch)
        a = one.run(net, Credit(epoch=epoch))
        plan = many.plan(Credit(epoch=epoch))
        shares = Share.split(probe, world)
        b = many.merge([many.compute(net, s, plan, many.state()) for s in shares], plan)
        assert _close(a.record(), b.record())
        assert (a.n_correct, a.n_wrong, a.shown) == (b.n_correct, b.n_wrong, b.shown)
        for name in ("maps", "probs", "class_means", "counts"):
            assert torch.allclose(getattr(a, name).float(), getattr(b, name).float(), atol=1e-5), name
        assert torch.allclose(a.tracked.float(), b.tracked.float(), atol=1e-3)  # float16: its own rounding
    assert one.tracker.epochs == many.tracker.epochs == [0, 1] and sorted(many.tracked_maps) == [0, 1]


def test_the_callback_signature_matches_the_options():
    assert signature_mismatches(DecoderMapCallback.__init__, DecoderMapOptions) == []


def test_a_bad_option_names_itself_and_the_valid_choices():
    with pytest.raises(ValueError, match="Expected `sharpness` to be one of 'peak_to_mean', 'entropy'; got 'gini'"):
        DecoderMapOptions(sharpness="gini")
    with pytest.raises(ValueError, match=r"Expected `stability_threshold` to be a float in \(0, 1\], got 0"):
        DecoderMapOptions(stability_threshold=0)
    with pytest.raises(TypeError):
        DecoderMapCallback("head", 4, 4, 8)  # at most three positional arguments
