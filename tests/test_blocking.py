"""Blocking fetch: prompt wake-up, no CPU while waiting, timeouts, signals.

The waiting side is a separate Python program (``subprocess``) that talks to
the test through lines on its stdout.  CLOCK_MONOTONIC (``time.monotonic``)
is system-wide, so times taken in both processes compare directly.
"""

from __future__ import annotations

import os
import select
import signal
import statistics
import subprocess
import sys
import textwrap
import time

import pytest

CHILD_PRELUDE = """
import os, signal, sys, time
import mqueue
signal.signal(signal.SIGINT, signal.default_int_handler)
mq = mqueue.attach(sys.argv[1])
q = mq["q"]
def say(*a):
    print(*a, flush=True)
"""


def start(ns: str, body: str) -> subprocess.Popen:
    code = CHILD_PRELUDE + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", code, ns],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        bufsize=0,  # readline() below reads the pipe itself, byte by byte
    )


def readline(p: subprocess.Popen, timeout: float = 30.0) -> list[str]:
    """The next stdout line of p, split; fails the test on EOF or timeout."""
    assert p.stdout is not None
    fd = p.stdout.fileno()
    until = time.monotonic() + timeout
    line = b""
    while not line.endswith(b"\n"):
        r, _, _ = select.select([fd], [], [], max(0.0, until - time.monotonic()))
        assert r, f"child said nothing for {timeout} s"
        c = os.read(fd, 1)
        if not c:
            p.wait(5)
            err = p.stderr.read().decode(errors="replace") if p.stderr else ""
            pytest.fail(f"child ended (rc={p.returncode}) early:\n{err}")
        line += c
    return line.decode().split()


def finish(p: subprocess.Popen, timeout: float = 30.0) -> int:
    """Wait for p to end by itself; its exit status."""
    return p.wait(timeout)


def cleanup(p: subprocess.Popen) -> None:
    """Kill p if it still runs, reap it, close its pipes (use in finally)."""
    if p.poll() is None:
        p.kill()
    p.wait()
    for f in (p.stdout, p.stderr):
        if f is not None:
            f.close()


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_blocked(pid: int, timeout: float = 10.0) -> None:
    """Wait until the process is sleeping (state S) for a moment, i.e. in its wait."""
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "S":
            time.sleep(0.05)
            return
        time.sleep(0.005)
    pytest.fail("child never went to sleep")


def test_blocked_fetch_wakes_within_milliseconds(make_mq, ns):
    q = make_mq(["name=q"])["q"]
    reps = 7
    p = start(
        ns,
        f"""
        for i in range({reps}):
            say("ready")
            item = q.fetch(timeout=None)
            t = time.monotonic()
            say(t, item.key)
        """,
    )
    lat = []
    try:
        for i in range(reps):
            assert readline(p) == ["ready"]
            wait_blocked(p.pid)
            time.sleep(0.1)
            t0 = time.monotonic()
            q.add(f"k{i}", "v")
            t, key = readline(p)
            assert key == f"k{i}"
            lat.append(float(t) - t0)
        assert finish(p) == 0
    finally:
        cleanup(p)
    assert all(x >= 0 for x in lat), lat
    assert statistics.median(lat) < 0.050, lat


def test_blocked_fetch_many_wakes_and_takes_the_batch(make_mq, ns):
    q = make_mq(["name=q"])["q"]
    p = start(
        ns,
        """
        say("ready")
        items = q.fetch_many(10, timeout=None)
        say(time.monotonic(), len(items))
        """,
    )
    try:
        assert readline(p) == ["ready"]
        wait_blocked(p.pid)
        t0 = time.monotonic()
        q.add_many([("a", "1"), ("b", "2"), ("c", "3")])
        t, n = readline(p)
        assert finish(p) == 0
    finally:
        cleanup(p)
    assert int(n) == 3
    assert float(t) - t0 < 0.5


def test_blocked_fetch_uses_no_cpu(make_mq, ns):
    q = make_mq(["name=q"])["q"]
    p = start(
        ns,
        """
        say("ready")
        c0 = sum(os.times()[:2])
        item = q.fetch(timeout=None)
        c1 = sum(os.times()[:2])
        say(c1 - c0, item.key)
        """,
    )
    try:
        assert readline(p) == ["ready"]
        wait_blocked(p.pid)
        before = cpu_seconds(p.pid)
        time.sleep(1.0)
        after = cpu_seconds(p.pid)
        q.add("wake", "up")
        cpu_child, key = readline(p)
        assert finish(p) == 0
    finally:
        cleanup(p)
    assert key == "wake"
    assert after - before < 0.05, f"waiting child used {after - before:.3f} s of CPU in 1 s"
    assert float(cpu_child) < 0.1, f"fetch used {cpu_child} s of CPU over about 1 s"


