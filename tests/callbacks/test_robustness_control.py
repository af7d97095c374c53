"""The robustness probe's random-direction control (issue 20): an image's control does not depend on which other
images are in the run, nor on the batch size; the record carries the pooled count, the points and the 95% bound."""

from __future__ import annotations

import math

import pytest
import torch

from trainviz.core.probeset import ProbeSet
from trainviz.probes import robustness as robustness_module
from trainviz.probes.robustness_result import DIRECTIONS_PER_IMAGE, flip_rate_upper_bound


def _run(model, probe, chosen, batch_size):
    from trainviz.data import Normalization

    config = robustness_module.RobustnessConfig(
        Normalization.identity(3),
        flip_step_size=50.0,
        trajectory_images=len(chosen),
        trajectory_steps=5,
        random_directions=40,
        batch_size=batch_size,
        seed=3,
    )
    inputs, _ = robustness_module.CorruptionCache().inputs(probe, [("grayscale", 1)], config.norm, 0, source=probe)
    plan = robustness_module.Plan([("grayscale", 1)])
    with torch.inference_mode():
        return robustness_module.compute(model, probe, inputs, plan, config, 0, trajectory=chosen).trajectory


def test_an_image_s_control_is_the_same_whatever_the_other_images_and_the_batch_size():
    # 12 input dimensions: a random direction at twice the adversarial distance flips some points
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.rand(10, 3, 2, 2, generator=g)
    probe = ProbeSet(images=images, labels=torch.arange(10) % 3, ids=torch.arange(10) * 7)
    every = _run(model, probe, list(range(8)), batch_size=64)
    measured = [i for i, (f, r) in enumerate(zip(every.flip_step, every.random_flip)) if f >= 0 and math.isfinite(r)]
    assert len(measured) >= 3, every.flip_step
    fractions = {every.ids[i]: every.random_flip[i] for i in measured}
    assert len(set(fractions.values())) > 2, fractions  # the check can bite: the fractions differ between images
    # the measured images alone, in reverse order, with points in batches of 16 (not whole images)
    alone = _run(model, probe, measured[::-1], batch_size=16)
    assert {i: r for i, r in zip(alone.ids, alone.random_flip)} == fractions
    assert alone.directions == DIRECTIONS_PER_IMAGE
    record = every.record()
    k, n = record["random_direction_flips"], record["random_direction_points"]
    assert n == 40 * len(measured) and k == round(sum(fractions.values()) * 40)
    assert record["random_direction_flip_rate"] == pytest.approx(k / n)
    assert record["random_direction_flip_rate_upper95"] == pytest.approx(flip_rate_upper_bound(k, n))


def test_the_new_default_keeps_the_state_key_of_the_old_one():
    from trainviz.callbacks.robustness import RobustnessCallback

    # 60 points (the default since issue 20) are keyed as the old default 1,000: older checkpoints restore
    assert RobustnessCallback().options.random_directions == 60
    assert RobustnessCallback()._state_args() == RobustnessCallback(random_directions=1000)._state_args()
    assert RobustnessCallback()._state_args() != RobustnessCallback(random_directions=61)._state_args()
