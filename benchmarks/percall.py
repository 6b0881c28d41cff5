"""Per-call cost in one process, uncontended: mqueue's add/fetch against a bare cffi call.

Baseline: a tiny cffi API-mode extension, built at run time in a temporary
directory, with one C function ``int f(const char *k, size_t kl, const char *v,
size_t vl)`` that returns 0, called with the same arguments an ``add`` needs
(bytes of the key and value and their lengths). Every figure is the median of
several rounds of a plain Python ``for`` loop over the items, in ns per call, loop
overhead included in all of them alike.

Also: ``add`` + ``fetch`` on a queue holding 1,000,000 items against one holding 10,
and an ``addmode=2`` add that replaces a key in a queue of 100,000 distinct keys
against one of 100 keys (the cost must not grow with the work).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import common
from common import Item

C_SOURCE = "int f(const char *k, size_t kl, const char *v, size_t vl) { return 0; }\n"
C_CDEF = "int f(const char *k, size_t kl, const char *v, size_t vl);"


@contextlib.contextmanager
def baseline_lib() -> Iterator[Any | None]:
    """Build and import the baseline extension; yields its ``lib`` or None (with a note)."""
    try:
        import cffi
    except ImportError:
        common.note("cffi is not installed: bare-cffi baseline skipped")
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="mqbench-cffi-") as d:
        modname = "_mqbench_baseline"
        try:
            ffi = cffi.FFI()
            ffi.cdef(C_CDEF)
            ffi.set_source(modname, C_SOURCE)
            ffi.compile(tmpdir=d, verbose=False)
            sys.path.insert(0, d)
            try:
                mod = importlib.import_module(modname)
            finally:
                sys.path.remove(d)
        except Exception as e:  # noqa: BLE001 - a compiler problem of any kind
            common.note(f"could not build the cffi baseline ({type(e).__name__}: {e}): skipped")
            yield None
            return
        yield mod.lib


def timed(
    loop: Callable[[], int], rounds: int, setup: Callable[[], None] | None = None
) -> tuple[float, list[float]]:
    """Median ns per call over ``rounds`` runs of ``loop`` (which returns its call count)."""
    per: list[float] = []
    for _ in range(rounds):
        if setup is not None:
            setup()
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            calls = loop()
            t1 = time.perf_counter_ns()
        finally:
            gc.enable()
        per.append((t1 - t0) / calls)
    return statistics.median(per), per


def fill(q: Any, items: list[Item], full: type[BaseException]) -> None:
    """Put ``items`` into ``q`` with add_many (batches of 1000)."""
    for i in range(0, len(items), 1000):
        stored = q.add_many(items[i : i + 1000])
        if stored != len(items[i : i + 1000]):
            raise RuntimeError(f"add_many stored {stored} of {len(items[i : i + 1000])}")


def main() -> int:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("-m", "--calls", type=int, default=None, help="calls per round")
    p.add_argument("-r", "--rounds", type=int, default=None, help="rounds per figure")
    p.add_argument("--depth", type=int, default=None, help="deep queue size (1,000,000)")
    p.add_argument("--keys", type=int, default=None, help="addmode=2 many-keys size (100,000)")
    args = p.parse_args()
    m = args.calls or (50_000 if args.quick else 200_000)
    rounds = args.rounds or (5 if args.quick else 9)
    depth = args.depth or (200_000 if args.quick else 1_000_000)
    nkeys = args.keys or (20_000 if args.quick else 100_000)

    items = common.make_items(max(m, depth + m, nkeys))
    work = items[:m]
    bwork = [(k.encode(), v.encode()) for k, v in work]
    results: dict[str, dict[str, Any]] = {}
    notes: list[str] = []

    def record(name: str, ns: float, runs: list[float], base: str | None = None) -> None:
        results[name] = {"ns_per_call": ns, "runs": runs, "baseline": base}

    with baseline_lib() as lib:
        if lib is not None:
            f = lib.f
            common.progress("percall: bare cffi call")

            def loop_base() -> int:
                for k, v in bwork:
                    f(k, len(k), v, len(v))
                return len(bwork)

            def loop_base_enc() -> int:
                for k, v in work:
                    kb = k.encode()
                    vb = v.encode()
                    f(kb, len(kb), vb, len(vb))
                return len(work)

            record("cffi f(k, kl, v, vl), bytes", *timed(loop_base, rounds))
            record("cffi f(k, kl, v, vl), str encoded per call", *timed(loop_base_enc, rounds))

            def loop_empty() -> int:
                for _k, _v in bwork:
                    pass
                return len(bwork)

            record("empty Python loop (for reference)", *timed(loop_empty, rounds))
        else:
            notes.append("bare cffi baseline skipped (could not build)")

    mqueue = common.import_mqueue()
    if mqueue is None:
        notes.append("mqueue not importable: mqueue figures skipped")
    else:
        full = common.queue_full_error(mqueue)
        try:
            with common.mq_namespace(
                mqueue,
                [
                    "name=pc;bytes=256M",
                    "name=deep;bytes=512M",
                    "name=shallow;bytes=256M",
                    "name=amany;bytes=256M;addmode=2",
                    "name=afew;bytes=256M;addmode=2",
                ],
                tag="pc",
            ) as (_ns, mq):
                q = mq["pc"]
                add, fetch = q.add, q.fetch

                def loop_add() -> int:
                    for k, v in work:
                        add(k, v)
                    return len(work)

                def loop_add_bytes() -> int:
                    for k, v in bwork:
                        add(k, v)
                    return len(bwork)

                def loop_fetch() -> int:
                    for _ in range(m):
                        fetch()
                    return m

                def drain() -> None:
                    while q.fetch_many(10_000):
                        pass

                def prefill() -> None:
                    drain()
                    fill(q, work, full)

                common.progress("percall: mqueue add (str)")
                record("mqueue q.add(k, v), str", *timed(loop_add, rounds, drain))
                common.progress("percall: mqueue add (bytes)")
                record("mqueue q.add(k, v), bytes", *timed(loop_add_bytes, rounds, drain))
                common.progress("percall: mqueue fetch")
                record("mqueue q.fetch()", *timed(loop_fetch, rounds, prefill))
                drain()

                def loop_fetch_empty() -> int:
                    for _ in range(m):
                        fetch()
                    return m

                record("mqueue q.fetch() on an empty queue", *timed(loop_fetch_empty, rounds))

                # --- add + fetch, deep vs shallow queue
                def add_fetch(qq: Any) -> Callable[[], int]:
                    a, fe = qq.add, qq.fetch

                    def loop() -> int:
                        for k, v in work:
                            a(k, v)
                            fe()
                        return len(work)

                    return loop

                common.progress(f"percall: filling a queue with {depth} items")
                deep, shallow = mq["deep"], mq["shallow"]
                fill(deep, items[m : m + depth], full)
                fill(shallow, items[m : m + 10], full)
                if len(deep) != depth or len(shallow) != 10:
                    raise RuntimeError(f"len(deep)={len(deep)}, len(shallow)={len(shallow)}")
                common.progress("percall: add+fetch, shallow and deep")
                record("add+fetch, queue of 10", *timed(add_fetch(shallow), rounds))
                record(
                    f"add+fetch, queue of {depth}",
                    *timed(add_fetch(deep), rounds),
                    base="add+fetch, queue of 10",
                )
                drain_q = deep.fetch_many
                while drain_q(10_000):
                    pass

                # --- addmode=2: replace a key, many keys vs few keys
                common.progress(f"percall: addmode=2 with {nkeys} keys")
                amany, afew = mq["amany"], mq["afew"]
                fill(amany, items[:nkeys], full)
                fill(afew, items[:100], full)

                def replace(qq: Any, keys: int) -> Callable[[], int]:
                    a = qq.add
                    seq = [(items[i % keys][0], items[(i * 7) % m][1]) for i in range(m)]

                    def loop() -> int:
                        for k, v in seq:
                            a(k, v)
                        return len(seq)

                    return loop

                st0 = amany.stats()
                record("addmode=2 replace, 100 keys", *timed(replace(afew, 100), rounds))
                record(
                    f"addmode=2 replace, {nkeys} keys",
                    *timed(replace(amany, nkeys), rounds),
                    base="addmode=2 replace, 100 keys",
                )
                st1 = amany.stats()
                if len(amany) != nkeys or len(afew) != 100:
                    notes.append(
                        f"addmode=2: queue length changed: {len(amany)} (expected "
                        f"{nkeys}), {len(afew)} (expected 100)"
                    )
                dup = getattr(st1, "duplicates", 0) - getattr(st0, "duplicates", 0)
                if dup != m * rounds:
                    notes.append(
                        f"addmode=2: stats().duplicates grew by {dup}, expected {m * rounds}"
                    )
        except Exception as e:  # noqa: BLE001 - report what failed, keep what ran
            common.note(f"mqueue part failed: {type(e).__name__}: {e}")
            notes.append(f"mqueue part failed: {type(e).__name__}: {e}")
    common.progress_done()

    base_name = "cffi f(k, kl, v, vl), bytes"
    rows = []
    for name, r in results.items():
        bname = r["baseline"] or (base_name if name.startswith("mqueue") else None)
        ratio = None
        if bname and bname in results:
            ratio = r["ns_per_call"] / results[bname]["ns_per_call"]
            r["ratio"] = ratio
            r["baseline"] = bname
        rows.append(
            [
                name,
                f"{r['ns_per_call']:.0f}",
                f"{min(r['runs']):.0f}..{max(r['runs']):.0f}",
                common.fmt_ratio(ratio),
                bname or "",
            ]
        )
    print(f"per call, one process, uncontended: {m} calls per round, median of {rounds}")
    print(f"machine: {common.machine_line()}")
    print(common.table(["call", "ns/call", "min..max", "ratio", "to"], rows))
    for n_ in notes:
        print(f"note: {n_}")

    def draw(ax: Any) -> None:
        names = list(results)
        vals = [results[nm]["ns_per_call"] for nm in names]
        colors = ["tab:red" if ("mqueue" in nm or "add" in nm) else "tab:gray" for nm in names]
        ax.barh(names[::-1], vals[::-1], color=colors[::-1])
        ax.set_xlabel("ns per call (median, Python loop included)")
        for i, v in enumerate(vals[::-1]):
            ax.text(v, i, f" {v:.0f}", va="center", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)

    common.save(
        "percall",
        args,
        {"calls": m, "rounds": rounds, "depth": depth, "keys": nkeys, "results": results,
         "notes": notes},
        draw if results else None,
        "per-call cost, one process",
    )
    return 1 if any("failed" in n_ for n_ in notes) else 0


if __name__ == "__main__":
    raise SystemExit(main())
