"""The main job as a user runs it: `trainviz demo --data shapes` (default settings), then the CAM pointing
game on the probe set must be far above chance (issue 3; the numbers are in BENCHMARKS.md)."""

import json

import pytest

from trainviz.cli import main


@pytest.mark.slow
def test_demo_cam_pointing_game_far_above_chance(tmp_path, capsys):
    assert main(["demo", "--data", "shapes", "--out", str(tmp_path), "--accelerator", "cpu", "--no-progress"]) == 0
    assert "tensorboard --logdir" in capsys.readouterr().out
    (run,) = tmp_path.glob("version_*")
    records = [json.loads(line) for line in (run / "trainviz" / "cam" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == list(range(6))
    last = records[-1]
    chance = last["pointing_game_chance"]
    assert 0.1 < chance < 0.3  # the mean mask area of the shapes probe set
    assert last["aggregate/pointing_game"] > 2 * chance
    assert max(r["aggregate/pointing_game"] for r in records) > 3 * chance
    assert (run / "trainviz" / "report" / "index.html").exists()
