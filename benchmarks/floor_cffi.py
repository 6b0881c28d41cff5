"""How fast can any cffi (API mode) queue be from Python? A floor, measured beside the peers.

The floor is the cheapest correct 1 -> 1 queue this script could write: a lock-free
single-producer/single-consumer byte ring in a shared mapping (the producer alone
writes the tail, the consumer alone the head, each keeps a cached copy of the other
index, as ck_ring, kfifo and the Disruptor do), built with cffi in API mode into a
temporary directory with the engine's compiler flags (csrc/build_ffi.py).  It does
strictly less than mqueue: no lock, no crash safety, no eviction, no key index, no
wake-ups (an empty fetch spins in C, then yields the CPU between looks), no bytes/str
flags, and a key or value must not hold a NUL (mqueue accepts them).  Around it, the
cheapest Python calls found that keep mqueue's call shapes:

- ``add(key, value)``: two ``str.encode`` and one cffi call with two ``char *``
  arguments (the lengths by ``strlen`` in C, which is why NULs are excluded);
- ``fetch(timeout)``: one cffi call with one pointer argument (the record is copied
  into a buffer, the result is its length), then ``ffi.unpack``, one UTF-8 decode,
  one ``split`` and an ``Item`` (a tuple subclass of two ``str``, built from the list);
- ``add_many(pairs)``: ``zip(*pairs, strict=True)``, one ``join`` of the keys then the values with
  NULs, one encode, one call (split into records in C), as mqueue does;
- ``fetch_many(n)``: one call copying up to n records ``k NUL v NUL ...``, one decode,
  one split, ``map(Item, zip(it, it, strict=True))``.

The run moves the same items as ``throughput.py`` (16 + 64 chars, 300,000 by default)
between two processes for every peer, rounds interleaved, and prints every round's
ratios and the medians: floor / mp.Queue, floor / pyzmq, floor batches / faster-fifo
batches, mqueue / floor; and a variant of the floor's fetch returning plain tuples
(outside mqueue's contract) for what the Item type costs.  ``--callgrind`` instead
counts instructions per call of the floor's and mqueue's calls under valgrind (as
``profile_calls.py`` does); ``--gc`` times, in one process, taking and keeping the
items with the cyclic GC on and off (floor with Items, with plain tuples, mqueue).

    python benchmarks/floor_cffi.py [-n ITEMS] [-r ROUNDS]
    python benchmarks/floor_cffi.py --callgrind       # needs valgrind
    python benchmarks/floor_cffi.py --gc              # the cyclic GC's share, one process
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common
import profile_calls
import throughput
from common import Item as Pair

HERE = Path(__file__).resolve().parent
RING_BYTES = 64 << 20  # as throughput.py's mqueue queue (bytes=64M): never full here
FETCH_BUF = 1 << 20  # the consumer's copy-out buffer (fetch_many stops when full)

CDEF = """
int fl_create(uint64_t cap);
void fl_destroy(void);
int fl_add(const char *k, const char *v);
int64_t fl_add_many(const char *data, size_t len, uint32_t n);
int64_t fl_fetch(char *out);
int64_t fl_fetch_many(char *out, uint32_t n);
"""

# The ring: two index lines, then the data.  A record is a uint32 length, the
# body ("key NUL value") and padding to 8 bytes; a length of WRAP sends the
# reader to the start of the ring.  Indexes count bytes since creation.
CSRC = r"""
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define WRAP 0xffffffffu
#define SPIN 2000              /* looks an empty fetch takes in C before returning */
#define PAUSES 200             /* of which with a pause; then sched_yield between looks */
#define OUTSIZE %(outsize)d

struct ring {
    _Atomic uint64_t tail;     /* written by the producer only */
    char pad1[56];
    _Atomic uint64_t head;     /* written by the consumer only */
    char pad2[56];
};

static struct ring *R;         /* the mapping (inherited by fork) */
static char *D;                /* its data area */
static uint64_t CAP;           /* data bytes, a power of two */
static uint64_t p_tail, p_head_seen;   /* the producer's own tail, its copy of head */
static uint64_t c_head, c_tail_seen;   /* the consumer's own head, its copy of tail */

/* Maps a fresh ring of cap bytes (a power of two) shared with children forked
 * later.  Returns 0, or -1 (nothing mapped). */
