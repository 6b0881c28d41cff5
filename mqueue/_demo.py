"""``mqueue demo``: a SIP listener that never waits, and workers that do the slow part.

The story of Kamailio's ``mqueue``: the listener process (Kamailio's SIP socket
reader) adds one call event per INVITE to a bounded queue (``name=calls;size=5000``)
and goes on at once; worker processes fetch the events with a blocking
``fetch(timeout=...)`` and do a little slow work on each.  The listener adds at a
steady rate the workers can follow, then, for about a second, a flood of INVITEs
several times faster: the workers fall behind, the queue fills up to its bound and
its *oldest* events are dropped (counted as ``evicted``), never the listener's new
ones; after the flood the workers catch up.

Figures are printed once a second (on standard error), and a summary at the end,
which checks the queue's books: ``added == fetched + evicted + left``, every process's
own count against the queue's counters, and that each worker saw its events in the
order they were added (FIFO, no duplicates).

The demo runs in its own namespace (``demo<pid>``), and removes it and stops every
child process when it ends, also on Ctrl-C or on an error.  If the demo itself is
killed (SIGKILL), its children die with it (Linux: ``PR_SET_PDEATHSIG``, plus a
check of the parent's pid at start), and the next ``mqueue demo`` removes the
namespace it left behind (or names it, when its creator still runs).
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing as mp
import os
import random
import re
import signal
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import mqueue

QUEUE = "calls"
QUEUE_SIZE = 5000
DEFINITION = f"name={QUEUE};size={QUEUE_SIZE}"
DOMAINS = ("pc33.example.com", "atlanta.example.com", "biloxi.example.org", "ua1.example.net")
USERS = ("alice", "bob", "carol", "dave", "erin", "frank")

_STARTUP_TIMEOUT = 60.0
_DRAIN_TIMEOUT = 3.0
_WORK_SECONDS = 0.0001  # a worker's "slow work" per event
DEFAULT_RATE = 4000.0  # steady call events per second
FLOOD_FACTOR = 6  # during the flood the listener adds this many times faster
FLOOD_SECONDS = 1.0
_WIDTH = 80  # columns the summary is wrapped to (the live figures are 75 wide)


def flood_window(seconds: float) -> tuple[float, float]:
    """When the INVITE flood happens: one second (or less) starting at 40 % of the run."""
    start = 0.4 * seconds
    return start, min(seconds, start + FLOOD_SECONDS)


def events_due(t: float, rate: float, seconds: float) -> int:
    """How many events the paced listener has added ``t`` seconds into the run."""
    f0, f1 = flood_window(seconds)
    flooded = max(0.0, min(t, f1) - f0)
    return int(rate * t + (FLOOD_FACTOR - 1) * rate * flooded) + 1


def call_event(seq: int, rng: random.Random) -> tuple[str, str]:
    """One SIP-like call event: (Call-ID, a short INVITE summary line).

    The Call-ID starts with ``seq`` in hex, so that workers can check the order.
    """
    call_id = f"{seq:010x}{rng.getrandbits(24):06x}@{rng.choice(DOMAINS)}"
    caller, callee = rng.sample(USERS, 2)
    value = (
        f"INVITE sip:{callee}@biloxi.example.com SIP/2.0 "
        f"From: <sip:{caller}@atlanta.example.com> CSeq: {seq % 65536 + 1} INVITE"
    )
    return call_id, value


def _orphaned(parent: int) -> bool:
    return os.getppid() != parent


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_parent(parent: int) -> None:
    """In a child: be killed (SIGKILL) when the parent process dies.

    On Linux, ``prctl(PR_SET_PDEATHSIG)`` asks the kernel; a parent that died
    before that call (the child is then already re-parented) is caught by
    comparing the parent's pid, and this process exits at once.  Elsewhere the
    children's own periodic ``_orphaned`` checks remain.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if _orphaned(parent):
        os._exit(1)


