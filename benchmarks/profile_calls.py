"""Where the time of one call goes: instruction counts under callgrind.

Wall-clock figures on a shared 2-core machine are noisy; instruction counts
under ``valgrind --tool=callgrind`` are not (the same binary and input give the
same count whatever else runs).  For each operation this script runs a child
Python that does it N and 2N times, so that start-up cancels out, and reports:

- instructions per call (or per item for the batch calls), Python included;
- of which inside the C engine (the ``mq_*`` function the cffi wrapper calls);
- of which in cffi's argument conversion (the wrapper minus the engine).

The baseline is a bare cffi call ``f(k, kl, v, vl)`` of a tiny API-mode
extension built in a temporary directory, with the same bytes arguments.

    python benchmarks/profile_calls.py            # needs valgrind
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import sys
sys.path.insert(0, sys.argv[3])
import mqueue, _bare
what, n = sys.argv[1], int(sys.argv[2])
ns = f"prof{__import__('os').getpid()}"
mq = mqueue.create(ns, ["name=q;bytes=16M"])
q = mq["q"]
k, v = "k" * 16, "v" * 64
kb, vb = k.encode(), v.encode()
batch = [(k, v)] * 200
f = _bare.lib.f
try:
    if what.startswith("fetch") or what == "fill":  # fill: the filling alone, subtracted
        for _ in range(n // 200):
            q.add_many(batch if what != "fetch-bytes" else [(kb, vb)] * 200)
    if what == "bare":
        for _ in range(n):
            f(kb, 16, vb, 64)
    elif what == "add-str":
        for _ in range(n):
            q.add(k, v)
    elif what == "add-bytes":
        for _ in range(n):
            q.add(kb, vb)
    elif what in ("fetch-str", "fetch-bytes"):
        for _ in range(n):
            q.fetch()
    elif what == "add_many":
        for _ in range(n // 200):
            q.add_many(batch)
    elif what == "fetch_many":
        for _ in range(n // 200):
            q.fetch_many(200)
    elif what == "fill":
        pass
finally:
    mq.close()
    mqueue.destroy(ns)
"""

BARE = """
from cffi import FFI
ffi = FFI()
ffi.cdef("int f(const char *k, size_t kl, const char *v, size_t vl);")
ffi.set_source("_bare", "int f(const char *k, size_t kl, const char *v, size_t vl)"
               "{ return (int)(kl + vl) < 0; }")
ffi.compile()
"""

# what -> (the engine function, the cffi wrapper) whose inclusive cost is split out
ENGINE = {
    "add-str": ("mq_add_to", "_cffi_f_mq_add_to"),
    "add-bytes": ("mq_add_to", "_cffi_f_mq_add_to"),
    "fetch-str": ("mq_fetch_one", "_cffi_f_mq_fetch_one"),
    "fetch-bytes": ("mq_fetch_one", "_cffi_f_mq_fetch_one"),
    "add_many": ("mq_add_many_sep", "_cffi_f_mq_add_many_sep"),
    "fetch_many": ("mq_fetch_batch", "_cffi_f_mq_fetch_batch"),
}


def count(args: list[str], out: str, timeout: float = 600) -> int:
    """Instructions of ``python ARGS`` under callgrind (its output file: ``out``)."""
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable,
           *args]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    m = re.search(r"Collected : (\d+)", r.stderr)
    if not m:
        raise RuntimeError(r.stderr[-2000:])
    return int(m.group(1))


def run(what: str, n: int, bare_dir: str, out: str) -> int:
    return count(["-c", CHILD, what, str(n), bare_dir], out)


def inclusive(out: str, fn: str) -> int:
    """The inclusive instruction count of function ``fn`` in callgrind output ``out``."""
    r = subprocess.run(["callgrind_annotate", "--inclusive=yes", out],
                       capture_output=True, text=True)  # fmt: skip
    for line in r.stdout.splitlines():
        m = re.match(r"\s*([\d,]+) .*:" + re.escape(fn) + r"(?:\s|$)", line)
        if m:
            return int(m.group(1).replace(",", ""))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000, help="calls (items) per measurement")
    ap.add_argument("--no-json", action="store_true")
    a = ap.parse_args()
    if not shutil.which("valgrind"):
        print("valgrind is not installed: skipped", file=sys.stderr)
        return 0
    n = a.n
    per_item = {"add_many", "fetch_many"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-c", BARE], cwd=tmp, check=True, capture_output=True)
        cost: dict[str, dict[str, float]] = {}
        for what in ["fill", "bare", "add-str", "add-bytes", "fetch-str", "fetch-bytes",
                     "add_many", "fetch_many"]:  # fmt: skip
            print(f"profile: {what}", file=sys.stderr, flush=True)
            o1, o2 = os.path.join(tmp, "a.out"), os.path.join(tmp, "b.out")
            c1, c2 = run(what, n, tmp, o1), run(what, 2 * n, tmp, o2)
            d = {"total": (c2 - c1) / n}
            if what in ENGINE:
                eng, wrap = ENGINE[what]
                d["engine"] = (inclusive(o2, eng) - inclusive(o1, eng)) / n
                d["wrapper"] = (inclusive(o2, wrap) - inclusive(o1, wrap)) / n
            cost[what] = d
        fill = cost["fill"]["total"]  # the add_many filling a fetch run, per item
        for what in ["bare", "add-str", "add-bytes", "fetch-str", "fetch-bytes", "add_many",
                     "fetch_many"]:  # fmt: skip
            d = dict(cost[what])
            if what.startswith("fetch"):
                d["total"] -= fill
            rows.append((what, d))
    bare = cost["bare"]["total"]
    print(f"instructions per {'call'}; per item for add_many/fetch_many (N={n}, batches of 200)")
    print("| operation | instructions | vs bare cffi call | in the C engine | in cffi's wrapper |")
    print("|:--|--:|--:|--:|--:|")
    for what, d in rows:
        eng = d.get("engine")
        wrap = d.get("wrapper")
        print(
            f"| {what}{' (per item)' if what in per_item else ''} | {d['total']:,.0f} | "
            f"{d['total'] / bare:.2f}x | {'' if eng is None else f'{eng:,.0f}'} | "
            f"{'' if wrap is None else f'{wrap - eng:,.0f}'} |"
        )
    if not a.no_json:
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / "profile_calls.json").write_text(
            json.dumps({"n": n, "rows": [{"what": w, **d} for w, d in rows]}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
