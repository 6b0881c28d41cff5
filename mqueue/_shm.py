"""The shared-memory backend: one POSIX shared-memory segment per namespace.

The segment is created and opened with posix_ipc; the C engine (through cffi)
maps it, validates it and runs every queue operation as one call.  Segment
names are ``/mqueue.<namespace>`` (``/dev/shm/mqueue.<namespace>`` on Linux).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
import weakref
from array import array
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import posix_ipc

from . import _lowlevel as ll
from ._core import (
    FLAG_KEY_STR,
    FLAG_VAL_STR,
    Data,
    Item,
    MQueue,
    Queue,
    QueueStats,
    check_count,
    check_namespace,
    encode,
)
from ._defs import QueueDef
from ._errors import (
    AccessDeniedError,
    ArgumentError,
    ArgumentTypeError,
    CorruptSegmentError,
    ItemTypeError,
    MQueueError,
    NamespaceExistsError,
    NamespaceNotFoundError,
    raise_for_code,
)

ffi, lib = ll.ffi, ll.lib

PREFIX = "mqueue."
SHM_DIR = "/dev/shm"
ATTACH_WAIT_S = 2.0
_INITIAL_BUF = 256 * 1024

_mq_add = lib.mq_add
_mq_fetch_into = lib.mq_fetch_into
_mq_fetch_batch = lib.mq_fetch_batch
_tnew = tuple.__new__
_mkitem = partial(tuple.__new__, Item)
_UNIFORM_NONUL = lib.MQ_BATCH_UNIFORM | lib.MQ_BATCH_NONUL
_BYTES = {bytes}
_MAX_BATCH = 65536
_MAX_BUF = 64 << 20
_KEPT_STEP = 16  # items decoded per step when handing out kept items


def _timeout_s(timeout: object) -> float:
    """A fetch timeout in seconds for C: -1.0 forever, 0 no wait, t > 0."""
    if timeout is None:
        return -1.0
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ArgumentTypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    try:
        t = float(timeout)
    except OverflowError:  # an int too large for a float: forever
        t = float("inf") if timeout > 0 else float("-inf")
    if t != t or t < 0:
        raise ArgumentError(f"timeout must be >= 0 or None, not {timeout!r}")
    return -1.0 if t >= 1e9 else t  # beyond 30 years: forever, as C has it


def _encode_pair(key: object, value: object) -> tuple[bytes, bytes, int]:
    """``(key bytes, value bytes, flags)`` of one item; ItemTypeError for a key
    or value that is neither str nor bytes."""
    kb, ks = encode(key)
    vb, vs = encode(value)
    return kb, vb, (FLAG_KEY_STR if ks else 0) | (FLAG_VAL_STR if vs else 0)


def _dec(raw: bytes) -> str:
    """UTF-8 to str; lone surrogates (as ``add`` encoded them) round-trip."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogatepass")


_AGAIN = (ll.MQ_EINTR, ll.MQ_EAGAIN)  # nothing done: run signal handlers, call again
_UNTAKEN = 0xFFFFFFFF  # a flags word no item has: "the engine took nothing"
_EBUF = ll.MQ_EBUF


def shm_name(namespace: str) -> str:
    """The POSIX shared-memory name of a namespace."""
    return "/" + PREFIX + check_namespace(namespace)


def list_namespaces() -> list[str]:
    """Namespaces present on this machine (segments named ``mqueue.*``), sorted."""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(n[len(PREFIX) :] for n in names if n.startswith(PREFIX) and len(n) > len(PREFIX))


def _err(rc: int, what: str) -> MQueueError:
    """The exception for a C return code (raised by the caller)."""
    try:
        raise_for_code(rc, what, lib.mq_last_errno())
    except MQueueError as e:
        return e


class _Buffers:
    """A queue handle's fetch buffer, its metadata words (klen, vlen, flags per
    item, in an ``array`` Python reads natively) and the ``mq_fetchbuf`` that
    hands both to C in one argument.  Replaced by a larger one on demand."""

    __slots__ = ("size", "buf", "view", "nmeta", "arr", "meta", "fb")

    def __init__(self, ns: Any, index: int, size: int, nmeta: int = 1) -> None:
        self.size = size
        self.buf = ffi.new("char[]", size)
        self.view = ffi.buffer(self.buf)
        self.nmeta = nmeta
        self.arr = array("I", bytes(12 * nmeta))
        self.arr[2] = _UNTAKEN  # the engine writes this word only when it commits a take
        self.meta = ffi.from_buffer("uint32_t[]", self.arr)
        fb = self.fb = ffi.new("struct mq_fetchbuf *")
        fb.ns = ns
        fb.q = index
        fb.buf = self.buf
        fb.size = size
        fb.meta = self.meta


