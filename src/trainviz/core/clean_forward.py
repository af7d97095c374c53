"""One clean forward of a probe set per model state, shared by the callbacks that probe the same images.

The suite's dynamics and embedding callbacks draw the same probe set by default (256 class-stratified images of
the split, seed 0) and each needs one clean forward of it at every run: dynamics the logits, the embedding the
logits and its layers' pooled features. A :class:`CleanForward` (one per Trainer, held by its callbacks like the
budget's scheduler: no process-wide registry) runs that forward once and gives each its part:

- at setup a callback says what it wants of the probe set whose :meth:`~trainviz.core.probeset.ProbeSet.fingerprint`
  it holds (:meth:`CleanForward.want`: the logits, and layers with a reducer applied to each batch's output, so a
  big feature map is never kept whole);
- at a run, the first to ask (:meth:`CleanForward.run`) runs one forward of its share in batches (no graph, inside
  its own probe guard), with hooks on every layer any callback wanted for that probe set (removed when it ends);
  the others read the result while the model is in the same state.

The result is kept for one key: the probe set's fingerprint and the share (its global bounds), the batch size, the
model and its ``output=``, autocast, and the version counter of every parameter and buffer. An optimizer step, a
training forward's BatchNorm update or any in-place change moves a version counter, so a stale forward is never
read; what a callback gets is bitwise what its own forward would give (the same batches, the same reducer).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from trainviz.core.clean_forward import CleanForward
    >>> from trainviz.core.contract import Share
    >>> from trainviz.core.probeset import ProbeSet
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    >>> probe = ProbeSet(images=torch.randn(5, 3, 2, 2), labels=torch.arange(5) % 3, ids=torch.arange(5))
    >>> shared = CleanForward()
    >>> key = probe.fingerprint()
    >>> shared.want(key, "dynamics")
    >>> shared.want(key, "embedding", {"hidden": net[2]}, lambda name, out: out.mean(1, keepdim=True))
    >>> logits, _ = shared.run(net, Share.of(probe), key, batch_size=2, owner="dynamics")
    >>> again, feats = shared.run(net, Share.of(probe), key, batch_size=2, owner="embedding")
    >>> (shared.forwards, shared.hits, torch.equal(logits, again), tuple(feats["hidden"].shape))
    (1, 1, True, (5, 1))
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainviz.core.budget import synchronize
from trainviz.core.contract import Share
from trainviz.core.hooks import capture
from trainviz.core.outputs import LogitsModel, expect_logits

__all__ = ["CleanForward", "CleanView", "Reducer"]

TIMED = 5
"""The forwards of a probe set whose median seconds price it (:attr:`CleanForward.seconds`)."""

Reducer = Callable[[str, torch.Tensor], torch.Tensor]
"""``reduce(layer name, a batch's output) -> what is kept of it`` (e.g. the embedding's pooled features)."""


@dataclass
class _Want:
    layers: dict[str, nn.Module] = field(default_factory=dict)
    reduce: Reducer | None = None


class CleanForward:
    """The Trainer's shared clean forward (see the module docstring): :meth:`want` at setup, :meth:`run` at a
    run. ``forwards`` and ``hits`` count the forwards run and the reads of one already run; ``seconds`` holds the
    price of one forward of each probe set (by fingerprint): the median seconds of its last :data:`TIMED`
    forwards (the device synchronised), recent enough to follow the model and the host, steadier than one."""

    def __init__(self) -> None:
        self.wants: dict[str, dict[str, _Want]] = {}  # probe fingerprint -> owner -> what it wants
        self.forwards = 0
        self.hits = 0
        self.seconds: dict[str, float] = {}
        self._times: dict[str, deque[float]] = {}
        self._images: dict[str, int] = {}
        self._last: str | None = None
        self._key: tuple[Any, ...] | None = None
        self._value: tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]], dict[str, Exception]] | None = None

    @classmethod
    def of(cls, trainer: Any) -> CleanForward:
        """The one held by a callback of ``trainer`` (``callback.clean_forward``), or a new one."""
        for callback in getattr(trainer, "callbacks", None) or []:
            found = getattr(callback, "clean_forward", None)
            if isinstance(found, CleanForward):
                return found
        return cls()

    def want(
        self,
        fingerprint: str,
        owner: str,
        layers: Mapping[str, nn.Module] | None = None,
        reduce: Reducer | None = None,
    ) -> None:
        """``owner`` reads the forward of the probe set ``fingerprint``: its logits and, with ``layers``, each
        batch's output of each layer through ``reduce`` (concatenated over the batches)."""
        if layers and reduce is None:
            raise ValueError("Expected a `reduce` for the layers wanted from the clean forward.")
        self.wants.setdefault(fingerprint, {})[owner] = _Want(dict(layers or {}), reduce)
        self.clear()  # what a forward captures changed

    def clear(self) -> None:
        """Forget the kept forward (a new want, the fit's end)."""
        self._key, self._value = None, None

    def run(
        self, model: nn.Module, share: Share[Any], fingerprint: str, batch_size: int, owner: str
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The logits ``(N, K)`` of ``share``'s images and ``owner``'s layers ``{name: reduced (N, ...)}``, from the
        kept forward when the model is in the same state, else from one forward now (kept for the others).

        Raises:
            ValueError: the model does not return logits, or one of ``owner``'s layers gave no tensor.
        """
        key = self._state(model, share, fingerprint, batch_size)
        if key is not None and key == self._key and self._value is not None:
            self.hits += 1
            value = self._value
        else:
            device = share.data.images.device
            synchronize(device)
            start = time.perf_counter()
            value = self._forward(model, share.data.images, self.wants.get(fingerprint, {}), batch_size)
            synchronize(device)
            times = self._times.setdefault(fingerprint, deque(maxlen=TIMED))
            times.append(time.perf_counter() - start)
            self.seconds[fingerprint] = statistics.median(times)
            self._images[fingerprint], self._last = share.data.images.shape[0], fingerprint
            self.forwards += 1
            self._key, self._value = (key, value) if key is not None else (None, None)
        logits, features, errors = value
        if owner in errors:
            raise errors[owner]
        return logits, dict(features.get(owner, {}))

    def image_seconds(self) -> float | None:
        """The price of one image's forward on the model as it is now: that of the probe set timed last, over its
        images (``None`` before a forward; a callback that cannot share the forward, e.g. for gradients, prices
        its own work from it before measuring that)."""
        if self._last is None or not self._images.get(self._last):
            return None
        return self.seconds[self._last] / self._images[self._last]

    @staticmethod
    def _state(model: nn.Module, share: Share[Any], fingerprint: str, batch_size: int) -> tuple[Any, ...] | None:
        """The forward's key (see the module docstring); ``None`` when a version counter cannot be read."""
        inner = model.model if isinstance(model, LogitsModel) else model
        try:
            versions = tuple(t._version for t in itertools.chain(inner.parameters(), inner.buffers()))
        except (RuntimeError, AttributeError):  # inference tensors have no version counter
            return None
        images = share.data.images
        return (
            fingerprint,
            share.start,
            share.stop,
            tuple(images.shape),
            images.dtype,
            str(images.device),
            batch_size,
            id(inner),
            id(getattr(model, "output", None)),
            torch.is_autocast_enabled(),
            versions,
        )

    @staticmethod
    def _forward(
        model: nn.Module, images: torch.Tensor, wants: Mapping[str, _Want], batch_size: int
    ) -> tuple[torch.Tensor, dict[str, dict[str, torch.Tensor]], dict[str, Exception]]:
        """One forward of ``images`` in batches with every wanted layer hooked: the logits, each owner's reduced
        layers, and the error of each owner whose layer gave no tensor or whose reducer failed."""
        hooked = {name: module for want in wants.values() for name, module in want.layers.items()}
        parts: dict[str, dict[str, list[torch.Tensor]]] = {o: {n: [] for n in w.layers} for o, w in wants.items()}
        errors: dict[str, Exception] = {}
        logits = []
        with torch.no_grad(), capture(model, hooked) as acts:
            for start in range(0, images.shape[0], batch_size):
                acts.clear()
                logits.append(expect_logits(model(images[start : start + batch_size])).detach())
                for name_of, want in wants.items():
                    if name_of in errors or want.reduce is None:
                        continue
                    for name in want.layers:
                        if name not in acts:
                            errors[name_of] = ValueError(
                                f"Layer {name!r} returned no tensor during the forward pass: pick another layer."
                            )
                            break
                        try:
                            parts[name_of][name].append(want.reduce(name, acts[name]))
                        except Exception as err:  # this owner's failure, told to it alone
                            errors[name_of] = err
                            break
        features = {
            name_of: {name: torch.cat(chunks) for name, chunks in layers.items() if chunks}
            for name_of, layers in parts.items()
            if name_of not in errors
        }
        return torch.cat(logits), features, errors


@dataclass
class CleanView:
    """One callback's handle on the shared forward: its probe set's ``fingerprint`` and its ``owner`` name."""

    shared: CleanForward
    fingerprint: str
    owner: str

    def run(self, model: nn.Module, share: Share[Any], batch_size: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """:meth:`CleanForward.run` for this callback."""
        return self.shared.run(model, share, self.fingerprint, batch_size, self.owner)

    @property
    def seconds(self) -> float | None:
        """The price of one forward of this probe set (:attr:`CleanForward.seconds`; ``None`` before the first)."""
        return self.shared.seconds.get(self.fingerprint)
