"""Lifecycle edges (issue 9, items 8-10): a namespace destroyed under attached
processes, a creator killed half-way through ``create``, and the liveness
slots counting processes rather than handles.

Each scenario runs real processes: workers in subprocesses, creators SIGKILLed
at a kill point of the testing build (tests/ctools.py) or during a large
``posix_fallocate``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from ctools import PYTHON, build_testing_package, have_gcc, py_env

import mqueue
from mqueue import _shm

SHM = "/dev/shm/mqueue."

# --------------------------------------------------------------------------- item 8

WORKER = textwrap.dedent(
    """
    import json, sys, time
    import mqueue
    mq = mqueue.attach(sys.argv[1])
    q = mq["q"]
    print("ready", flush=True)
    t0 = time.monotonic()
    try:
        got = q.fetch(timeout=float(sys.argv[2]))
        out = ["returned", repr(got)]
    except Exception as e:
        out = ["raised", type(e).__name__, isinstance(e, FileNotFoundError)]
    print(json.dumps(out + [round(time.monotonic() - t0, 3)]), flush=True)
    """
)


def _remove(ns: str, how: str) -> None:
    if how == "api":
        mqueue.destroy(ns)
    elif how == "cli":
        r = subprocess.run(
            [PYTHON, "-m", "mqueue", "destroy", ns], capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0, r.stderr
    elif how == "rm":
        os.unlink(SHM + ns)
    elif how == "recreate":  # destroyed and created again under the same name
        mqueue.destroy(ns)
    elif how == "rm-recreate":
        os.unlink(SHM + ns)


HOWS = ["api", "cli", "rm", "recreate", "rm-recreate"]


@pytest.mark.parametrize("how", HOWS)
def test_blocked_fetch_learns_destroy(ns: str, how: str) -> None:
    """A worker blocked in fetch(timeout=5) gets NamespaceLostError within a
    wait slice or so of the destroy, however it was destroyed (before: None
    after 5 s, and it never learnt)."""
    mq = mqueue.create(ns, ["name=q"])
    p = subprocess.Popen(
        [PYTHON, "-c", WORKER, ns, "5"], stdout=subprocess.PIPE, text=True, env=py_env()
    )
    try:
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.3)  # the worker is inside its wait
        _remove(ns, how)
        again = mqueue.create(ns, ["name=q"]) if "recreate" in how else None
        if again is not None:
            again["q"].add("for", "the new one")
        out = json.loads(p.stdout.readline())
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert out[:3] == ["raised", "NamespaceLostError", True], out
    assert out[3] < 0.3 + 1.0, out  # bound: one slice (0.1 s) plus a loaded machine
    with pytest.raises(mqueue.NamespaceLostError):
        mq["q"].add("k", "v")  # the creator's own handle too
    mq.close()
    if again is not None:
        assert again["q"].fetch() == ("for", "the new one")  # the new one is untouched
        again.close()


OPS = {
    "add": lambda q: q.add("k", "v"),
    "add_many": lambda q: q.add_many([("k", "v")]),
    "fetch": lambda q: q.fetch(),
    "fetch_many": lambda q: q.fetch_many(5),
    "len": lambda q: len(q),
    "stats": lambda q: q.stats(),
}


@pytest.mark.parametrize("how", HOWS)
def test_calls_after_destroy_raise(ns: str, how: str) -> None:
    """Every call on a handle of a destroyed namespace raises NamespaceLostError
    (a file removed by hand is noticed within the 100 ms check interval)."""
    mq = mqueue.create(ns, ["name=q"])
    other = mqueue.attach(ns)  # shares the creator's mapping (same process)
    mq["q"].add("queued", "item")
    _remove(ns, how)
    again = mqueue.create(ns, ["name=q"]) if "recreate" in how else None
    if how.startswith("rm"):
        time.sleep(0.25)  # past the coarse nlink check interval
    for name, op in OPS.items():
        for h in (mq, other):
            with pytest.raises(mqueue.NamespaceLostError):
                op(h["q"])
            assert name  # (for the traceback)
    mq.close()
    other.close()
    if again is not None:
        assert len(again["q"]) == 0
        again.close()


def test_namespace_lost_error_is_one_class() -> None:
    from mqueue import _redis

    assert _redis.NamespaceLostError is mqueue.NamespaceLostError
    assert issubclass(mqueue.NamespaceLostError, mqueue.BackendError)
    assert issubclass(mqueue.NamespaceLostError, mqueue.NamespaceNotFoundError)


def test_destroy_refused_changes_nothing(ns: str) -> None:
    """A destroy that may not unlink (a user without rights on the file)
    marks nothing: the namespace goes on working for everyone."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a child as another user")
    mq = mqueue.create(ns, ["name=q"], mode=0o644)
    code = (
        "import os, sys, mqueue, mqueue._shm  # everything imported before dropping root\n"
        "os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)\n"
        "try:\n    mqueue.destroy(sys.argv[1])\nexcept PermissionError:\n    print('refused')\n"
    )
    r = subprocess.run([PYTHON, "-c", code, ns], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "refused", r.stdout + r.stderr
    mq["q"].add("still", "here")
    assert mq["q"].fetch() == ("still", "here")
    mq.close()


# --------------------------------------------------------------------------- item 9

CREATOR = textwrap.dedent(
    """
    import sys, mqueue
    print("start", flush=True)
    mqueue.create(sys.argv[1], [sys.argv[2]])
    print("created", flush=True)
    """
)


@pytest.fixture(scope="module")
def testing_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not have_gcc():
        pytest.skip("needs gcc")
    return build_testing_package(tmp_path_factory.mktemp("lcbuild"))


def _half_made(ns: str, site: Path) -> None:
    r = subprocess.run(
        [PYTHON, "-c", CREATOR, ns, "name=q;bytes=64K"],
        capture_output=True,
        text=True,
        timeout=60,
        env=py_env(site, MQ_KILLPOINT="create_formatting"),
        cwd="/",
    )
    assert r.returncode == 77, r.stdout + r.stderr  # died while formatting
    assert os.path.exists(SHM + ns)


def test_attach_half_made_says_what_to_do(ns: str, testing_site: Path) -> None:
    """Creator killed while formatting: attach says so at once, with the way out
    (before: a generic "not initialised" MQueueError after 2 s)."""
    _half_made(ns, testing_site)
    t0 = time.monotonic()
    with pytest.raises(mqueue.NamespaceIncompleteError) as ei:
        mqueue.attach(ns)
    assert time.monotonic() - t0 < 1.0  # dead creator: no waiting
    assert ei.value.creator_alive is False
    msg = str(ei.value)
    assert "creator that died" in msg and "exist_ok=True" in msg and "mqueue destroy" in msg
    with pytest.raises(mqueue.NamespaceExistsError):
        mqueue.create(ns, ["name=q;bytes=64K"])  # exist_ok=False: still there
    r = subprocess.run(
        [PYTHON, "-m", "mqueue", "destroy", ns], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert not os.path.exists(SHM + ns)


def test_create_exist_ok_recovers_half_made(ns: str, testing_site: Path) -> None:
    _half_made(ns, testing_site)
    old = os.stat(SHM + ns).st_ino
    mq = mqueue.create(ns, ["name=q;bytes=64K"], exist_ok=True)
    assert mq.is_creator
    assert os.stat(SHM + ns).st_ino != old
    mq["q"].add("k", "v")
    assert mqueue.attach(ns)["q"].fetch() == ("k", "v")
    mq.close()


RECOVER = textwrap.dedent(
    """
    import sys, mqueue
    mq = mqueue.create(sys.argv[1], ["name=q;bytes=64K"], exist_ok=True)
    mq["q"].add(sys.argv[2], "x")
    print(int(mq.is_creator), flush=True)
    mq.close()
    """
)


def test_racing_recoverers(ns: str, testing_site: Path) -> None:
    """Several processes recover the same half-made namespace at once: exactly
    one creates it afresh, the others attach to that one (nothing lost)."""
    _half_made(ns, testing_site)
    ps = [
        subprocess.Popen([PYTHON, "-c", RECOVER, ns, f"p{i}"], stdout=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    outs = [p.communicate(timeout=60)[0].strip() for p in ps]
    assert all(p.returncode == 0 for p in ps), outs
    assert sorted(outs) == ["0", "0", "0", "1"], outs
    mq = mqueue.attach(ns)
    got = sorted(it.key for it in mq["q"].fetch_many(10))  # type: ignore[type-var]
    assert got == ["p0", "p1", "p2", "p3"]
    mq.close()


BIG = "name=big;bytes=768M"  # a 1.5 GB ring: posix_fallocate takes a while


def _creator_in_fallocate(ns: str) -> subprocess.Popen[str]:
    """A creator of a large segment, caught after its ftruncate and before its
    segment is ready (in posix_fallocate, or formatting)."""
    p = subprocess.Popen(
        [PYTHON, "-c", CREATOR, ns, BIG], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "start"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if os.stat(SHM + ns).st_size > 0:
                return p
        except FileNotFoundError:
            pass
        time.sleep(0.0005)
    p.kill()
    p.wait()
    pytest.fail("the creator never sized its segment")


def _not_ready(ns: str) -> bool:
    with open(SHM + ns, "rb") as f:
        return f.read(8) != bytes.fromhex("4d51515545453131")  # MQ_MAGIC, little-endian


def test_slow_creator_is_not_robbed(ns: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A live creator (stopped in the middle of a large create) keeps others
    waiting; nobody removes its segment; once it goes on, all is well."""
    if os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize < 4 << 30:
        pytest.skip("needs 4 GB free in /dev/shm")
    p = _creator_in_fallocate(ns)
    os.kill(p.pid, signal.SIGSTOP)
    try:
        if not _not_ready(ns):
            pytest.skip("the creator finished before it could be stopped")
        ino = os.stat(SHM + ns).st_ino
        monkeypatch.setattr(_shm, "ATTACH_WAIT_S", 0.5)
        for call in (
            lambda: mqueue.attach(ns),
            lambda: mqueue.create(ns, [BIG], exist_ok=True),
        ):
            with pytest.raises(mqueue.NamespaceIncompleteError) as ei:
                call()
            assert ei.value.creator_alive is True
            assert "still being created" in str(ei.value)
        assert os.stat(SHM + ns).st_ino == ino  # left alone
    finally:
        os.kill(p.pid, signal.SIGCONT)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "created"
    p.wait(timeout=60)
    mq = mqueue.attach(ns)
    assert list(mq) == ["big"]
    mq.close()


def test_creator_killed_in_fallocate_recovered(ns: str) -> None:
    if os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize < 4 << 30:
        pytest.skip("needs 4 GB free in /dev/shm")
    p = _creator_in_fallocate(ns)
    p.kill()
    p.wait()
    if not _not_ready(ns):
        pytest.skip("the creator finished before it could be killed")
    with pytest.raises(mqueue.NamespaceIncompleteError) as ei:
        mqueue.attach(ns)
    assert ei.value.creator_alive is False
    mq = mqueue.create(ns, ["name=q"], exist_ok=True)  # other definitions: a fresh start
    assert mq.is_creator and list(mq) == ["q"]
    mq.close()


def test_destroyed_while_being_created(ns: str) -> None:
    """destroy (and a new create) while a creator is in its posix_fallocate: the
    creator's create raises NamespaceLostError instead of handing out a handle
    on a removed segment, and it leaves the new segment alone."""
    if os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize < 4 << 30:
        pytest.skip("needs 4 GB free in /dev/shm")
    p = _creator_in_fallocate(ns)
    os.kill(p.pid, signal.SIGSTOP)
    try:
        if not _not_ready(ns):
            pytest.skip("the creator finished before it could be stopped")
        mqueue.destroy(ns)
        newer = mqueue.create(ns, ["name=q"])
    finally:
        os.kill(p.pid, signal.SIGCONT)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "NamespaceLostError" in (err or ""), err
    newer["q"].add("k", "v")  # untouched by the failed creator
    assert mqueue.attach(ns)["q"].fetch() == ("k", "v")
    newer.close()


# --------------------------------------------------------------------------- item 10


def test_slots_count_processes_not_handles(ns: str) -> None:
    """1100 handles in one process share one mapping and one slot (before: the
    1025th raised TooManyProcessesError)."""
    mq = mqueue.create(ns, ["name=q"])
    handles = [mqueue.attach(ns) for _ in range(1100)]
    try:
        assert {h.slot for h in handles} == {mq.slot}
        handles[-1]["q"].add("k", "v")
        assert handles[0]["q"].fetch() == ("k", "v")
        for h in handles[:-1]:
            h.close()
        handles[-1]["q"].add("still", "works")  # the mapping lives while a handle does
        assert mq["q"].fetch() == ("still", "works")
    finally:
        for h in handles:
            h.close()
    mq["q"].add("creator", "too")
    assert len(mq["q"]) == 1
    late = mqueue.attach(ns)  # the handles it could share with are closed, but mq is open
    assert late.slot == mq.slot
    late.close()
    mq.close()


def test_closing_one_handle_wakes_only_its_waiters(ns: str) -> None:
    """Handles share a mapping, yet each has its own close: a fetch blocked on
    the closed one returns, the other handle goes on."""
    import threading

    mq = mqueue.create(ns, ["name=q"])
    a = mqueue.attach(ns)
    res: list[object] = []

    def wait() -> None:
        try:
            res.append(a["q"].fetch(timeout=None))
        except mqueue.MQueueError as e:
            res.append(str(e))

    t = threading.Thread(target=wait)
    t.start()
    time.sleep(0.2)
    a.close()
    t.join(5)
    assert not t.is_alive() and "closed" in str(res[0])
    mq["q"].add("k", "v")
    assert mq["q"].fetch() == ("k", "v")
    mq.close()


def test_slot_freed_with_the_last_handle(ns: str) -> None:
    mq = mqueue.create(ns, ["name=q"])
    a = mqueue.attach(ns)
    slot = mq.slot
    code = "import sys, mqueue; print(mqueue.attach(sys.argv[1]).slot)"

    def other_slot() -> int:
        r = subprocess.run([PYTHON, "-c", code, ns], capture_output=True, text=True, timeout=60)
        return int(r.stdout)

    mq.close()
    assert other_slot() != slot  # a's handle still holds the slot
    a.close()
    assert other_slot() == slot  # freed now


FORK_NO_SLOT = textwrap.dedent(
    """
    import fcntl, os, struct, sys
    import mqueue
    ns = sys.argv[1]
    mq = mqueue.create(ns, ["name=q"])
    second = mqueue.attach(ns)                  # two handles, one slot (0)
    blocker = os.open("/dev/shm/mqueue." + ns, os.O_RDWR)
    for i in range(1024):                      # every other slot held by a live OFD
        lock = struct.pack("hhqqi4x", fcntl.F_WRLCK, 0, i, 1, 0)
        try:
            fcntl.fcntl(blocker, fcntl.F_OFD_SETLK, lock)
        except BlockingIOError:
            pass                               # our own handles' slot(s)
    pid = os.fork()
    if pid == 0:
        out = []
        for h in (mq, second):
            try:
                h["q"].add("k", "v")
                out.append("added")
            except mqueue.TooManyProcessesError:
                out.append("TooManyProcessesError")
            except mqueue.MQueueError as e:
                out.append(type(e).__name__ + ":" + str(e))
            out.append(str(h.closed))
        print(" ".join(out), flush=True)
        mq.close(); second.close()
        os._exit(0)
    os.waitpid(pid, 0)
    os.close(blocker)
    mq["q"].add("parent", "fine")
    print(len(mq["q"]), flush=True)
    mq.close(); second.close()
    mqueue.destroy(ns)
    """
)


def test_forked_child_without_a_slot(ns: str) -> None:
    """A forked child that finds no free slot gets TooManyProcessesError on its
    first use of each inherited handle (before: a silently closed handle)."""
    r = subprocess.run(
        [PYTHON, "-c", FORK_NO_SLOT, ns], capture_output=True, text=True, timeout=60, env=py_env()
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert lines[0].split() == ["TooManyProcessesError", "False"] * 2, r.stdout
    assert lines[1] == "1", r.stdout


def test_too_many_queues_is_a_definition_error(ns: str) -> None:
    defs = [f"name=q{i};bytes=256" for i in range(4097)]
    with pytest.raises(mqueue.DefinitionError, match="MQ_MAX_QUEUES") as ei:
        mqueue.create(ns, defs)
    assert "4096" in str(ei.value)
    assert not os.path.exists(SHM + ns)


def test_fork_shares_the_new_slot(ns: str) -> None:
    """After fork, the child's handles on one segment share the child's new slot."""
    mq = mqueue.create(ns, ["name=q"])
    a = mqueue.attach(ns)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        try:
            b = mqueue.attach(ns)
            msg = json.dumps([mq.slot, a.slot, b.slot])
        except BaseException as e:  # noqa: BLE001
            msg = json.dumps(repr(e))
        os.write(w, msg.encode())
        os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    got = json.loads(os.read(r, 1000))
    os.close(r)
    assert isinstance(got, list) and len(set(got)) == 1 and got[0] != mq.slot, got
    a.close()
    mq.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))
