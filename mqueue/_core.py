"""The backend-independent public objects: Item, QueueStats, Queue, MQueue.

A backend (shared memory in :mod:`mqueue._shm`, Redis in :mod:`mqueue._redis`)
subclasses :class:`Queue` with the raw operations; everything that is the same
for every backend lives here: the per-process held item (Kamailio's
``$mqk``/``$mqv``), argument checks, timeouts, the namespace object and the
persistence hooks.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from ._defs import QueueDef
from ._errors import (
    ArgumentError,
    ArgumentTypeError,
    DefinitionError,
    ItemTypeError,
    MQueueError,
    QueueNotFoundError,
)

Data = str | bytes
"""A key or a value: ``str`` or ``bytes``, handed back as it was added."""

FLAG_KEY_STR = 1  # a record's flags: the key was a str (csrc/mq.h MQ_KEY_STR)
FLAG_VAL_STR = 2  # the value was a str (MQ_VAL_STR)

REC_HDR = 24
"""Bytes of capacity a record costs besides its key and value (csrc/mq.h
MQ_REC_HDR; the Redis backend counts capacity the same way)."""


def align8(n: int) -> int:
    """``n`` rounded up to a multiple of 8 (records and capacities are 8-aligned)."""
    return (n + 7) // 8 * 8


def record_size(klen: int, vlen: int) -> int:
    """Bytes of capacity one item takes: ``align8(24 + len(key) + len(value))``."""
    return align8(REC_HDR + klen + vlen)


def check_mode(mode: object) -> int:
    """Validate ``create``'s ``mode`` (file permission bits, 0..0o777) for every
    backend; ArgumentError (a ValueError) otherwise."""
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ArgumentError(f"mode must be an int in 0..0o777, not {mode!r}")
    return mode


def redact_url(url: str) -> str:
    """``url`` with the password of its authority part replaced by ``***``,
    for messages and logs (``<unparsable url>`` when it cannot be split)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "<unparsable url>"


class Item(NamedTuple):
    """One queued item: ``(key, value)``, each ``str`` or ``bytes`` as added."""

    key: Data
    value: Data


@dataclass(frozen=True)
class QueueStats:
    """A snapshot of one queue's counters (``Queue.stats()``).

    Every addmode keeps ``added == fetched + evicted + duplicates + length``;
    with addmode 0 ``duplicates`` is 0, so ``added == fetched + evicted + len(q)``.
    """

    name: str
    length: int
    """Queued items (items held by processes are not counted)."""
    added: int
    """Items accepted by ``add`` (including addmode-1 items dropped as duplicates)."""
    fetched: int
    """Items taken by ``fetch``/``fetch_many`` (and saved to a database)."""
    evicted: int
    """Items dropped as the oldest to make room (count bound or bytes)."""
    duplicates: int
    """Items dropped for a duplicate key: the new one (addmode 1) or the old (addmode 2)."""
    high_water: int
    """The largest length the queue ever reached."""
    recoveries: int
    """Times a process took over this queue's lock from a dead owner and repaired it."""
    bytes_used: int
    """Bytes of the queue's capacity in use (records, headers, replaced records)."""
    capacity: int
    """The queue's data capacity in bytes."""
    size_limit: int
    """The count bound (``size=``), 0 when unbounded."""
    addmode: int


def encode(x: object) -> tuple[bytes, bool]:
    """Return ``(bytes, is_str)`` for a key or value; raise ItemTypeError otherwise."""
    if isinstance(x, str):
        return x.encode("utf-8", "surrogatepass"), True
    if isinstance(x, bytes):
        return bytes(x), False
    raise ItemTypeError(f"keys and values must be str or bytes, not {type(x).__name__}")


def check_timeout(timeout: object) -> float:
    """Validate a fetch timeout (the one check of every backend and facade).

    Returns seconds: ``-1.0`` to wait forever (``None``, or 1e9 s and more:
    beyond 30 years), ``0.0`` not to wait, ``t > 0`` to wait up to t seconds.
    Raises ArgumentTypeError for a non-number, ArgumentError for a negative or
    NaN timeout.
    """
    if timeout is None:
        return -1.0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ArgumentTypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    try:
        t = float(timeout)
    except OverflowError:  # an int too large for a float: forever
        t = math.inf if timeout > 0 else -math.inf
    if math.isnan(t) or t < 0:
        raise ArgumentError(f"timeout must be >= 0 or None, not {timeout!r}")
    return -1.0 if t >= 1e9 else t


