"""Wake-up latency: from just before ``add`` to the return of a blocked ``fetch``.

A consumer process blocks in ``q.fetch(timeout=None)``; a producer process sleeps a
little (so that the consumer is really asleep), reads ``time.monotonic_ns()`` and
puts it into the value, then calls ``add``. The consumer reads the clock as soon as
``fetch`` returns; the difference is one sample (same clock, same machine). The same
is done with ``multiprocessing.Queue.get()`` and, for context, other peers.
Reports p50 / p90 / p99 / max in microseconds.
"""

from __future__ import annotations

import array
import contextlib
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import common

STOP = "STOP"


class LPeer:
    name = "?"

    requires: tuple[str, str] | None = None  # (module, what to pip install)

    def unavailable(self) -> str | None:
        """Why this peer cannot run here (None: it can)."""
        return common.missing(*self.requires) if self.requires else None

    def channel(self) -> contextlib.AbstractContextManager[Any]:
        """What the producer and the consumer share, set up in the parent."""
        return contextlib.nullcontext()

    def sender(self, chan: Any) -> tuple[Callable[[str, str], Any], Callable[[], None]]:
        raise NotImplementedError

    def receiver(self, chan: Any) -> tuple[Callable[[], tuple[str, str]], Callable[[], None]]:
        raise NotImplementedError


class MPQueueL(LPeer):
    name = "multiprocessing.Queue get()"

    def channel(self) -> contextlib.AbstractContextManager[Any]:
        return common.mp_queue()

    def sender(self, q: Any) -> tuple[Callable[[str, str], Any], Callable[[], None]]:
        def close() -> None:
            q.close()
            q.join_thread()

        return (lambda k, v: q.put((k, v))), close

    def receiver(self, q: Any) -> tuple[Callable[[], tuple[str, str]], Callable[[], None]]:
        return q.get, lambda: None


class PosixMQL(LPeer):
    name = "posix_ipc.MessageQueue receive()"

    requires = ("posix_ipc", "posix_ipc")

    def channel(self) -> contextlib.AbstractContextManager[Any]:
        return common.posix_mq("lpmq", 10)

    def sender(self, mq: Any) -> tuple[Callable[[str, str], Any], Callable[[], None]]:
        return (lambda k, v: mq.send(f"{k}\0{v}".encode())), (lambda: None)

    def receiver(self, mq: Any) -> tuple[Callable[[], tuple[str, str]], Callable[[], None]]:
        def recv() -> tuple[str, str]:
            k, v = mq.receive()[0].decode().split("\0", 1)
            return k, v

        return recv, lambda: None


class FasterFifoL(LPeer):
    name = "faster-fifo get()"

    requires = ("faster_fifo", "faster-fifo")

    @contextlib.contextmanager
    def channel(self) -> Iterator[Any]:
        import faster_fifo

        yield faster_fifo.Queue(1_000_000)

    def sender(self, q: Any) -> tuple[Callable[[str, str], Any], Callable[[], None]]:
        return (lambda k, v: q.put((k, v))), (lambda: None)

    def receiver(self, q: Any) -> tuple[Callable[[], tuple[str, str]], Callable[[], None]]:
        return (lambda: q.get(True, 3600.0)), (lambda: None)


class MQueueL(LPeer):
    name = "mqueue fetch(timeout=None)"

    def unavailable(self) -> str | None:
        return None if common.import_mqueue() is not None else "mqueue is not importable"

    @contextlib.contextmanager
    def channel(self) -> Iterator[Any]:
        import mqueue

        with common.mq_namespace(mqueue, ["name=lat;bytes=16M"], tag="lat") as (ns, _mq):
            yield ns

    def sender(self, ns: Any) -> tuple[Callable[[str, str], Any], Callable[[], None]]:
        import mqueue

        mq = mqueue.attach(ns)
        return mq["lat"].add, mq.close

    def receiver(self, ns: Any) -> tuple[Callable[[], tuple[str, str]], Callable[[], None]]:
        import mqueue

        mq = mqueue.attach(ns)
        q = mq["lat"]

        def recv() -> tuple[str, str]:
            it = q.fetch(timeout=None)
            k, v = it
            return (
                k.decode() if isinstance(k, bytes) else k,
                v.decode() if isinstance(v, bytes) else v,
            )

        return recv, mq.close


