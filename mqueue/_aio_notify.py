"""Waiting for shared-memory queues inside an event loop (for :mod:`mqueue.asyncio`).

No thread per waiter, no polling.  A fetch that finds its queue empty reads the
queue's ``seq`` word first, looks again, and then *arms a watch*: "wake this
loop when ``seq`` is no longer that value".  A watch is counted as a waiter of
its queue exactly as a blocked sync fetch is, so an add's futex wake reaches it.
The loop hands the wake-up to one waiting task, which passes it on when it
found an item (there may be more) or when it leaves without using it.

Two ways to wait, chosen per process at the first wait:

- **io_uring** (Linux 6.7+, ``mq_ur_*`` in csrc/uring.c): one ring per event
  loop, its fd a reader on the loop; a watch is an ``IORING_OP_FUTEX_WAIT`` on
  the queue's ``seq`` word, completed by the kernel when an add wakes it.  No
  thread at all: the wake-up goes from the adder's futex wake to the loop's
  epoll.
- **notifier threads** (``mq_ws_*`` in csrc/mq.c), when io_uring is missing or
  refused (older kernel, ``kernel.io_uring_disabled``, a seccomp profile such as
  Docker's default, or ``MQUEUE_AIO_NO_URING=1``): one thread per 127 watched
  queues sleeps in ``futex_waitv`` on all of them (Linux 5.16+) and writes the
  loop's eventfd.  Without ``futex_waitv`` (or ``MQUEUE_AIO_NO_WAITV=1``) a
  thread watches one queue: one thread per queue that has waiting tasks at the
  same moment (still not per waiter).
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


_uring_ok: bool | None = None


def uring_wanted() -> bool:
    """True when event loops wait through io_uring (probed once per process)."""
    global _uring_ok
    if os.environ.get("MQUEUE_AIO_NO_URING", "") not in ("", "0"):
        return False
    if _uring_ok is None:
        _uring_ok = bool(lib.mq_ur_probe())
    return _uring_ok


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


class _Ring:
    """One event loop's io_uring (csrc/uring.c): its fd is a reader on the loop."""

    def __init__(self) -> None:
        r = lib.mq_ur_new()
        if r == ffi.NULL:
            err = int(lib.mq_last_errno())
            raise OSError(err, f"mqueue.asyncio: no io_uring: {os.strerror(err)}")
        self.r = r
        self.fd = int(lib.mq_ur_fd(r))
        with _rings_lock:
            _rings.add(self)

    def close(self) -> None:
        """Uncount the armed watches and close the ring (idempotent)."""
        with _rings_lock:  # held while freeing: forget_ns never meets a freed ring
            _rings.discard(self)
            r, self.r = self.r, ffi.NULL
            if r != ffi.NULL:
                lib.mq_ur_free(r)


_rings: set[_Ring] = set()
_rings_lock = threading.Lock()  # also keeps a ring from being freed while forget_ns uses it


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
        with _rings_lock:
            for ring in _rings:
                lib.mq_ur_forget_ns(ring.r, ns)

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
        # (waitset, or None for the loop's ring; slot; cookie)
        self.armed: tuple[Any, int, int] | None = None

    def arm(self, seq0: int) -> bool:
        """Make sure a watch covers the waiters; False when seq moved (look again)."""
        if self.armed is not None:
            # a watch armed by another waiter with the value then current:
            # every change since fires it, and a change before it was seen
            # by that waiter's own look at the queue
            return True
        cookie = next(_cookies)
        got = self.lw.watch(self.sq._ns, self.sq._index, seq0, cookie)
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
            self.lw.unwatch(ws, slot, cookie)

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


class _LoopRes:
    """What a loop's waits hold outside Python's reach (closed when the loop goes)."""

    __slots__ = ("efd", "ring", "watches", "pid")

    def __init__(self) -> None:
        self.efd: int | None = None  # the notifier's eventfd, made on first need
        self.ring: _Ring | None = None
        self.watches: dict[int, QueueWaiters] = {}
        self.pid = os.getpid()


