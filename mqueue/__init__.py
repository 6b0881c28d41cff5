"""mqueue: named message queues in POSIX shared memory, crash-safe, with the
semantics of Kamailio's ``mqueue`` module.

A listener process ``add``s (key, value) items to named, optionally bounded
queues and never waits on slow work; worker processes ``fetch`` them.  When a
bounded queue is full, the oldest item is dropped.  See the README.

Logging goes to the ``mqueue`` logger (silent unless the application
configures logging): lock recoveries, evictions when :func:`log_evictions` is
on, persistence saves and loads, backend faults.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._core import Item, MQueue, Queue, QueueStats
from ._defs import QueueDef, parse_definition, parse_definitions
from ._errors import (
    AccessDeniedError,
    ArgumentError,
    ArgumentTypeError,
    BackendError,
    CorruptSegmentError,
    DefinitionError,
    ItemTooLargeError,
    ItemTypeError,
    MQueueError,
    NamespaceExistsError,
    NamespaceIncompleteError,
    NamespaceLostError,
    NamespaceNotFoundError,
    PersistenceError,
    QueueFullError,
    QueueNotFoundError,
    RPCError,
    TooManyProcessesError,
)
from ._log import log_evictions

__version__ = "0.1.0"


class _Mode(int):
    """An int that shows itself in octal, as file modes are written."""

    def __repr__(self) -> str:
        return f"0o{self:03o}"


DEFAULT_MODE: int = _Mode(0o600)
"""The default ``mode`` of :func:`create`: 0o600, read and write for the owner only."""


def _backend(url: str | None) -> Any:
    """The backend module of ``url``: :mod:`mqueue._shm` for None, else
    :mod:`mqueue._redis`.  Every backend has the same ``create``, ``attach``,
    ``destroy`` and ``list_namespaces`` (each taking ``url=``)."""
    if url is None:
        from . import _shm

        return _shm
    if not isinstance(url, str):
        raise DefinitionError(f"url must be a str or None, not {type(url).__name__}")
    if url.startswith(("redis://", "rediss://", "unix://")):
        from . import _redis

        return _redis
    raise DefinitionError(
        f"unsupported url {url!r}: use url=None (shared memory) or a redis://, rediss:// "
        "or unix:// URL"
    )


def create(
    namespace: str,
    definitions: Iterable[str | QueueDef],
    *,
    db_url: str | None = None,
    mode: int = DEFAULT_MODE,
    exist_ok: bool = False,
    url: str | None = None,
    allow_owners: Iterable[int | str] = (),
    allow_world_writable: bool = False,
) -> MQueue:
    """Create the namespace ``namespace`` holding the queues ``definitions``.

    ``definitions`` are Kamailio modparam strings (``"name=myq;size=20"``) or
    :class:`QueueDef` objects.  The segment is readable and writable by its
    owner only (``mode=0o600``, :data:`DEFAULT_MODE`) unless ``mode`` says
    otherwise (``0o660`` for the group too).  With ``exist_ok=True`` an
    existing namespace with the same definitions is attached instead (one with
    other definitions raises :class:`NamespaceExistsError`).  With ``db_url``,
    queues with dbmode 1 or 2 are loaded now and queues with dbmode 1 or 3 are
    saved by this process's :meth:`MQueue.close`.  ``url=None`` is shared
    memory on this machine; ``"redis://host:port/db"`` the same queues on Redis.
    Shared memory, ``exist_ok=True``: a segment owned by another user is
    refused (AccessDeniedError) unless its owner is in ``allow_owners`` (uids
    or user names), a world-writable one unless ``allow_world_writable``; one
    left half-made by a creator that died is removed and created afresh.

    Raises DefinitionError (a ValueError) for a bad definition or name,
    NamespaceExistsError (a FileExistsError), AccessDeniedError (a
    PermissionError), PersistenceError when loading fails (nothing is left).
    """
    from ._core import check_namespace

    check_namespace(namespace)
    defs = parse_definitions(definitions, db_url=db_url)
    persist = db_url is not None and any(d.dbmode for d in defs)
    if persist:
        from . import _persist

        _persist.validate_queue_tables(defs, db_url)  # type: ignore[arg-type]
    mq: MQueue = _backend(url).create(
        namespace,
        defs,
        mode=mode,
        exist_ok=exist_ok,
        db_url=db_url if persist else None,
        url=url,
        allow_owners=allow_owners,
        allow_world_writable=allow_world_writable,
    )
    if persist and mq.is_creator:
        from . import _persist

        try:
            # what a dead creator of an earlier namespace of this name left
            # unfinished (markers of loads never applied, saves), then the load
            _persist.resolve_queues(mq, db_url)  # type: ignore[arg-type]
            _persist.load_queues(mq, db_url)  # type: ignore[arg-type]
        except BaseException:
            mq._abandon()
            destroy(namespace, url=url)
            raise
    elif persist:
        from . import _persist

        try:  # attached (exist_ok): settle what a dead saver or loader left
            _persist.resolve_queues(mq, db_url)  # type: ignore[arg-type]
        except BaseException:
            mq.close()
            raise
    return mq


def attach(
    namespace: str,
    *,
    url: str | None = None,
    allow_owners: Iterable[int | str] = (),
    allow_world_writable: bool = False,
) -> MQueue:
    """Attach to an existing namespace (from any process, forked or not).

    Shared memory: a segment owned by a user other than the caller or root is
    refused unless its owner is in ``allow_owners`` (uids or user names), and
    a world-writable one unless ``allow_world_writable`` (the checks are made
    on the opened segment, see README "Guarantees and caveats").

    Raises NamespaceNotFoundError (a FileNotFoundError) when it does not exist,
    AccessDeniedError (a PermissionError), CorruptSegmentError for a damaged
    or foreign segment, NamespaceIncompleteError for one whose creator died
    before finishing it (or is still creating it after a wait).
    """
    return _backend(url).attach(  # type: ignore[no-any-return]
        namespace,
        url=url,
        allow_owners=allow_owners,
        allow_world_writable=allow_world_writable,
    )


def destroy(namespace: str, *, url: str | None = None) -> None:
    """Remove a namespace for good.  New ``attach`` calls fail; processes
    still attached get :class:`NamespaceLostError` on their next call (one
    blocked in ``fetch`` within about 100 ms)."""
    _backend(url).destroy(namespace, url=url)


__all__ = [
    "DEFAULT_MODE",
    "AccessDeniedError",
    "ArgumentError",
    "ArgumentTypeError",
    "BackendError",
    "CorruptSegmentError",
    "DefinitionError",
    "Item",
    "ItemTooLargeError",
    "ItemTypeError",
    "MQueue",
    "MQueueError",
    "NamespaceExistsError",
    "NamespaceIncompleteError",
    "NamespaceLostError",
    "NamespaceNotFoundError",
    "PersistenceError",
    "Queue",
    "QueueDef",
    "QueueFullError",
    "QueueNotFoundError",
    "QueueStats",
    "RPCError",
    "TooManyProcessesError",
    "attach",
    "create",
    "destroy",
    "log_evictions",
    "parse_definition",
    "parse_definitions",
]