class ShmQueue(Queue):
    """A queue in a shared-memory namespace (see :class:`mqueue.Queue`)."""

    def __init__(self, mq: MQueue, index: int, definition: QueueDef) -> None:
        super().__init__(mq, index, definition)
        self._ns: Any = mq._ns  # type: ignore[attr-defined]
        self._bufs: _Buffers | None = _Buffers(self._ns, index, _INITIAL_BUF)
        self._what = f"queue {definition.name!r}"

    def _fail(self, rc: int) -> MQueueError:
        if rc == ll.MQ_ECLOSED or self._ns == ffi.NULL:
            return self._mq._closed_error(
                MQueueError(f"{self._what}: the namespace handle is closed")
            )
        return _err(rc, self._what)

    def add(self, key: Data, value: Data) -> bool:
        # The hot path: the two common cases inline, then one C call.
        if type(key) is str and type(value) is str:
            try:
                kb = key.encode()
                vb = value.encode()
                flags = FLAG_KEY_STR | FLAG_VAL_STR
            except UnicodeEncodeError:
                kb, vb, flags = _encode_pair(key, value)
        elif type(key) is bytes and type(value) is bytes:
            kb = key
            vb = value
            flags = 0
        else:
            kb, vb, flags = _encode_pair(key, value)
        rc: int = _mq_add(self._ns, self._index, kb, len(kb), vb, len(vb), flags)
        if rc >= 0:
            return rc == 1
        while rc in _AGAIN:  # a signal or a long lock wait: handlers ran, try again
            rc = _mq_add(self._ns, self._index, kb, len(kb), vb, len(vb), flags)
        if rc < 0:
            raise self._fail(rc)
        return rc == 1

    def add_many(self, items: Iterable[tuple[Data, Data]]) -> int:
        if type(items) is not list and type(items) is not tuple:
            items = list(items)
        if not items:
            return 0
        # Fast path, for batches whose keys and values are all str or all
        # bytes: keys then values joined with NULs here, split in C, so no
        # per-item step runs in the interpreter.  C refuses (MQ_EINVAL) a
        # batch whose pieces do not count 2n, i.e. one with a NUL inside a
        # key or value; that, and anything else, takes the general loop.
        n = len(items)
        try:
            keys, values = zip(*items, strict=True)  # every item a pair, or raises
        except (TypeError, ValueError):
            return self._add_many_general(items)
        # the fallbacks below use zip(keys, values): the items themselves may
        # have been one-shot iterators, used up by the zip above
        pieces = keys + values
        try:
            joined = "\0".join(pieces)
        except TypeError:
            if set(map(type, pieces)) != _BYTES:
                return self._add_many_general(zip(keys, values, strict=True))
            data = b"\0".join(pieces)
            flags = 0
        else:
            try:
                data = joined.encode()
            except UnicodeEncodeError:
                data = joined.encode("utf-8", "surrogatepass")
            flags = FLAG_KEY_STR | FLAG_VAL_STR
        rc: int = lib.mq_add_many_sep(self._ns, self._index, data, len(data), n, flags)
        while rc in _AGAIN:
            rc = lib.mq_add_many_sep(self._ns, self._index, data, len(data), n, flags)
        if rc >= 0:
            return rc
        if rc == ll.MQ_EINVAL:
            return self._add_many_general(zip(keys, values, strict=True))
        raise self._fail(rc)

    def _add_many_raw(self, data: bytes, lens3: array[int], n: int) -> int:
        clens = ffi.from_buffer("uint32_t[]", lens3)
        rc: int = lib.mq_add_many(self._ns, self._index, data, len(data), clens, n)
        while rc in _AGAIN:
            rc = lib.mq_add_many(self._ns, self._index, data, len(data), clens, n)
        if rc < 0:
            raise self._fail(rc)
        return rc

    def _add_many_general(self, items: Iterable[tuple[Data, Data]]) -> int:
        parts: list[bytes] = []
        lens: list[int] = []
        append = parts.append
        try:
            for key, value in items:
                kb, vb, flags = _encode_pair(key, value)
                append(kb)
                append(vb)
                lens += (len(kb), len(vb), flags)
        except ItemTypeError:
            raise
        except (TypeError, ValueError) as e:
            raise ItemTypeError(f"add_many takes an iterable of (key, value) pairs: {e}") from None
        n = len(lens) // 3
        if n == 0:
            return 0
        try:
            lens3 = array("I", lens)
        except OverflowError:
            raise _err(ll.MQ_ETOOBIG, self._what) from None
        return self._add_many_raw(b"".join(parts), lens3, n)

    # Items the engine took are the caller's: they must reach it or stay
    # where the next fetch of this handle finds them, whatever exception (a
    # signal handler's, Ctrl-C) lands at whatever call boundary.  The record of
    # a take is the buffer itself: the engine writes the first item's flags
    # word (arr[2], set to _UNTAKEN before each call) only once the take is
    # committed.  Until the items are handed over, the buffer is referenced
    # only by this call; an exception that leaves the call runs the handler,
    # whose first steps (no call among them, so no second exception can land
    # before they are done) keep the buffer in _undelivered when arr[2] says
    # it holds a take.  The hand-over itself (buffer back to the handle, held
    # item set, return) has no call in it either.

    def fetch(self, timeout: float | None = 0) -> Item | None:
        # the timeout goes to C in seconds (C computes the deadline); checked
        # first, so that a refused call changes nothing (not even the held item)
        if timeout is None:
            t = -1.0
        elif (timeout.__class__ is int or timeout.__class__ is float) and 0 <= timeout < 1e9:
            t = timeout
        else:
            t = _timeout_s(timeout)
        if self._undelivered:  # taken by a call an exception cut short
            kept = self._deliver()
            if kept is not None:
                return kept
        self._held = None
        b = self._bufs
        self._bufs = None  # another thread using this handle meanwhile gets its own
        if b is None:
            b = _Buffers(self._ns, self._index, _INITIAL_BUF)
        arr = b.arr
        arr[2] = _UNTAKEN
        try:
            rc: int = _mq_fetch_into(b.fb, t)
            if rc == 1:  # the hot path: one copy out of the buffer, one decode
                kl = arr[0]
                raw = b.view[0 : kl + arr[1]]
                fl = arr[2]
                if fl == 3:
                    try:
                        text = raw.decode()
                    except UnicodeDecodeError:
                        text = ""
                    if len(text) == len(raw):  # ASCII: byte offsets are char offsets
                        item = _tnew(Item, (text[:kl], text[kl:]))
                    else:
                        item = self._item(raw, kl, fl)
                elif fl == 0:
                    item = _tnew(Item, (raw[:kl], raw[kl:]))
                else:
                    item = self._item(raw, kl, fl)
                self._bufs = b  # the hand-over: no call from here to the return
                self._held = item
                return item
        except CorruptSegmentError:
            arr[2] = _UNTAKEN  # a damaged record: it cannot be handed out
            if self._bufs is None:
                self._bufs = b
            raise
        except BaseException:
            if arr[2] != _UNTAKEN:  # taken, not handed over: for the next fetch
                self._undelivered += ((b, False, 0, 0),)
                self._kept_raw += 1
            elif self._bufs is None:
                self._bufs = b
            raise
        self._bufs = b
        if rc == 0:
            return None
        items = self._take_s(1, t, b.fb.deadline if rc in _AGAIN else None)
        if not items:
            return None
        item = items[0]
        self._held = item
        return item

    def fetch_many(self, n: int, timeout: float | None = 0) -> list[Item]:
        t = -1.0 if timeout is None else _timeout_s(timeout)
        if check_count(n) == 0:
            return []
        if self._undelivered:
            out = self._deliver_many(n)
            if out:
                return out
        return self._take_s(n, t)

    def _expand_kept(self, upto: int) -> None:
        """Decode kept buffers into their Items, in place, until the first
        ``upto`` entries of _undelivered are Items.  An entry is (buffer,
        batch layout, first item not decoded, its byte offset); each step
        decodes at most _KEPT_STEP items and replaces the entry by them (and
        by what is left of it) in one slice assignment, only if the entry is
        still where it was: repeating a step, or a step cut short, or two
        threads, never double an item, and a storm of exceptions faster than a
        whole batch's decoding still lets it progress."""
        u = self._undelivered
        while self._kept_raw:
            i = len(u) - self._kept_raw  # the first record: Items come before them,
            if not 0 <= i < len(u) or u[i].__class__ is not tuple:
                # unless someone appended Items after records: look for it
                i = next((j for j, y in enumerate(u) if y.__class__ is tuple), len(u))
                if i == len(u):  # none left (counted wrong): nothing to decode
                    self._kept_raw = 0
                    return
            if i >= upto:
                return
            x = u[i]
            b, batch, start, off = x
            try:
                items, off2 = self._decode_kept(b, batch, start, off)
            except MQueueError:  # damaged records: the rest of this take is dropped
                if u[i : i + 1] == [x]:
                    del u[i]
                    self._kept_raw -= 1
                raise
            done = start + len(items) >= (b.fb.taken if batch else 1)
            new = items if done else items + [(b, batch, start + len(items), off2)]
            if u[i : i + 1] == [x]:  # no call from this check to the count's update
                u[i : i + 1] = new
                if done:
                    self._kept_raw -= 1

    def _decode_kept(
        self, b: _Buffers, batch: bool, start: int, off: int
    ) -> tuple[list[Item], int]:
        """Up to _KEPT_STEP Items of a kept buffer from item ``start`` (at byte
        ``off``), and the byte offset after them."""
        arr = b.arr
        if not batch:  # mq_fetch_into: one item, key and value back to back
            kl = arr[0]
            return [self._item(b.view[0 : kl + arr[1]], kl, arr[2])], 0
        stop = min(b.fb.taken, start + _KEPT_STEP)
        meta = arr[3 * start : 3 * stop].tolist()
        end = off + sum(meta[0::3]) + sum(meta[1::3]) + 2 * (stop - start)
        raw = b.view[off:end]
        out: list[Item] = []
        o = 0
        for j in range(0, len(meta), 3):
            kl, vl, fl = meta[j], meta[j + 1], meta[j + 2]
            k = raw[o : o + kl]
            o += kl + 1
            v = raw[o : o + vl]
            o += vl + 1
            try:
                out.append(
                    _tnew(
                        Item,
                        (_dec(k) if fl & FLAG_KEY_STR else k, _dec(v) if fl & FLAG_VAL_STR else v),
                    )
                )
            except UnicodeDecodeError:
                raise _err(ll.MQ_ECORRUPT, self._what) from None
        return out, end

    def _item(self, raw: bytes, kl: int, fl: int) -> Item:
        """The Item of a record whose key and value are back to back in raw."""
        k = raw[:kl]
        v = raw[kl:]
        try:
            return _tnew(
                Item,
                (_dec(k) if fl & FLAG_KEY_STR else k, _dec(v) if fl & FLAG_VAL_STR else v),
            )
        except UnicodeDecodeError:
            raise _err(ll.MQ_ECORRUPT, self._what) from None

    def _take(self, n: int, deadline: int) -> list[Item]:
        # the base class's hook, with a CLOCK_MONOTONIC deadline (0 / -1 / ns)
        return self._take_s(n, 0.0 if deadline == 0 else -1.0, None if deadline == 0 else deadline)

    def _take_s(self, n: int, timeout: float, deadline: int | None = None) -> list[Item]:
        """Take up to n items, waiting up to ``timeout`` seconds (< 0: forever)
        while the queue is empty, or until ``deadline`` (CLOCK_MONOTONIC ns,
        -1 forever) when a wait cut into slices (MQ_EAGAIN) or interrupted by a
        signal (MQ_EINTR) goes on: Python runs its signal handlers between two
        calls, and a handler that raises ends the wait.  (See fetch for how
        taken items survive an exception.)"""
        cap = n if n < _MAX_BATCH else _MAX_BATCH
        b = self._bufs
        self._bufs = None
        if b is None or b.nmeta < cap:
            b = _Buffers(self._ns, self._index, max(b.size if b else 0, _INITIAL_BUF), cap)
        b.arr[2] = _UNTAKEN
        want = cap if cap < b.nmeta else b.nmeta
        try:
            while True:
                if deadline is not None:  # continuing a wait: what is left of it
                    if deadline == -1:
                        timeout = -1.0
                    else:  # past the deadline: one last look, without waiting
                        timeout = max(0.0, (deadline - time.monotonic_ns()) / 1e9)
                if want == 1:
                    rc: int = _mq_fetch_into(b.fb, timeout)
                else:
                    rc = _mq_fetch_batch(b.fb, want, timeout)
                if rc > 0:
                    break
                if rc == 0:
                    out: list[Item] = []
                    break
                if rc == _EBUF:  # nothing taken: a larger buffer, and again
                    b = _Buffers(self._ns, self._index, max(b.arr[0], 2 * b.size), b.nmeta)
                    continue
                if rc not in _AGAIN:
                    raise self._fail(rc)
                if deadline is None:
                    deadline = b.fb.deadline
                if timeout == 0.0:
                    out = []  # that was the last look
                    break
            if rc > 0:
                if want == 1:  # mq_fetch_into: key and value back to back
                    kl = b.arr[0]
                    out = [self._item(b.view[0 : kl + b.arr[1]], kl, b.arr[2])]
                else:
                    out = self._decode_batch(b, rc)
                    if rc < want:
                        self._grow_if_needed(b, rc, want, b.fb.total)
            if self._bufs is None:  # the hand-over: no call from here to the return
                self._bufs = b
            return out
        except CorruptSegmentError:
            b.arr[2] = _UNTAKEN  # damaged records: they cannot be handed out
            if self._bufs is None:
                self._bufs = b
            raise
        except BaseException:
            if b.arr[2] != _UNTAKEN:  # taken, not handed over: for the next fetch
                self._undelivered += ((b, want > 1, 0, 0),)
                self._kept_raw += 1
            elif self._bufs is None:
                self._bufs = b
            raise

    def _decode_batch(self, b: _Buffers, n: int) -> list[Item]:
        """The n Items mq_fetch_batch left in b: every key and value is
        followed by a NUL byte; fb.info says whether a fast split is exact."""
        fb = b.fb
        info = fb.info
        raw = b.view[0 : fb.total]
        try:
            if info & _UNIFORM_NONUL == _UNIFORM_NONUL and (info >> 8) in (0, 3):
                # Fast path: one split in C, Items made by C-level map().
                if info >> 8:
                    try:
                        parts: list[Any] = raw.decode().split("\0")
                    except UnicodeDecodeError:
                        parts = raw.decode("utf-8", "surrogatepass").split("\0")
                else:
                    parts = raw.split(b"\0")
                parts.pop()  # after the last NUL
                it = iter(parts)
                return list(map(_mkitem, zip(it, it, strict=False)))  # 2n pieces
            meta = b.arr[: 3 * n].tolist()
            out: list[Item] = []
            append = out.append
            off = 0
            for i in range(0, 3 * n, 3):
                kl, vl, fl = meta[i], meta[i + 1], meta[i + 2]
                k = raw[off : off + kl]
                off += kl + 1
                v = raw[off : off + vl]
                off += vl + 1
                append(
                    _tnew(
                        Item,
                        (
                            _dec(k) if fl & FLAG_KEY_STR else k,
                            _dec(v) if fl & FLAG_VAL_STR else v,
                        ),
                    )
                )
            return out
        except UnicodeDecodeError:
            raise _err(ll.MQ_ECORRUPT, self._what) from None

    def _grow_if_needed(self, b: _Buffers, got: int, want: int, used: int) -> None:
        """Next time, a larger buffer when this one limited a batch."""
        if got < want and 2 * used > b.size and b.size < _MAX_BUF:
            self._bufs = _Buffers(self._ns, self._index, 2 * b.size, b.nmeta)

    def _stats_raw(self) -> Any:
        st = ffi.new("struct mq_stats *")
        rc = lib.mq_stats(self._ns, self._index, st)
        while rc < 0:
            if rc not in _AGAIN:
                raise self._fail(rc)
            rc = lib.mq_stats(self._ns, self._index, st)
        return st

    def __len__(self) -> int:
        out = ffi.new("uint64_t *")
        rc = lib.mq_count(self._ns, self._index, out)
        while rc < 0:
            if rc not in _AGAIN:
                raise self._fail(rc)
            rc = lib.mq_count(self._ns, self._index, out)
        return int(out[0])

    def stats(self) -> QueueStats:
        st = self._stats_raw()
        return QueueStats(
            name=self.name,
            length=int(st.count),
            added=int(st.added),
            fetched=int(st.fetched),
            evicted=int(st.evicted),
            duplicates=int(st.duplicates),
            high_water=int(st.high_water),
            recoveries=int(st.recoveries),
            bytes_used=int(st.bytes_used),
            capacity=int(st.capacity),
            size_limit=max(0, int(st.size_limit)),
            addmode=int(st.addmode),
        )


