"""mqueue.asyncio on the Redis backend (``MQUEUE_TEST_REDIS_URL``, default
``redis://127.0.0.1:6399/0``; skipped when no server answers, unless
``MQUEUE_REQUIRE_SERVICES=1``).  Calls run in the private worker pool; these
tests check the semantics and that a cancelled fetch loses no item."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import REDIS_URL, redis_problem

import mqueue
import mqueue.asyncio as amq

try:
    import redis  # noqa: F401  (skip the module without redis-py)
except ImportError:
    if os.environ.get("MQUEUE_REQUIRE_SERVICES"):
        raise
    pytest.skip("redis-py is not installed", allow_module_level=True)

URL = REDIS_URL
_PROBLEM = redis_problem(URL)
if _PROBLEM is not None:
    if os.environ.get("MQUEUE_REQUIRE_SERVICES"):
        raise RuntimeError(f"Redis at {URL} is required but: {_PROBLEM}")
    pytestmark = pytest.mark.skip(reason=f"no Redis server at {URL}: {_PROBLEM}")


@pytest.fixture
def rns() -> Iterator[str]:
    name = f"t{os.getpid()}_{uuid.uuid4().hex[:8]}"
    yield name
    with contextlib.suppress(FileNotFoundError):
        mqueue.destroy(name, url=URL)


def test_redis_same_results_as_sync(rns: str) -> None:
    async def main() -> None:
        mq = await amq.create(rns, ["name=q;size=3", "name=d;addmode=1"], url=URL)
        async with mq:
            q = mq["q"]
            assert mq.url == URL and list(mq) == ["q", "d"]
            assert await q.fetch() is None
            assert await q.add("k1", "v1") is True
            assert await q.add_many([(b"k2", b"v2"), ("k3", "v3"), ("k4", "v4")]) == 3
            assert await q.size() == 3
            assert (await q.stats()).evicted == 1
            assert await mq.sizes() == {"q": 3, "d": 0}
            assert await q.fetch() == (b"k2", b"v2") and q.key == b"k2"
            assert await q.fetch_many(10) == [("k3", "v3"), ("k4", "v4")]
            assert q.key == b"k2"
            assert await mq["d"].add("a", "1") is True and await mq["d"].add("a", "2") is False
            with pytest.raises(mqueue.ItemTypeError):
                await q.add(1, "x")  # type: ignore[arg-type]
            with pytest.raises(mqueue.ArgumentError):
                await q.fetch(-1)
            assert q.key == b"k2"
            with pytest.raises(KeyError):
                mq["nope"]
            waiter = asyncio.create_task(q.fetch(None))
            await asyncio.sleep(0.1)
            assert not waiter.done()
            async with await amq.attach(rns, url=URL) as other:
                await other["q"].add("late", "x")
            assert await asyncio.wait_for(waiter, 10) == ("late", "x")
            assert await q.fetch(0.1) is None and q.key is None
        assert mq.closed

    asyncio.run(main())


PRODUCER = """
import sys, time, mqueue
mq = mqueue.attach(sys.argv[1], url=sys.argv[2]); q = mq["q"]
for i in range(int(sys.argv[3])):
    q.add(str(i), "v")
    if i % 50 == 0: time.sleep(0.01)
q.add("END", "")
mq.close()
"""


def test_redis_cancellations_lose_nothing(rns: str) -> None:
    """Fetches cancelled at random while items flow from another process:
    every item is delivered exactly once (a cancelled fetch's items, taken by
    its worker thread afterwards, go to the handle's next fetch)."""
    n = 2000

    async def main() -> tuple[list[str], int]:
        mq = await amq.create(rns, ["name=q"], url=URL)
        try:
            q = mq["q"]
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
                    keep([await q.fetch(None)])
                else:
                    keep(await q.fetch_many(rng.randint(1, 20), 0.05))

            p = subprocess.Popen([sys.executable, "-c", PRODUCER, rns, URL, str(n)])
            try:
                while not done.is_set():
                    t = asyncio.create_task(one())
                    # a third are cancelled at once (while the worker thread runs
                    # the call), the rest after up to 10 ms (often while waiting)
                    await asyncio.sleep(0 if rng.random() < 0.33 else rng.random() * 0.01)
                    if not t.done():
                        t.cancel()
                    try:
                        await t
                    except asyncio.CancelledError:
                        cancels += 1
                assert p.wait(60) == 0
            finally:
                if p.poll() is None:
                    p.kill()
                    p.wait()
            await asyncio.sleep(amq.REDIS_SLICE_S + 0.5)  # cancelled workers finish
            while True:
                rest = await q.fetch_many(500)
                if not rest:
                    break
                keep(rest)
            return got, cancels
        finally:
            await mq.close()

    got, cancels = asyncio.run(main())
    counts = collections.Counter(got)
    assert not [k for k, c in counts.items() if c > 1]
    assert set(counts) == {str(i) for i in range(n)}
    assert cancels >= 50, cancels
