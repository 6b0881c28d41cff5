"""Throughput of the Redis backend next to a bare redis-py baseline (issue 6).

One producer process -> one consumer process, items of a 16-byte key and a
64-byte value, measured from the moment both are ready until the consumer has
received every item.  Rows, all in the same run against the same server:

- ``mqueue redis single``   ``q.add`` / ``q.fetch(timeout=5)``
- ``mqueue redis batch``    ``q.add_many(B)`` / ``q.fetch_many(B, timeout=5)``
- ``redis-py LPUSH/BRPOP``  the bare list loop, one item per round trip
- ``redis-py pipelined``    ``B`` LPUSH in one pipeline / ``LPOP key B``
- ``mqueue shm single`` / ``mqueue shm batch``  the same on shared memory, for scale

Each case runs once per round, rounds interleaved; the figures are medians.
``--op-cost`` also measures the server time of one add / take script with and
without its operation record (INFO commandstats).

Usage::

    python benchmarks/bench_redis.py [--url redis://127.0.0.1:6399/0] [--quick]
        [--rounds 3] [--op-cost]

Prints a table and writes ``benchmarks/results/redis.json``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
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


CASES = [
    ("mqueue redis single", "redis", "mq", 1),
    ("redis-py LPUSH/BRPOP", "redis", "raw", 1),
    ("mqueue redis batch", "redis", "mq", 0),
    ("redis-py pipelined LPUSH / LPOP count", "redis", "raw", 0),
    ("mqueue shm single", "shm", "mq", 1),
    ("mqueue shm batch", "shm", "mq", 0),
]


def one(url: str, name: str, backend: str, kind: str, n: int, b: int) -> float:
    u = None if backend == "shm" else url
    ns = f"bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    prod, cons = (mq_producer, mq_consumer) if kind == "mq" else (raw_producer, raw_consumer)
    mq = mqueue.create(ns, ["name=q;bytes=512M"], url=u) if kind == "mq" else None
    try:
        return run_pair(prod, cons, u, ns, n, b)
    finally:
        if mq is not None:
            mq.close()
            mqueue.destroy(ns, url=u)
        else:
            import redis

            c = redis.Redis.from_url(url)
            c.delete(f"bench:{{{ns}}}:list")
            c.close()


def bench(url: str, quick: bool, batch: int, rounds: int) -> list[dict[str, Any]]:
    """Every case once per round, the rounds interleaved (a machine that gets
    busier or quieter affects every case alike); the median of the rounds."""
    n_single = 5_000 if quick else 30_000
    n_batch = 50_000 if quick else 300_000
    rates: dict[str, list[float]] = {c[0]: [] for c in CASES}
    for r in range(rounds):
        for name, backend, kind, single in CASES:
            n = (n_single if single else n_batch) * (4 if backend == "shm" else 1)
            rate = one(url, name, backend, kind, n, 1 if single else batch)
            rates[name].append(rate)
            print(f"  round {r + 1}: {name:<40} {rate:>12,.0f} items/s", flush=True)
    rows = []
    for name, backend, _kind, single in CASES:
        n = (n_single if single else n_batch) * (4 if backend == "shm" else 1)
        rows.append({"case": name, "backend": backend, "items": n,
                     "batch": 1 if single else batch,
                     "items_per_s": round(statistics.median(rates[name])),
                     "rounds": [round(x) for x in rates[name]]})
    return rows


def op_record_cost(url: str, rounds: int, n: int = 20_000) -> dict[str, float]:
    """Server time per script call (INFO commandstats, usec_per_call) of add and
    take with and without the operation-record bookkeeping (the same scripts
    with the record lookup and write cut out), pipelined 200 per round trip;
    medians of ``rounds``.  Uses CONFIG RESETSTAT: run it on a benchmark server."""
    import redis

    from mqueue import _redis as R

    c = redis.Redis.from_url(url)
    ns = f"bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    mq = mqueue.create(ns, ["name=q;bytes=512M"], url=url)
    q: Any = mq["q"]
    keys = [*R.queue_keys(ns, "q"), f"mqueue:{{{ns}:q}}:op:bench"]
    rec = q._record(key(0), VALUE)
    lookup = "local done, res = recorded()\nif done then return res end\n"
    variants = {
        "add": (R._LUA_ADD, lambda i: [rec]),
        "add without op records": (
            R._LUA_ADD.replace(lookup, "").replace("record(stored)\n", ""),
            lambda i: [rec]),
        "take": (R._LUA_TAKE, lambda i: [1]),
        "take without op records": (
            R._LUA_TAKE.replace(lookup, "").replace("if #out > 1 then record(out) end\n", ""),
            lambda i: [1]),
        "LPUSH (for scale)": ("", lambda i: []),
    }
    out: dict[str, list[float]] = {k: [] for k in variants}
    try:
        for _ in range(rounds):
            for name, (src, argf) in variants.items():
                c.config_resetstat()
                p = c.pipeline(transaction=False)
                sha = c.script_load(src.replace("OP_TTL", "300")) if src else ""
                for i in range(n):
                    if src:
                        p.evalsha(sha, len(keys), *keys, mq._gen, str(i), *argf(i))  # type: ignore[attr-defined]
                    else:
                        p.lpush(keys[3] + "x", VALUE)
                    if i % 200 == 199:
                        p.execute()
                        p = c.pipeline(transaction=False)
                p.execute()
                st = c.info("commandstats")["cmdstat_evalsha" if src else "cmdstat_lpush"]
                out[name].append(float(st["usec_per_call"]))
    finally:
        c.delete(keys[3] + "x")
        mq.close()
        mqueue.destroy(ns, url=url)
        c.close()
    return {k: round(statistics.median(v), 2) for k, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--url", default=os.environ.get("MQUEUE_TEST_REDIS_URL",
                                                    "redis://127.0.0.1:6399/0"))
    ap.add_argument("--quick", action="store_true", help="small item counts (a few seconds)")
    ap.add_argument("--batch", type=int, default=100, help="batch size (default 100)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    ap.add_argument("--op-cost", action="store_true",
                    help="also measure the server time of the operation records "
                         "(uses CONFIG RESETSTAT: a benchmark server only)")
    ap.add_argument("--no-hiredis", action="store_true",
                    help="use redis-py's pure-Python parser even if hiredis is installed")
    a = ap.parse_args(argv)
    if a.no_hiredis:
        if "redis" in sys.modules:
            raise SystemExit("--no-hiredis: redis-py was imported already")
        sys.modules["hiredis"] = None  # type: ignore[assignment]
    import redis

    try:
        import hiredis

        parser = f"hiredis {hiredis.__version__}"
    except ImportError:
        parser = "pure-Python parser (no hiredis)"
    server = redis.Redis.from_url(a.url).info("server")
    print(f"Redis {server.get('redis_version')} at {a.url}; redis-py {redis.__version__}, "
          f"{parser}; 1 producer -> 1 consumer process, 16-byte keys, 64-byte values")
    rows = bench(a.url, a.quick, a.batch, a.rounds)
    rate = {r["case"]: r["items_per_s"] for r in rows}
    ratios = {
        "single vs LPUSH/BRPOP": round(rate["mqueue redis single"]
                                       / rate["redis-py LPUSH/BRPOP"], 2),
        "batch vs pipelined LPUSH / LPOP count": round(
            rate["mqueue redis batch"] / rate["redis-py pipelined LPUSH / LPOP count"], 2),
    }
    cost = op_record_cost(a.url, a.rounds) if a.op_cost else None
    doc = {
        "benchmark": "bench_redis",
        "quick": a.quick,
        "redis_version": server.get("redis_version"),
        "redis_py": redis.__version__,
        "parser": parser,
        "python": sys.version.split()[0],
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "rows": rows,
        "ratios": ratios,
        "server_usec_per_call": cost,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{'case':<40} {'items/s (median)':>17}")
    for r in rows:
        print(f"{r['case']:<40} {r['items_per_s']:>17,}")
    for k, v in ratios.items():
        print(f"{k:<40} {v:>16}x")
    if cost:
        print("\nserver time per call (usec, INFO commandstats):")
        for k, v in cost.items():
            print(f"  {k:<38} {v:>8}")
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
