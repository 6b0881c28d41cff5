"""Crash safety at the Python level (issue 3): a lock holder that dies, random
SIGKILL / SIGSTOP of Python producers and consumers, fork, a full /dev/shm,
and access rights.

Processes that must die inside the engine use a testing build of the cffi
module (``MQUEUE_TESTING=1``, built into a tmp dir; see tests/ctools.py) with
``MQ_KILLPOINT=add_locked``: the engine ``_exit(77)``s right after taking the
lock in ``add``.  The engine reads MQ_KILLPOINT once per process, so such a
process is started with it in its environment and forks the victims.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from ctools import PYTHON, build_testing_package, have_gcc, py_env

import mqueue

BOUND_S = 1.0  # the bound on any pause after a death (see docs/crash-safety.md)


def unique(tag: str) -> str:
    return f"crash_{tag}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def ns_name() -> Iterator[str]:
    name = unique("t")
    yield name
    with contextlib.suppress(mqueue.NamespaceNotFoundError):
        mqueue.destroy(name)


@pytest.fixture(scope="module")
def testing_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not have_gcc():
        pytest.skip("needs gcc for the testing build")
    return build_testing_package(tmp_path_factory.mktemp("crashbuild"))


def run_py(
    code: str, *args: str, site: Path | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTHON, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=py_env(site, **env),
        cwd="/",  # not the source tree: PYTHONPATH's package must win
    )


# --------------------------------------------------------------------------- holder death

HOLDER_SERVER = """
import os, sys
import mqueue
mq = mqueue.attach(sys.argv[1])
q = mq["q"]
for line in sys.stdin:                       # one victim per line
    pid = os.fork()
    if pid == 0:
        q.add("doomed", "never")             # MQ_KILLPOINT=add_locked: dies holding the lock
        os._exit(0)
    _, st = os.waitpid(pid, 0)
    print(os.WEXITSTATUS(st) if os.WIFEXITED(st) else -os.WTERMSIG(st), flush=True)
"""


def test_holder_death_repeated(ns_name: str, testing_site: Path) -> None:
    """A child takes the lock and dies, 40 times: each time the parent goes on
    within the bound and recoveries counts exactly that death."""
    rounds = 40
    mq = mqueue.create(ns_name, ["name=q;size=1000"])
    q = mq["q"]
    server = subprocess.Popen(
        [PYTHON, "-c", HOLDER_SERVER, ns_name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=py_env(testing_site, MQ_KILLPOINT="add_locked"),
        cwd="/",
    )
    worst = 0.0
    try:
        assert server.stdin and server.stdout
        for i in range(rounds):
            q.add(f"before{i}", "x")
            server.stdin.write("go\n")
            server.stdin.flush()
            assert server.stdout.readline().strip() == "77"
            t0 = time.monotonic()
            q.add(f"after{i}", "y")  # must take the lock over from the dead child
            worst = max(worst, time.monotonic() - t0)
            st = q.stats()
            assert st.recoveries == i + 1
            assert st.added == st.fetched + st.evicted + st.length
            assert st.length == 2 * (i + 1)  # the dead child's add did not happen
    finally:
        if server.stdin:
            server.stdin.close()
        server.wait(timeout=30)
    assert worst < BOUND_S, worst
    items = q.fetch_many(1000)
    assert [k for k, _ in items] == [f"{w}{i}" for i in range(rounds) for w in ("before", "after")]
    print(f"holder death x{rounds}: worst take-over {worst * 1000:.1f} ms")
    mq.close()


# --------------------------------------------------------------------------- torture

TORTURE = """
import json, mmap, os, random, signal, struct, sys, time
import mqueue