int fl_create(uint64_t cap) {
    void *m = mmap(NULL, sizeof(struct ring) + cap, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return -1;
    R = m;
    D = (char *)m + sizeof(struct ring);
    CAP = cap;
    p_tail = p_head_seen = c_head = c_tail_seen = 0;
    return 0;
}

/* Unmaps the ring; returns nothing. */
void fl_destroy(void) {
    if (R) munmap(R, sizeof(struct ring) + CAP);
    R = NULL;
}

/* Room for one record of len body bytes at the producer's tail: returns where
 * it starts (writing a wrap marker first if needed), or NULL when the ring is
 * full (nothing written).  Advances *t past the record. */
static char *reserve(uint64_t *t, size_t len) {
    uint64_t need = (4 + len + 7) & ~(uint64_t)7;
    uint64_t off = *t & (CAP - 1), skip = off + need > CAP ? CAP - off : 0;
    if (*t + skip + need - p_head_seen > CAP) {
        /* acquire: the consumer's copy-out of the bytes it freed happened before */
        p_head_seen = atomic_load_explicit(&R->head, memory_order_acquire);
        if (*t + skip + need - p_head_seen > CAP) return NULL;
    }
    if (skip) { memcpy(D + off, &(uint32_t){WRAP}, 4); *t += skip; off = 0; }
    uint32_t l = (uint32_t)len;
    memcpy(D + off, &l, 4);
    *t += need;
    return D + off + 4;
}

/* Adds key NUL value (both NUL-terminated).  Returns 1, or 0 when full. */
int fl_add(const char *k, const char *v) {
    size_t kl = strlen(k), vl = strlen(v);
    uint64_t t = p_tail;
    char *p = reserve(&t, kl + 1 + vl);
    if (!p) return 0;
    memcpy(p, k, kl + 1);
    memcpy(p + kl + 1, v, vl);
    p_tail = t;
    /* release: the record's bytes are visible before the tail that covers them */
    atomic_store_explicit(&R->tail, t, memory_order_release);
    return 1;
}

/* Adds n items from the len bytes "k1 NUL k2 ... kn NUL v1 NUL v2 ... vn" (the
 * keys, then the values) as records, all or none.  Returns n, 0 when they do
 * not all fit, -1 when the data does not hold n keys (nothing published). */
int64_t fl_add_many(const char *data, size_t len, uint32_t n) {
    const char *end = data + len, *k = data, *v = data;
    for (uint32_t i = 0; i < n; i++) {
        v = memchr(v, 0, (size_t)(end - v));
        if (!v) return -1;
        v++;
    }
    uint64_t t = p_tail;
    for (uint32_t i = 0; i < n; i++) {
        const char *ke = memchr(k, 0, (size_t)(end - k));
        const char *ve = memchr(v, 0, (size_t)(end - v));
        if (!ve) ve = end;
        size_t kl = (size_t)(ke - k), vl = (size_t)(ve - v);
        char *dst = reserve(&t, kl + 1 + vl);
        if (!dst) return 0;
        memcpy(dst, k, kl + 1);
        memcpy(dst + kl + 1, v, vl);
        k = ke + 1;
        v = ve + 1;
    }
    p_tail = t;
    /* release: every record's bytes are visible before the tail that covers them */
    atomic_store_explicit(&R->tail, t, memory_order_release);
    return n;
}

/* Waits (spinning, then yielding the CPU, SPIN looks at most) until a record
 * is there.  Returns 1, or 0 when the ring stayed empty. */
static int await_record(void) {
    for (int i = 0; c_head == c_tail_seen; i++) {
        if (i == SPIN) return 0;
        if (i >= PAUSES) sched_yield();  /* a result: nothing to check, just a hint */
        else if (i) __builtin_ia32_pause();
        /* acquire: the producer's record bytes happened before this tail */
        c_tail_seen = atomic_load_explicit(&R->tail, memory_order_acquire);
    }
    return 1;
}

/* The next record's body, skipping a wrap marker; advances c_head past it. */
static const char *next_record(uint32_t *len) {
    uint32_t l;
    memcpy(&l, D + (c_head & (CAP - 1)), 4);
    if (l == WRAP) {
        c_head += CAP - (c_head & (CAP - 1));
        memcpy(&l, D + (c_head & (CAP - 1)), 4);
    }
    const char *p = D + (c_head & (CAP - 1)) + 4;
    c_head += (4 + (uint64_t)l + 7) & ~(uint64_t)7;
    *len = l;
    return p;
}

/* Copies one record's body into out (OUTSIZE bytes).  Returns its length, or
 * -1 when the ring stayed empty (nothing taken). */
int64_t fl_fetch(char *out) {
    if (!await_record()) return -1;
    uint32_t l;
    const char *p = next_record(&l);
    memcpy(out, p, l);
    /* release: the copy-out is done before the producer may reuse the bytes */
    atomic_store_explicit(&R->head, c_head, memory_order_release);
    return l;
}

/* Copies up to n records as "k NUL v NUL k NUL v" into out (stopping before
 * OUTSIZE).  Returns the bytes written (no trailing NUL), -1 when empty. */
int64_t fl_fetch_many(char *out, uint32_t n) {
    if (!await_record()) return -1;
    size_t w = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (c_head == c_tail_seen) break;
        uint64_t before = c_head;
        uint32_t l;
        const char *p = next_record(&l);
        if (w + l + 1 > OUTSIZE) { c_head = before; break; }
        memcpy(out + w, p, l);
        out[w + l] = 0;
        w += l + 1;
    }
    /* release: the copy-out is done before the producer may reuse the bytes */
    atomic_store_explicit(&R->head, c_head, memory_order_release);
    return w ? (int64_t)w - 1 : -1;
}
"""


def compile_flags() -> tuple[list[str], list[str]]:
    """The engine's compile and link flags, from csrc/build_ffi.py."""
    sys.path.insert(0, str(HERE.parent / "csrc"))
    try:
        b = importlib.import_module("build_ffi")
    finally:
        sys.path.pop(0)
    return list(b.CFLAGS), ["-O2", "-flto"]


