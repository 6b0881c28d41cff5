"""The Redis backend under faults: lost replies, close() under threads, keys
the server dropped.

Lost replies go through a TCP proxy written here, between the client and
redis-server, that closes the connection after forwarding a request to the
server and before forwarding the server's reply: the server has run the
operation, the client never hears of it.  Operation ids make the client's
retry return the recorded reply instead of running the operation again.

Same servers and skip rules as tests/test_redis.py (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import mqueue

redis = pytest.importorskip("redis")

import test_redis  # noqa: E402
from conftest import new_namespace, redis_admin, service_url  # noqa: E402

from mqueue import _redis as R  # noqa: E402

private_server = test_redis.private_server  # the same fixture: a redis-server of the test's own


# ------------------------------------------------------------ the proxy
class DropProxy:
    """A TCP proxy to a Redis server that loses replies.

    ``mode="once"``: every request chunk it has not seen before is forwarded
    to the server, and when the server's reply comes the connection is closed
    instead of forwarding it.  The client's retry sends the same bytes (same
    operation id), which pass: so every operation loses its first reply once.
    ``mode="random"``: the same for a seeded random fraction ``p`` of the
    chunks.  ``enabled=False`` forwards everything.
    """

    def __init__(self, host: str, port: int, *, mode: str = "once", p: float = 0.1,
                 seed: int = 1) -> None:
        self.target = (host, port)
        self.mode = mode
        self.p = p
        self.rnd = random.Random(seed)
        self.enabled = True
        self.seen: set[int] = set()
        self.drops = 0
        self.lock = threading.Lock()
        self.lsock = socket.socket()
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.stopping = False
        self.threads: list[threading.Thread] = []
        self.socks: list[socket.socket] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def _accept(self) -> None:
        while not self.stopping:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            try:
                s = socket.create_connection(self.target)
            except OSError:
                c.close()
                continue
            for x in (c, s):
                x.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                self.socks += [c, s]
            t = threading.Thread(target=self._pump, args=(c, s), daemon=True)
            t.start()
            self.threads.append(t)

    def _drop_this(self, data: bytes) -> bool:
        with self.lock:
            if not self.enabled:
                return False
            if self.mode == "once":
                h = hash(data)
                if h in self.seen:
                    return False
                self.seen.add(h)
                return True
            return self.rnd.random() < self.p

    def _pump(self, c: socket.socket, s: socket.socket) -> None:
        drop = False
        try:
            while True:
                r, _, _ = select.select([c, s], [], [], 0.2)
                if self.stopping:
                    return
                if c in r:
                    data = c.recv(1 << 16)
                    if not data:
                        return
                    s.sendall(data)
                    drop = drop or self._drop_this(data)
                if s in r:
                    data = s.recv(1 << 16)
                    if not data:
                        return
                    if drop:
                        with self.lock:
                            self.drops += 1
                        return  # the server ran it; the client never hears the reply
                    c.sendall(data)
        except OSError:
            return
        finally:
            for x in (c, s):
                with contextlib.suppress(OSError):
                    x.shutdown(socket.SHUT_RDWR)
                x.close()

    def cut(self) -> None:
        """Shut down every connection it forwards (the client's next use of
        one finds it closed)."""
        with self.lock:
            socks = list(self.socks)
        for x in socks:
            with contextlib.suppress(OSError):
                x.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.stopping = True
        self.lsock.close()
        self.cut()
        for t in self.threads:
            t.join(5)


@pytest.fixture
def single() -> str:
    return service_url("redis")


url = test_redis.url  # the same fixture: one redis-server, and a 3-master cluster


def _key(i: int) -> str:
    return f"{i:09d}"


def _lost_replies_run(server_url: str, n: int, mode: str, seed: int) -> dict[str, int]:
    """A producer and a consumer thread, each with its own handle through the
    proxy, move ``n`` items with a seeded mix of add / add_many and fetch /
    fetch_many.  Returns counts; asserts exactly once and FIFO order."""
    host, port = server_url.split("//")[1].split("/")[0].split(":")
    proxy = DropProxy(host, int(port), mode=mode, seed=seed)
    ns = new_namespace()
    owner = mqueue.create(ns, ["name=q;bytes=256M"], url=server_url)
    errors: list[BaseException] = []
    got: list[str] = []
    ops = {"add": 0, "fetch": 0}
    try:
        proxy.enabled = False  # attach itself is not retried: it reads definitions
        hp = mqueue.attach(ns, url=proxy.url)
        hc = mqueue.attach(ns, url=proxy.url)
        proxy.enabled = True

        def produce() -> None:
            rnd = random.Random(seed)
            q = hp["q"]
            i = 0
            try:
                while i < n:
                    if rnd.random() < 0.5:
                        assert q.add(_key(i), "v" * (i % 50)) is True
                        i += 1
                    else:
                        b = min(n - i, rnd.randint(2, 300))
                        assert q.add_many([(_key(j), b"w") for j in range(i, i + b)]) == b
                        i += b
                    ops["add"] += 1
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        def consume() -> None:
            rnd = random.Random(seed + 1)
            q = hc["q"]
            try:
                while len(got) < n:
                    if rnd.random() < 0.5:
                        it = q.fetch(timeout=30)
                        assert it is not None, "nothing came for 30 s"
                        got.append(str(it.key))
                    else:
                        items = q.fetch_many(rnd.randint(2, 300), timeout=30)
                        assert items, "nothing came for 30 s"
                        got.extend(str(it.key) for it in items)
                    ops["fetch"] += 1
            except BaseException as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=produce), threading.Thread(target=consume)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(600)
        assert not errors, errors
        assert got == [_key(i) for i in range(n)]  # each exactly once, in order
        st = owner["q"].stats()
        assert (st.added, st.fetched, st.length) == (n, n, 0)
        hp.close()
        hc.close()
        return {"drops": proxy.drops, **ops}
    finally:
        proxy.close()
        owner.close()
        mqueue.destroy(ns, url=server_url)


@pytest.mark.timeout(240)
def test_lost_replies_100k_items_exactly_once(single: str) -> None:
    """Every operation loses its first reply (the server ran it): 100,000 items
    through a mix of single and batch adds and fetches arrive exactly once, in
    order, and no exception reaches the caller."""
    r = _lost_replies_run(single, 100_000, "once", seed=11)
    # every operation's first reply was lost at least once
    assert r["drops"] >= r["add"] + r["fetch"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not os.environ.get("MQUEUE_REDIS_LONG"), reason="MQUEUE_REDIS_LONG=1 runs it")
def test_lost_replies_long_random(single: str) -> None:
    """The long variant: 1,000,000 items, a seeded random 10% of replies lost."""
    r = _lost_replies_run(single, 1_000_000, "random", seed=12)
    assert r["drops"] > 0


@pytest.mark.timeout(120)
def test_server_killed_and_restarted_with_aof_exactly_once(
    private_server: Callable[..., tuple[str, Callable[[], None]]],
) -> None:
    """A server with AOF (appendfsync always) SIGKILLed and restarted three
    times while a producer adds and a consumer fetches: operations in flight
    lose their replies, are retried across the restart with the same ids and
    answered from their records; every item arrives once, in order, and no
    exception reaches the caller."""
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    srv, stop = private_server(*aof)
    n = 6000
    mq = mqueue.create("aof", ["name=q;bytes=64M"], url=srv)
    got: list[str] = []
    errors: list[BaseException] = []

    def produce() -> None:
        try:
            for i in range(0, n, 10):
                mq["q"].add_many([(_key(j), "v") for j in range(i, i + 10)])
                time.sleep(0.002)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    def consume() -> None:
        try:
            while len(got) < n:
                it = mq["q"].fetch(timeout=30)
                assert it is not None, "nothing came for 30 s"
                got.append(str(it.key))
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    ts = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in ts:
        t.start()
    for _ in range(3):
        time.sleep(0.4)
        stop()  # SIGKILL
        srv2, stop = private_server(*aof)  # same port, same directory: the AOF is replayed
        assert srv2 == srv
    for t in ts:
        t.join(100)
    try:
        assert not errors, errors
        assert got == [_key(i) for i in range(n)]
        st = mq["q"].stats()
        assert (st.added, st.fetched, st.length) == (n, n, 0)
    finally:
        mq.close()
        mqueue.destroy("aof", url=srv)


def test_fetch_reply_lost_returns_same_items(single: str) -> None:
    """A fetch whose reply was lost: the retry returns the items the server took."""
    host, port = single.split("//")[1].split("/")[0].split(":")
    proxy = DropProxy(host, int(port), mode="once")
    ns = new_namespace()
    owner = mqueue.create(ns, ["name=q"], url=single)
    try:
        owner["q"].add_many([(str(i), "v") for i in range(10)])
        proxy.enabled = False
        h = mqueue.attach(ns, url=proxy.url)
        proxy.enabled = True
        assert h["q"].fetch() == ("0", "v")
        assert [i.key for i in h["q"].fetch_many(3)] == ["1", "2", "3"]
        assert h["q"].add("x", "y") is True
        assert proxy.drops >= 3  # and the handshakes of new connections
        st = owner["q"].stats()
        assert (st.fetched, st.added, st.length) == (4, 11, 7)
        h.close()
    finally:
        proxy.close()
        owner.close()
        mqueue.destroy(ns, url=single)


def test_server_behind_a_proxy_down_says_not_applied(single: str) -> None:
    """Redis behind a TCP proxy (a load balancer, a TLS terminator) whose
    server is down: the proxy accepts each connection and closes it during
    the handshake.  Nothing of an operation was ever sent: BackendError says
    "could not connect" and that it was not applied (outcome_known True),
    for attach as for add and fetch; never "lost the connection ... may or
    may not have been applied"."""
    host, port = single.split("//")[1].split("/")[0].split(":")
    proxy = DropProxy(host, int(port))
    proxy.enabled = False  # forwards everything
    ns = new_namespace()
    owner = mqueue.create(ns, ["name=q"], url=single)
    try:
        owner["q"].add("kept", "v")
        h = mqueue.attach(ns, url=proxy.url)
        h.retry_window = 0.5  # type: ignore[attr-defined]
        assert h["q"].add("a", "1") is True
        proxy.target = ("127.0.0.1", test_redis._free_port())  # the server goes away
        proxy.cut()
        for op in (lambda: h["q"].add("b", "2"), lambda: h["q"].fetch(),
                   lambda: mqueue.attach(ns, url=proxy.url)):
            with pytest.raises(mqueue.BackendError) as ei:
                op()
            msg = str(ei.value)
            assert "could not connect" in msg and "lost the connection" not in msg, msg
            assert "may or may not" not in msg and ei.value.outcome_known is True, msg
        proxy.target = (host, int(port))  # back
        assert h["q"].fetch() == ("kept", "v")  # the failed fetch took nothing
        assert h["q"].fetch() == ("a", "1")
        assert h["q"].fetch() is None  # the failed add added nothing
        st = owner["q"].stats()
        assert (st.added, st.fetched) == (2, 2)
        h.close()
    finally:
        proxy.close()
        owner.close()
        mqueue.destroy(ns, url=single)


