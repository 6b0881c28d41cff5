"""mqueue for asyncio: the same queues, awaitable (``import mqueue.asyncio as amq``).

::

    mq = await amq.create("ns", ["name=calls;size=1000"])   # arguments as mqueue.create
    mq = await amq.attach("ns")                              # arguments as mqueue.attach
    async with await amq.attach("ns") as mq: ...             # closes on exit
    q = mq["calls"]
    await q.add(key, value)            -> bool
    await q.add_many(items)            -> int
    await q.fetch(timeout=0)           -> Item | None
    await q.fetch_many(n, timeout=0)   -> list[Item]
    async for item in q: ...           # each next item, until cancelled or closed
    q.key, q.value, q.free()           # the held item, as in the sync API
    await q.size(), await q.stats(), await mq.sizes(), await mq.close()

Semantics, return values and exceptions are those of the sync API
(docs/SPEC.md, docs/API.md); only waiting differs.

Shared memory: operations that do not wait run inline on the loop (one engine
call, microseconds under the queue's lock).  A fetch with a timeout first
looks at once; only when the queue is empty does it wait, without a thread of
its own and without polling: on Linux 6.7+ the loop's io_uring holds a futex
wait on each watched queue and the kernel wakes the loop, no thread at all;
elsewhere one notifier thread per process (per 127 queues with waiting tasks)
sleeps on every watched queue at once with ``futex_waitv`` and wakes the loop
through an eventfd (see :mod:`mqueue._aio_notify`).

Redis: redis-py's asyncio client running the sync backend's scripts, with
its operation ids and retries (:mod:`mqueue._aio_redis`); no thread.  The
tasks of a handle waiting on one queue line up, and one at a time waits on
the server (``BLPOP``), so waiting costs a connection per queue, not per task.

Cancellation never loses an item: a cancelled fetch either took nothing, or
the items it took are returned by the handle's next fetch (the mechanism the
sync API uses for signal handlers).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

from . import DEFAULT_MODE
from . import _aio_notify as _an
from . import _aio_redis as _ar
from ._core import Data, Item, QueueMap, QueueStats, _queue_of, check_count
from ._core import MQueue as _SyncMQueue
from ._core import Queue as _SyncQueue
from ._defs import QueueDef
from ._errors import ArgumentError, ArgumentTypeError, MQueueError

T = TypeVar("T")

REDIS_POOL_SIZE = _ar.POOL_SIZE
"""Redis: connections per server (per cluster node) that the operations of
one handle share (set ``mqueue._aio_redis.POOL_SIZE`` to change it); a queue
with waiting tasks holds one more while they wait."""


def _check_timeout(timeout: object) -> float | None:
    """Seconds to wait: None forever, 0 not at all; the sync API's errors."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ArgumentTypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    try:
        t = float(timeout)
    except OverflowError:  # an int too large for a float: forever
        if timeout > 0:
            return None
        t = -1.0
    if math.isnan(t) or t < 0:
        raise ArgumentError(f"timeout must be >= 0 or None, not {timeout!r}")
    return None if t >= 1e9 else t


class Queue:
    """An awaitable handle on one queue (``mq["name"]`` of an :class:`MQueue`).

    ``key``/``value``/``held``/``free()`` are the handle's held item, as in the
    sync :class:`mqueue.Queue` (the item its last fetch took); they are shared
    by every task using this handle.
    """

    def __init__(self, amq: MQueue, sync: _SyncQueue) -> None:
        self._amq = amq
        self.sync = sync
        """The sync :class:`mqueue.Queue` this handle wraps (same held item)."""
        self.name = sync.name
        self.definition: QueueDef = sync.definition

    def __reduce__(self) -> tuple[Callable[[QueueMap[Queue], str], Queue], tuple[MQueue, str]]:
        """Pickle as "this queue of that namespace", as the sync handle does
        (see :meth:`MQueue.__reduce__`): no held item on the other side."""
        return (_queue_of, (self._amq, self.name))

    # -- held item ------------------------------------------------------------
    @property
    def key(self) -> Data | None:
        """Key of the item this handle fetched last (``$mqk``), or None."""
        return self.sync.key

    @property
    def value(self) -> Data | None:
        """Value of the item this handle fetched last (``$mqv``), or None."""
        return self.sync.value

    @property
    def held(self) -> Item | None:
        """The held item, or None."""
        return self.sync.held

    def free(self) -> None:
        """Release the held item (``mq_pv_free``)."""
        self.sync.free()

    # -- operations ------------------------------------------------------------
    async def add(self, key: Data, value: Data) -> bool:
        """Append an item (see :meth:`mqueue.Queue.add`): True when stored,
        False when addmode 1 dropped it."""
        raise NotImplementedError

    async def add_many(self, items: Iterable[tuple[Data, Data]]) -> int:
        """Append several items in one operation (see :meth:`mqueue.Queue.add_many`)."""
        raise NotImplementedError

    async def fetch(self, timeout: float | None = 0) -> Item | None:
        """Release the held item, then take the oldest item and hold it.

        ``timeout=0`` looks once, ``None`` waits forever, ``t > 0`` up to t
        seconds; the loop keeps running meanwhile.  Returns the Item, or None
        when the queue stayed empty (the held item is then cleared).  A
        cancelled fetch took nothing, or its item goes to the handle's next
        fetch.
        """
        raise NotImplementedError

    async def fetch_many(self, n: int, timeout: float | None = 0) -> list[Item]:
        """Take up to ``n`` oldest items, waiting (as :meth:`fetch`) only while
        the queue is empty; does not change the held item."""
        raise NotImplementedError

    async def size(self) -> int:
        """Number of queued items (held ones not counted); changes nothing."""
        raise NotImplementedError

    async def stats(self) -> QueueStats:
        """A snapshot of the queue's counters; changes nothing."""
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[Item]:
        """``async for item in q``: each next item (held, as fetch holds it),
        waiting as long as it takes; ends when the namespace is closed."""
        return _Items(self)

    def __repr__(self) -> str:
        return f"<mqueue.asyncio.Queue {self.name!r} of {self._amq.namespace!r}>"


