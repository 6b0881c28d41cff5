"""mqueue.asyncio beside the sync API, shared memory (issue 12).

1. Throughput, 1 producer process -> 1 consumer process, 300,000 items (200,000
   with --quick): the consumer is a sync ``fetch`` loop, one asyncio task
   awaiting ``fetch(timeout=None)``, 100 tasks doing the same on one loop, and
   one task awaiting ``fetch_many(1000, timeout=None)``.  Every item checked to
   arrive exactly once.  The 100-task run also reports the loop's longest stall
   (a ticker task sleeping 1 ms): wall time, and the loop thread's own CPU
   time in it (on a loaded machine the OS preempting the thread shows in the
   first only).
2. Wake-up latency: a consumer waits in ``fetch(timeout=None)`` (sync) or
   ``await q.fetch(timeout=None)`` (asyncio); the producer sleeps 0.5..1.5 ms,
   puts ``time.monotonic_ns()`` in the value and adds; the consumer reads the
   clock when its fetch returns.  p50 / p90 / p99 / max in µs.
3. Threads and idle CPU of 1,000 tasks awaiting ``fetch(timeout=None)`` on 8
   queues: threads added (``threading.active_count()`` and the OS count), CPU
   time of the process over 2 s of idleness.

Usage: ``python benchmarks/bench_asyncio.py [--quick]``; writes
``benchmarks/results/asyncio.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import threading
import time
from typing import Any

import common

import mqueue
import mqueue.asyncio as amq
from mqueue import _aio_notify

END = "END"


def _produce(ns: str, n: int, batch: bool) -> None:
    mq = mqueue.attach(ns)
    q = mq["q"]
    items = [(f"k{i:08d}", "v" * 64) for i in range(n)]
    if batch:
        for i in range(0, n, 1000):
            q.add_many(items[i : i + 1000])
    else:
        add = q.add
        for k, v in items:
            add(k, v)
    for _ in range(100):
        q.add(END, "")
    mq.close()


def _check(n: int, keys: list[str]) -> None:
    if len(keys) != n or len(set(keys)) != n:
        raise SystemExit(f"lost or doubled items: {len(keys)} of {n}, {len(set(keys))} distinct")


def sync_consumer(ns: str, n: int) -> tuple[float, dict[str, Any]]:
    mq = mqueue.attach(ns)
    q = mq["q"]
    keys: list[str] = []
    append = keys.append
    p = common.CTX.Process(target=_produce, args=(ns, n, False))
    t0 = time.perf_counter()
    p.start()
    fetch = q.fetch
    while True:
        it = fetch(None)
        if it.key == END:  # type: ignore[union-attr]
            break
        append(it.key)  # type: ignore[union-attr, arg-type]
    dt = time.perf_counter() - t0
    p.join()
    mq.close()
    _check(n, keys)
    return n / dt, {}


def _preempted() -> int:
    """Times the OS took the CPU from this (the loop's) thread while it could run."""
    with open("/proc/thread-self/status") as f:
        return next(int(x.split()[1]) for x in f if x.startswith("nonvoluntary_ctxt_switches"))


def async_consumer(ns: str, n: int, tasks: int, batch: int) -> tuple[float, dict[str, Any]]:
    async def main() -> tuple[float, dict[str, Any]]:
        mq = await amq.attach(ns)
        q = mq["q"]
        keys: list[Any] = []
        worst = busy = 0.0
        running = True

        async def ticker() -> None:
            nonlocal worst, busy
            loop = asyncio.get_running_loop()
            while running:
                t0 = loop.time()
                c0 = time.thread_time()
                await asyncio.sleep(0.001)
                worst = max(worst, loop.time() - t0 - 0.001)
                busy = max(busy, time.thread_time() - c0)

        async def one() -> None:
            while True:
                it = await q.fetch(None)
                if it.key == END:  # type: ignore[union-attr]
                    return
                keys.append(it.key)  # type: ignore[union-attr]

        async def many() -> None:
            while True:
                for it in await q.fetch_many(batch, None):
                    if it.key == END:
                        return
                    keys.append(it.key)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.01)
        pre0 = _preempted()
        p = common.CTX.Process(target=_produce, args=(ns, n, batch > 1))
        t0 = time.perf_counter()
        p.start()
        await asyncio.gather(*((many() if batch > 1 else one()) for _ in range(tasks)))
        dt = time.perf_counter() - t0
        running = False
        await tick
        p.join()
        await mq.close()
        _check(n, keys)
        return n / dt, {
            "stall_ms": round(worst * 1e3, 2),
            "busy_ms": round(busy * 1e3, 2),
            "preempted": _preempted() - pre0,
        }

    return asyncio.run(main())