class ShmNamespace(MQueue):
    """A namespace in POSIX shared memory (see :class:`mqueue.MQueue`)."""

    def __init__(
        self,
        namespace: str,
        shm: posix_ipc.SharedMemory,
        ns: Any,
        definitions: Sequence[QueueDef],
        *,
        db_url: str | None,
        creator: bool,
    ) -> None:
        self._shm = shm
        self._ns = ns
        # before the base class registers the handle for the fork hook, which uses it
        self._finalizer = weakref.finalize(self, _release_handle, ns, shm)
        super().__init__(namespace, definitions, ShmQueue, db_url=db_url, creator=creator)

    @property
    def slot(self) -> int:
        """This process's liveness slot in the namespace (diagnostics)."""
        return int(lib.mq_slot(self._ns)) if not self._closed else -1

    def _release(self) -> None:
        for q in self._queues.values():
            q._ns = ffi.NULL  # type: ignore[attr-defined]
        # Unmap now (after calls other threads have in flight); the handle's
        # small C struct is freed by the finalizer once nothing refers to it.
        lib.mq_detach(self._ns)
        with contextlib.suppress(Exception):
            self._shm.close_fd()

    def _reattach_in_child(self) -> None:
        """Give this process its own liveness slot (the inherited fd shares the parent's)."""
        old = self._shm
        try:
            new = posix_ipc.SharedMemory(shm_name(self.namespace))
        except Exception:
            self._detach_broken()
            return
        rc = lib.mq_reattach(self._ns, new.fd)
        if rc != 0:
            new.close_fd()
            self._detach_broken()
            return
        self._shm = new
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _release_handle, self._ns, new)
        with contextlib.suppress(Exception):
            old.close_fd()

    def _detach_broken(self) -> None:
        # Without a slot of its own the child must not operate on the queues:
        # the parent's liveness would vouch for it.  The handle is closed.
        self._creator_pid = None
        self._closed = True
        self._unregister()
        self._release()


