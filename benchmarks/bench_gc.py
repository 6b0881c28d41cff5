"""What the cyclic GC costs a consumer that keeps the items it fetches (issue 10).

Every ``Item`` is a tuple, which the cyclic garbage collector tracks; a consumer
that keeps what it fetches (in a list, a dict, a batch it processes later)
makes the young generation fill up every ``gc.get_threshold()[0]`` items, and
each collection walks the young objects, and from time to time the older
generations with everything kept so far.  A consumer that drops each item
frees it at once (reference counting) and triggers no collection.

One process, one queue filled beforehand with N items; the timed loop only
fetches (``fetch`` one at a time, or ``fetch_many`` in batches) and keeps every
item in a list.  The same loop runs under five settings, interleaved within one
run (repetition 1 of every setting, then repetition 2, ...), so that the
ratios compare like with like on a noisy machine:

- ``gc on``: the interpreter's defaults;
- ``gc.freeze()`` after set-up: the consumer's own heap made before the loop
  (here the N reference items used for the check) moved to the permanent
  generation, so that collections no longer walk it;
- a raised gen-0 threshold (``gc.set_threshold(T, ...)``, ``--threshold``,
  default 100,000): fewer, larger young collections;
- ``gc off``: ``gc.disable()`` for the loop;
- ``dropped``: gc on, each item dropped as soon as it is fetched (the cost of
  the fetch alone).

Reported: ns per item (median, min..max), the ratio to ``gc off``, and the
collections of each generation the loop triggered.  After the clock stops,
every setting checks that each item arrived once, in order, unchanged.  With
``--callgrind`` (needs valgrind) each setting also runs under callgrind with N
and 2N items, and the difference gives instructions per item, which do not
depend on the machine's load.

    python benchmarks/bench_gc.py [--quick] [-n N] [--callgrind]
"""

from __future__ import annotations

import contextlib
import gc
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import common
from common import Item

SETTINGS = ["gc on", "gc.freeze()", "threshold", "gc off", "dropped"]
OPS = ["fetch", "fetch_many"]
BATCH = 256


@contextlib.contextmanager
def gc_setting(setting: str, threshold: int) -> Iterator[None]:
    """Apply one GC setting for the timed loop; the interpreter's own after.

    Every setting starts from a full collection, so that each loop starts with
    empty young generations."""
    old = gc.get_threshold()
    gc.collect()
    if setting == "gc.freeze()":
        gc.freeze()
    elif setting == "threshold":
        gc.set_threshold(threshold, *old[1:])
    elif setting == "gc off":
        gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.set_threshold(*old)
        gc.unfreeze()


def fill(q: Any, items: list[Item]) -> None:
    """Queue every item (untimed)."""
    for i in range(0, len(items), 4096):
        q.add_many(items[i : i + 4096])


# The timed loops, written out plainly.  Each returns what it kept (an empty
# list for "dropped") and the nanoseconds its loop took.
def keep_fetch(q: Any, n: int) -> tuple[list[Any], int]:
    kept: list[Any] = []
    append = kept.append
    fetch = q.fetch
    t0 = time.perf_counter_ns()
    for _ in range(n):
        append(fetch())
    return kept, time.perf_counter_ns() - t0


