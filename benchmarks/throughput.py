"""Throughput, 1 producer process -> 1 consumer process, mqueue against its peers.

Every peer moves the same N (key, value) str pairs (16 + 64 chars) in the same run;
repetitions are interleaved across peers (rep 1 of every peer, then rep 2, ...) so
that machine noise hits them alike. The consumer checks that every item arrived
exactly once and unchanged. The figure is items/s from the producer's start to the
consumer's receipt of the last item; the table shows the median over repetitions,
and the ratios to ``multiprocessing.Queue`` and to the best peer (non-mqueue).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common
from common import Item

SEP = "\x00"
STALL = 10.0  # seconds a consumer waits for one item before giving up


def pack(kv: Item) -> bytes:
    return (kv[0] + SEP + kv[1]).encode()


def unpack(b: Any) -> tuple[str, str]:
    k, v = str(b, "utf-8").split(SEP, 1)
    return k, v


class Peer:
    """One IPC mechanism: a channel set up in the parent, a producer, a consumer."""

    name = "?"
    family = "?"  # "single" or "batch"
    is_mqueue = False

    def __init__(self, batch: int) -> None:
        self.batch = batch

    requires: tuple[str, str] | None = None  # (module, what to pip install)

    def unavailable(self) -> str | None:
        """Why this peer cannot run here (None: it can)."""
        return common.missing(*self.requires) if self.requires else None

    def channel(self) -> contextlib.AbstractContextManager[Any]:
        """What the producer and the consumer share, set up in the parent."""
        return contextlib.nullcontext()

    def producer(self, chan: Any, items: list[Item], ready: Any, go: Any) -> int:
        raise NotImplementedError

    def consumer(self, chan: Any, items: list[Item], ready: Any, go: Any) -> Any:
        raise NotImplementedError


def _finish(items: list[Item], received: list[Any], t1: int | None = None) -> dict[str, Any]:
    """A consumer's result: its end time (now, unless ``t1`` is given) and the
    check of what it received (after the clock stopped)."""
    if t1 is None:
        t1 = time.monotonic_ns()
    ok, in_order, msg = common.check_items(items, received)
    return {"t_end": t1, "ok": ok, "in_order": in_order, "msg": msg}


class MPQueue(Peer):
    name = "multiprocessing.Queue"
    family = "single"

    def channel(self) -> contextlib.AbstractContextManager[Any]:
        return common.mp_queue()

    def producer(self, q: Any, items: list[Item], ready: Any, go: Any) -> int:
        put = q.put
        t0 = common.start_together(ready, go)
        for kv in items:
            put(kv)
        q.close()
        q.join_thread()  # the feeder thread has handed everything to the pipe
        return t0

    def consumer(self, q: Any, items: list[Item], ready: Any, go: Any) -> Any:
        get = q.get
        out: list[Any] = []
        app = out.append
        common.start_together(ready, go)
        for _ in range(len(items)):
            app(get(timeout=STALL))
        return _finish(items, out)


class MPSimpleQueue(Peer):
    name = "multiprocessing.SimpleQueue"
    family = "single"

    @contextlib.contextmanager
    def channel(self) -> Iterator[Any]:
        q = common.CTX.SimpleQueue()
        try:
            yield q
        finally:
            q.close()

    def producer(self, q: Any, items: list[Item], ready: Any, go: Any) -> int:
        put = q.put
        t0 = common.start_together(ready, go)
        for kv in items:
            put(kv)
        return t0

    def consumer(self, q: Any, items: list[Item], ready: Any, go: Any) -> Any:
        get = q.get  # no timeout: the harness's deadline covers a stall
        out: list[Any] = []
        app = out.append
        common.start_together(ready, go)
        for _ in range(len(items)):
            app(get())
        return _finish(items, out)


class FasterFifo(Peer):
    name = "faster-fifo put/get (raw bytes)"
    family = "single"

    requires = ("faster_fifo", "faster-fifo")

    @contextlib.contextmanager
    def channel(self) -> Iterator[Any]:
        import faster_fifo

        yield faster_fifo.Queue(max_size_bytes=64 * 1024 * 1024, loads=unpack, dumps=pack)

    def producer(self, q: Any, items: list[Item], ready: Any, go: Any) -> int:
        put = q.put
        t0 = common.start_together(ready, go)
        for kv in items:
            put(kv, True, STALL)
        return t0

    def consumer(self, q: Any, items: list[Item], ready: Any, go: Any) -> Any:
        get = q.get
        out: list[Any] = []
        app = out.append
        common.start_together(ready, go)
        for _ in range(len(items)):
            app(get(True, STALL))
        return _finish(items, out)


class FasterFifoBatch(FasterFifo):
    name = "faster-fifo put_many/get_many (raw bytes)"
    family = "batch"

    def producer(self, q: Any, items: list[Item], ready: Any, go: Any) -> int:
        b = self.batch
        batches = [items[i : i + b] for i in range(0, len(items), b)]
        put_many = q.put_many
        t0 = common.start_together(ready, go)
        for chunk in batches:
            put_many(chunk, True, STALL)
        return t0

    def consumer(self, q: Any, items: list[Item], ready: Any, go: Any) -> Any:
        get_many = q.get_many
        b = self.batch
        n = len(items)
        out: list[Any] = []
        ext = out.extend
        common.start_together(ready, go)
        while len(out) < n:
            ext(get_many(True, STALL, b))
        return _finish(items, out)


class PosixMQ(Peer):
    name = "posix_ipc.MessageQueue"
    family = "single"

    requires = ("posix_ipc", "posix_ipc")

    def channel(self) -> contextlib.AbstractContextManager[Any]:
        depth = 10
        with contextlib.suppress(OSError, ValueError):
            depth = int(Path("/proc/sys/fs/mqueue/msg_max").read_text())
        return common.posix_mq("pmq", depth)

    def producer(self, mq: Any, items: list[Item], ready: Any, go: Any) -> int:
        send = mq.send
        t0 = common.start_together(ready, go)
        for k, v in items:
            send((k + SEP + v).encode(), STALL)
        return t0

    def consumer(self, mq: Any, items: list[Item], ready: Any, go: Any) -> Any:
        recv = mq.receive
        out: list[Any] = []
        app = out.append
        common.start_together(ready, go)
        for _ in range(len(items)):
            k, v = recv(STALL)[0].decode().split(SEP, 1)
            app((k, v))
        return _finish(items, out)


class ZmqPushPull(Peer):
    name = "zmq PUSH/PULL ipc://"
    family = "single"

    requires = ("zmq", "pyzmq")

    @contextlib.contextmanager
    def channel(self) -> Iterator[Any]:
        d = tempfile.mkdtemp(prefix="mqbench-zmq-")
        path = os.path.join(d, "s")
        try:
            # (address, an Event the consumer sets once it has everything: the
            # producer keeps its socket open until then; closing it earlier lost
            # the last few hundred messages now and then despite LINGER=-1)
            yield f"ipc://{path}", common.CTX.Event()
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
            with contextlib.suppress(OSError):
                os.rmdir(d)

    def producer(self, chan: Any, items: list[Item], ready: Any, go: Any) -> int:
        import zmq

        addr, received = chan
        ctx = zmq.Context()
        s = ctx.socket(zmq.PUSH)
        s.setsockopt(zmq.LINGER, -1)  # term() waits until all is delivered
        s.setsockopt(zmq.SNDTIMEO, int(STALL * 1000))
        send = s.send
        try:
            common.start_together(ready, go)
            s.connect(addr)  # after go: the consumer has bound by then
            t0 = time.monotonic_ns()
            for k, v in items:
                send((k + SEP + v).encode())
            received.wait(2 * STALL)
            return t0
        finally:
            s.close()
            ctx.term()

    def consumer(self, chan: Any, items: list[Item], ready: Any, go: Any) -> Any:
        import zmq

        addr, received = chan
        ctx = zmq.Context()
        s = ctx.socket(zmq.PULL)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.RCVTIMEO, int(STALL * 1000))
        s.bind(addr)
        recv = s.recv
        out: list[Any] = []
        app = out.append
        try:
            common.start_together(ready, go)
            for _ in range(len(items)):
                try:
                    msg = recv()
                except zmq.Again:
                    got = {common.seq_of(k) for k, _v in out}
                    lost = sorted(set(range(len(items))) - got)
                    where = f"first lost #{lost[0]}, last #{lost[-1]}" if lost else ""
                    raise TimeoutError(
                        f"recv: nothing for {STALL}s after {len(out)} items ({where})"
                    ) from None
                k, v = msg.decode().split(SEP, 1)
                app((k, v))
            t1 = time.monotonic_ns()
        finally:
            received.set()
            s.close()
            ctx.term()
        return _finish(items, out, t1)


class MQueueSingle(Peer):
    name = "mqueue add/fetch"
    family = "single"
    is_mqueue = True

    def unavailable(self) -> str | None:
        return None if common.import_mqueue() is not None else "mqueue is not importable"

    @contextlib.contextmanager
    def channel(self) -> Iterator[Any]:
        import mqueue

        with common.mq_namespace(mqueue, ["name=bench;bytes=64M"]) as (ns, _mq):
            yield ns

    def producer(self, ns: Any, items: list[Item], ready: Any, go: Any) -> int:
        import mqueue

        full = common.queue_full_error(mqueue)
        mq = mqueue.attach(ns)
        try:
            q = mq["bench"]
            add = q.add
            t0 = common.start_together(ready, go)
            for k, v in items:
                while True:
                    try:
                        add(k, v)
                        break
                    except full:
                        time.sleep(0.0002)
            return t0
        finally:
            mq.close()

    def consumer(self, ns: Any, items: list[Item], ready: Any, go: Any) -> Any:
        import mqueue

        mq = mqueue.attach(ns)
        try:
            q = mq["bench"]
            fetch = q.fetch
            out: list[Any] = []
            app = out.append
            common.start_together(ready, go)
            for _ in range(len(items)):
                it = fetch(timeout=STALL)
                if it is None:
                    raise TimeoutError(f"fetch: nothing for {STALL}s after {len(out)} items")
                app(it)
            t1 = time.monotonic_ns()
        finally:
            mq.close()
        return _finish(items, out, t1)


class MQueueBatch(MQueueSingle):
    name = "mqueue add_many/fetch_many"
    family = "batch"

    def producer(self, ns: Any, items: list[Item], ready: Any, go: Any) -> int:
        import mqueue

        full = common.queue_full_error(mqueue)
        b = self.batch
        batches = [items[i : i + b] for i in range(0, len(items), b)]
        mq = mqueue.attach(ns)
        try:
            q = mq["bench"]
            add_many = q.add_many
            t0 = common.start_together(ready, go)
            for chunk in batches:
                common.add_many_retrying(add_many, chunk, full)
            return t0
        finally:
            mq.close()

    def consumer(self, ns: Any, items: list[Item], ready: Any, go: Any) -> Any:
        import mqueue

        n = len(items)
        b = self.batch
        mq = mqueue.attach(ns)
        try:
            q = mq["bench"]
            fetch_many = q.fetch_many
            out: list[Any] = []
            ext = out.extend
            common.start_together(ready, go)
            while len(out) < n:
                got = fetch_many(b, timeout=STALL)
                if not got:
                    raise TimeoutError(f"fetch_many: nothing for {STALL}s after {len(out)} items")
                ext(got)
            t1 = time.monotonic_ns()
        finally:
            mq.close()
        return _finish(items, out, t1)


PEERS: list[type[Peer]] = [
    MPQueue,
    MPSimpleQueue,
    FasterFifo,
    FasterFifoBatch,
    PosixMQ,
    ZmqPushPull,
    MQueueSingle,
    MQueueBatch,
]


def run_once(peer: Peer, items: list[Item], timeout: float) -> float:
    """One timed transfer; returns items/s. Raises on a failure or a wrong count."""
    with peer.channel() as chan:
        go, ready = common.sync_objects()
        t0, res = common.run_roles(
            [
                (peer.producer, (chan, items, ready, go)),
                (peer.consumer, (chan, items, ready, go)),
            ],
            timeout=timeout,
            go=go,
            ready=ready,
        )
    if not res["ok"]:
        raise common.ProcessFailed(f"items check failed: {res['msg']}")
    dt = (res["t_end"] - t0) / 1e9
    return len(items) / dt if dt > 0 else float("inf")


def main() -> int:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("-n", "--items", type=int, default=None, help="items per run")
    p.add_argument("-r", "--reps", type=int, default=None, help="repetitions per peer")
    p.add_argument("--batch", type=int, default=256, help="batch size for *_many")
    p.add_argument("--timeout", type=float, default=120.0, help="deadline per single run (s)")
    p.add_argument("--only", default="", help="comma-separated substrings of peer names")
    args = p.parse_args()
    n = args.items or (50_000 if args.quick else 300_000)
    reps = args.reps or (3 if args.quick else 5)

    wanted = [
        peer
        for peer in (cls(args.batch) for cls in PEERS)
        if not args.only or any(s.strip() in peer.name for s in args.only.split(","))
    ]
    peers, skipped = common.available(wanted)

    items = common.make_items(n)
    rates: dict[str, list[float]] = {pe.name: [] for pe in peers}
    errors: dict[str, str] = {}
    for rep in range(reps):
        for pe in peers:
            if pe.name in errors:
                continue
            common.progress(f"throughput: rep {rep + 1}/{reps}: {pe.name} ({n} items)")
            try:
                rates[pe.name].append(run_once(pe, items, args.timeout))
            except common.ProcessFailed as e:
                errors[pe.name] = str(e)
                common.note(f"{pe.name}: FAILED: {e}")
    common.progress_done()

    med = {k: common.median(v) for k, v in rates.items() if v and k not in errors}
    base = med.get(MPQueue.name)
    peer_best = {
        fam: max(
            (
                r
                for pe in peers
                if pe.family == fam and not pe.is_mqueue and (r := med.get(pe.name)) is not None
            ),
            default=None,
        )
        for fam in ("single", "batch")
    }
    best_any = max(
        (r for pe in peers if not pe.is_mqueue and (r := med.get(pe.name)) is not None),
        default=None,
    )
    rows = []
    out_rows = []
    for pe in peers:
        r = med.get(pe.name)
        vs_mp = r / base if r and base else None
        vs_best = r / best_any if r and best_any else None
        vs_fam = r / peer_best[pe.family] if r and peer_best[pe.family] else None
        spread = ""
        if r and len(rates[pe.name]) > 1:
            lo, hi = min(rates[pe.name]), max(rates[pe.name])
            spread = f"{common.fmt_rate(lo)}..{common.fmt_rate(hi)}"
        rows.append(
            [
                pe.name,
                common.fmt_rate(r) if r else "FAILED",
                spread,
                common.fmt_ratio(vs_mp),
                common.fmt_ratio(vs_best),
                common.fmt_ratio(vs_fam),
            ]
        )
        out_rows.append(
            {
                "peer": pe.name,
                "family": pe.family,
                "mqueue": pe.is_mqueue,
                "items_per_s": r,
                "runs": rates[pe.name],
                "vs_mp_queue": vs_mp,
                "vs_best_peer": vs_best,
                "vs_best_peer_same_family": vs_fam,
                "error": errors.get(pe.name),
            }
        )
    print(
        f"throughput, 1 producer -> 1 consumer: {n} items of 16+64 chars, "
        f"batch {args.batch}, median of {reps}"
    )
    print(f"machine: {common.machine_line()}")
    print(
        common.table(
            [
                "peer",
                "items/s",
                "min..max",
                "vs mp.Queue",
                "vs best peer",
                "vs best peer (same kind)",
            ],
            rows,
        )
    )
    common.print_problems(skipped, errors)
    names = [pe.name for pe in peers if med.get(pe.name)]

    def draw(ax: Any) -> None:
        vals = [med[nm] for nm in names]
        colors = ["tab:red" if "mqueue" in nm else "tab:gray" for nm in names]
        ax.barh(names[::-1], vals[::-1], color=colors[::-1])
        ax.set_xscale("log")
        ax.set_xlabel("items/s (median, log scale)")
        for i, v in enumerate(vals[::-1]):
            ax.text(v, i, " " + common.fmt_rate(v), va="center", fontsize=8)

    common.save(
        "throughput",
        args,
        {"items": n, "reps": reps, "batch": args.batch, "rows": out_rows, "skipped": skipped},
        draw if med else None,
        f"1 -> 1 throughput, {n} items (16+64 chars)",
    )
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
