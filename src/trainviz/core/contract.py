"""The compute contract every capability follows: plan, compute a share, merge.

A capability's probe (a :class:`Probe`, in ``trainviz/probes/<capability>.py``) answers three calls, and its
callback makes those three calls and ``sink.write(result)``, nothing else:

- ``plan(credit) -> Plan | None``: what runs this time (which rows, epsilons, methods, images), given the budget's
  :class:`Credit`; ``None`` skips a run that is not essential. Plans are plain, picklable data, so that rank 0 can
  decide one and broadcast it.
- ``compute(model, share, plan, state) -> Partial``: the work on this process's :class:`Share` of the probe set
  (the whole set in one process). ``state`` is what the run needs from earlier runs (:meth:`Probe.state`), also
  plain data. Partials hold CPU tensors and numbers, so they can be gathered between processes.
- ``merge(partials, plan) -> Result``: on rank 0, the result one process would have computed from the whole
  set. Partials come in share order; parts that need the whole set (means, pictures, projections, alignment)
  happen here.
- ``evolution() -> FitEnd | None``: at fit end, on rank 0, what the capability shows from all its runs (the
  evolution strips and their arrays), or ``None``.

The share is cut by global index (:meth:`Share.split`): contiguous, sizes differing by at most one, possibly
empty, so batch composition cannot change a count and the merged result does not depend on the world size.
For MaxOut a share is a set of targets rather than images: ``Share.data`` is whatever the probe cuts.

Example:
    A probe of the mean logit, computed in two shares and merged, equals the one-share result:

    >>> import torch
    >>> from trainviz.core.contract import Credit, Probe, Share
    >>> from trainviz.core.probeset import ProbeSet
    >>> class MeanLogit(Probe):
    ...     def compute(self, model, share, plan, state):
    ...         return model(share.data.images).sum(0)
    ...     def merge(self, partials, plan):
    ...         return torch.stack(list(partials)).sum(0) / len(self.probe)
    >>> probe = ProbeSet(torch.rand(5, 3, 4, 4), torch.zeros(5, dtype=torch.long), torch.arange(5))
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    >>> p = MeanLogit(probe)
    >>> one = p.run(model, Credit())
    >>> two = p.merge([p.compute(model, s, True, None) for s in Share.split(probe, 2)], True)
    >>> torch.allclose(one, two, atol=1e-6), [len(s) for s in Share.split(probe, 2)]
    (True, [3, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Generic, TypeVar

import torch
from torch import nn

from trainviz.core.probeset import ProbeSet

__all__ = ["Credit", "FitEnd", "Probe", "Share", "is_whole"]

PlanT = TypeVar("PlanT")
PartialT = TypeVar("PartialT")
ResultT = TypeVar("ResultT")
DataT = TypeVar("DataT")


@dataclass(frozen=True)
class Credit:
    """What the budget allows this run.

    Attributes:
        seconds: the credit in seconds of the training thread; ``None`` without a budget (run everything due).
        essential: the run must produce a result (the first and the last epoch): scale it down, never skip it.
        epoch: the epoch the run is for.
    """

    seconds: float | None = None
    essential: bool = True
    epoch: int = 0


@dataclass(frozen=True)
class Share(Generic[DataT]):
    """One process's part of the probe set: global indices ``start`` to ``stop`` and the data they cut.

    Attributes:
        start: the global index of the first item.
        stop: one past the last (``start == stop``: an empty share, which still joins every collective).
        data: the items (a :class:`~trainviz.core.probeset.ProbeSet` slice, or MaxOut's targets).
    """

    start: int
    stop: int
    data: DataT

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def indices(self) -> torch.Tensor:
        """The global indices of the share's items, ``(len,)`` long."""
        return torch.arange(self.start, self.stop)

    @staticmethod
    def bounds(n: int, world: int, rank: int) -> tuple[int, int]:
        """``(start, stop)`` of ``rank``'s contiguous part of ``n`` items over ``world`` processes: the first
        ``n % world`` ranks take one more item."""
        base, extra = divmod(n, world)
        start = rank * base + min(rank, extra)
        return start, start + base + (1 if rank < extra else 0)

    @classmethod
    def of(cls, probe: ProbeSet, world: int = 1, rank: int = 0) -> Share[ProbeSet]:
        """``rank``'s share of ``probe`` (the whole set when ``world == 1``)."""
        start, stop = cls.bounds(len(probe), world, rank)
        return Share(start, stop, probe if (start, stop) == (0, len(probe)) else probe.subset(start, stop))

    @classmethod
    def split(cls, probe: ProbeSet, world: int) -> list[Share[ProbeSet]]:
        """Every rank's share of ``probe``, in rank order (what tests compare against the one-share run)."""
        return [cls.of(probe, world, rank) for rank in range(world)]

    @classmethod
    def of_items(cls, items: Sequence[Any], world: int = 1, rank: int = 0) -> Share[list[Any]]:
        """``rank``'s share of a list of items that are not images (MaxOut's targets)."""
        start, stop = cls.bounds(len(items), world, rank)
        return Share(start, stop, list(items[start:stop]))


@dataclass
class FitEnd:
    """What a capability shows at fit end from all its runs, written at ``epoch`` (the last run's).

    Attributes:
        epoch: the step and artifact folder of what follows.
        images: ``{name: (H, W, 3) uint8}``, logged and saved as ``epoch_XXXX/<name>.png``.
        arrays: ``{file: {key: array}}``, saved as ``epoch_XXXX/<file>.npz``.
        texts: ``{name: text}``, logged as text.
        documents: ``{file name: JSON-able}``, saved in the capability's folder.
    """

    epoch: int
    _: KW_ONLY
    images: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, dict[str, Any]] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    documents: dict[str, Any] = field(default_factory=dict)