def keep_fetch_many(q: Any, n: int) -> tuple[list[Any], int]:
    kept: list[Any] = []
    extend = kept.extend
    fetch_many = q.fetch_many
    t0 = time.perf_counter_ns()
    for _ in range(-(-n // BATCH)):
        extend(fetch_many(BATCH))
    return kept, time.perf_counter_ns() - t0


def drop_fetch(q: Any, n: int) -> tuple[list[Any], int]:
    fetch = q.fetch
    t0 = time.perf_counter_ns()
    for _ in range(n):
        fetch()
    return [], time.perf_counter_ns() - t0


def drop_fetch_many(q: Any, n: int) -> tuple[list[Any], int]:
    fetch_many = q.fetch_many
    t0 = time.perf_counter_ns()
    for _ in range(-(-n // BATCH)):
        fetch_many(BATCH)
    return [], time.perf_counter_ns() - t0


LOOPS: dict[tuple[str, bool], Callable[[Any, int], tuple[list[Any], int]]] = {
    ("fetch", True): keep_fetch,
    ("fetch_many", True): keep_fetch_many,
    ("fetch", False): drop_fetch,
    ("fetch_many", False): drop_fetch_many,
}


def one_run(
    q: Any, items: list[Item], op: str, setting: str, threshold: int, check: bool = True
) -> dict[str, Any]:
    """Fill the queue, run the timed loop under ``setting``, check what came
    (unless ``check`` is false: under callgrind).

    Returns ns per item and the collections per generation during the loop."""
    fill(q, items)
    keep = setting != "dropped"
    loop = LOOPS[(op, keep)]
    with gc_setting(setting, threshold):
        before = [s["collections"] for s in gc.get_stats()]
        kept, ns = loop(q, len(items))
        after = [s["collections"] for s in gc.get_stats()]
    if keep and check:
        ok, in_order, msg = common.check_items(items, kept)
        if not (ok and in_order):
            raise RuntimeError(f"{op}, {setting}: {msg}{'' if in_order else ', out of order'}")
    elif not keep and len(q):
        raise RuntimeError(f"{op}, {setting}: {len(q)} items left in the queue")
    del kept
    return {
        "ns": ns / len(items),
        "collections": [a - b for a, b in zip(after, before, strict=True)],
    }


# ---------------------------------------------------------------- callgrind
CHILD_NS = "benchgc"


def child(op: str, setting: str, n: int, threshold: int) -> int:
    """Under callgrind: the set-up, and the loop of one setting unless ``setting`` is "fill"."""
    mqueue = common.import_mqueue()
    if mqueue is None:
        return 1
    # items of the benchmark's shape, made cheaply (callgrind runs 50x slower)
    items = [(f"{i:08d}abcdefgh", "v" * 64) for i in range(n)]
    with common.mq_namespace(mqueue, ["name=q;bytes=256M"], CHILD_NS) as (_, mq):
        q = mq["q"]
        if setting == "fill":
            fill(q, items)
            with gc_setting("gc on", threshold):
                pass
        else:
            one_run(q, items, op, setting, threshold, check=False)
    return 0


def instructions(op: str, setting: str, n: int, threshold: int) -> int:
    """Instructions callgrind counts for one child run."""
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        op,
        setting,
        str(n),
        str(threshold),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    m = re.search(r"Collected : (\d+)", r.stderr)
    if r.returncode != 0 or not m:
        raise RuntimeError(f"callgrind run failed: {r.stderr[-2000:]}")
    return int(m.group(1))


def callgrind_table(n: int, threshold: int) -> dict[str, dict[str, float]]:
    """Instructions per item between N and 2N items, set-up and filling removed
    (the kept items' release after the loop included)."""

    def per_item(op: str, setting: str) -> float:
        common.progress(f"bench_gc: callgrind {op}, {setting}")
        return (
            instructions(op, setting, 2 * n, threshold) - instructions(op, setting, n, threshold)
        ) / n

    fill = per_item("fetch", "fill")
    return {op: {s: per_item(op, s) - fill for s in SETTINGS} for op in OPS}


# ---------------------------------------------------------------- main
def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        op, setting, n, threshold = sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
        return child(op, setting, n, threshold)
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument(
        "-n", type=int, default=None, help="items per loop (default 500,000; 100,000 quick)"
    )
    p.add_argument("-r", "--reps", type=int, default=None, help="repetitions (default 5; 3 quick)")
    p.add_argument("--threshold", type=int, default=100_000, help="the raised gen-0 threshold")
    p.add_argument("--callgrind", action="store_true", help="also count instructions (valgrind)")
    p.add_argument("--callgrind-n", type=int, default=20_000, help="items per callgrind run")
    a = p.parse_args()
    n = a.n or (100_000 if a.quick else 500_000)
    reps = a.reps or (3 if a.quick else 5)
    mqueue = common.import_mqueue()
    if mqueue is None:
        return 1
    # the consumer's own heap made before the loop: here the reference items of the check
    items = common.make_items(n)
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {(o, s): [] for o in OPS for s in SETTINGS}
    order = [(o, s) for o in OPS for s in SETTINGS]
    with common.mq_namespace(mqueue, [f"name=q;bytes={max(64, n * 128 >> 20)}M"], "gc") as (_, mq):
        q = mq["q"]
        for r in range(reps):
            for i in range(len(order)):
                op, setting = order[(i + r) % len(order)]  # a different order each repetition
                common.progress(f"bench_gc: rep {r + 1}/{reps}, {op}, {setting}")
                runs[(op, setting)].append(one_run(q, items, op, setting, a.threshold))
    common.progress_done()
    cg = callgrind_table(a.callgrind_n, a.threshold) if a.callgrind else None
    if cg is not None:
        common.progress_done()
    if a.callgrind and not shutil.which("valgrind"):
        common.note("valgrind is not installed: instruction counts skipped")

    rows = []
    result: dict[str, Any] = {
        "n": n,
        "reps": reps,
        "batch": BATCH,
        "default_threshold": list(gc.get_threshold()),
        "raised_threshold": a.threshold,
        "ops": {},
    }
    for op in OPS:
        off = common.median([x["ns"] for x in runs[(op, "gc off")]])
        result["ops"][op] = {}
        for s in SETTINGS:
            xs = [x["ns"] for x in runs[(op, s)]]
            med = common.median(xs)
            coll = [
                int(common.median(g))
                for g in zip(*(x["collections"] for x in runs[(op, s)]), strict=True)
            ]
            label = f"threshold {a.threshold:,}" if s == "threshold" else s
            row = [
                op if op == "fetch" else f"fetch_many({BATCH})",
                label,
                f"{med:,.0f}",
                f"{min(xs):,.0f}..{max(xs):,.0f}",
                common.fmt_ratio(med / off),
                "/".join(map(str, coll)),
            ]
            if cg is not None:
                row.append(f"{cg[op][s]:,.0f}")
            rows.append(row)
            result["ops"][op][s] = {
                "ns_per_item": med,
                "runs": xs,
                "vs_gc_off": med / off,
                "collections": coll,
                "instructions": None if cg is None else cg[op][s],
            }
    headers = ["loop", "setting", "ns/item", "min..max", "vs gc off", "collections gen0/1/2"]
    if cg is not None:
        headers.append(f"instr/item (callgrind, N={a.callgrind_n:,})")
    print(f"machine: {common.machine_line()}")
    print(
        f"{n:,} items kept per loop, median of {reps}; default gc thresholds {gc.get_threshold()}"
    )
    print(common.table(headers, rows))
    if not a.no_json:
        path = common.write_json("gc", result)
        common.progress(f"wrote {path}\n")
    if not a.no_chart:

        def draw(ax: Any) -> None:
            width = 0.8 / len(OPS)
            for j, op in enumerate(OPS):
                ys = [result["ops"][op][s]["ns_per_item"] for s in SETTINGS]
                ax.bar([i + j * width for i in range(len(SETTINGS))], ys, width, label=op)
            ax.set_xticks([i + width / 2 for i in range(len(SETTINGS))], SETTINGS)
            ax.set_ylabel("ns per item")
            ax.legend()

        path = common.chart("gc", draw, f"a consumer keeping {n:,} items: the cyclic GC")
        if path is not None:
            common.progress(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
