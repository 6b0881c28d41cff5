"""``mqueue demo`` killed with SIGKILL: its children die with it, and the next
demo removes (or names) the namespace it left; its lines fit a terminal."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import mqueue
from mqueue import _demo

DEADLINE_S = 10.0  # children must be gone well before the ~12 s of the old code


def _children(pid: int) -> list[int]:
    """The pids of pid's live children (from /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(d.name))
    return out


def _is_demo_child(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start_demo(seconds: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mqueue", "demo", "--workers", "2", "--seconds", seconds],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_running(p: subprocess.Popen[str]) -> None:
    """Until the demo printed its figures' header (every child attached)."""
    assert p.stderr is not None
    deadline = time.monotonic() + 120
    for line in p.stderr:
        if "added/s" in line:
            return
        assert time.monotonic() < deadline, "the demo did not start"
    raise AssertionError("the demo ended before it ran")


def test_sigkilled_demo_children_die_and_next_demo_cleans() -> None:
    p = _start_demo("60")
    namespace = f"demo{p.pid}"
    try:
        _wait_running(p)
        kids = [k for k in _children(p.pid) if _is_demo_child(k)]
        assert len(kids) == 3  # the listener and two workers
        assert os.path.exists(f"/dev/shm/mqueue.{namespace}")
        p.kill()
        p.wait(30)
        deadline = time.monotonic() + DEADLINE_S
        while any(_alive(k) for k in kids) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(k) for k in kids), "the demo's children outlived it"
        assert os.path.exists(f"/dev/shm/mqueue.{namespace}")  # what the next demo finds
        r = subprocess.run(
            [sys.executable, "-m", "mqueue", "demo", "--workers", "1", "--seconds", "0.5"],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert r.returncode == 0, r.stderr
        assert f"removed namespace {namespace!r}" in r.stderr
        assert not os.path.exists(f"/dev/shm/mqueue.{namespace}")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        with contextlib.suppress(mqueue.NamespaceNotFoundError):
            mqueue.destroy(namespace)


def test_leftover_of_a_live_process_is_named_not_removed() -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    namespace = f"demo{sleeper.pid}"
    try:
        mqueue.create(namespace, [_demo.DEFINITION]).close()
        notes = _demo.clean_leftovers()
        assert any(namespace in n and "still runs" in n for n in notes)
        assert namespace in mqueue._shm.list_namespaces()  # type: ignore[attr-defined]
        sleeper.kill()
        sleeper.wait()
        notes = _demo.clean_leftovers()
        # (a demo another test runs in parallel may have removed it first)
        assert any(f"removed namespace {namespace!r}" in n for n in notes) or not os.path.exists(
            f"/dev/shm/mqueue.{namespace}"
        )
        assert namespace not in mqueue._shm.list_namespaces()  # type: ignore[attr-defined]
    finally:
        sleeper.kill()
        sleeper.wait()
        with contextlib.suppress(mqueue.NamespaceNotFoundError):
            mqueue.destroy(namespace)


def test_leftover_names_that_are_not_pids_are_left_alone() -> None:
    names = ["demo0", "demo99999999999999999999", "demo00x"]
    made = []
    try:
        for name in names:
            mqueue.create(name, ["name=q"]).close()
            made.append(name)
        notes = _demo.clean_leftovers()
        assert not any(n in note for n in names for note in notes)
        assert set(names) <= set(mqueue._shm.list_namespaces())  # type: ignore[attr-defined]
    finally:
        for name in made:
            with contextlib.suppress(mqueue.NamespaceNotFoundError):
                mqueue.destroy(name)


def test_child_whose_parent_already_died_exits_at_once() -> None:
    """The race at start: the parent died before prctl; the pid check catches it."""
    code = textwrap.dedent(
        """
        import os, sys
        from mqueue import _demo
        _demo.die_with_parent(int(sys.argv[1]))  # not our parent: as if re-parented
        print("survived")
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "1"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 1 and "survived" not in r.stdout
    r = subprocess.run(
        [sys.executable, "-c", code, str(os.getpid())], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0 and r.stdout == "survived\n"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_pdeathsig_kills_the_child_of_a_dying_parent() -> None:
    """A middle process starts a child that calls die_with_parent, then is SIGKILLed."""
    code = textwrap.dedent(
        """
        import os, sys, time, subprocess
        child = subprocess.Popen([sys.executable, "-c",
            "import os, time; from mqueue import _demo; "
            "_demo.die_with_parent(os.getppid()); print('ready', flush=True); time.sleep(120)"],
            stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline() == "ready\\n"
        print(child.pid, flush=True)
        time.sleep(120)
        """
    )
    mid = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert mid.stdout is not None
        child = int(mid.stdout.readline())
        assert _alive(child)
        mid.send_signal(signal.SIGKILL)
        mid.wait()
        deadline = time.monotonic() + DEADLINE_S
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(child)
    finally:
        if mid.poll() is None:
            mid.kill()
            mid.wait()


def test_demo_lines_fit_80_columns() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mqueue", "demo", "--workers", "2", "--seconds", "2"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stderr
    lines = (r.stderr + r.stdout).splitlines()
    assert len(lines) > 8
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)


def test_summary_lines_fit_80_columns_with_many_workers() -> None:
    """``--workers 24``: the per-worker counts wrap instead of one long line."""
    counts = [123456 + i for i in range(24)]
    s = {
        "seconds": 10.181,
        "queue": _demo.DEFINITION,
        "added": 9_876_543_210,
        "added_per_second": 987_654_321,
        "fetched": sum(counts),
        "fetched_per_second": 296_300,
        "workers": len(counts),
        "worker_fetched": counts,
        "evicted": 9_876_543_210 - sum(counts),
        "left": 0,
        "high_water": _demo.QUEUE_SIZE,
        "recoveries": 0,
        "order_errors": 0,
        "balanced": True,
    }
    lines = _demo.format_summary(s).splitlines()
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    shown = re.findall(r"\d+", "\n".join(lines))
    assert all(str(n) in shown for n in counts)  # every worker's count is still shown
    assert lines[-1].endswith("OK")