def build(tmp: str) -> Any:
    """Builds the floor's extension (module ``_floor``) in ``tmp``, imports it."""
    from cffi import FFI

    cflags, lflags = compile_flags()
    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        "_floor", CSRC % {"outsize": FETCH_BUF}, extra_compile_args=cflags, extra_link_args=lflags
    )
    ffi.compile(tmpdir=tmp)
    sys.path.insert(0, tmp)
    try:
        return importlib.import_module("_floor")
    finally:
        sys.path.pop(0)


class Item(tuple):  # type: ignore[type-arg]
    """(key, value), as mqueue's Item; built from a 2-list by tuple's own constructor."""

    __slots__ = ()

    @property
    def key(self) -> str:
        return self[0]  # type: ignore[no-any-return]

    @property
    def value(self) -> str:
        return self[1]  # type: ignore[no-any-return]


class FloorQueue:
    """The floor's Python side: one process's handle on the ring of ``mod``."""

    def __init__(self, mod: Any) -> None:
        lib, ffi = mod.lib, mod.ffi
        self._add = lib.fl_add
        self._add_many = lib.fl_add_many
        self._fetch = lib.fl_fetch
        self._fetch_many = lib.fl_fetch_many
        self._buf = ffi.new("char[]", FETCH_BUF)
        self._unpack = ffi.unpack

    def add(self, key: str, value: str) -> bool:
        """Adds one item; False when the ring is full."""
        return self._add(key.encode(), value.encode()) == 1  # type: ignore[no-any-return]

    def add_many(self, pairs: list[Pair]) -> int:
        """Adds every pair or none; returns how many (0: full)."""
        keys, values = zip(*pairs, strict=True)
        data = "\0".join(keys + values).encode()
        return self._add_many(data, len(data), len(keys))  # type: ignore[no-any-return]

    def fetch(self, timeout: float = 0) -> Item | None:
        """The oldest item, waiting up to ``timeout`` s; None if none came."""
        n = self._fetch(self._buf)
        if n >= 0:
            return Item(self._unpack(self._buf, n).decode().split("\0", 1))
        return self._wait(timeout, self.fetch)  # type: ignore[no-any-return]

    def fetch_tuple(self, timeout: float = 0) -> tuple[str, ...] | None:
        """As :meth:`fetch`, but a plain tuple (outside mqueue's contract: what
        the Item type costs, the cyclic GC's tracking of it included)."""
        n = self._fetch(self._buf)
        if n >= 0:
            return tuple(self._unpack(self._buf, n).decode().split("\0", 1))
        return self._wait(timeout, self.fetch_tuple)  # type: ignore[no-any-return]

    def fetch_many(self, n: int, timeout: float = 0, kind: Any = Item) -> list[Item]:
        """Up to ``n`` items, waiting up to ``timeout`` s for the first; ``kind``
        None gives plain tuples (outside mqueue's contract, as fetch_tuple)."""
        got = self._fetch_many(self._buf, n)
        if got >= 0:
            it = iter(self._unpack(self._buf, got).decode().split("\0"))
            pairs = zip(it, it, strict=True)
            return list(pairs if kind is None else map(kind, pairs))
        return self._wait(timeout, lambda: self.fetch_many(n, 0, kind)) or []

    @staticmethod
    def _wait(timeout: float, again: Any) -> Any:
        """``again()`` until it returns something or ``timeout`` s have passed."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            got = again()
            if got:
                return got
        return None


class FloorSingle(throughput.Peer):
    """The floor's add / fetch, one item per call."""

    name = "floor add/fetch (SPSC ring, cffi)"
    family = "single"
    mod: Any = None  # the built extension, set by main() before any fork
    plain = False  # fetch plain tuples instead of Items

    @contextlib.contextmanager
    def channel(self) -> Iterator[Any]:
        if self.mod.lib.fl_create(RING_BYTES) != 0:
            raise OSError("fl_create failed")
        try:
            yield FloorQueue(self.mod)
        finally:
            self.mod.lib.fl_destroy()

    def producer(self, q: Any, items: list[Pair], ready: Any, go: Any) -> int:
        add = q.add
        t0 = common.start_together(ready, go)
        for k, v in items:
            while not add(k, v):
                time.sleep(0.0002)
        return t0

    def consumer(self, q: Any, items: list[Pair], ready: Any, go: Any) -> Any:
        fetch = q.fetch_tuple if self.plain else q.fetch
        out: list[Any] = []
        app = out.append
        stall = throughput.STALL
        common.start_together(ready, go)
        for _ in range(len(items)):
            it = fetch(stall)
            if it is None:
                raise TimeoutError(f"fetch: nothing for {stall}s after {len(out)} items")
            app(it)
        t1 = time.monotonic_ns()
        return throughput._finish(items, out, t1)