def throughput(n: int, runs: int) -> list[dict[str, Any]]:
    cases = [
        ("sync fetch(timeout=None)", lambda ns: sync_consumer(ns, n)),
        ("asyncio, 1 task, await fetch(None)", lambda ns: async_consumer(ns, n, 1, 1)),
        ("asyncio, 100 tasks, await fetch(None)", lambda ns: async_consumer(ns, n, 100, 1)),
        (
            "asyncio, 1 task, await fetch_many(1000, None) *",
            lambda ns: async_consumer(ns, n, 1, 1000),
        ),
    ]
    out = []
    for name, fn in cases:
        rates = []
        extra: dict[str, Any] = {}
        for _ in range(runs):
            ns = common.namespace("aio")
            mq = mqueue.create(ns, ["name=q;bytes=64M"])
            try:
                r, ex = fn(ns)
            finally:
                mq.close()
                mqueue.destroy(ns)
            rates.append(r)
            for k, v in ex.items():
                extra[k] = max(extra.get(k, 0), v)
        out.append({"case": name, "items_per_s": statistics.median(rates), **extra})
        common.progress(f"{name}: {statistics.median(rates):,.0f}/s")
    common.progress_done()
    return out


def _lat_producer(ns: str, samples: int) -> None:
    mq = mqueue.attach(ns)
    q = mq["q"]
    rng = random.Random(3)
    for _ in range(samples):
        time.sleep(0.0005 + rng.random() * 0.001)
        q.add("t", str(time.monotonic_ns()))
    mq.close()


def _pipe_producer(w: int, samples: int) -> None:
    rng = random.Random(3)
    for _ in range(samples):
        time.sleep(0.0005 + rng.random() * 0.001)
        os.write(w, time.monotonic_ns().to_bytes(8, "little"))


def pipe_floor(samples: int) -> list[int]:
    """The floor of any asyncio wake-up from another process: the producer
    writes its clock into a pipe the loop reads (``add_reader``), no mqueue."""
    r, w = os.pipe()
    lat: list[int] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        p = common.CTX.Process(target=_pipe_producer, args=(w, samples))
        p.start()
        for _ in range(samples):
            fut: asyncio.Future[bytes] = loop.create_future()

            def ready(fut: asyncio.Future[bytes] = fut) -> None:
                if not fut.done():
                    fut.set_result(os.read(r, 8))

            loop.add_reader(r, ready)
            b = await fut
            loop.remove_reader(r)
            lat.append(time.monotonic_ns() - int.from_bytes(b, "little"))
        p.join()

    try:
        asyncio.run(main())
    finally:
        os.close(r)
        os.close(w)
    return lat


NOTIFIER_ROW = "asyncio await fetch(timeout=None), notifier threads (MQUEUE_AIO_NO_URING=1)"


def _async_latency(ns: str, p: Any, samples: int, lat: list[int], notifier: bool) -> None:
    """The asyncio consumer of latency(); ``notifier``: its loop waits through
    the notifier threads even where io_uring is used (the mode is chosen per
    loop when it first waits)."""

    async def main() -> None:
        amqh = await amq.attach(ns)
        aq = amqh["q"]
        p.start()
        for _ in range(samples):
            it = await aq.fetch(None)
            lat.append(time.monotonic_ns() - int(it.value))  # type: ignore[union-attr, arg-type]
        await amqh.close()

    saved = os.environ.get("MQUEUE_AIO_NO_URING")
    if notifier:
        os.environ["MQUEUE_AIO_NO_URING"] = "1"
    try:
        asyncio.run(main())
    finally:
        if saved is None:
            os.environ.pop("MQUEUE_AIO_NO_URING", None)
        else:
            os.environ["MQUEUE_AIO_NO_URING"] = saved


def latency(samples: int) -> list[dict[str, Any]]:
    """Rows: sync, asyncio (this process's wait mode), the floor, and where
    that mode is io_uring, asyncio through the notifier threads (same run)."""
    out = []
    names = [
        "sync fetch(timeout=None)",
        f"asyncio await fetch(timeout=None), {_aio_notify.mode()}",
        "asyncio floor: loop woken by a pipe the producer writes (no mqueue)",
    ]
    if _aio_notify.mode() == "io_uring":
        names.append(NOTIFIER_ROW)
    for name in names:
        if name.startswith("asyncio floor"):
            lat = pipe_floor(samples)
            out.append(_lat_row(name, lat))
            continue
        ns = common.namespace("aiol")
        mq = mqueue.create(ns, ["name=q"])
        try:
            lat: list[int] = []
            p = common.CTX.Process(target=_lat_producer, args=(ns, samples))
            if name.startswith("sync"):
                q = mq["q"]
                p.start()
                for _ in range(samples):
                    it = q.fetch(None)
                    lat.append(time.monotonic_ns() - int(it.value))  # type: ignore[union-attr, arg-type]
            else:
                _async_latency(ns, p, samples, lat, name == NOTIFIER_ROW)
            p.join()
        finally:
            mq.close()
            mqueue.destroy(ns)
        out.append(_lat_row(name, lat))
    common.progress_done()
    return out


