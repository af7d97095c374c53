"""The writers a Trainer's callbacks share: one TensorBoard writer, artifact store and background thread per log
folder, held per Trainer in a weak mapping (no process-wide state: a Trainer that is gone takes its entries
with it, and two Trainers in one process never share a writer). The last callback of a folder to tear down
closes it and logs where to look (:func:`release_sinks`); a second fit opens new ones.

Example:
    >>> import tempfile
    >>> class Trainer:  # what the registry reads of a Lightning Trainer
    ...     loggers, max_epochs = [], 3
    >>> trainer = Trainer()
    >>> user = object()
    >>> sink = make_sink(trainer, "demo", tempfile.mkdtemp(), user)
    >>> len(open_folders(trainer))
    1
    >>> release_sinks(user)
    >>> open_folders(trainer)
    []
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from typing import Any

from trainviz.core.namespace import info, namespace_of
from trainviz.sinks.artifacts import ArtifactStore
from trainviz.sinks.loggers import LoggerBackend, logger_backends
from trainviz.sinks.sink import Sink
from trainviz.sinks.tensorboard import find_summary_writer, tensorboard_command
from trainviz.sinks.writer import BackgroundWriter

__all__ = ["Folder", "make_sink", "open_folders", "release_sinks", "say_once", "where_to_look"]


@dataclass(kw_only=True)
class Folder:
    """What the callbacks writing to one log folder share."""

    writer: Any  # the trainer's SummaryWriter, or None
    loggers: list[LoggerBackend]
    store: ArtifactStore
    background: BackgroundWriter
    namespace: str | None = None  # the Trainer's Lightning namespace: the fit-end line goes to its console
    epochs: int | None = None  # the Trainer's max_epochs, for the TensorBoard command
    users: set[int] = field(default_factory=set)


_FOLDERS: weakref.WeakKeyDictionary[Any, dict[str, Folder]] = weakref.WeakKeyDictionary()
_SAID: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def make_sink(trainer: Any, name: str, log_dir: str, user: object | None = None) -> Sink:
    """The :class:`Sink` of callback ``name``, sharing writer, store and thread with the trainer's other callbacks
    in ``log_dir``.

    The sink writes to every logger of the trainer: TensorBoard through its ``SummaryWriter``, the others
    through :func:`trainviz.sinks.loggers.logger_backends` (W&B, MLflow, Comet, CSV); with no logger, to the
    artifact store alone. ``user`` (the callback) is registered until :func:`release_sinks`; when the last user
    of a folder is released, the loggers get the finished artifact folder and the writer thread is closed.
    """
    folders = _FOLDERS.setdefault(trainer, {})
    key = os.path.abspath(log_dir)
    folder = folders.get(key)
    if folder is None:
        folder = folders[key] = Folder(
            writer=find_summary_writer(trainer),
            loggers=logger_backends(list(getattr(trainer, "loggers", None) or [])),
            store=ArtifactStore(os.path.join(log_dir, "trainviz")),
            background=BackgroundWriter(),
            namespace=namespace_of(trainer),
            epochs=getattr(trainer, "max_epochs", None),
        )
    folder.users.add(id(user))
    return Sink(name, folder.writer, folder.store, background=folder.background, loggers=folder.loggers)


def release_sinks(user: object) -> None:
    """``user`` is done with its sinks: close every folder's writers that it was the last user of."""
    for trainer, folders in list(_FOLDERS.items()):
        for key, folder in list(folders.items()):
            folder.users.discard(id(user))
            if folder.users:
                continue
            del folders[key]
            for logger in folder.loggers:
                folder.background.submit(logger.finish, str(folder.store.root))
            folder.background.close()
            if folder.writer is not None:
                folder.writer.flush()
            where_to_look(key, folder)
        if not folders:
            _FOLDERS.pop(trainer, None)


def open_folders(trainer: Any) -> list[str]:
    """The log folders of ``trainer`` whose writers are open."""
    return sorted(_FOLDERS.get(trainer, {}))


def where_to_look(log_dir: str, folder: Folder) -> None:
    """The fit-end line: the artifact folder, the report command, TensorBoard's command for every epoch's images
    and each logger's folder or URL."""
    store = folder.store.root
    if not store.is_dir():
        return
    lines = [f"trainviz: artifacts in {store}", f"  report: trainviz report {log_dir}"]
    if folder.writer is not None:
        command = tensorboard_command(getattr(folder.writer, "log_dir", log_dir), folder.epochs)
        lines.append(f"  TensorBoard: {command}  (every epoch's images: TensorBoard keeps 10 per tag by default)")
    for logger in folder.loggers:
        try:
            where = logger.where()
        except Exception:  # a logger that cannot say where it is must not fail the fit's end
            where = None
        if where:
            lines.append(f"  {logger.name}: {where}")
    info("\n".join(lines), folder.namespace)


def say_once(trainer: Any, message: str) -> None:
    """Log ``message`` once per Trainer, whichever of its callbacks says it first (every time without one)."""
    if trainer is not None:
        said = _SAID.setdefault(trainer, set())
        if message in said:
            return
        said.add(message)
    info(message, trainer)
