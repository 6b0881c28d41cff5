"""Cross-process: one producer, four workers, every item fetched exactly once.

Workers are separate programs (``subprocess``) or ``multiprocessing`` children
(``fork``: they use the handle inherited from the parent; ``spawn``: they
attach by name).  Each worker writes the keys it got to a file; the test checks
that together they got 0..N-1 exactly once, with no torn value.
"""

from __future__ import annotations

import array
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mqueue

PROGS = Path(__file__).parent / "progs"
sys.path.insert(0, str(PROGS))  # spawn children inherit sys.path and import mqworkers

import mqworkers  # noqa: E402

N = 200_000
NWORKERS = 4
QDEF = "name=jobs;bytes=4M"  # unbounded: the producer waits when it is full
DEADLINE = 120.0


def _check(outs: list[Path]) -> None:
    got = array.array("I")
    total_torn = 0
    for p in outs:
        with open(p, "rb") as f:
            got.frombytes(f.read())
        info = json.loads(Path(str(p) + ".json").read_text())
        total_torn += info["torn"]
        assert info["count"] > 0, f"worker {p.name} got nothing"
    assert total_torn == 0
    assert len(got) == N, f"got {len(got)} items, want {N}"
    seen = bytearray(N)
    dups = 0
    for i in got:
        if seen[i]:
            dups += 1
        seen[i] = 1
    assert dups == 0, f"{dups} items fetched twice"
    assert all(seen), f"{N - sum(seen)} items lost"


def _check_stats(q: mqueue.Queue) -> None:
    st = q.stats()
    assert len(q) == 0
    assert st.added == st.fetched + st.evicted + st.duplicates
    assert st.evicted == 0 and st.recoveries == 0


def _stop_all(procs: list) -> None:
    for p in procs:
        if isinstance(p, subprocess.Popen):
            if p.poll() is None:
                p.kill()
            p.wait()
        else:
            if p.is_alive():
                p.kill()
            p.join()


def _prog(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(PROGS / "mqworkers.py"), *args])


def _wait_popen(p: subprocess.Popen, until: float) -> int:
    return p.wait(timeout=max(0.1, until - time.monotonic()))


def test_subprocess_producer_and_four_workers(ns, make_mq, tmp_path):
    mq = make_mq([QDEF])
    outs = [tmp_path / f"w{i}" for i in range(NWORKERS)]
    procs: list = []
    try:
        for i, out in enumerate(outs):
            procs.append(_prog("work", ns, "jobs", str(out), "one" if i % 2 else "many"))
        procs.append(_prog("produce", ns, "jobs", str(N), str(NWORKERS), "500"))
        until = time.monotonic() + DEADLINE
        for p in procs:
            assert _wait_popen(p, until) == 0
    finally:
        _stop_all(procs)
    _check(outs)
    _check_stats(mq["jobs"])
    assert mq["jobs"].stats().added >= N + NWORKERS  # + STOPs a "many" worker put back


def _mp_worker_inherited(q: mqueue.Queue, out: str, mode: str) -> None:
    mqworkers.work(q, out, mode)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_workers(ns, make_mq, tmp_path, method):
    mq = make_mq([QDEF])  # attached in the parent before the children start
    q = mq["jobs"]
    ctx = mp.get_context(method)
    outs = [tmp_path / f"w{i}" for i in range(NWORKERS)]
    procs: list = []
    try:
        for i, out in enumerate(outs):
            mode = "one" if i % 2 else "many"
            if method == "fork":
                p = ctx.Process(target=_mp_worker_inherited, args=(q, str(out), mode))
            else:
                p = ctx.Process(target=mqworkers.main, args=(["work", ns, "jobs", str(out), mode],))
            p.start()
            procs.append(p)
        mqworkers.produce(q, N, NWORKERS)  # the parent is the producer
        until = time.monotonic() + DEADLINE
        for p in procs:
            p.join(max(0.1, until - time.monotonic()))
            assert p.exitcode == 0, f"worker exit code {p.exitcode}"
    finally:
        _stop_all(procs)
    _check(outs)
    _check_stats(q)


# ---------------------------------------------------------------- held items per process
def _child_fetch_inherited(q: mqueue.Queue, conn) -> None:
    try:
        before = (q.key, q.value)
        item = q.fetch()
        conn.send((before, tuple(item) if item else None, q.key))
    finally:
        conn.close()


def _child_fetch_attached(namespace: str, conn) -> None:
    try:
        with mqueue.attach(namespace) as mq:
            q = mq["jobs"]
            item = q.fetch()
            conn.send((None, tuple(item) if item else None, q.key))
    finally:
        conn.close()


@pytest.mark.parametrize("how", ["fork", "spawn", "subprocess"])
def test_held_items_stay_per_process(ns, make_mq, how):
    mq = make_mq([QDEF])
    q = mq["jobs"]
    q.add_many([("p", "parent"), ("c", "child"), ("x", "extra")])
    assert q.fetch() == ("p", "parent")
    if how == "subprocess":
        code = (
            "import sys, mqueue\n"
            "with mqueue.attach(sys.argv[1]) as mq:\n"
            "    q = mq['jobs']\n"
            "    it = q.fetch()\n"
            "    print(it.key, q.key)\n"
        )
        r = subprocess.run(
            [sys.executable, "-c", code, ns], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["c", "c"]
    else:
        ctx = mp.get_context(how)
        parent_conn, child_conn = ctx.Pipe()
        if how == "fork":
            p = ctx.Process(target=_child_fetch_inherited, args=(q, child_conn))
        else:
            p = ctx.Process(target=_child_fetch_attached, args=(ns, child_conn))
        try:
            p.start()
            child_conn.close()
            assert parent_conn.poll(60), "child did not answer"
            before, item, child_key = parent_conn.recv()
            p.join(30)
            assert p.exitcode == 0
        finally:
            if p.is_alive():
                p.kill()
            p.join()
        assert item == ("c", "child")
        assert child_key == "c"
    # the child's fetch did not change the parent's held item
    assert (q.key, q.value) == ("p", "parent")
    assert len(q) == 1
    # and the parent's fetch goes on from where the queue is
    assert q.fetch() == ("x", "extra")


def test_fork_child_handle_works_without_extra_call(ns, make_mq):
    mq = make_mq(["name=a", "name=b"])
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_fork_child_adds, args=(mq,))
    try:
        p.start()
        p.join(60)
        assert p.exitcode == 0
    finally:
        if p.is_alive():
            p.kill()
        p.join()
    assert mq["a"].fetch() == ("from", str(p.pid))
    assert mq["b"].fetch_many(5) == [(b"k", b"v")] * 3
    assert not mq.closed


def _fork_child_adds(mq: mqueue.MQueue) -> None:
    mq["a"].add("from", str(os.getpid()))
    mq["b"].add_many([(b"k", b"v")] * 3)
    mq.close()  # a forked child's close leaves the queues in place