_DEMO_NS = re.compile(r"^demo([0-9]+)$")
_PID_MAX = 1 << 22  # Linux's largest pid_max


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_leftovers() -> list[str]:
    """Namespaces ``demo<pid>`` left by demos that were killed: removed when
    their creator is dead; named when a process with that pid still runs (it
    may be another demo, or the pid was reused).  Returns the lines to show."""
    from . import _shm

    notes: list[str] = []
    for name in _shm.list_namespaces():
        m = _DEMO_NS.match(name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        pid = int(m.group(1))
        if not 0 < pid <= _PID_MAX:  # not a pid: not a demo's namespace
            continue
        if _alive(pid):
            notes.append(
                f"note: namespace {name!r} is in /dev/shm; its process {pid} still runs\n"
                f"(another demo?); if it is a leftover: mqueue destroy {name}"
            )
            continue
        try:
            mqueue.destroy(name)
        except mqueue.NamespaceNotFoundError:
            continue  # someone else removed it meanwhile
        except mqueue.MQueueError as e:
            notes.append(f"note: cannot remove the leftover namespace {name!r}: {e}")
            continue
        notes.append(f"removed namespace {name!r}, left by a demo that was killed")
    return notes


def _listener(
    namespace: str,
    counts: Any,
    ready: Any,
    go: Any,
    stop: Any,
    seconds: float,
    rate: float,
    parent: int,
) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent coordinates Ctrl-C
    rng = random.Random(os.getpid())
    with mqueue.attach(namespace) as mq:
        q = mq[QUEUE]
        ready.release()
        while not go.wait(0.2):
            if stop.is_set() or _orphaned(parent):
                return
        start = time.monotonic()
        deadline = start + seconds
        seq = 0
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if rate > 0:
                due = events_due(now - start, rate, seconds)
                if seq >= due:
                    time.sleep(min(0.001, deadline - now))
                    continue
                batch = min(due - seq, 1000)
            else:
                batch = 1000
            for _ in range(batch):
                key, value = call_event(seq, rng)
                q.add(key, value)  # the listener never waits
                seq += 1
            counts[0] = seq
            if seq % 50000 < batch and _orphaned(parent):
                return
        counts[0] = seq


def _worker(
    index: int,
    workers: int,
    namespace: str,
    counts: Any,
    ready: Any,
    stop: Any,
    parent: int,
) -> None:
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with mqueue.attach(namespace) as mq:
        q = mq[QUEUE]
        ready.release()
        fetched = 0
        order_errors = 0
        last = -1
        while not stop.is_set():
            item = q.fetch(timeout=0.1)  # blocks without using CPU
            if item is None:
                if _orphaned(parent):
                    return
                continue
            fetched += 1
            key = item.key if isinstance(item.key, str) else item.key.decode()
            seq = int(key[:10], 16)
            if seq <= last:
                order_errors += 1
            last = seq
            # the "slow work": look at the event, then take a little time
            if not str(item.value).startswith("INVITE "):
                order_errors += 1
            time.sleep(_WORK_SECONDS)
            counts[1 + index] = fetched
            counts[1 + workers + index] = order_errors
        q.free()


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@dataclass
class _Run:
    """One demo run: its settings, its namespace and the children's shared state."""

    workers: int
    seconds: float
    rate: float
    ctx: Any
    namespace: str = field(default_factory=lambda: f"demo{os.getpid()}")
    parent: int = field(default_factory=os.getpid)
    procs: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        # [0] listener's adds, [1 + i] worker i's fetches, [1 + workers + i] its order errors
        self.counts = self.ctx.Array("q", 1 + 2 * self.workers, lock=False)
        self.ready = self.ctx.Semaphore(0)
        self.go, self.stop = self.ctx.Event(), self.ctx.Event()


def run(workers: int = 3, seconds: float = 10.0, rate: float = DEFAULT_RATE) -> dict[str, Any]:
    """Run the demo and return its summary (a JSON-able dict).

    ``rate`` is the listener's steady pace in events per second, with a flood
    of ``FLOOD_FACTOR`` times that for about a second at 40 % of the run; ``0``
    means as fast as it can, all along.  Live figures go to standard error once
    a second.  The summary's ``"balanced"`` is true when the books check out.
    """
    r = _Run(workers, seconds, rate, mp.get_context("spawn"))
    with _sigterm_interrupts():
        for note in clean_leftovers():
            _say(note)
        mq = mqueue.create(r.namespace, [DEFINITION])
        interrupted = False
        try:
            q = mq[QUEUE]
            _start(r)
            start, adding_seconds = _watch(r, q)
            _drain(r, q)
            return _summary(r, q, start, adding_seconds)
        except KeyboardInterrupt:
            interrupted = True
            _say("mqueue demo: interrupted, cleaning up")
            raise
        finally:
            _stop_children(r)
            try:
                mq.close()
            finally:
                mqueue.destroy(r.namespace)
            if interrupted:
                _say(f"mqueue demo: namespace {r.namespace!r} removed")


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt (so the demo cleans up as on Ctrl-C)
    while the block runs; the previous handler is back afterwards, whatever
    happens in the block (only the main thread can set handlers)."""
    if not _is_main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _start(r: _Run) -> None:
    """Say what runs, start the listener and the workers, and wait until every
    child has attached (the clock starts once they all have)."""
    _say(f"mqueue demo: namespace {r.namespace!r}, queue {DEFINITION!r}")
    _say(
        f"1 listener, {r.workers} worker(s), {r.seconds:g} s, "
        f"rate {'unpaced' if r.rate <= 0 else f'{r.rate:g}/s'}"
    )
    if r.rate > 0:
        f0, f1 = flood_window(r.seconds)
        _say(f"an INVITE flood ({FLOOD_FACTOR}x the rate) from {f0:g} s to {f1:g} s:")
        _say("the queue fills and its oldest events are dropped; the listener never waits")
    r.procs.append(
        r.ctx.Process(
            target=_listener,
            name="mqueue-demo-listener",
            args=(r.namespace, r.counts, r.ready, r.go, r.stop, r.seconds, r.rate, r.parent),
        )
    )
    for i in range(r.workers):
        r.procs.append(
            r.ctx.Process(
                target=_worker,
                name=f"mqueue-demo-worker-{i}",
                args=(i, r.workers, r.namespace, r.counts, r.ready, r.stop, r.parent),
            )
        )
    for p in r.procs:
        p.daemon = True
        p.start()
    t_end = time.monotonic() + _STARTUP_TIMEOUT
    started = 0
    while started < len(r.procs):
        if r.ready.acquire(timeout=0.2):
            started += 1
            continue
        dead = [p.name for p in r.procs if p.exitcode is not None]
        if dead:
            raise mqueue.MQueueError(f"demo: child process(es) died at start: {dead}")
        if time.monotonic() > t_end:
            raise mqueue.MQueueError("demo: child processes did not start in time")


def _watch(r: _Run, q: mqueue.Queue) -> tuple[float, float]:
    """Start the clock and print the figures once a second until the listener
    stops.  Returns (start time, seconds the listener added for)."""
    listener = r.procs[0]
    r.go.set()
    start = time.monotonic()
    prev = q.stats()
    prev_t = start
    _say(
        f"{'time':>6}  {'added/s':>9}  {'fetched/s':>9}  {'queued':>6}  "
        f"{'evicted':>9}  {'added':>9}  {'fetched':>9}"
    )
    phase_end = start + r.seconds + _DRAIN_TIMEOUT
    while True:
        listener.join(timeout=max(0.0, min(1.0, prev_t + 1.0 - time.monotonic())))
        now = time.monotonic()
        if now - prev_t >= 0.999 or listener.exitcode is not None:
            st = q.stats()
            dt = max(now - prev_t, 1e-6)
            _say(
                f"{now - start:5.1f}s  {(st.added - prev.added) / dt:9.0f}  "
                f"{(st.fetched - prev.fetched) / dt:9.0f}  {len(q):6d}  "
                f"{st.evicted:9d}  {st.added:9d}  {st.fetched:9d}"
            )
            prev, prev_t = st, now
        if listener.exitcode is not None:
            break
        if now > phase_end:
            raise mqueue.MQueueError("demo: the listener did not stop in time")
        dead = [p.name for p in r.procs[1:] if p.exitcode is not None]
        if dead:
            raise mqueue.MQueueError(f"demo: worker(s) died: {dead}")
    if listener.exitcode != 0:
        raise mqueue.MQueueError(f"demo: the listener failed (exit {listener.exitcode})")
    return start, time.monotonic() - start


def _drain(r: _Run, q: mqueue.Queue) -> None:
    """Let the workers drain what is left (for a bounded time), then stop them."""
    _say(f"listener stopped; the workers drain the {len(q)} queued event(s)")
    drain_end = time.monotonic() + _DRAIN_TIMEOUT
    while len(q) > 0 and time.monotonic() < drain_end:
        time.sleep(0.02)
    r.stop.set()
    for p in r.procs[1:]:
        p.join(timeout=5.0)
    failed = [p.name for p in r.procs[1:] if p.exitcode != 0]
    if failed:
        raise mqueue.MQueueError(f"demo: worker(s) failed: {failed}")


def _summary(r: _Run, q: mqueue.Queue, start: float, adding_seconds: float) -> dict[str, Any]:
    """The run's figures, and whether the queue's books balance."""
    elapsed = time.monotonic() - start
    st = q.stats()
    left = len(q)
    workers = r.workers
    per_worker = [int(r.counts[1 + i]) for i in range(workers)]
    order_errors = sum(int(r.counts[1 + workers + i]) for i in range(workers))
    summary: dict[str, Any] = {
        "namespace": r.namespace,
        "queue": DEFINITION,
        "workers": workers,
        "seconds": round(elapsed, 3),
        "adding_seconds": round(adding_seconds, 3),
        "added": st.added,
        "fetched": st.fetched,
        "evicted": st.evicted,
        "left": left,
        "high_water": st.high_water,
        "recoveries": st.recoveries,
        "listener_added": int(r.counts[0]),
        "worker_fetched": per_worker,
        "order_errors": order_errors,
        "added_per_second": round(st.added / max(adding_seconds, 1e-6)),
        "fetched_per_second": round(st.fetched / max(elapsed, 1e-6)),
    }
    summary["balanced"] = (
        st.added == st.fetched + st.evicted + left
        and int(r.counts[0]) == st.added
        and sum(per_worker) == st.fetched
        and order_errors == 0
    )
    return summary


def _stop_children(r: _Run) -> None:
    """Stop every child: asked first, then terminated, then killed."""
    r.stop.set()
    r.go.set()
    started = [p for p in r.procs if p.pid is not None]
    for p in started:
        p.join(timeout=3.0)
    for p in started:
        if p.exitcode is None:
            p.terminate()
            p.join(timeout=2.0)
        if p.exitcode is None:
            p.kill()
            p.join()


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a few readable lines."""
    check = "OK" if s["balanced"] else "MISMATCH"
    workers = ", ".join(str(n) for n in s["worker_fetched"])
    return "\n".join(
        [
            f"summary ({s['seconds']:g} s, queue {s['queue']!r}):",
            f"  added    {s['added']:>10}  ({s['added_per_second']}/s by 1 listener, "
            f"which never waited)",
            *_fit(
                f"  fetched  {s['fetched']:>10}  ({s['fetched_per_second']}/s by "
                f"{s['workers']} worker(s): {workers})",
                indent=25,
            ),
            f"  evicted  {s['evicted']:>10}  (oldest events dropped while the queue was full)",
            f"  left     {s['left']:>10}  (still queued)",
            f"  high-water mark {s['high_water']}, lock recoveries {s['recoveries']}, "
            f"order errors {s['order_errors']}",
            *_fit(
                f"  check: added == fetched + evicted + left: "
                f"{s['added']} == {s['fetched']} + {s['evicted']} + {s['left']}: {check}",
                indent=9,
            ),
        ]
    )


def _fit(line: str, indent: int) -> list[str]:
    """``line`` wrapped at spaces to ``_WIDTH`` columns, the continuation lines
    indented by ``indent`` spaces (a line that fits is returned as it is)."""
    return textwrap.wrap(
        line, width=_WIDTH, subsequent_indent=" " * indent, break_on_hyphens=False
    )