# ---------------------------------------------------- close() under threads
def _close_round(url: str, rnd: random.Random, rnd_no: int) -> None:
    ns = new_namespace()
    owner = mqueue.create(ns, ["name=q", "name=empty"], url=url)
    h = mqueue.attach(ns, url=url)
    acked: list[list[str]] = [[], []]
    delivered: list[list[str]] = [[], []]
    errs: list[BaseException] = []
    woke: list[float] = []
    lock = threading.Lock()

    def producer(k: int) -> None:
        q = h["q"]
        i = 0
        try:
            while True:
                if i % 3:
                    keys = [f"{k}.{i}.{j}" for j in range(rnd.randint(1, 20))]
                    q.add_many([(x, "v") for x in keys])
                    acked[k].extend(keys)
                else:
                    q.add(f"{k}.{i}", "v")
                    acked[k].append(f"{k}.{i}")
                i += 1
        except BaseException as e:  # noqa: BLE001
            with lock:
                errs.append(e)

    def consumer(k: int) -> None:
        q = h["q"]
        try:
            while True:
                if k:
                    delivered[k].extend(str(it.key) for it in q.fetch_many(7, timeout=0.05))
                else:
                    it = q.fetch(timeout=0.05)
                    if it is not None:
                        delivered[k].append(str(it.key))
        except BaseException as e:  # noqa: BLE001
            with lock:
                errs.append(e)

    def blocked() -> None:
        try:
            h["empty"].fetch(timeout=None)
        except BaseException as e:  # noqa: BLE001
            woke.append(time.monotonic())
            with lock:
                errs.append(e)

    ts = [threading.Thread(target=producer, args=(k,)) for k in (0, 1)]
    ts += [threading.Thread(target=consumer, args=(k,)) for k in (0, 1)]
    ts.append(threading.Thread(target=blocked))
    for t in ts:
        t.start()
    time.sleep(rnd.uniform(0.05, 0.4))
    t_close = time.monotonic()
    h.close()
    for t in ts:
        t.join(15)
    assert not any(t.is_alive() for t in ts), f"round {rnd_no}: a thread hangs"
    assert len(errs) == 5
    for e in errs:
        assert isinstance(e, mqueue.MQueueError), f"round {rnd_no}: {e!r}"
        assert "closed" in str(e), f"round {rnd_no}: {e!r}"
    assert woke and woke[0] - t_close < 2.0
    left = [str(it.key) for it in owner["q"].fetch_many(10**6)]
    st = owner["q"].stats()
    got = delivered[0] + delivered[1]
    # 0 lost: every item the server counted as fetched reached a caller
    assert st.fetched == len(got) + len(left), f"round {rnd_no}"
    # every acknowledged add is there exactly once, and nothing else
    assert sorted(got + left) == sorted(acked[0] + acked[1]), f"round {rnd_no}"
    assert st.added == len(acked[0]) + len(acked[1])
    owner.close()
    mqueue.destroy(ns, url=url)


