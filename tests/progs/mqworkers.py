"""Producer and worker programs for the cross-process tests.

Run as a script:
    python mqworkers.py produce NAMESPACE QUEUE N NSTOP BATCH
    python mqworkers.py work NAMESPACE QUEUE OUT_PATH MODE
or imported (by multiprocessing children) for :func:`produce` / :func:`work`.

Items are ``(str(i), value_for(i))`` for i in 0..N-1, then NSTOP ``STOP``
items, one per worker.  A worker fetches until it gets a ``STOP`` and writes
the integer keys it got, as little-endian uint32, to OUT_PATH; then a line
of JSON to OUT_PATH + ".json" with its count, torn (key/value mismatches)
and pid.  MODE ``one`` uses ``fetch``, ``many`` uses ``fetch_many(64)``.
"""

from __future__ import annotations

import array
import json
import os
import sys
import time

import mqueue

STOP = "STOP"
IDLE_TIMEOUT = 60.0  # a worker that waits this long for anything gives up


def value_for(i: int) -> bytes:
    return b"v%d" % (i * 7919) + b"\0" * (i % 5)


def produce(q: mqueue.Queue, n: int, nstop: int, batch: int = 500) -> None:
    i = 0
    while i < n:
        items = [(str(j), value_for(j)) for j in range(i, min(n, i + batch))]
        while True:
            try:
                q.add_many(items)
                break
            except mqueue.QueueFullError:  # back-pressure on an unbounded queue
                time.sleep(0.001)
        i += len(items)
    for _ in range(nstop):
        while True:
            try:
                q.add(STOP, b"")
                break
            except mqueue.QueueFullError:
                time.sleep(0.001)


def work(q: mqueue.Queue, out_path: str, mode: str = "one") -> None:
    got = array.array("I")
    torn = 0
    stopped = False
    while not stopped:
        if mode == "one":
            item = q.fetch(timeout=IDLE_TIMEOUT)
            items = [] if item is None else [item]
        else:
            items = q.fetch_many(64, timeout=IDLE_TIMEOUT)
        if not items:
            raise SystemExit(f"worker {os.getpid()}: nothing for {IDLE_TIMEOUT} s")
        extra_stops = 0
        for key, value in items:
            if key == STOP:
                if stopped:
                    extra_stops += 1
                stopped = True
                continue
            i = int(key)
            if value != value_for(i):
                torn += 1
            got.append(i)
        for _ in range(extra_stops):  # leave the other workers their STOP
            q.add(STOP, b"")
    with open(out_path, "wb") as f:
        got.tofile(f)
    with open(out_path + ".json", "w") as f:
        json.dump({"count": len(got), "torn": torn, "pid": os.getpid()}, f)


def main(argv: list[str]) -> int:
    cmd, namespace, qname, *rest = argv
    with mqueue.attach(namespace) as mq:
        q = mq[qname]
        if cmd == "produce":
            n, nstop, batch = (int(x) for x in rest)
            produce(q, n, nstop, batch)
        elif cmd == "work":
            out_path, mode = rest
            work(q, out_path, mode)
        else:
            raise SystemExit(f"unknown command {cmd!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
