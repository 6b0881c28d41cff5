"""The exception classes (only them: the C engine's codes are mapped to them
by the table in :mod:`mqueue._lowlevel`).

Every exception derives from :class:`MQueueError` and, where one fits, from the
builtin a caller would naturally catch (``ValueError``, ``KeyError``, ...), in
the style of pynacl.
"""

from __future__ import annotations

import builtins


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