class LoopWaiters:
    """Per event loop: its ring or eventfd (a reader on the loop) and its queues' waiters."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.queues: dict[Any, QueueWaiters] = {}  # sync queue handle -> its waiters
        self.res = _LoopRes()
        self.watches = self.res.watches
        self._buf = ffi.new("uint64_t[]", _COLLECT)
        self._loop = weakref.ref(loop)
        if uring_wanted():
            with contextlib.suppress(OSError):
                self.res.ring = _Ring()
        try:
            if self.res.ring is not None:
                loop.add_reader(self.res.ring.fd, self._on_ring)  # readable: completions
            else:
                self._use_notifier(loop)
        except BaseException:
            _loop_gone(self.res)
            raise
        # the state must not keep the loop alive; when the loop goes, its
        # watches go and its descriptors close (never written after closing)
        weakref.finalize(loop, _loop_gone, self.res)

    @property
    def ring(self) -> _Ring | None:
        return self.res.ring

    def _use_notifier(self, loop: asyncio.AbstractEventLoop) -> None:
        efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            loop.add_reader(efd, self._on_efd)
        except BaseException:
            os.close(efd)
            raise
        self.res.efd = efd

    def watch(self, ns: Any, index: int, seq0: int, cookie: int) -> tuple[Any, int] | None:
        """Arm a watch; returns (waitset or None for the ring, slot), or None
        when ``seq`` moved since ``seq0`` was read (look at the queue again).
        Raises _EngineError (closed handle ...)."""
        ring = self.res.ring
        if ring is not None and self.res.efd is None:
            rc = int(lib.mq_ur_watch(ring.r, ns, index, seq0, cookie))
            if rc >= 0:
                return None, rc
            if rc == lib.MQ_EAGAIN:
                return None
            if rc != lib.MQ_ESYS:
                raise _EngineError(rc)
            loop = self._loop()  # the ring refused: this loop uses the notifier from now on
            if loop is None:
                raise _EngineError(rc)
            self._use_notifier(loop)
        assert self.res.efd is not None
        return _registry.watch(ns, index, seq0, self.res.efd, cookie)

    def unwatch(self, ws: Any, slot: int, cookie: int) -> None:
        if ws is not None:
            lib.mq_ws_unwatch(ws, slot, cookie)
        elif self.res.ring is not None:
            lib.mq_ur_unwatch(self.res.ring.r, slot, cookie)

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

    def _fire(self, k: int) -> None:
        buf = self._buf
        for i in range(max(k, 0)):
            cookie = int(buf[i])
            qw = self.watches.pop(cookie, None)
            if qw is not None:
                qw.fired(cookie)

    def _on_ring(self) -> None:
        ring = self.res.ring
        if ring is None:
            return
        while True:
            k = int(lib.mq_ur_collect(ring.r, self._buf, _COLLECT))
            self._fire(k)
            if k < _COLLECT:
                break

    def _on_efd(self) -> None:
        efd = self.res.efd
        if efd is None:
            return
        with contextlib.suppress(BlockingIOError):
            os.eventfd_read(efd)
        for ws in _registry.wslist:
            while True:
                k = int(lib.mq_ws_collect(ws, efd, self._buf, _COLLECT))
                self._fire(k)
                if k < _COLLECT:
                    break

    def _on_ready(self) -> None:
        """Take every fired watch now (what the loop's readers do)."""
        self._on_ring()
        self._on_efd()


def _loop_gone(res: _LoopRes) -> None:
    if res.pid != os.getpid():
        return
    for qw in list(res.watches.values()):
        qw.disarm()
    res.watches.clear()
    if res.ring is not None:
        res.ring.close()
    if res.efd is not None:
        with contextlib.suppress(OSError):
            os.close(res.efd)


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopWaiters] = (
    weakref.WeakKeyDictionary()
)


def loop_waiters(loop: asyncio.AbstractEventLoop) -> LoopWaiters:
    lw = _loops.get(loop)
    if lw is None:
        lw = _loops[loop] = LoopWaiters(loop)
    return lw


def mode() -> str:
    """How this process's event loops wait now: "io_uring", "futex_waitv" or
    "futex" (one queue per notifier thread)."""
    if uring_wanted():
        return "io_uring"
    return "futex_waitv" if _registry.use_waitv else "futex"


def _after_fork_in_child() -> None:
    # the notifier threads do not exist in a child and a waitset's mutex may
    # be held: start afresh (the parent's C waitsets are left as they are).
    # The parent's rings: this process closes its copies of their fds and
    # forgets them, touching nothing the parent's waits use.
    global _registry, _rings_lock
    _registry = _Registry()
    _rings_lock = threading.Lock()
    for ring in _rings:
        lib.mq_ur_abandon(ring.r)
        ring.r = ffi.NULL
    _rings.clear()
    _loops.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _at_exit() -> None:
    _registry.stop_all()
    with _rings_lock:
        rings = list(_rings)
    for ring in rings:
        ring.close()


atexit.register(_at_exit)
