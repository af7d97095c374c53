"""Finding and reading a run for the report: its ``trainviz`` folder, its manifest and probe-set fingerprints,
the labels of two runs, and the results of the capabilities whose section the report draws from their records
(:data:`REPORTED`). Torch-free; imports no other module of the report.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainviz.core.result import Result

__all__ = [
    "REPORTED",
    "ProbeSetMismatchError",
    "check_probes",
    "default_report_path",
    "find_run",
    "read_manifest",
    "read_records",
    "reported_results",
    "run_labels",
]

SPEC_FILE = "section.json"
_MARKERS = ("robustness", "manifest", "dynamics")

REPORTED: dict[str, str] = {
    "robustness": "trainviz.probes.robustness_result:RobustnessResult",
}
"""The folders whose result type (torch-free, ``module:Class``) draws its part of the report from all its records,
with ``report_section(results, folder)`` (and the comparison's ``compare_section(results)``), also for runs written
before their ``section.json`` existed. A ``section.json`` may name its type itself with ``"result"``."""


def _is_trainviz_dir(path: Path) -> bool:
    return path.name == "trainviz" and (any((path / m).is_dir() for m in _MARKERS) or any(path.glob(f"*/{SPEC_FILE}")))


def find_run(path: str | os.PathLike) -> Path:
    """The ``trainviz`` artifact folder of a run.

    ``path`` may be the run's log folder (``.../version_N``), its ``trainviz`` folder, or a parent folder that
    holds exactly one run.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds no run.
        ValueError: ``path`` holds several runs (they are listed).
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"No such folder: {root}")
    for candidate in (root, root / "trainviz"):
        if _is_trainviz_dir(candidate):
            return candidate
    found = sorted(p for p in root.rglob("trainviz") if p.is_dir() and _is_trainviz_dir(p))
    if not found:
        markers = ", ".join(_MARKERS)
        raise FileNotFoundError(f"No trainviz run under {root} (looked for a `trainviz` folder with {markers}).")
    if len(found) > 1:
        runs = "\n  ".join(str(p.parent) for p in found)
        raise ValueError(f"{root} holds {len(found)} trainviz runs; pass one of them:\n  {runs}")
    return found[0]


def default_report_path(run_dir: str | os.PathLike) -> Path:
    """Where :func:`~trainviz.report.build_report` writes by default: ``<run>/trainviz/report/index.html``."""
    return find_run(run_dir) / "report" / "index.html"


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file by epoch (a line cut by a crash skipped; the same epoch again replaces:
    a resumed run); empty when the file is missing."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text("utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int):
            rows.append(row)
    by_epoch = {r["epoch"]: r for r in rows}
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_manifest(root: Path) -> dict[str, Any] | None:
    path = root / "manifest" / "manifest.json"
    return json.loads(path.read_text("utf-8")) if path.is_file() else None


def _result_type(name: str) -> type[Result]:
    module, _, qualname = name.partition(":")
    return getattr(importlib.import_module(module), qualname)  # type: ignore[no-any-return]


def reported_results(root: Path) -> dict[str, tuple[type[Result], list[Result]]]:
    """``{folder: (result type, results by epoch)}`` of the folders of :data:`REPORTED` (and of every
    ``section.json`` naming its ``"result"``) that hold records."""
    names = dict(REPORTED)
    for path in sorted(root.glob(f"*/{SPEC_FILE}")):
        try:
            spec = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(spec, dict) and isinstance(spec.get("result"), str):
            names[path.parent.name] = spec["result"]
    out: dict[str, tuple[type[Result], list[Result]]] = {}
    for folder, name in names.items():
        cls = _result_type(name)
        records = read_records(root / folder / f"{cls.record_name}.jsonl")
        if records:
            out[folder] = (cls, [cls.from_record(r) for r in records])
    return out


# two runs ----------------------------------------------------------------------------------------------


class ProbeSetMismatchError(ValueError):
    """The two runs were probed on different images: their curves cannot be compared."""


def run_labels(a: Path, b: Path) -> tuple[str, str]:
    """The shortest trailing parts of the two run folders that tell them apart (``a/version_0``, ``b/version_0``)."""
    pa, pb = a.resolve().parts, b.resolve().parts
    for n in range(1, max(len(pa), len(pb)) + 1):
        la, lb = "/".join(pa[-n:]), "/".join(pb[-n:])
        if la != lb:
            return la, lb
    return f"{a.name} (A)", f"{b.name} (B)"  # the same folder twice


def _callback_name(key: str) -> str:
    found = re.search(r"'name': '([^']*)'", key)
    return found.group(1) if found else key


def probe_fingerprints(manifest: dict[str, Any] | None) -> dict[str, str] | None:
    """``{callback name: probe set fingerprint}`` of a manifest, or ``None`` without a manifest."""
    if manifest is None:
        return None
    probes = manifest.get("probe_sets") or {}
    return {
        _callback_name(k): str(v.get("fingerprint"))
        for k, v in probes.items()
        if isinstance(v, dict) and v.get("fingerprint")
    }


def check_probes(labels: tuple[str, str], manifests: Sequence[dict[str, Any] | None]) -> list[str]:
    """Raise on different probe sets; the warnings (a run without a manifest) otherwise."""
    prints = [probe_fingerprints(m) for m in manifests]
    missing = [label for label, p in zip(labels, prints) if p is None]
    if missing:
        return [f"no manifest in {', '.join(missing)}: the probe sets could not be checked (compared anyway)"]
    fa, fb = prints[0] or {}, prints[1] or {}
    bad = [(name, fa[name], fb[name]) for name in sorted(set(fa) & set(fb)) if fa[name] != fb[name]]
    if bad:
        listed = "; ".join(f"{name}: {labels[0]} {a}, {labels[1]} {b}" for name, a, b in bad)
        raise ProbeSetMismatchError(
            f"The runs have different probe sets (fingerprints {listed}). The probe sets must match to compare "
            "runs: the same data, probe_size and probe_seed."
        )
    return []