class FloorPlain(FloorSingle):
    """The floor's add / fetch returning plain tuples (not mqueue's contract)."""

    name = "floor add/fetch, plain tuples"
    plain = True


class FloorBatch(FloorSingle):
    """The floor's add_many / fetch_many."""

    name = "floor add_many/fetch_many"
    family = "batch"

    def producer(self, q: Any, items: list[Pair], ready: Any, go: Any) -> int:
        b = self.batch
        batches = [items[i : i + b] for i in range(0, len(items), b)]
        add_many = q.add_many
        t0 = common.start_together(ready, go)
        for chunk in batches:
            while not add_many(chunk):
                time.sleep(0.0002)
        return t0

    def consumer(self, q: Any, items: list[Pair], ready: Any, go: Any) -> Any:
        n = len(items)
        b = self.batch
        fetch_many = q.fetch_many
        kind = None if self.plain else Item
        out: list[Any] = []
        ext = out.extend
        stall = throughput.STALL
        common.start_together(ready, go)
        while len(out) < n:
            got = fetch_many(b, stall, kind)
            if not got:
                raise TimeoutError(f"fetch_many: nothing for {stall}s after {len(out)} items")
            ext(got)
        t1 = time.monotonic_ns()
        return throughput._finish(items, out, t1)


class FloorBatchPlain(FloorBatch):
    """The floor's add_many / fetch_many returning plain tuples (not mqueue's contract)."""

    name = "floor add_many/fetch_many, plain tuples"
    plain = True