def is_whole(plan: Any) -> bool:
    """Whether ``plan`` runs everything due (``True``, or a typed plan whose ``whole`` is true): the cost of such a
    run is the estimate of the next one."""
    return plan is True or bool(getattr(plan, "whole", False))


class Probe(Generic[PlanT, PartialT, ResultT]):
    """Base of a capability's probe: the compute contract (see the module docstring).

    Subclasses implement :meth:`compute` and :meth:`merge`, and override :meth:`plan` when a run has parts to
    choose from and :meth:`state` when a share's computation needs earlier runs. The probe object keeps its own
    history across runs (updated in :meth:`merge`, on rank 0) and is built once per fit by its callback, with the
    fixed probe set on the model's device.

    Args:
        probe: the whole fixed probe set (merge shows and averages over all of it).
    """

    def __init__(self, probe: ProbeSet) -> None:
        self.probe = probe
        self.clean: Any = None  # a CleanView (trainviz.core.clean_forward) when its callback shares its clean forward

    def plan(self, credit: Credit) -> PlanT | None:
        """What runs this time; the default runs everything (``True``)."""
        return True  # type: ignore[return-value]

    def state(self) -> Any:
        """What :meth:`compute` needs from earlier runs (plain data; rank 0's is broadcast)."""
        return None

    def compute(self, model: nn.Module, share: Share[Any], plan: PlanT, state: Any) -> PartialT:  # pragma: no cover
        raise NotImplementedError

    def merge(self, partials: Sequence[PartialT], plan: PlanT) -> ResultT:  # pragma: no cover
        raise NotImplementedError

    def evolution(self) -> FitEnd | None:
        """Fit end: what the capability shows from all its runs (strips across epochs); ``None``: nothing."""
        return None

    def run(self, model: nn.Module, credit: Credit) -> ResultT | None:
        """The whole contract in one process: plan, compute the whole set as one share, merge."""
        plan = self.plan(credit)
        if plan is None:
            return None
        return self.merge([self.compute(model, Share.of(self.probe), plan, self.state())], plan)
