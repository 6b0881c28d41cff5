"""Exceptions, and the one place that turns C engine error codes into them.

Every exception derives from :class:`MQueueError` and, where one fits, from the
builtin a caller would naturally catch (``ValueError``, ``KeyError``, ...), in
the style of pynacl.
"""

from __future__ import annotations

import builtins
from typing import NoReturn


class MQueueError(Exception):
    """Base class of every error raised by mqueue."""


class ArgumentError(MQueueError, builtins.ValueError):
    """An argument has a value out of range (a negative timeout or count, a bad mode)."""


class ArgumentTypeError(MQueueError, builtins.TypeError):
    """An argument has the wrong type (a timeout that is not a number, ...)."""


class DefinitionError(MQueueError, builtins.ValueError):
    """A queue definition (modparam string or parameter) is malformed."""


class QueueNotFoundError(MQueueError, builtins.KeyError):
    """No queue of that name exists in the namespace."""

    def __str__(self) -> str:  # KeyError would show the repr of its argument
        return str(self.args[0]) if self.args else "unknown queue"


class NamespaceExistsError(MQueueError, builtins.FileExistsError):
    """``create`` found the namespace already there (or with other definitions)."""


class NamespaceNotFoundError(MQueueError, builtins.FileNotFoundError):
    """``attach`` (or ``destroy``) found no such namespace."""


class ItemTypeError(MQueueError, builtins.TypeError):
    """A key or value is neither ``str`` nor ``bytes``."""


class ItemTooLargeError(MQueueError, builtins.ValueError):
    """An item is larger than its queue's whole byte capacity."""


class QueueFullError(MQueueError):
    """A queue with no count bound has no room left in bytes; nothing was changed."""


class AccessDeniedError(MQueueError, builtins.PermissionError):
    """The namespace exists but this user may not open it."""


class CorruptSegmentError(MQueueError):
    """The shared segment is damaged, foreign, truncated or of another layout."""


class TooManyProcessesError(MQueueError):
    """Every liveness slot of the namespace is taken by a live process."""


class PersistenceError(MQueueError):
    """Loading or saving a queue to its database failed."""


class BackendError(MQueueError, builtins.ConnectionError):
    """A remote backend (Redis) could not be reached or failed mid-operation."""

    outcome_known: bool | None = None
    """True: the operation was certainly not applied; False: it may or may not have been."""


class NamespaceLostError(BackendError, NamespaceNotFoundError):
    """The namespace this handle was attached to is gone: destroyed (by
    :func:`mqueue.destroy`, ``mqueue destroy``, its file removed from
    ``/dev/shm``, possibly created again since under the same name) or, on
    Redis, its keys vanished (destroyed, recreated, or the server restarted
    without persistence).  Raised by the next call of every attached process
    (a blocked ``fetch`` included, within about 100 ms).  A BackendError
    (ConnectionError) and a NamespaceNotFoundError (FileNotFoundError):
    attach or create the namespace again."""


class NamespaceIncompleteError(MQueueError):
    """The namespace's segment exists but was never finished.

    ``creator_alive`` False: the process creating it died half-way (killed
    during ``create``); ``create(..., exist_ok=True)`` removes it and starts
    afresh, as does ``mqueue destroy`` (``mqueue.destroy``).  True: a live
    process is still creating it (e.g. reserving a very large segment) and
    did not finish within the wait; try again later."""

    def __init__(self, message: str, *, creator_alive: bool) -> None:
        super().__init__(message)
        self.creator_alive = creator_alive


class RPCError(MQueueError):
    """An RPC-style command failed; carries Kamailio's ``code`` and ``message``."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code} {self.message}"


def raise_for_code(rc: int, what: str, errno_value: int = 0) -> NoReturn:
    """Raise the exception that matches a negative C engine return code.

    ``what`` names the object the call was about (queue or namespace), so that
    messages say where things went wrong.  Must be called with ``rc < 0``.
    """
    from . import _lowlevel as ll  # deferred: keeps this module importable alone

    exc: MQueueError
    if rc == ll.MQ_ETOOBIG:
        exc = ItemTooLargeError(f"{what}: item is larger than the queue's byte capacity")
    elif rc == ll.MQ_EFULL:
        exc = QueueFullError(
            f"{what}: queue is full (no count bound and no room left in bytes); nothing added"
        )
    elif rc in (ll.MQ_ECORRUPT, ll.MQ_EVERSION, ll.MQ_EMAGIC):
        exc = CorruptSegmentError(f"{what}: {ll.strerror(rc)}")
    elif rc == ll.MQ_ELOST:
        exc = NamespaceLostError(
            f"{what}: the namespace was destroyed (mqueue.destroy, `mqueue destroy`, or its "
            "file removed from /dev/shm; it may have been created again since): "
            "attach or create it again"
        )
    elif rc == ll.MQ_EHALFMADE:
        exc = NamespaceIncompleteError(
            f"{what}: the namespace was left half-made by a creator that died; create it "
            "again with exist_ok=True, or remove it with `mqueue destroy`",
            creator_alive=False,
        )
    elif rc == ll.MQ_ESLOTS:
        exc = TooManyProcessesError(f"{what}: {ll.strerror(rc)}")
    elif rc == ll.MQ_ESYS:
        import os

        err = OSError(errno_value, os.strerror(errno_value))
        exc = MQueueError(f"{what}: system call failed: {err}")
    else:
        exc = MQueueError(f"{what}: {ll.strerror(rc)} (code {rc})")
    raise exc