PEERS = [
    throughput.MPQueue,
    throughput.ZmqPushPull,
    throughput.FasterFifo,
    throughput.FasterFifoBatch,
    throughput.MQueueSingle,
    throughput.MQueueBatch,
    FloorSingle,
    FloorPlain,
    FloorBatch,
    FloorBatchPlain,
]
# the ratios reported: (label, numerator, denominator)
RATIOS = [
    ("floor / mp.Queue", FloorSingle.name, throughput.MPQueue.name),
    ("floor / pyzmq", FloorSingle.name, throughput.ZmqPushPull.name),
    ("floor plain tuples / mp.Queue", FloorPlain.name, throughput.MPQueue.name),
    ("floor plain tuples / pyzmq", FloorPlain.name, throughput.ZmqPushPull.name),
    ("floor batch / mp.Queue", FloorBatch.name, throughput.MPQueue.name),
    ("floor batch / faster-fifo batch", FloorBatch.name, throughput.FasterFifoBatch.name),
    ("floor batch plain / mp.Queue", FloorBatchPlain.name, throughput.MPQueue.name),
    ("floor batch plain / faster-fifo batch", FloorBatchPlain.name,
     throughput.FasterFifoBatch.name),
    ("mqueue / floor", throughput.MQueueSingle.name, FloorSingle.name),
    ("mqueue batch / floor batch", throughput.MQueueBatch.name, FloorBatch.name),
    ("mqueue / mp.Queue", throughput.MQueueSingle.name, throughput.MPQueue.name),
    ("mqueue / pyzmq", throughput.MQueueSingle.name, throughput.ZmqPushPull.name),
    ("mqueue batch / mp.Queue", throughput.MQueueBatch.name, throughput.MPQueue.name),
    ("mqueue batch / faster-fifo batch", throughput.MQueueBatch.name,
     throughput.FasterFifoBatch.name),
]  # fmt: skip


def ratio(rates: dict[str, float], num: str, den: str) -> float | None:
    """rates[num] / rates[den], None when either is missing."""
    a, b = rates.get(num), rates.get(den)
    return a / b if a and b else None


# CPU time of a role's timed section (CLOCK_PROCESS_CPUTIME_ID, all its
# threads: mp.Queue's feeder, zmq's I/O thread): from start_together to the
# producer's return or to the consumer's _finish (before its check).
_CPU0 = [0]
_start_together = common.start_together
_finish = throughput._finish


def _timed_start(ready: Any, go: Any) -> int:
    t = _start_together(ready, go)
    _CPU0[0] = time.process_time_ns()
    return t


def _timed_finish(items: list[Pair], received: list[Any], t1: int | None = None) -> Any:
    cpu = time.process_time_ns() - _CPU0[0]
    res = _finish(items, received, t1)
    res["cpu"] = cpu
    return res


def _timed_producer(role: Any, *args: Any) -> tuple[int, int]:
    t0 = role(*args)
    return t0, time.process_time_ns() - _CPU0[0]


def run_once(peer: Any, items: list[Pair], timeout: float) -> tuple[float, tuple[float, float]]:
    """One timed transfer: (items/s, (CPU ns per item of the producer, of the consumer))."""
    with peer.channel() as chan:
        go, ready = common.sync_objects()
        (t0, cpu_p), res = common.run_roles(
            [
                (_timed_producer, (peer.producer, chan, items, ready, go)),
                (peer.consumer, (chan, items, ready, go)),
            ],
            timeout=timeout,
            go=go,
            ready=ready,
        )
    if not res["ok"]:
        raise common.ProcessFailed(f"items check failed: {res['msg']}")
    dt = (res["t_end"] - t0) / 1e9
    return len(items) / dt, (cpu_p / len(items), res["cpu"] / len(items))


