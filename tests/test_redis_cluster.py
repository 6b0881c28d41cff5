"""The Redis backend on a Redis Cluster: what only a cluster has.

The semantic tests of tests/test_semantics.py, tests/test_redis.py and
tests/test_redis_faults.py run on the cluster too (their ``backend`` and
``url`` fixtures have a cluster variant).  Here: the
same URL form reaches a cluster, queues spread over the masters, namespaces
are listed across masters, persistence, and a queue's slot migrated to another
master while a producer and a consumer run.

The cluster is ``MQUEUE_TEST_REDIS_CLUSTER_URL`` (``.ci/services-redis-cluster.sh``
starts a 3-master one); without it these tests skip, except under
``MQUEUE_REQUIRE_SERVICES=1`` (CI), where they fail.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import mqueue

redis = pytest.importorskip("redis")

from conftest import new_namespace, redis_admin, service_url  # noqa: E402

from mqueue import _redis as R  # noqa: E402


@pytest.fixture
def curl() -> str:
    return service_url("cluster")


@pytest.fixture
def cadmin(curl: str) -> Iterator[Any]:
    c = redis_admin(curl)
    assert type(c).__name__ == "RedisCluster"
    yield c
    c.close()


def _node_of(cadmin: Any, key: str) -> str:
    return str(cadmin.get_node_from_key(key).name)


def test_same_url_reaches_a_cluster_and_queues_spread(curl: str, cadmin: Any) -> None:
    ns = new_namespace()
    defs = [f"name=q{i}" for i in range(12)]
    mq = mqueue.create(ns, defs, url=curl)
    try:
        assert mq.is_cluster  # type: ignore[attr-defined]
        nodes = set()
        for q in mq.queues():
            keys = R.queue_keys(ns, q.name)
            assert len({cadmin.keyslot(k) for k in keys}) == 1
            nodes.add(_node_of(cadmin, keys[0]))
            q.add_many([(f"{q.name}.{i}", "v") for i in range(3)])
        assert len(nodes) >= 2, "12 queues all on one master"
        assert mq.sizes() == {f"q{i}": 3 for i in range(12)}
        other = mqueue.attach(ns, url=curl)
        assert other["q5"].fetch() == ("q5.0", "v")
        other.close()
    finally:
        mq.close()
        mqueue.destroy(ns, url=curl)
    assert not list(cadmin.scan_iter(match=f"mqueue:{{{ns}*", count=1000))


def test_list_namespaces_across_masters(curl: str, cadmin: Any) -> None:
    names = [new_namespace() for _ in range(12)]
    made = [mqueue.create(n, ["name=q"], url=curl) for n in names]
    try:
        assert len({_node_of(cadmin, R.defs_key(n)) for n in names}) >= 2
        listed = R.list_namespaces(curl)
        assert set(names) <= set(listed) and len(listed) == len(set(listed))
    finally:
        for mq, n in zip(made, names, strict=True):
            mq.close()
            mqueue.destroy(n, url=curl)
    assert not set(names) & set(R.list_namespaces(curl))


def _migrate_slot(cadmin: Any, slot: int, src: Any, dst: Any) -> int:
    """Move ``slot`` from master ``src`` to master ``dst`` as redis-cli
    --cluster reshard does; returns the number of keys moved."""
    s = cadmin.get_redis_connection(src)
    d = cadmin.get_redis_connection(dst)
    src_id = s.execute_command("CLUSTER", "MYID")
    dst_id = d.execute_command("CLUSTER", "MYID")
    src_id = src_id.decode() if isinstance(src_id, bytes) else src_id
    dst_id = dst_id.decode() if isinstance(dst_id, bytes) else dst_id
    d.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    moved = 0
    while True:
        keys = s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 2)
        if not keys:
            break
        s.execute_command("MIGRATE", dst.host, dst.port, "", 0, 5000, "KEYS", *keys)
        moved += len(keys)
        time.sleep(0.02)  # the migration lasts a while: operations meet it half done
    for node in cadmin.get_primaries():
        cadmin.get_redis_connection(node).execute_command(
            "CLUSTER", "SETSLOT", slot, "NODE", dst_id
        )
    return moved


@pytest.mark.timeout(120)
def test_slot_migration_under_load_exactly_once(
    curl: str, cadmin: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A queue's slot moves to another master (CLUSTER SETSLOT + MIGRATE) while
    a producer and a consumer run: every item arrives exactly once, in order."""
    caplog.set_level(logging.DEBUG, logger="mqueue._redis")
    ns = new_namespace()
    mq = mqueue.create(ns, ["name=q;addmode=2"], url=curl)
    keys = R.queue_keys(ns, "q")
    slot = cadmin.keyslot(keys[0])
    src = cadmin.get_node_from_key(keys[0])
    dst = next(n for n in cadmin.get_primaries() if n.name != src.name)
    n = 4000
    got: list[str] = []
    errors: list[BaseException] = []
    hp = mqueue.attach(ns, url=curl)
    hc = mqueue.attach(ns, url=curl)

    def produce() -> None:
        rnd = random.Random(1)
        i = 0
        try:
            while i < n:
                if rnd.random() < 0.5:
                    hp["q"].add(f"{i:06d}", "v")
                    i += 1
                else:
                    b = min(n - i, rnd.randint(2, 40))
                    hp["q"].add_many([(f"{j:06d}", "v") for j in range(i, i + b)])
                    i += b
                time.sleep(0.0005)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def consume() -> None:
        rnd = random.Random(2)
        try:
            while len(got) < n:
                if rnd.random() < 0.5:
                    it = hc["q"].fetch(timeout=20)
                    assert it is not None
                    got.append(str(it.key))
                else:
                    items = hc["q"].fetch_many(rnd.randint(1, 30), timeout=20)
                    assert items
                    got.extend(str(it.key) for it in items)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=produce), threading.Thread(target=consume)]
    try:
        for t in ts:
            t.start()
        time.sleep(0.3)
        moved = _migrate_slot(cadmin, slot, src, dst)
        for t in ts:
            t.join(90)
        assert not errors, errors
        assert moved >= 2
        # the operations did meet the migration (TRYAGAIN, ASK, MOVED) and retried
        met = [r.getMessage() for r in caplog.records if "retrying" in r.getMessage()
               or "asked" in r.getMessage()]
        assert met, "no operation met the migration"
        assert got == [f"{i:06d}" for i in range(n)]
        cadmin.nodes_manager.initialize()
        assert cadmin.get_node_from_key(keys[0]).name == dst.name
        st = mq["q"].stats()
        assert (st.added, st.fetched, st.length) == (n, n, 0)
        mq["q"]._check()  # type: ignore[attr-defined]
    finally:
        for h in (hp, hc, mq):
            with contextlib.suppress(Exception):
                h.close()
        mqueue.destroy(ns, url=curl)


