"""Throughput of the Redis backend next to a bare redis-py baseline (issue 6).

One producer process -> one consumer process, items of a 16-byte key and a
64-byte value, measured from the moment both are ready until the consumer has
received every item.  Rows, all in the same run against the same server:

- ``mqueue redis single``   ``q.add`` / ``q.fetch(timeout=5)``
- ``mqueue redis batch``    ``q.add_many(B)`` / ``q.fetch_many(B, timeout=5)``
- ``redis-py LPUSH/BRPOP``  the bare list loop, one item per round trip
- ``redis-py pipelined``    ``B`` LPUSH in one pipeline / ``LPOP key B``
- ``mqueue shm single`` / ``mqueue shm batch``  the same on shared memory, for scale

Usage::

    python benchmarks/bench_redis.py [--url redis://127.0.0.1:6399/0] [--quick]

Prints a table and writes ``benchmarks/results/redis.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mqueue

RESULTS = Path(__file__).resolve().parent / "results" / "redis.json"
CTX = mp.get_context("fork")
VALUE = "v" * 64


def key(i: int) -> str:
    return f"{i:016d}"


# ------------------------------------------------------------------ roles
def mq_producer(url: str | None, ns: str, n: int, batch: int) -> None:
    q = mqueue.attach(ns, url=url)["q"]
    if batch == 1:
        for i in range(n):
            q.add(key(i), VALUE)
    else:
        for s in range(0, n, batch):
            q.add_many([(key(i), VALUE) for i in range(s, min(n, s + batch))])


def mq_consumer(url: str | None, ns: str, n: int, batch: int) -> int:
    q = mqueue.attach(ns, url=url)["q"]
    got = 0
    if batch == 1:
        while got < n:
            if q.fetch(timeout=5) is None:
                break
            got += 1
    else:
        while got < n:
            items = q.fetch_many(batch, timeout=5)
            if not items:
                break
            got += len(items)
    return got


def raw_producer(url: str | None, ns: str, n: int, batch: int) -> None:
    import redis

    c = redis.Redis.from_url(url or "")
    k = f"bench:{{{ns}}}:list"
    if batch == 1:
        for i in range(n):
            c.lpush(k, key(i) + VALUE)
    else:
        for s in range(0, n, batch):
            p = c.pipeline(transaction=False)
            for i in range(s, min(n, s + batch)):
                p.lpush(k, key(i) + VALUE)
            p.execute()


def raw_consumer(url: str | None, ns: str, n: int, batch: int) -> int:
    import redis

    c = redis.Redis.from_url(url or "")
    k = f"bench:{{{ns}}}:list"
    got = 0
    while got < n:
        if batch == 1:
            if c.brpop([k], timeout=5) is None:
                break
            got += 1
        else:
            items = c.rpop(k, batch)
            if items:
                got += len(items)
                continue
            if c.brpop([k], timeout=5) is None:
                break
            got += 1
    return got


def _child(role: Callable[..., Any], args: tuple[Any, ...], ready: Any, go: Any, out: Any) -> None:
    ready.set()
    go.wait()
    r = role(*args)
    out.put((time.perf_counter(), r))


def run_pair(
    prod: Callable[..., Any], cons: Callable[..., Any], url: str | None, ns: str, n: int, batch: int
) -> float:
    """items/s of one producer -> one consumer run."""
    go = CTX.Event()
    rp, rc = CTX.Event(), CTX.Event()
    outp: Any = CTX.Queue()
    outc: Any = CTX.Queue()
    args = (url, ns, n, batch)
    pp = CTX.Process(target=_child, args=(prod, args, rp, go, outp))
    pc = CTX.Process(target=_child, args=(cons, args, rc, go, outc))
    pc.start()
    pp.start()
    try:
        rp.wait(30)
        rc.wait(30)
        t0 = time.perf_counter()
        go.set()
        t_end, got = outc.get(timeout=600)
        outp.get(timeout=60)
    finally:
        for p in (pp, pc):
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join()
    if got != n:
        raise RuntimeError(f"consumer got {got} of {n} items")
    return float(n / (t_end - t0))


def bench(url: str, quick: bool, batch: int) -> list[dict[str, Any]]:
    n_single = 5_000 if quick else 50_000
    n_batch = 50_000 if quick else 500_000
    rows: list[dict[str, Any]] = []
    cases: list[tuple[str, str | None, Callable[..., Any], Callable[..., Any], int, int]] = [
        ("mqueue redis single", url, mq_producer, mq_consumer, n_single, 1),
        ("redis-py LPUSH/BRPOP", url, raw_producer, raw_consumer, n_single, 1),
        ("mqueue redis batch", url, mq_producer, mq_consumer, n_batch, batch),
        ("redis-py pipelined LPUSH / LPOP count", url, raw_producer, raw_consumer, n_batch, batch),
        ("mqueue shm single", None, mq_producer, mq_consumer, n_single * 4, 1),
        ("mqueue shm batch", None, mq_producer, mq_consumer, n_batch * 4, batch),
    ]
    for name, u, prod, cons, n, b in cases:
        ns = f"bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        mq = None
        if prod is mq_producer:
            mq = mqueue.create(ns, ["name=q;bytes=512M"], url=u)
        try:
            rate = run_pair(prod, cons, u, ns, n, b)
        finally:
            if mq is not None:
                mq.close()
                mqueue.destroy(ns, url=u)
            else:
                import redis

                c = redis.Redis.from_url(url)
                c.delete(f"bench:{{{ns}}}:list")
                c.close()
        rows.append({"case": name, "backend": "shm" if u is None else "redis", "items": n,
                     "batch": b, "items_per_s": round(rate)})
        print(f"  {name:<40} {rate:>12,.0f} items/s  (n={n}, batch={b})", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--url", default=os.environ.get("MQUEUE_TEST_REDIS_URL",
                                                    "redis://127.0.0.1:6399/0"))
    ap.add_argument("--quick", action="store_true", help="small item counts (a few seconds)")
    ap.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    a = ap.parse_args(argv)
    import redis

    server = redis.Redis.from_url(a.url).info("server")
    print(f"Redis {server.get('redis_version')} at {a.url}; 1 producer -> 1 consumer process, "
          f"16-byte keys, 64-byte values")
    rows = bench(a.url, a.quick, a.batch)
    doc = {
        "benchmark": "bench_redis",
        "quick": a.quick,
        "redis_version": server.get("redis_version"),
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "rows": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{'case':<40} {'items/s':>12}")
    for r in rows:
        print(f"{r['case']:<40} {r['items_per_s']:>12,}")
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
