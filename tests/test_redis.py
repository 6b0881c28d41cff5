"""The Redis backend: what only Redis has, over a real redis-server and a
Redis Cluster.

The queue semantics shared with shared memory (SPEC.md sections 1 and 2) run
on both Redis deployments from tests/test_semantics.py.  Here: the operations
compared with shared memory and with a model, separate processes, clients
killed mid-operation, connections and servers that fail, hash slots, damaged
keys, persistence and the command line over Redis.

The server is ``MQUEUE_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6399/0``,
started by ``.ci/services-redis.sh``), the cluster
``MQUEUE_TEST_REDIS_CLUSTER_URL``.  When one does not answer, its tests skip,
unless ``MQUEUE_REQUIRE_SERVICES=1`` (CI), where they fail.  Every test uses
its own namespace and leaves no key behind.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import new_namespace, redis_admin, redis_keys_of, redis_problem, service_url

import mqueue

try:
    import redis
except ImportError:
    if os.environ.get("MQUEUE_REQUIRE_SERVICES"):
        raise
    pytest.skip(
        "redis-py is not installed (pip install mqueue-shm[redis])", allow_module_level=True
    )

from test_semantics import Model, _apply, _model_args, rec  # noqa: E402

from mqueue import _redis as R  # noqa: E402


@pytest.fixture(params=["redis", "cluster"])
def url(request: pytest.FixtureRequest) -> str:
    """Every test that takes this runs on one redis-server and on a 3-master cluster."""
    return service_url(request.param)


@pytest.fixture
def admin(url: str) -> Iterator[Any]:
    c = redis_admin(url)
    yield c
    c.close()


@pytest.fixture
def rns(admin: Any, url: str) -> Iterator[str]:
    name = new_namespace()
    yield name
    with contextlib.suppress(FileNotFoundError):
        mqueue.destroy(name, url=url)
    left = redis_keys_of(admin, name)
    for k in left:
        admin.delete(k)
    assert not left, f"keys left behind: {left}"


Make = Callable[..., mqueue.MQueue]


@pytest.fixture
def make(rns: str, url: str) -> Iterator[Make]:
    made: list[mqueue.MQueue] = []

    def mk(defs: list[str] | str, **kw: Any) -> mqueue.MQueue:
        if isinstance(defs, str):
            defs = [defs]
        mq = mqueue.create(rns, defs, url=url, **kw)
        made.append(mq)
        return mq

    yield mk
    for mq in made:
        with contextlib.suppress(Exception):
            for q in mq.queues():
                q._check()  # type: ignore[attr-defined]
        mq.close()


# ------------------------------------------------------------ compared with shared memory
def test_unbounded_batch_is_simulated_exactly(make: Make, url: str) -> None:
    """An unbounded add_many fails exactly when shared memory does, and then
    changes nothing (tombstones of earlier items of the batch included)."""
    mq = make(["name=q;addmode=2;bytes=256", "name=b;addmode=2;size=5;bytes=256"])
    q = mq["q"]
    r = rec("x", "v" * 5)  # 32: eight fill the queue
    q.add("x", "v" * 5)  # a live item at the head: the tombstones behind it stay
    before = q.stats()
    with pytest.raises(mqueue.QueueFullError):
        q.add_many([("a", str(i) * 5) for i in range(8)])  # the 8th needs 288 bytes
    assert q.stats() == before and len(q) == 1
    q._check()  # type: ignore[attr-defined]
    assert q.add_many([("a", str(i) * 5) for i in range(7)]) == 7  # exactly 256
    st = q.stats()
    assert (st.length, st.bytes_used, st.duplicates) == (2, 8 * r, 6)
    assert q.fetch() == ("x", "v" * 5)  # the head passes the six tombstones
    assert q.stats().bytes_used == r
    # a bounded queue reclaims tombstones at its head on add too (nothing evicted)
    b = mq["b"]
    b.add_many([("a", "1"), ("b", "2"), ("a", "3")])  # "a" 1 was the head: reclaimed
    assert b.stats().bytes_used == 2 * rec("a", "1")
    b.fetch()  # takes "b": the head is now the new "a", nothing dead before it
    b.add_many([("c", "4"), ("a", "5")])
    st = b.stats()
    assert (st.length, st.bytes_used, st.evicted) == (2, 2 * rec("a", "1"), 0)
    # and the same operations give the same results on shared memory
    ops: list[tuple[Any, ...]] = [
        ("add", "x", "v" * 5),
        ("add_many", [("a", str(i) * 5) for i in range(8)]),
        ("add_many", [("a", str(i) * 5) for i in range(7)]),
        ("add", "a", "z" * 5),
        ("add", "x", "y" * 5),
        ("add_many", [("x", "1"), ("a", "2"), ("x", "3"), ("b", "4" * 60)]),
        ("fetch_many", 2),
        ("add_many", [("c", "5" * 50)] * 5),
    ]
    for d in ("name=q;addmode=2;bytes=256", "name=q;addmode=2;size=3;bytes=256"):
        want = _apply_on(ops, d, None)
        got = _apply_on(ops, d, url)
        assert got == want, d
        assert got == _apply(ops, None, Model(*_model_args(d))), d


def test_bad_or_unreachable_url(rns: str) -> None:
    """What only a URL can get wrong (the other bad input of create/attach is in
    tests/test_semantics.py, on every backend)."""
    with pytest.raises(mqueue.DefinitionError):
        mqueue.create(rns, ["name=q"], url="memcached://x")
    with pytest.raises(mqueue.BackendError):
        mqueue.attach(rns, url="redis://127.0.0.1:1/0")  # nothing listens there


def test_damaged_definitions(rns: str, admin: Any, url: str) -> None:
    admin.set(R.defs_key(rns), b"\x00garbage")
    with pytest.raises(mqueue.CorruptSegmentError):
        mqueue.attach(rns, url=url)
    mqueue.destroy(rns, url=url)  # removes even a damaged namespace


def test_names_map_to_one_hash_slot(make: Make, admin: Any, url: str) -> None:
    from redis.crc import key_slot

    weird = ["name='a}b{c:%d e'", "name=plain", "name='}'"]
    mq = make(weird)
    for q in mq.queues():
        q.add(q.name, "v")
        assert q.fetch() == (q.name, "v")
        ks = R.queue_keys(mq.namespace, q.name)
        assert len({key_slot(k.encode()) for k in ks}) == 1
    nsx = "n}s{:%" + uuid.uuid4().hex[:6]
    try:
        m2 = mqueue.create(nsx, ["name=q"], url=url)
        m2["q"].add("k", "v")
        assert nsx in R.list_namespaces(url)
        m2.close()
    finally:
        mqueue.destroy(nsx, url=url)
    assert nsx not in R.list_namespaces(url)


def test_missing_redis_package(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(mqueue.MQueueError, match=r"pip install 'mqueue-shm\[redis\]'"):
        mqueue.attach("x", url=url)


def test_persistence_dbmode(url: str, tmp_path: Any) -> None:
    """dbmode through create(..., url=..., db_url=...), on one server and on a cluster."""
    import sqlite3

    db = tmp_path / "q.db"
    db_url = f"sqlite:///{db}"
    ns = new_namespace()
    defs = ["name=a;dbmode=1", "name=b;dbmode=1", "name=c"]
    mq = mqueue.create(ns, defs, url=url, db_url=db_url)
    mq["a"].add_many([(f"a{i}", "x") for i in range(5)])
    mq["b"].add("b0", b"\x00\xff")
    mq["c"].add("c0", "not saved")
    mq.close()  # the creator's close saves dbmode 1
    with sqlite3.connect(db) as con:
        assert con.execute('SELECT count(*) FROM "a"').fetchone() == (5,)
    mqueue.destroy(ns, url=url)
    mq = mqueue.create(ns, defs, url=url, db_url=db_url)  # loads
    try:
        assert [i.key for i in mq["a"].fetch_many(10)] == [f"a{i}" for i in range(5)]
        assert mq["b"].fetch() == ("b0", b"\x00\xff")
        assert len(mq["c"]) == 0
    finally:
        mq._abandon()  # no save
        mqueue.destroy(ns, url=url)


def _apply_on(ops: list[tuple[Any, ...]], d: str, url: str | None) -> list[Any]:
    """``_apply`` on queue ``q`` of a namespace of its own, definition ``d``,
    on shared memory (``url`` None) or Redis; the Redis keys are checked after."""
    ns = new_namespace()
    mq = mqueue.create(ns, [d], url=url)
    try:
        got = _apply(ops, mq["q"], None)
        if url is not None:
            mq["q"]._check()  # type: ignore[attr-defined]
        return got
    finally:
        mq.close()
        mqueue.destroy(ns, url=url)


def test_same_results_as_shared_memory(url: str) -> None:
    """The same random operations give the same results and counters on both backends."""
    rnd = random.Random(1234)
    keys = ["a", "b", b"c", "d", ""]
    for mode in (0, 1, 2):
        for size in (0, 2):
            ops: list[tuple[Any, ...]] = []
            for _ in range(150):
                x = rnd.random()
                if x < 0.5:
                    ops.append(("add", rnd.choice(keys), "v" * rnd.randint(0, 50)))
                elif x < 0.65:
                    ops.append(("add_many", [(rnd.choice(keys), b"w" * rnd.randint(0, 30))
                                             for _ in range(rnd.randint(0, 4))]))
                elif x < 0.85:
                    ops.append(("fetch",))
                else:
                    ops.append(("fetch_many", rnd.randint(1, 3)))
            d = f"name=q;size={size};bytes=300;addmode={mode}"
            want = _apply_on(ops, d, None)
            got = _apply_on(ops, d, url)
            assert got == want, (mode, size)


# ------------------------------------------------------- separate processes
def _py(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


_WORKER = """
import json, sys, mqueue
url, ns = sys.argv[1], sys.argv[2]
mq = mqueue.attach(ns, url=url)
q = mq["jobs"]
got = []
while True:
    b = int(sys.argv[3])
    items = q.fetch_many(b, timeout=20) if b != 1 else [q.fetch(timeout=20)]
    if not items or items[0] is None:
        break
    stops = sum(1 for it in items if it.key == "stop")
    got += [it.key for it in items if it.key != "stop"]
    if stops:
        if stops > 1:  # leave the others' stop items for them
            q.add_many([("stop", "")] * (stops - 1))
        break
