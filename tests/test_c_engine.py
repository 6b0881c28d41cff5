"""The C engine's own tests: unit tests (plain and under ASan + UBSan), the
SIGKILL / SIGSTOP torture with its negative control, and one test per kill
point found in csrc/mq.c.

The C programs live in csrc/tests/; they are compiled into a per-worker tmp
directory.  ``MQUEUE_TORTURE_SECONDS`` sets how long each torture mode runs
(default 8 s).
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from ctools import PYTHON, build_testing_package, compile_c, have_gcc, killpoint_names, py_env

import mqueue

pytestmark = pytest.mark.skipif(not have_gcc(), reason="needs gcc")

TORTURE_S = float(os.environ.get("MQUEUE_TORTURE_SECONDS", "8"))
BOUND_MS = 1000.0  # no pause may exceed this; see docs/crash-safety.md


@pytest.fixture(scope="module")
def cbuild(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cbuild")


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    # the C programs free every handle with mq_free: LeakSanitizer stays on
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def summary(out: str) -> tuple[int, int]:
    m = re.search(r"^(\d+) passed, (\d+) failed$", out, re.M)
    assert m, out
    return int(m.group(1)), int(m.group(2))


# --------------------------------------------------------------------------- unit


@pytest.mark.parametrize("sanitize", [False, True], ids=["plain", "asan-ubsan"])
def test_unit(cbuild: Path, sanitize: bool) -> None:
    exe = compile_c("unit", cbuild, sanitize=sanitize)
    env_iters = "4000" if sanitize else "10000"
    r = run([str(exe), env_iters], timeout=180)
    out = r.stdout + r.stderr
    passed, failed = summary(r.stdout)
    assert r.returncode == 0 and failed == 0, out
    assert passed > 1000
    assert "runtime error" not in out and "AddressSanitizer" not in out, out


@pytest.mark.parametrize("sanitize", [False, True], ids=["plain", "asan-ubsan"])
def test_add_many_on_a_full_ring(cbuild: Path, sanitize: bool) -> None:
    """add_many into nearly full rings (every addmode, bounded and unbounded,
    reservations put back, or held across batches) means what the same adds
    one by one mean: a bounded queue evicts the same items, an unbounded one
    takes the whole batch exactly when every single add would succeed and
    otherwise refuses it with nothing changed (csrc/tests/fullring.c)."""
    exe = compile_c("fullring", cbuild, sanitize=sanitize)
    r = run([str(exe), "5000" if sanitize else "20000"], timeout=180)
    out = r.stdout + r.stderr
    passed, failed = summary(r.stdout)
    assert r.returncode == 0 and failed == 0, out
    assert passed > 100000
    assert "runtime error" not in out and "AddressSanitizer" not in out, out


def test_unit_damaged_semaphore(cbuild: Path) -> None:
    exe = compile_c("unit", cbuild)
    r = run([str(exe), "damaged-sem"], timeout=60)
    assert r.returncode == 0, (r.returncode, r.stdout + r.stderr)


def test_unit_leaked_wakeup_tokens(cbuild: Path) -> None:
    exe = compile_c("unit", cbuild)
    r = run([str(exe), "sem-tokens", "50000000"], timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- torture


def parse_figures(out: str) -> dict[str, float]:
    line = [ln for ln in out.splitlines() if ln.startswith("kills=")][-1]
    return {k: float(v) for k, v in re.findall(r"(\w+)=([\d.]+)", line)}


@pytest.mark.slow
@pytest.mark.timeout(int(TORTURE_S * 3) + 120)
def test_torture_kill(cbuild: Path) -> None:
    exe = compile_c("torture", cbuild)
    r = run([str(exe), str(TORTURE_S), "kill"], timeout=TORTURE_S + 60)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    f = parse_figures(r.stdout)
    assert f["stalls"] == 0 and f["corrupt"] == 0 and f["dup"] == 0 and f["order"] == 0
    assert f["kills"] >= 50 * min(TORTURE_S, 8)
    # every kill of a lock holder must be recovered from (a run on a loaded
    # machine may kill none: the deterministic holder-death tests cover that)
    assert f["recoveries"] > 0 or f["killed_holding"] == 0
    assert f["longest_pause_ms"] < BOUND_MS


@pytest.mark.slow
@pytest.mark.timeout(int(TORTURE_S * 3) + 120)
def test_torture_stop(cbuild: Path) -> None:
    exe = compile_c("torture", cbuild)
    r = run([str(exe), str(TORTURE_S), "stop"], timeout=TORTURE_S + 60)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    f = parse_figures(r.stdout)
    assert f["recoveries"] == 0 and f["stalls"] == 0 and f["corrupt"] == 0 and f["dup"] == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_torture_naive_lock_stalls(cbuild: Path) -> None:
    """Negative control: a semaphore used as a plain mutex wedges for good."""
    exe = compile_c("torture", cbuild, naive=True)
    # Killing a holder at the right instant is a matter of luck on a loaded
    # machine: a few tries, the first stall proves the point.  A run in which
    # no child was killed holding the lock proves nothing either way; the
    # deterministic negative control is test_crash.py's
    # test_holder_death_negative_control.
    outs = []
    for _ in range(3):
        r = run([str(exe), str(min(TORTURE_S, 8)), "kill"], timeout=90)
        outs.append(r.stdout)
        f = parse_figures(r.stdout)
        if r.returncode != 0 and f["stalls"] >= 1:
            return
        assert f.get("killed_holding", 0) == 0 and f.get("aimed", 0) == 0, (
            "a holder was killed and the naive lock did not stall:\n" + r.stdout
        )
    pytest.skip("no child was killed while holding the lock in 3 runs:\n" + "\n".join(outs))


# --------------------------------------------------------------------------- kill points

# A child (testing build, MQ_KILLPOINT=name in its environment from the start:
# the engine reads it once per process) runs these steps, printing the step
# number before each; it _exit(77)s at the kill point.  Step 0 is attach, whose
# stats calls take the lock too.  With plant=1 another process first dies
# holding q0's lock (at add_locked), so the recovery's kill points are reached.
CHILD = textwrap.dedent(
    """
    import sys
    import mqueue
    def step(n):
        print(n, flush=True)
    step(0); mq = mqueue.attach(sys.argv[1])
    q0, q2 = mq["q0"], mq["q2"]
    step(1); q0.add("k1", "v1")
    step(2); q2.add("x", "new")
    step(3); q0.add_many([("m1", "1"), ("m2", "2"), ("m3", "3")])
    step(4); q0.fetch()
    step(5); q0.fetch_many(2)
    step(6); q0.stats()
    step(7); q0._reserve(1, 5)
    step(8); q0._settle(5, False)
    step(9); q0._load(9, [("L", "1")])
    step(10)
    """
)
PLANTER = "import sys, mqueue; mqueue.attach(sys.argv[1])['q0'].add('planted', 'never')"

Q0 = [("A", "a"), ("B", "b")]
Q0_AFTER = {  # q0's contents after each step
    0: Q0,
    1: Q0 + [("k1", "v1")],
    2: Q0 + [("k1", "v1")],
    3: Q0 + [("k1", "v1"), ("m1", "1"), ("m2", "2"), ("m3", "3")],
    4: [("B", "b"), ("k1", "v1"), ("m1", "1"), ("m2", "2"), ("m3", "3")],
    5: [("m1", "1"), ("m2", "2"), ("m3", "3")],
    6: [("m1", "1"), ("m2", "2"), ("m3", "3")],
    7: [("m2", "2"), ("m3", "3")],  # m1 reserved (its owner then dies with it)
    8: [("m1", "1"), ("m2", "2"), ("m3", "3")],  # put back
    9: [("m1", "1"), ("m2", "2"), ("m3", "3"), ("L", "1")],  # loaded
}
Q2_BEFORE = [("x", "old"), ("y", "1")]
Q2_AFTER = [("y", "1"), ("x", "new")]


@pytest.fixture(scope="module")
def testing_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_testing_package(tmp_path_factory.mktemp("kpbuild"))


def drain(q: mqueue.Queue) -> list[tuple[str, str]]:
    out = []
    while (it := q.fetch()) is not None:
        out.append((it.key, it.value))
    return out


KILLPOINTS = killpoint_names()


def test_killpoints_found() -> None:
    assert len(KILLPOINTS) >= 8, KILLPOINTS


def _run_child(
    point: str, plant: int, testing_site: Path, tmp_path: Path
) -> tuple[str, mqueue.MQueue, subprocess.CompletedProcess[str]]:
    """A fresh namespace, a planted dead owner if asked, then CHILD with the
    kill point.  Returns the namespace, its handle and the child's result.

    Any process may take a queue's lock, and the first to take it after the
    planted owner died repairs it: a scrape by another test's metrics server
    or `mqueue top` (both read every namespace on the machine) can do so
    before CHILD, which then never reaches the recovery's kill points.  So a
    child that finishes although the owner was planted is tried again with a
    fresh namespace: a kill point that is really never reached stays so."""
    for attempt in range(3):
        ns = f"kp_{os.getpid()}_{uuid.uuid4().hex[:10]}"
        mq = mqueue.create(ns, ["name=q0;size=100;bytes=4096", "name=q2;addmode=2;bytes=4096"])
        try:
            r = _plant_and_run(ns, mq, point, plant, testing_site, tmp_path)
        except BaseException:
            mq.close()
            mqueue.destroy(ns)
            raise
        if not (plant and r.returncode == 0) or attempt == 2:
            break
        mq.close()
        mqueue.destroy(ns)
    return ns, mq, r


def _plant_and_run(
    ns: str, mq: mqueue.MQueue, point: str, plant: int, testing_site: Path, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    q0, q2 = mq["q0"], mq["q2"]
    q0.add_many(Q0)
    q2.add_many(Q2_BEFORE)
    if plant:
        r = subprocess.run(
            [PYTHON, "-c", PLANTER, ns],
            capture_output=True,
            text=True,
            timeout=60,
            env=py_env(testing_site, MQ_KILLPOINT="add_locked"),
            cwd=tmp_path,
        )
        assert r.returncode == 77, r.stdout + r.stderr
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return subprocess.run(
        [PYTHON, str(script), ns],
        capture_output=True,
        text=True,
        timeout=60,
        env=py_env(testing_site, MQ_KILLPOINT=point),
        cwd=tmp_path,
    )


@pytest.mark.parametrize("plant", [0, 1], ids=["clean", "after-dead-owner"])
@pytest.mark.parametrize("point", KILLPOINTS)
def test_killpoint(point: str, plant: int, testing_site: Path, tmp_path: Path) -> None:
    ns, mq, r = _run_child(point, plant, testing_site, tmp_path)
    try:
        q0, q2 = mq["q0"], mq["q2"]
        steps = [int(x) for x in r.stdout.split()]
        if r.returncode == 0:
            assert steps and steps[-1] == 10
            # with a planted dead owner every kill point must be reached: a new
            # KILLPOINT in mq.c needs a step in CHILD
            assert plant == 0, f"kill point {point} is never reached"
            pytest.skip(f"kill point {point} needs a dead owner to be reached")
        assert r.returncode == 77, r.stdout + r.stderr
        died_in = steps[-1]
        # The survivors go on within the bound: the first call takes the lock over.
        t0 = time.monotonic()
        s0 = q0.stats()
        s2 = q2.stats()
        took = time.monotonic() - t0
        assert took < BOUND_MS / 1000, took
        for s in (s0, s2):
            assert s.added == s.fetched + s.evicted + s.duplicates + s.length
        # the interrupted operation happened whole or not at all
        got0 = drain(q0)
        before = Q0_AFTER[max(died_in - 1, 0)]
        assert got0 in (before, Q0_AFTER[died_in]), (died_in, got0)
        done = got0 == Q0_AFTER[died_in] and got0 != before
        got2 = drain(q2)
        if died_in == 2:
            assert got2 in (Q2_BEFORE, Q2_AFTER), got2
        else:
            assert got2 == (Q2_AFTER if died_in > 2 else Q2_BEFORE), (died_in, got2)
        # what the dead process had fetched counts as fetched (it died with it)
        fetched_after = {0: 0, 1: 0, 2: 0, 3: 0, 4: 1, 5: 3, 6: 3, 7: 4, 8: 3, 9: 3}
        assert s0.fetched == fetched_after[died_in if done else max(died_in - 1, 0)], (died_in, s0)
        # recoveries: one per lock-holding death that a survivor took over
        assert s0.recoveries + s2.recoveries >= 1
        assert s0.recoveries <= 1 + plant
        # the queue goes on working
        q0.add("after", "x")
        assert q0.fetch() == ("after", "x")
        assert len(q0) == 0
    finally:
        mq.close()
        mqueue.destroy(ns)
