"""mqueue.asyncio on the Redis backend, on one server (``MQUEUE_TEST_REDIS_URL``)
and on a 3-master cluster (``MQUEUE_TEST_REDIS_CLUSTER_URL``); skipped without
them, except under ``MQUEUE_REQUIRE_SERVICES=1``.

Calls run on redis.asyncio (mqueue._aio_redis) with the sync backend's scripts
and operation ids: no thread, a connection per queue with waiters; a cancelled
fetch loses no item; a killed connection neither loses nor doubles an item."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import mqueue
import mqueue.asyncio as amq

redis = pytest.importorskip("redis")

from conftest import new_namespace as new_ns  # noqa: E402
from conftest import redis_admin as admin_client  # noqa: E402
from conftest import service_url  # noqa: E402


def backend_url(kind: str) -> str:
    """The URL of the single server or the cluster (skips, or fails in CI, without it)."""
    return service_url("redis" if kind == "single" else kind)

from mqueue import _aio_redis as AR  # noqa: E402


@pytest.fixture(params=["single", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    return backend_url(request.param)


@pytest.fixture
def rns(url: str) -> Iterator[str]:
    name = new_ns()
    yield name
    with contextlib.suppress(mqueue.NamespaceNotFoundError):
        mqueue.destroy(name, url=url)


def _conns(mq: amq.MQueue) -> tuple[int, int]:
    """(operation connections, waiting connections) the handle has open."""
    link: AR.RedisLink = mq._link  # type: ignore[attr-defined]
    return (
        sum(len(p.all) for p in link._ops.values()),
        sum(len(p.all) for p in link._waits.values()),
    )


def test_redis_same_results_as_sync(url: str, rns: str) -> None:
    async def main() -> None:
        mq = await amq.create(rns, ["name=q;size=3", "name=d;addmode=1"], url=url)
        async with mq:
            q = mq["q"]
            assert mq.url == url and list(mq) == ["q", "d"]
            assert await q.fetch() is None
            assert await q.add("k1", "v1") is True
            assert await q.add_many([(b"k2", b"v2"), ("k3", "v3"), ("k4", "v4")]) == 3
            assert await q.add_many([]) == 0
            assert await q.size() == 3
            assert (await q.stats()).evicted == 1
            assert await mq.sizes() == {"q": 3, "d": 0}
            assert await q.fetch() == (b"k2", b"v2") and q.key == b"k2"
            assert await q.fetch_many(10) == [("k3", "v3"), ("k4", "v4")]
            assert q.key == b"k2"
            assert await mq["d"].add("a", "1") is True and await mq["d"].add("a", "2") is False
            with pytest.raises(mqueue.ItemTypeError):
                await q.add(1, "x")  # type: ignore[arg-type]
            with pytest.raises(mqueue.ItemTypeError):
                await q.add_many([("a",)])  # type: ignore[list-item]
            with pytest.raises(mqueue.ItemTooLargeError):
                await q.add("k", "x" * 10_000_000)
            with pytest.raises(mqueue.ArgumentError):
                await q.fetch(-1)
            assert await q.size() == 0  # the refused calls changed nothing
            assert q.key == b"k2"
            with pytest.raises(KeyError):
                mq["nope"]
            waiter = asyncio.create_task(q.fetch(None))
            await asyncio.sleep(0.1)
            assert not waiter.done()
            async with await amq.attach(rns, url=url) as other:
                await other["q"].add("late", "x")
            assert await asyncio.wait_for(waiter, 10) == ("late", "x")
            assert await q.fetch(0.1) is None and q.key is None
            # a timed wait ends at its deadline, also for tasks in line behind it
            t = [asyncio.create_task(q.fetch_many(5, 0.2)) for _ in range(3)]
            assert await asyncio.wait_for(asyncio.gather(*t), 5) == [[], [], []]
        assert mq.closed

    asyncio.run(main())


def test_redis_waiters_add_no_thread(url: str, rns: str) -> None:
    """1,000 tasks awaiting fetch(timeout=None) on 8 queues: no thread is
    added, and the handle holds one waiting connection per queue."""

    async def main() -> None:
        mq = await amq.create(rns, [f"name=q{i}" for i in range(8)], url=url)
        async with mq:
            await mq["q0"].size()  # the client exists before counting
            before = threading.active_count()
            tasks = [asyncio.create_task(mq[f"q{i % 8}"].fetch(None)) for i in range(1000)]
            await asyncio.sleep(1.0)
            assert threading.active_count() == before
            link: AR.RedisLink = mq._link  # type: ignore[attr-defined]
            assert _conns(mq)[1] == 8  # one waiting connection per queue
            assert all(len(p.all) <= AR.POOL_SIZE for p in link._ops.values())
            assert not any(t.done() for t in tasks)
            for i in range(8):
                await mq[f"q{i}"].add_many([(f"{i}:{j}", "v") for j in range(125)])
            got = await asyncio.wait_for(asyncio.gather(*tasks), 60)
            keys = [it.key for it in got]
            assert len(set(keys)) == 1000
            assert threading.active_count() == before

    asyncio.run(main())


def test_redis_close_ends_waiters(url: str, rns: str) -> None:
    async def main() -> None:
        mq = await amq.create(rns, ["name=q"], url=url)
        q = mq["q"]
        waiters = [asyncio.create_task(q.fetch(None)) for _ in range(5)]

        async def loop() -> int:
            n = 0
            async for _ in q:
                n += 1
            return n

        it = asyncio.create_task(loop())
        await asyncio.sleep(0.3)
        await mq.close()
        res = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 10)
        assert all(isinstance(r, mqueue.MQueueError) for r in res), res
        assert await asyncio.wait_for(it, 10) == 0
        with pytest.raises(mqueue.MQueueError):
            await q.add("k", "v")

    asyncio.run(main())


PRODUCER = """
import sys, time, mqueue
mq = mqueue.attach(sys.argv[1], url=sys.argv[2]); q = mq["q"]
for i in range(int(sys.argv[3])):
    q.add(str(i), "v")
    if i % 20 == 0: time.sleep(0.005)
