"""Signal handlers that raise, at a high rate, lose and double nothing (issue 9,
item 6).

CPython runs a signal handler at the next call boundary (or loop back-edge, or
function entry) of the main thread; a handler that raises makes the exception
appear there.  Items the engine has taken are the caller's: they must reach it,
or be handed out by the next fetch of the same handle, exactly once.

Two kinds of test: a real storm (SIGALRM every 100 us while another process
adds 200,000 items), and a deterministic sweep that raises at every single
call boundary inside fetch / fetch_many in turn (``sys.setprofile``: an
exception raised by a profile function surfaces exactly where a signal
handler's would, and the profile function is removed at once).
"""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from ctools import PYTHON, py_env

import mqueue


class Boom(Exception):
    pass


def expected(i: int) -> tuple[Any, Any]:
    """Item i: str/bytes keys and values, ASCII and not (every decode path)."""
    r = i % 4
    if r == 0:
        return (str(i), "v" + str(i))
    if r == 1:
        return (str(i).encode(), b"b" + str(i).encode())
    if r == 2:
        return (str(i), "\u00e9" + str(i))
    return (str(i), b"x" + str(i).encode())


PRODUCER = f"""
import sys, time, mqueue
from typing import Any
{textwrap.dedent(__import__("inspect").getsource(expected))}
q = mqueue.attach(sys.argv[1])["q"]
n = int(sys.argv[2])
i = 0
while i < n:
    batch = [expected(j) for j in range(i, min(n, i + 500))]
    try:
        q.add_many(batch)
    except mqueue.QueueFullError:
        time.sleep(0.001)
        continue
    i += len(batch)
"""


def check_exactly_once(got: list[Any], n: int) -> None:
    keys = Counter(int(k) for k, _ in got)
    dup = sum(c - 1 for c in keys.values() if c > 1)
    lost = n - len(keys)
    wrong = [(k, v) for k, v in got if expected(int(k)) != (k, v)]
    assert (lost, dup, wrong[:3]) == (0, 0, []), f"lost {lost}, duplicated {dup}"


_PKG = os.path.dirname(mqueue.__file__)
_GC_CODE = {"gone", "_release_handle", "__del__"}


def storm(q: mqueue.Queue, ns: str, n: int, batch: int) -> int:
    """Consume n items added by another process under SIGALRM every 100 us,
    the handler raising while mqueue's code runs.  Returns the raises seen."""
    p = subprocess.Popen([PYTHON, "-c", PRODUCER, ns, str(n)], env=py_env(), cwd="/")
    got: list[Any] = []
    armed = [False]
    booms = 0

    def handler(signum: int, frame: Any) -> None:
        # only in the consumer's loop and mqueue's code: not inside a garbage
        # collector's callback, where an exception is only reported
        if armed[0] and (
            frame.f_code is loop
            or (frame.f_code.co_filename.startswith(_PKG) and frame.f_code.co_name not in _GC_CODE)
        ):
            raise Boom

    loop = sys._getframe().f_code
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
    it = 0
    idle = 0
    done = False
    try:
        while True:
            it += 1
            t = 0.02 if it % 16 == 0 else 0  # waits too, cut by the signal
            try:
                armed[0] = True
                if batch == 1:
                    got.append(q.fetch(timeout=t))
                else:
                    got.extend(q.fetch_many(batch, timeout=t) or [None])
                armed[0] = False
            except Boom:
                armed[0] = False
                booms += 1
                continue
            if got[-1] is None:
                got.pop()
                if not done and p.poll() is not None:
                    done = True
                if done:
                    idle += 1
                    if idle > 5:
                        break
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0, 0)
        signal.signal(signal.SIGALRM, old)
        p.kill()
        p.wait()
    assert p.returncode == 0
    check_exactly_once([g for g in got if g is not None], n)
    assert len(q) == 0
    return booms


# CPython 3.10 also runs signal handlers while an exception unwinds into an
# except clause (at the top of its eval loop), before any code there runs: a
# second raise landing there cannot be guarded against, by mqueue or by this
# test's own loop (seen in CI).  3.11 and later run handlers only at calls,
# backward jumps and function entries, which the fetch paths are built around.
STORM_PYTHONS = pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="a storm of raising handlers needs CPython >= 3.11 (docs/crash-safety.md)",
)


@STORM_PYTHONS
@pytest.mark.parametrize("batch", [1, 97], ids=["fetch", "fetch_many"])
def test_signal_storm(make_mq, ns, batch: int) -> None:
    q = make_mq(["name=q;bytes=8M"])["q"]
    booms = storm(q, ns, 200_000, batch)
    assert booms > 100  # the storm did land
    st = q.stats()
    assert st.added == st.fetched == 200_000


@STORM_PYTHONS
@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 3, 97, 5000], ids=["1", "3", "97", "5000"])
def test_signal_storm_long(make_mq, ns, batch: int) -> None:
    q = make_mq(["name=q;bytes=8M"])["q"]
    for _ in range(int(os.environ.get("MQUEUE_STORM_ROUNDS", "5"))):
        storm(q, ns, 200_000, batch)


# ------------------------------------------------------------ every call boundary


# function entry, just before a builtin (C) call, just after one returns
_BOUNDARIES = ("call", "c_call", "c_return")


