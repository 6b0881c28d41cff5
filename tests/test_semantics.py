"""The queue semantics of SPEC.md sections 1 and 2 and API.md's Pythonic
interface, the same on every backend.

Each test takes the ``backend`` fixture (tests/conftest.py) and runs three
times: on shared memory, on one redis-server (``MQUEUE_TEST_REDIS_URL``) and on
a Redis Cluster (``MQUEUE_TEST_REDIS_CLUSTER_URL``); the Redis variants skip,
saying why, when the service is not there (they fail instead under
``MQUEUE_REQUIRE_SERVICES=1``).  ``make_on_backend`` makes each test's
namespace and checks at teardown that it left no segment and no key.

What only one backend has stays in its own files: segment modes and the C
engine (test_api.py, test_c_engine.py, test_crash.py, ...), Redis connections,
hash slots, faults and its model comparisons (test_redis*.py).
"""

from __future__ import annotations

import collections
import os
import threading
import time
from typing import Any

import pytest
from conftest import Backend, MakeMQ, new_namespace

import mqueue
from mqueue import Item

REC_HDR = 24


def rec(key: bytes | str, value: bytes | str) -> int:
    """Bytes one record takes of a queue's capacity."""
    kb = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
    vb = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else value
    return (REC_HDR + len(kb) + len(vb) + 7) // 8 * 8


def check_structure(q: mqueue.Queue) -> None:
    """Redis: verify the queue's keys are consistent (shared memory has no such check)."""
    check = getattr(q, "_check", None)
    if check is not None:
        check()


def balance_ok(q: mqueue.Queue) -> bool:
    st = q.stats()
    return st.added == st.fetched + st.evicted + st.duplicates + len(q)


# ---------------------------------------------------------------- create / attach / destroy
def test_create_attach_destroy(backend: Backend, ns: str, make_on_backend: MakeMQ) -> None:
    mq = make_on_backend(["name=myq;size=20;", "name=qaz"])
    assert isinstance(mq, mqueue.MQueue)
    assert backend.leftovers(ns)  # the segment or the keys are there
    other = mqueue.attach(ns, url=backend.url)
    try:
        assert list(other) == ["myq", "qaz"]
        assert other.url == backend.url and other.definitions == mq.definitions
        mq["myq"].add("k", "v")
        assert other["myq"].fetch() == Item("k", "v")
    finally:
        other.close()
    mqueue.destroy(ns, url=backend.url)
    assert not backend.leftovers(ns)
    with pytest.raises(FileNotFoundError) as ei:
        mqueue.attach(ns, url=backend.url)
    assert isinstance(ei.value, mqueue.MQueueError)
    with pytest.raises(FileNotFoundError):
        mqueue.destroy(ns, url=backend.url)
    # the creator's handle learns that the namespace is gone (issue 9, item 8)
    with pytest.raises(mqueue.NamespaceLostError) as lost:
        mq["qaz"].add("a", "b")
    assert isinstance(lost.value, FileNotFoundError)
    assert ("gone" if backend.url else "destroyed") in str(lost.value)
    with pytest.raises(mqueue.NamespaceLostError):
        mq["qaz"].fetch(timeout=None)  # does not hang on a destroyed namespace
    # created again with other definitions: the old handle does not touch the new queues
    new = make_on_backend(["name=qaz"])
    try:
        with pytest.raises(mqueue.NamespaceLostError):
            len(mq["qaz"])
        assert len(new["qaz"]) == 0
    finally:
        new.close()


def test_create_existing_raises_file_exists(
    backend: Backend, ns: str, make_on_backend: MakeMQ
) -> None:
    make_on_backend(["name=q"])
    with pytest.raises(FileExistsError) as ei:
        mqueue.create(ns, ["name=q"], url=backend.url)
    assert isinstance(ei.value, mqueue.MQueueError)
    assert isinstance(ei.value, mqueue.NamespaceExistsError)


def test_create_exist_ok_same_definitions_attaches(make_on_backend: MakeMQ) -> None:
    mq = make_on_backend(["name=q;size=3", "name=r;addmode=2"])
    mq["q"].add("k", "v")
    again = make_on_backend(["name=q;size=3", "name=r;addmode=2"], exist_ok=True)
    assert list(again) == ["q", "r"]
    assert again["q"].fetch() == Item("k", "v")
    assert not again.is_creator
    # the same definitions written differently
    same = make_on_backend(["NAME = q ; size = 3;", 'name="r";addmode=2;bytes=1m'], exist_ok=True)
    assert not same.is_creator and same.definitions == mq.definitions


@pytest.mark.parametrize(
    "other",
    [["name=q;size=4"], ["name=q"], ["name=q;size=3", "name=r"], ["name=q;size=3;addmode=1"]],
)
def test_create_exist_ok_other_definitions_raises(
    backend: Backend, ns: str, make_on_backend: MakeMQ, other: list[str]
) -> None:
    make_on_backend(["name=q;size=3"])
    with pytest.raises(FileExistsError) as ei:
        mqueue.create(ns, other, exist_ok=True, url=backend.url)
    assert isinstance(ei.value, mqueue.NamespaceExistsError)


def test_attach_missing_is_file_not_found(backend: Backend, ns: str) -> None:
    with pytest.raises(FileNotFoundError) as ei:
        mqueue.attach(ns, url=backend.url)
    assert isinstance(ei.value, mqueue.NamespaceNotFoundError)
    assert isinstance(ei.value, mqueue.MQueueError)


