"""The shape every capability's outcome takes: one typed result per run, written by the sink, read back by the
report.

A capability is a pure computation ``compute(model, probe, config) -> SomeResult`` (torch, no Lightning). The
result is a dataclass deriving from :class:`Result`; its JSON record schema is defined once, in ``record()`` and
``from_record()``, next to the fields, so that the callback writes it, the report reads it and the CI gates come
from it without any module parsing another's string keys. :meth:`Sink.write <trainviz.sinks.Sink.write>` is the
one way a result leaves the process: scalars, rendered images, arrays, the record and any documents.

Example:
    >>> from dataclasses import dataclass
    >>> from trainviz.core.result import Result
    >>> @dataclass
    ... class Accuracy(Result):
    ...     epoch: int
    ...     accuracy: float
    ...     def scalars(self):
    ...         return {"accuracy": self.accuracy}
    ...     def record(self):
    ...         return {"epoch": self.epoch, "accuracy": self.accuracy}
    ...     @classmethod
    ...     def from_record(cls, record):
    ...         return cls(record["epoch"], record["accuracy"])
    >>> r = Accuracy(3, 0.75)
    >>> Accuracy.from_record(r.record()) == r, r.scalars()
    (True, {'accuracy': 0.75})
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

__all__ = ["Result"]


class Result:
    """Base of the typed results. Subclasses are dataclasses with an ``epoch`` field and override what they have.

    Attributes:
        record_name: the JSON-lines file of the records (``<callback>/<record_name>.jsonl``).
    """

    record_name: ClassVar[str] = "metrics"
    epoch: int

    def scalars(self) -> dict[str, float | None]:
        """Scalars to log, ``{name: value}`` (tags ``trainviz/<callback>/<name>``); ``None`` values are not logged."""
        return {}

    def record(self) -> dict[str, Any]:
        """The JSON record of the run (plain values, ``None`` for non-finite numbers)."""
        raise NotImplementedError

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Result:
        """The result back from :meth:`record` (what the report reads)."""
        raise NotImplementedError

    def render(self) -> dict[str, np.ndarray]:
        """Images to log, ``{name: (H, W, 3) uint8}``, also saved as ``epoch_XXXX/<name>.png``."""
        return {}

    def arrays(self) -> dict[str, dict[str, Any]]:
        """Arrays to save, ``{file: {key: array}}`` as ``epoch_XXXX/<file>.npz``."""
        return {}

    def histograms(self) -> dict[str, Any]:
        """Value sets to log as TensorBoard histograms, ``{name: array}``."""
        return {}

    def embeddings(self) -> dict[str, tuple[Any, list[str], list[str]]]:
        """2-D frames to show in the loggers that draw them (a W&B table), ``{name: (coords (N, 2), labels,
        predictions)}``."""
        return {}

    def documents(self) -> dict[str, Any]:
        """JSON documents to (over)write in the callback's folder, ``{file name: object}``."""
        return {}

    def section(self) -> dict[str, Any] | None:
        """The callback's section of the HTML report, as plain JSON data (written as ``<callback>/section.json``
        and drawn by :mod:`trainviz.report.sections`), or ``None`` for none. The spec (every key but ``title``
        optional; paths are relative to the callback's folder; a missing file or record key is left out)::

            {"version": 1, "title": str, "description": str, "order": int (lower first),
             "curves": [{"title", "description", "y" (axis label), "y_range": [lo, hi],
                         "series": [{"name": str, "key": [record key, nested key, ...]}],
                         "connect_gaps": bool (join the points across gaps: records without the key, nulls)}],
             "bars": [{"title", "description", "y", "document": "<file>.json", "key": [key, ...]}],
             "galleries": [{"title", "description", "images": ["<name>", ...] (epoch_XXXX/<name>.png),
                            "labels": [str, ...], "maps": bool (detailed view: full screen, synchronised zoom)}],
             "files": [{"title", "description", "glob": "<pattern>", "kind": "image" | "html"}]}

        Curves plot the values at ``key`` of each record of ``<callback>/<record_name>.jsonl`` over epochs;
        galleries show one epoch at a time with a slider; ``files`` are fit-end outputs (an image: its latest
        match; html: every match, linked and embedded on demand)."""
        return None