def throughput_run(args: argparse.Namespace) -> int:
    """The interleaved rounds: per-round rates and ratios, then the medians."""
    with tempfile.TemporaryDirectory(prefix="mqfloor-") as tmp:
        FloorSingle.mod = build(tmp)
    peers, skipped = common.available([cls(args.batch) for cls in PEERS])
    items = common.make_items(args.items)
    rounds: list[dict[str, float]] = []
    cpus: list[dict[str, tuple[float, float]]] = []
    errors: dict[str, str] = {}
    common.start_together = _timed_start
    throughput._finish = _timed_finish
    for rnd in range(args.rounds):
        got: dict[str, float] = {}
        cpu: dict[str, tuple[float, float]] = {}
        for pe in peers:
            if pe.name in errors:
                continue
            common.progress(f"floor: round {rnd + 1}/{args.rounds}: {pe.name}")
            try:
                got[pe.name], cpu[pe.name] = run_once(pe, items, args.timeout)
            except common.ProcessFailed as e:
                errors[pe.name] = str(e)
                common.note(f"{pe.name}: FAILED: {e}")
        rounds.append(got)
        cpus.append(cpu)
    common.progress_done()
    print(f"1 -> 1, {args.items} items of 16+64 chars, batch {args.batch}, {args.rounds} rounds")
    print(f"machine: {common.machine_line()}; load average {os.getloadavg()[0]:.1f} at the end")
    med = {pe.name: common.median(v) for pe in peers if (v := [r[pe.name] for r in rounds
                                                               if pe.name in r])}  # fmt: skip
    cmed = {pe.name: (common.median([c[0] for c in cv]), common.median([c[1] for c in cv]))
            for pe in peers if (cv := [r[pe.name] for r in cpus if pe.name in r])}  # fmt: skip
    heads = ["peer", *(f"r{i + 1}" for i in range(len(rounds))), "median"]
    rows = [[pe.name, *(common.fmt_rate(r.get(pe.name)) for r in rounds),
             common.fmt_rate(med.get(pe.name)), "{:,.0f} / {:,.0f}".format(*cmed.get(pe.name,
                                                                                  (0, 0)))]
            for pe in peers]  # fmt: skip
    print(common.table([*heads, "CPU ns/item producer / consumer"], rows))
    print()
    rrows = []
    out_ratios = {}
    for label, num, den in RATIOS:
        per = [ratio(r, num, den) for r in rounds]
        good = [x for x in per if x is not None]
        m = common.median(good) if good else None
        out_ratios[label] = {"rounds": per, "median": m}
        rrows.append([label, *(common.fmt_ratio(x) for x in per), common.fmt_ratio(m)])
    print(common.table(["ratio", *heads[1:-1], "median of rounds"], rrows))
    common.print_problems(skipped, errors)
    data = {"items": args.items, "rounds": rounds, "cpu_ns": cpus, "ratios": out_ratios,
            "load": os.getloadavg()}  # fmt: skip
    common.save("floor_cffi", args, data, None, "")
    return 1 if errors else 0


# ---------------------------------------------------------------- callgrind

CHILD = r"""
import sys, os
sys.path.insert(0, sys.argv[3]); sys.path.insert(0, sys.argv[4])
import floor_cffi, mqueue
what, n = sys.argv[1], int(sys.argv[2])
k, v = "0123456789abcdef", "v" * 64
batch = [(k, v)] * 200
mod = __import__("_floor")
mod.lib.fl_create(floor_cffi.RING_BYTES)
f = floor_cffi.FloorQueue(mod)
ns = f"flprof{os.getpid()}"
mq = mqueue.create(ns, ["name=q;bytes=16M"])
q = mq["q"]
try:
    src = f if what.startswith("floor") else q
    op = what.split("-")[1]
    if op in ("fill", "fetch", "fetch_many"):
        for _ in range(n // 200):
            src.add_many(batch)
    if op == "add":
        add = src.add
        for _ in range(n):
            add(k, v)
    elif op == "fetch":
        fetch = src.fetch
        for _ in range(n):
            fetch()
    elif op == "add_many":
        for _ in range(n // 200):
            src.add_many(batch)
    elif op == "fetch_many":
        for _ in range(n // 200):
            src.fetch_many(200)
finally:
    mq.close()
    mqueue.destroy(ns)
"""

# what -> the C function whose inclusive instructions are the queue's own share
C_FUNC = {"floor-add": "fl_add", "floor-fetch": "fl_fetch", "floor-add_many": "fl_add_many",
          "floor-fetch_many": "fl_fetch_many", "mq-add": "mq_add_to", "mq-fetch": "mq_fetch_one",
          "mq-add_many": "mq_add_many_sep", "mq-fetch_many": "mq_fetch_batch"}  # fmt: skip


def callgrind(what: str, n: int, tmp: str, out: str) -> int:
    """Instructions of the child doing ``what`` n times under callgrind."""
    return profile_calls.count(["-c", CHILD, what, str(n), tmp, str(HERE)], out, 900)


