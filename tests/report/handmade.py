"""A run folder written by hand: one ``robustness/metrics.jsonl`` record whose accuracies are built from known
counts, so that a test knows every ``k`` and ``n`` behind the summary without trusting the code under test.

The record has the layout ``RobustnessResult.record()`` writes (what the report reads back with
``RobustnessResult.from_record``); its numbers are
made up but consistent: every accuracy is ``correct / images`` of the counts below.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CLASS_NAMES = ["disc", "square"]
CLASS_COUNTS = [12, 8]  # 20 probe images; "square" has fewer than 10
N = sum(CLASS_COUNTS)

# correct predictions per class (disc, square), by row of the table
CLEAN = (9, 6)  # clean accuracy 15 / 20
TABLE = {("fog", 1): (7, 4), ("fog", 3): (5, 3), ("grayscale", 1): (9, 5)}
FGSM = {2 / 255: 5, 4 / 255: 0}  # correct under FGSM: 5 / 20 and none (k = 0)
MCE, RELATIVE_MCE = 0.35, 0.2


def record(class_counts: list[int] | None = None, with_counts: bool = True) -> dict[str, Any]:
    """The record; ``class_counts`` overrides the counts per class (the accuracies are left as they are,
    so only the low-count flag changes); ``with_counts=False`` drops ``n`` and ``class_counts`` (a record of a
    run made before trainviz recorded them)."""
    counts = CLASS_COUNTS if class_counts is None else class_counts

    def stats(correct: tuple[int, int]) -> dict[str, Any]:
        return {
            "accuracy": sum(correct) / N,
            "confidence": 0.7,
            "nll": 0.9,
            "ece": 0.1,
            "per_class_accuracy": [c / m for c, m in zip(correct, CLASS_COUNTS)],
        }

    table = [{"corruption": c, "severity": s, **stats(correct), "flip_rate": 0.2} for (c, s), correct in TABLE.items()]
    corruptions = {}
    for name in dict.fromkeys(c for c, _ in TABLE):
        rows = [row for row in table if row["corruption"] == name]
        mean = {
            key: sum(row[key] for row in rows) / len(rows)
            for key in ("accuracy", "confidence", "nll", "ece", "flip_rate")
        }
        corruptions[name] = {**mean, "ce": 1.0 - mean["accuracy"], "relative_ce": 0.25}
    rec: dict[str, Any] = {
        "epoch": 4,
        "class_names": CLASS_NAMES,
        "clean": stats(CLEAN),
        "corrupted": {
            key: sum(row[key] for row in table) / len(table)
            for key in ("accuracy", "confidence", "nll", "ece", "flip_rate")
        },
        "table": table,
        "corruptions": corruptions,
        "mce": MCE,
        "relative_mce": RELATIVE_MCE,
        "reference": None,
        "skipped": {},
        "fgsm": {"epsilons": list(FGSM), "accuracy": [k / N for k in FGSM.values()]},
        "flip": {
            "step_size": 0.5,
            "max_steps": 5,
            "steps_mean": 2.5,
            "steps_median": 2.0,
            "never_flipped": 4,
            "never_fraction": 0.2,
        },
    }
    if with_counts:
        rec["n"], rec["class_counts"] = N, list(counts)
    return rec


def write_run(root: Path, rec: dict[str, Any] | None = None) -> Path:
    """``root/trainviz/robustness/metrics.jsonl`` holding ``rec`` (default :func:`record`); returns ``root``."""
    folder = root / "trainviz" / "robustness"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text(json.dumps(record() if rec is None else rec) + "\n", "utf-8")
    return root
