"""Scaling of mqueue: 1 producer -> N workers on one queue, and K queues in parallel.

Part 1: one producer process puts N items into one queue, W worker processes take
them (W = 1..--max-workers), with ``add``/``fetch`` (single) and with
``add_many``/``fetch_many`` (batch). Part 2: K independent queues of one namespace
(K = 1..--max-queues), each with its own producer/consumer pair, all at once.

The figure is total items/s: all items moved, from the first producer's start to
the last item's receipt. Every point checks that every item arrived exactly once.
Workers wait with ``timeout=0.05`` and stop once their producer is done and the
queue is empty (the final empty wait is not counted).
"""

from __future__ import annotations

import array
import time
from typing import Any

import common
from common import Item

POLL = 0.05


def producer(
    ns: str, qname: str, items: list[Item], batch: int, ready: Any, go: Any, done: Any
) -> int:
    import mqueue

    full = common.queue_full_error(mqueue)
    mq = mqueue.attach(ns)
    try:
        q = mq[qname]
        t0 = common.start_together(ready, go)
        if batch > 1:
            add_many = q.add_many
            for i in range(0, len(items), batch):
                common.add_many_retrying(add_many, items[i : i + batch], full)
        else:
            add = q.add
            for k, v in items:
                while True:
                    try:
                        add(k, v)
                        break
                    except full:
                        time.sleep(0.0002)
        done.set()
        return t0
    finally:
        mq.close()


def worker(
    ns: str, qname: str, batch: int, ready: Any, go: Any, done: Any, limit: float
) -> tuple[int, bytes]:
    import mqueue

    mq = mqueue.attach(ns)
    try:
        q = mq[qname]
        got: list[Any] = []
        t_last = 0
        common.start_together(ready, go)
        end = time.monotonic() + limit
        if batch > 1:
            fetch_many = q.fetch_many
            while True:
                items = fetch_many(batch, timeout=POLL)
                if items:
                    got.extend(items)
                    t_last = time.monotonic_ns()
                elif done.is_set() and not len(q):
                    break
                elif time.monotonic() > end:
                    raise TimeoutError(f"worker gave up after {limit}s")
        else:
            fetch = q.fetch
            append = got.append
            while True:
                it = fetch(timeout=POLL)
                if it is not None:
                    append(it)
                    t_last = time.monotonic_ns()
                elif done.is_set() and not len(q):
                    break
                elif time.monotonic() > end:
                    raise TimeoutError(f"worker gave up after {limit}s")
    finally:
        mq.close()
    seqs = array.array("l", (common.seq_of(k) for k, _v in got))
    return t_last, seqs.tobytes()


def run_point(
    mqueue: Any, items: list[Item], queues: int, workers: int, batch: int, timeout: float
) -> float:
    """``queues`` queues, each with 1 producer and ``workers`` workers; total items/s."""
    defs = [f"name=q{i};bytes=64M" for i in range(queues)]
    with common.mq_namespace(mqueue, defs, tag="sc") as (ns, _mq):
        go, ready = common.sync_objects()
        roles: list[tuple[Any, tuple[Any, ...]]] = []
        for i in range(queues):
            done = common.CTX.Event()
            roles.append((producer, (ns, f"q{i}", items, batch, ready, go, done)))
            for _ in range(workers):
                roles.append((worker, (ns, f"q{i}", batch, ready, go, done, timeout)))
        res = common.run_roles(roles, timeout=timeout, go=go, ready=ready)
    t0 = min(r for r in res if isinstance(r, int))
    t1 = 0
    per_queue: list[list[int]] = []
    idx = 0
    for _ in range(queues):
        idx += 1  # producer
        seqs: list[int] = []
        for _ in range(workers):
            t_last, raw = res[idx]
            idx += 1
            t1 = max(t1, t_last)
            a = array.array("l")
            a.frombytes(raw)
            seqs.extend(a)
        per_queue.append(seqs)
    for i, seqs in enumerate(per_queue):
        ok, msg = common.check_seqs(len(items), seqs)
        if not ok:
            raise common.ProcessFailed(f"queue q{i}: {msg}")
    total = len(items) * queues
    return total / ((t1 - t0) / 1e9)


def main() -> int:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("-n", "--items", type=int, default=None, help="items per producer")
    p.add_argument("-r", "--reps", type=int, default=None, help="repetitions per point")
    p.add_argument("--max-workers", type=int, default=8)
    p.add_argument("--max-queues", type=int, default=4)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--timeout", type=float, default=120.0, help="deadline per point (s)")
    args = p.parse_args()
    n = args.items or (30_000 if args.quick else 200_000)
    reps = args.reps or (1 if args.quick else 3)

    mqueue = common.import_mqueue()
    if mqueue is None:
        print("scaling: mqueue is not importable; nothing to measure")
        return 0
    items = common.make_items(n)
    modes = {"single": 1, "batch": args.batch}
    curves: dict[str, dict[int, float]] = {}
    runs: dict[str, dict[int, list[float]]] = {}
    errors: dict[str, str] = {}
    plan: list[tuple[str, int, int, int]] = []
    for mode, b in modes.items():
        for w in range(1, args.max_workers + 1):
            plan.append((f"1 producer -> W workers, {mode}", 1, w, b))
        for k in range(1, args.max_queues + 1):
            plan.append((f"K queues x (1 -> 1), {mode}", k, 1, b))
    for name, _k, _w, _b in plan:
        curves.setdefault(name, {})
        runs.setdefault(name, {})
    for rep in range(reps):
        for name, k, w, b in plan:
            x = w if k == 1 and name.startswith("1 producer") else k
            common.progress(f"scaling: rep {rep + 1}/{reps}: {name}: {x}")
            try:
                r = run_point(mqueue, items, k, w, b, args.timeout)
            except (common.ProcessFailed, mqueue.MQueueError, OSError) as e:
                errors[f"{name} at {x}"] = str(e)
                common.note(f"{name} at {x}: FAILED: {e}")
                continue
            runs[name].setdefault(x, []).append(r)
    common.progress_done()
    for name in runs:
        for x, v in runs[name].items():
            curves[name][x] = common.median(v)

    print(f"scaling: {n} items per producer (16+64 chars), batch {args.batch}, median of {reps}")
    print(f"machine: {common.machine_line()}")
    for name, pts in curves.items():
        if not pts:
            continue
        first = pts[min(pts)]
        label = "workers" if name.startswith("1 producer") else "queues"
        rows = [
            [x, common.fmt_rate(v), common.fmt_ratio(v / first)] for x, v in sorted(pts.items())
        ]
        print(f"\n{name}")
        print(common.table([label, "total items/s", f"vs {min(pts)}"], rows))
    common.print_problems({}, errors)

    def draw(ax: Any) -> None:
        for name, pts in curves.items():
            if pts:
                xs = sorted(pts)
                style = "-o" if name.startswith("1 producer") else "--s"
                ax.plot(xs, [pts[x] for x in xs], style, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("workers (W) or queues (K)")
        ax.set_ylabel("total items/s (log)")
        ax.legend(fontsize=7)

    common.save(
        "scaling",
        args,
        {
            "items_per_producer": n,
            "reps": reps,
            "batch": args.batch,
            "curves": {k: {str(x): v for x, v in c.items()} for k, c in curves.items()},
            "runs": {k: {str(x): v for x, v in c.items()} for k, c in runs.items()},
            "errors": errors,
        },
        draw if any(curves.values()) else None,
        f"mqueue scaling, {n} items per producer",
    )
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