@pytest.mark.timeout(240)
def test_close_under_threads_loses_nothing(url: str) -> None:
    """close() while producers, consumers and a blocked fetch use the handle:
    they get MQueueError kinds (never ValueError/AttributeError), the blocked
    one wakes at once, every item the server gave out was delivered, and every
    add that returned was applied exactly once (one that raised was not)."""
    rnd = random.Random(5)
    for rnd_no in range(12):
        _close_round(url, rnd, rnd_no)


# ------------------------------------------------ keys the server dropped
def test_deleted_records_reported_lost(url: str) -> None:
    admin = redis_admin(url)
    ns = new_namespace()
    mq = mqueue.create(ns, ["name=q", "name=d;addmode=1", "name=e"], url=url)
    try:
        q, d = mq["q"], mq["d"]
        q.add_many([(str(i), "v" * 100) for i in range(50)])
        d.add_many([(str(i), "v") for i in range(5)])
        admin.delete(R.queue_keys(ns, "q")[1])  # the records, as an eviction would
        admin.delete(R.queue_keys(ns, "d")[2])  # the key index of an addmode-1 queue
        for op in (lambda: q.fetch(), lambda: q.add("k", "v"), lambda: len(q),
                   lambda: q.stats(), lambda: q.fetch_many(3), lambda: mq.sizes(),
                   lambda: d.add("0", "dup"), lambda: d.stats()):
            with pytest.raises(R.NamespaceLostError, match="dropped") as ei:
                op()
            assert "byte" not in str(ei.value)
        # the other queue is unaffected; an empty queue's missing records are fine
        mq["e"].add("a", "b")
        assert mq["e"].fetch() == ("a", "b")
    finally:
        admin.close()
        mq.close()
        mqueue.destroy(ns, url=url)