for _ in range(100): q.add("END", "")
mq.close()
"""


def _producer(rns: str, url: str, n: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", PRODUCER, rns, url, str(n)])


def test_redis_cancellations_lose_nothing(url: str, rns: str) -> None:
    """Thousands of fetches cancelled at random (in line, waiting on the
    server, or with the take on the wire) while items flow from another
    process: every item is delivered exactly once (the items of a take cut
    short go to the handle's next fetch)."""
    n = 3000

    async def main() -> tuple[list[str], int, int]:
        mq = await amq.create(rns, ["name=q"], url=url)
        try:
            q = mq["q"]
            ops: AR.Ops = q._ops  # type: ignore[attr-defined]
            settled = 0
            real = ops._settle

            async def counting(op: tuple[str, str]) -> None:
                nonlocal settled
                settled += 1
                await real(op)

            ops._settle = counting  # type: ignore[method-assign]
            got: list[str] = []
            done = asyncio.Event()
            cancels = 0
            rng = random.Random(5)

            def keep(items: list[Any]) -> None:
                for k, _ in items:
                    if k == "END":
                        done.set()
                    else:
                        got.append(k)

            async def one() -> None:
                if rng.random() < 0.5:
                    it = await q.fetch(None)
                    keep([it])
                else:
                    keep(await q.fetch_many(rng.randint(1, 20), 0.05))

            async def worker() -> None:
                nonlocal cancels
                while not done.is_set():
                    t = asyncio.create_task(one())
                    await asyncio.sleep(0 if rng.random() < 0.3 else rng.random() * 0.003)
                    if not t.done():
                        t.cancel()
                    try:
                        await t
                    except asyncio.CancelledError:
                        cancels += 1

            p = _producer(rns, url, n)
            try:
                await asyncio.gather(*(worker() for _ in range(8)))
                assert p.wait(60) == 0
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            while True:
                rest = await q.fetch_many(500)
                if not rest:
                    break
                keep(rest)
            return got, cancels, settled
        finally:
            await mq.close()

    got, cancels, settled = asyncio.run(main())
    counts = collections.Counter(got)
    assert not [k for k, c in counts.items() if c > 1]
    assert set(counts) == {str(i) for i in range(n)}
    assert cancels >= 1000, cancels
    assert settled >= 20, settled  # cancelled with the take on the wire


def _kill_one(mq: amq.MQueue, admins: dict[tuple[str, int], Any], rng: random.Random) -> bool:
    """CLIENT KILL one connection of the handle that is open (in use or idle)."""
    link: AR.RedisLink = mq._link  # type: ignore[attr-defined]
    conns = [c for p in (*link._ops.values(), *link._waits.values()) for c in p.all]
    conns = [c for c in conns if c.is_connected and getattr(c, "_writer", None) is not None]
    if not conns:
        return False
    c = rng.choice(conns)
    sock = c._writer.get_extra_info("sockname")
    node = (c.host, int(c.port))
    if node not in admins:
        admins[node] = redis.Redis(host=c.host, port=int(c.port))
    try:
        return bool(admins[node].client_kill(f"{sock[0]}:{sock[1]}"))
    except redis.exceptions.ResponseError:  # closed meanwhile
        return False


def test_redis_killed_connections_exactly_once(url: str, rns: str) -> None:
    """The handle's connections are killed on the server (CLIENT KILL) every
    few ms while its tasks add (2,000 items, in batches) and fetch (with and
    without waiting), beside a producer process: each item is stored once
    and delivered once (retries carry the same operation id)."""
    n_proc, n_local = 2000, 2000

    async def main() -> tuple[list[str], int]:
        mq = await amq.create(rns, ["name=q"], url=url)
        admins: dict[tuple[str, int], Any] = {}
        kills = 0
        try:
            q = mq["q"]
            got: list[str] = []
            ends = 0
            stop = asyncio.Event()
            rng = random.Random(7)

            async def killer() -> None:
                nonlocal kills
                while not stop.is_set():
                    await asyncio.sleep(rng.random() * 0.01)
                    kills += _kill_one(mq, admins, rng)

            async def adder() -> None:
                for i in range(0, n_local, 10):
                    await q.add_many([(f"L{j}", "v") for j in range(i, i + 10)])

            all_ends = asyncio.Event()

            async def consumer() -> None:
                nonlocal ends
                while True:
                    items = (
                        [await q.fetch(None)]
                        if rng.random() < 0.5
                        else await q.fetch_many(rng.randint(1, 30), 0.05)
                    )
                    for k, _ in items:
                        if k == "END":
                            ends += 1
                            if ends == 100:
                                all_ends.set()
                        else:
                            got.append(k)

            kt = asyncio.create_task(killer())
            p = _producer(rns, url, n_proc)
            try:
                cs = [asyncio.create_task(consumer()) for _ in range(4)]
                await asyncio.wait_for(adder(), 120)
                await asyncio.wait_for(all_ends.wait(), 120)
                for c in cs:  # the others wait for more: cancelled (items kept)
                    c.cancel()
                await asyncio.gather(*cs, return_exceptions=True)
                assert p.wait(60) == 0
            finally:
                stop.set()
                await kt
                if p.poll() is None:
                    p.kill()
                    p.wait()
            while True:  # items queued after the last END (local adds)
                rest = await q.fetch_many(500)
                if not rest:
                    break
                got.extend(str(k) for k, _ in rest if k != "END")
            st = await q.stats()
            assert st.length == 0 and st.added == n_proc + n_local + 100
            return got, kills
        finally:
            await mq.close()
            for a in admins.values():
                a.close()

    got, kills = asyncio.run(main())
    counts = collections.Counter(got)
    assert not [k for k, c in counts.items() if c > 1]
    want = {str(i) for i in range(n_proc)} | {f"L{j}" for j in range(n_local)}
    assert set(counts) == want
    assert kills >= 20, kills


def test_redis_admin_client_sees_same_queue(url: str, rns: str) -> None:
    """The async handle and the sync API share keys and scripts: what one
    adds the other fetches; the structure checks out afterwards."""

    async def main() -> None:
        async with await amq.create(rns, ["name=q;addmode=2"], url=url) as mq:
            await mq["q"].add_many([("a", "1"), ("b", "2"), ("a", "3")])
            s = mqueue.attach(rns, url=url)
            try:
                assert s["q"].fetch() == ("b", "2")
                s["q"].add("c", "4")
                assert await mq["q"].fetch_many(5) == [("a", "3"), ("c", "4")]
                s["q"]._check()  # type: ignore[attr-defined]
            finally:
                s.close()

    asyncio.run(main())
    c = admin_client(url)
    c.close()


@pytest.mark.skipif(os.environ.get("MQUEUE_SKIP_UVLOOP") == "1", reason="asked")
def test_redis_under_uvloop(url: str, rns: str) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        async with await amq.create(rns, ["name=q"], url=url) as mq:
            w = asyncio.create_task(mq["q"].fetch(None))
            await asyncio.sleep(0.1)
            await mq["q"].add("k", "v")
            assert await asyncio.wait_for(w, 10) == ("k", "v")

    uvloop.run(main())


@pytest.fixture
def one_url() -> str:
    return backend_url("single")


async def _one_item_ns(url: str) -> tuple[str, Any, AR.RedisLink]:
    """A new namespace on ``url`` whose queue ``q`` holds ("a", "1"): its
    name, its asyncio handle and the handle's Redis link."""
    ns = new_ns()
    mq = await amq.create(ns, ["name=q"], url=url)
    await mq["q"].add("a", "1")
    return ns, mq, mq._link  # type: ignore[attr-defined]


def test_redis_unreachable_then_back(one_url: str) -> None:
    """The server unreachable (the handle's client pointed at a closed port):
    each operation retries for the retry window, then raises BackendError with
    ``outcome_known`` True and changes nothing; many fetches waiting at that
    moment all fail the same way (no settlement error repeated to later
    fetches); with the server back, everything works and nothing was lost."""
    from redis.asyncio import Redis

    async def main() -> None:
        ns, mq, link = await _one_item_ns(one_url)
        try:
            q = mq["q"]
            real = await link.client()
            link._client = Redis.from_url("redis://127.0.0.1:1/0")
            link._ops.clear()
            mq.sync.retry_window = 0.3  # type: ignore[attr-defined]
            for op in (q.add("b", "2"), q.fetch(0), q.size(), q.fetch_many(5, None)):
                with pytest.raises(mqueue.BackendError) as ei:
                    await op
                assert ei.value.outcome_known is True
            assert not q._ops.settling  # type: ignore[attr-defined]
            link._client = real
            link._ops.clear()
            assert await q.size() == 1
            assert await q.fetch_many(5) == [("a", "1")]
        finally:
            await mq.close()
            mqueue.destroy(ns, url=one_url)

    asyncio.run(main())


def test_redis_behind_a_proxy_down_says_not_applied(one_url: str) -> None:
    """Redis behind a TCP proxy whose server is down (each connection closed
    during its handshake): nothing was sent, so BackendError says "could not
    connect", not applied, ``outcome_known`` True; with the server back,
    nothing was added or taken."""
    from test_redis import _free_port
    from test_redis_faults import DropProxy

    host, port = one_url.split("//")[1].split("/")[0].split(":")

    async def main() -> None:
        proxy = DropProxy(host, int(port))
        proxy.enabled = False  # forwards everything
        ns = new_ns()
        mq = await amq.create(ns, ["name=q"], url=proxy.url)
        try:
            q = mq["q"]
            await q.add("a", "1")
            mq.sync.retry_window = 0.3  # type: ignore[attr-defined]
            proxy.target = ("127.0.0.1", _free_port())  # the server goes away
            proxy.cut()
            for op in (q.add("b", "2"), q.fetch(0), q.fetch_many(5, None)):
                with pytest.raises(mqueue.BackendError) as ei:
                    await op
                msg = str(ei.value)
                assert "could not connect" in msg and "may or may not" not in msg, msg
                assert ei.value.outcome_known is True
            proxy.target = (host, int(port))  # back
            assert await q.fetch_many(5) == [("a", "1")]
            assert await q.size() == 0
        finally:
            await mq.close()
            proxy.close()
            mqueue.destroy(ns, url=one_url)

    asyncio.run(main())


def test_redis_cluster_slot_map_naming_a_dead_master_is_refreshed() -> None:
    """After a failover the slot map names the old master, which no longer
    answers (no MOVED comes from it): after a connection fault the slot map
    is read again and the operation reaches the new master."""
    from redis.asyncio.cluster import ClusterNode
    from test_redis import _free_port

    from mqueue import _redis as R

    curl = backend_url("cluster")

    async def main() -> None:
        ns, mq, link = await _one_item_ns(curl)
        try:
            q = mq["q"]
            client = await link.client()
            slot = client.keyslot(R.queue_keys(ns, "q")[0])
            client.nodes_manager.slots_cache[slot] = [
                ClusterNode("127.0.0.1", _free_port(), server_type="primary")
            ]
            mq.sync.retry_window = 5.0  # type: ignore[attr-defined]
            await q.add("b", "2")
            assert await q.fetch_many(5) == [("a", "1"), ("b", "2")]
        finally:
            await mq.close()
            mqueue.destroy(ns, url=curl)

    asyncio.run(main())


def test_redis_pool_bounds_connections(url: str, rns: str) -> None:
    """300 tasks adding and 300 fetching at once share at most POOL_SIZE
    connections per server (the rest queue for one); every item once."""

    async def main() -> None:
        async with await amq.create(rns, ["name=q"], url=url) as mq:
            q = mq["q"]
            link: AR.RedisLink = mq._link  # type: ignore[attr-defined]
            most = 0

            async def watch() -> None:
                nonlocal most
                while True:
                    most = max(most, *(len(p.all) for p in link._ops.values()), 0)
                    await asyncio.sleep(0)

            w = asyncio.create_task(watch())
            assert all(await asyncio.gather(*(q.add(str(i), "v") for i in range(300))))
            got = await asyncio.gather(*(q.fetch(5) for _ in range(300)))
            w.cancel()
            assert sorted(int(it.key) for it in got) == list(range(300))
            assert 1 <= most <= AR.POOL_SIZE

    asyncio.run(main())


@pytest.mark.skipif(sys.version_info < (3, 11), reason="Task.cancelling() is Python 3.11+")
def test_redis_cancellation_swallowed_below_is_honoured(
    url: str, rns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancellation that something below the backend turns into a
    connection fault (as a timeout helper in a client library can, when the
    cancel and its own deadline meet) must still end the fetch: seen in CI as
    a cancelled consumer that went on waiting in fetch(None) forever.  The
    cancelled waiter ends with CancelledError, and an item the swallowed
    attempt took is not lost: the next fetch gets it."""
    real_send = AR.RedisLink.send
    swallow = {"on": False}

    async def send(self: AR.RedisLink, *a: Any, **kw: Any) -> list[Any]:
        try:
            return await real_send(self, *a, **kw)
        except asyncio.CancelledError:
            if not swallow["on"]:
                raise
            raise redis.exceptions.ConnectionError("cancel turned into a fault") from None

    monkeypatch.setattr(AR.RedisLink, "send", send)

    async def main() -> tuple[bool, Any, list[Any]]:
        mq = await amq.create(rns, ["name=q"], url=url)
        try:
            q = mq["q"]
            swallow["on"] = True
            t = asyncio.create_task(q.fetch(None))
            await asyncio.sleep(0.3)  # waiting on the empty queue
            t.cancel()
            try:
                await asyncio.wait_for(asyncio.shield(t), 5)
                ended = False
            except asyncio.CancelledError:
                ended = True
            except asyncio.TimeoutError:
                ended = False
                t.cancel()
                swallow["on"] = False
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(t, 5)
            swallow["on"] = False
            await q.add("k", "v")
            got = await q.fetch(2)
            rest = await q.fetch_many(10)
            return ended, got, rest
        finally:
            await mq.close()

    ended, got, rest = asyncio.run(main())
    assert ended, "the cancelled fetch went on waiting"
    assert got is not None and got.key == "k" and rest == []
