"""Waiting for shared-memory queues inside an event loop (for :mod:`mqueue.asyncio`).

No thread per waiter, no polling.  A fetch that finds its queue empty reads the
queue's ``seq`` word first, looks again, and then *arms a watch*: "write to this
loop's eventfd when ``seq`` is no longer that value".  Watches live in the C
engine's waitsets (``mq_ws_*`` in csrc/mq.c); one notifier thread per waitset
sleeps in ``futex_waitv`` on every watched queue at once (up to
``MQ_WS_MAX`` = 127 queues per thread, Linux 5.16+), counted as a waiter of each
queue exactly as a blocked sync fetch is, so an add wakes it.  The thread runs
in C without the GIL; the loop is woken through its eventfd and hands the
wake-up to one waiting task, which passes it on when it found an item (there
may be more) or when it leaves without using it.

Threads: one per 127 watched queues.  Without ``futex_waitv`` (kernels before
5.16, or ``MQUEUE_AIO_NO_WAITV=1``) a waitset holds one queue: one thread per
queue that has waiting tasks at the same moment (still not per waiter).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import itertools
import os
import threading
import weakref
from typing import Any

from . import _lowlevel as ll

ffi, lib = ll.ffi, ll.lib

_COLLECT = 64


def _waitv_wanted() -> bool:
    if os.environ.get("MQUEUE_AIO_NO_WAITV", "") not in ("", "0"):
        return False
    return bool(lib.mq_ws_waitv_supported())


class _Notifier:
    """One C waitset and the thread that runs its notifier loop."""

    def __init__(self, use_waitv: bool) -> None:
        ws = lib.mq_ws_new(1 if use_waitv else 0)
        if ws == ffi.NULL:
            raise MemoryError("mqueue.asyncio: cannot allocate a waitset")
        self.ws = ws
        self.use_waitv = use_waitv
        self.rc = 0
        self.done = False
        self.thread = threading.Thread(target=self._run, name="mqueue-aio-notifier", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # cffi releases the GIL for the whole call: the thread never holds it
        # while it waits, and only for this line when it ends
        self.rc = int(lib.mq_ws_run(self.ws))
        self.done = True

    def stop(self) -> None:
        """End the thread (its armed watches fire).  The waitset itself is
        kept (a few KB): loops may still name it when they disarm."""
        lib.mq_ws_stop(self.ws)
        self.thread.join(timeout=2.0)


class _Registry:
    """The process's notifiers (a fixed few threads, created on demand)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.notifiers: list[_Notifier] = []
        self.wslist: tuple[Any, ...] = ()  # the waitsets, replaced (not changed) when one is added
        self.use_waitv = _waitv_wanted()

    def watch(
        self, ns: Any, index: int, seq0: int, efd: int, cookie: int
    ) -> tuple[Any, int] | None:
        """Arm a watch; returns (waitset, slot), or None when ``seq`` moved
        since ``seq0`` was read (look at the queue again).  Raises the
        engine's error (closed handle ...) as a negative code in MQueueError."""
        with self.lock:
            for n in self.notifiers:
                if n.done:
                    continue
                rc = int(lib.mq_ws_watch(n.ws, ns, index, seq0, efd, cookie))
                if rc >= 0:
                    return n.ws, rc
                if rc == lib.MQ_EAGAIN:
                    return None
                if rc != lib.MQ_ESLOTS:
                    raise _EngineError(rc)
            if any(n.done and n.rc < 0 for n in self.notifiers):
                self.use_waitv = False  # futex_waitv refused at run time: one queue per thread
            n = _Notifier(self.use_waitv)
            self.notifiers.append(n)
            self.wslist = (*self.wslist, n.ws)
            rc = int(lib.mq_ws_watch(n.ws, ns, index, seq0, efd, cookie))
            if rc >= 0:
                return n.ws, rc
            if rc == lib.MQ_EAGAIN:
                return None
            raise _EngineError(rc)

    def waitsets(self) -> list[Any]:
        with self.lock:
            return [n.ws for n in self.notifiers]

    def forget_ns(self, ns: Any) -> None:
        """Fire every watch on ``ns`` (before it is closed: nothing keeps it in flight)."""
        for ws in self.waitsets():
            lib.mq_ws_forget_ns(ws, ns)

    def threads(self) -> int:
        with self.lock:
            return sum(1 for n in self.notifiers if n.thread.is_alive())

    def stop_all(self) -> None:
        with self.lock:
            ns = self.notifiers  # kept listed: loops may still collect fired watches
        for n in ns:
            n.stop()


class _EngineError(Exception):
    def __init__(self, rc: int) -> None:
        super().__init__(rc)
        self.rc = rc


_registry = _Registry()
_cookies = itertools.count(1)


def registry() -> _Registry:
    return _registry


