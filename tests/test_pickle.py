"""Handles cross to ``spawn`` and ``forkserver`` children (issue 11, item 5).

An ``MQueue`` or ``Queue`` handle pickles as "attach to this namespace by name":
the receiving process gets a handle of its own (its own liveness slot, no held
item), never the creator's role.  Tested with ``multiprocessing`` spawn and
forkserver, ``concurrent.futures.ProcessPoolExecutor`` and the Kamailio facade,
on shared memory and on Redis (skipped without a server, as in test_redis.py);
namespace handles and ``mqueue.asyncio`` handles on every backend (a Redis Cluster
too).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing as mp
import os
import pickle
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REDIS_URL, Backend, MakeMQ, backend_url, destroy_quietly, new_namespace

import mqueue
import mqueue.asyncio as amqueue
from mqueue import kamailio

JOIN_S = 60.0  # generous: spawn imports the interpreter afresh on a loaded machine


# --------------------------------------------------------------- child code
# Module-level functions, so that spawn / forkserver children can import them.


def _report(q: mqueue.Queue) -> dict[str, Any]:
    """What a child sees of a handle it received, after taking one item."""
    mq = q._mq
    out: dict[str, Any] = {
        "pid": os.getpid(),
        "held_before": q.held,
        "is_creator": mq.is_creator,
        "db_url": mq.db_url,
        "url": mq.url,
        "slot": getattr(mq, "slot", None),
    }
    item = q.fetch(timeout=10)
    out["fetched"] = None if item is None else tuple(item)
    return out


def _child_fetch_and_answer(q: mqueue.Queue, answers: mqueue.Queue) -> None:
    """Take one item from q, answer on the other queue of the same namespace."""
    rep = _report(q)
    answers.add("report", repr(rep))
    answers._mq.close()


def _child_namespace(mq: mqueue.MQueue) -> None:
    """Receive a namespace handle: move every item of "in" to "out", upper-cased."""
    src, dst = mq["in"], mq["out"]
    while (item := src.fetch(timeout=0)) is not None:
        dst.add(item.key, str(item.value).upper())
    mq.close()


def _pool_task(q: mqueue.Queue, n: int) -> list[tuple[Any, Any]]:
    """For ProcessPoolExecutor: take n items and return them."""
    return [tuple(it) for it in q.fetch_many(n, timeout=10)]


def _pool_report(q: mqueue.Queue) -> dict[str, Any]:
    return _report(q)


def _kamailio_child(m: kamailio.MQueueModule) -> None:
    rc = m.mq_fetch("myq")
    key = m.pv("$mqk(myq)")
    m.mq_add("answers", f"{rc}", f"{key}")
    m.close()


def _async_child(q: amqueue.Queue, mq: amqueue.MQueue) -> None:
    """Receive asyncio handles: take one item from q, answer on mq["answers"]."""

    async def main() -> None:
        item = await q.fetch(timeout=10)
        got = None if item is None else tuple(item)
        await mq["answers"].add("report", repr((q.held is not None, mq.is_creator, got)))
        await mq.close()

    asyncio.run(main())


def _run(ctx_name: str, target: Callable[..., None], *args: Any) -> None:
    ctx = mp.get_context(ctx_name)
    p = ctx.Process(target=target, args=args)
    p.start()
    p.join(JOIN_S)
    if p.exitcode is None:
        p.kill()
        p.join()
    assert p.exitcode == 0, f"{ctx_name} child exited with {p.exitcode}"


# -------------------------------------------------------------------- tests


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_queue_handle_crosses_to_child(make_mq: MakeMQ, method: str) -> None:
    mq = make_mq(["name=jobs", "name=answers"])
    q = mq["jobs"]
    q.add("held-by-parent", "x")
    q.fetch()  # the parent holds an item: the child must not
    q.add("call-1", "INVITE")
    _run(method, _child_fetch_and_answer, q, mq["answers"])
    ans = mq["answers"].fetch(timeout=5)
    assert ans is not None and ans.key == "report"
    rep = eval(str(ans.value))  # a repr of plain values
    assert rep["pid"] != os.getpid()
    assert rep["held_before"] is None
    assert rep["is_creator"] is False and rep["db_url"] is None and rep["url"] is None
    assert rep["slot"] is not None and rep["slot"] != mq.slot  # type: ignore[attr-defined]
    assert rep["fetched"] == ("call-1", "INVITE")
    assert q.held == ("held-by-parent", "x")  # the parent's held item is untouched
    assert len(q) == 0
    st = q.stats()
    assert st.added == st.fetched == 2


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_namespace_handle_crosses_to_child(make_on_backend: MakeMQ, method: str) -> None:
    mq = make_on_backend(["name=in", "name=out;size=10"])
    mq["in"].add_many([("a", "alpha"), ("b", "beta")])
    _run(method, _child_namespace, mq)
    assert mq["out"].fetch_many(10) == [("a", "ALPHA"), ("b", "BETA")]
    assert mq.sizes() == {"in": 0, "out": 0}


def test_process_pool_executor_spawn(make_mq: MakeMQ) -> None:
    mq = make_mq(["name=work"])
    q = mq["work"]
    q.add_many([(f"k{i}", f"v{i}") for i in range(20)])
    ctx = mp.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        futures = [pool.submit(_pool_task, q, 5) for _ in range(4)]
        got = [it for f in futures for it in f.result(timeout=JOIN_S)]
        rep = pool.submit(_pool_report, q).result(timeout=JOIN_S)
    assert sorted(got) == sorted((f"k{i}", f"v{i}") for i in range(20))  # each exactly once
    assert rep["fetched"] is None and rep["held_before"] is None and not rep["is_creator"]
    assert q.stats().fetched == 20


def test_pickle_round_trip_in_process(make_mq: MakeMQ) -> None:
    mq = make_mq(["name=a", "name=b"])
    mq["a"].add("k", "v")
    mq["a"].fetch()
    mq["a"].add("k2", "v2")
    mq2, qa, qb = pickle.loads(pickle.dumps((mq, mq["a"], mq["b"])))
    try:
        assert qa._mq is mq2 and qb._mq is mq2  # pickled together: one handle
        assert mq2 is not mq and not mq2.is_creator and mq.is_creator
        assert mq2.namespace == mq.namespace and list(mq2) == ["a", "b"]
        assert qa.held is None and mq["a"].held == ("k", "v")
        assert qa.fetch() == ("k2", "v2")
        # one liveness slot per process, shared by its handles (issue 9 item 10)
        assert mq2.slot == mq.slot  # type: ignore[attr-defined]
        # a queue handle alone brings its namespace along
        q_alone = pickle.loads(pickle.dumps(mq["b"]))
        q_alone.add("x", "y")
        assert mq["b"].fetch() == ("x", "y")
        q_alone._mq.close()
    finally:
        mq2.close()


def test_closed_handle_does_not_pickle(make_mq: MakeMQ) -> None:
    mq = make_mq(["name=a"])
    q = mq["a"]
    mq.close()
    with pytest.raises(mqueue.MQueueError, match="closed"):
        pickle.dumps(mq)
    with pytest.raises(mqueue.MQueueError, match="closed"):
        pickle.dumps(q)


def test_unpickle_after_destroy_is_namespace_not_found(ns: str) -> None:
    mq = mqueue.create(ns, ["name=a"])
    data = pickle.dumps(mq["a"])
    mq.close()
    mqueue.destroy(ns)
    with pytest.raises(mqueue.NamespaceNotFoundError):
        pickle.loads(data)


def test_creator_with_dbmode_unpickles_as_non_creator(ns: str, tmp_path: Path) -> None:
    """The creator's close saves dbmode 1/3 queues; a spawned child's must not."""
    db = tmp_path / "mq.db"
    url = f"sqlite:///{db}"
    mq = mqueue.create(ns, ["name=in;dbmode=1", "name=out"], db_url=url)
    try:
        mq["in"].add_many([("a", "alpha"), ("b", "beta"), ("c", "gamma")])
        _run("spawn", _child_namespace, mq)  # child moves all of "in" and closes
        mq["in"].add("d", "delta")
    finally:
        mq.close()  # the creator saves "in": exactly one row, "d"
        destroy_quietly(ns)
    with sqlite3.connect(db) as con:
        rows = con.execute('SELECT "key", "val" FROM "in"').fetchall()
    con.close()
    assert rows == [("d", "delta")]


def test_kamailio_module_crosses_to_child(ns: str) -> None:
    m = kamailio.MQueueModule()
    m.modparam("mqueue", "name=myq;size=20")
    m.modparam("mqueue", "name=answers")
    m.init(ns)
    try:
        m.mq_add("myq", "held", "by parent")
        assert m.mq_fetch("myq") == 1
        m.mq_add("myq", "alice", "call from bob")
        _run("spawn", _kamailio_child, m)
        assert m.pv("$mqk(myq)") == "held"  # the parent's held item is its own
        assert m.rpc("mqueue.fetch", "answers") == {"key": "1", "val": "alice"}
        assert m.mq_size("myq") == -1
    finally:
        m.close()
        destroy_quietly(ns)


def test_uninitialised_kamailio_module_pickles() -> None:
    m = kamailio.MQueueModule()
    m.modparam("mqueue", "name=myq;size=20")
    m2 = pickle.loads(pickle.dumps(m))
    assert m2.definitions == m.definitions and m2.namespace is None


# ------------------------------------------------------------------ asyncio


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_asyncio_handles_cross_to_child(backend: Backend, ns: str, method: str) -> None:
    """asyncio handles pickle as attach by name too, also once they have been
    used (a Redis handle then has a client, connections and locks of its own)."""

    async def main() -> None:
        mq = await amqueue.create(ns, ["name=jobs", "name=answers"], url=backend.url)
        try:
            q = mq["jobs"]
            await q.add("held-by-parent", "x")
            await q.fetch()
            await q.add("call-1", "INVITE")
            await asyncio.to_thread(_run, method, _async_child, q, mq)
            ans = await mq["answers"].fetch(timeout=5)
            assert ans is not None and ans.key == "report"
            assert eval(str(ans.value)) == (True, False, ("call-1", "INVITE"))
            assert q.held == ("held-by-parent", "x")
        finally:
            await mq.close()
            await amqueue.destroy(ns, url=backend.url)
        with pytest.raises(mqueue.MQueueError, match="closed"):
            pickle.dumps(mq["jobs"])

    asyncio.run(main())


# -------------------------------------------------------------------- Redis


@pytest.fixture
def redis_ns() -> Iterator[str]:
    backend_url("redis")  # skips, or fails under MQUEUE_REQUIRE_SERVICES, without Redis
    name = new_namespace()
    try:
        yield name
    finally:
        with contextlib.suppress(mqueue.NamespaceNotFoundError):
            mqueue.destroy(name, url=REDIS_URL)


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_redis_queue_handle_crosses_to_child(redis_ns: str, method: str) -> None:
    with mqueue.create(redis_ns, ["name=jobs", "name=answers"], url=REDIS_URL) as mq:
        q = mq["jobs"]
        q.add("held-by-parent", "x")
        q.fetch()
        q.add("call-1", "INVITE")
        _run(method, _child_fetch_and_answer, q, mq["answers"])
        ans = mq["answers"].fetch(timeout=5)
        assert ans is not None
        rep = eval(str(ans.value))
        assert rep["held_before"] is None and rep["is_creator"] is False
        assert rep["url"] == REDIS_URL
        assert rep["fetched"] == ("call-1", "INVITE")
        assert q.held == ("held-by-parent", "x")


def test_redis_process_pool_executor(redis_ns: str) -> None:
    with mqueue.create(redis_ns, ["name=work"], url=REDIS_URL) as mq:
        q = mq["work"]
        q.add_many([(f"k{i}", f"v{i}") for i in range(10)])
        ctx = mp.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
            futures = [pool.submit(_pool_task, q, 5) for _ in range(2)]
            got = [it for f in futures for it in f.result(timeout=JOIN_S)]
        assert sorted(got) == sorted((f"k{i}", f"v{i}") for i in range(10))
        assert len(q) == 0
