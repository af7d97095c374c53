"""Pointing games, faithfulness (average drop, increase in confidence, deletion) and map correlation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trainviz.ops.localization import (
    confidence_change,
    deletion_curve,
    energy_pointing_game,
    map_correlation,
    pointing_game,
    pointing_game_chance,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def square_masks() -> torch.Tensor:
    masks = torch.zeros(4, 6, 6, dtype=torch.bool)
    masks[:, 1:3, 1:3] = True  # 4 of 36 pixels
    return masks


def test_pointing_game_hits_misses_tolerance_ties_and_flat_maps():
    maps = torch.zeros(4, 6, 6)
    maps[0, 2, 2] = 1.0  # on the mask
    maps[1, 4, 4] = 1.0  # two pixels off (diagonally)
    maps[2, 3, 3] = 1.0  # one pixel off
    maps[2, 1, 1] = 0.5
    # maps[3] is flat: a miss
    masks = square_masks()
    assert pointing_game(maps, masks).tolist() == [True, False, False, False]
    assert pointing_game(maps, masks, tolerance=1).tolist() == [True, False, True, False]
    assert pointing_game(maps, masks, tolerance=2).tolist() == [True, True, True, False]
    tied = torch.zeros(1, 6, 6)
    tied[0, 0, 5] = tied[0, 2, 2] = 1.0  # first maximum in row-major order is (0, 5): a miss
    assert pointing_game(tied, masks[:1]).tolist() == [False]


def test_pointing_game_chance_is_the_mask_area_fraction():
    masks = square_masks()
    torch.testing.assert_close(pointing_game_chance(masks), torch.full((4,), 4 / 36))
    torch.testing.assert_close(pointing_game_chance(masks, tolerance=1), torch.full((4,), 16 / 36))
    # a random point hits with the chance probability
    maps = torch.rand(20000, 6, 6, generator=gen(0))
    hits = pointing_game(maps, masks[:1].expand(20000, -1, -1)).float().mean()
    assert abs(hits.item() - 4 / 36) < 0.01


def test_energy_pointing_game_by_hand():
    maps = torch.zeros(3, 6, 6)
    maps[0, 1, 1], maps[0, 5, 5] = 3.0, 1.0  # 3 of 4 inside
    maps[1] = 1.0  # uniform: the area fraction
    masks = square_masks()[:3]
    torch.testing.assert_close(energy_pointing_game(maps, masks), torch.tensor([0.75, 4 / 36, 0.0]))


class Quadrant(nn.Module):
    """Logit 1 = 4 x (mean of the top-left quadrant of channel 0); logit 0 = 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        score = 4 * x[:, 0, : h // 2, : w // 2].mean((1, 2))
        return torch.stack([torch.zeros_like(score), score], 1)


def reference_probs(model: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).softmax(1)[torch.arange(len(targets)), targets]


def test_confidence_change_matches_the_definition():
    model = Quadrant()
    x = torch.rand(6, 2, 8, 8, generator=gen(1)) + 0.5
    maps = torch.rand(6, 8, 8, generator=gen(2))
    maps[0] = 1.0  # unchanged input: no drop, no increase
    targets = torch.tensor([1, 1, 1, 0, 0, 1])
    baseline = -0.25
    drop, increase = confidence_change(model, x, maps, targets, baseline=baseline, batch_size=4)
    p = reference_probs(model, x, targets)
    q = reference_probs(model, baseline + maps[:, None] * (x - baseline), targets)
    torch.testing.assert_close(drop, torch.clamp(p - q, min=0) / p)
    assert increase.tolist() == (q > p).tolist()
    assert drop[0] == 0 and not increase[0]
    assert increase[3] and increase[4]  # class 0 gains when class 1's evidence is dimmed


def naive_deletion(model, x, maps, targets, steps, baseline):
    """One image and one step at a time, pixels ranked by a Python sort (ties: row-major order)."""
    n, c, h, w = x.shape
    curves = []
    for i in range(n):
        values = maps[i].flatten().tolist()
        ranked = sorted(range(h * w), key=lambda j: (-values[j], j))
        curve = []
        for s in range(steps + 1):
            img = x[i].clone()
            for j in ranked[: round(s * h * w / steps)]:
                img[:, j // w, j % w] = baseline
            curve.append(reference_probs(model, img[None], targets[i : i + 1])[0])
        curves.append(torch.stack(curve))
    curves = torch.stack(curves)
    auc = ((curves[:, 1:] + curves[:, :-1]) / 2).sum(1) / steps
    return curves, auc


def test_deletion_curve_matches_a_naive_implementation():
    model = Quadrant()
    x = torch.rand(3, 2, 6, 6, generator=gen(3))
    maps = torch.rand(3, 6, 6, generator=gen(4))
    maps[2] = (maps[2] * 4).round()  # ties
    targets = torch.tensor([1, 0, 1])
    curve, auc = deletion_curve(model, x, maps, targets, steps=5, baseline=0.1, batch_size=2)
    ref_curve, ref_auc = naive_deletion(model, x, maps, targets, 5, 0.1)
    torch.testing.assert_close(curve, ref_curve)
    torch.testing.assert_close(auc, ref_auc)


def test_deleting_the_evidence_first_gives_a_lower_auc():
    model = Quadrant()
    x = torch.rand(4, 1, 8, 8, generator=gen(5)) + 1.0
    right = torch.zeros(4, 8, 8)
    right[:, :4, :4] = 1.0  # the quadrant the model reads
    targets = torch.ones(4, dtype=torch.long)
    _, good = deletion_curve(model, x, right, targets, steps=8)
    _, bad = deletion_curve(model, x, 1 - right, targets, steps=8)
    assert (good < bad).all()


def test_map_correlation_matches_numpy():
    a = torch.rand(5, 7, 7, generator=gen(6))
    b = 0.3 * a + torch.rand(5, 7, 7, generator=gen(7))
    expected = [np.corrcoef(a[i].flatten().numpy(), b[i].flatten().numpy())[0, 1] for i in range(5)]
    torch.testing.assert_close(map_correlation(a, b), torch.tensor(expected, dtype=torch.float32))
    torch.testing.assert_close(map_correlation(a, -2 * a + 1), -torch.ones(5))
    flat = map_correlation(torch.ones(1, 3, 3), a[:1, :3, :3])
    assert torch.isnan(flat).all()


def test_no_trace_on_model_or_global_rng():
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(2 * 36, 3)).eval()
    x = torch.rand(4, 2, 6, 6, generator=gen(8))
    maps = torch.rand(4, 6, 6, generator=gen(9))
    state = torch.get_rng_state()
    with torch.inference_mode():
        confidence_change(model, x, maps, torch.tensor([0, 1, 2, 0]))
        deletion_curve(model, x, maps, torch.tensor([0, 1, 2, 0]), steps=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in model.parameters()) and not model.training


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, k: pointing_game(m[:, None], k), "Expected `maps` of shape \\(N, H, W\\)"),
        (lambda m, k: pointing_game(m, k[:3]), "Expected `masks` with 4 items of size \\(6, 6\\)"),
        (lambda m, k: pointing_game(m, k, tolerance=-1), "Expected `tolerance` to be a non-negative int"),
        (lambda m, k: energy_pointing_game(m, k[:, :5]), "Expected `masks` with 4 items"),
        (
            lambda m, k: deletion_curve(
                Quadrant(), torch.rand(4, 1, 6, 6), m, torch.ones(4, dtype=torch.long), steps=0
            ),
            "Expected `steps` to be a positive int",
        ),
        (
            lambda m, k: confidence_change(Quadrant(), torch.rand(4, 1, 6, 6), m, torch.ones(4)),
            "Expected integer `targets`",
        ),
        (
            lambda m, k: confidence_change(
                Quadrant(), torch.rand(4, 1, 6, 6), m, torch.ones(4, dtype=torch.long), batch_size=0
            ),
            "Expected `batch_size` to be a positive int",
        ),
        (lambda m, k: map_correlation(m, m[:2]), "same shape"),
    ],
)
def test_arguments_are_checked(call, message):
    with pytest.raises(ValueError, match=message):
        call(torch.rand(4, 6, 6, generator=gen(0)), square_masks())
