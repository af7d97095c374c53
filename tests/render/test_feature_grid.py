"""The filter grid (trainviz.render.features): pixel values for known weights."""

from __future__ import annotations

import torch
from torch import nn

from trainviz.ops.features import (
    filter_tiles,
)
from trainviz.render.features import filter_grid


def test_rgb_filter_grid_pixel_values_for_known_weights():
    conv = nn.Conv2d(3, 2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2) - 10)
    tiles, ncols = filter_tiles(conv.weight, n_filters=5)  # 3 input channels: RGB
    assert tiles.shape == (2, 3, 2, 2) and ncols == 2
    # per filter: filter 0 holds -10..1, filter 1 holds 2..13; each maps min..max onto 0..1
    expected = (torch.arange(12, dtype=torch.float32) / 11).reshape(3, 2, 2)
    assert torch.allclose(tiles[0], expected) and torch.allclose(tiles[1], expected)
    grid = filter_grid(tiles, ncols, min_size=4, pad=1)  # each 2x2 tile upscaled x2, 1 px white padding
    assert grid.shape == (1 + 4 + 1, 1 + 2 * (4 + 1), 3)
    for row, col in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        for tile in (0, 1):
            y, x = 1 + 2 * row, 1 + tile * 5 + 2 * col
            want = [round(255 * float(expected[c, row, col])) for c in range(3)]
            assert grid[y, x].tolist() == want and grid[y + 1, x + 1].tolist() == want
    assert grid[0].min() == 255 and grid[:, 5].min() == 255  # the padding