print(json.dumps(got))
"""

_PRODUCER = """
import sys, mqueue
url, ns, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
mq = mqueue.attach(ns, url=url)
q = mq["jobs"]
for i in range(0, n, 2):
    q.add(str(i), b"payload")
    q.add_many([(str(i + 1), "payload")])
"""


@pytest.mark.parametrize("batch", [1, 7])
def test_producer_workers_exactly_once(make: Make, rns: str, batch: int, url: str) -> None:
    make("name=jobs")
    n, workers = 2000, 3
    ws = [_py(_WORKER, url, rns, str(batch)) for _ in range(workers)]
    prod = _py(_PRODUCER, url, rns, str(n))
    out, err = prod.communicate(timeout=120)
    assert prod.returncode == 0, err
    mq = mqueue.attach(rns, url=url)
    try:
        # one stop per worker: a worker stops at the first one it sees
        mq["jobs"].add_many([("stop", "")] * workers)
        got: list[str] = []
        for w in ws:
            o, e = w.communicate(timeout=120)
            assert w.returncode == 0, e
            got += json.loads(o)
        assert sorted(got, key=int) == [str(i) for i in range(n)]  # exactly once
        st = mq["jobs"].stats()
        assert st.added >= n + workers and st.added == st.fetched + len(mq["jobs"])
        assert len(mq["jobs"]) == 0
    finally:
        mq.close()


def test_blocking_fetch_woken_by_other_process(make: Make, rns: str, url: str) -> None:
    q = make("name=q")["q"]
    code = """
    import sys, time, json, mqueue
    q = mqueue.attach(sys.argv[2], url=sys.argv[1])["q"]
    print("ready", flush=True)
    c0, t0 = time.process_time(), time.monotonic()
    it = q.fetch(timeout=None)
    print(json.dumps([it.key, time.monotonic() - t0, time.process_time() - c0]), flush=True)
    """
    p = _py(code, url, rns)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    time.sleep(2.5)  # the child waits, across two wait slices
    t_add = time.monotonic()
    q.add("wake", "up")
    line = p.stdout.readline()
    woke = time.monotonic() - t_add
    p.wait(timeout=10)
    key, waited, cpu = json.loads(line)
    assert key == "wake" and waited >= 2.4
    assert woke < 0.5  # woken by the add, not by a poll
    assert cpu < 0.3  # waiting used (almost) no CPU


def test_ctrl_c_interrupts_wait(make: Make, rns: str, url: str) -> None:
    make("name=q")
    code = """
    import sys, time, mqueue
    q = mqueue.attach(sys.argv[2], url=sys.argv[1])["q"]
    print("ready", flush=True)
    try:
        q.fetch(timeout=None)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
    """
    p = _py(code, url, rns)
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    t = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=10)
    assert "interrupted" in out and time.monotonic() - t < 3


_KILLED_ADDER = """
import os, sys, mqueue
q = mqueue.attach(sys.argv[2], url=sys.argv[1])[sys.argv[3]]
print("go", flush=True)
b = 0
while True:
    q.add_many([(f"{os.getpid()}.{b}:{i}", "x" * (i % 7)) for i in range(50)])
    b += 1