def _release_handle(ns: Any, shm: posix_ipc.SharedMemory) -> None:
    """Finalizer of a namespace handle nobody refers to any more."""
    lib.mq_free(ns)
    with contextlib.suppress(Exception):
        shm.close_fd()


def _params(defs: Sequence[QueueDef]) -> Any:
    p = ffi.new("struct mq_qparam[]", max(1, len(defs)))
    for i, d in enumerate(defs):
        p[i].capacity = d.nbytes
        p[i].size_limit = max(0, d.size)
        p[i].addmode = d.addmode
    return p


def _meta(namespace: str, defs: Sequence[QueueDef]) -> bytes:
    doc = {"mqueue": 1, "namespace": namespace, "queues": [d.to_dict() for d in defs]}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode()


def _read_meta(ns: Any, namespace: str) -> list[QueueDef]:
    p = ffi.new("const char **")
    n = ffi.new("size_t *")
    if lib.mq_meta(ns, p, n) != 0:
        raise CorruptSegmentError(f"namespace {namespace!r}: cannot read its definitions")
    raw = ffi.unpack(p[0], n[0])
    try:
        doc = json.loads(raw)
        if (
            not isinstance(doc, dict)
            or doc.get("mqueue") != 1
            or not isinstance(doc.get("queues"), list)
        ):
            raise ValueError("unexpected document")
        defs = [QueueDef.from_dict(d) for d in doc["queues"]]
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise CorruptSegmentError(
            f"namespace {namespace!r}: the stored queue definitions are damaged ({e})"
        ) from None
    if len(defs) != lib.mq_nqueues(ns) or len({d.name for d in defs}) != len(defs):
        raise CorruptSegmentError(
            f"namespace {namespace!r}: queue table does not match its definitions"
        )
    st = ffi.new("struct mq_stats *")
    for i, d in enumerate(defs):
        rc = lib.mq_stats(ns, i, st)
        while rc in _AGAIN:
            rc = lib.mq_stats(ns, i, st)
        if rc != 0:
            raise _err(rc, f"namespace {namespace!r}, queue {d.name!r}")
        if (
            st.addmode != d.addmode
            or st.size_limit != d.size
            or st.capacity != (d.nbytes + 7) // 8 * 8
        ):
            raise CorruptSegmentError(
                f"namespace {namespace!r}: queue {d.name!r} does not match its definition"
            )
    return defs