def deadline_after(timeout: float) -> int:
    """CLOCK_MONOTONIC deadline in ns for a :func:`check_timeout` result:
    0 = now, -1 = forever."""
    if timeout <= 0:
        return -1 if timeout < 0 else 0
    return time.monotonic_ns() + max(1, int(timeout * 1e9))


def check_count(n: object) -> int:
    """Validate fetch_many's ``n``."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise ArgumentTypeError(f"n must be an int, not {type(n).__name__}")
    if n < 0:
        raise ArgumentError(f"n must be >= 0, not {n}")
    return n


class Queue:
    """A handle on one named queue of a namespace (``mq["name"]``).

    ``key``/``value`` are this process's held item: the item its last
    :meth:`fetch` took (Kamailio's ``$mqk``/``$mqv``), ``None`` when none.
    Backends implement ``add``, ``add_many``, ``_take``, ``__len__`` and
    ``stats``; ``fetch`` and ``fetch_many`` check their arguments here and
    call ``_take`` (shared memory overrides ``fetch`` with an inline fast
    path that falls back on its ``_take``).
    """

    def __init_subclass__(cls, **kwargs: object) -> None:
        """A backend's queue class: the ``mqueue`` logger watches its counters
        (see :mod:`mqueue._log`; nothing on the add/fetch paths unless turned on)."""
        super().__init_subclass__(**kwargs)
        from . import _log

        _log.register(cls)

    def __init__(self, mq: MQueue, index: int, definition: QueueDef) -> None:
        self._mq = mq  # keeps the namespace (and its mapping) alive while we are
        self._index = index
        self.definition = definition
        self.name = definition.name
        self._held: Item | None = None
        # items a fetch took but could not hand over because an exception (a
        # signal handler's) cut it short: the next fetch of this handle returns
        # them.  Items, or a backend's records not decoded yet (_expand_kept).
        self._undelivered: list[Any] = []
        # how many entries at the end of _undelivered are records not decoded
        # yet (they are always a suffix: Items first)
        self._kept_raw = 0

    # -- held item (per process) -------------------------------------------
    @property
    def key(self) -> Data | None:
        """Key of the item this process fetched last (``$mqk``), or None."""
        return None if self._held is None else self._held.key

    @property
    def value(self) -> Data | None:
        """Value of the item this process fetched last (``$mqv``), or None."""
        return None if self._held is None else self._held.value

    @property
    def held(self) -> Item | None:
        """The held item as an :class:`Item`, or None."""
        return self._held

    def free(self) -> None:
        """Release the held item (Kamailio's ``mq_pv_free``)."""
        self._held = None

    # -- operations ---------------------------------------------------------
    def add(self, key: Data, value: Data) -> bool:
        """Append an item at the tail (``mq_add``).

        Returns True when stored, False only when addmode 1 dropped it because
        the key is already queued.  On a bounded queue the oldest items are
        dropped to make room.  Raises ItemTypeError (a TypeError) for a key or
        value that is neither str nor bytes, ItemTooLargeError (a ValueError)
        for an item larger than the queue's capacity, QueueFullError when a
        queue with no count bound has no room in bytes (nothing changes).
        """
        raise NotImplementedError

    def add_many(self, items: Iterable[tuple[Data, Data]]) -> int:
        """Append several ``(key, value)`` items in order, in one operation.

        Every item is checked first: a bad one raises and nothing is stored.
        Returns the number of items stored (addmode-1 drops are not counted).
        """
        raise NotImplementedError

    def _take(self, n: int, timeout: float) -> list[Item]:
        """Backend hook: take up to ``n`` (>= 1) oldest items, waiting up to
        ``timeout`` seconds (a :func:`check_timeout` result: -1 forever, 0 not
        at all) while the queue is empty; [] when it stays empty.  Items it
        took that an exception kept from the caller go to ``_undelivered``."""
        raise NotImplementedError

    def fetch(self, timeout: float | None = 0) -> Item | None:
        """Release the held item, then take the oldest item and hold it (``mq_fetch``).

        ``timeout=0`` returns at once, ``None`` waits forever, ``t > 0`` waits
        up to t seconds (no CPU used while waiting; signal handlers run, and
        Ctrl-C interrupts the wait).  Returns the :class:`Item`, or None when
        the queue is (still) empty; the held item is then cleared.
        """
        t = check_timeout(timeout)  # a refused call changes nothing
        if self._undelivered:
            kept = self._deliver()
            if kept is not None:
                return kept
        self._held = None
        items = self._take(1, t)
        if not items:
            return None
        self._held = items[0]
        return self._held

    def fetch_many(self, n: int, timeout: float | None = 0) -> list[Item]:
        """Take up to ``n`` oldest items at once, oldest first.

        Waits (as :meth:`fetch`) only while the queue is empty; returns an
        empty list when it stays empty.  Does not change the held item.
        """
        t = check_timeout(timeout)
        if check_count(n) == 0:
            return []
        if self._undelivered:
            out = self._deliver_many(n)
            if out:
                return out
        return self._take(n, t)

    # -- items kept by a call an exception cut short ---------------------------
    #
    # A signal handler may raise at any call boundary of the interpreter, also
    # right after the backend took items (they are then the caller's and
    # nobody else's).  Such items are kept in ``_undelivered`` and handed out
    # by the next fetch of this handle, oldest first.  Entries are Items, or
    # backend records not decoded yet (see ``_expand_kept``).  Every step that
    # moves items between "kept" and "handed out" is a sequence of bytecodes
    # without a call in it: CPython runs signal handlers (and switches
    # threads) only at calls, backward jumps and function entries, so an
    # exception cannot land between removing an item from the list and
    # returning it.

    def _expand_kept(self, upto: int) -> None:
        """Backend hook: decode the records kept at the end of
        ``_undelivered`` (``_kept_raw`` of them) until its first ``upto``
        entries are Items, in steps that each replace a record (or a part of
        it) by its Items at once (safe to repeat or to cut short)."""

    def _deliver(self) -> Item | None:
        """Hand out the oldest kept item as fetch's result (and the held item);
        None when there is none after all (a signal handler's fetch on this
        handle, run while this one decoded, handed them out)."""
        u = self._undelivered
        if self._kept_raw:
            self._expand_kept(1)
            if not u:
                return None
        item: Item = u[0]
        # no call from here to the return: the item leaves the list and is
        # returned as one step
        self._held = item
        del u[0]
        return item

    def _deliver_many(self, n: int) -> list[Item]:
        """Hand out up to n kept items as fetch_many's result."""
        u = self._undelivered
        if self._kept_raw:
            self._expand_kept(n)
        out = u[:n]
        del u[:n]  # no call between the copy and the removal
        return out

    def __len__(self) -> int:
        """Number of queued items (items held by processes are not counted)."""
        raise NotImplementedError

    def stats(self) -> QueueStats:
        """A snapshot of the queue's counters; changes nothing."""
        raise NotImplementedError

    def __repr__(self) -> str:
        ns = self._mq.namespace
        return f"<mqueue.Queue {self.name!r} of {ns!r} ({self.definition.to_modparam()})>"

    def __reduce__(self) -> tuple[Callable[[QueueMap[Queue], str], Queue], tuple[MQueue, str]]:
        """Pickle as "this queue of that namespace": the namespace handle
        pickles as an attach by name (see :meth:`MQueue.__reduce__`), so the
        receiving process gets its own handle with no held item.  Handles
        pickled together share one namespace handle on the other side."""
        return (_queue_of, (self._mq, self.name))


_Q = TypeVar("_Q")


class QueueMap(Generic[_Q]):
    """Access by name to a namespace handle's queues (``_queues``, in definition
    order): shared by the sync :class:`MQueue` and the asyncio one."""

    namespace: str
    _queues: dict[str, _Q]

    def __getitem__(self, name: str) -> _Q:
        try:
            return self._queues[name]
        except (KeyError, TypeError):
            raise QueueNotFoundError(
                f"no queue named {name!r} in namespace {self.namespace!r}"
            ) from None

    def get(self, name: str) -> _Q | None:
        """The queue of that name, or None."""
        return self._queues.get(name) if isinstance(name, str) else None

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._queues

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._queues))

    def __len__(self) -> int:
        return len(self._queues)

    def queues(self) -> list[_Q]:
        """The queue handles, in definition order."""
        return list(self._queues.values())


