"""Shared helpers for the mqueue benchmarks.

Items, progress, JSON results, optional charts, the machine description, and a
small harness that runs benchmark roles in child processes with a hard deadline
(children are always killed and waited for, even on Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import string
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
KEY_LEN = 16
VALUE_LEN = 64
SEQ_DIGITS = 8  # a key is SEQ_DIGITS digits of sequence number + random letters

# fork: children inherit the pre-built item list (no pickling of the items).
CTX = mp.get_context("fork")

Item = tuple[str, str]


# ---------------------------------------------------------------- items


def make_items(n: int, seed: int = 4) -> list[Item]:
    """``n`` (key, value) str pairs: keys of 16 chars, values of 64 chars.

    The key starts with its 8-digit sequence number (so a consumer can check that
    every item arrived exactly once), followed by random letters. Values are drawn
    from a pool of 1024 random 64-char strings.
    """
    if n >= 10**SEQ_DIGITS:
        raise ValueError("too many items for the key format")
    rnd = random.Random(seed)
    letters = string.ascii_letters
    pool = ["".join(rnd.choices(letters + string.digits, k=VALUE_LEN)) for _ in range(1024)]
    tails = ["".join(rnd.choices(letters, k=KEY_LEN - SEQ_DIGITS)) for _ in range(4096)]
    return [(f"{i:08d}{tails[i & 4095]}", pool[rnd.randrange(1024)]) for i in range(n)]


def seq_of(key: str | bytes) -> int:
    """The sequence number carried by a benchmark key."""
    return int(key[:SEQ_DIGITS])


def check_items(items: Sequence[Item], received: Sequence[Any]) -> tuple[bool, bool, str]:
    """Check that ``received`` holds every item of ``items`` exactly once.

    ``received`` elements are (key, value) pairs (tuples or named tuples, str or
    bytes). Returns ``(ok, in_order, message)``.
    """
    n = len(items)
    seen = bytearray(n)
    bad = 0
    in_order = True
    prev = -1
    for k, v in received:
        if isinstance(k, bytes):
            k = k.decode()
        if isinstance(v, bytes):
            v = v.decode()
        try:
            s = seq_of(k)
        except ValueError:
            bad += 1
            continue
        if not 0 <= s < n or items[s] != (k, v):
            bad += 1
            continue
        seen[s] += 1 if seen[s] < 255 else 0
        if s < prev:
            in_order = False
        prev = s
    missing = seen.count(0)
    dups = n - missing - seen.count(1)
    ok = bad == 0 and missing == 0 and dups == 0 and len(received) == n
    msg = (
        "ok"
        if ok
        else (
            f"received {len(received)} of {n}: {missing} missing, {dups} duplicated, {bad} corrupt"
        )
    )
    return ok, in_order, msg


def check_seqs(n: int, seqs: Sequence[int]) -> tuple[bool, str]:
    """Check that the sequence numbers ``seqs`` are exactly ``range(n)``, any order."""
    seen = bytearray(n)
    bad = 0
    for s in seqs:
        if 0 <= s < n and seen[s] < 255:
            seen[s] += 1
        else:
            bad += 1
    missing = seen.count(0)
    dups = n - missing - seen.count(1)
    ok = bad == 0 and missing == 0 and dups == 0 and len(seqs) == n
    msg = (
        "ok"
        if ok
        else (f"received {len(seqs)} of {n}: {missing} missing, {dups} duplicated, {bad} invalid")
    )
    return ok, msg


# ---------------------------------------------------------------- output


def progress(msg: str) -> None:
    """One progress line on stderr (overwritten in place on a terminal)."""
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + msg)
        if msg.endswith("\n"):
            pass
    else:
        sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def progress_done() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def note(msg: str) -> None:
    """A note that must stay visible (skipped peer, failure)."""
    progress_done()
    sys.stderr.write(f"note: {msg}\n")
    sys.stderr.flush()


def machine() -> dict[str, Any]:
    """Description of this machine: nproc, CPU model, Python, kernel."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu": cpu,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "kernel": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
    }


def machine_line() -> str:
    m = machine()
    return f"{m['nproc']} CPUs ({m['cpu']}), {m['python']}, {m['kernel']}"