def callgrind_run(n: int) -> int:
    """Instructions per call (per item for the batch calls), floor and mqueue."""
    if not shutil.which("valgrind"):
        print("valgrind is not installed: skipped", file=sys.stderr)
        return 0
    ops = ["add", "fetch", "add_many", "fetch_many"]
    res: dict[str, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="mqfloor-") as tmp:
        build(tmp)
        for side in ("floor", "mq"):
            for what in [f"{side}-fill", *(f"{side}-{op}" for op in ops)]:
                common.progress(f"callgrind: {what}")
                o1, o2 = os.path.join(tmp, "a.out"), os.path.join(tmp, "b.out")
                c1, c2 = callgrind(what, n, tmp, o1), callgrind(what, 2 * n, tmp, o2)
                fn = C_FUNC.get(what)
                incl = profile_calls.inclusive
                cin = (incl(o2, fn) - incl(o1, fn)) / n if fn else 0.0
                res[what] = ((c2 - c1) / n, cin)
    common.progress_done()
    print(f"instructions per call; per item for the batch calls (N={n}, batches of 200)")
    print("| operation | floor | of which in C | mqueue | of which in C | mqueue / floor |")
    print("|:--|--:|--:|--:|--:|--:|")
    for op in ops:
        fl, fl_c = res[f"floor-{op}"]
        mq, mq_c = res[f"mq-{op}"]
        if op in ("fetch", "fetch_many"):  # the add_many filling the ring, per item
            fl -= res["floor-fill"][0]
            mq -= res["mq-fill"][0]
        print(f"| {op} | {fl:,.0f} | {fl_c:,.0f} | {mq:,.0f} | {mq_c:,.0f} | {mq / fl:.2f}x |")
    return 0


# ---------------------------------------------------------------- the GC's share


def _consume(src: Any, items: list[Pair], many: bool, kind: Any, gc_on: bool) -> float:
    """Fills ``src`` with ``items`` (add_many), then takes them all back and
    keeps them, in one process, the cyclic GC on or off.  Returns CPU ns per
    item of the taking.  ``kind``: Item (the contract), None (plain tuples,
    floor only) or "mq" (mqueue's own calls)."""
    import gc

    for i in range(0, len(items), 256):
        src.add_many(items[i : i + 256])
    gc.collect()
    if not gc_on:
        gc.disable()
    out: list[Any] = []
    t = time.process_time_ns()
    try:
        if many:
            ext = out.extend
            fm = src.fetch_many
            while len(out) < len(items):
                ext(fm(256) if kind == "mq" else fm(256, 0, kind))
        else:
            app = out.append
            f = src.fetch_tuple if kind is None else src.fetch
            for _ in range(len(items)):
                app(f())
        return (time.process_time_ns() - t) / len(items)
    finally:
        gc.enable()
        if len(out) != len(items):
            raise RuntimeError(f"took {len(out)} of {len(items)}")


def gc_run(n: int, reps: int) -> int:
    """CPU ns per kept item of fetch / fetch_many in one process, GC on and
    off: the floor with Items and with plain tuples, and mqueue."""
    import mqueue

    items = common.make_items(n)
    res: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="mqfloor-") as tmp:
        mod = build(tmp)
    if mod.lib.fl_create(RING_BYTES) != 0:
        raise OSError("fl_create failed")
    floor = FloorQueue(mod)
    with common.mq_namespace(mqueue, ["name=q;bytes=64M"], "gc") as (_ns, mq):
        cases = [("floor", floor, Item), ("floor, plain tuples", floor, None),
                 ("mqueue", mq["q"], "mq")]  # fmt: skip
        for _ in range(reps):
            for many in (False, True):
                for label, src, kind in cases:
                    for gc_on in (True, False):
                        key = f"| {label} | {'fetch_many(256)' if many else 'fetch'} | "
                        key += f"{'on' if gc_on else 'off'} |"
                        res.setdefault(key, []).append(_consume(src, items, many, kind, gc_on))
    mod.lib.fl_destroy()
    print(f"CPU ns per item taken and kept, one process, {n} items, median of {reps}")
    print("| queue | call | gc | CPU ns/item |")
    print("|:--|:--|:--|--:|")
    for key, v in res.items():
        print(f"{key} {common.median(v):,.0f} |")
    return 0


def main() -> int:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("-n", "--items", type=int, default=300_000, help="items per run")
    p.add_argument("-r", "--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--batch", type=int, default=256, help="batch size for *_many")
    p.add_argument("--timeout", type=float, default=120.0, help="deadline per single run (s)")
    p.add_argument("--callgrind", action="store_true", help="instruction counts instead")
    p.add_argument("--calls", type=int, default=20000, help="calls per callgrind measurement")
    p.add_argument("--gc", action="store_true", help="the cyclic GC's share, one process")
    args = p.parse_args()
    args.no_chart = True
    if args.gc:
        return gc_run(args.items, args.rounds)
    return callgrind_run(args.calls) if args.callgrind else throughput_run(args)


if __name__ == "__main__":
    raise SystemExit(main())