"""


@pytest.mark.parametrize("qdef", ["name=q;bytes=64M", "name=q;size=230;addmode=2;bytes=8K"])
def test_client_killed_mid_add_many_leaves_queue_consistent(
    make: Make, rns: str, qdef: str,
    url: str,
) -> None:
    q = make(qdef)["q"]
    rnd = random.Random(7)
    for _ in range(15):
        p = _py(_KILLED_ADDER, url, rns, "q")
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "go"
        time.sleep(rnd.uniform(0.0, 0.15))
        p.send_signal(signal.SIGKILL)
        p.wait()
        assert p.stdout is not None
        p.stdout.close()
        assert p.stderr is not None
        p.stderr.close()
        q._check()  # type: ignore[attr-defined]
    items = q.fetch_many(10**6)
    st = q.stats()
    assert st.added == st.fetched + st.evicted + st.duplicates + len(q)
    if "size" not in qdef:
        # whole batches only: every batch present has its 50 items, in order
        batches: dict[str, list[int]] = collections.defaultdict(list)
        for it in items:
            b, i = str(it.key).split(":")
            batches[b].append(int(i))
        assert batches and all(v == list(range(50)) for v in batches.values())
        assert len(items) == st.added


def test_client_killed_mid_fetch_many_leaves_queue_consistent(
    make: Make, rns: str, url: str
) -> None:
    q = make("name=q;addmode=1")["q"]
    code = """
    import sys, mqueue
    q = mqueue.attach(sys.argv[2], url=sys.argv[1])["q"]
    print("go", flush=True)
    while True:
        q.fetch_many(3, timeout=1)
    """
    rnd = random.Random(3)
    for r in range(8):
        q.add_many([(f"{r}:{i}", "v") for i in range(3000)])
        p = _py(code, url, rns)
        assert p.stdout is not None
        assert p.stdout.readline().strip() == "go"
        time.sleep(rnd.uniform(0.0, 0.1))
        p.kill()
        p.communicate()
        q._check()  # type: ignore[attr-defined]
    st = q.stats()
    assert st.added == st.fetched + len(q) == 8 * 3000


# ------------------------------------------------------------ faults
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def private_server(tmp_path: Any) -> Iterator[Callable[..., tuple[str, Callable[[], None]]]]:
    """``start(*options)`` starts a private redis-server (no persistence, with
    these extra options) and returns its URL and a ``stop()`` that kills it; a
    server still running at teardown is killed then (for restart tests)."""
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("MQUEUE_REQUIRE_SERVICES"):
            pytest.fail("redis-server binary needed")
        pytest.skip("no redis-server binary")
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    procs: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> tuple[str, Callable[[], None]]:
        p = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path), *options],
            stdout=subprocess.DEVNULL,
        )
        procs.append(p)
        for _ in range(100):
            if redis_problem(url) is None:
                break
            time.sleep(0.05)

        def stop() -> None:
            p.kill()
            p.wait()

        return url, stop

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_server_restart_gives_backend_error(
    private_server: Callable[[], tuple[str, Callable[[], None]]],
) -> None:
    """A server that stays down beyond the retry window: BackendError saying that
    nothing was applied (the idle connection is found dead before anything is
    sent); back up without persistence: the namespace is reported lost."""
    url, stop = private_server()
    mq = mqueue.create("restart", ["name=q"], url=url)
    mq.retry_window = 0.5  # type: ignore[attr-defined]
    q = mq["q"]
    q.add("a", "1")
    stop()
    t = time.monotonic()
    with pytest.raises(mqueue.BackendError) as ei:
        q.add("b", "2")
    assert time.monotonic() - t >= 0.5
    assert isinstance(ei.value, ConnectionError)
    assert "could not connect" in str(ei.value) and "not applied" in str(ei.value)
    assert "may or may not" not in str(ei.value) and ei.value.outcome_known is True
    with pytest.raises(mqueue.BackendError):
        q.fetch()
    with pytest.raises(mqueue.BackendError):
        len(q)
    url2, stop2 = private_server()  # same port, empty (no persistence)
    assert url2 == url
    with pytest.raises(R.NamespaceLostError, match="restarted"):
        q.fetch()
    with pytest.raises(mqueue.BackendError):
        q.add("c", "3")
    mq.close()
    stop2()


def test_never_reachable_server_says_could_not_connect() -> None:
    port = _free_port()  # nothing listens there
    with pytest.raises(mqueue.BackendError) as ei:
        mqueue.attach("nowhere", url=f"redis://127.0.0.1:{port}/0")
    msg = str(ei.value)
    assert "could not connect" in msg and "lost the connection" not in msg
    assert "may or may not" not in msg and ei.value.outcome_known is True


def test_server_dies_during_blocking_fetch(
    private_server: Callable[[], tuple[str, Callable[[], None]]],
) -> None:
    url, stop = private_server()
    mq = mqueue.create("dies", ["name=q"], url=url)
    mq.retry_window = 1.0  # type: ignore[attr-defined]
    errs: list[BaseException] = []

    def waiter() -> None:
        try:
            mq["q"].fetch(timeout=None)
        except BaseException as e:  # noqa: BLE001
            errs.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.4)
    stop()
    t.join(10)
    assert not t.is_alive()
    assert len(errs) == 1 and isinstance(errs[0], mqueue.BackendError)
    mq.close()


def test_connection_killed_during_blocking_fetch_is_transparent(
    private_server: Callable[[], tuple[str, Callable[[], None]]],
) -> None:
    """A connection killed under a waiting fetch is re-made and the wait goes on:
    the item added afterwards is delivered, no exception."""
    url, stop = private_server()
    admin = redis.Redis.from_url(url)
    mq = mqueue.create("killed", ["name=q"], url=url)
    q = mq["q"]
    errs: list[BaseException] = []
    got: list[Any] = []

    def waiter() -> None:
        try:
            got.append(q.fetch(timeout=30))
        except BaseException as e:  # noqa: BLE001
            errs.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    killed = 0
    for _ in range(100):
        for c in admin.client_list():
            if c.get("cmd") == "blpop":
                killed += admin.client_kill_filter(_id=c["id"])
        if killed:
            break
        time.sleep(0.05)
    time.sleep(0.2)
    q2 = mqueue.attach("killed", url=url)
    q2["q"].add("a", "b")
    t.join(10)
    assert killed and not errs and got == [("a", "b")]
    # a connection the server closed while idle is replaced before anything is
    # sent: transparent
    q.add("c", "1")
    admin.client_kill_filter(_type="normal", skipme=True)
    time.sleep(0.1)
    q.add("d", "2")
    assert [i.key for i in q.fetch_many(5)] == ["c", "d"]
    q2.close()
    mq.close()
    admin.close()
    stop()


def test_cli_ls_and_get_sizes_over_redis(capsys: pytest.CaptureFixture[str], url: str) -> None:
    """The command line reaches the Redis backend with --url."""
    from mqueue.cli import main

    ns = new_namespace()
    mq = mqueue.create(ns, ["name=q"], url=url)
    try:
        mq["q"].add("k", "v")
        assert main(["ls", "--url", url]) == 0
        assert ns in json.loads(capsys.readouterr().out)
        assert main(["get_sizes", ns, "--url", url]) == 0
        assert json.loads(capsys.readouterr().out) == [{"name": "q", "size": 1}]
    finally:
        mq.close()
        mqueue.destroy(ns, url=url)