def test_attach_to_a_namespace_with_dropped_keys_says_lost(url: str) -> None:
    """attach (and create(exist_ok=True)) on a namespace one of whose queues
    lost keys to the server: NamespaceLostError saying so, as every operation
    on that queue does; not a damaged-namespace error about "another
    incarnation"."""
    admin = redis_admin(url)
    ns = new_namespace()
    defs = ["name=q", "name=m"]
    mq = mqueue.create(ns, defs, url=url)
    try:
        mq["q"].add_many([(str(i), "v") for i in range(5)])
        admin.delete(R.queue_keys(ns, "q")[1])  # the records, as an eviction would
        with pytest.raises(R.NamespaceLostError, match="dropped"):
            mq["q"].fetch()  # marks the queue lost for good
        for again in (lambda: mqueue.attach(ns, url=url),
                      lambda: mqueue.create(ns, defs, url=url, exist_ok=True)):
            with pytest.raises(R.NamespaceLostError, match="'q'.*dropped"):
                again()
        admin.delete(R.queue_keys(ns, "q")[0], R.queue_keys(ns, "m")[0])  # meta hashes too
        with pytest.raises(R.NamespaceLostError, match="'q'.*gone"):
            mqueue.attach(ns, url=url)
    finally:
        admin.close()
        mq.close()
        mqueue.destroy(ns, url=url)