class _Items:
    __slots__ = ("_q",)

    def __init__(self, q: Queue) -> None:
        self._q = q

    def __aiter__(self) -> _Items:
        return self

    async def __anext__(self) -> Item:
        if self._q._amq.closed:
            raise StopAsyncIteration
        try:
            item = await self._q.fetch(None)
        except MQueueError:
            if self._q._amq.closed:
                raise StopAsyncIteration from None
            raise
        if item is None:  # only when closed meanwhile
            raise StopAsyncIteration
        return item


# ------------------------------------------------------------- shared memory
YIELD_EVERY_S = 0.0005
"""An operation that completes at once does not suspend its task, so tasks
that keep finding items would never let the loop run.  An inline operation
first yields to the loop (``asyncio.sleep(0)``, before it does anything, so a
cancellation there takes nothing) once the loop's current turn has run this
long without mqueue yielding."""

_clock = time.monotonic


class _Budget(threading.local):
    since = 0.0  # when the loop's current turn began (as far as mqueue can tell)
    pending = False  # a _new_turn callback is scheduled


_budget = _Budget()


def _new_turn() -> None:
    # runs in the loop's next iteration, after the tasks that yielded before it
    _budget.since = _clock()
    _budget.pending = False


async def _yield() -> None:
    # until a new turn began: the tasks that resume before _new_turn ran
    # give way again instead of each doing one more operation
    while _clock() - _budget.since > YIELD_EVERY_S:
        if not _budget.pending:
            _budget.pending = True
            asyncio.get_running_loop().call_soon(_new_turn)
        await asyncio.sleep(0)


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class _ShmQueue(Queue):
    """Shared memory: inline engine calls, waits through the notifier."""

    _seqbuf: Any = None

    async def add(self, key: Data, value: Data) -> bool:
        if _clock() - _budget.since > YIELD_EVERY_S:
            await _yield()
        return self.sync.add(key, value)

    async def add_many(self, items: Iterable[tuple[Data, Data]]) -> int:
        if _clock() - _budget.since > YIELD_EVERY_S:
            await _yield()
        return self.sync.add_many(items)

    async def size(self) -> int:
        if _clock() - _budget.since > YIELD_EVERY_S:
            await _yield()
        return len(self.sync)

    async def stats(self) -> QueueStats:
        if _clock() - _budget.since > YIELD_EVERY_S:
            await _yield()
        return self.sync.stats()

    async def fetch(self, timeout: float | None = 0) -> Item | None:
        t = _check_timeout(timeout)
        if _clock() - _budget.since > YIELD_EVERY_S:
            await _yield()  # before anything is taken: a cancellation here takes nothing
        item = self.sync.fetch(0)  # releases the held item; the fast path
        if item is not None or t == 0:
            return item
        items = await self._wait_take(1, t)
        if not items:
            self.sync._held = None
            return None
        self.sync._held = items[0]
        return items[0]

    async def fetch_many(self, n: int, timeout: float | None = 0) -> list[Item]:
        t = _check_timeout(timeout)
        if check_count(n) == 0:
            return []
        if _clock() - _budget.since > YIELD_EVERY_S:
            await _yield()
        items = self.sync.fetch_many(n, 0)
        if items or t == 0:
            return items
        return await self._wait_take(n, t)

    def _seq(self) -> int:
        out = self._seqbuf
        if out is None:
            out = self._seqbuf = _an.ffi.new("uint32_t *")
        rc = int(_an.lib.mq_seq(self.sync._ns, self.sync._index, out))  # type: ignore[attr-defined]
        if rc < 0:
            raise self.sync._fail(rc)  # type: ignore[attr-defined]
        return int(out[0])

    async def _wait_take(self, n: int, timeout: float | None) -> list[Item]:
        """Take up to n items, waiting up to ``timeout`` seconds (None:
        forever) while the queue is empty.  Returns [] at the deadline.

        No lost wake-up: a watch is armed only with a ``seq`` value read
        before the last look found the queue empty (any add published after
        that read moved it, and the watch then fires at once)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        sq = self.sync
        lw = _an.loop_waiters(loop)
        qw = lw.queue(sq)

        def take() -> list[Item]:
            if n == 1:
                held = sq._held  # another task's item: an empty look must not clear it
                it = sq.fetch(0)  # the fast path; sets the held item, as fetch does at the end
                if it is None:
                    sq._held = held
                    return []
                return [it]
            return sq.fetch_many(n, 0)

        kicked = False  # this task holds a wake-up meant for the queue's waiters
        got = False
        seq: int | None = self._seq()  # read before the next look
        try:
            while True:
                items = take()
                if items:
                    got = True
                    return items
                if deadline is not None and loop.time() >= deadline:
                    return []
                if seq is None:  # woken: that look had no seq read before it
                    seq = self._seq()
                    continue
                try:
                    armed = qw.arm(seq)
                except _an._EngineError as e:
                    raise sq._fail(e.rc) from None  # type: ignore[attr-defined]
                if not armed:  # seq moved since we read it: read it again, look again
                    seq = self._seq()
                    continue
                kicked = False  # the watch now covers everyone waiting
                fut: asyncio.Future[bool] = loop.create_future()
                qw.add(fut)
                timer = None if deadline is None else loop.call_at(deadline, _expire, fut)
                try:
                    await fut
                finally:
                    if timer is not None:
                        timer.cancel()
                    kicked = fut.done() and not fut.cancelled() and fut.result() is True
                    if not kicked:
                        qw.left()
                seq = None
        finally:
            if kicked:
                # pass the wake-up on: after taking items (more may be queued),
                # or unused (cancelled, timed out, failed)
                qw.wake_next(outside=not got)
            lw.idle(qw)


class MQueue(QueueMap[Queue]):
    """An awaitable namespace handle (from :func:`create` / :func:`attach`).

    ``mq["name"]`` gives a :class:`Queue` (KeyError kind for an unknown name),
    ``"name" in mq``, ``list(mq)``; ``async with`` closes it on exit.
    """

    def __init__(self, sync: _SyncMQueue, make: Callable[[MQueue, _SyncQueue], Queue]) -> None:
        self.sync = sync
        """The sync :class:`mqueue.MQueue` this handle wraps."""
        self.namespace = sync.namespace
        self.url = sync.url
        self._queues = {q.name: make(self, q) for q in sync.queues()}

    @property
    def closed(self) -> bool:
        return self.sync.closed

    @property
    def is_creator(self) -> bool:
        """True in the process that created the namespace."""
        return self.sync.is_creator

    @property
    def definitions(self) -> list[QueueDef]:
        return self.sync.definitions

    async def sizes(self) -> dict[str, int]:
        """``{name: number of queued items}``; changes nothing."""
        raise NotImplementedError

    async def close(self) -> None:
        """Detach (see :meth:`mqueue.MQueue.close`; the creator saves dbmode
        1/3 queues).  Tasks waiting in a fetch on this handle get the closed
        handle's MQueueError; ``async for`` loops end.  Idempotent."""
        raise NotImplementedError

    async def __aenter__(self) -> MQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __reduce__(self) -> tuple[Callable[[_SyncMQueue], MQueue], tuple[_SyncMQueue]]:
        """Pickle as "attach to this namespace by name", as the sync handle
        does (:meth:`mqueue.MQueue.__reduce__`, whose attach runs while
        unpickling): the receiving process gets an asyncio handle of its own,
        with its own Redis client and connections, made on first use.  A
        closed handle raises MQueueError."""
        return (_wrap, (self.sync,))

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._queues)} queues"
        return f"<mqueue.asyncio.MQueue {self.namespace!r} ({self.url or 'shm'}, {state})>"


