"""The shared-memory backend: one POSIX shared-memory segment per namespace.

The segment is created and opened with posix_ipc; the C engine (through cffi)
maps it, validates it and runs every queue operation as one call.  Segment
names are ``/mqueue.<namespace>`` (``/dev/shm/mqueue.<namespace>`` on Linux).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import pwd
import stat
import time
import weakref
from array import array
from collections.abc import Iterable, Sequence
from functools import partial
from itertools import repeat, starmap
from typing import Any, NamedTuple

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
    align8,
    check_mode,
    check_namespace,
    check_timeout,
    encode,
)
from ._defs import QueueDef
from ._errors import (
    AccessDeniedError,
    ArgumentError,
    ArgumentTypeError,
    CorruptSegmentError,
    DefinitionError,
    ItemTypeError,
    MQueueError,
    NamespaceExistsError,
    NamespaceIncompleteError,
    NamespaceNotFoundError,
    QueueFullError,
)

ffi, lib = ll.ffi, ll.lib

logger = logging.getLogger(__name__)

PREFIX = "mqueue."
SHM_DIR = "/dev/shm"
ATTACH_WAIT_S = 10.0
"""How long attach (and create with exist_ok) waits for a live creator to finish."""
_INITIAL_BUF = 256 * 1024

_mq_add_to = lib.mq_add_to
_mq_fetch_one = lib.mq_fetch_one
_mq_fetch_batch = lib.mq_fetch_batch
_new_tuple = tuple.__new__  # _new_tuple(Item, (k, v)): an Item without Item.__new__'s call
_ITEMS = repeat(Item)  # starmap(_new_tuple, zip(_ITEMS, pairs)): Items, no call per item
_BOTH_STR = FLAG_KEY_STR | FLAG_VAL_STR  # a record whose key and value are both str
_ONE_SHIFT = lib.MQ_ONE_SHIFT  # mq_fetch_one's result >> this: bytes of key NUL value
_ONE_LOW = (1 << _ONE_SHIFT) - 1  # its low bits: MQ_ONE_KEYNUL | flags
_UNIFORM_NONUL = lib.MQ_BATCH_UNIFORM | lib.MQ_BATCH_NONUL
_BYTES = {bytes}
_MAX_BATCH = 65536
_MAX_BUF = 64 << 20
_KEPT_STEP = 16  # items decoded per step when handing out kept items


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


_AGAIN = (lib.MQ_EINTR, lib.MQ_EAGAIN)  # nothing done: run signal handlers, call again


def _again(fn: Any, *args: Any) -> int:
    """``fn(*args)``, called again while it returns MQ_EINTR or MQ_EAGAIN
    (nothing done: a signal, or a lock wait cut into slices; Python runs the
    signal handlers between the calls, and a handler that raises ends it)."""
    rc: int = fn(*args)
    while rc in _AGAIN:
        rc = fn(*args)
    return rc


_UNTAKEN = 0xFFFFFFFF  # a flags word no item has: "the engine took nothing"
_EBUF = lib.MQ_EBUF


class ReservationBusy(MQueueError):
    """The queue already has a pending reservation (another save or CLI fetch)."""


class Reservation(NamedTuple):
    """A queue's pending reservation (``tag`` 0: none) and its last load tag."""

    tag: int
    size: int  # items reserved
    owner_alive: bool
    mine: bool
    load_tag: int
    db: int = 0  # the fingerprint of the database its save writes to (0: none/unknown)


def shm_name(namespace: str) -> str:
    """The POSIX shared-memory name of a namespace."""
    return "/" + PREFIX + check_namespace(namespace)


def list_namespaces(url: None = None) -> list[str]:
    """Namespaces present on this machine (segments named ``mqueue.*``), sorted.
    (``url`` is always None: the backend interface of :func:`mqueue._backend`.)"""
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(n[len(PREFIX) :] for n in names if n.startswith(PREFIX) and len(n) > len(PREFIX))