def _open_error(e: Exception, namespace: str) -> MQueueError:
    if isinstance(e, posix_ipc.PermissionsError):
        return AccessDeniedError(f"namespace {namespace!r}: permission denied")
    if isinstance(e, posix_ipc.ExistentialError):
        return NamespaceNotFoundError(f"no namespace {namespace!r} on this machine")
    return MQueueError(f"namespace {namespace!r}: cannot open its shared memory: {e}")


def attach(namespace: str) -> ShmNamespace:
    """Attach to an existing shared-memory namespace."""
    name = shm_name(namespace)
    try:
        shm = posix_ipc.SharedMemory(name)
    except Exception as e:
        raise _open_error(e, namespace) from None
    out = ffi.new("mq_ns **")
    give_up = time.monotonic() + ATTACH_WAIT_S
    try:
        while True:
            rc = lib.mq_attach(shm.fd, out)
            if rc != ll.MQ_ENOTREADY or time.monotonic() > give_up:
                break
            time.sleep(0.005)
        if rc != 0:
            raise _err(rc, f"namespace {namespace!r}")
        try:
            defs = _read_meta(out[0], namespace)
        except BaseException:
            lib.mq_free(out[0])  # nothing else refers to this handle
            raise
    except BaseException:
        shm.close_fd()
        raise
    return ShmNamespace(namespace, shm, out[0], defs, db_url=None, creator=False)