@pytest.mark.parametrize(
    "bad",
    ["", "a/b", "/x", "a\0b", "x" * 201, "é" * 101, ".", ".."],
    ids=["empty", "slash", "leading-slash", "nul", "too-long", "too-long-utf8", "dot", "dotdot"],
)
@pytest.mark.parametrize("op", ["create", "attach", "destroy"])
def test_bad_namespace_names_are_value_errors(backend: Backend, bad: str, op: str) -> None:
    with pytest.raises(ValueError) as ei:
        if op == "create":
            mqueue.create(bad, ["name=q"], url=backend.url)
        elif op == "attach":
            mqueue.attach(bad, url=backend.url)
        else:
            mqueue.destroy(bad, url=backend.url)
    assert isinstance(ei.value, mqueue.MQueueError)


def test_namespace_name_of_200_bytes_is_fine(make_on_backend: MakeMQ) -> None:
    name = f"t{os.getpid()}_" + "x" * 200
    name = name[:200]
    mq = make_on_backend(["name=q"], namespace=name)
    mq["q"].add("a", "b")
    assert len(mq["q"]) == 1


@pytest.mark.parametrize("bad", ["name=q1;;size=2", "size=2", "name=q;size=abc", "name=q;foo=1"])
def test_bad_definition_is_value_error_and_creates_nothing(
    backend: Backend, ns: str, bad: str
) -> None:
    with pytest.raises(ValueError) as ei:
        mqueue.create(ns, [bad], url=backend.url)
    assert isinstance(ei.value, mqueue.DefinitionError)
    assert not backend.leftovers(ns)


def test_duplicate_queue_name_rejected(backend: Backend, ns: str) -> None:
    with pytest.raises(ValueError):
        mqueue.create(ns, ["name=q", "name=q;size=2"], url=backend.url)
    assert not backend.leftovers(ns)


@pytest.mark.parametrize("mode", [0o1000, 0o1777, -1])
def test_create_bad_mode_is_a_value_error_and_creates_nothing(
    backend: Backend, ns: str, mode: int
) -> None:
    with pytest.raises(ValueError):
        mqueue.create(ns, ["name=q"], mode=mode, url=backend.url)
    assert not backend.leftovers(ns)


def test_create_bad_mode_is_an_argument_error(
    backend: Backend, ns: str, request: pytest.FixtureRequest
) -> None:
    for mode in (0o1000, -1):
        with pytest.raises(ValueError) as e:
            mqueue.create(ns, ["name=q"], mode=mode, url=backend.url)
        assert isinstance(e.value, mqueue.ArgumentError)
        assert not backend.leftovers(ns)


# ---------------------------------------------------------------- namespace object
def test_getitem_contains_iter(make_on_backend: MakeMQ) -> None:
    mq = make_on_backend(["name=myq;size=20;", "name=qaz", "name='q 1'", "name=A"])
    assert list(mq) == ["myq", "qaz", "q 1", "A"]
    assert "myq" in mq and "q 1" in mq and "A" in mq
    assert "a" not in mq and "nope" not in mq and 3 not in mq
    assert mq["q 1"].name == "q 1"
    with pytest.raises(KeyError) as ei:
        mq["nope"]
    assert isinstance(ei.value, mqueue.QueueNotFoundError)
    with pytest.raises(KeyError):
        mq["a"]  # case-sensitive


def test_sizes(make_on_backend: MakeMQ) -> None:
    mq = make_on_backend(["name=myq;size=20;", "name=qaz"])
    assert mq.sizes() == {"myq": 0, "qaz": 0}
    for i in range(3):
        mq["myq"].add(str(i), "v")
    assert mq.sizes() == {"myq": 3, "qaz": 0}
    assert list(mq.sizes()) == ["myq", "qaz"]
    mq["myq"].fetch()
    assert mq.sizes() == {"myq": 2, "qaz": 0}  # held item not counted


def test_len_stats_sizes_change_nothing(make_on_backend: MakeMQ) -> None:
    mq = make_on_backend(["name=a;size=5", "name=b"])
    mq["a"].add_many([(str(i), "x") for i in range(3)])
    before = mq["a"].stats()
    for _ in range(3):
        assert len(mq["a"]) == 3
        assert mq.sizes() == {"a": 3, "b": 0}
        assert mq["a"].stats() == before
    st = before
    assert (st.length, st.added, st.fetched, st.evicted, st.duplicates) == (3, 3, 0, 0, 0)
    assert st.high_water == 3 and st.recoveries == 0
    assert st.bytes_used == 3 * rec("0", "x") and st.capacity == 1 << 20
    assert st.size_limit == 5 and st.addmode == 0


def test_close_idempotent_and_context_manager(
    backend: Backend, ns: str, make_on_backend: MakeMQ
) -> None:
    make_on_backend(["name=q"]).close()  # made by the factory: destroyed at teardown
    with mqueue.attach(ns, url=backend.url) as mq:
        q = mq["q"]
        q.add("a", "b")
        assert not mq.closed
    assert mq.closed
    mq.close()
    mq.close()
    with pytest.raises(mqueue.MQueueError, match="closed"):
        q.add("k", "v")
    with mqueue.attach(ns, url=backend.url) as other:
        assert other["q"].fetch() == Item("a", "b")
    assert other.closed


@pytest.mark.parametrize(
    "op",
    [
        lambda q, mq: q.add("a", "b"),
        lambda q, mq: q.add_many([("a", "b")]),
        lambda q, mq: q.fetch(),
        lambda q, mq: q.fetch(timeout=0.01),
        lambda q, mq: q.fetch_many(3),
        lambda q, mq: len(q),
        lambda q, mq: q.stats(),
        lambda q, mq: mq.sizes(),
    ],
    ids=["add", "add_many", "fetch", "fetch_timeout", "fetch_many", "len", "stats", "sizes"],
)
def test_operations_after_close_raise(make_on_backend: MakeMQ, op: Any) -> None:
    mq = make_on_backend(["name=q"])
    q = mq["q"]
    q.add("x", "y")
    mq.close()
    with pytest.raises(mqueue.MQueueError):
        op(q, mq)


