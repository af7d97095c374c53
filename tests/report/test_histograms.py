"""The probability histograms of the dynamics section: each epoch has one, and the section shows them
(what the picture draws: tests/render/test_histogram_image.py)."""

from __future__ import annotations

import json


def test_the_dynamics_callback_draws_them_each_epoch_and_its_section_shows_them(
    tmp_path, tiny_dm, demo_model, make_trainer
):
    import trainviz

    make_trainer(tmp_path, [trainviz.DynamicsCallback(probe_size=24)], max_epochs=2).fit(demo_model(), tiny_dm)
    folder = tmp_path / "trainviz" / "dynamics"
    for epoch in (0, 1):
        assert (folder / f"epoch_{epoch:04d}" / "probability_histograms.png").is_file()
    spec = json.loads((folder / "section.json").read_text())
    assert ["probability_histograms"] in [g["images"] for g in spec["galleries"]]