class _ShmMQueue(MQueue):
    async def sizes(self) -> dict[str, int]:
        if _clock() - _budget.since > YIELD_EVERY_S:
            await _yield()
        return self.sync.sizes()

    async def close(self) -> None:
        if self.sync.closed:
            return
        ns = self.sync._ns  # type: ignore[attr-defined]
        # watches keep the mapping in flight: fire them first (their tasks
        # look again and find the handle closed), so close never waits
        _an.registry().forget_ns(ns)
        if self.sync.db_url and self.sync.is_creator:
            await _in_thread(self.sync.close)  # saves to a database
        else:
            self.sync.close()


# ------------------------------------------------------------------- Redis
async def _in_thread(fn: Callable[[], T], on_lost: Callable[[T], None] | None = None) -> T:
    """Run a one-off blocking call (create, attach, destroy, a creator's close
    that saves to a database) in the loop's default executor; when the
    awaiting task is cancelled, fn still completes and ``on_lost`` gets its
    result."""
    cf = asyncio.get_running_loop().run_in_executor(None, fn)
    try:
        return await asyncio.shield(cf)
    except asyncio.CancelledError:
        if on_lost is not None:

            def salvage(f: asyncio.Future[T]) -> None:
                if not f.cancelled() and f.exception() is None:
                    on_lost(f.result())

            cf.add_done_callback(salvage)
        raise


