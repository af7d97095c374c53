"""The robustness probe's compute contract (issue 18): plan, compute on shares, merge. Two shares, and three of a
tiny probe set with an empty one, merge to the one-share result on the same images; options are declared once and
check themselves; the callback imports nothing from trainviz.ops."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from trainviz.callbacks.robustness import RobustnessCallback
from trainviz.core.contract import Credit, Share
from trainviz.core.options import signature_mismatches
from trainviz.core.probeset import ProbeSet
from trainviz.data import Normalization
from trainviz.models import DemoClassifier
from trainviz.probes.robustness import RobustnessOptions, RobustnessProbe

OPTIONS = dict(
    corruptions=["grayscale", "gaussian_noise", "contrast"],
    severities=[1, 3],
    epsilons=[0.0, 4 / 255],
    flip_max_steps=3,
    flip_step_size=5.0,
    trajectory_images=4,
    trajectory_steps=4,
    random_directions=20,
    pgd_steps=2,
    n_examples=3,
    batch_size=4,
)


def _prober(n: int, **kwargs) -> tuple[RobustnessProbe, torch.nn.Module]:
    torch.manual_seed(0)
    model = DemoClassifier(num_classes=3).eval()
    probe = ProbeSet(images=torch.rand(n, 3, 32, 32), labels=torch.arange(n) % 3, ids=torch.arange(n) * 7 + 1)
    options = RobustnessOptions(**{**OPTIONS, **kwargs})
    layers = {"net.features": dict(model.named_modules())["net.features"]} if options.cam_shift else None
    norm = Normalization((0.5, 0.4, 0.3), (0.2, 0.25, 0.3))
    return RobustnessProbe.setup(probe, options, norm, seed=2, cam_layers=layers), model


def _assert_same(a, b) -> None:
    """Records equal: ints, bools and strings exactly, floats to 1e-5 (accuracies are counts / N: exact)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, float):
        assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=1e-5), (a, b)
    else:
        assert a == b


def _merged(prober, model, world):
    plan = prober.plan(Credit(epoch=3))
    with torch.enable_grad():
        parts = [prober.compute(model, share, plan, prober.state()) for share in Share.split(prober.probe, world)]
    return prober.merge(parts[::-1], plan)  # any order


@pytest.mark.parametrize("n, world, cam", [(10, 2, False), (5, 2, True), (2, 3, False)])
def test_shares_merge_to_the_one_share_result(n, world, cam):
    prober, model = _prober(n, cam_shift=cam)
    one = _merged(prober, model, 1)
    many = _merged(prober, model, world)
    if world == 3:
        assert [len(s) for s in Share.split(prober.probe, 3)] == [1, 1, 0]  # one share is empty
    record = many.record()
    _assert_same(record, one.record())
    assert record["epoch"] == 3 and record["pgd"]["ran"] and record["trajectory"]["ids"]
    for key in ("accuracy",):
        assert [r[key] for r in record["table"]] == [r[key] for r in one.record()["table"]]  # exactly
    assert record["fgsm"]["accuracy"] == one.record()["fgsm"]["accuracy"]
    assert record["pgd"]["accuracy"] == one.record()["pgd"]["accuracy"]
    np.testing.assert_array_equal(many.images.pred, one.images.pred)
    np.testing.assert_array_equal(many.images.steps, one.images.steps)
    np.testing.assert_allclose(many.images.confidences, one.images.confidences, atol=1e-5)
    assert many.examples.indices == one.examples.indices
    np.testing.assert_array_equal(many.examples.tiles, one.examples.tiles)
    if cam:
        np.testing.assert_allclose(many.images.cam_shift, one.images.cam_shift, atol=1e-4)


def test_the_plan_and_partials_are_plain_data():
    import pickle

    prober, model = _prober(4)
    plan = prober.plan(Credit())
    partial = prober.compute(model, Share.of(prober.probe), plan, prober.state())
    assert pickle.loads(pickle.dumps(plan)) == plan
    again = pickle.loads(pickle.dumps(partial))
    assert torch.equal(again.pred, partial.pred) and all(t.device.type == "cpu" for t in (again.pred, again.nll))


