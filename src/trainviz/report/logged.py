"""The training curves the user's own logger recorded (loss, accuracy), read back for the report without torch.

Lightning loggers keep what ``self.log(...)`` wrote: TensorBoard event files in the run folder, and CSVLogger's
``metrics.csv``. Both carry Lightning's ``epoch`` beside the global step, so every curve is given per epoch (the
last value logged in each epoch). trainviz's own keys (``trainviz/...``) are left out: the sections show those.

Example:
    >>> import tempfile, pathlib
    >>> run = pathlib.Path(tempfile.mkdtemp())
    >>> rows = ["epoch,step,train_loss,val_acc", "0,9,1.5,", "0,9,,0.4", "1,19,0.9,", "1,19,,0.6"]
    >>> _ = (run / "metrics.csv").write_text("\\n".join(rows) + "\\n")
    >>> logged_curves(run)
    {'train_loss': {0: 1.5, 1: 0.9}, 'val_acc': {0: 0.4, 1: 0.6}}
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["logged_curves", "logged_parts"]

_WANTED = ("loss", "acc")  # curves a reader looks for first; others stay in the logger's own dashboard


def _wanted(tag: str) -> bool:
    return not tag.startswith("trainviz/") and tag not in ("epoch", "step") and any(w in tag.lower() for w in _WANTED)


def _from_csv(path: Path) -> dict[str, dict[int, float]]:
    curves: dict[str, dict[int, float]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                epoch = int(float(row.get("epoch") or "nan"))
            except ValueError:
                continue
            for tag, text in row.items():
                if tag and text and _wanted(tag):
                    try:
                        value = float(text)
                    except ValueError:
                        continue
                    if math.isfinite(value):
                        curves.setdefault(tag, {})[epoch] = value
    return curves


def _from_events(folder: Path) -> dict[str, dict[int, float]]:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:  # pragma: no cover - tensorboard is a dependency
        return {}
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    tags = acc.Tags().get("scalars", [])
    if "epoch" not in tags:
        return {}
    epoch_at = {e.step: int(e.value) for e in acc.Scalars("epoch")}
    steps = sorted(epoch_at)
    curves: dict[str, dict[int, float]] = {}
    for tag in tags:
        if not _wanted(tag):
            continue
        for event in acc.Scalars(tag):
            # the epoch logged at this step, else at the closest earlier step
            earlier = [s for s in steps if s <= event.step]
            if not earlier or not math.isfinite(event.value):
                continue
            curves.setdefault(tag, {})[epoch_at[earlier[-1]]] = float(event.value)
    return curves


def logged_curves(run_root: str | os.PathLike) -> dict[str, dict[int, float]]:
    """``{tag: {epoch: value}}`` of the loss and accuracy curves the run's loggers wrote in ``run_root`` (the
    ``version_N`` folder): TensorBoard event files directly in it, else a ``metrics.csv``. Empty when neither is
    there or nothing was logged per epoch."""
    root = Path(run_root)
    if any(root.glob("events.out.tfevents.*")):
        curves = _from_events(root)
        if curves:
            return dict(sorted(curves.items()))
    csv_path = root / "metrics.csv"
    return dict(sorted(_from_csv(csv_path).items())) if csv_path.is_file() else {}


def logged_parts(run_root: str | os.PathLike) -> list[dict[str, Any]]:
    """The "as logged" loss and accuracy figures, as parts of the report's ``training`` group (see
    :func:`trainviz.report.sections.render_parts`)."""
    from trainviz.render.figures import lines_figure

    curves = logged_curves(run_root)
    epochs = sorted({e for curve in curves.values() for e in curve})
    out = []
    for kind, label in (("loss", "loss"), ("acc", "accuracy")):
        series = {tag: [curve.get(e) for e in epochs] for tag, curve in curves.items() if kind in tag.lower()}
        if series:
            title = f"Training {label} (as logged)"
            caption = f"The {label} your LightningModule logged, per epoch (the last value of each epoch)."
            figure = lines_figure(epochs, series, title, "epoch", label)
            out.append({"group": "training", "heading": "Training curves", "caption": caption, "figure": figure})
    return out
