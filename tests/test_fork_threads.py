"""fork() from a multi-threaded process (issue 9, item 5).

Whatever another thread is doing with mqueue handles when the process forks
(holding the registry lock, half-way through making or closing a handle), the
child never hangs, and every handle it inherited either has a liveness slot of
its own or is unusable with an error that says why.  Each child runs under a
timeout: a hang is a failure, not a stuck suite.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ctools import PYTHON, build_testing_package, have_gcc, py_env

import mqueue
from mqueue import _core, _shm

CHILD_TIMEOUT_S = 10.0


def wait_child(pid: int, timeout: float = CHILD_TIMEOUT_S) -> int:
    """The exit code of a forked child; SIGKILL and fail when it outlives timeout."""
    give_up = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > give_up:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"forked child {pid} hung (killed after {timeout} s)")
        time.sleep(0.005)


def in_child(body: Any) -> int:
    """Fork; the child runs body() and exits with its result (0 = good)."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = int(body())
        except BaseException:  # noqa: BLE001 - report it as a failure code
            import traceback

            traceback.print_exc()
            code = 98
        finally:
            os._exit(code)
    return wait_child(pid)


# ------------------------------------------------------------ deterministic causes


def test_fork_while_another_thread_holds_the_registry_lock(make_mq, ns) -> None:
    """A thread holds the registry lock at fork time: the child's first
    attach / close used to wait for it forever (the thread does not exist in
    the child)."""
    mq = make_mq(["name=q"])
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with _core._live_lock:
            held.set()
            release.wait(5)

    t = threading.Thread(target=holder, daemon=True)
    t.start()
    held.wait(5)
    threading.Timer(0.3, release.set).start()  # the fork may wait for it, not forever

    def child() -> int:
        other = mqueue.attach(ns)
        other["q"].add("child", "x")
        other.close()
        mq.close()
        return 0

    try:
        assert in_child(child) == 0
    finally:
        release.set()
        t.join(5)
    assert mq["q"].fetch() == ("child", "x")


@contextlib.contextmanager
def handles_stuck_half_made(ns: str, count: int) -> Iterator[list[threading.Thread]]:
    """``count`` threads each stuck inside the making of an attach handle, at
    the point where its finalizer is set up (the gap between "registered"
    and "complete" in the old code)."""
    release = threading.Event()
    stuck = threading.Semaphore(0)
    mine: set[int] = set()
    real = _shm.weakref

    def finalize(obj: Any, *args: Any) -> Any:
        if threading.get_ident() in mine:
            stuck.release()
            release.wait(10)
        return real.finalize(obj, *args)

    fake = types.SimpleNamespace(finalize=finalize, ref=real.ref)
    made: list[mqueue.MQueue] = []

    def work() -> None:
        mine.add(threading.get_ident())
        made.append(mqueue.attach(ns))

    _shm.weakref = fake  # type: ignore[assignment]
    threads = [threading.Thread(target=work, daemon=True) for _ in range(count)]
    try:
        for t in threads:
            t.start()
        for _ in threads:
            assert stuck.acquire(timeout=5)
        yield threads
    finally:
        release.set()
        for t in threads:
            t.join(5)
        _shm.weakref = real  # type: ignore[assignment]
        for m in made:
            m.close()


def test_fork_while_handles_are_half_made(make_mq, ns) -> None:
    """Threads are inside attach when the process forks: every complete
    handle the child inherited still gets a slot of its own (the old hook
    stopped at the first half-made handle with AttributeError)."""
    make_mq(["name=q"])
    handles = [mqueue.attach(ns) for _ in range(8)]
    try:
        slots = [h.slot for h in handles]
        with handles_stuck_half_made(ns, 16):

            def child() -> int:
                bad = 0
                for h, parent_slot in zip(handles, slots, strict=True):
                    if h.closed or h.slot == parent_slot:
                        bad += 1
                        continue
                    h["q"].add("k", "v")
                    if h["q"].fetch() is None:
                        bad += 1
                return 10 + bad if bad else 0

            assert in_child(child) == 0
    finally:
        for h in handles:
            h.close()


def test_one_failing_handle_does_not_stop_the_others(make_mq, ns) -> None:
    """The at-fork hook re-establishes each handle on its own: one that
    fails is unusable with an error that says so, the others are fine."""
    make_mq(["name=q"])
    handles = [mqueue.attach(ns) for _ in range(6)]
    broken = handles[3]

    def fail() -> None:
        raise OSError(24, "Too many open files")

    broken._reattach_in_child = fail  # type: ignore[method-assign]
    slots = [h.slot for h in handles]
    try:

        def child() -> int:
            for h, parent_slot in zip(handles, slots, strict=True):
                if h is broken:
                    continue
                if h.closed or h.slot == parent_slot:
                    return 2
                h["q"].add("k", "v")
            try:
                broken["q"].add("k", "v")
            except mqueue.MQueueError as e:
                if "fork" not in str(e) or "Too many open files" not in str(e):
                    print(e)
                    return 4
            else:
                return 3  # it used the parent's liveness slot
            try:
                broken["q"].fetch()
            except mqueue.MQueueError:
                pass
            else:
                return 5
            broken.close()  # closing it on purpose is fine, and idempotent
            broken.close()
            return 0

        assert in_child(child) == 0
    finally:
        for h in handles:
            h.close()


# ------------------------------------------------------------ a child killed in add_many