@pytest.mark.parametrize("t", [0.2, 0.35])
def test_fetch_timeout_returns_none_after_t(make_mq, t):
    q = make_mq(["name=q"])["q"]
    q.add("held", "item")
    q.fetch()
    t0 = time.monotonic()
    assert q.fetch(timeout=t) is None
    dt = time.monotonic() - t0
    assert t - 0.01 <= dt < t + 0.4, dt
    assert q.key is None  # the held item was released
    t0 = time.monotonic()
    assert q.fetch_many(5, timeout=t) == []
    dt = time.monotonic() - t0
    assert t - 0.01 <= dt < t + 0.4, dt


def test_fetch_timeout_cpu_is_small(make_mq):
    q = make_mq(["name=q"])["q"]
    c0 = time.process_time()
    assert q.fetch(timeout=0.5) is None
    assert time.process_time() - c0 < 0.05


def test_timed_fetch_gets_an_item_added_meanwhile(make_mq, ns):
    q = make_mq(["name=q"])["q"]
    p = start(
        ns,
        """
        say("ready")
        t0 = time.monotonic()
        item = q.fetch(timeout=5)
        say(time.monotonic() - t0, item.key if item else None)
        """,
    )
    try:
        assert readline(p) == ["ready"]
        wait_blocked(p.pid)
        q.add("k", "v")
        dt, key = readline(p)
        assert finish(p) == 0
    finally:
        cleanup(p)
    assert key == "k"
    assert float(dt) < 2.0


@pytest.mark.parametrize("timeout", ["None", "30"])
def test_sigint_interrupts_blocked_fetch(make_mq, ns, timeout):
    q = make_mq(["name=q"])["q"]
    p = start(
        ns,
        f"""
        say("ready")
        try:
            q.fetch(timeout={timeout})
        except KeyboardInterrupt:
            say("interrupted", time.monotonic())
        else:
            say("returned")
        say("after", len(q))
        """,
    )
    try:
        assert readline(p) == ["ready"]
        wait_blocked(p.pid)
        t0 = time.monotonic()
        os.kill(p.pid, signal.SIGINT)
        what, t = readline(p, 10)
        assert what == "interrupted"
        assert float(t) - t0 < 0.5
        assert readline(p) == ["after", "0"]  # the handle still works
        assert finish(p) == 0
    finally:
        cleanup(p)
    q.add("a", "b")
    assert len(q) == 1  # nothing left locked


def test_signal_handler_that_returns_lets_the_wait_go_on(make_mq, ns):
    make_mq(["name=q"])
    p = start(
        ns,
        """
        hits = []
        signal.signal(signal.SIGUSR1, lambda s, f: hits.append(time.monotonic()))
        say("ready")
        t0 = time.monotonic()
        item = q.fetch(timeout=1.0)
        say(time.monotonic() - t0, len(hits), item is None)
        """,
    )
    try:
        assert readline(p) == ["ready"]
        wait_blocked(p.pid)
        time.sleep(0.2)
        os.kill(p.pid, signal.SIGUSR1)
        time.sleep(0.1)
        os.kill(p.pid, signal.SIGUSR1)
        dt, hits, none = readline(p)
        assert finish(p) == 0
    finally:
        cleanup(p)
    assert int(hits) == 2  # the handler ran (during the wait)
    assert none == "True"
    assert 0.99 <= float(dt) < 1.6, dt  # the wait went on for the rest of its timeout


def test_signal_handler_then_item_wakes_forever_wait(make_mq, ns):
    q = make_mq(["name=q"])["q"]
    p = start(
        ns,
        """
        hits = []
        signal.signal(signal.SIGUSR1, lambda s, f: hits.append(1))
        say("ready")
        item = q.fetch(timeout=None)
        say(len(hits), item.key)
        """,
    )
    try:
        assert readline(p) == ["ready"]
        wait_blocked(p.pid)
        os.kill(p.pid, signal.SIGUSR1)
        time.sleep(0.2)
        assert p.poll() is None  # still waiting after the handler returned
        q.add("k", "v")
        hits, key = readline(p)
        assert finish(p) == 0
    finally:
        cleanup(p)
    assert (int(hits), key) == (1, "k")