class QueueWaiters:
    """The tasks of one event loop waiting on one shared-memory queue.

    At most one watch is armed for them.  When it fires, one task is woken
    (it holds "the baton"); it passes the baton on when it took items (there
    may be more) or leaves without using it (cancelled, timed out, failed),
    and re-arms the watch when it found the queue empty again.
    """

    __slots__ = ("lw", "sq", "waiters", "pending", "armed")

    def __init__(self, lw: LoopWaiters, sq: Any) -> None:
        self.lw = lw
        # the sync queue handle, not its raw engine pointer: after close its
        # ``_ns`` is NULL (calls then fail cleanly) and the handle struct is
        # never freed under us
        self.sq = sq
        self.waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self.pending = 0  # futures in `waiters` not yet resolved
        self.armed: tuple[Any, int, int] | None = None  # (waitset, slot, cookie)

    def arm(self, seq0: int) -> bool:
        """Make sure a watch covers the waiters; False when seq moved (look again)."""
        if self.armed is not None:
            # a watch armed by another waiter with the value then current:
            # every change since fires it, and a change before it was seen
            # by that waiter's own look at the queue
            return True
        cookie = next(_cookies)
        got = _registry.watch(self.sq._ns, self.sq._index, seq0, self.lw.efd, cookie)
        if got is None:
            return False
        self.armed = (got[0], got[1], cookie)
        self.lw.watches[cookie] = self
        return True

    def add(self, fut: asyncio.Future[bool]) -> None:
        self.waiters.append(fut)
        self.pending += 1

    def left(self) -> None:
        """A waiter left without having been woken (timeout, cancellation)."""
        self.pending -= 1
        if self.pending <= 0:
            self.pending = 0
            self.waiters.clear()
            self.disarm()

    def disarm(self) -> None:
        if self.armed is not None:
            ws, slot, cookie = self.armed
            self.armed = None
            self.lw.watches.pop(cookie, None)
            lib.mq_ws_unwatch(ws, slot, cookie)

    def wake_next(self, *, outside: bool) -> None:
        """Hand a wake-up to the next waiting task; with none, when ``outside``,
        to a waiter of another process (the wake-up this process absorbed may
        have been the only one for an item still queued)."""
        while self.waiters:
            f = self.waiters.popleft()
            if not f.done():
                self.pending -= 1
                f.set_result(True)
                return
        if outside and self.armed is None:
            lib.mq_wake_one(self.sq._ns, self.sq._index)  # a hint; closed: MQ_ERANGE

    def fired(self, cookie: int) -> None:
        if self.armed is not None and self.armed[2] == cookie:
            self.armed = None
            self.wake_next(outside=True)


class LoopWaiters:
    """Per event loop: its eventfd (a reader on the loop) and its queues' waiters."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.queues: dict[Any, QueueWaiters] = {}  # sync queue handle -> its waiters
        self.watches: dict[int, QueueWaiters] = {}
        self._buf = ffi.new("uint64_t[]", _COLLECT)
        self.pid = os.getpid()
        try:
            loop.add_reader(self.efd, self._on_ready)
        except BaseException:
            os.close(self.efd)
            raise
        # the state must not keep the loop alive; when the loop goes, its
        # watches go and the eventfd closes (never written after closing)
        weakref.finalize(loop, _loop_gone, self.efd, self.watches, self.pid)

    def queue(self, sq: Any) -> QueueWaiters:
        qw = self.queues.get(sq)
        if qw is None:
            qw = self.queues[sq] = QueueWaiters(self, sq)
        return qw

    def idle(self, qw: QueueWaiters) -> None:
        """Forget a queue's waiters once nobody waits (the loop does not keep
        closed namespaces alive); a task still holding it works on."""
        if qw.pending == 0 and qw.armed is None and self.queues.get(qw.sq) is qw:
            del self.queues[qw.sq]

    def _on_ready(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(self.efd)
        buf = self._buf
        for ws in _registry.wslist:
            while True:
                k = int(lib.mq_ws_collect(ws, self.efd, buf, _COLLECT))
                for i in range(max(k, 0)):
                    cookie = int(buf[i])
                    qw = self.watches.pop(cookie, None)
                    if qw is not None:
                        qw.fired(cookie)
                if k < _COLLECT:
                    break


def _loop_gone(efd: int, watches: dict[int, QueueWaiters], pid: int) -> None:
    if pid != os.getpid():
        return
    for qw in list(watches.values()):
        qw.disarm()
    watches.clear()
    with contextlib.suppress(OSError):
        os.close(efd)


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWaiters] = (
    weakref.WeakKeyDictionary()
)


def loop_waiters(loop: asyncio.AbstractEventLoop) -> LoopWaiters:
    lw = _loops.get(loop)
    if lw is None:
        lw = _loops[loop] = LoopWaiters(loop)
    return lw


def _after_fork_in_child() -> None:
    # the notifier threads do not exist in a child and a waitset's mutex may
    # be held: start afresh (the parent's C waitsets are left as they are)
    global _registry
    _registry = _Registry()
    _loops.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _at_exit() -> None:
    _registry.stop_all()


atexit.register(_at_exit)