KILLED_CHILD = """
import os, sys, threading, types, time
import mqueue
from mqueue import _shm

ns = sys.argv[1]
h = mqueue.attach(ns)
q = h["q"]
release = threading.Event()
stuck = threading.Semaphore(0)
mine = set()
real = _shm.weakref

def finalize(obj, *args):
    if threading.get_ident() in mine:
        stuck.release()
        release.wait(30)
    return real.finalize(obj, *args)

_shm.weakref = types.SimpleNamespace(finalize=finalize, ref=real.ref)

def work():
    mine.add(threading.get_ident())
    mqueue.attach(ns)

threads = [threading.Thread(target=work, daemon=True) for _ in range(16)]
for t in threads:
    t.start()
for _ in threads:
    stuck.acquire()
pid = os.fork()
if pid == 0:
    try:
        q.add_many([("doomed", "x"), ("doomed2", "y")])   # MQ_KILLPOINT=add_many_mid
    except mqueue.MQueueError as e:                      # unusable: never took the lock
        print("refused:", e, file=sys.stderr)
        os._exit(5)
    os._exit(0)
_, st = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(st), flush=True)
sys.stdin.readline()        # stay alive (a living parent) while the test adds
os._exit(0)
"""

FRESH_ADD = """
import sys, mqueue
mqueue.attach(sys.argv[1])["q"].add("fresh", "z")
print("added")
"""


@pytest.fixture(scope="module")
def testing_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not have_gcc():
        pytest.skip("needs gcc for the testing build")
    return build_testing_package(tmp_path_factory.mktemp("forkbuild"))


def test_child_killed_in_add_many_does_not_wedge_the_queue(make_mq, ns, testing_site: Path) -> None:
    """A child forked while threads were half-way through attach dies inside
    add_many holding the lock: the queue must not stay locked while the
    parent lives (the child must not have used the parent's liveness slot)."""
    mq = make_mq(["name=q"])
    p = subprocess.Popen(
        [PYTHON, "-c", textwrap.dedent(KILLED_CHILD), ns],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=py_env(testing_site, MQ_KILLPOINT="add_many_mid"), cwd="/",
        start_new_session=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None
        line = p.stdout.readline().strip()
        assert line in ("77", "5"), (line, p.stderr.read() if p.poll() is not None else "")
        t0 = time.monotonic()
        r = subprocess.run(
            [PYTHON, "-c", FRESH_ADD, ns], capture_output=True, text=True, timeout=15,
            env=py_env(), cwd="/",
        )  # fmt: skip
        took = time.monotonic() - t0
        assert r.returncode == 0 and r.stdout.strip() == "added", r.stderr
        assert took < 5.0, f"a fresh process's add took {took:.1f} s"
    except subprocess.TimeoutExpired:
        raise AssertionError(
            "the queue stayed locked: a fresh process's add never returned"
        ) from None
    finally:
        with contextlib.suppress(OSError):
            os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
    st = mq["q"].stats()
    assert st.added == st.fetched + st.evicted + st.length


# ------------------------------------------------------------ the storm


def slot_owner(ns: str, slot: int) -> int:
    """The pid that last claimed a liveness slot (the segment header's
    informational slot_pid word; a slot index alone can be claimed again by
    the child once the parent frees it)."""
    with open(os.path.join("/dev/shm", "mqueue." + ns), "rb") as f:
        head = f.read(96)
        (nslots,) = struct.unpack_from("<I", head, 24)
        f.seek(96 + 8 * nslots + 4 * slot)
        (pid,) = struct.unpack("<I", f.read(4))
    return int(pid)


def fork_storm(ns: str, forks: int, threads: int = 6) -> dict[str, int]:
    """Threads attach, use and close handles in a loop with a tiny switch
    interval while the main thread forks; each child uses every handle it
    can see and must exit within the timeout.  Returns the outcome counts."""
    stop = threading.Event()
    live: dict[int, tuple[mqueue.MQueue, int]] = {}  # handles published by the threads
    errors: list[BaseException] = []

    def work(w: int) -> None:
        i = 0
        try:
            while not stop.is_set():
                i += 1
                h = mqueue.attach(ns)
                key = w * 1_000_000 + i
                live[key] = (h, h.slot)
                h["q"].add(f"t{w}", str(i))
                h["q"].fetch()
                if i % 3:
                    del live[key]
                    h.close()
                else:  # some are left to the garbage collector
                    del live[key]
                    del h
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    ts = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(threads)]
    counts = {"ok": 0, "unusable": 0}
    try:
        for t in ts:
            t.start()
        for _ in range(forks):
            time.sleep(0.002)
            snapshot = list(live.values())
            pid = os.fork()
            if pid == 0:
                code = 0
                try:
                    for h, _ in snapshot:
                        if h.closed:
                            try:
                                h["q"].add("child", "x")
                            except mqueue.MQueueError:
                                continue
                            code = 3  # a closed handle that still works
                            break
                        if slot_owner(ns, h.slot) != os.getpid():
                            code = 4  # still on the parent's liveness slot
                            break
                        h["q"].add("child", "x")
                        h["q"].fetch()
                    mqueue.attach(ns).close()  # a fresh attach works too
                except mqueue.MQueueError as e:
                    print("child:", e, file=sys.stderr)
                    code = 5
                except BaseException:  # noqa: BLE001
                    import traceback

                    traceback.print_exc()
                    code = 6
                os._exit(code)
            rc = wait_child(pid)
            assert rc == 0, f"child exit code {rc}"
            counts["ok"] += 1
    finally:
        stop.set()
        for t in ts:
            t.join(10)
        sys.setswitchinterval(old)
        for h, _ in list(live.values()):
            h.close()
    assert not errors, errors
    return counts


def test_fork_storm(make_mq, ns) -> None:
    make_mq(["name=q;size=1000"])
    assert fork_storm(ns, forks=60)["ok"] == 60


@pytest.mark.slow
def test_fork_storm_long(make_mq, ns) -> None:
    make_mq(["name=q;size=1000"])
    n = int(os.environ.get("MQUEUE_FORK_STORM", "400"))
    assert fork_storm(ns, forks=n)["ok"] == n