def test_many_waiters_all_woken_by_a_batch(make_mq, ns):
    q = make_mq(["name=q"])["q"]
    procs = [
        start(
            ns,
            """
            say("ready")
            item = q.fetch(timeout=20)
            say(item.key if item else "none")
            """,
        )
        for _ in range(4)
    ]
    try:
        for p in procs:
            assert readline(p) == ["ready"]
        for p in procs:
            wait_blocked(p.pid)
        q.add_many([(str(i), "v") for i in range(4)])
        keys = sorted(readline(p, 10)[0] for p in procs)
        for p in procs:
            assert finish(p) == 0
    finally:
        for p in procs:
            cleanup(p)
    assert keys == ["0", "1", "2", "3"]


# ---------------------------------------------------------------- signals vs items


class Boom(Exception):
    pass


def test_item_taken_when_a_handler_raises_is_not_lost(make_mq, monkeypatch) -> None:
    """A signal handler may raise right after the engine took an item, before
    Python sees the result (CPython runs handlers at call boundaries).  The
    item is kept for this handle's next fetch, never lost.  Simulated exactly
    by raising after the real C call returned."""
    from mqueue import _shm

    q = make_mq(["name=q"])["q"]
    q.add_many([("k1", "v1"), ("k2", b"v2"), ("k3", "v3"), ("k4", "v4")])
    real_one, real_batch = _shm._mq_fetch_one, _shm._mq_fetch_batch

    def one(f):
        real_one(f)
        raise Boom

    def batch(fb, n, t):
        real_batch(fb, n, t)
        raise Boom

    monkeypatch.setattr(_shm, "_mq_fetch_one", one)
    with pytest.raises(Boom):
        q.fetch(timeout=1)
    monkeypatch.setattr(_shm, "_mq_fetch_one", real_one)
    assert q.fetch() == ("k1", "v1") and q.key == "k1"
    monkeypatch.setattr(_shm, "_mq_fetch_batch", batch)
    with pytest.raises(Boom):
        q.fetch_many(2, timeout=1)
    monkeypatch.setattr(_shm, "_mq_fetch_batch", real_batch)
    assert q.fetch_many(10) == [("k2", b"v2"), ("k3", "v3")]
    assert q.fetch() == ("k4", "v4")
    assert q.fetch() is None
    st = q.stats()
    assert st.added == st.fetched == 4


def test_deadline_passed_in_a_handler_still_looks_once(make_mq) -> None:
    """A handler that outlasts the timeout (here it adds an item and sleeps)
    must not make fetch report an empty queue without looking again."""
    q = make_mq(["name=q"])["q"]

    def handler(signum, frame):
        q.add("k", "arrived in the handler")
        time.sleep(0.6)

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        assert q.fetch(timeout=0.5) == ("k", "arrived in the handler")
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        assert q.fetch_many(5, timeout=0.5) == [("k", "arrived in the handler")]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_signal_outside_the_futex_wait_is_handled_promptly(make_mq) -> None:
    """A signal that lands while the engine is not inside FUTEX_WAIT gives no
    EINTR; the engine still returns to Python every ~100 ms of waiting, so the
    handler runs promptly instead of at the deadline."""
    q = make_mq(["name=q"])["q"]
    late = []
    for i in range(20):
        hit: list[float] = []

        def handler(signum, frame, hit=hit):
            hit.append(time.monotonic())
            raise Boom

        old = signal.signal(signal.SIGALRM, handler)
        try:
            t0 = time.monotonic()
            signal.setitimer(signal.ITIMER_REAL, 0.1 + i * 0.00003)
            with pytest.raises(Boom):
                q.fetch(timeout=2.0)
            if time.monotonic() - t0 > 0.5:
                late.append(i)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
    assert not late


def test_forked_child_does_not_deliver_the_parents_kept_items(make_mq, monkeypatch) -> None:
    """Items a cut-short fetch kept for the handle belong to the process that
    took them: a forked child never hands them out again (no duplicates)."""
    from mqueue import _shm

    q = make_mq(["name=q"])["q"]
    q.add_many([("k1", "v1"), ("k2", "v2")])
    real_one = _shm._mq_fetch_one

    def one(f):
        real_one(f)
        raise Boom

    monkeypatch.setattr(_shm, "_mq_fetch_one", one)
    with pytest.raises(Boom):
        q.fetch()
    monkeypatch.setattr(_shm, "_mq_fetch_one", real_one)
    pid = os.fork()
    if pid == 0:
        item = q.fetch()
        os._exit(0 if item == ("k2", "v2") else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert q.fetch() == ("k1", "v1")  # still the parent's
    assert q.fetch() is None