class _Buffers:
    """A queue handle's fetch buffer, its metadata words (klen, vlen, flags per
    item, in an ``array`` Python reads natively) and the ``mq_fetchbuf`` that
    hands both to C in one argument (``fb``, inside the ``mq_fetch1`` of
    ``fetch``'s fast path, ``one``, whose timeout is set only when it changes:
    ``timeout`` mirrors it).  Replaced by a larger one on demand."""

    __slots__ = ("size", "buf", "view", "nmeta", "arr", "meta", "one", "fb", "timeout")

    def __init__(self, ns: Any, index: int, size: int, nmeta: int = 1) -> None:
        self.size = size
        self.buf = ffi.new("char[]", size)
        self.view = ffi.buffer(self.buf)
        self.nmeta = nmeta
        self.arr = array("I", bytes(12 * nmeta))
        self.arr[2] = _UNTAKEN  # the engine writes this word only when it commits a take
        self.meta = ffi.from_buffer("uint32_t[]", self.arr)
        self.one = ffi.new("struct mq_fetch1 *")
        self.one.timeout_s = 0.0
        self.timeout: float = 0  # an int, as fetch()'s default: compared at C speed
        fb = self.fb = ffi.addressof(self.one, "fb")
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
        self._ctx = ffi.new("struct mq_addctx *")  # (ns, index) for mq_add_to
        self._ctx.ns = self._ns
        self._ctx.q = index
        self._what = f"queue {definition.name!r}"

    def _fail(self, rc: int) -> MQueueError:
        if rc == lib.MQ_ECLOSED or self._ns == ffi.NULL:
            return self._mq._closed_error(
                MQueueError(f"{self._what}: the namespace handle is closed")
            )
        return ll.error_for(rc, self._what)

    def add(self, key: Data, value: Data) -> bool:
        # The hot path: the two common cases inline, then one C call.
        if type(key) is str and type(value) is str:
            try:
                kb = key.encode()
                vb = value.encode()
                flags = _BOTH_STR
            except UnicodeEncodeError:
                kb, vb, flags = _encode_pair(key, value)
        elif type(key) is bytes and type(value) is bytes:
            kb = key
            vb = value
            flags = 0
        else:
            kb, vb, flags = _encode_pair(key, value)
        rc: int = _mq_add_to(self._ctx, kb, len(kb), vb, len(vb), flags)
        if rc >= 0:
            return rc == 1
        if rc in _AGAIN:  # a signal or a long lock wait: handlers ran, try again
            rc = _again(_mq_add_to, self._ctx, kb, len(kb), vb, len(vb), flags)
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
        rc = _again(lib.mq_add_many_sep, self._ns, self._index, data, len(data), n, flags)
        if rc >= 0:
            return rc
        if rc == lib.MQ_EINVAL:
            return self._add_many_general(zip(keys, values, strict=True))
        raise self._fail(rc)

    def _add_many_raw(self, data: bytes, lens3: array[int], n: int) -> int:
        clens = ffi.from_buffer("uint32_t[]", lens3)
        rc = _again(lib.mq_add_many, self._ns, self._index, data, len(data), clens, n)
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
            raise ll.error_for(lib.MQ_ETOOBIG, self._what) from None
        return self._add_many_raw(b"".join(parts), lens3, n)

    # Items the engine took are the caller's: they must reach it or stay
    # where the next fetch of this handle finds them, whatever exception (a
    # signal handler's, Ctrl-C) lands at whatever call boundary.  The record of
    # a take is the first item's flags word, arr[2]: set to _UNTAKEN before
    # each call, written by the engine only when it commits a take (fb.taken,
    # which the engine zeroes only once entered, then says how many).  Until
    # the items are handed over, the buffer is referenced only by this call;
    # an exception that leaves the call runs the handler, whose first steps
    # (no call among them, so no second exception can land before they are
    # done) keep the buffer in _undelivered when it holds a take.  The
    # hand-over itself (buffer back to the handle, held item set, return) has
    # no call in it either.

    def fetch(self, timeout: float | None = 0) -> Item | None:
        # the timeout goes to C in seconds (C computes the deadline); checked
        # first, so that a refused call changes nothing (not even the held item)
        if timeout is None:
            t = -1.0
        elif (timeout.__class__ is int or timeout.__class__ is float) and 0 <= timeout < 1e9:
            t = timeout
        else:
            t = check_timeout(timeout)
        if self._undelivered:  # taken by a call an exception cut short
            kept = self._deliver()
            if kept is not None:
                return kept
        self._held = None
        b = self._bufs
        self._bufs = None  # another thread using this handle meanwhile gets its own
        if b is None:
            b = _Buffers(self._ns, self._index, _INITIAL_BUF)
        if b.timeout != t:
            b.one.timeout_s = b.timeout = t
        # The engine zeroes fb.taken on entry, but an exception can land at
        # the call boundary before it is entered: fb.taken then still counts
        # an earlier take of this buffer (this path's or _take's), whose items
        # would be handed out again.  So "taken" is the flags word, as in
        # _take: written by the engine only when it commits a take (a store
        # into the array, cheaper than one into fb; no call: nothing lands).
        b.arr[2] = _UNTAKEN
        try:
            # The hot path: one call with one argument; its result is the
            # length of "key NUL value" in the buffer << 3 | KEYNUL | flags.
            rc: int = _mq_fetch_one(b.one)
            if rc > 0:
                fl = rc & _ONE_LOW
                raw = b.view[0 : rc >> _ONE_SHIFT]
                if fl == _BOTH_STR:  # no NUL in the key: the first NUL ends it
                    try:
                        k, _, v = raw.decode().partition("\0")
                        item = _new_tuple(Item, (k, v))
                    except UnicodeDecodeError:  # lone surrogates, as add encoded them
                        item = self._decode_records(raw, b.arr[0:3].tolist())[0]
                elif fl == 0:
                    k, _, v = raw.partition(b"\0")
                    item = _new_tuple(Item, (k, v))
                else:  # mixed str/bytes, or a NUL in the key
                    item = self._decode_records(raw, b.arr[0:3].tolist())[0]
                self._bufs = b  # the hand-over: no call from here to the return
                self._held = item
                return item
        except CorruptSegmentError:
            b.arr[2] = _UNTAKEN  # a damaged record: it cannot be handed out
            if self._bufs is None:
                self._bufs = b
            raise
        except BaseException:
            if b.arr[2] != _UNTAKEN:  # taken, not handed over: for the next fetch
                self._undelivered += ((b, 0, 0),)
                self._kept_raw += 1
            elif self._bufs is None:
                self._bufs = b
            raise
        self._bufs = b
        if rc == 0:
            return None
        items = self._take(1, t, b.fb.deadline if rc in _AGAIN else None)
        if not items:
            return None
        item = items[0]
        self._held = item
        return item

    def _expand_kept(self, upto: int) -> None:
        """Decode kept buffers into their Items, in place, until the first
        ``upto`` entries of _undelivered are Items.  An entry is (buffer,
        first item not decoded, its byte offset); each step
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
            b, start, off = x
            try:
                items, off2 = self._decode_kept(b, start, off)
            except MQueueError:  # damaged records: the rest of this take is dropped
                if u[i : i + 1] == [x]:
                    del u[i]
                    self._kept_raw -= 1
                raise
            done = start + len(items) >= b.fb.taken
            new = items if done else items + [(b, start + len(items), off2)]
            if u[i : i + 1] == [x]:  # no call from this check to the count's update
                u[i : i + 1] = new
                if done:
                    self._kept_raw -= 1

    def _decode_kept(self, b: _Buffers, start: int, off: int) -> tuple[list[Item], int]:
        """Up to _KEPT_STEP Items of a kept buffer (as mq_fetch_batch left it)
        from item ``start`` (at byte ``off``), and the byte offset after them."""
        stop = min(b.fb.taken, start + _KEPT_STEP)
        meta = b.arr[3 * start : 3 * stop].tolist()
        end = off + sum(meta[0::3]) + sum(meta[1::3]) + 2 * (stop - start)
        return self._decode_records(b.view[off:end], meta), end

    def _decode_records(self, raw: bytes, meta: list[int]) -> list[Item]:
        """The Items of records packed in raw as mq_fetch_batch packs them
        (every key and value followed by a NUL), with their metadata words
        (klen, vlen, flags per item)."""
        out: list[Item] = []
        append = out.append
        off = 0
        try:
            for i in range(0, len(meta), 3):
                kl, vl, fl = meta[i], meta[i + 1], meta[i + 2]
                k = raw[off : off + kl]
                off += kl + 1
                v = raw[off : off + vl]
                off += vl + 1
                append(
                    _new_tuple(
                        Item,
                        (
                            _dec(k) if fl & FLAG_KEY_STR else k,
                            _dec(v) if fl & FLAG_VAL_STR else v,
                        ),
                    )
                )
        except UnicodeDecodeError:
            raise ll.error_for(lib.MQ_ECORRUPT, self._what) from None
        return out

    def _take(self, n: int, timeout: float, deadline: int | None = None) -> list[Item]:
        """Take up to n items, waiting up to ``timeout`` seconds (< 0: forever)
        while the queue is empty, or until ``deadline`` (CLOCK_MONOTONIC ns,
        -1 forever) when a wait cut into slices (MQ_EAGAIN) or interrupted by a
        signal (MQ_EINTR) goes on: Python runs its signal handlers between two
        calls, and a handler that raises ends the wait.  (See fetch for how
        taken items survive an exception.)  The slow path of ``fetch`` and
        the whole of ``fetch_many`` (through :meth:`Queue.fetch_many`)."""
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
                rc: int = _mq_fetch_batch(b.fb, want, timeout)
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
                self._undelivered += ((b, 0, 0),)
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
            if info & _UNIFORM_NONUL == _UNIFORM_NONUL and (info >> 8) in (0, _BOTH_STR):
                # Fast path: one split in C, Items made by C-level starmap().
                if info >> 8:
                    try:
                        parts: list[Any] = raw.decode().split("\0")
                    except UnicodeDecodeError:
                        parts = raw.decode("utf-8", "surrogatepass").split("\0")
                else:
                    parts = raw.split(b"\0")
                parts.pop()  # after the last NUL
                it = iter(parts)
                pairs = zip(it, it, strict=False)  # 2n pieces
                return list(starmap(_new_tuple, zip(_ITEMS, pairs, strict=False)))
            return self._decode_records(raw, b.arr[: 3 * n].tolist())
        except UnicodeDecodeError:
            raise ll.error_for(lib.MQ_ECORRUPT, self._what) from None

    def _grow_if_needed(self, b: _Buffers, got: int, want: int, used: int) -> None:
        """Next time, a larger buffer when this one limited a batch."""
        if got < want and 2 * used > b.size and b.size < _MAX_BUF:
            self._bufs = _Buffers(self._ns, self._index, 2 * b.size, b.nmeta)

    # -- reserve / settle / load (persistence and the CLI's fetch; issue 9) --

    def _reserve(
        self, n: int, tag: int, max_bytes: int = _INITIAL_BUF, db: int = 0
    ) -> list[Item]:
        """Take up to ``n`` of the oldest items into this queue's reservation
        tagged ``tag`` (1..2**64-1), as many as ``max_bytes`` bytes of keys and
        values hold (at least one; each key and value takes one byte more).
        The items are no longer queued, and not lost: until :meth:`_settle`
        they stay in the segment, and another process can settle them after
        this one died.  ``db`` (0..2**64-1) is recorded with the reservation in
        the same commit: the fingerprint of the database a save writes to (0:
        none, the command line's fetch).  Returns them ([] when the queue is
        empty).
        Raises ReservationBusy when a reservation is already pending."""
        b = _Buffers(self._ns, self._index, max(64, max_bytes), max(1, min(n, 1 << 26)))
        want = max(1, min(n, b.nmeta))
        while True:
            rc: int = lib.mq_reserve(b.fb, want, tag, db)
            if rc >= 0:
                break
            if rc == _EBUF:
                b = _Buffers(self._ns, self._index, int(b.arr[0]) + 64, b.nmeta)
                continue
            if rc == lib.MQ_EBUSY:
                raise ReservationBusy(f"{self._what}: {ll.strerror(rc)}")
            if rc not in _AGAIN:
                raise self._fail(rc)
        if rc == 0:
            return []
        return self._decode_batch(b, rc)

    def _settle(self, tag: int, commit: bool) -> bool:
        """Settle the reservation tagged ``tag``: ``commit`` drops it (its items
        are done), otherwise its items go back to the head in their order.
        Returns False when no such reservation is pending (settled already, or
        dropped as the oldest items by a bounded queue short of bytes)."""
        rc = _again(lib.mq_settle, self._ns, self._index, tag, 1 if commit else 0)
        if rc == 0:
            return True
        if rc == lib.MQ_ENORSV:
            return False
        raise self._fail(rc)

    def _reservation(self) -> Reservation:
        """The pending reservation (tag 0: none) and the last load tag."""
        info = ffi.new("struct mq_rsvinfo *")
        rc = _again(lib.mq_reservation, self._ns, self._index, info)
        if rc < 0:
            raise self._fail(rc)
        return Reservation(
            int(info.tag),
            int(info.count),
            bool(info.owner_alive),
            bool(info.mine),
            int(info.load_tag),
            int(info.db),
        )

    def _load(self, tag: int, items: Sequence[tuple[Data, Data]]) -> int | None:
        """Add ``items`` in one all-or-nothing step that also records ``tag`` as
        this queue's load tag.  Returns the number stored, or None when the
        load tag already is ``tag`` (applied before: nothing done).  A bounded
        queue keeps the newest items that fit (the others count as evicted)."""
        parts: list[bytes] = []
        lens: list[int] = []
        for key, value in items:
            kb, vb, flags = _encode_pair(key, value)
            parts.append(kb)
            parts.append(vb)
            lens += (len(kb), len(vb), flags)
        try:
            lens3 = array("I", lens)
        except OverflowError:
            raise ll.error_for(lib.MQ_ETOOBIG, self._what) from None
        data = b"".join(parts)
        clens = ffi.from_buffer("uint32_t[]", lens3) if lens else ffi.NULL
        rc = _again(lib.mq_load, self._ns, self._index, tag, data, len(data), clens, len(items))
        if rc >= 0:
            return rc
        if rc == lib.MQ_EAPPLIED:
            return None
        if rc == lib.MQ_ENOSTEP:
            raise QueueFullError(
                f"{self._what}: the load does not fit the queue in one step "
                "(no count bound and not enough free bytes); nothing added"
            )
        raise self._fail(rc)

    def _stats_raw(self) -> Any:
        st = ffi.new("struct mq_stats *")
        rc = _again(lib.mq_stats, self._ns, self._index, st)
        if rc < 0:
            raise self._fail(rc)
        return st

    def __len__(self) -> int:
        out = ffi.new("uint64_t *")
        rc = _again(lib.mq_count, self._ns, self._index, out)
        if rc < 0:
            raise self._fail(rc)
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
    """A namespace in POSIX shared memory (see :class:`mqueue.MQueue`).

    Every handle a process opens on one segment shares that process's mapping
    and liveness slot (the engine's ``mq_clone``): the 1024 slots count
    processes, not handles."""

    def __init__(
        self,
        namespace: str,
        ns: Any,
        definitions: Sequence[QueueDef],
        *,
        key: tuple[int, int],
        db_url: str | None,
        creator: bool,
    ) -> None:
        self._ns = ns
        self._key = key  # (st_dev, st_ino) of the segment: which mapping to share
        super().__init__(namespace, definitions, ShmQueue, db_url=db_url, creator=creator)
        self._finalizer = weakref.finalize(self, lib.mq_free, ns)
        _share(self)

    @property
    def slot(self) -> int:
        """This process's liveness slot in the namespace (diagnostics)."""
        return int(lib.mq_slot(self._ns)) if not self._closed else -1

    def _release(self) -> None:
        for q in self._queues.values():
            q._ns = ffi.NULL  # type: ignore[attr-defined]
            q._ctx.ns = ffi.NULL  # type: ignore[attr-defined]
        # Detach now (after calls other threads have in flight through this
        # handle); the last handle of this process on the segment unmaps it.
        # The small C struct is freed by the finalizer once nothing refers to it.
        refs = _shared.get((os.getpid(), *self._key))
        if refs is not None:
            refs.pop(id(self), None)
            if not refs:
                _shared.pop((os.getpid(), *self._key), None)
        lib.mq_detach(self._ns)

    def _reattach_in_child(self) -> None:
        """Give this process its own liveness slot (the inherited mapping holds
        the parent's).  Handles sharing a mapping share the new slot.  When
        that fails (no free slot, or the namespace is gone) the engine leaves
        the handle broken: its first use raises TooManyProcessesError or
        NamespaceLostError instead of acting on the parent's liveness."""
        try:
            new: posix_ipc.SharedMemory | None = posix_ipc.SharedMemory(shm_name(self.namespace))
        except Exception:
            new = None  # the name is gone (or not ours to open): the handle is lost
        try:
            rc = lib.mq_reattach(self._ns, new.fd if new is not None else -1)
        finally:
            if new is not None:
                with contextlib.suppress(Exception):
                    new.close_fd()
        if rc == 0:
            _share(self)


# Per process, the open handles whose mapping a new handle on the same
# segment may share: (pid, st_dev, st_ino) -> {id(handle): weakref}.  Plain
# dict operations under the GIL (no lock to inherit across fork); a race only
# costs a second mapping.
_shared: dict[tuple[int, int, int], dict[int, weakref.ref[ShmNamespace]]] = {}


def _share(mq: ShmNamespace) -> None:
    """Offer mq's mapping to the next handles this process opens on the segment."""
    pid = os.getpid()
    key = (pid, *mq._key)
    for k in [k for k in list(_shared) if k[0] != pid]:  # a parent's entries (after fork)
        _shared.pop(k, None)
    _shared.setdefault(key, {})[id(mq)] = weakref.ref(mq, partial(_forget, key, id(mq)))


def _forget(key: tuple[int, int, int], ident: int, ref: weakref.ref[ShmNamespace]) -> None:
    refs = _shared.get(key)
    if refs is not None and refs.get(ident) is ref:
        del refs[ident]
        if not refs:
            _shared.pop(key, None)


def _clone_of(key: tuple[int, int]) -> tuple[Any, list[QueueDef]] | None:
    """A new engine handle on this process's mapping of the segment, with its
    definitions, or None when this process has no usable handle on it."""
    refs = _shared.get((os.getpid(), *key))
    if not refs:
        return None
    out = ffi.new("mq_ns **")
    for ref in list(refs.values()):
        other = ref()
        if other is None or other._closed:
            continue
        if lib.mq_clone(other._ns, out) == 0:  # else closed, broken or lost meanwhile
            return out[0], list(other.definitions)
    return None


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
        rc = _again(lib.mq_stats, ns, i, st)
        if rc != 0:
            raise ll.error_for(rc, f"namespace {namespace!r}, queue {d.name!r}")
        if (
            st.addmode != d.addmode
            or st.size_limit != d.size
            or st.capacity != align8(d.nbytes)
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


Owners = Iterable[int | str]


def _owner_uids(allow_owners: Owners) -> frozenset[int]:
    """The uids of ``allow_owners`` (uids or user names)."""
    if isinstance(allow_owners, (str, bytes, int)):
        allow_owners = (allow_owners,)  # type: ignore[assignment]
    try:
        owners = list(allow_owners)
    except TypeError:
        raise ArgumentTypeError(
            f"allow_owners must be an iterable of uids or user names, "
            f"not {type(allow_owners).__name__}"
        ) from None
    uids = set()
    for o in owners:
        if isinstance(o, bool) or not isinstance(o, (int, str)):
            raise ArgumentTypeError(f"allow_owners: {o!r} is neither a uid nor a user name")
        if isinstance(o, int):
            if o < 0:
                raise ArgumentError(f"allow_owners: {o} is not a uid")
            uids.add(o)
            continue
        try:
            uids.add(pwd.getpwnam(o).pw_uid)
        except KeyError:
            if o.isdigit():
                uids.add(int(o))
            else:
                raise ArgumentError(f"allow_owners: no user named {o!r}") from None
    return frozenset(uids)


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _check_trust(
    namespace: str, st: os.stat_result, owners: frozenset[int], world_ok: bool, *, creating: bool
) -> None:
    """Refuse a segment this caller should not trust, from fstat of the opened
    descriptor (never stat of the path: no check-then-use race).  As OpenSSH's
    StrictModes and systemd do for files in shared directories: the owner must
    be the caller (or root, for attach) or explicitly allowed, and nobody else
    may write to it unless explicitly allowed."""
    if not stat.S_ISREG(st.st_mode):
        raise CorruptSegmentError(f"namespace {namespace!r}: not a regular file in {SHM_DIR}")
    me = os.geteuid()
    if not (st.st_uid == me or st.st_uid in owners or (st.st_uid == 0 and not creating)):
        how = (
            "create(..., exist_ok=True, allow_owners=...)"
            if creating
            else "attach(..., allow_owners=...)"
        )
        raise AccessDeniedError(
            f"namespace {namespace!r} is owned by {_user(st.st_uid)}, not by you ({_user(me)})"
            + ("" if creating else " or root")
            + f"; refusing it (another user may have made it to read your items). "
            f"To share a namespace between users on purpose, name its owner: {how}"
        )
    if st.st_mode & 0o002 and not world_ok:
        raise AccessDeniedError(
            f"namespace {namespace!r} is world-writable (mode {stat.S_IMODE(st.st_mode):o}): "
            "any local user can read or change its items; refusing it.  Pass "
            "allow_world_writable=True to use it anyway"
        )


def _attach(
    namespace: str,
    owners: frozenset[int],
    world_ok: bool,
    *,
    creating: bool,
    wait_s: float = ATTACH_WAIT_S,
) -> ShmNamespace:
    name = shm_name(namespace)
    give_up = time.monotonic() + wait_s
    out = ffi.new("mq_ns **")
    while True:
        try:
            shm = posix_ipc.SharedMemory(name)
        except Exception as e:
            raise _open_error(e, namespace) from None
        try:
            st = os.fstat(shm.fd)
            _check_trust(namespace, st, owners, world_ok, creating=creating)
            key = (st.st_dev, st.st_ino)
            if st.st_nlink == 0:  # destroyed between our open and now: look again
                rc = lib.MQ_ENOTREADY
            elif (shared := _clone_of(key)) is not None:
                return ShmNamespace(
                    namespace, shared[0], shared[1], key=key, db_url=None, creator=False
                )
            else:
                rc = lib.mq_attach(shm.fd, out)
        finally:
            shm.close_fd()  # the engine keeps its own duplicate
        if rc == 0:
            break
        if rc == lib.MQ_ENOTREADY and time.monotonic() < give_up:
            time.sleep(0.005)
            continue
        if rc == lib.MQ_ENOTREADY:
            raise NamespaceIncompleteError(
                f"namespace {namespace!r} is still being created by a live process "
                f"after {wait_s:g} s; try again later",
                creator_alive=True,
            )
        raise ll.error_for(rc, f"namespace {namespace!r}")
    try:
        defs = _read_meta(out[0], namespace)
    except BaseException:
        lib.mq_free(out[0])  # nothing else refers to this handle
        raise
    return ShmNamespace(namespace, out[0], defs, key=key, db_url=None, creator=False)


def attach(
    namespace: str,
    *,
    url: None = None,
    allow_owners: Owners = (),
    allow_world_writable: bool = False,
) -> ShmNamespace:
    """Attach to an existing shared-memory namespace.

    Refuses (AccessDeniedError) a segment owned by a user other than the
    caller or root unless its owner is in ``allow_owners`` (uids or user
    names), and a world-writable one unless ``allow_world_writable``."""
    owners = _owner_uids(allow_owners)
    return _attach(namespace, owners, bool(allow_world_writable), creating=False)


def _remove_half_made(namespace: str, owners: frozenset[int], world_ok: bool) -> None:
    """Remove the segment under the name if it is still one whose creator
    died (and ours to remove).  Safe against other recoverers and creators:
    the remover holds the creator lock of the very inode it examined, checks
    that the name still names it, and only then unlinks; anything else (a
    live creator, another recoverer, a new segment) is left alone."""
    name = shm_name(namespace)
    try:
        shm = posix_ipc.SharedMemory(name)
    except Exception:
        return  # gone already
    try:
        st = os.fstat(shm.fd)
        _check_trust(namespace, st, owners, world_ok, creating=True)
        if lib.mq_creator_lock(shm.fd) != 0:
            return  # a live creator or another recoverer has it
        out = ffi.new("mq_ns **")
        rc = lib.mq_attach(shm.fd, out)  # our own lock does not count as a live creator
        if rc == 0:
            lib.mq_free(out[0])
            return  # finished after all
        if rc != lib.MQ_EHALFMADE:
            return
        try:
            now = os.stat(os.path.join(SHM_DIR, name[1:]))
        except OSError:
            return
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            return  # the name names another segment now
        logger.info("namespace %r: removing a segment its creator left half-made", namespace)
        try:
            posix_ipc.unlink_shared_memory(name)
        except posix_ipc.ExistentialError:
            pass  # someone else removed it meanwhile
        except Exception as e:
            raise _open_error(e, namespace) from None
    finally:
        shm.close_fd()


def create(
    namespace: str,
    defs: Sequence[QueueDef],
    *,
    mode: int = 0o600,
    exist_ok: bool = False,
    db_url: str | None = None,
    url: None = None,
    allow_owners: Owners = (),
    allow_world_writable: bool = False,
) -> ShmNamespace:
    """Create a shared-memory namespace holding these queues.

    With ``exist_ok`` an existing namespace with the same definitions is
    attached, only if the caller owns it (or its owner is in
    ``allow_owners``) and it is not world-writable (unless
    ``allow_world_writable``); one its creator left half-made (killed during
    create) is removed and created afresh."""
    name = shm_name(namespace)
    check_mode(mode)
    if len(defs) > lib.MQ_MAX_QUEUES:
        raise DefinitionError(
            f"namespace {namespace!r}: {len(defs)} queues defined; a namespace holds at most "
            f"{lib.MQ_MAX_QUEUES} (MQ_MAX_QUEUES)"
        )
    owners = _owner_uids(allow_owners)
    world_ok = bool(allow_world_writable)
    meta = _meta(namespace, defs)
    params = _params(defs)
    size_out = ffi.new("uint64_t *")
    rc = lib.mq_segment_size(len(defs), params, len(meta), size_out)
    if rc != 0:
        raise ll.error_for(rc, f"namespace {namespace!r}")
    size = int(size_out[0])
    give_up = time.monotonic() + ATTACH_WAIT_S
    for _round in range(1000):  # each round: the name changed under us
        try:
            # size 0: nothing but the O_EXCL open, so the creator lock comes first
            shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=mode, size=0)
        except posix_ipc.ExistentialError:
            if not exist_ok:
                raise NamespaceExistsError(f"namespace {namespace!r} already exists") from None
            try:
                mq = _attach(
                    namespace,
                    owners,
                    world_ok,
                    creating=True,
                    wait_s=max(0.0, give_up - time.monotonic()),
                )
            except NamespaceNotFoundError:
                continue  # destroyed meanwhile (or lost): create it
            except NamespaceIncompleteError as e:
                if e.creator_alive:
                    raise
                _remove_half_made(namespace, owners, world_ok)
                continue  # start afresh (or attach whoever else did)
            if mq.definitions != list(defs):
                mq.close()
                raise NamespaceExistsError(
                    f"namespace {namespace!r} already exists with other queue definitions"
                ) from None
            return mq
        except posix_ipc.PermissionsError:
            raise AccessDeniedError(f"namespace {namespace!r}: permission denied") from None
        except ValueError as e:  # posix_ipc refuses some names/sizes
            raise MQueueError(
                f"namespace {namespace!r}: cannot create shared memory: {e}"
            ) from None
        break
    else:
        raise MQueueError(
            f"namespace {namespace!r} keeps being removed and made again by other processes"
        )
    out = ffi.new("mq_ns **")
    try:
        rc = lib.mq_creator_lock(shm.fd)  # held until the segment is ready
        if rc != 0:
            raise ll.error_for(rc, f"namespace {namespace!r}")
        os.fchmod(shm.fd, mode)  # exactly `mode`, whatever the umask
        os.ftruncate(shm.fd, size)
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
            raise ll.error_for(rc, f"namespace {namespace!r}")
        st = os.fstat(shm.fd)
        if st.st_nlink == 0:  # destroyed while we were making it
            lib.mq_free(out[0])
            raise ll.error_for(lib.MQ_ELOST, f"namespace {namespace!r}")
    except BaseException:
        try:
            _unlink_if_ours(name, shm.fd)
        finally:
            shm.close_fd()
        raise
    shm.close_fd()  # the engine keeps its own duplicate
    return ShmNamespace(
        namespace, out[0], defs, key=(st.st_dev, st.st_ino), db_url=db_url, creator=True
    )


def _unlink_if_ours(name: str, fd: int) -> None:
    """Remove the name if it still names the segment open as fd (a failed
    create must not remove a segment someone made after destroying ours)."""
    with contextlib.suppress(OSError, posix_ipc.ExistentialError):
        mine = os.fstat(fd)
        now = os.stat(os.path.join(SHM_DIR, name[1:]))
        if (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            posix_ipc.unlink_shared_memory(name)


def destroy(namespace: str, *, url: None = None) -> None:
    """Remove a namespace's segment.  Every process still attached gets
    NamespaceLostError on its next call (a blocked fetch at once)."""
    name = shm_name(namespace)  # a bad name is a DefinitionError (ValueError)
    try:
        shm: posix_ipc.SharedMemory | None = posix_ipc.SharedMemory(name)
    except posix_ipc.ExistentialError as e:
        raise _open_error(e, namespace) from None
    except Exception:
        shm = None  # not ours to open: removing it may still be allowed
    try:
        try:
            posix_ipc.unlink_shared_memory(name)
        except Exception as e:
            raise _open_error(e, namespace) from None
        # Marked after the unlink succeeded, so a refused destroy changes
        # nothing; through the descriptor opened before it, so the mark goes
        # to the segment that was removed, never to a new one of that name.
        if shm is not None:
            lib.mq_mark_lost(shm.fd)  # not an mqueue segment: nothing to mark
    finally:
        if shm is not None:
            shm.close_fd()


__all__ = ["ShmNamespace", "ShmQueue", "attach", "create", "destroy", "list_namespaces", "shm_name"]