def _ratios(lat: list[dict[str, Any]]) -> str:
    """asyncio/sync, floor/sync (and notifier/sync) p50 and p99 ratios, one line."""
    parts = [("asyncio/sync", lat[1]), ("floor/sync", lat[2])]
    if len(lat) > 3:
        parts.append(("notifier/sync", lat[3]))
    return "; ".join(
        f"{label} p50 {r['p50'] / lat[0]['p50']:.2f}x p99 {r['p99'] / lat[0]['p99']:.2f}x"
        for label, r in parts
    )


def _lat_row(name: str, lat: list[int]) -> dict[str, Any]:
    lat.sort()
    us = [x / 1000 for x in lat]
    row = {
        "case": name,
        "min": us[0],
        "p50": us[len(us) // 2],
        "p90": us[int(len(us) * 0.9)],
        "p99": us[int(len(us) * 0.99)],
        "max": us[-1],
    }
    common.progress(f"{name}: p50 {row['p50']:.1f} p99 {row['p99']:.1f} µs")
    return row


def idle_threads() -> dict[str, Any]:
    ns = common.namespace("aioi")

    def os_threads() -> int:
        with open("/proc/self/status") as f:
            return next(int(x.split()[1]) for x in f if x.startswith("Threads:"))

    async def main() -> dict[str, Any]:
        mq = await amq.create(ns, [f"name=q{i}" for i in range(8)])
        try:
            py0, os0 = threading.active_count(), os_threads()
            tasks = [asyncio.create_task(mq[f"q{i % 8}"].fetch(None)) for i in range(1000)]
            await asyncio.sleep(0.3)
            py1, os1 = threading.active_count(), os_threads()
            c0 = time.process_time()
            w0 = time.monotonic()
            await asyncio.sleep(2.0)
            cpu = time.process_time() - c0
            wall = time.monotonic() - w0
            for i in range(8):
                await mq[f"q{i}"].add_many([(str(j), "v") for j in range(125)])
            await asyncio.gather(*tasks)
            return {
                "waiters": 1000,
                "queues": 8,
                "threads_added_python": py1 - py0,
                "threads_added_os": os1 - os0,
                "idle_cpu_ms_per_s": round(cpu / wall * 1000, 3),
            }
        finally:
            await mq.close()
            mqueue.destroy(ns)

    return asyncio.run(main())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--latency", type=int, metavar="RUNS", help="only the wake-up latency, RUNS times"
    )
    ap.add_argument(
        "--loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="the event loop of every asyncio row (uvloop: pip install uvloop)",
    )
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # asyncio.run uses it
    print(f"event loop: {args.loop}")
    print(f"asyncio waits: {_aio_notify.mode()} (MQUEUE_AIO_NO_URING=1: notifier threads)")
    if args.latency:
        print(common.machine_line())
        for _ in range(args.latency):
            lat = latency(1000 if args.quick else 5000)
            print(
                "  ".join(
                    f"{label}: p50 {r['p50']:.1f} p99 {r['p99']:.1f}"
                    for label, r in zip(("sync", "asyncio", "floor", "notifier"), lat, strict=False)
                )
                + f"  | {_ratios(lat)}; load {os.getloadavg()[0]:.1f}"
            )
        return
    n = 200_000 if args.quick else 300_000
    runs = 1 if args.quick else 3
    samples = 1000 if args.quick else 5000
    print(common.machine_line())
    idle = idle_threads()  # first: a fresh process has no notifier thread yet
    tp = throughput(n, runs)
    lat = latency(samples)
    print(
        f"\nthroughput, 1 producer process -> 1 consumer process, {n:,} items "
        f"(median of {runs}); * = producer uses add_many(1000)"
    )
    print("| consumer | items/s | longest loop stall ms (loop busy ms, preemptions) |")
    print("|:--|--:|--:|")
    for r in tp:
        stall = (
            f"{r['stall_ms']} ({r['busy_ms']}, {r['preempted']})" if "stall_ms" in r else "n/a"
        )
        print(f"| {r['case']} | {r['items_per_s'] / 1000:,.0f}k | {stall} |")
    print(f"\nwake-up latency, {samples} samples, gap 0.5..1.5 ms")
    print("| consumer | min µs | p50 µs | p90 µs | p99 µs | max µs |")
    print("|:--|--:|--:|--:|--:|--:|")
    for r in lat:
        print(
            f"| {r['case']} | {r['min']:.1f} | {r['p50']:.1f} | {r['p90']:.1f} "
            f"| {r['p99']:.1f} | {r['max']:.0f} |"
        )
    ratio = lat[1]["p99"] / lat[0]["p99"]
    print(f"{_ratios(lat)}; load average {os.getloadavg()[0]:.1f}")
    print(
        f"\n1,000 tasks awaiting fetch(timeout=None) on 8 queues: "
        f"+{idle['threads_added_python']} Python threads (+{idle['threads_added_os']} OS), "
        f"{idle['idle_cpu_ms_per_s']} ms CPU per s idle"
    )
    path = common.write_json(
        "asyncio",
        {
            "throughput": tp,
            "latency": lat,
            "p99_ratio": ratio,
            "idle": idle,
            "wait_mode": _aio_notify.mode(),
            "argv": sys.argv[1:],
            "pid": os.getpid(),
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
