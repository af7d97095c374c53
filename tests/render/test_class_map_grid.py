"""The class-map pictures (trainviz.render.maps): which classes are shown and the grid's geometry."""

from __future__ import annotations

import torch


def test_pictures_with_many_classes_show_the_most_probable_and_the_true_class():
    from trainviz.render.maps import class_map_grid, shown_classes

    probs = torch.tensor([[0.1, 0.5, 0.3, 0.05, 0.05], [0.4, 0.3, 0.2, 0.06, 0.04]])
    labels = torch.tensor([2, 4])
    assert shown_classes(probs, labels, max_classes=3).tolist() == [[1, 2, 0], [0, 1, 4]]
    assert shown_classes(probs, labels, max_classes=5).tolist() == [[0, 1, 2, 3, 4]] * 2
    grid = class_map_grid(torch.rand(2, 3, 32, 32), torch.rand(2, 5, 8, 8), probs, labels, list("abcde"), max_classes=3)
    assert grid.shape == (2 * (96 + 24 + 2) + 2, 4 * (96 + 2) + 2, 3)  # rows: image + 3 maps, 24 px captions
