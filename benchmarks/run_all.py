"""Run every mqueue benchmark; results and charts go to benchmarks/results/.

Each script runs as a child process (its own process group, killed on a deadline
or on Ctrl-C). Its table is shown as it runs and collected, with the machine
description and the exact command, into ``results/summary.md``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent
SCRIPTS = ["throughput", "percall", "scaling", "latency"]


def run(script: str, extra: list[str], timeout: float) -> tuple[int, str, float]:
    cmd = [sys.executable, str(HERE / f"{script}.py"), *extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    out_lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = t0 + timeout
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            out_lines.append(line)
            if time.monotonic() > deadline:
                raise TimeoutError
        rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except (TimeoutError, subprocess.TimeoutExpired):
        common.note(f"{script}: deadline of {timeout:.0f}s passed: stopped")
        rc = -1
    finally:
        if proc.poll() is None:
            # SIGINT first: the script's finally blocks remove its segments
            for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
    return rc, "".join(out_lines), time.monotonic() - t0


def main() -> int:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--only", default="", help="comma-separated script names")
    p.add_argument("--max-workers", type=int, default=None, help="passed to scaling.py")
    p.add_argument("--timeout", type=float, default=1800.0, help="deadline per script (s)")
    args = p.parse_args()
    extra = []
    if args.quick:
        extra.append("--quick")
    if args.no_json:
        extra.append("--no-json")
    if args.no_chart:
        extra.append("--no-chart")
    scripts = [s.strip() for s in args.only.split(",") if s.strip()] or SCRIPTS
    cmdline = " ".join(["python", "benchmarks/run_all.py", *sys.argv[1:]])
    parts = [
        f"# mqueue benchmarks ({'quick' if args.quick else 'full'} run)\n",
        f"Command: `{cmdline}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M:%S %z')}  ",
        f"Machine: {common.machine_line()}  ",
        f"Versions: {', '.join(f'{k} {v}' for k, v in common.versions().items())}\n",
    ]
    status = 0
    for s in scripts:
        if s not in SCRIPTS:
            common.note(f"unknown script {s!r} (known: {', '.join(SCRIPTS)})")
            status = 2
            continue
        sx = list(extra)
        if s == "scaling" and args.max_workers:
            sx += ["--max-workers", str(args.max_workers)]
        print(f"\n=== {s} {' '.join(sx)}", flush=True)
        rc, out, dt = run(s, sx, args.timeout)
        body = "\n".join(
            ln for ln in out.splitlines() if not ln.startswith(("wrote ", "machine: "))
        )
        parts.append(
            f"## {s}\n\n`python benchmarks/{s}.py {' '.join(sx)}`"
            f" (exit {rc}, {dt:.0f} s)\n\n{body}\n"
        )
        if rc != 0:
            status = 1
    if not args.no_json:
        common.RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = common.RESULTS_DIR / "summary.md"
        path.write_text("\n".join(parts))
        print(f"\nwrote {path}")
    return status


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        common.note("interrupted")
        raise SystemExit(130) from None