ns, seconds, mode = sys.argv[1], float(sys.argv[2]), sys.argv[3]
NP, NC, CAP = 3, 3, 1 << 20
mq = mqueue.attach(ns)
qs = [mq["bounded"], mq["unbounded"]]
# shared region: [stop, unused, produced per producer slot x 2 queues,
#                 progress per consumer slot] + one delivery log per consumer slot
# Each progress word has one writer at a time (a killed consumer is reaped before its
# slot's successor starts), so their sum only grows: one shared counter updated by
# read-modify-write from three consumers could go back and fake a stall.
HDR = 8 * (2 + 2 * NP + NC)
PROG = lambda c: 8 * (2 + 2 * NP + c)
def progress(): return sum(get(PROG(c)) for c in range(NC))
shm = mmap.mmap(-1, HDR + NC * 8 * (CAP + 1))
def get(off): return struct.unpack_from("q", shm, off)[0]
def put(off, v): struct.pack_into("q", shm, off, v)
LOG = lambda c: HDR + c * 8 * (CAP + 1)

def producer(p, inc):
    seq = 0
    rnd = random.Random(inc)
    while not get(0):
        qi = rnd.randrange(2)
        q = qs[qi]
        n = rnd.choice((1, 1, 4))
        items = []
        for _ in range(n):
            ident = (inc << 32) | seq
            seq += 1
            body = str(ident) * rnd.randrange(1, 8)
            items.append((str(ident), body))
        while True:
            try:
                if n == 1:
                    q.add(*items[0]); done = 1
                else:
                    done = q.add_many(items)
                break
            except mqueue.QueueFullError:
                if get(0): return
                time.sleep(0.001)
        off = 16 + 8 * (2 * p + qi)
        put(off, get(off) + done)