PEERS: list[type[LPeer]] = [MPQueueL, PosixMQL, FasterFifoL, MQueueL]


def produce(peer: LPeer, chan: Any, samples: int, gap: float, ready: Any, go: Any) -> int:
    send, close = peer.sender(chan)
    rnd = random.Random(1)
    try:
        common.start_together(ready, go)
        time.sleep(0.05)  # the consumer is blocked by now
        for i in range(samples):
            time.sleep(gap * (0.5 + rnd.random()))
            send(f"{i:016d}", str(time.monotonic_ns()))
        send(STOP, "0")
    finally:
        close()
    return samples


def consume(peer: LPeer, chan: Any, samples: int, ready: Any, go: Any) -> bytes:
    recv, close = peer.receiver(chan)
    lat = array.array("q")
    now = time.monotonic_ns
    try:
        common.start_together(ready, go)
        expect = 0
        while True:
            k, v = recv()
            t = now()
            if k == STOP:
                break
            if int(k) != expect:
                raise RuntimeError(f"expected item {expect}, got {k!r}")
            expect += 1
            lat.append(t - int(v))
    finally:
        close()
    if len(lat) != samples:
        raise RuntimeError(f"got {len(lat)} samples of {samples}")
    return lat.tobytes()


def pct(sorted_xs: list[int], p: float) -> float:
    i = min(len(sorted_xs) - 1, max(0, round(p / 100 * (len(sorted_xs) - 1))))
    return sorted_xs[i] / 1000.0


def main() -> int:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("-s", "--samples", type=int, default=None, help="samples per peer")
    p.add_argument("--gap", type=float, default=0.001, help="mean sleep between adds (s)")
    p.add_argument("--timeout", type=float, default=300.0)
    args = p.parse_args()
    samples = args.samples or (1000 if args.quick else 5000)

    out: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    peers, skipped = common.available([cls() for cls in PEERS])
    for peer in peers:
        common.progress(f"latency: {peer.name} ({samples} samples)")
        try:
            with peer.channel() as chan:
                go, ready = common.sync_objects()
                _, raw = common.run_roles(
                    [
                        (produce, (peer, chan, samples, args.gap, ready, go)),
                        (consume, (peer, chan, samples, ready, go)),
                    ],
                    timeout=args.timeout,
                    go=go,
                    ready=ready,
                )
        except common.ProcessFailed as e:
            errors[peer.name] = str(e)
            common.note(f"{peer.name}: FAILED: {e}")
            continue
        a = array.array("q")
        a.frombytes(raw)
        xs = sorted(a)
        out[peer.name] = {
            "p50_us": pct(xs, 50),
            "p90_us": pct(xs, 90),
            "p99_us": pct(xs, 99),
            "max_us": xs[-1] / 1000.0,
            "min_us": xs[0] / 1000.0,
            "samples": len(xs),
        }
    common.progress_done()
    print(
        f"wake-up latency of a blocked receive: {samples} samples, "
        f"mean gap {args.gap * 1000:.1f} ms"
    )
    print(f"machine: {common.machine_line()}")
    rows = [
        [
            k,
            f"{v['min_us']:.1f}",
            f"{v['p50_us']:.1f}",
            f"{v['p90_us']:.1f}",
            f"{v['p99_us']:.1f}",
            f"{v['max_us']:.0f}",
        ]
        for k, v in out.items()
    ]
    print(common.table(["peer", "min µs", "p50 µs", "p90 µs", "p99 µs", "max µs"], rows))
    common.print_problems(skipped, errors)

    def draw(ax: Any) -> None:
        names = list(out)
        x = range(len(names))
        w = 0.27
        for j, key in enumerate(("p50_us", "p90_us", "p99_us")):
            ax.bar(
                [i + (j - 1) * w for i in x],
                [out[nm][key] for nm in names],
                w,
                label=key.split("_")[0],
            )
        ax.set_xticks(list(x))
        ax.set_xticklabels(names, fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("µs from add to return (log)")
        ax.legend(fontsize=8)

    common.save(
        "latency",
        args,
        {"samples": samples, "gap_s": args.gap, "results": out, "skipped": skipped,
         "errors": errors},
        draw if out else None,
        f"wake-up latency, {samples} samples",
    )
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
