"""The compiled C engine (``mqueue._mq_cffi``) and its return codes as data.

The codes are defined once, in ``csrc/mq.h``; the cffi module takes their
values from there (``#define MQ_EXXX ...`` in the cdef).  :data:`ERRORS` maps
each to the exception kind and message a caller sees, and :func:`error_for`
*returns* that exception (the caller raises it), as py-lmdb's error map does.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from ._errors import (
    CorruptSegmentError,
    ItemTooLargeError,
    MQueueError,
    NamespaceIncompleteError,
    NamespaceLostError,
    QueueFullError,
    TooManyProcessesError,
)
from ._mq_cffi import ffi, lib

ErrorKind = Callable[[str], MQueueError]

ERRORS: dict[int, tuple[ErrorKind, str]] = {
    lib.MQ_EINVAL: (MQueueError, "invalid argument"),
    lib.MQ_ENOMEM: (MQueueError, "out of memory"),
    lib.MQ_ESYS: (MQueueError, "system call failed"),
    lib.MQ_EMAGIC: (
        CorruptSegmentError,
        "not an mqueue segment (foreign or garbage header)",
    ),
    lib.MQ_EVERSION: (CorruptSegmentError, "mqueue segment of another layout version"),
    lib.MQ_ECORRUPT: (
        CorruptSegmentError,
        "shared segment is damaged (inconsistent header, table or records)",
    ),
    lib.MQ_ETOOBIG: (ItemTooLargeError, "item is larger than the queue's byte capacity"),
    lib.MQ_EFULL: (
        QueueFullError,
        "queue is full (no count bound and no room left in bytes); nothing added",
    ),
    lib.MQ_EBUF: (MQueueError, "buffer too small"),
    lib.MQ_EINTR: (MQueueError, "interrupted by a signal"),
    lib.MQ_ESLOTS: (
        TooManyProcessesError,
        "too many processes attached to the namespace (all liveness slots in use)",
    ),
    lib.MQ_ERANGE: (MQueueError, "no such queue index (or the handle is closed)"),
    lib.MQ_ENOTREADY: (
        MQueueError,
        "segment is not initialised yet (its creator is still making it)",
    ),
    lib.MQ_ECLOSED: (MQueueError, "the namespace handle is closed"),
    lib.MQ_EAGAIN: (MQueueError, "a wait was cut into slices (call again)"),
    lib.MQ_ELOST: (
        NamespaceLostError,
        "the namespace was destroyed (mqueue.destroy, `mqueue destroy`, or its file "
        "removed from /dev/shm; it may have been created again since): attach or create "
        "it again",
    ),
    lib.MQ_EHALFMADE: (
        functools.partial(NamespaceIncompleteError, creator_alive=False),
        "the namespace was left half-made by a creator that died; create it again with "
        "exist_ok=True, or remove it with `mqueue destroy`",
    ),
    lib.MQ_EBUSY: (
        MQueueError,
        "the queue already has a pending reservation (a save or fetch in progress)",
    ),
    lib.MQ_ENORSV: (MQueueError, "no pending reservation with that tag"),
    lib.MQ_EAPPLIED: (MQueueError, "that load was already applied"),
    lib.MQ_ENOSTEP: (MQueueError, "the batch does not fit the queue in one step"),
}


def strerror(rc: int) -> str:
    """Return the message for a C engine return code."""
    entry = ERRORS.get(rc)
    return entry[1] if entry is not None else f"unknown error {rc}"


def error_for(rc: int, what: str) -> MQueueError:
    """Return (not raise) the exception for a negative C engine return code.

    ``what`` names the object the call was about (queue or namespace).  A
    code without a kind of its own is an :class:`MQueueError` naming the
    code; ``MQ_ESYS`` carries the errno the engine saw.  A damaged segment
    is also logged (ERROR) on the ``mqueue`` logger.
    """
    kind, message = ERRORS.get(rc, (MQueueError, f"unknown error {rc}"))
    if rc == lib.MQ_ESYS:
        errno_value = lib.mq_last_errno()
        message = f"{message}: {OSError(errno_value, os.strerror(errno_value))}"
    elif kind is MQueueError:
        message = f"{message} (code {rc})"
    exc = kind(f"{what}: {message}")
    if isinstance(exc, CorruptSegmentError):
        from . import _log

        _log.fault(exc)
    return exc


__all__ = ["ERRORS", "error_for", "ffi", "lib", "strerror"]