def consumer(c):
    rnd = random.Random(os.getpid())
    base = LOG(c)
    while not get(0):
        q = qs[rnd.randrange(2)]
        if rnd.randrange(2):
            it = q.fetch(timeout=0.02)
            got = [it] if it is not None else []
        else:
            got = q.fetch_many(4, timeout=0.02)
        for k, v in got:
            if v != k * (len(v) // len(k)) or len(v) % len(k):
                os._exit(13)                          # torn item
            n = get(base)
            if n < CAP:
                put(base + 8 * (n + 1), int(k))
                put(base, n + 1)
        put(PROG(c), get(PROG(c)) + len(got))

def spawn(i, inc):
    pid = os.fork()
    if pid == 0:
        try:
            producer(i, inc) if i < NP else consumer(i - NP)
        finally:
            os._exit(0)
    return pid

kids = [spawn(i, i + 1) for i in range(NP + NC)]
inc = NP + NC + 1
kills = [0] * (NP + NC)
events = stalls = 0
longest = 0.0
rnd = random.Random(1)
end = time.monotonic() + seconds
while time.monotonic() < end:
    time.sleep(rnd.uniform(0.002, 0.010))
    i = rnd.randrange(NP + NC)
    p0 = progress()
    t0 = time.monotonic()
    if mode == "stop":
        os.kill(kids[i], signal.SIGSTOP); time.sleep(0.1); os.kill(kids[i], signal.SIGCONT)
    else:
        os.kill(kids[i], signal.SIGKILL); os.waitpid(kids[i], 0)
        kills[i] += 1
        kids[i] = spawn(i, inc); inc += 1
    events += 1
    moved = False
    while not moved and time.monotonic() - t0 < 2.0:
        moved = progress() != p0
        time.sleep(0 if moved else 0.0005)
    pause = time.monotonic() - t0 - (0.1 if mode == "stop" else 0)
    longest = max(longest, pause)
    if not moved:
        stalls += 1
        break
put(0, 1)
bad_exit = 0
for pid in kids:
    _, st = os.waitpid(pid, 0)
    bad_exit += not (os.WIFEXITED(st) and os.WEXITSTATUS(st) == 0)
stats = [q.stats() for q in qs]
left = [[int(k) for k, _ in q.fetch_many(10**6)] for q in qs]
logs = []
for c in range(NC):
    n = get(LOG(c))
    logs += [get(LOG(c) + 8 * (j + 1)) for j in range(n)]
print(json.dumps({
    "events": events, "producer_kills": sum(kills[:NP]), "consumer_kills": sum(kills[NP:]),
    "stalls": stalls, "longest_pause_ms": round(longest * 1000, 1), "bad_exit": bad_exit,
    "recorded": len(logs), "dups": len(logs) + sum(map(len, left))
             - len(set(logs) | set(left[0]) | set(left[1])),
    "produced": sum(get(16 + 8 * k) for k in range(2 * NP)),
    "added": sum(s.added for s in stats), "fetched": sum(s.fetched for s in stats),
    "evicted": sum(s.evicted for s in stats), "length": sum(s.length for s in stats),
    "left": sum(map(len, left)), "recoveries": sum(s.recoveries for s in stats),
    "balance": all(s.added == s.fetched + s.evicted + s.length for s in stats),
}))
mq.close()
"""


def run_torture(ns_name: str, seconds: float, mode: str) -> dict[str, int]:
    mq = mqueue.create(ns_name, ["name=bounded;size=50;bytes=8k", "name=unbounded;bytes=16k"])
    try:
        r = run_py(TORTURE, ns_name, str(seconds), mode, timeout=seconds + 60)
        assert r.returncode == 0, r.stdout + r.stderr
        res: dict[str, int] = json.loads(r.stdout.strip().splitlines()[-1])
        print(mode, res)
        return res
    finally:
        mq.close()


@pytest.mark.slow
def test_python_sigkill_torture(ns_name: str) -> None:
    seconds = float(os.environ.get("MQUEUE_TORTURE_SECONDS", "8")) / 2
    r = run_torture(ns_name, seconds, "kill")
    assert r["stalls"] == 0 and r["longest_pause_ms"] < BOUND_S * 1000
    assert r["dups"] == 0 and r["bad_exit"] == 0 and r["balance"]
    assert r["events"] >= 100
    # consumers log after fetching: a killed one may lose up to 4 fetched items
    assert r["recorded"] <= r["fetched"] <= r["recorded"] + 4 * r["consumer_kills"]
    assert r["produced"] <= r["added"] <= r["produced"] + 4 * r["producer_kills"]
    assert r["left"] == r["length"]


@pytest.mark.slow
def test_python_sigstop_torture(ns_name: str) -> None:
    seconds = min(3.0, float(os.environ.get("MQUEUE_TORTURE_SECONDS", "8")) / 2)
    r = run_torture(ns_name, seconds, "stop")
    assert r["stalls"] == 0 and r["recoveries"] == 0 and r["dups"] == 0 and r["balance"]
    assert r["recorded"] == r["fetched"] and r["produced"] == r["added"]
    assert r["bad_exit"] == 0 and r["left"] == r["length"]


# --------------------------------------------------------------------------- fork

FORK_SLOTS = """
import os, sys, json
import mqueue
mq = mqueue.attach(sys.argv[1])
q = mq["q"]
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    q.add("from-child", "x")
    os.write(w, str(mq.slot).encode()); os._exit(0)
os.waitpid(pid, 0)
print(json.dumps({"parent": mq.slot, "child": int(os.read(r, 100)), "len": len(q)}))
"""


def test_fork_slots_differ(ns_name: str) -> None:
    mq = mqueue.create(ns_name, ["name=q"])
    r = run_py(FORK_SLOTS, ns_name)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["parent"] != res["child"] and res["parent"] != mq.slot
    assert res["len"] == 1
    mq.close()


FORK_CHILD_DIES = """
import os, sys, time
import mqueue
mq = mqueue.attach(sys.argv[1])          # MQ_KILLPOINT=add_locked: never add here
q = mq["q"]
pid = os.fork()
if pid == 0:
    q.add("doomed", "x")                 # dies holding the lock
    os._exit(0)
_, st = os.waitpid(pid, 0)
assert os.WEXITSTATUS(st) == 77, st
t0 = time.monotonic()
assert q.add_many([("k", "v")]) == 1
took = time.monotonic() - t0
s = q.stats()
print(took, s.recoveries, s.length)
"""

FORK_PARENT_DIES = """
import os, sys, time
import mqueue
mq = mqueue.attach(sys.argv[1])          # MQ_KILLPOINT=add_locked
q = mq["q"]
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(w)
    os.read(r, 1)                        # EOF: the parent is dead
    while os.getppid() == int(sys.argv[2]):
        time.sleep(0.001)
    t0 = time.monotonic()
    q.add_many([("k", "v")])
    took = time.monotonic() - t0
    s = q.stats()
    print(took, s.recoveries, s.length, flush=True)
    os._exit(0)
os.close(r)
print(pid, flush=True)
q.add("doomed", "x")                     # the parent dies holding the lock
"""


_PARENT_DIES_SRC = textwrap.dedent(FORK_PARENT_DIES)
PARENT_DIES_CMD = f"import os, sys; sys.argv[2:2] = [str(os.getpid())]; exec({_PARENT_DIES_SRC!r})"


def test_fork_child_killed_holding_lock(ns_name: str, testing_site: Path) -> None:
    mq = mqueue.create(ns_name, ["name=q"])
    r = run_py(FORK_CHILD_DIES, ns_name, site=testing_site, MQ_KILLPOINT="add_locked")
    assert r.returncode == 0, r.stderr
    took, rec, length = r.stdout.split()
    assert float(took) < BOUND_S and int(rec) == 1 and int(length) == 1
    mq.close()


def test_fork_parent_dies_holding_lock(ns_name: str, testing_site: Path) -> None:
    mq = mqueue.create(ns_name, ["name=q"])
    p = subprocess.Popen(
        [
            PYTHON,
            "-c",
            PARENT_DIES_CMD,
            ns_name,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=py_env(testing_site, MQ_KILLPOINT="add_locked"),
        cwd="/",
        start_new_session=True,
    )
    try:
        out, err = p.communicate(timeout=10)  # EOF once the orphaned child exits too
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the wedged child too: nothing left behind
        p.communicate()
        raise AssertionError("the child stalled after its parent died holding the lock") from None
    assert p.returncode == 77, err
    lines = out.split("\n")
    child_pid = int(lines[0])
    took, rec, length = lines[1].split()
    assert float(took) < BOUND_S and int(rec) == 1 and int(length) == 1
    with pytest.raises(ProcessLookupError):  # nothing left behind
        for _ in range(100):
            os.kill(child_pid, 0)
            time.sleep(0.02)
    mq.close()


# --------------------------------------------------------------------------- space, access


def test_dev_shm_too_small(ns_name: str) -> None:
    st = os.statvfs("/dev/shm")
    total = st.f_blocks * st.f_frsize
    nbytes = (total // 8 + 1) * 8  # the ring is 2 x bytes: twice what /dev/shm holds
    if nbytes > 1 << 40:
        pytest.skip("/dev/shm is larger than the largest queue")
    t0 = time.monotonic()
    with pytest.raises(mqueue.MQueueError, match="not enough shared memory"):
        mqueue.create(ns_name, [f"name=big;bytes={nbytes}"])
    assert time.monotonic() - t0 < 30
    assert not os.path.exists(f"/dev/shm/mqueue.{ns_name}")


def test_default_mode_is_0600(ns_name: str) -> None:
    mq = mqueue.create(ns_name, ["name=q"])
    assert os.stat(f"/dev/shm/mqueue.{ns_name}").st_mode & 0o777 == 0o600
    mq.close()


ATTACH_AS_NOBODY = """
import os, sys, mqueue, mqueue._shm   # import everything before dropping root
pid = os.fork()
if pid == 0:
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    try:
        mqueue.attach(sys.argv[1], allow_world_writable=sys.argv[2] == "1")
    except PermissionError as e:
        print("PermissionError", type(e).__name__, isinstance(e, mqueue.MQueueError), flush=True)
    else:
        print("attached", flush=True)
    os._exit(0)
_, st = os.waitpid(pid, 0)
sys.exit(os.WEXITSTATUS(st))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a child as another user")
@pytest.mark.parametrize("mode", [None, 0o666])
def test_other_user(ns_name: str, mode: int | None) -> None:
    mq = mqueue.create(ns_name, ["name=q"], **({} if mode is None else {"mode": mode}))
    r = run_py(ATTACH_AS_NOBODY, ns_name, "0")
    assert r.returncode == 0, r.stderr
    # 0600: the kernel refuses; 0666: mqueue refuses a world-writable segment
    # unless the caller allows it explicitly (issue 9, item 11)
    assert r.stdout.split() == ["PermissionError", "AccessDeniedError", "True"]
    r = run_py(ATTACH_AS_NOBODY, ns_name, "1")
    assert r.returncode == 0, r.stderr
    if mode is None:
        assert r.stdout.split() == ["PermissionError", "AccessDeniedError", "True"]
    else:
        assert r.stdout.strip() == "attached"
    mq.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v"]))


FORK_AFTER_RECREATE = """
import os, sys, threading, time
import mqueue
ns = sys.argv[1]
mq = mqueue.create(ns, ["name=q"])
q = mq["q"]
got = []
def blocked():
    try:
        got.append(q.fetch(timeout=None))
    except mqueue.NamespaceLostError:
        got.append("lost")
t = threading.Thread(target=blocked, daemon=True)
t.start()
time.sleep(0.2)                      # the thread is blocked inside the engine
os.unlink("/dev/shm/mqueue." + ns)   # removed by hand: the thread learns at its next slice
other = mqueue.create(ns, ["name=q;bytes=4K"])
pid = os.fork()                      # (the thread is most likely still inside the engine)
if pid == 0:
    # The at-fork hook found a different segment under the name: the handle
    # must not be remapped onto the stranger; its first use says the namespace
    # is lost, and closing it never waits for the parent's blocked thread,
    # which does not exist here.
    try:
        q.add("k", "v")
    except mqueue.NamespaceLostError:
        mq.close()
        os._exit(0)
    except mqueue.MQueueError:
        os._exit(3)
    os._exit(4)
_, status = os.waitpid(pid, 0)
t.join(5)                            # the parent's blocked fetch learnt it too
other.close()
mqueue.destroy(ns)
mq.close()
print(os.waitstatus_to_exitcode(status), got[0] if got else None)
"""


def test_fork_after_namespace_recreated(ns_name: str) -> None:
    """A forked child whose namespace name now names another segment does not
    remap its inherited handle onto it: the handle raises NamespaceLostError,
    and closing it never waits for the parent's threads that were inside the
    engine at fork time.  The parent's blocked fetch learns it too."""
    r = subprocess.run(
        [PYTHON, "-c", FORK_AFTER_RECREATE, ns_name],
        capture_output=True, text=True, timeout=60, env=py_env(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "lost"], r.stdout + r.stderr


HOLDER_DIES = """
import os, subprocess, sys
import mqueue
ns = sys.argv[1]
mq = mqueue.create(ns, ["name=q"])
add = "import sys, mqueue; mqueue.attach(sys.argv[1])['q'].add(sys.argv[2], 'v'); print('added')"
env = dict(os.environ, MQ_KILLPOINT="add_locked")
r = subprocess.run([sys.executable, "-c", add, ns, "k1"], env=env)
print("holder", r.returncode, flush=True)
p = subprocess.Popen([sys.executable, "-c", add, ns, "k2"], stdout=subprocess.PIPE, text=True)
try:
    out, _ = p.communicate(timeout=3)
    print("second", out.strip() or "failed")
except subprocess.TimeoutExpired:
    p.kill()
    p.wait()
    print("second wedged")
mq.close()
mqueue.destroy(ns)
"""


@pytest.fixture(scope="module")
def naive_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not have_gcc():
        pytest.skip("needs gcc")
    return build_testing_package(tmp_path_factory.mktemp("naive"), naive=True)


@pytest.mark.parametrize("lock", ["robust", "naive"])
def test_holder_death_negative_control(
    lock: str, ns_name: str, testing_site: Path, naive_site: Path
) -> None:
    """Deterministic negative control: a process dies inside add while it holds
    the lock (kill point add_locked).  With the product's lock the next process
    goes on; with a semaphore used as a plain mutex (-DMQ_NAIVE_LOCK, what most
    IPC queues do) it waits for good.  The same test sees both outcomes."""
    site = testing_site if lock == "robust" else naive_site
    r = subprocess.run(
        [PYTHON, "-c", HOLDER_DIES, ns_name],
        capture_output=True, text=True, timeout=60, env=py_env(site),
        cwd="/",  # not the source tree: PYTHONPATH's package must win
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "holder 77", r.stdout  # died at the kill point, holding the lock
    assert lines[1] == ("second added" if lock == "robust" else "second wedged"), r.stdout