class _RedisQueue(Queue):
    """Redis: redis.asyncio, the sync backend's scripts (see mqueue._aio_redis)."""

    def __init__(self, amq: MQueue, sync: _SyncQueue) -> None:
        super().__init__(amq, sync)
        assert isinstance(amq, _RedisMQueue)
        self._ops = _ar.Ops(amq._link, sync)

    async def add(self, key: Data, value: Data) -> bool:
        return await self._ops.add(key, value)

    async def add_many(self, items: Iterable[tuple[Data, Data]]) -> int:
        return await self._ops.add_many(items)

    async def size(self) -> int:
        return await self._ops.size()

    async def stats(self) -> QueueStats:
        return await self._ops.stats()

    async def fetch(self, timeout: float | None = 0) -> Item | None:
        t = _check_timeout(timeout)
        self.sync._held = None
        items = await self._ops.take(1, t)
        self.sync._held = items[0] if items else None
        return self.sync._held

    async def fetch_many(self, n: int, timeout: float | None = 0) -> list[Item]:
        t = _check_timeout(timeout)
        if check_count(n) == 0:
            return []
        return await self._ops.take(n, t)


class _RedisMQueue(MQueue):
    def __init__(self, sync: _SyncMQueue) -> None:
        self._link = _ar.RedisLink(sync)
        super().__init__(sync, _RedisQueue)

    async def sizes(self) -> dict[str, int]:
        out = {}
        for name, q in self._queues.items():
            out[name] = await q.size()
        return out

    async def close(self) -> None:
        if self.sync.closed:
            return
        await self._link.close()  # waiting fetches get the closed error
        if self.sync.db_url and self.sync.is_creator:
            await _in_thread(self.sync.close)  # saves to a database
        else:
            self.sync.close()


# ------------------------------------------------------------------- entry
def _wrap(sync: _SyncMQueue) -> MQueue:
    if sync.url is None:
        return _ShmMQueue(sync, _ShmQueue)
    return _RedisMQueue(sync)


async def create(
    namespace: str,
    definitions: Iterable[str | QueueDef],
    *,
    db_url: str | None = None,
    mode: int = DEFAULT_MODE,
    exist_ok: bool = False,
    url: str | None = None,
) -> MQueue:
    """:func:`mqueue.create`, awaitable.  Shared memory without ``db_url``
    runs inline; with a database or on Redis it runs once in the
    loop's default executor (a thread of asyncio's own)."""
    import mqueue

    definitions = list(definitions)

    def make() -> _SyncMQueue:
        return mqueue.create(
            namespace, definitions, db_url=db_url, mode=mode, exist_ok=exist_ok, url=url
        )

    if url is None and db_url is None:
        return _wrap(make())
    return _wrap(await _in_thread(make, _close_lost))


async def attach(namespace: str, *, url: str | None = None) -> MQueue:
    """:func:`mqueue.attach`, awaitable (shared memory inline, Redis once in the
    loop's default executor)."""
    import mqueue

    if url is None:
        return _wrap(mqueue.attach(namespace))
    return _wrap(await _in_thread(lambda: mqueue.attach(namespace, url=url), _close_lost))


async def destroy(namespace: str, *, url: str | None = None) -> None:
    """:func:`mqueue.destroy`, awaitable."""
    import mqueue

    if url is None:
        mqueue.destroy(namespace)
    else:
        await _in_thread(lambda: mqueue.destroy(namespace, url=url))


def _close_lost(mq: _SyncMQueue) -> None:
    # a handle whose create/attach was cancelled: nobody will close it
    mq.close()


def notifier_threads() -> int:
    """Notifier threads this process runs now for shared-memory waits
    (diagnostics; 0 while loops wait through io_uring)."""
    return _an.registry().threads()


__all__ = [
    "REDIS_POOL_SIZE",
    "YIELD_EVERY_S",
    "MQueue",
    "Queue",
    "attach",
    "create",
    "destroy",
    "notifier_threads",
]