def raise_at(k: int) -> Callable[[], int]:
    """Arm a profile function that raises Boom at the k-th call boundary
    (function entry, or just before or after a builtin call) met inside mqueue's
    code; returns a function giving how many were met (the profiler is gone
    once it has raised)."""
    seen = [0]

    def prof(frame: Any, event: str, arg: Any) -> None:
        if event not in _BOUNDARIES or not frame.f_code.co_filename.startswith(_PKG):
            return
        seen[0] += 1
        if seen[0] == k:
            raise Boom

    sys.setprofile(prof)
    return lambda: seen[0]


def take_one(q: mqueue.Queue, op: str, k: int, n: int) -> tuple[list[Any], bool, int]:
    """One call of op with a raise at boundary k: (items got, raised, boundaries met)."""
    count = raise_at(k)
    try:
        if op == "fetch":
            item = q.fetch()
            got = [] if item is None else [item]
        else:
            got = q.fetch_many(n)
        raised = False
    except Boom:
        got, raised = [], True
    finally:
        sys.setprofile(None)
    return got, raised, count()


@pytest.mark.parametrize(
    ("op", "second", "batch"),
    [
        ("fetch", "fetch", 3),
        ("fetch", "fetch_many", 3),
        ("fetch_many", "fetch", 3),
        ("fetch_many", "fetch_many", 3),
        ("fetch_many", "fetch_many", 40),  # kept items handed out in several steps
        ("fetch_many", "fetch", 40),
    ],
)
def test_raise_at_every_call_boundary(make_mq, op: str, second: str, batch: int) -> None:
    """For every boundary k1 of a first call and k2 of the next call (the one
    that hands out what the first kept): nothing lost, nothing doubled."""
    mq = make_mq(["name=q"])
    q = mq["q"]
    n = 24 if batch < 24 else batch + 5
    k1 = 1
    while True:
        q.add_many([expected(i) for i in range(n)])
        got, raised1, met1 = take_one(q, op, k1, batch)
        k2 = 1
        while True:
            more, raised2, met2 = take_one(q, second, k2, batch)
            got += more
            if not raised2:
                break
            k2 += 1
        while True:
            rest = q.fetch_many(1000)
            if not rest:
                break
            got += rest
        check_exactly_once(got, n)
        st = q.stats()
        assert st.added == st.fetched
        if not raised1:
            break
        k1 += 1
    assert k1 > 5  # the sweep did reach into the calls


# ------------------------------------------------------------ a take that did not commit


STATE_COPY_BYTES = 128  # sizeof(struct q_pstate), csrc/mq_layout.h (two cache lines)


def qstate_offsets(ns: str) -> tuple[str, int]:
    """Path of the segment and offset of queue 0's current state copy."""
    path = os.path.join("/dev/shm", "mqueue." + ns)
    with open(path, "rb") as f:
        head = f.read(64)
        (qtable,) = struct.unpack_from("<Q", head, 56)
        f.seek(qtable + 84)
        (cur,) = struct.unpack("<I", f.read(4))
    return path, qtable + 128 + STATE_COPY_BYTES * (cur & 1)


def bump_fetched(ns: str, delta: int) -> None:
    """Damage: the state's fetched counter moved by delta (so its item count
    no longer matches the records)."""
    path, st = qstate_offsets(ns)
    with open(path, "r+b") as f:
        f.seek(st + 24)
        (v,) = struct.unpack("<Q", f.read(8))
        f.seek(st + 24)
        f.write(struct.pack("<Q", v + delta))


@pytest.mark.parametrize("op", ["fetch", "fetch_many"])
def test_a_take_that_fails_after_copying_hands_out_nothing(make_mq, ns, op: str) -> None:
    """The engine copies an item, then finds the state damaged and takes
    nothing: that item must not be handed out later as if it had been taken
    (the old 'taken' marker was written at the copy)."""
    q = make_mq(["name=q"])["q"]
    q.add_many([("k1", "v1"), ("k2", "v2")])
    bump_fetched(ns, 2)  # the state says 0 items, the records say 2
    with pytest.raises(mqueue.CorruptSegmentError):
        q.fetch() if op == "fetch" else q.fetch_many(5)
    bump_fetched(ns, -2)  # repaired: both items are still queued, never taken
    got = q.fetch_many(5) if op == "fetch_many" else [q.fetch(), q.fetch(), q.fetch()]
    assert [g for g in got if g is not None] == [("k1", "v1"), ("k2", "v2")]
    assert q.fetch() is None
    st = q.stats()
    assert st.added == st.fetched == 2


def test_kept_take_then_items_appended_after_it(make_mq) -> None:
    """Another layer (the asyncio one) may append Items it kept after a kept
    take not decoded yet: everything is still handed out once, in order."""
    q = make_mq(["name=q"])["q"]
    k = 0
    while True:  # find a boundary at which fetch_many keeps its take
        k += 1
        assert k < 200
        q.add_many([expected(i) for i in range(40)])
        raise_at(k)
        try:
            q.fetch_many(30)
        except Boom:
            pass
        finally:
            sys.setprofile(None)
        if q._kept_raw:  # type: ignore[attr-defined]
            break
        while q.fetch_many(1000):  # start again
            pass
    later = q._take(100, 0.0)  # type: ignore[attr-defined]  # taken after the kept ones
    q._undelivered.extend(later)  # type: ignore[attr-defined]
    out = q.fetch_many(7) + q.fetch_many(1000)
    assert [int(kv[0]) for kv in out] == list(range(40))
    check_exactly_once(out, 40)
    assert q.fetch() is None
