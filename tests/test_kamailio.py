"""mqueue.kamailio: modparams and the return-code tables of SPEC.md sections 2 and 4."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import destroy_quietly

import mqueue
from mqueue import kamailio
from mqueue._errors import DefinitionError, MQueueError, QueueNotFoundError, RPCError


def make(ns: str, *params: tuple[str, object]) -> kamailio.MQueueModule:
    m = kamailio.MQueueModule()
    for name, value in params:
        m.modparam(name, value)
    m.init(ns)
    return m


@pytest.fixture
def m(ns: str) -> Iterator[kamailio.MQueueModule]:
    """A module with a plain queue, a bounded one, addmode 1 and 2 queues, a tiny one."""
    mod = make(
        ns,
        ("mqueue", "name=q"),
        ("mqueue", "name=b;size=2"),
        ("mqueue", "name=a1;addmode=1"),
        ("mqueue", "name=a2;addmode=2"),
        ("mqueue", "name=tiny;bytes=256"),
    )
    try:
        yield mod
    finally:
        mod.close()


def drain(m: kamailio.MQueueModule, q: str) -> list[tuple[object, object]]:
    out = []
    while m.mq_fetch(q) == 1:
        out.append((m.pv(f"$mqk({q})"), m.pv(f"$mqv({q})")))
    return out


# --------------------------------------------------------------------- modparam


def test_modparam_mqueue_parses_now() -> None:
    mod = kamailio.MQueueModule()
    mod.modparam("mqueue", "name=myq;size=20;")
    mod.modparam("mqueue", "NAME = 'q 1' ; SiZe = 2 ; addmode=2")
    assert [(d.name, d.size, d.addmode) for d in mod.definitions] == [
        ("myq", 20, 0),
        ("q 1", 2, 2),
    ]


@pytest.mark.parametrize(
    "text",
    [
        "name=q1;;size=2",
        "name=q1;foo=1",
        "size=2",
        "name=",
        "",
        "name=q1 size=2",
        "name=q1,size=2",
        "name=q1;size=abc",
        "name=q1;size=2x",
        "name=q1;name=q2",
        "name=q1;addmode=3",
        "name=q1;dbmode=4",
    ],
)
def test_modparam_mqueue_rejects_bad_strings_immediately(text: str) -> None:
    mod = kamailio.MQueueModule()
    with pytest.raises(DefinitionError):
        mod.modparam("mqueue", text)
    assert mod.definitions == []


def test_modparam_name_defined_twice() -> None:
    mod = kamailio.MQueueModule()
    mod.modparam("mqueue", "name=q1")
    with pytest.raises(DefinitionError, match="twice"):
        mod.modparam("mqueue", "name=q1;size=3")
    with pytest.raises(DefinitionError, match="twice"):
        mod.modparam("mqueue_name", "q1")
    mod.modparam("mqueue_name", "q2")
    with pytest.raises(DefinitionError, match="twice"):
        mod.modparam("mqueue", "name=q2")
    assert [d.name for d in mod.definitions] == ["q1", "q2"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("nosuch", "x"),
        ("Mqueue", "name=q"),
        ("mqueue", 5),
        ("mqueue_name", None),
        ("mqueue_name", ""),
        ("mqueue_size", "abc"),
        ("mqueue_size", 1.5),
        ("mqueue_size", True),
        ("mqueue_addmode", 3),
        ("mqueue_addmode", -1),
        ("db_url", ""),
        ("db_url", 42),
    ],
)
def test_modparam_rejects(name: str, value: object) -> None:
    mod = kamailio.MQueueModule()
    with pytest.raises(DefinitionError):
        mod.modparam(name, value)


def test_mqueue_name_is_not_parsed_and_uses_earlier_values_only() -> None:
    mod = kamailio.MQueueModule()
    mod.modparam("mqueue_name", "first")
    mod.modparam("mqueue_size", 2)
    mod.modparam("mqueue_addmode", 1)
    mod.modparam("mqueue_name", "q1;size=3")
    mod.modparam("mqueue_size", 7)  # after: applies to later mqueue_name lines only
    mod.modparam("mqueue_addmode", 2)
    mod.modparam("mqueue_name", "last")
    got = [(d.name, d.size, d.addmode, d.dbmode) for d in mod.definitions]
    assert got == [("first", 0, 0, 0), ("q1;size=3", 2, 1, 0), ("last", 7, 2, 0)]


def test_mqueue_name_queues_behave_as_defined(ns: str) -> None:
    mod = make(
        ns,
        ("mqueue_size", 2),
        ("mqueue_addmode", 1),
        ("mqueue_name", "q1;size=3"),
        ("mqueue_size", 100),
    )
    try:
        q = "q1;size=3"
        assert mod.mq_add(q, "a", "1") == 1
        assert mod.mq_add(q, "a", "dup") == 1  # addmode 1: new one dropped
        assert mod.mq_add(q, "b", "2") == 1
        assert mod.mq_add(q, "c", "3") == 1  # size 2: oldest dropped
        assert mod.mq_size(q) == 2
        assert drain(mod, q) == [("b", "2"), ("c", "3")]
        assert mod.mq_size("q1") == -2
    finally:
        mod.close()


def test_dbmode_without_db_url_rejected_at_init(ns: str) -> None:
    mod = kamailio.MQueueModule()
    mod.modparam("mqueue", "name=q;dbmode=1")  # db_url may still come later
    with pytest.raises(DefinitionError, match="db_url"):
        mod.init(ns)
    assert mod.namespace is None
    with pytest.raises(FileNotFoundError):
        mqueue.attach(ns)


def test_dbmode_with_db_url_before_or_after_is_accepted() -> None:
    before = kamailio.MQueueModule()
    before.modparam("db_url", "sqlite:///x.db")
    before.modparam("mqueue", "name=q;dbmode=3")
    after = kamailio.MQueueModule()
    after.modparam("mqueue", "name=q;dbmode=2")
    after.modparam("db_url", "sqlite:///x.db")
    assert before.definitions[0].dbmode == 3
    assert after.definitions[0].dbmode == 2
    assert after.db_url == "sqlite:///x.db"


def test_dbmode_round_trip_through_init_and_close(ns: str, tmp_path: object) -> None:
    pytest.importorskip("mqueue._persist")
    url = f"sqlite:///{tmp_path}/mq.db"
    mod = make(ns, ("mqueue", "name=p;dbmode=1"), ("db_url", url))
    assert mod.mq_add("p", "k1", "v1") == 1
    assert mod.mq_add("p", "", "") == 1
    mod.close()
    destroy_quietly(ns)
    mod2 = make(ns, ("db_url", url), ("mqueue", "name=p;dbmode=1"))
    try:
        assert drain(mod2, "p") == [("k1", "v1"), ("", "")]
    finally:
        mod2.close()


def test_modparam_after_init_refused(m: kamailio.MQueueModule) -> None:
    with pytest.raises(MQueueError):
        m.modparam("mqueue", "name=late")


def test_init_twice_refused(m: kamailio.MQueueModule, ns: str) -> None:
    with pytest.raises(MQueueError):
        m.init(ns)


# ------------------------------------------------------------------------ mq_add


def test_mq_add_codes(m: kamailio.MQueueModule) -> None:
    assert m.mq_add("q", "alice", "call from bob") == 1
    assert m.mq_add("nosuch", "k", "v") == -1
    assert m.mq_add("Q", "k", "v") == -1  # names are case-sensitive
    assert m.mq_size("q") == 1


def test_mq_add_failure_is_minus_one(m: kamailio.MQueueModule) -> None:
    assert m.mq_add("tiny", "k", "x" * 10_000) == -1  # larger than the whole queue
    assert m.mq_size("tiny") == -1
    # a queue with no count bound that is full in bytes: -1, nothing dropped
    n = 0
    while m.mq_add("tiny", f"k{n}", "v" * 20) == 1:
        n += 1
        assert n < 1000
    assert n > 0
    assert m.mq_size("tiny") == n
    assert m.pv("$mqk(tiny)") is None


def test_mq_add_wrong_type_raises(m: kamailio.MQueueModule) -> None:
    with pytest.raises(TypeError):
        m.mq_add("q", 1, "v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        m.mq_add("q", "k", None)  # type: ignore[arg-type]
    assert m.mq_size("q") == -1


def test_mq_add_bounded_drops_oldest(m: kamailio.MQueueModule) -> None:
    for i in range(5):
        assert m.mq_add("b", f"k{i}", f"v{i}") == 1
    assert m.mq_size("b") == 2
    assert drain(m, "b") == [("k3", "v3"), ("k4", "v4")]


def test_mq_add_addmode_1_keeps_old(m: kamailio.MQueueModule) -> None:
    assert m.mq_add("a1", "k", "old") == 1
    assert m.mq_add("a1", "x", "x") == 1
    assert m.mq_add("a1", "k", "new") == 1  # dropped, still success
    assert m.mq_add("a1", b"k", "bytes") == 1  # same key by its bytes
    assert m.mq_size("a1") == 2
    assert drain(m, "a1") == [("k", "old"), ("x", "x")]


def test_mq_add_addmode_2_replaces_and_moves_to_tail(m: kamailio.MQueueModule) -> None:
    assert m.mq_add("a2", "k", "old") == 1
    assert m.mq_add("a2", "x", "x") == 1
    assert m.mq_add("a2", "k", "new") == 1
    assert m.mq_size("a2") == 2
    assert drain(m, "a2") == [("x", "x"), ("k", "new")]


def test_addmode_ignores_held_items(m: kamailio.MQueueModule) -> None:
    assert m.mq_add("a1", "k", "v1") == 1
    assert m.mq_fetch("a1") == 1  # "k" is now held, not queued
    assert m.mq_add("a1", "k", "v2") == 1
    assert m.mq_size("a1") == 1
    assert m.pv("$mqv(a1)") == "v1"
    assert drain(m, "a1") == [("k", "v2")]


# ---------------------------------------------------------------------- mq_fetch


def test_mq_fetch_codes_and_held_item(m: kamailio.MQueueModule) -> None:
    assert m.pv("$mqk(q)") is None and m.pv("$mqv(q)") is None
    m.mq_add("q", "k1", "v1")
    m.mq_add("q", "k2", "v2")
    assert m.mq_fetch("q") == 1
    assert (m.pv("$mqk(q)"), m.pv("$mqv(q)")) == ("k1", "v1")
    assert m.mq_fetch("nosuch") == -1
    assert (m.pv("$mqk(q)"), m.pv("$mqv(q)")) == ("k1", "v1")  # untouched
    assert m.mq_fetch("q") == 1  # releases k1, holds k2
    assert (m.pv("$mqk(q)"), m.pv("$mqv(q)")) == ("k2", "v2")
    assert m.mq_fetch("q") == -2  # empty: held item cleared
    assert m.pv("$mqk(q)") is None and m.pv("$mqv(q)") is None
    assert m.mq_fetch("q") == -2


def test_held_items_are_per_queue(m: kamailio.MQueueModule) -> None:
    m.mq_add("q", "kq", "vq")
    m.mq_add("b", "kb", "vb")
    assert m.mq_fetch("q") == 1 and m.mq_fetch("b") == 1
    assert m.mq_fetch("b") == -2
    assert m.pv("$mqk(b)") is None
    assert m.pv("$mqk(q)") == "kq"


def test_empty_and_bytes_items(m: kamailio.MQueueModule) -> None:
    assert m.mq_add("q", "", "") == 1
    assert m.mq_add("q", b"\x00\xff", b"") == 1
    assert m.mq_fetch("q") == 1
    assert m.pv("$mqk(q)") == "" and m.pv("$mqv(q)") == ""
    assert m.mq_fetch("q") == 1
    assert m.pv("$mqk(q)") == b"\x00\xff" and m.pv("$mqv(q)") == b""


# ------------------------------------------------------------ mq_pv_free, mq_size


def test_mq_pv_free_always_one(m: kamailio.MQueueModule) -> None:
    assert m.mq_pv_free("q") == 1  # nothing held
    assert m.mq_pv_free("nosuch") == 1  # unknown queue
    m.mq_add("q", "k", "v")
    assert m.mq_fetch("q") == 1
    assert m.mq_pv_free("q") == 1
    assert m.pv("$mqk(q)") is None and m.pv("$mqv(q)") is None
    assert m.mq_pv_free("q") == 1


def test_mq_size_codes(m: kamailio.MQueueModule) -> None:
    assert m.mq_size("q") == -1
    assert m.mq_size("nosuch") == -2
    m.mq_add("q", "k1", "v")
    m.mq_add("q", "k2", "v")
    assert m.mq_size("q") == 2
    assert m.mq_fetch("q") == 1
    assert m.mq_size("q") == 1  # the held item is not counted
    assert m.mq_fetch("q") == 1
    assert m.mq_size("q") == -1


# --------------------------------------------------------------------------- pv


def test_pv_mq_size(m: kamailio.MQueueModule) -> None:
    assert m.pv("$mq_size(q)") == 0
    m.mq_add("q", "k", "v")
    assert m.pv("$mq_size(q)") == 1
    assert m.pv(" $mq_size(q) ") == 1


def test_pv_unknown_queue_is_keyerror(m: kamailio.MQueueModule) -> None:
    for name in ("$mqk(nosuch)", "$mqv(nosuch)", "$mq_size(nosuch)"):
        with pytest.raises(KeyError):
            m.pv(name)
        with pytest.raises(QueueNotFoundError):
            m.pv(name)


@pytest.mark.parametrize(
    "name", ["$mqk", "mqk(q)", "$mqk()", "$foo(q)", "$mqk(q", "$mqx(q)", "", "$mq_size[q]"]
)
def test_pv_malformed_is_valueerror(m: kamailio.MQueueModule, name: str) -> None:
    with pytest.raises(ValueError):
        m.pv(name)


def test_pv_queue_name_with_parentheses(ns: str) -> None:
    mod = make(ns, ("mqueue_name", "a(b)"))
    try:
        mod.mq_add("a(b)", "k", "v")
        assert mod.pv("$mq_size(a(b))") == 1
    finally:
        mod.close()


# -------------------------------------------------------------------------- rpc


def test_rpc_get_size_and_sizes(m: kamailio.MQueueModule) -> None:
    m.mq_add("q", "k", "v")
    m.mq_add("b", "k", "v")
    m.mq_add("b", "k2", "v")
    assert m.rpc("mqueue.get_size", "q") == {"name": "q", "size": 1}
    # Kamailio lists the queues newest-defined first (its list is built by prepending)
    assert m.rpc("mqueue.get_sizes") == [
        {"name": "tiny", "size": 0},
        {"name": "a2", "size": 0},
        {"name": "a1", "size": 0},
        {"name": "b", "size": 2},
        {"name": "q", "size": 1},
    ]
    # the Pythonic view keeps definition order
    assert list(m._require().sizes()) == ["q", "b", "a1", "a2", "tiny"]


def test_rpc_get_sizes_order_includes_mqueue_name_queues(ns: str) -> None:
    mod = make(
        ns,
        ("mqueue", "name=first"),
        ("mqueue_name", "second"),
        ("mqueue", "name=third;size=3"),
    )
    try:
        assert [r["name"] for r in mod.rpc("mqueue.get_sizes")] == ["third", "second", "first"]
    finally:
        mod.close()


def test_rpc_fetch_does_not_touch_held_item(m: kamailio.MQueueModule) -> None:
    m.mq_add("q", "k1", "v1")
    m.mq_add("q", "", "")
    m.mq_add("q", "k3", "v3")
    assert m.mq_fetch("q") == 1
    assert m.rpc("mqueue.fetch", "q") == {"key": "", "val": ""}  # not lost
    assert m.pv("$mqk(q)") == "k1"
    assert m.rpc("mqueue.fetch", "q") == {"key": "k3", "val": "v3"}
    assert m.pv("$mqv(q)") == "v1"
    with pytest.raises(RPCError) as ei:
        m.rpc("mqueue.fetch", "q")
    assert (ei.value.code, ei.value.message) == (404, "Empty queue")
    assert m.pv("$mqk(q)") == "k1"


def rpc_error(m: kamailio.MQueueModule, method: str, *args: object) -> tuple[int, str]:
    with pytest.raises(RPCError) as ei:
        m.rpc(method, *args)
    return ei.value.code, ei.value.message


def test_rpc_no_such_queue(m: kamailio.MQueueModule) -> None:
    assert rpc_error(m, "mqueue.get_size", "nosuch") == (404, "No such queue")
    # Kamailio answers 500 here; 404 is our deliberate fix (SPEC.md section 4)
    assert rpc_error(m, "mqueue.fetch", "nosuch") == (404, "No such queue")


# Kamailio 5.6's answers over jsonrpcs, checked against the real server (and by
# tests/test_kamailio_real.py wherever kamailio is installed).
@pytest.mark.parametrize(
    ("method", "args", "answer"),
    [
        ("mqueue.get_size", (), (400, "No queue name")),
        ("mqueue.fetch", (), (500, "No queue name")),
        ("mqueue.get_size", (5,), (400, "No queue name")),
        ("mqueue.fetch", (5,), (500, "No queue name")),
        ("mqueue.get_size", (None,), (400, "No queue name")),
        ("mqueue.fetch", (True,), (500, "No queue name")),
        ("mqueue.get_size", ([1],), (400, "No queue name")),
        ("mqueue.fetch", ({"a": 1},), (500, "No queue name")),
        ("mqueue.get_size", (1.5,), (400, "No queue name")),
        ("mqueue.get_size", ("",), (400, "Invalid queue name")),
        ("mqueue.fetch", ("",), (500, "Invalid queue name")),
        ("mqueue.fetch", ("q",), (404, "Empty queue")),
        ("mqueue.nosuch", (), (500, "Method Not Found")),
        ("mqueue.get_size", ("nosuch", "extra"), (404, "No such queue")),
    ],
)
def test_rpc_errors_as_kamailio(
    m: kamailio.MQueueModule, method: str, args: tuple[object, ...], answer: tuple[int, str]
) -> None:
    assert rpc_error(m, method, *args) == answer


def test_rpc_extra_parameters_are_ignored(m: kamailio.MQueueModule) -> None:
    m.mq_add("q", "k1", "v1")
    m.mq_add("q", "k2", "v2")
    assert m.rpc("mqueue.get_size", "q", "extra", 5) == {"name": "q", "size": 2}
    assert m.rpc("mqueue.fetch", "q", "extra") == {"key": "k1", "val": "v1"}
    assert m.rpc("mqueue.get_sizes", "q", 7)[-1] == {"name": "q", "size": 1}


def test_not_initialised() -> None:
    mod = kamailio.MQueueModule()
    mod.modparam("mqueue", "name=q")
    with pytest.raises(MQueueError):
        mod.mq_add("q", "k", "v")
    with pytest.raises(MQueueError):
        mod.pv("$mqk(q)")
    with pytest.raises(RPCError) as ei:
        mod.rpc("mqueue.get_sizes")
    assert ei.value.code == 500
    mod.close()  # harmless


def test_close_is_idempotent_and_context_manager(ns: str) -> None:
    with make(ns, ("mqueue", "name=q")) as mod:
        assert mod.namespace == ns
        assert "q" in repr(mod) or ns in repr(mod)
        assert mod.mq_add("q", "k", "v") == 1
    assert mod.namespace is None
    mod.close()
    with pytest.raises(MQueueError):
        mod.mq_size("q")
    # the queues outlive the module's handle
    other = kamailio.MQueueModule()
    other.attach(ns)
    try:
        assert other.mq_size("q") == 1
    finally:
        other.close()


# ---------------------------------------------------------------- other processes


def _child_fetch(mod: kamailio.MQueueModule, conn: object) -> None:
    rc = mod.mq_fetch("q")
    conn.send((rc, mod.pv("$mqk(q)")))  # type: ignore[attr-defined]


def test_held_items_are_per_process_after_fork(m: kamailio.MQueueModule) -> None:
    m.mq_add("q", "k1", "v1")
    m.mq_add("q", "k2", "v2")
    assert m.mq_fetch("q") == 1
    ctx = mp.get_context("fork")
    parent_conn, child_conn = ctx.Pipe()
    p = ctx.Process(target=_child_fetch, args=(m, child_conn))
    p.start()
    try:
        assert parent_conn.poll(30)
        assert parent_conn.recv() == (1, "k2")
    finally:
        p.join(30)
    assert p.exitcode == 0
    assert m.pv("$mqk(q)") == "k1"  # another process's fetch never changes it
    assert m.mq_size("q") == -1


def test_attach_from_separate_program(m: kamailio.MQueueModule) -> None:
    ns = m.namespace
    code = (
        "import sys\n"
        "from mqueue import kamailio\n"
        "m = kamailio.MQueueModule()\n"
        "m.attach(sys.argv[1])\n"
        "assert m.mq_add('q', 'from', 'child') == 1\n"
        "assert m.mq_fetch('nosuch') == -1\n"
        "print(m.mq_size('q'))\n"
        "m.close()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(ns)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "1"
    assert m.mq_fetch("q") == 1
    assert (m.pv("$mqk(q)"), m.pv("$mqv(q)")) == ("from", "child")