def test_repr_does_not_crash(make_on_backend: MakeMQ) -> None:
    mq = make_on_backend(["name=q;size=2", "name='we;ird'"])
    assert "q" in repr(mq["q"])
    assert isinstance(repr(mq), str)
    assert isinstance(repr(mq["we;ird"]), str)
    assert isinstance(repr(mq["q"].stats()), str)
    assert repr(Item("a", b"b")) == "Item(key='a', value=b'b')"
    mq.close()
    assert isinstance(repr(mq), str)
    assert isinstance(repr(mq["q"]), str)


# ---------------------------------------------------------------- add / fetch / held item
def test_add_fetch_held_item(make_on_backend: MakeMQ) -> None:
    mq = make_on_backend(["name=q"])
    q = mq["q"]
    assert q.key is None and q.value is None and q.held is None
    assert q.add("alice", "call from bob") is True
    assert q.add_many([("k1", "v1"), ("k2", b"raw")]) == 2
    assert len(q) == 3
    item = q.fetch()
    assert item == Item("alice", "call from bob")
    assert isinstance(item, Item) and item.key == "alice" and item.value == "call from bob"
    assert (q.key, q.value) == ("alice", "call from bob") and q.held == item
    assert len(q) == 2  # the held item is not counted
    assert q.fetch() == ("k1", "v1")
    assert (q.key, q.value) == ("k1", "v1")  # the previous held item is released
    q.free()
    assert q.key is None and q.value is None
    q.free()  # always fine
    assert q.fetch() == ("k2", b"raw")
    assert q.value == b"raw" and isinstance(q.value, bytes)
    assert q.fetch() is None  # empty: the held item is cleared
    assert q.key is None and q.value is None
    assert q.fetch() is None
    st = q.stats()
    assert (st.added, st.fetched, st.evicted, st.duplicates) == (3, 3, 0, 0)


def test_held_is_per_handle(backend: Backend, ns: str, make_on_backend: MakeMQ) -> None:
    q = make_on_backend("name=q")["q"]
    q.add("a", "1")
    q.add("b", "2")
    other = mqueue.attach(ns, url=backend.url)
    try:
        assert other["q"].fetch() == ("a", "1")
        assert q.key is None  # another handle's fetch does not change ours
        assert q.fetch() == ("b", "2")
        assert other["q"].key == "a"
    finally:
        other.close()


