"""The report's training curves come from the user's own logger: TensorBoard event files or metrics.csv."""

from __future__ import annotations

import json
import re

import pytest

from trainviz.report.logged import logged_curves


def _write_events(folder, rows):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))
    for step, epoch, tag, value in rows:
        writer.add_scalar("epoch", epoch, step)
        writer.add_scalar(tag, value, step)
    writer.close()


def test_tensorboard_scalars_become_per_epoch_curves_with_the_last_value_of_each_epoch(tmp_path):
    rows = [
        (4, 0, "train_loss", 2.0),
        (9, 0, "train_loss", 1.5),
        (14, 1, "train_loss", 1.1),
        (19, 1, "train_loss", 0.9),
    ]
    rows += [(9, 0, "val_acc", 0.4), (19, 1, "val_acc", 0.6), (19, 1, "trainviz/cam/x", 5.0), (19, 1, "lr", 0.1)]
    _write_events(tmp_path, rows)
    curves = logged_curves(tmp_path)  # float32 in the event file
    assert curves == {
        "train_loss": {0: 1.5, 1: pytest.approx(0.9)},
        "val_acc": {0: pytest.approx(0.4), 1: pytest.approx(0.6)},
    }


def test_csv_logger_metrics_and_nothing_when_there_is_no_log(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step,train_loss,val_acc\n0,9,1.5,\n0,9,,0.4\n1,19,0.9,\n1,19,,nan\n")
    assert logged_curves(tmp_path) == {"train_loss": {0: 1.5, 1: 0.9}, "val_acc": {0: 0.4}}
    assert logged_curves(tmp_path / "nothing") == {}


def test_the_report_draws_the_logged_loss_and_accuracy(tmp_path):
    from trainviz.report import build_report

    run = tmp_path / "version_0"
    (run / "trainviz" / "manifest").mkdir(parents=True)
    (run / "trainviz" / "manifest" / "manifest.json").write_text("{}")
    _write_events(run, [(9, 0, "val_loss", 0.8), (19, 1, "val_loss", 0.5), (19, 1, "val_acc", 0.7)])
    page = build_report(run).read_text()
    figures = [json.loads(f) for f in re.findall(r'<script type="application/json" id="fig-\d+">(.*?)</script>', page)]
    titles = {f["layout"]["title"]["text"]: f for f in figures}
    loss = titles["Training loss (as logged)"]
    assert [(t["name"], t["y"]) for t in loss["data"]] == [("val_loss", [pytest.approx(0.8), pytest.approx(0.5)])]
    assert [t["y"] for t in titles["Training accuracy (as logged)"]["data"]] == [[None, pytest.approx(0.7)]]