def create(
    namespace: str,
    defs: Sequence[QueueDef],
    *,
    mode: int = 0o600,
    exist_ok: bool = False,
    db_url: str | None = None,
) -> ShmNamespace:
    """Create a shared-memory namespace holding these queues."""
    name = shm_name(namespace)
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ArgumentError(f"mode must be an int in 0..0o777, not {mode!r}")
    meta = _meta(namespace, defs)
    params = _params(defs)
    size_out = ffi.new("uint64_t *")
    rc = lib.mq_segment_size(len(defs), params, len(meta), size_out)
    if rc != 0:
        raise _err(rc, f"namespace {namespace!r}")
    size = int(size_out[0])
    try:
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=mode, size=size)
    except posix_ipc.ExistentialError:
        if not exist_ok:
            raise NamespaceExistsError(f"namespace {namespace!r} already exists") from None
        mq = attach(namespace)
        if mq.definitions != list(defs):
            mq.close()
            raise NamespaceExistsError(
                f"namespace {namespace!r} already exists with other queue definitions"
            ) from None
        return mq
    except posix_ipc.PermissionsError:
        raise AccessDeniedError(f"namespace {namespace!r}: permission denied") from None
    except ValueError as e:  # posix_ipc refuses some names/sizes
        raise MQueueError(f"namespace {namespace!r}: cannot create shared memory: {e}") from None
    out = ffi.new("mq_ns **")
    try:
        os.fchmod(shm.fd, mode)  # exactly `mode`, whatever the umask
        try:
            os.posix_fallocate(shm.fd, 0, size)  # reserve now: no SIGBUS later
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
                raise MQueueError(
                    f"namespace {namespace!r}: not enough shared memory for {size} bytes "
                    f"({os.strerror(e.errno)}); use smaller bytes= or free /dev/shm"
                ) from None
            if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
        rc = lib.mq_create(shm.fd, len(defs), params, meta, len(meta), out)
        if rc != 0:
            raise _err(rc, f"namespace {namespace!r}")
    except BaseException:
        try:
            shm.unlink()
        finally:
            shm.close_fd()
        raise
    return ShmNamespace(namespace, shm, out[0], defs, db_url=db_url, creator=True)


def destroy(namespace: str) -> None:
    """Remove a namespace's segment.  Attached processes keep their mapping."""
    name = shm_name(namespace)  # a bad name is a DefinitionError (ValueError)
    try:
        posix_ipc.unlink_shared_memory(name)
    except Exception as e:
        raise _open_error(e, namespace) from None


__all__ = ["ShmNamespace", "ShmQueue", "attach", "create", "destroy", "list_namespaces", "shm_name"]
