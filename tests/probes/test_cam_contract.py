"""CAM under the compute contract: two or three shares merged give the one-process result on the same images."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch
from _support import tiny_cnn

import trainviz.callbacks.cam as cam_callback
from trainviz.callbacks.cam import CAMCallback
from trainviz.core.contract import Credit, Share
from trainviz.core.options import signature_mismatches
from trainviz.core.probeset import ProbeSet
from trainviz.probes.cam import CAMConfig, CAMHistory, CAMOptions, CAMPlan, CAMProbe


def _probe(n: int = 7) -> ProbeSet:
    g = torch.Generator().manual_seed(1)
    masks = torch.rand(n, 12, 12, generator=g) > 0.6
    return ProbeSet(torch.rand(n, 3, 12, 12, generator=g), torch.arange(n) % 3, torch.arange(n) + 100, masks=masks)


def _runs(model, probe, options, world):
    """Two runs (the second measures drift) with the probe set cut into ``world`` shares."""
    prober = CAMProbe(probe, CAMConfig({"0": model[0], "2": model[2]}, options, batch_size=3), CAMHistory())
    results = []
    for epoch in (0, 1):
        plan = prober.plan(Credit(epoch=epoch))
        parts = [prober.compute(model, share, plan, prober.state()) for share in Share.split(probe, world)]
        results.append(prober.merge(parts, plan))
        with torch.no_grad():
            model[2].weight.mul_(0.9)  # the second run sees other weights: drift below 1
    with torch.no_grad():
        model[2].weight.div_(0.81)
    return results, prober


@pytest.mark.parametrize("guided", [False, True])
@pytest.mark.parametrize("world", [2, 3, 8])  # 8 shares of 7 images: one share is empty
def test_shares_merge_to_the_one_process_result(world, guided):
    model, probe = tiny_cnn(), _probe()
    options = CAMOptions(deletion_steps=3, n_grid=5, n_tracked=2, guided=guided)
    (one_a, one_b), one = _runs(model, probe, options, 1)
    (many_a, many_b), many = _runs(model, probe, options, world)
    for a, b in ((one_a, many_a), (one_b, many_b)):
        assert a.record().keys() == b.record().keys()
        assert a.per_map.keys() == b.per_map.keys() == {"0", "2", "aggregate"}
        for key, value in a.record().items():
            assert b.record()[key] == pytest.approx(value, abs=1e-5), key
        assert a.per_image.keys() == b.per_image.keys()
        for name in a.per_image:
            assert torch.allclose(a.per_image[name].float(), b.per_image[name].float(), atol=1e-5, equal_nan=True), name
        for key in a.maps:
            assert torch.allclose(a.maps[key], b.maps[key], atol=1e-5)
        assert a.grid == b.grid and a.captions == b.captions and a.counts == b.counts
        assert (a.guided is None) == (not guided)
        if guided:
            assert torch.allclose(a.guided, b.guided, atol=1e-5)
    assert "2/drift_correlation" in one_b.record() and one_b.record()["2/drift_correlation"] < 1
    assert [e for e, _ in one.history.runs] == [e for e, _ in many.history.runs] == [0, 1]


def test_a_plan_without_faithfulness_leaves_the_deletion_curves_out():
    model, probe = tiny_cnn(), _probe(4)
    prober = CAMProbe(probe, CAMConfig({"2": model[2]}, CAMOptions(deletion_steps=2)))
    plan = CAMPlan(faithfulness=False)
    result = prober.merge([prober.compute(model, Share.of(probe), plan, None)], plan)
    assert set(result.per_map["2"]) == {"pointing_game", "energy_pointing_game"}
    assert prober.plan(Credit()) == CAMPlan(faithfulness=True, whole=True)


def test_the_callback_arguments_are_the_options():
    assert signature_mismatches(CAMCallback.__init__, CAMOptions) == []
    assert CAMCallback(method="gradcam++").method == "gradcam++"  # read back as before
    with pytest.raises(TypeError):
        CAMCallback("auto", "gradcam", "mean", "true")  # at most three positional arguments
    with pytest.raises(ValueError, match="`aggregate` to be one of 'mean', 'max'"):
        CAMOptions(aggregate="median")


def test_the_callback_calls_no_ops():
    tree = ast.parse(inspect.getsource(cam_callback))
    modules = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in modules if m and m.startswith("trainviz.ops")]