class MQueue(QueueMap[Queue]):
    """A namespace of named queues, as returned by ``create`` / ``attach``.

    ``mq["name"]`` gives a :class:`Queue` (KeyError kind for an unknown name);
    ``"name" in mq``; ``list(mq)`` lists the queue names in definition order.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        namespace: str,
        definitions: Sequence[QueueDef],
        make_queue: Callable[[MQueue, int, QueueDef], Queue],
        *,
        url: str | None = None,
        db_url: str | None = None,
        creator: bool = False,
    ) -> None:
        self.namespace = namespace
        self.url = url
        self.db_url = db_url
        self.definitions: list[QueueDef] = list(definitions)
        self._creator_pid = os.getpid() if creator else None
        self._closed = False
        # (kind, message, pid) when a forked child could not re-establish it
        self._unusable: tuple[type[MQueueError], str, int] | None = None
        self._queues: dict[str, Queue] = {}
        for i, d in enumerate(self.definitions):
            self._queues[d.name] = make_queue(self, i, d)
        # Registered for the fork hook last: a subclass sets up everything the
        # hook uses (shared memory: its finalizer) before calling this.
        _register(self)

    @property
    def is_creator(self) -> bool:
        """True in the process that created the namespace (not in its forked children)."""
        return self._creator_pid == os.getpid()

    @property
    def closed(self) -> bool:
        return self._closed

    def sizes(self) -> dict[str, int]:
        """``{name: number of queued items}`` for every queue; changes nothing."""
        return {name: len(q) for name, q in self._queues.items()}

    def close(self) -> None:
        """Detach from the namespace.  Idempotent.

        In the creating process (Kamailio's main process), queues with dbmode
        1 or 3 are first saved to ``db_url``.  Another process's close, or a
        forked child's, never saves.  The queues stay in place for the other
        processes; :func:`mqueue.destroy` removes them for good.
        """
        if self._closed:
            if self._unusable is not None and self._unusable[2] == os.getpid():
                self._unusable = None  # closed on purpose now: "closed" from here on
            return
        try:
            if (
                self.is_creator
                and self.db_url
                and any(d.dbmode in (1, 3) for d in self.definitions)
            ):
                from . import _persist

                _persist.save_queues(self, self.db_url)
        finally:
            self._closed = True
            # released before it leaves the registry: a fork in between finds
            # it registered and closed, and the child's hook releases its copy
            self._release()
            self._unregister()

    def _unregister(self) -> None:
        """No more fork handling for this handle."""
        with _live_lock:
            _live.pop(id(self), None)

    def _release(self) -> None:
        """Backend hook: free what the handle holds (no saving)."""

    def _after_fork_in_child(self) -> None:
        """Runs in a forked child for every registered handle: the child is
        not the creator, and the items the parent held or had taken are the
        parent's.  A handle the parent had closed (or was closing) is
        released here too, so that the child keeps nothing of it."""
        self._creator_pid = None
        for q in self._queues.values():
            q._held = None
            q._undelivered = []
            q._kept_raw = 0
        if self._closed:
            self._release()
            _live.pop(id(self), None)
            return
        self._reattach_in_child()

    def _mark_unusable(self, cause: BaseException) -> None:
        """In a forked child: the handle could not be re-established.  It is
        closed here (the parent's own handle is untouched), and every later
        use raises an error of ``cause``'s kind (MQueueError for others)
        saying so.  Never raises."""
        kind = type(cause) if isinstance(cause, MQueueError) else MQueueError
        why = f"{type(cause).__name__}: {cause}" if not isinstance(cause, MQueueError) else cause
        msg = (
            f"namespace {self.namespace!r}: this handle was inherited through fork() and "
            f"could not be re-established in process {os.getpid()} ({why}); "
            "attach the namespace again in this process"
        )
        self._unusable = (kind, msg, os.getpid())
        self._creator_pid = None
        self._closed = True
        _live.pop(id(self), None)
        with contextlib.suppress(BaseException):  # nothing more can be done here
            self._release()

    def _closed_error(self, default: MQueueError) -> MQueueError:
        """The error for a use of this closed handle: ``default``, or the one
        that says why a forked child could not re-establish it."""
        u = self._unusable
        if u is not None and u[2] == os.getpid():
            return u[0](u[1])
        return default

    def _reattach_in_child(self) -> None:
        """Backend hook: whatever a forked child needs of its own (shared
        memory: its own liveness slot; Redis: nothing, redis-py reconnects)."""

    def _abandon(self) -> None:
        """Detach without saving (used when creation fails)."""
        self._creator_pid = None
        self.close()

    def __enter__(self) -> MQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Callable[[str, str | None], MQueue], tuple[str, str | None]]:
        """Pickle as "attach to this namespace by name" (for ``spawn`` and
        ``forkserver`` children, ``ProcessPoolExecutor``): the receiving
        process attaches with :func:`mqueue.attach` (same ``url``), so it has
        its own liveness slot, no held items, and is never the creator (its
        close does not save).  A closed handle raises MQueueError."""
        if self._closed:
            raise MQueueError(
                f"namespace {self.namespace!r}: a closed handle cannot be passed to a process"
            )
        return (_attach_by_name, (self.namespace, self.url))

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._queues)} queues"
        where = self.url or "shm"
        return f"<mqueue.MQueue {self.namespace!r} ({where}, {state})>"


# The registry of handles a forked child must re-establish: id -> weak
# reference.  A handle is added once it is complete and removed once it is
# released.  The lock is held around every change, and by the fork itself
# (``before`` hook), so that a child never inherits it held by a thread that
# does not exist there, nor a registry changed half-way; the child gets a lock
# of its own.  (The same pattern as CPython's own locks at fork.)
_live: dict[int, weakref.ref[MQueue]] = {}
_live_lock = threading.RLock()


def _register(h: MQueue) -> None:
    key = id(h)

    def gone(_: object, key: int = key) -> None:  # the handle was collected
        with _live_lock:
            r = _live.get(key)
            if r is not None and r() is None:
                del _live[key]

    with _live_lock:
        _live[key] = weakref.ref(h, gone)


def _before_fork() -> None:
    _live_lock.acquire()


def _after_fork_in_parent() -> None:
    _live_lock.release()


def _after_fork_in_child() -> None:
    """Re-establish every inherited handle, each on its own: one that fails
    is marked unusable (its next use says why) and the others go on."""
    global _live_lock
    _live_lock = threading.RLock()  # whoever held the parent's does not exist here
    for r in list(_live.values()):
        h = r()
        if h is None:
            continue
        try:
            h._after_fork_in_child()
        except BaseException as e:  # noqa: BLE001 - never stop at one handle
            with contextlib.suppress(BaseException):
                h._mark_unusable(e)


os.register_at_fork(
    before=_before_fork,
    after_in_parent=_after_fork_in_parent,
    after_in_child=_after_fork_in_child,
)


def check_namespace(namespace: object) -> str:
    """Validate a namespace name: non-empty str, at most 200 UTF-8 bytes, no '/' or NUL."""
    if not isinstance(namespace, str):
        raise DefinitionError(f"namespace must be a str, not {type(namespace).__name__}")
    if not namespace:
        raise DefinitionError("namespace must not be empty")
    if "/" in namespace or "\0" in namespace:
        raise DefinitionError(f"namespace {namespace!r} must not contain '/' or NUL")
    try:
        raw = namespace.encode("utf-8")
    except UnicodeEncodeError:
        raise DefinitionError(f"namespace {namespace!r} is not valid UTF-8 text") from None
    if len(raw) > 200:
        raise DefinitionError(f"namespace {namespace[:40]!r}... is longer than 200 bytes")
    if namespace in (".", ".."):
        raise DefinitionError(f"namespace {namespace!r} is not a usable name")
    return namespace


def _attach_by_name(namespace: str, url: str | None) -> MQueue:
    """Unpickling an :class:`MQueue`: attach to the namespace by name."""
    import mqueue

    return mqueue.attach(namespace, url=url)


def _queue_of(mq: QueueMap[_Q], name: str) -> _Q:
    """Unpickling a queue handle (sync or asyncio): the queue of that name of
    an attached namespace."""
    return mq[name]


__all__ = [
    "Data",
    "Item",
    "MQueue",
    "MQueueError",
    "Queue",
    "QueueStats",
    "REC_HDR",
    "align8",
    "check_count",
    "check_mode",
    "check_namespace",
    "check_timeout",
    "deadline_after",
    "encode",
    "record_size",
    "redact_url",
]