def test_slot_map_naming_a_dead_master_is_refreshed(curl: str) -> None:
    """After a failover the client's slot map still names the old master, which
    no longer answers, so no MOVED ever comes from it: an operation must read
    the slot map again after a connection fault and reach the new master
    within the retry window (here: the map made to name a closed port)."""
    from redis.cluster import ClusterNode
    from test_redis import _free_port

    ns = new_namespace()
    mq = mqueue.create(ns, ["name=q"], url=curl)
    try:
        q = mq["q"]
        q.add("a", "1")
        client = mq._client  # type: ignore[attr-defined]
        slot = client.keyslot(R.queue_keys(ns, "q")[0])
        dead = ClusterNode("127.0.0.1", _free_port(), server_type="primary")
        client.nodes_manager.slots_cache[slot] = [dead]
        mq.retry_window = 5.0  # type: ignore[attr-defined]
        assert q.add("b", "2") is True
        assert q.fetch_many(5) == [("a", "1"), ("b", "2")]
    finally:
        mq.close()
        mqueue.destroy(ns, url=curl)


def test_cli_on_a_cluster(curl: str, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from mqueue.cli import main

    ns = new_namespace()
    mq = mqueue.create(ns, ["name=a", "name=b", "name=c"], url=curl)
    try:
        mq["b"].add_many([("k", "v")] * 3)
        assert main(["ls", "--url", curl]) == 0
        assert ns in json.loads(capsys.readouterr().out)
        assert main(["get_sizes", ns, "--url", curl]) == 0
        assert json.loads(capsys.readouterr().out) == [
            {"name": "a", "size": 0}, {"name": "b", "size": 3}, {"name": "c", "size": 0}
        ]
        assert main(["fetch", ns, "b", "--url", curl]) == 0
        assert json.loads(capsys.readouterr().out) == {"key": "k", "val": "v"}
    finally:
        mq.close()
        assert main(["destroy", ns, "--url", curl]) == 0