def versions() -> dict[str, str]:
    """Versions of the peers and of mqueue, where importable."""
    from importlib import metadata

    dists = {"faster_fifo": "faster-fifo", "posix_ipc": "posix_ipc", "zmq": "pyzmq"}
    out: dict[str, str] = {}
    for mod in ("mqueue", "faster_fifo", "posix_ipc", "zmq", "cffi", "matplotlib"):
        try:
            m = __import__(mod)
        except Exception:  # noqa: BLE001 - any import failure means "not available"
            continue
        v = getattr(m, "__version__", getattr(m, "VERSION", None))
        if v is None:  # faster_fifo has no __version__: ask its distribution
            try:
                v = metadata.version(dists.get(mod, mod))
            except metadata.PackageNotFoundError:
                v = "?"
        out[mod] = str(v)
    return out


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/NAME.json`` with the machine description added."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    doc = {
        "benchmark": name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine(),
        "versions": versions(),
        **data,
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path


def chart(
    name: str,
    draw: Callable[[Any], None],
    title: str,
) -> Path | None:
    """Draw ``benchmarks/results/NAME.png`` with ``draw(ax)``; skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        note(f"matplotlib is not installed: chart {name}.png skipped")
        return None
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        draw(ax)
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
        fig.text(0.99, 0.01, machine_line(), ha="right", va="bottom", fontsize=6, alpha=0.6)
        fig.tight_layout()
        path = RESULTS_DIR / f"{name}.png"
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def save(
    name: str,
    args: argparse.Namespace,
    data: dict[str, Any],
    draw: Callable[[Any], None] | None,
    title: str,
) -> None:
    """Write ``results/NAME.json`` (unless ``--no-json``) and draw
    ``results/NAME.png`` with ``draw`` (unless ``--no-chart`` or ``draw`` is
    None); say on stdout what was written."""
    if not args.no_json:
        print(f"wrote {write_json(name, data)}")
    if not args.no_chart and draw is not None:
        path = chart(name, draw, title)
        if path:
            print(f"wrote {path}")


def print_problems(skipped: dict[str, str], errors: dict[str, str]) -> None:
    """The peers skipped and the runs that failed, one line each, after a table."""
    for k, why in skipped.items():
        print(f"skipped: {k}: {why}")
    for k, why in errors.items():
        print(f"failed: {k}: {why}")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text (Markdown-compatible) table."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: Sequence[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
            + " |"
        )

    sep = (
        "|"
        + "|".join("-" * (w + 1) + ":" if i else ":" + "-" * (w + 1) for i, w in enumerate(widths))
        + "|"
    )
    return "\n".join([line(cells[0]), sep] + [line(r) for r in cells[1:]])


def fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


# ---------------------------------------------------------------- arguments


def base_parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser with the flags every benchmark script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="a short run (smaller N, fewer reps)")
    p.add_argument("--no-json", action="store_true", help="do not write results/NAME.json")
    p.add_argument("--no-chart", action="store_true", help="do not draw results/NAME.png")
    return p


# ---------------------------------------------------------------- mqueue


def import_mqueue() -> Any | None:
    """``mqueue`` if it imports and has ``create``; else None (with a note)."""
    try:
        import mqueue
    except Exception as e:  # noqa: BLE001
        note(f"mqueue is not importable ({type(e).__name__}: {e}): mqueue skipped")
        return None
    if not hasattr(mqueue, "create"):
        note("mqueue has no create(): mqueue skipped")
        return None
    return mqueue


def queue_full_error(mqueue: Any) -> type[BaseException]:
    """The exception ``add`` raises when an unbounded queue is full in bytes."""
    exc = getattr(mqueue, "QueueFullError", None)
    if exc is None:
        with contextlib.suppress(Exception):
            from mqueue._errors import QueueFullError as exc  # type: ignore[no-redef]
    return exc if exc is not None else mqueue.MQueueError  # type: ignore[no-any-return]


_NS_COUNTER = [0]


def namespace(tag: str = "") -> str:
    """A namespace unique to this process and call."""
    _NS_COUNTER[0] += 1
    return f"bench{os.getpid()}{tag}{_NS_COUNTER[0]}"


@contextlib.contextmanager
def mq_namespace(mqueue: Any, defs: list[str], tag: str = "") -> Iterator[tuple[str, Any]]:
    """Create a namespace, yield (name, handle), close and destroy it in any case."""
    ns = namespace(tag)
    mq = mqueue.create(ns, defs)
    try:
        yield ns, mq
    finally:
        with contextlib.suppress(Exception):
            mq.close()
        with contextlib.suppress(Exception):
            mqueue.destroy(ns)


def add_many_retrying(add_many: Callable[[Any], int], chunk: Sequence[Item], full: Any) -> None:
    """``add_many(chunk)``, retried every 0.2 ms while the queue is full in bytes
    (a producer never drops); raises if it stored fewer than all."""
    while True:
        try:
            stored = add_many(chunk)
            break
        except full:
            time.sleep(0.0002)
    if stored != len(chunk):
        raise RuntimeError(f"add_many stored {stored} of {len(chunk)}")


# ---------------------------------------------------------------- peers


def missing(module: str, install: str) -> str | None:
    """Why a peer cannot run: ``module`` does not import (None when it does)."""
    try:
        __import__(module)
    except ImportError:
        return f"{install} is not installed (pip install {install})"
    return None


def available(peers: Sequence[Any]) -> tuple[list[Any], dict[str, str]]:
    """The peers (objects with ``name`` and ``unavailable()``) that can run, and
    {name: why} for the others, each noted on stderr."""
    ok: list[Any] = []
    skipped: dict[str, str] = {}
    for peer in peers:
        why = peer.unavailable()
        if why:
            note(f"{peer.name}: skipped: {why}")
            skipped[peer.name] = why
        else:
            ok.append(peer)
    return ok, skipped


@contextlib.contextmanager
def mp_queue() -> Iterator[Any]:
    """A ``multiprocessing.Queue``, closed without waiting for its feeder thread."""
    q = CTX.Queue()
    try:
        yield q
    finally:
        q.close()
        q.cancel_join_thread()


@contextlib.contextmanager
def posix_mq(tag: str, depth: int) -> Iterator[Any]:
    """A new ``posix_ipc.MessageQueue`` of ``depth`` messages of 256 bytes at most,
    unlinked and closed afterwards."""
    import posix_ipc

    mq = posix_ipc.MessageQueue(
        f"/{namespace(tag)}", posix_ipc.O_CREX, max_messages=depth, max_message_size=256
    )
    try:
        yield mq
    finally:
        with contextlib.suppress(Exception):
            mq.unlink()
        mq.close()


# ---------------------------------------------------------------- processes

Role = Callable[..., Any]


def _child(role: Role, conn: Connection, args: tuple[Any, ...]) -> None:
    try:
        res = role(*args)
        conn.send(("ok", res))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        with contextlib.suppress(Exception):
            name = getattr(role, "__name__", "role")
            conn.send(("error", f"{name}: {type(e).__name__}: {e}"))
    finally:
        conn.close()


class ProcessFailed(RuntimeError):
    pass


def run_roles(
    roles: Sequence[tuple[Role, tuple[Any, ...]]],
    timeout: float,
    go: Any | None = None,
    ready: Any | None = None,
) -> list[Any]:
    """Run each ``(role, args)`` in a forked child; return their results in order.

    If ``go`` (an Event) and ``ready`` (a Semaphore the roles release once set up)
    are given, ``go`` is set once every role is ready, so that the timed sections
    start together. Raises ProcessFailed when a role fails or the deadline passes;
    children are always killed and reaped.
    """
    procs: list[Any] = []
    conns: list[Connection] = []
    deadline = time.monotonic() + timeout
    try:
        for role, args in roles:
            r, w = CTX.Pipe(duplex=False)
            p = CTX.Process(target=_child, args=(role, w, args), daemon=True)
            p.start()
            w.close()
            procs.append(p)
            conns.append(r)
        if go is not None and ready is not None:
            for _ in roles:
                left = deadline - time.monotonic()
                if left <= 0 or not ready.acquire(timeout=left):
                    # a role that failed in its setup has sent its error already
                    for c in conns:
                        if c.poll(0):
                            status, val = c.recv()
                            if status == "error":
                                raise ProcessFailed(val)
                    raise ProcessFailed("timed out waiting for processes to be ready")
            go.set()
        results: list[Any] = []
        for c in conns:
            left = deadline - time.monotonic()
            if left <= 0 or not c.poll(left):
                raise ProcessFailed(f"timed out after {timeout:.0f}s")
            try:
                status, val = c.recv()
            except EOFError as e:
                raise ProcessFailed("a child process died") from e
            if status != "ok":
                raise ProcessFailed(val)
            results.append(val)
        return results
    finally:
        if go is not None:
            go.set()  # nobody stays blocked on it
        for p in procs:
            p.join(timeout=max(0.0, min(2.0, deadline - time.monotonic())))
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join()
        for c in conns:
            c.close()


def start_together(ready: Any, go: Any) -> int:
    """A role's last step before its timed section: tell :func:`run_roles` it is
    set up, wait for every other role.  Returns ``time.monotonic_ns()`` then (a
    producer's start time)."""
    ready.release()
    go.wait()
    return time.monotonic_ns()


def sync_objects() -> tuple[Any, Any]:
    """A (go Event, ready Semaphore) pair for :func:`run_roles`."""
    return CTX.Event(), CTX.Semaphore(0)