@pytest.mark.timeout(120)
def test_real_eviction_reported_lost(
    private_server: Callable[..., tuple[str, Callable[[], None]]],
) -> None:
    """A real redis-server with a small maxmemory and allkeys-random: once it
    evicts a queue's keys, every operation on that queue says it is lost
    (never a Lua error, never counts of items that no longer exist)."""
    srv, _ = private_server("--maxmemory", "3mb", "--maxmemory-policy", "allkeys-random")
    admin = redis.Redis.from_url(srv)
    lost = 0
    for attempt in range(20):
        ns = f"evict{attempt}"
        mq = mqueue.create(ns, ["name=q;bytes=64M"], url=srv)
        q = mq["q"]
        errors: list[BaseException] = []
        for i in range(400):
            try:
                q.add_many([(f"{i}.{j}", "x" * 1000) for j in range(20)])
            except mqueue.MQueueError as e:
                errors.append(e)
                break
        if errors:
            # only ever "lost", and it stays so for every operation
            assert isinstance(errors[0], R.NamespaceLostError), repr(errors[0])
            assert "byte" not in str(errors[0])
            for name, args in (("fetch", ()), ("add", ("k", "v")), ("__len__", ()),
                               ("stats", ()), ("fetch_many", (5,))):
                with pytest.raises(R.NamespaceLostError):
                    getattr(q, name)(*args)
            lost += 1
        mq.close()
        with contextlib.suppress(FileNotFoundError):
            mqueue.destroy(ns, url=srv)
        if lost >= 3:
            break
    assert int(admin.info("stats")["evicted_keys"]) > 0
    assert lost >= 1
    admin.close()


# ------------------------------------- exceptions from signal handlers
class Boom(Exception):
    pass