def test_the_budget_plan_skips_and_rotates_in_the_probe():
    prober, _ = _prober(6, corruptions=["grayscale", "gaussian_noise", "contrast", "fog"], severities=[1])
    skipped = []
    prober.skip = lambda epoch, what, reason: skipped.append((epoch, what))
    prober.history.costs = {"row": 1.0, "fgsm": 0.5, "pgd": 0.5, "flip": 100.0, "trajectory": 1.0}
    assert prober.plan(Credit(0.5, essential=False, epoch=1)) is None and skipped == [(1, "run")]
    plan = prober.plan(Credit(2 + 0.5 + 0.5 + 1, essential=True, epoch=2))
    assert plan.rows == [("grayscale", 1), ("gaussian_noise", 1)] and plan.fgsm and plan.pgd and not plan.flip
    assert prober.plan(Credit(4, essential=True, epoch=3)).rows[1:] == [("contrast", 1)]  # the next in turn
    assert skipped[1:] == [(2, "parts"), (3, "parts")]


def test_a_run_keeps_what_it_cost_beyond_its_parts_and_the_floor_and_plan_count_it():
    prober, model = _prober(6, corruptions=["grayscale", "gaussian_noise", "contrast", "fog"], severities=[1])
    prober.history.costs = {"row": 1.0, "fgsm": 0.5, "pgd": 0.5, "flip": 100.0, "trajectory": 1.0}
    plan = prober.plan(Credit(2 + 0.5 + 0.5 + 1, essential=True, epoch=2))  # clean, grayscale, noise, FGSM, PGD
    prober.corrupting = 0.25  # the rows' first corruption: a one-off, not every run's
    prober.ran(plan, 3 * 1.0 + 0.5 + 0.5 + 0.25 + 0.75)
    assert prober.history.costs["overhead"] == pytest.approx(0.75)
    assert prober.core_seconds() == pytest.approx(0.75 + 2 * 1.0)  # the clean row and grayscale, and the overhead
    skipped = []
    prober.skip = lambda epoch, what, reason: skipped.append(reason)
    assert prober.plan(Credit(2.5, essential=False, epoch=3)) is None  # 2 s of rows fit, not with 0.75 s more
    assert skipped == ["the seed probes take 2.75 s, credit 2.50 s"]
    assert prober.plan(Credit(2 + 0.5 + 0.75, essential=False, epoch=4)).fgsm  # the rest of the credit: FGSM
    prober.clean_read, prober.corrupting = True, 0.0  # the shared forward served the clean row; all rows cached
    prober.ran(plan, 3 * 1.0 + 0.5 + 0.5)
    assert prober.history.costs["overhead"] == pytest.approx(1.0) and prober.core_seconds() == pytest.approx(2.0)
    prober.ran(plan, 1.0)  # cheaper than its parts (a measure's noise): no overhead, never a negative one
    assert prober.history.costs["overhead"] == 0.0


def test_options_are_declared_once_and_check_themselves():
    assert signature_mismatches(RobustnessCallback.__init__, RobustnessOptions) == []
    with pytest.raises(ValueError, match=r"`corruption_params` to be 'auto' or one of cifar10-c, tinyimagenet-c"):
        RobustnessOptions(corruption_params="ImageNet-C")
    with pytest.raises(ValueError, match=r"`corruptions` to be distinct names from grayscale, .*fog.*unknown: 'mist'"):
        RobustnessOptions(corruptions=["mist"])
    with pytest.raises(ValueError, match=r"`pgd_every` to be a positive int"):
        RobustnessCallback(pgd_every=0)
    with pytest.raises(TypeError):
        RobustnessCallback(None, None, None, 0.5)  # at most three positional arguments
    options = RobustnessCallback(epsilons=[0.1], flip_max_steps=5).options
    assert options.epsilons == [0.1] and options.trajectory_steps == 5 and options.batch_size == 64


def test_the_callback_imports_nothing_from_ops():
    import trainviz.callbacks.robustness as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("trainviz.ops")], imported
