"""The collectives of the compute contract across processes: rank 0's plan to every rank, every rank's partial to
rank 0, and one agreed decision when a share failed.

Every rank calls each of these in the same order, so the collectives match (a rank with an empty share calls them
too). With one process, or without an initialised default process group, they are local and free.

Example:
    >>> c = Collective(world=1, rank=0)
    >>> c.broadcast({"rows": [1, 2]}), c.gather("part"), c.all_ok(True)
    ({'rows': [1, 2]}, ['part'], True)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Collective", "agreed", "from_rank_zero", "in_lockstep"]


@dataclass(frozen=True)
class Collective:
    """The processes that compute a probe together: ``world`` of them, this one ``rank``.

    Objects travel pickled (:func:`torch.distributed.broadcast_object_list`, :func:`torch.distributed.gather_object`):
    plans and partials are plain data with CPU tensors (:func:`trainviz.core.transfer.to_host`).
    """

    world: int = 1
    rank: int = 0
    lockstep: bool = False
    """The model is sharded across the processes (:func:`trainviz.core.strategy.sharded_strategy`): its forwards and
    backwards are collectives, so every rank computes the whole probe set, in the same order, and rank 0 keeps its
    own result (see :meth:`share_of`)."""

    @classmethod
    def of(cls, trainer: Any) -> Collective:
        """The trainer's processes (one when the default process group is not initialised)."""
        from trainviz.core.strategy import sharded_strategy

        world = int(getattr(trainer, "world_size", 1) or 1)
        if world > 1 and not (dist.is_available() and dist.is_initialized()):
            world = 1
        if world == 1:
            return cls()
        return cls(world, int(getattr(trainer, "global_rank", 0) or 0), sharded_strategy(trainer) is not None)

    @property
    def shares(self) -> int:
        """How many shares the probe set is cut into: one per rank, or one (the whole set, computed by every rank in
        lockstep) when the model is sharded."""
        return 1 if self.lockstep else self.world

    @property
    def share_index(self) -> int:
        """This rank's share (``0 .. shares - 1``)."""
        return 0 if self.lockstep else self.rank

    @property
    def is_zero(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0, device=self._device())
        return box[0]

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0; ``None`` on the other ranks. In ``lockstep`` every rank
        computed the same whole share: rank 0 keeps its own, nothing travels."""
        if self.world == 1 or self.lockstep:
            return [obj] if self.rank == 0 else None
        out: list[Any] | None = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def all_ok(self, ok: bool) -> bool:
        """Whether ``ok`` holds on every rank (one all-reduce): the point where a rank's failure becomes everyone's."""
        if self.world == 1:
            return bool(ok)
        flag = torch.tensor([0 if ok else 1], device=self._device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) == 0

    def largest(self, value: float) -> float:
        """The largest ``value`` over the ranks (one all-reduce): the slowest rank's share of the fit."""
        if self.world == 1:
            return float(value)
        box = torch.tensor([float(value)], dtype=torch.float64, device=self._device())
        dist.all_reduce(box, op=dist.ReduceOp.MAX)
        return float(box.item())

    @staticmethod
    def _device() -> torch.device:
        """Where the backend wants its tensors: the current CUDA device under NCCL, else the CPU."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


_LOCKSTEP: ContextVar[Collective | None] = ContextVar("trainviz_lockstep", default=None)


@contextlib.contextmanager
def in_lockstep(group: Collective) -> Iterator[None]:
    """While a probe computes: with a sharded model (``group.lockstep``) its data-dependent decisions go through
    :func:`agreed`, so that every rank takes them together."""
    token = _LOCKSTEP.set(group if group.lockstep and group.world > 1 else None)
    try:
        yield
    finally:
        _LOCKSTEP.reset(token)


def agreed(flag: bool) -> bool:
    """A data-dependent decision that ends a loop of model calls (steps-to-flip stops once every image flipped): in
    lockstep (:func:`in_lockstep`), ``True`` only when it holds on every rank (one all-reduce), so that no rank stops
    while another calls the model again (a GPU kernel's rounding may break a tie differently on two ranks); otherwise
    ``flag`` itself, for free.

    Example:
        >>> agreed(True), agreed(False)
        (True, False)
    """
    group = _LOCKSTEP.get()
    return bool(flag) if group is None else group.all_ok(bool(flag))


def from_rank_zero(obj: Any) -> Any:
    """A data-dependent choice that sets how many model calls follow (the images whose random directions are tried):
    in lockstep (:func:`in_lockstep`), rank 0's, sent to every rank (so a rounding difference cannot give two ranks
    different numbers of calls); otherwise ``obj`` itself, for free.

    Example:
        >>> from_rank_zero([1, 3])
        [1, 3]
    """
    group = _LOCKSTEP.get()
    return obj if group is None else group.broadcast(obj)