@pytest.mark.parametrize("where", ["reply", "decode", "settle"])
def test_exception_after_the_server_took_items_loses_nothing(
    url: str, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception (a signal handler's) raised after the server took items but
    before the caller has them: while the reply is read, while it is decoded,
    or while the cut-short take is being settled.  The items come back, in
    order, exactly once, at the next fetch of the thread."""
    ns = new_namespace()
    mq = mqueue.create(ns, ["name=q"], url=url)
    q = mq["q"]
    try:
        q.add_many([(f"k{i}", f"v{i}") for i in range(8)])
        assert q.fetch() == ("k0", "v0")
        armed = [1]
        if where == "reply":
            from redis.connection import AbstractConnection

            real = AbstractConnection.read_response

            def read(self: Any, *a: Any, **kw: Any) -> Any:
                r = real(self, *a, **kw)
                if armed and isinstance(r, list):
                    armed.clear()
                    raise Boom
                return r

            monkeypatch.setattr(AbstractConnection, "read_response", read)
        elif where == "decode":
            real_dec = R._decode_record

            def dec(r: bytes) -> Any:
                if armed:
                    armed.clear()
                    raise Boom
                return real_dec(r)

            monkeypatch.setattr(R, "_decode_record", dec)
        else:
            from redis.connection import AbstractConnection

            real = AbstractConnection.read_response
            real_dec = R._decode_record
            calls = [0]

            def read2(self: Any, *a: Any, **kw: Any) -> Any:
                r = real(self, *a, **kw)
                if isinstance(r, list) and len(armed) == 1:
                    armed.append(2)
                    raise Boom  # the take's reply: cut short
                return r

            def dec2(r: bytes) -> Any:
                calls[0] += 1
                if len(armed) == 2:  # first decode of the settled items
                    armed.append(3)
                    raise Boom
                return real_dec(r)

            monkeypatch.setattr(AbstractConnection, "read_response", read2)
            monkeypatch.setattr(R, "_decode_record", dec2)
        with pytest.raises(Boom):
            q.fetch_many(3)
        if where == "settle":
            with pytest.raises(Boom):
                q.fetch()  # the settling is cut short too
        monkeypatch.undo()
        got = [q.fetch()]
        while True:
            more = q.fetch_many(10)  # kept items first, then the queue
            if not more:
                break
            got += more
        assert [tuple(i) for i in got if i is not None] == [(f"k{i}", f"v{i}") for i in range(1, 8)]
        st = q.stats()
        assert (st.fetched, st.length) == (8, 0)
    finally:
        mq.close()
        mqueue.destroy(ns, url=url)


@pytest.mark.timeout(180)
def test_signal_handler_exceptions_at_random_never_duplicate(url: str) -> None:
    """A signal handler raises at random instants in fetch / fetch_many: only
    that exception reaches the caller, no item is delivered twice, order is
    kept, and the server's counters balance.  (An exception that lands after a
    call returned, in the caller's own code, can of course drop what it was
    given: the exact guarantee is the deterministic test above.)

    It runs in a forked child: an exception raised at a random instant can land
    inside any library's code (logging's module lock, redis-py's pool) and
    leave a lock held for good, which would hang later tests of this worker."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    child = ctx.Process(target=_random_booms_child, args=(url, errors))
    child.start()
    child.join(170)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the child did not finish in 170 s")
    err = None if errors.empty() else errors.get()
    assert err is None, err
    assert child.exitcode == 0


def _random_booms_child(url: str, errors: Any) -> None:
    """The body of the test above, in the child; reports a failure on ``errors``."""
    try:
        _random_booms(url)
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        errors.put(f"{type(e).__name__}: {e}")


def _random_booms(url: str) -> None:
    n = 3000
    ns = new_namespace()
    mq = mqueue.create(ns, ["name=q"], url=url)
    rnd = random.Random(9)
    booms = 0

    def handler(signum: int, frame: Any) -> None:
        raise Boom

    old = signal.signal(signal.SIGALRM, handler)
    got: list[str] = []
    q = mq["q"]
    try:
        added = 0

        def add_round() -> None:  # more items until enough exceptions landed
            nonlocal added
            q.add_many([(f"{i:06d}", "v" * (i % 30)) for i in range(added, added + n)])
            added += n

        add_round()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                try:
                    signal.setitimer(signal.ITIMER_REAL, rnd.uniform(0.00005, 0.002))
                    r = [q.fetch()] if rnd.random() < 0.5 else q.fetch_many(rnd.randint(1, 9))
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                if r and r[0] is not None:
                    got.extend(str(it.key) for it in r)
                elif len(q) == 0:
                    if booms > 20 or added >= 10 * n:
                        break
                    add_round()
            except Boom:
                booms += 1
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    try:
        info = f"booms={booms} delivered={len(got)} of {added}"
        assert booms > 20, info
        assert len(got) == len(set(got)) and got == sorted(got), info  # never twice, in order
        assert len(got) >= added // 2, info  # the loss windows are in this loop's own code
        st = q.stats()
        assert (st.fetched, st.length) == (added, 0), info
    finally:
        mq.close()
        mqueue.destroy(ns, url=url)


# ------------------------------------------------------- metrics with a hung server
def test_metrics_with_a_server_that_does_not_answer(
    private_server: Callable[..., tuple[str, Callable[[], None]]],
) -> None:
    """A Redis server that accepts but never answers (stopped: SIGSTOP, a network
    partition): a scrape of ``serve-metrics`` or a ``top`` refresh gives up listing
    the namespaces after its deadline (the client's own socket timeout is 30 s,
    longer than Prometheus's scrape timeout and than ``q`` may take to quit ``top``),
    does not start a second listing while the first still waits, and lists again
    once the server answers."""
    from mqueue import _metrics

    url, _stop = private_server()
    ns = new_namespace()
    mqueue.create(ns, ["name=q"], url=url).close()
    client = redis.Redis.from_url(url)
    pid = int(client.info("server")["process_id"])
    client.close()
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"more than 1 s"):
            _metrics.collect(url=url, timeout=1.0)
        with pytest.raises(TimeoutError, match="still waiting"):
            _metrics.collect(url=url, timeout=1.0)
        (named,) = _metrics.collect([ns], url=url, timeout=1.0)  # no listing: down, at once
        assert not named.up
        assert time.monotonic() - t0 < 10
    finally:
        os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 60
    while True:  # the stuck listing returns (or fails), then the namespaces are listed
        try:
            samples = _metrics.collect(url=url, timeout=5.0)
            break
        except TimeoutError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert [(s.namespace, s.up) for s in samples] == [(ns, True)]
    mqueue.destroy(ns, url=url)