def test_fetch_many_does_not_change_held_item(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q"])["q"]
    q.add_many([(f"k{i}", f"v{i}") for i in range(10)])
    assert q.fetch() == ("k0", "v0")
    got = q.fetch_many(4)
    assert got == [Item(f"k{i}", f"v{i}") for i in range(1, 5)]
    assert all(isinstance(x, Item) for x in got)
    assert (q.key, q.value) == ("k0", "v0")
    assert q.fetch_many(100, timeout=0) == [Item(f"k{i}", f"v{i}") for i in range(5, 10)]
    assert q.fetch_many(100) == []
    assert q.fetch_many(0) == []
    assert (q.key, q.value) == ("k0", "v0")
    st = q.stats()
    assert st.fetched == 10 and len(q) == 0


def test_add_many_and_fetch_many_per_kind_of_queue(make_on_backend: MakeMQ) -> None:
    mq = make_on_backend(["name=q", "name=s;size=3", "name=u;bytes=256", "name=d;addmode=1"])
    q = mq["q"]
    assert q.add_many([]) == 0
    assert q.add_many((f"k{i}", b"v") for i in range(10)) == 10
    q.fetch()
    held = q.held
    got = q.fetch_many(4)
    assert [i.key for i in got] == ["k1", "k2", "k3", "k4"]
    assert q.held == held  # fetch_many does not change the held item
    assert q.fetch_many(0) == []
    assert len(q.fetch_many(100)) == 5
    # bounded: oldest dropped as for add
    assert mq["s"].add_many([(str(i), "") for i in range(5)]) == 5
    assert [i.key for i in mq["s"].fetch_many(9)] == ["2", "3", "4"]
    assert mq["s"].stats().evicted == 2
    # unbounded: a batch that does not fit stores nothing
    u = mq["u"]
    with pytest.raises(mqueue.QueueFullError):
        u.add_many([(str(i), "x" * 40) for i in range(4)])
    assert len(u) == 0 and u.stats().added == 0
    # a bad item stores nothing
    with pytest.raises(mqueue.ItemTooLargeError):
        u.add_many([("a", "b"), ("c", "x" * 1000)])
    assert len(u) == 0
    # addmode 1: duplicates inside the batch and against the queue
    d = mq["d"]
    d.add("a", "0")
    assert d.add_many([("a", "1"), ("b", "2"), (b"b", "3"), ("c", "4")]) == 2
    assert [tuple(i) for i in d.fetch_many(9)] == [("a", "0"), ("b", "2"), ("c", "4")]
    st = d.stats()
    assert st.added == 5 and st.duplicates == 2


def test_fetch_many_bad_n(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q"])["q"]
    with pytest.raises(ValueError):
        q.fetch_many(-1)
    with pytest.raises(TypeError):
        q.fetch_many("3")  # type: ignore[arg-type]


def test_held_item_per_queue(make_on_backend: MakeMQ) -> None:
    mq = make_on_backend(["name=a", "name=b"])
    mq["a"].add("ka", "va")
    mq["b"].add("kb", "vb")
    mq["a"].fetch()
    assert mq["b"].key is None
    mq["b"].fetch()
    assert (mq["a"].key, mq["b"].key) == ("ka", "kb")
    mq["a"].free()
    assert (mq["a"].key, mq["b"].key) == (None, "kb")


def test_fifo_order_large_batch(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q;bytes=4M"])["q"]
    n = 5000
    assert q.add_many((str(i), i.to_bytes(4, "little")) for i in range(n)) == n
    out = []
    while True:
        batch = q.fetch_many(777)
        if not batch:
            break
        out.extend(batch)
    assert [int(k) for k, _ in out] == list(range(n))
    assert all(int.from_bytes(v, "little") == int(k) for k, v in out)


def test_add_many_empty_and_generator(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q"])["q"]
    assert q.add_many([]) == 0
    assert q.add_many(iter([("a", "b")])) == 1
    assert q.add_many((k, "v") for k in "xyz") == 3
    assert len(q) == 4


def test_add_many_with_one_shot_iterator_items(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q"])["q"]
    assert q.add_many([iter(("k", b"v")), iter(("k\0", "v")), iter(("x", "y"))]) == 3
    assert q.fetch_many(5) == [("k", b"v"), ("k\0", "v"), ("x", "y")]


def test_threads_share_one_handle(make_on_backend: MakeMQ) -> None:
    """Producer and consumer threads of one process on one queue handle: every
    item arrives exactly once (shared memory: the engine releases the GIL and
    fetch buffers are per call; Redis: connections per thread), the counters
    balance."""
    q = make_on_backend(["name=q;bytes=4M"])["q"]
    n_prod, per = 3, 3000
    got: list[list[str]] = [[] for _ in range(3)]
    done = threading.Event()

    def produce(p: int) -> None:
        for i in range(per):
            q.add(f"{p}:{i}", "x" * (i % 50))

    def consume(c: int) -> None:
        while True:
            item = q.fetch(timeout=0.05)
            if item is not None:
                got[c].append(str(item.key))
            elif done.is_set():
                return

    consumers = [threading.Thread(target=consume, args=(c,)) for c in range(3)]
    producers = [threading.Thread(target=produce, args=(p,)) for p in range(n_prod)]
    for t in consumers + producers:
        t.start()
    for t in producers:
        t.join()
    done.set()
    for t in consumers:
        t.join()
    keys = [k for g in got for k in g] + [str(i.key) for i in q.fetch_many(100000)]
    assert sorted(keys) == sorted(f"{p}:{i}" for p in range(n_prod) for i in range(per))
    st = q.stats()
    assert st.added == st.fetched + st.evicted + st.length == n_prod * per


def test_fork_inherited_handle(make_on_backend: MakeMQ) -> None:
    """A forked child uses the inherited handle with no held item of its own."""
    q = make_on_backend("name=q")["q"]
    q.add("a", "1")
    q.add("b", "2")
    q.fetch()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        ok = False
        try:
            ok = q.key is None and q.fetch() == ("b", "2")
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert q.key == "a" and len(q) == 0


# ---------------------------------------------------------------- types and round trips
ROUND_TRIP = [
    ("", ""),
    (b"", b""),
    ("", b""),
    (b"", ""),
    ("a\0b", b"\0\0\0"),
    ("héllo wörld ✓ 日本", "émoji 🎉"),
    ("é€𝄞", "\udcff surrogate"),
    ("\ud800", "lone \udfff surrogate"),
    (b"\xff\xfe\x00", "x" * 1000),
    (b"\x00\xff\x01", b"\xff" * 100),
    ("a", b"a"),
    ("k", b"\x00"),
    (b"k", "v"),
    ("x" * 5000, b"y" * 100000),
]


@pytest.mark.parametrize("key,value", ROUND_TRIP)
def test_round_trip_types(make_on_backend: MakeMQ, key: Any, value: Any) -> None:
    mq = make_on_backend(["name=q", "name=r;addmode=2"])
    q = mq["q"]
    assert q.add(key, value) is True
    assert q.add_many([(key, value)]) == 1
    for got in (q.fetch(), q.fetch_many(1)[0]):
        assert got == (key, value)
        assert type(got.key) is type(key) and type(got.value) is type(value)
    assert (q.key, q.value) == (key, value)
    assert type(q.key) is type(key)
    # the key compares equal to itself, and to its other type, in addmode 2
    r = mq["r"]
    other = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
    assert r.add(key, value) is True
    assert r.add_many([(other, value)]) == 1
    assert len(r) == 1 and r.stats().duplicates == 1
    assert r.fetch() == (other, value)


def test_empty_key_is_not_none(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q"])["q"]
    q.add("", "")
    assert q.fetch() == ("", "")
    assert q.key == "" and q.value == ""


@pytest.mark.parametrize(
    "key,value",
    [(1, "v"), ("k", 1), (None, "v"), ("k", None), (bytearray(b"k"), "v"), ("k", 1.5)],
)
def test_bad_types_are_type_errors(make_on_backend: MakeMQ, key: Any, value: Any) -> None:
    q = make_on_backend(["name=q"])["q"]
    with pytest.raises(TypeError) as ei:
        q.add(key, value)
    assert isinstance(ei.value, mqueue.ItemTypeError)
    with pytest.raises(mqueue.ItemTypeError):
        q.add_many([("a", "b"), (key, value), ("c", "d")])
    assert len(q) == 0
    st = q.stats()
    assert st.added == 0 and st.bytes_used == 0


@pytest.mark.parametrize("bad", [[("a",)], [("a", "b", "c")], ["abc"], [b"ab"], [None], [1]])
def test_add_many_malformed_pairs_store_nothing(make_on_backend: MakeMQ, bad: list[Any]) -> None:
    q = make_on_backend(["name=q"])["q"]
    q.add("keep", "me")
    with pytest.raises(TypeError) as ei:
        q.add_many([("x", "y"), *bad])
    assert isinstance(ei.value, mqueue.MQueueError)
    assert len(q) == 1
    assert q.stats().added == 1


# ---------------------------------------------------------------- size bound and eviction
def test_size_eviction_drops_oldest(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q;size=3"])["q"]
    for i in range(5):
        assert q.add(f"k{i}", f"v{i}") is True
    assert len(q) == 3
    st = q.stats()
    assert (st.added, st.evicted, st.high_water, st.size_limit) == (5, 2, 3, 3)
    assert q.fetch_many(10) == [(f"k{i}", f"v{i}") for i in (2, 3, 4)]
    assert balance_ok(q)


def test_size_eviction_in_add_many(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q;size=2"])["q"]
    assert q.add_many([(f"k{i}", "v") for i in range(5)]) == 5
    assert [x.key for x in q.fetch_many(10)] == ["k3", "k4"]
    st = q.stats()
    assert (st.added, st.evicted, st.fetched) == (5, 3, 2)


@pytest.mark.parametrize("size", ["0", "-1"])
def test_size_zero_or_negative_is_unbounded(make_on_backend: MakeMQ, size: str) -> None:
    q = make_on_backend([f"name=q;size={size}"])["q"]
    for i in range(100):
        q.add(str(i), "")
    assert len(q) == 100
    assert q.stats().evicted == 0


def test_held_item_survives_eviction(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q;size=1"])["q"]
    q.add("a", "1")
    assert q.fetch() == ("a", "1")
    q.add("b", "2")
    q.add("c", "3")
    assert (q.key, q.value) == ("a", "1")
    assert len(q) == 1


def test_stats_attributes_and_balance_addmode0(make_on_backend: MakeMQ) -> None:
    mq = make_on_backend(["name=q;size=4;bytes=1K"])
    q = mq["q"]
    st = q.stats()
    fields = "length added fetched evicted duplicates high_water recoveries bytes_used capacity"
    for attr in (*fields.split(), "size_limit", "addmode"):
        assert isinstance(getattr(st, attr), int), attr
    assert st.capacity == 1024 and st.bytes_used == 0 and st.recoveries == 0
    for i in range(10):
        q.add(f"k{i}", "v" * i)
        if i % 3 == 0:
            q.fetch()
        st = q.stats()
        assert st.added == st.fetched + st.evicted + len(q)
        assert st.duplicates == 0
    assert q.stats().high_water == 4
    # stats, len and sizes never change the queue
    a = q.stats()
    len(q)
    mq.sizes()
    assert q.stats() == a


def test_bytes_used_accounting(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q"])["q"]
    q.add("ab", "cde")
    q.add(b"", b"")
    assert q.stats().bytes_used == rec("ab", "cde") + rec(b"", b"") == 32 + 24
    q.fetch()
    assert q.stats().bytes_used == 24


# ---------------------------------------------------------------- addmode
def test_addmode1_keeps_old(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q;addmode=1"])["q"]
    assert q.add("a", "1") is True
    assert q.add("b", "1") is True
    assert q.add("a", "2") is False  # dropped, still success
    assert q.add(b"a", "3") is False  # "a" and b"a" are the same key
    assert len(q) == 2
    st = q.stats()
    assert (st.added, st.duplicates) == (4, 2)
    assert st.added == st.fetched + st.evicted + st.duplicates + len(q)
    assert q.fetch() == ("a", "1")
    # the held item is not compared: "a" can be queued again
    assert q.add("a", "4") is True
    assert q.fetch_many(5) == [("b", "1"), ("a", "4")]
    assert (q.key, q.value) == ("a", "1")


def test_addmode1_add_many_counts(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q;addmode=1"])["q"]
    q.add("x", "0")
    assert q.add_many([("a", "1"), ("x", "1"), ("a", "2"), ("b", "1")]) == 2
    assert q.fetch_many(10) == [("x", "0"), ("a", "1"), ("b", "1")]
    assert balance_ok(q)


def test_addmode2_replaces_and_moves_to_tail(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q;addmode=2"])["q"]
    assert q.add("a", "1") is True
    assert q.add("b", "1") is True
    assert q.add("a", "2") is True
    assert len(q) == 2
    assert q.add(b"b", b"2") is True
    st = q.stats()
    assert (st.added, st.duplicates) == (4, 2)
    assert st.added == st.fetched + st.evicted + st.duplicates + len(q)
    assert q.fetch() == ("a", "2")
    assert q.add("a", "3") is True  # held item not compared
    assert (q.key, q.value) == ("a", "2")
    assert q.fetch_many(10) == [(b"b", b"2"), ("a", "3")]
    assert q.stats().duplicates == 2


def test_addmode2_add_many_counts(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q;addmode=2"])["q"]
    assert q.add_many([("a", "1"), ("b", "1"), ("a", "2"), ("a", "3")]) == 4
    assert q.fetch_many(10) == [("b", "1"), ("a", "3")]
    assert balance_ok(q)


def test_addmode2_replaced_record_keeps_its_bytes(make_on_backend: MakeMQ) -> None:
    q = make_on_backend("name=q;addmode=2;bytes=1K")["q"]
    q.add("a", "1")
    q.add("b", "2")
    q.add(b"b", "3")
    assert len(q) == 2
    st = q.stats()
    assert st.duplicates == 1 and st.added == 3
    assert st.bytes_used == 3 * rec("a", "1")  # the replaced record still occupies its bytes
    assert q.fetch() == ("a", "1")
    assert q.stats().bytes_used == rec("a", "1")  # head passed the replaced one
    assert q.fetch() == (b"b", "3")
    assert q.stats().bytes_used == 0
    q.add("a", "1")
    q.add("b", "2")
    q.add(b"a", "3")  # the replaced record is the head: its bytes are reclaimed at once
    assert q.stats().bytes_used == 2 * rec("a", "1")
    assert [tuple(i) for i in q.fetch_many(3)] == [("b", "2"), (b"a", "3")]
    assert q.stats().bytes_used == 0
    q.add("a", "4")
    q.fetch()
    assert q.add("a", "5") is True and len(q) == 1  # held not compared
    assert q.stats().duplicates == 2


def test_addmode2_bounded_does_not_evict_for_a_replacement(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q;size=2;addmode=2"])["q"]
    q.add("a", "1")
    q.add("b", "1")
    q.add("a", "2")
    assert q.stats().evicted == 0
    assert q.fetch_many(5) == [("b", "1"), ("a", "2")]


def test_addmode0_keeps_duplicates(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q"])["q"]
    q.add("a", "1")
    q.add(b"a", "2")
    assert q.fetch_many(5) == [("a", "1"), (b"a", "2")]
    assert q.stats().duplicates == 0


def test_addmode_different_bytes_are_different_keys(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q;addmode=1"])["q"]
    assert q.add("a", "1") is True
    assert q.add("A", "1") is True
    assert q.add("a\0", "1") is True
    assert q.add("", "1") is True
    assert q.add(b"", "2") is False
    assert len(q) == 4


# ---------------------------------------------------------------- byte capacity
def test_bounded_queue_drops_oldest_to_fit_bytes(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q;size=100;bytes=256"])["q"]
    v = "x" * (64 - REC_HDR - 2)  # 64-byte records, 4 fit
    for i in range(4):
        q.add(f"k{i}", v)
    assert q.stats().bytes_used == 256
    assert q.add("k4", v) is True
    st = q.stats()
    assert (len(q), st.evicted, st.bytes_used) == (4, 1, 256)
    big = "y" * (128 - REC_HDR - 2)
    assert q.add("k5", big) is True  # needs two records' room
    assert [x.key for x in q.fetch_many(10)] == ["k3", "k4", "k5"]
    assert q.stats().evicted == 3


def test_bounded_add_many_drops_oldest_to_fit_bytes(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q;size=100;bytes=256"])["q"]
    v = "x" * (64 - REC_HDR - 2)
    assert q.add_many([(f"k{i}", v) for i in range(10)]) == 10
    assert [x.key for x in q.fetch_many(20)] == ["k6", "k7", "k8", "k9"]
    st = q.stats()
    assert (st.added, st.evicted, st.fetched) == (10, 6, 4)


def test_unbounded_full_raises_and_changes_nothing(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q;bytes=256"])["q"]
    v = "x" * (64 - REC_HDR - 2)
    for i in range(4):
        q.add(f"k{i}", v)
    before = q.stats()
    with pytest.raises(mqueue.QueueFullError) as ei:
        q.add("k4", v)
    assert isinstance(ei.value, mqueue.MQueueError)
    assert "full" in str(ei.value)
    assert q.stats() == before
    with pytest.raises(mqueue.QueueFullError):
        q.add_many([("z", "")])
    assert q.stats() == before
    q.fetch()
    assert q.add("k4", v) is True
    assert [x.key for x in q.fetch_many(10)] == ["k1", "k2", "k3", "k4"]


def test_unbounded_add_many_that_does_not_fit_stores_nothing(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q;bytes=256"])["q"]
    v = "x" * (64 - REC_HDR - 2)
    q.add("k0", v)
    before = q.stats()
    with pytest.raises(mqueue.QueueFullError):
        q.add_many([(f"n{i}", v) for i in range(4)])  # 3 would fit, 4 do not
    assert q.stats() == before
    assert q.add_many([(f"n{i}", v) for i in range(3)]) == 3


def test_unbounded_addmode1_duplicate_of_full_queue_is_not_an_error(
    make_on_backend: MakeMQ,
) -> None:
    q = make_on_backend(["name=q;bytes=256;addmode=1"])["q"]
    v = "x" * (64 - REC_HDR - 2)
    for i in range(4):
        q.add(f"k{i}", v)
    assert q.add("k0", v) is False


def test_addmode2_unbounded_full_changes_nothing(make_on_backend: MakeMQ) -> None:
    q = make_on_backend("name=q;addmode=2;bytes=256")["q"]
    r = rec("k0", "v" * 5)  # 32: eight fill the queue
    for i in range(8):
        q.add(f"k{i}", "v" * 5)
    before = q.stats()
    assert before.bytes_used == 8 * r == 256
    # k1 is not at the head: its tombstone would keep its bytes, so no room
    with pytest.raises(mqueue.QueueFullError):
        q.add("k1", "v" * 5)
    assert q.stats() == before  # the dead mark was undone too
    with pytest.raises(mqueue.QueueFullError):
        q.add_many([("k2", "w" * 5)])
    assert q.stats() == before
    check_structure(q)
    # k0 is at the head: replaced, its bytes are reclaimed before the full check
    assert q.add("k0", "w" * 5) is True
    st = q.stats()
    assert (st.length, st.bytes_used, st.duplicates, st.added) == (8, 256, 1, 9)
    assert [i.key for i in q.fetch_many(9)] == [f"k{i}" for i in range(1, 8)] + ["k0"]


def test_unbounded_addmode2_replacing_one_key_never_fills(make_on_backend: MakeMQ) -> None:
    """Replaced records at the head are reclaimed on add: one key added over and
    over to a small unbounded addmode-2 queue never fills it (csrc/mq.c add_one)."""
    q = make_on_backend("name=q;addmode=2;bytes=256")["q"]
    r = rec("k", "v" * 40)  # 72: only three fit
    for i in range(50):
        assert q.add("k", "v" * 40) is True, i
        assert len(q) == 1
        assert q.stats().bytes_used == r
    st = q.stats()
    assert (st.added, st.duplicates, st.evicted, st.length, st.high_water) == (50, 49, 0, 1, 1)
    # the same inside one batch: each item replaces the previous one at the head
    assert q.add_many([("k", f"{i:040d}") for i in range(50)]) == 50
    assert len(q) == 1 and q.stats().bytes_used == r
    assert q.fetch() == ("k", f"{49:040d}")
    assert q.stats().bytes_used == 0


@pytest.mark.parametrize("qdef", ["name=q;bytes=256", "name=q;size=3;bytes=256"])
def test_item_larger_than_capacity(make_on_backend: MakeMQ, qdef: str) -> None:
    q = make_on_backend([qdef])["q"]
    q.add("keep", "me")
    before = q.stats()
    exact = "x" * (256 - REC_HDR - 1)  # exactly the capacity
    too_big = "x" * (256 - REC_HDR)  # 8 bytes over
    with pytest.raises(ValueError) as ei:
        q.add("k", too_big)
    assert isinstance(ei.value, mqueue.ItemTooLargeError)
    assert isinstance(ei.value, mqueue.MQueueError)
    assert q.stats() == before
    with pytest.raises(mqueue.ItemTooLargeError):
        q.add_many([("a", "b"), ("k", too_big), ("c", "d")])
    assert q.stats() == before
    if "size" in qdef:
        assert q.add("k", exact) is True  # fits by evicting everything else
        assert q.fetch_many(5) == [("k", exact)]
    else:
        with pytest.raises(mqueue.QueueFullError):
            q.add("k", exact)
        q.fetch()
        assert q.add("k", exact) is True
        assert q.stats().bytes_used == 256


def test_capacity_rounded_up_to_8(make_on_backend: MakeMQ) -> None:
    mq = make_on_backend(["name=q;bytes=257", "name=r;bytes=2K", "name=s;bytes=1k"])
    assert mq["q"].stats().capacity == 264
    assert mq["r"].stats().capacity == 2048
    assert mq["s"].stats().capacity == 1024


# ---------------------------------------------------------------- timeouts
def test_fetch_timeouts(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q"])["q"]
    t = time.monotonic()
    assert q.fetch() is None
    assert q.fetch(timeout=0) is None
    assert q.fetch(0.0) is None
    assert q.fetch_many(3, timeout=0) == []
    assert time.monotonic() - t < 0.5
    t = time.monotonic()
    assert q.fetch(timeout=0.1) is None
    assert 0.1 <= time.monotonic() - t < 1.0
    t = time.monotonic()
    assert q.fetch_many(3, timeout=0.2) == []
    assert 0.2 <= time.monotonic() - t < 1.0
    q.add("a", "b")
    assert q.fetch(timeout=None) == ("a", "b")
    q.add("a", "c")
    assert q.fetch_many(2, timeout=None) == [("a", "c")]
    q.add("a", "d")
    assert q.fetch(timeout=5) == ("a", "d")


def test_waiting_fetch_woken_by_an_add_from_another_thread(make_on_backend: MakeMQ) -> None:
    q = make_on_backend("name=q")["q"]
    timer = threading.Timer(0.3, lambda: q.add("late", "v"))
    timer.start()
    t = time.monotonic()
    assert q.fetch(timeout=None) == ("late", "v")
    assert time.monotonic() - t < 1.0
    timer.join()


def test_fetch_many_waits_only_while_empty(make_on_backend: MakeMQ) -> None:
    q = make_on_backend("name=q")["q"]
    q.add("a", "1")
    t = time.monotonic()
    assert len(q.fetch_many(10, timeout=5)) == 1
    assert time.monotonic() - t < 0.5
    timer = threading.Timer(0.2, lambda: q.add_many([("b", "2"), ("c", "3")]))
    timer.start()
    assert [i.key for i in q.fetch_many(10, timeout=None)] in (["b", "c"], ["b"])
    timer.join()


@pytest.mark.parametrize("bad", [-1, -0.001, float("nan")])
def test_negative_timeout_is_value_error(make_on_backend: MakeMQ, bad: float) -> None:
    q = make_on_backend(["name=q"])["q"]
    q.add("a", "b")
    with pytest.raises(ValueError):
        q.fetch(timeout=bad)
    with pytest.raises(ValueError):
        q.fetch_many(1, timeout=bad)
    assert len(q) == 1


def test_bad_timeout_type(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q"])["q"]
    with pytest.raises(TypeError):
        q.fetch(timeout="1")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "call, kind",
    [
        (lambda q: q.fetch(timeout=-1), mqueue.ArgumentError),
        (lambda q: q.fetch(timeout=float("nan")), mqueue.ArgumentError),
        (lambda q: q.fetch_many(3, timeout=float("-inf")), mqueue.ArgumentError),
        (lambda q: q.fetch_many(-1), mqueue.ArgumentError),
        (lambda q: q.fetch(timeout=True), mqueue.ArgumentTypeError),
        (lambda q: q.fetch(timeout="1"), mqueue.ArgumentTypeError),
        (lambda q: q.fetch_many("3"), mqueue.ArgumentTypeError),
        (lambda q: q.fetch_many(1.0), mqueue.ArgumentTypeError),
        (lambda q: q.fetch_many(1.5), mqueue.ArgumentTypeError),
    ],
)
def test_bad_arguments_are_mqueue_errors_and_change_nothing(
    make_on_backend: MakeMQ, call: Any, kind: type[Exception]
) -> None:
    q = make_on_backend(["name=q"])["q"]
    q.add_many([("a", "1"), ("b", "2")])
    assert q.fetch() == ("a", "1")
    with pytest.raises(kind):
        call(q)
    assert q.key == "a" and len(q) == 1  # the held item and the queue untouched


def test_huge_timeouts_mean_forever_not_overflow(make_on_backend: MakeMQ) -> None:
    q = make_on_backend(["name=q"])["q"]
    q.add("k", "v")
    assert q.fetch(timeout=10**400) == ("k", "v")
    q.add("k", "v")
    assert q.fetch_many(1, timeout=1e300) == [("k", "v")]


# ---------------------------------------------------------------- against a model
class Model:
    """The queue semantics of SPEC.md section 2, with shared memory's byte accounting."""

    def __init__(self, size: int, cap: int, mode: int) -> None:
        self.limit, self.cap, self.mode = size, (cap + 7) // 8 * 8, mode
        self.recs: collections.deque[list[Any]] = collections.deque()  # [kb, item, R, dead]
        self.count = self.bytes = 0
        self.added = self.fetched = self.evicted = self.dups = self.hw = 0

    def _live_key(self, kb: bytes) -> list[Any] | None:
        for r in self.recs:
            if not r[3] and r[0] == kb:
                return r
        return None

    def _pop_head(self) -> list[Any]:
        r = self.recs.popleft()
        self.bytes -= r[2]
        return r

    def _skip_dead(self) -> None:
        while self.recs and self.recs[0][3]:
            self._pop_head()

    def _add_one(self, k: Any, v: Any, s: int) -> int:
        """One item, as csrc/mq.c add_one: dedup, reclaim dead records at the
        head, refuse (unbounded) or evict (bounded), store."""
        kb = k.encode("utf-8", "surrogatepass") if isinstance(k, str) else k
        if self.mode:
            old = self._live_key(kb)
            if old is not None:
                self.dups += 1
                if self.mode == 1:
                    self.added += 1
                    return 0
                old[3] = True
                self.count -= 1
        self._skip_dead()  # replaced records at the head hold no item
        if not self.limit and self.bytes + s > self.cap:
            raise mqueue.QueueFullError  # add_many restores its snapshot
        while (self.limit and self.count + 1 > self.limit) or self.bytes + s > self.cap:
            r = self._pop_head()
            if not r[3]:
                self.count -= 1
                self.evicted += 1
        self.recs.append([kb, mqueue.Item(k, v), s, False])
        self.bytes += s
        self.count += 1
        self.added += 1
        self.hw = max(self.hw, self.count)
        return 1

    def add_many(self, items: list[tuple[Any, Any]]) -> int:
        sizes = [rec(k, v) for k, v in items]
        if any(s > self.cap for s in sizes):
            raise mqueue.ItemTooLargeError
        snap = ([list(r) for r in self.recs], self.stats())
        try:
            return sum(self._add_one(k, v, s) for (k, v), s in zip(items, sizes, strict=True))
        except mqueue.QueueFullError:  # all or nothing: the batch leaves no trace
            recs, st = snap
            self.recs = collections.deque(recs)
            (self.count, self.added, self.fetched, self.evicted, self.dups, self.hw,
             self.bytes) = st
            raise

    def take(self, n: int) -> list[mqueue.Item]:
        out: list[mqueue.Item] = []
        while self.recs:
            if not self.recs[0][3]:
                if len(out) >= n:
                    break
                out.append(self.recs[0][1])
                self.count -= 1
                self.fetched += 1
            self._pop_head()
        return out

    def stats(self) -> tuple[int, ...]:
        return (self.count, self.added, self.fetched, self.evicted, self.dups, self.hw,
                self.bytes)


def _model_args(d: str) -> tuple[int, int, int]:
    """(size, bytes, addmode) of a definition string, for Model."""
    kv = dict(p.split("=", 1) for p in d.split(";") if p)
    return int(kv.get("size", 0)), int(kv.get("bytes", 0)), int(kv.get("addmode", 0))


def _stats_tuple(st: mqueue.QueueStats) -> tuple[int, ...]:
    return (st.length, st.added, st.fetched, st.evicted, st.duplicates, st.high_water,
            st.bytes_used)


def _apply(ops: list[tuple[Any, ...]], q: Any, m: Model | None) -> list[Any]:
    out: list[Any] = []
    for op in ops:
        try:
            if op[0] == "add":
                r: Any = q.add(op[1], op[2]) if m is None else m.add_many([(op[1], op[2])]) == 1
            elif op[0] == "add_many":
                r = q.add_many(op[1]) if m is None else m.add_many(op[1])
            elif op[0] == "fetch":
                if m is None:
                    it = q.fetch()
                    r = None if it is None else tuple(it)
                else:
                    got = m.take(1)
                    r = tuple(got[0]) if got else None
            else:
                r = [tuple(i) for i in (q.fetch_many(op[1]) if m is None else m.take(op[1]))]
        except (mqueue.QueueFullError, mqueue.ItemTooLargeError) as e:
            r = type(e).__name__
        st = _stats_tuple(q.stats()) if m is None else m.stats()
        out.append((r, st))
    return out


def _ops_strategy() -> Any:
    from hypothesis import strategies as st

    key = st.sampled_from(["a", "b", "c", b"a", b"b", "é", ""])
    val = st.one_of(st.text(max_size=12), st.binary(max_size=60))
    add = st.tuples(st.just("add"), key, val)
    add_many = st.tuples(st.just("add_many"), st.lists(st.tuples(key, val), max_size=6))
    fetch = st.tuples(st.just("fetch"))
    fetch_many = st.tuples(st.just("fetch_many"), st.integers(1, 5))
    return st.lists(st.one_of(add, add, add_many, fetch, fetch_many), max_size=40)


def test_model_random_ops_vs_deque(backend: Backend) -> None:
    """Random operations on one queue give the results and counters of ``Model``."""
    hyp = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    @hyp.settings(max_examples=60, deadline=None, database=None)
    @hyp.given(
        size=st.sampled_from([0, 1, 3]),
        cap=st.sampled_from([256, 400]),
        mode=st.sampled_from([0, 1, 2]),
        ops=_ops_strategy(),
    )
    def run(size: int, cap: int, mode: int, ops: list[tuple[Any, ...]]) -> None:
        ns = new_namespace()
        mq = mqueue.create(
            ns, [f"name=q;size={size};bytes={cap};addmode={mode}"], url=backend.url
        )
        try:
            q = mq["q"]
            got = _apply(ops, q, None)
            want = _apply(ops, q, Model(size, cap, mode))
            assert got == want
            check_structure(q)
        finally:
            mq.close()
            mqueue.destroy(ns, url=backend.url)
        assert not backend.leftovers(ns)

    run()
