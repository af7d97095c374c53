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
import pickle
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Collective", "agreed", "from_rank_zero", "in_lockstep"]


@dataclass(frozen=True)
class Collective:
    """The processes that compute a probe together: ``world`` of them, this one ``rank``.

    Objects travel pickled, as uint8 tensors (a size, then the bytes: what
    :func:`torch.distributed.broadcast_object_list` and :func:`torch.distributed.gather_object` do): plans and
    partials are plain data with CPU tensors (:func:`trainviz.core.transfer.to_host`). Under gloo every collective
    here returns only once the backend's worker threads have let go of its tensors (:func:`_settle`), so that a rank
    that ends right after one (a spawned rank ends with the fit, after trainviz's last all-reduce) exits cleanly.
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
        """Rank 0's ``obj`` on every rank (rank 0 keeps ``obj`` itself; the others get a copy)."""
        if self.world == 1:
            return obj
        device = self._device()
        payload = _to_bytes(obj, device) if self.rank == 0 else None
        size = torch.tensor([0 if payload is None else payload.numel()], dtype=torch.int64, device=device)
        _collective(dist.broadcast, size, src=0)
        if payload is None:
            payload = torch.empty(int(size.item()), dtype=torch.uint8, device=device)
        _collective(dist.broadcast, payload, src=0)
        return obj if self.rank == 0 else _from_bytes(payload, payload.numel())

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0; ``None`` on the other ranks. In ``lockstep`` every rank
        computed the same whole share: rank 0 keeps its own, nothing travels."""
        if self.world == 1 or self.lockstep:
            return [obj] if self.rank == 0 else None
        device = self._device()
        payload = _to_bytes(obj, device)
        size = torch.tensor([payload.numel()], dtype=torch.int64, device=device)
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.world)]
        _collective(dist.all_gather, sizes, size)  # every rank sends the largest size: gather wants equal shapes
        longest = max(int(n.item()) for n in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8, device=device)
        padded[: payload.numel()] = payload
        parts = [torch.empty(longest, dtype=torch.uint8, device=device) for _ in sizes] if self.is_zero else None
        _collective(dist.gather, padded, parts, dst=0)
        if parts is None:
            return None
        return [_from_bytes(part, int(n.item())) for part, n in zip(parts, sizes)]

    def all_ok(self, ok: bool) -> bool:
        """Whether ``ok`` holds on every rank (one all-reduce): the point where a rank's failure becomes everyone's."""
        if self.world == 1:
            return bool(ok)
        flag = torch.tensor([0 if ok else 1], device=self._device())
        _collective(dist.all_reduce, flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) == 0

    def largest(self, value: float) -> float:
        """The largest ``value`` over the ranks (one all-reduce): the slowest rank's share of the fit."""
        if self.world == 1:
            return float(value)
        box = torch.tensor([float(value)], dtype=torch.float64, device=self._device())
        _collective(dist.all_reduce, box, op=dist.ReduceOp.MAX)
        return float(box.item())

    @staticmethod
    def _device() -> torch.device:
        """Where the backend wants its tensors: the current CUDA device under NCCL, else the CPU."""
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")


SETTLE_SECONDS = 1.0
"""How long a collective waits, at most, for the gloo backend's worker threads to let go of its tensors (they do
within a millisecond; after one wait that ran out, this process does not wait again)."""
_SETTLE = {"timeout": SETTLE_SECONDS}


def _collective(run: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
    """Run one collective (``run``, a :mod:`torch.distributed` function) and, under gloo, wait until its worker
    threads have let go of the tensors it was given (:func:`_settle`)."""
    tensors = [t for arg in args for t in (arg if isinstance(arg, (list, tuple)) else [arg]) if t is not None]
    held = _references(tensors)
    run(*args, **kwargs)
    if dist.get_backend() == "gloo":
        _settle(tensors, held)


def _references(tensors: list[torch.Tensor]) -> list[int]:
    """Python's references to each of ``tensors`` (what :func:`_settle` waits to see again)."""
    return [sys.getrefcount(t) for t in tensors]


def _settle(tensors: list[torch.Tensor], held: list[int], timeout: float = SETTLE_SECONDS) -> bool:
    """Wait until nothing but this thread's references holds each of ``tensors`` again: one C++ reference (its
    Python object's) and ``held`` Python references, as before the collective (or until ``timeout`` passed);
    whether they do.

    Gloo's worker thread lets go of a finished collective's tensors a moment after the caller's ``wait`` returns.
    A tensor shared with C++ holds a reference to its Python object, and the thread that drops the C++ reference
    last must take the GIL to drop that one too. If the process is exiting by then (a rank's last collective is
    trainviz's, at the fit's end, and a spawned rank ends right after), the thread is killed holding C++ frames
    and the process aborts ("terminate called without an active exception"; pytorch/pytorch#179291). So the
    caller keeps its tensors, and gives up the GIL, until the worker has let go of both references.

    Example:
        >>> t = torch.zeros(2)
        >>> _settle([t], _references([t]))
        True
    """
    deadline = time.monotonic() + min(timeout, _SETTLE["timeout"])
    while True:
        alone = all(t._use_count() == 1 for t in tensors)  # type: ignore[attr-defined]
        if alone and all(now <= before for now, before in zip(_references(tensors), held)):  # counted alike
            return True
        if time.monotonic() > deadline:
            _SETTLE["timeout"] = 0.0  # a backend that holds its tensors longer is not waited for again
            return False
        time.sleep(1e-4)  # gives up the GIL


def _to_bytes(obj: Any, device: torch.device) -> torch.Tensor:
    """``obj`` pickled, as a 1-D uint8 tensor on ``device`` that owns its memory (no Python buffer behind it, whose
    release would need the GIL)."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device, copy=True)


def _from_bytes(payload: torch.Tensor, size: int) -> Any:
    """The object pickled in the first ``size`` bytes of ``payload``."""
    return pickle.loads(payload[:size].cpu().numpy().tobytes())


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
