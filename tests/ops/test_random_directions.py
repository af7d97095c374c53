"""The random-direction control (issue 20): its exact 95% upper bound checked against scipy, its directions tied to
the image (seed + probe id) whatever the batch, and the pooled count, bound and report clause of the record."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from trainviz.ops.adversarial import random_direction_flips
from trainviz.probes.robustness_result import RobustnessResult, Trajectories, flip_rate_upper_bound


class Recorder(nn.Module):
    """Keeps every batch of points it sees and answers with a fixed linear map."""

    def __init__(self, d: int, classes: int = 3):
        super().__init__()
        self.inner = nn.Linear(d, classes)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.inner(x.flatten(1))


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 60), (0, 480), (1, 60), (3, 480), (17, 200), (59, 60), (999, 1000)])
def test_upper_bound_is_clopper_pearson_as_scipy_computes_it(k, n):
    from scipy import stats

    got = flip_rate_upper_bound(k, n)
    assert got == pytest.approx(stats.beta.ppf(0.95, k + 1, n - k), rel=1e-9, abs=1e-12)
    assert got == pytest.approx(stats.binomtest(k, n, alternative="less").proportion_ci(0.95).high, rel=1e-6)
    assert stats.binom.cdf(k, n, got) == pytest.approx(0.05, rel=1e-6)  # its definition: P(X <= k) = 5% there
    assert got > k / n


def test_upper_bound_at_no_flip_and_all_flipped_and_its_argument_errors():
    assert flip_rate_upper_bound(0, 60) == pytest.approx(1 - 0.05 ** (1 / 60)) and 0.048 < flip_rate_upper_bound(0, 60)
    assert flip_rate_upper_bound(0, 60) < 0.05 < flip_rate_upper_bound(0, 58)  # 59 points are the fewest for 0.05
    assert flip_rate_upper_bound(0, 1000) == pytest.approx(2.9912e-3, rel=1e-4)  # about 3 / n
    assert flip_rate_upper_bound(5, 5) == 1.0
    assert flip_rate_upper_bound(0, 60, confidence=0.99) == pytest.approx(1 - 0.01 ** (1 / 60))
    for bad in [(-1, 5), (6, 5), (0, 0)]:
        with pytest.raises(ValueError, match="0 <= flips <= n"):
            flip_rate_upper_bound(*bad)
    with pytest.raises(ValueError, match="0 < confidence < 1"):
        flip_rate_upper_bound(0, 5, confidence=1.0)


def _images(n: int = 5):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 2, 3, 3, generator=g)
    return x, x + 0.1 * torch.randn(n, 2, 3, 3, generator=g)


def _points_of(rec: Recorder, images: int, samples: int) -> torch.Tensor:
    return torch.cat(rec.seen).view(images, samples, -1)


def test_an_image_gets_the_same_points_alone_or_in_a_batch_at_any_batch_size():
    x, x_adv = _images()
    ids = [11, 3, 42, 7, 5]
    rec = Recorder(18)
    labels = rec(x).argmax(1)
    rec.seen.clear()
    torch.manual_seed(1)
    state = torch.get_rng_state()
    batch = random_direction_flips(rec, x, x_adv, labels, samples=12, ids=ids, seed=4, batch_size=7)
    assert torch.equal(torch.get_rng_state(), state)  # private generators only
    together = _points_of(rec, 5, 12)
    for i in (0, 2, 4):
        rec.seen.clear()
        alone = random_direction_flips(
            rec, x[i : i + 1], x_adv[i : i + 1], labels[i : i + 1], samples=12, ids=[ids[i]], seed=4, batch_size=1000
        )
        assert torch.equal(_points_of(rec, 1, 12)[0], together[i])  # the same points, bit for bit
        assert torch.equal(alone[0], batch[i])
    # reversed order, another batch size: each image keeps its points; its first 5 points start its 12
    rec.seen.clear()
    rev = random_direction_flips(rec, x.flip(0), x_adv.flip(0), labels.flip(0), samples=12, ids=ids[::-1], seed=4)
    assert torch.equal(rev.flip(0), batch) and torch.equal(_points_of(rec, 5, 12).flip(0), together)
    rec.seen.clear()
    random_direction_flips(rec, x, x_adv, labels, samples=5, ids=ids, seed=4, batch_size=3)
    assert torch.equal(_points_of(rec, 5, 5), together[:, :5])
    # on the sphere, and another seed or id moves them
    radius = 2 * (x_adv - x).flatten(1).norm(dim=1)
    torch.testing.assert_close((together - x.flatten(1)[:, None]).norm(dim=2), radius[:, None].expand(5, 12))
    rec.seen.clear()
    random_direction_flips(rec, x, x_adv, labels, samples=12, ids=ids, seed=5)
    assert not torch.equal(_points_of(rec, 5, 12), together)
    rec.seen.clear()
    random_direction_flips(rec, x[:1], x_adv[:1], labels[:1], samples=12, ids=[3], seed=4)
    assert not torch.equal(_points_of(rec, 1, 12)[0], together[0])


def test_exactly_one_source_of_directions_and_one_id_per_image():
    x, x_adv = _images(2)
    model, y = Recorder(18), torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="exactly one of `generator`"):
        random_direction_flips(model, x, x_adv, y)
    with pytest.raises(ValueError, match="exactly one of `generator`"):
        random_direction_flips(model, x, x_adv, y, ids=[0, 1], generator=torch.Generator())
    with pytest.raises(ValueError, match="`ids` to be 2 ints"):
        random_direction_flips(model, x, x_adv, y, ids=[0])
    with pytest.raises(ValueError, match="`ids` to be 2 ints"):
        random_direction_flips(model, x, x_adv, y, ids=[0.5, 1])


def _trajectories(random_flip, flip_step, samples=60) -> Trajectories:
    n = len(flip_step)
    return Trajectories(
        step_size=0.5,
        steps=4,
        samples=samples,
        radius_factor=2.0,
        ids=list(range(n)),
        labels=[0] * n,
        predictions=[[0] * 5] * n,
        flip_step=flip_step,
        distance=[0.1] * n,
        random_flip=random_flip,
    )


def test_the_bound_is_on_the_count_pooled_over_the_flipped_images():
    from scipy import stats

    # 3 flipped images measured (2, 0 and 1 flips of 60), one flipped but not measured, one never flipped
    t = _trajectories([2 / 60, 0.0, 1 / 60, math.nan, math.nan], [1, 2, 3, 1, -1])
    assert (t.random_direction_flips, t.random_direction_points) == (3, 180)
    assert t.random_direction_flip_rate == pytest.approx(3 / 180)
    assert t.random_direction_flip_rate_upper95 == pytest.approx(stats.beta.ppf(0.95, 4, 177), rel=1e-9)
    none = _trajectories([0.0] * 8, [1] * 8)
    assert none.random_direction_flip_rate_upper95 == pytest.approx(1 - 0.05 ** (1 / 480))  # 8 x 60 points
    assert math.isnan(_trajectories([math.nan], [-1]).random_direction_flip_rate_upper95)
    record = {"epoch": 2, "clean": {"accuracy": 0.9}, "table": [], "corruptions": {}, "trajectory": t.record()}
    assert record["trajectory"]["random_direction_flip_rate_upper95"] == pytest.approx(
        t.random_direction_flip_rate_upper95
    )
    written = record["trajectory"]
    assert written["random_direction_flips"] == 3 and written["random_direction_points"] == 180
    result = RobustnessResult.from_record(record)
    assert result.record()["trajectory"] == record["trajectory"]  # read back, written again: the same
    bound = t.random_direction_flip_rate_upper95
    assert result.summary()["random_direction_flip_rate_upper95"] == pytest.approx(bound)
    assert result.scalars()["adversarial/random_direction_flip_rate_upper95"] == pytest.approx(bound)
    section = result.section()
    keys = [s["key"] for s in section["curves"][0]["series"]]
    assert ["trajectory", "random_direction_flip_rate_upper95"] in keys
    assert f"3 of 180 points, 3 flipped images), 95% upper bound {bound:.3g}" in section["description"]
    # without the control (samples 0) nothing of it is recorded or logged
    off = _trajectories([math.nan], [1], samples=0)
    assert "random_direction_flip_rate_upper95" not in off.record()
    summary = RobustnessResult.from_record({**record, "trajectory": off.record()}).summary()
    assert "random_direction_flip_rate_upper95" not in summary
    assert np.isfinite(bound) and 3 / 180 < bound < 0.05
