"""Persistence never loses or doubles an item (issue 9, items 1-4 and 7).

* a creator SIGKILLed at any instant of its save (timed, and at each step of the
  protocol: reserved, committed, settled): afterwards every item is in the queue
  or in the table, exactly once, in order;
* a lost reply to COMMIT (a TCP proxy written here forwards COMMIT to PostgreSQL
  and drops the client's connection before the reply): resolved by asking the
  database, never guessed; and when the database cannot be asked, the items stay
  reserved until a later resolution;
* a load killed at each step, a load refused by the queue, a worker attached
  during a failing load: all or nothing, invisible before it is decided;
* ``stats().added`` after a failed save; a ``str`` with a lone surrogate;
* the command line's fetch when its output cannot be written.

SQLite and PostgreSQL (``MQUEUE_TEST_PG_URL``), as tests/test_persist.py.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import test_persist
from test_persist import PG_URL, Raw, _pg_problem

import mqueue
from mqueue import _persist
from mqueue._errors import PersistenceError

REPO = Path(__file__).resolve().parent.parent
db = test_persist.db  # the same fixture: every test taking it runs on SQLite and PostgreSQL


ns = test_persist.ns  # the same fixture: destroyed at teardown, nothing left in /dev/shm


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def items(n: int, tag: str = "i") -> list[tuple[str, str]]:
    return [(f"{tag}{i}", f"v{i}-" + "x" * 20) for i in range(n)]


def drain(q: Any) -> list[tuple[Any, Any]]:
    out: list[tuple[Any, Any]] = []
    while batch := q.fetch_many(100_000, timeout=0):
        out += [tuple(i) for i in batch]
    return out


def wait_rows(db: Raw, table: str) -> list[tuple[Any, ...]]:
    """The table's rows, once the database has ended a dead client's transaction."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return db.rows(table)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


# ------------------------------------------------------------------ kill during save

SAVE_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    import mqueue
    from mqueue import _persist, _shm

    ns, url, n, how = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    mq = mqueue.create(ns, ["name=q;dbmode=3;bytes=64M"], db_url=url)
    q = mq["q"]
    q.add_many([(f"i{i}", f"v{i}-" + "x" * 20) for i in range(n)])

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if how == "reserved":  # inside the transaction, rows inserted, not committed
        _persist._save_hook = lambda table, done: die()
    elif how in ("committed", "settled"):
        real = _shm.ShmQueue._settle
        def settle(self, tag, commit):
            if commit and how == "committed":
                die()  # the transaction committed, the reservation not settled
            real(self, tag, commit)
            if commit:
                die()  # settled, the marker not deleted yet
        _shm.ShmQueue._settle = settle
    print("closing", flush=True)
    mq.close()
    print("saved", flush=True)
    """
)


def run_and_kill(
    code: str, args: list[str], ready: str, how: str, cwd: Path = REPO
) -> int:
    """Run the child ``code`` with ``args`` (in ``cwd``); once it prints ``ready``,
    SIGKILL it ``how`` = "after<seconds>" later (else it kills itself where
    ``how`` says).  Returns its exit status; the child does not outlive the call."""
    child = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == ready
        if how.startswith("after"):
            time.sleep(float(how[len("after") :]))
            child.send_signal(signal.SIGKILL)
        return child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def run_save_and_kill(db: Raw, ns: str, n: int, how: str) -> None:
    """Start a creator with n items that saves at close; kill it as `how` says."""
    rc = run_and_kill(SAVE_CHILD, [ns, db.url, str(n), how], "closing", how)
    assert rc == -signal.SIGKILL or (how.startswith("after") and rc == 0), rc


def check_exactly_once(db: Raw, ns: str, n: int, old: list[tuple[str, str]]) -> None:
    """Resolve (create with exist_ok, as an operator or a restart would), then
    every item is in the table or the queue exactly once, in order."""
    rows = wait_rows(db, "q")
    mq = mqueue.create(ns, ["name=q;dbmode=3;bytes=64M"], db_url=db.url, exist_ok=True)
    try:
        q = mq["q"]
        new_code = hasattr(q, "_reservation")  # (so that this test runs on the old code too)
        if new_code:
            assert q._reservation().tag == 0  # type: ignore[attr-defined]
        queued = drain(q)
        st = q.stats()
    finally:
        mq.close()  # not the creator: does not save
    rows = db.rows("q")
    assert rows[: len(old)] == old
    saved = [tuple(r) for r in rows[len(old) :]]
    assert saved + queued == items(n), (len(saved), len(queued))
    assert st.added == st.fetched + st.evicted + st.duplicates + st.length
    if new_code:  # no marker is left behind for this namespace's table
        left = db.sql('SELECT "kind" FROM "mqueue_ops" WHERE "tbl" = ?', ("q",))
        assert left == []


@pytest.mark.parametrize(
    "how", ["reserved", "committed", "settled", "after0.05", "after0.5", "after1.5"]
)
def test_sqlite_kill_during_save(tmp_path: Path, ns: str, how: str) -> None:
    """Issue 9 item 1: 300,000 items, the creator killed during close()."""
    import sqlite3

    path = tmp_path / "mq.db"
    conn = sqlite3.connect(path)
    raw = Raw("sqlite", f"sqlite:///{path}", conn)
    try:
        raw.create_kamailio_table("q")
        old = [("old1", "a"), ("old2", "b")]
        raw.insert("q", old)
        n = 300_000
        run_save_and_kill(raw, ns, n, how)
        check_exactly_once(raw, ns, n, old)
    finally:
        conn.close()


@pytest.mark.parametrize("how", ["reserved", "committed", "settled", "after0.1", "after0.4"])
def test_kill_during_save(db: Raw, ns: str, how: str) -> None:
    """Both engines, fewer items (PostgreSQL over TCP is slower)."""
    db.create_kamailio_table("q")
    old = [("old1", "a")]
    db.insert("q", old)
    n = 20_000
    run_save_and_kill(db, ns, n, how)
    check_exactly_once(db, ns, n, old)


# --------------------------------------------------------------- lost COMMIT (proxy)


def _pg_required() -> None:
    problem = _pg_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests must run in CI: {problem}")
        pytest.skip(problem)


class CommitDropper:
    """A TCP proxy to PostgreSQL that, once armed by a statement containing
    ``trigger`` on a connection, handles that connection's next COMMIT as told:
    ``forward`` sends it to the server and then drops the client's connection
    before the reply (the commit happens, its reply is lost); ``swallow`` drops
    both connections without sending it (the server rolls back).  Only the first
    such COMMIT; with ``refuse_after`` no new connection is accepted after it
    (the database cannot be asked) until ``allow()``."""

    def __init__(self, trigger: bytes, mode: str = "forward", refuse_after: bool = False) -> None:
        parts = urlsplit(PG_URL)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.trigger = trigger
        self.mode = mode
        self.refuse_after = refuse_after
        self.fired = threading.Event()
        self.refusing = False
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.stop = False
        self.threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self.threads.append(t)

    def url(self, base: str) -> str:
        parts = urlsplit(base)
        netloc = parts.netloc.rpartition("@")
        host = f"127.0.0.1:{self.port}"
        netloc_s = f"{netloc[0]}@{host}" if netloc[1] else host
        query = (parts.query + "&" if parts.query else "") + "sslmode=disable"
        return urlunsplit(parts._replace(netloc=netloc_s, query=query))

    def allow(self) -> None:
        self.refusing = False

    def close(self) -> None:
        self.stop = True
        self.sock.close()
        for t in self.threads:
            t.join(timeout=5)

    def _accept(self) -> None:
        while not self.stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            server = socket.create_connection(self.upstream)
            t = threading.Thread(target=self._pump, args=(client, server), daemon=True)
            t.start()
            self.threads.append(t)

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        buf = b""
        started = False
        armed = False
        try:
            while not self.stop:
                r, _, _ = select.select([client, server], [], [], 0.2)
                if server in r:
                    data = server.recv(65536)
                    if not data:
                        return
                    client.sendall(data)
                if client in r:
                    data = client.recv(65536)
                    if not data:
                        return
                    buf += data
                    out = b""
                    while True:  # whole messages only
                        if not started:
                            if len(buf) < 4:
                                break
                            (length,) = struct.unpack("!I", buf[:4])
                            if len(buf) < length:
                                break
                            out += buf[:length]
                            buf = buf[length:]
                            started = True
                            continue
                        if len(buf) < 5:
                            break
                        (length,) = struct.unpack("!I", buf[1:5])
                        if len(buf) < 1 + length:
                            break
                        msg, buf = buf[: 1 + length], buf[1 + length :]
                        kind, body = msg[:1], msg[5:]
                        if kind in (b"Q", b"P") and self.trigger in body:
                            armed = True
                        is_commit = kind in (b"Q", b"P") and b"COMMIT" in body.upper()[:40]
                        if armed and is_commit and not self.fired.is_set():
                            self.fired.set()
                            if self.refuse_after:
                                self.refusing = True
                            if self.mode == "forward":
                                server.sendall(out + msg)
                            elif out:
                                server.sendall(out)
                            client.close()  # the reply never reaches the client
                            time.sleep(0.3)  # the server finishes (or aborts) meanwhile
                            return
                        out += msg
                    if out:
                        server.sendall(out)
        except OSError:
            return
        finally:
            with contextlib.suppress(OSError):
                client.close()
            with contextlib.suppress(OSError):
                server.close()


@pytest.fixture
def pg(db: Raw) -> Raw:
    if db.engine != "postgresql":
        pytest.skip("a lost COMMIT reply needs a server over TCP")
    return db


def test_lost_commit_reply_of_save_is_resolved_committed(pg: Raw, ns: str) -> None:
    """Issue 9 item 2: COMMIT reached the server, its reply was lost: the save
    asks the database, finds its marker, and does not put the items back."""
    pg.create_kamailio_table("q")
    proxy = CommitDropper(b'INSERT INTO "mqueue_ops"')
    try:
        url = proxy.url(pg.url)
        mq = mqueue.create(ns, ["name=q;dbmode=3"], db_url=url)
        mq["q"].add_many(items(1000))
        mq.close()  # no error: resolved as committed
        assert proxy.fired.is_set()
    finally:
        proxy.close()
    assert pg.rows("q") == items(1000)
    mq = mqueue.attach(ns)
    try:
        assert len(mq["q"]) == 0
        st = mq["q"].stats()
        assert (st.added, st.fetched) == (1000, 1000)
    finally:
        mq.close()


def test_lost_commit_that_never_committed_puts_back(pg: Raw, ns: str) -> None:
    """COMMIT never reached the server: the database says no marker, so the
    items go back, once, and the error says so."""
    pg.create_kamailio_table("q")
    proxy = CommitDropper(b'INSERT INTO "mqueue_ops"', mode="swallow")
    try:
        url = proxy.url(pg.url)
        mq = mqueue.create(ns, ["name=q;dbmode=3"], db_url=url)
        mq["q"].add_many(items(1000))
        with pytest.raises(PersistenceError, match="confirms nothing was written"):
            mq.close()
    finally:
        proxy.close()
    assert wait_rows(pg, "q") == []
    mq = mqueue.attach(ns)
    try:
        q = mq["q"]
        assert q.stats().added == 1000  # put back, not added a second time
        assert drain(q) == items(1000)
    finally:
        mq.close()


def test_lost_commit_with_database_unreachable_is_never_guessed(pg: Raw, ns: str) -> None:
    """The reply is lost and the database cannot be asked: the items stay
    reserved (neither in the queue nor dropped); the next create(exist_ok=True,
    db_url=...) asks the database and settles them."""
    pg.create_kamailio_table("q")
    proxy = CommitDropper(b'INSERT INTO "mqueue_ops"', refuse_after=True)
    old_timeout = _persist._LOCK_TIMEOUT_S
    try:
        url = proxy.url(pg.url)
        mq = mqueue.create(ns, ["name=q;dbmode=3"], db_url=url)
        mq["q"].add_many(items(500))
        with pytest.raises(PersistenceError, match="cannot be asked") as info:
            mq.close()
        assert "mqueue recover" in str(info.value)
        probe = mqueue.attach(ns)
        try:
            r = probe["q"]._reservation()  # type: ignore[attr-defined]
            assert (r.size, len(probe["q"])) == (500, 0)
            assert not r.owner_alive  # its handle is closed
        finally:
            probe.close()
        proxy.allow()
        mq = mqueue.create(ns, ["name=q;dbmode=3"], db_url=url, exist_ok=True)
        try:
            assert mq["q"]._reservation().tag == 0  # type: ignore[attr-defined]
            assert len(mq["q"]) == 0
        finally:
            mq.close()
    finally:
        _persist._LOCK_TIMEOUT_S = old_timeout
        proxy.close()
    assert pg.rows("q") == items(500)


def test_lost_commit_reply_of_load_loses_nothing(pg: Raw, ns: str) -> None:
    """Issue 9 item 2, load side: the load's marking COMMIT loses its reply;
    create() fails, and every row is still there for the next create."""
    pg.create_kamailio_table("q")
    pg.insert("q", items(1000))
    proxy = CommitDropper(b'INSERT INTO "mqueue_ops"')
    try:
        url = proxy.url(pg.url)
        with pytest.raises(PersistenceError):
            mqueue.create(ns, ["name=q;dbmode=1"], db_url=url)
        assert proxy.fired.is_set()
    finally:
        proxy.close()
    assert not os.path.exists(f"/dev/shm/mqueue.{ns}")
    assert wait_rows(pg, "q") == items(1000)
    mq = mqueue.create(ns, ["name=q;dbmode=1"], db_url=pg.url)
    try:
        assert drain(mq["q"]) == items(1000)
        assert pg.rows("q") == []
    finally:
        mq._abandon()  # no save at close: the items were drained


def test_lost_commit_reply_of_load_cleanup(pg: Raw, ns: str) -> None:
    """The reply to the COMMIT that deletes the loaded rows is lost (here the
    COMMIT never arrives): create() succeeds with the items queued; the rows
    are deleted by the next resolution, never loaded twice."""
    pg.create_kamailio_table("q")
    pg.insert("q", items(300))
    proxy = CommitDropper(b'DELETE FROM "q"', mode="swallow")
    try:
        url = proxy.url(pg.url)
        mq = mqueue.create(ns, ["name=q;dbmode=1"], db_url=url)
        assert proxy.fired.is_set()
    finally:
        proxy.close()
    try:
        assert len(mq["q"]) == 300
        assert wait_rows(pg, "q") == items(300)  # not deleted yet
        _persist.resolve_queues(mq, pg.url)
        assert pg.rows("q") == []
        assert drain(mq["q"]) == items(300)
    finally:
        mq._abandon()


# --------------------------------------------------------------------- load

LOAD_CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    import mqueue
    from mqueue import _persist

    ns, url, how = sys.argv[1], sys.argv[2], sys.argv[3]
    if how in ("marked", "applied"):
        def hook(stage):
            if stage == how:
                os.kill(os.getpid(), signal.SIGKILL)
        _persist._load_hook = hook
    print("creating", flush=True)
    mq = mqueue.create(ns, ["name=q;dbmode=1;bytes=64M"], db_url=url)
    print("created", flush=True)
    mq._abandon()
    """
)


@pytest.mark.parametrize("how", ["marked", "applied", "after0.2", "after0.8"])
def test_kill_during_load(db: Raw, ns: str, how: str) -> None:
    """Issue 9 item 3: a creator killed while loading; after resolution every
    row is loaded exactly once or still in the table, never both."""
    n = 100_000 if db.engine == "sqlite" else 20_000
    db.create_kamailio_table("q")
    _bulk_insert(db, "q", items(n))
    rc = run_and_kill(LOAD_CHILD, [ns, db.url, how], "creating", how)
    assert rc in (-signal.SIGKILL, 0)
    wait_rows(db, "q")
    defs = ["name=q;dbmode=1;bytes=64M"]
    try:
        mq = mqueue.create(ns, defs, db_url=db.url, exist_ok=True)
    except mqueue.MQueueError as exc:
        # killed inside the segment's creation, before any load (issue 9 item 9,
        # another change, makes create(exist_ok=True) recover this by itself)
        assert "not initialised" in str(exc)
        mqueue.destroy(ns)
        mq = mqueue.create(ns, defs, db_url=db.url, exist_ok=True)
    try:
        queued = drain(mq["q"])
        rows = [tuple(r) for r in db.rows("q")]
        if mq.is_creator:  # the child died before its namespace existed: loaded now
            assert rows == [] and queued == items(n)
        else:
            assert (rows == [] and queued == items(n)) or (rows == items(n) and queued == []), (
                len(rows),
                len(queued),
            )
        if hasattr(mq["q"], "_reservation"):  # the new code leaves no marker
            assert db.sql('SELECT "op" FROM "mqueue_ops"') == []
    finally:
        mq._abandon()


def _bulk_insert(db: Raw, table: str, rows: list[tuple[str, str]]) -> None:
    if db.engine == "sqlite":
        db.conn.executemany(f"INSERT INTO {db.q(table)} (key, val) VALUES (?, ?)", rows)
        db.conn.commit()
    else:
        with db.conn.cursor() as cur, cur.copy(f"COPY {db.q(table)} (key, val) FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)


def test_refused_load_adds_nothing_cli(db: Raw, ns: str) -> None:
    """Issue 9 item 3: `mqueue load` into an unbounded bytes=256 queue, 10 rows:
    refused, nothing queued, every row remains."""
    db.create_kamailio_table("q")
    mq = mqueue.create(ns, ["name=q;dbmode=2;bytes=256"], db_url=db.url)
    db.insert("q", [(f"key{i}", f"value{i}") for i in range(10)])
    try:
        r = subprocess.run(
            [sys.executable, "-m", "mqueue", "load", ns, "--db-url", db.url],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=60,
        )
        assert r.returncode == 1, r.stdout + r.stderr
        err = json.loads(r.stderr)["error"]
        assert err["code"] == 500
        assert len(mq["q"]) == 0
        assert mq["q"].stats().added == 0
        assert db.rows("q") == [(f"key{i}", f"value{i}") for i in range(10)]
    finally:
        mq.close()


WORKER = textwrap.dedent(
    """
    import select, sys, time
    import mqueue
    ns = sys.argv[1]

    def stopped():
        return bool(select.select([sys.stdin], [], [], 0)[0])

    while True:
        try:
            mq = mqueue.attach(ns)
            break
        except Exception:
            if stopped():
                print("never", flush=True)
                sys.exit(0)
            time.sleep(0.0005)
    print("attached", flush=True)
    got = 0
    q = mq["q"]
    while not stopped():
        try:
            got += len(q.fetch_many(1000, timeout=0.01))
        except mqueue.NamespaceLostError:  # the failed create() destroyed it
            break
    print(got, flush=True)
    """
)


def test_worker_attached_during_failing_load_sees_nothing(db: Raw, ns: str) -> None:
    """Issue 9 item 3: a worker that attaches while create() loads fetches
    nothing of a load that then fails, and every row remains."""
    db.create_kamailio_table("q")
    rows = items(20_000) + [("big", "x" * 5_000_000)]
    _bulk_insert(db, "q", rows)
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, ns],
        cwd=REPO,
        env=_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        with pytest.MonkeyPatch.context() as mp:  # the worker has time to attach
            mp.setattr(_persist, "_load_hook", lambda stage: time.sleep(0.5), raising=False)
            with pytest.raises(PersistenceError, match="larger than the"):
                mqueue.create(ns, ["name=q;dbmode=1;bytes=4M"], db_url=db.url)
        assert worker.stdout is not None and worker.stdin is not None
        worker.stdin.write("stop\n")
        worker.stdin.flush()
        out, _ = worker.communicate(timeout=60)
        lines = out.split()
        assert lines[0] in ("attached", "never"), out
        if lines[0] == "attached":
            assert int(lines[1]) == 0, out
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert [tuple(r) for r in db.rows("q")] == rows


# ---------------------------------------------------------------- item 4


def test_failed_save_does_not_count_items_added_twice(
    db: Raw, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def hook(table: str, done: int) -> None:
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(_persist, "_save_hook", hook)
    mq = mqueue.create(ns, ["name=q;dbmode=3"], db_url=db.url)
    mq["q"].add_many(items(50))
    with pytest.raises(PersistenceError, match="back"):
        _persist.save_queues(mq, db.url)
    st = mq["q"].stats()
    assert (st.added, st.length, st.fetched) == (50, 50, 0)
    assert drain(mq["q"]) == items(50)
    mq._abandon()


def test_lone_surrogate_str_saves_and_loads(db: Raw, ns: str) -> None:
    odd = [("k\ud800", "v\udfff"), ("plain", "a\udc80b"), ("nul\x00\ud801", "x")]
    defs = ["name=q;dbmode=1"]
    mq = mqueue.create(ns, defs, db_url=db.url)
    mq["q"].add_many(odd)
    mq.close()  # saves; failed before (the queue could never be saved)
    mqueue.destroy(ns)
    mq = mqueue.create(ns, defs, db_url=db.url)
    try:
        assert drain(mq["q"]) == odd
    finally:
        mq._abandon()


# ------------------------------------------------------------- item 7: the CLI


def _cli(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqueue", *args],
        text=True,
        env=kw.pop("env", _env()),
        timeout=60,
        **kw,
    )


def test_cli_fetch_into_a_closed_pipe_puts_the_item_back(ns: str) -> None:
    """`mqueue fetch NS q | head -c 0`: the write fails; no traceback, a JSON
    error, and the item is back at the head of the queue."""
    mq = mqueue.create(ns, ["name=q"])
    try:
        mq["q"].add_many([("first", "1"), ("second", "2")])
        rfd, wfd = os.pipe()
        os.close(rfd)  # the reader is gone before anything is written
        try:
            r = _cli("fetch", ns, "q", stdout=wfd, stderr=subprocess.PIPE)
        finally:
            os.close(wfd)
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr
        err = json.loads(r.stderr.strip().splitlines()[-1])["error"]
        assert err["code"] == 500 and "put back" in err["message"]
        assert drain(mq["q"]) == [("first", "1"), ("second", "2")]
        st = mq["q"].stats()
        assert st.added == 2
    finally:
        mq.close()


def test_cli_fetch_with_stderr_gone_too(ns: str) -> None:
    mq = mqueue.create(ns, ["name=q"])
    try:
        mq["q"].add("k", "v")
        rfd, wfd = os.pipe()
        os.close(rfd)
        try:
            r = _cli("fetch", ns, "q", stdout=wfd, stderr=wfd)
        finally:
            os.close(wfd)
        assert r.returncode == 1
        assert drain(mq["q"]) == [("k", "v")]
    finally:
        mq.close()


def test_cli_fetch_unencodable_key_is_printed_safely(ns: str) -> None:
    """A key the terminal's encoding cannot hold: printed as ASCII JSON escapes,
    taken exactly once, no traceback."""
    mq = mqueue.create(ns, ["name=q"])
    try:
        mq["q"].add_many([("ключ☎", "значение"), ("k\ud800", "v")])
        env = dict(_env(), PYTHONIOENCODING="ascii")
        r1 = _cli("fetch", ns, "q", capture_output=True, env=env)
        r2 = _cli("fetch", ns, "q", capture_output=True, env=env)
        for r in (r1, r2):
            assert r.returncode == 0, r.stderr
            assert "Traceback" not in r.stderr
        assert json.loads(r1.stdout) == {"key": "ключ☎", "val": "значение"}
        assert json.loads(r2.stdout)["key"] == "k\ud800"
        assert len(mq["q"]) == 0
        assert mq["q"]._reservation().tag == 0  # type: ignore[attr-defined]
    finally:
        mq.close()


def test_cli_fetch_puts_back_what_a_dead_fetch_reserved(ns: str) -> None:
    """A `mqueue fetch` killed between taking and printing: the next fetch (or
    `mqueue recover`) puts its item back first, so it is printed, once."""
    mq = mqueue.create(ns, ["name=q"])
    try:
        mq["q"].add_many([("a", "1"), ("b", "2")])
        code = (
            "import os, sys, mqueue; from mqueue import _persist;"
            "mq = mqueue.attach(sys.argv[1]);"
            "mq['q']._reserve(1, _persist.new_cli_tag()); os._exit(9)"
        )
        assert subprocess.run([sys.executable, "-c", code, ns], env=_env()).returncode == 9
        assert len(mq["q"]) == 1
        r = _cli("fetch", ns, "q", capture_output=True)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"key": "a", "val": "1"}
        r = _cli("fetch", ns, "q", capture_output=True)
        assert json.loads(r.stdout) == {"key": "b", "val": "2"}
        assert len(mq["q"]) == 0
    finally:
        mq.close()


def test_cli_recover_resolves_a_dead_savers_reservation(tmp_path: Path, ns: str) -> None:
    import sqlite3

    path = tmp_path / "mq.db"
    conn = sqlite3.connect(path)
    raw = Raw("sqlite", f"sqlite:///{path}", conn)
    try:
        raw.create_kamailio_table("q")
        run_save_and_kill(raw, ns, 1000, "committed")
        r = _cli("recover", ns, "--db-url", raw.url, capture_output=True)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert any("had committed" in line for line in out["resolved"])
        assert raw.rows("q") == items(1000)
        mq = mqueue.attach(ns)
        try:
            assert len(mq["q"]) == 0 and mq["q"]._reservation().tag == 0  # type: ignore[attr-defined]
        finally:
            mq.close()
    finally:
        conn.close()


def _assert_cli_error(r: subprocess.CompletedProcess[str], *needles: str) -> str:
    """A clean command-line failure: exit status 1, a JSON error with code 500
    naming what to do, no traceback.  Returns the message."""
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    err = json.loads(r.stderr)["error"]
    assert err["code"] == 500, err
    for needle in needles:
        assert needle in err["message"], err["message"]
    return str(err["message"])


def _pending(ns: str) -> int:
    """The tag of queue q's pending reservation (0: none)."""
    mq = mqueue.attach(ns)
    try:
        return int(mq["q"]._reservation().tag)  # type: ignore[attr-defined]
    finally:
        mq.close()


def test_resolution_against_another_database_does_not_double(tmp_path: Path, ns: str) -> None:
    """A save killed after its COMMIT into a.db; `mqueue recover --db-url` naming
    b.db (a mistyped URL) found no marker there and put the 100 items back
    although they are in a.db: doubled.  Now the reservation records a.db's id:
    the wrong URL is refused (exit 1, JSON error saying what to do, nothing
    changed, nothing created in b.db's place), the right one resolves it."""
    import sqlite3

    path_a, path_b = tmp_path / "a.db", tmp_path / "b.db"
    conn = sqlite3.connect(path_a)
    raw = Raw("sqlite", f"sqlite:///{path_a}", conn)
    try:
        raw.create_kamailio_table("q")
        run_save_and_kill(raw, ns, 100, "committed")  # committed into a.db, not settled
        tag = _pending(ns)
        assert tag
        r = _cli("recover", ns, "--db-url", f"sqlite:///{path_b}", capture_output=True)
        msg = _assert_cli_error(r, "another database", f"mqueue recover {ns} --db-url", str(path_b))
        assert "nothing was changed" in msg
        assert not path_b.exists()  # a mistyped path is not created
        mq = mqueue.attach(ns)
        try:
            queued = drain(mq["q"])
        finally:
            mq.close()
        # every item is in a.db: none may be queued again
        assert raw.rows("q") == items(100)
        assert queued == []
        assert _pending(ns) == tag  # still reserved, for the right database to settle
        r = _cli("recover", ns, "--db-url", raw.url, capture_output=True)
        assert r.returncode == 0, r.stderr
        check_exactly_once(raw, ns, 100, [])
    finally:
        conn.close()


@pytest.fixture
def other_db(db: Raw, tmp_path: Path) -> Iterator[Raw]:
    """Another database of ``db``'s engine (SQLite: another file, empty;
    PostgreSQL: another schema of the test server, as mqueue's tables go to the
    URL's search_path)."""
    if db.engine == "sqlite":
        with test_persist.sqlite_db(tmp_path / "other.db") as raw:
            yield raw
        return
    with test_persist.pg_schema_db("o") as raw:
        yield raw


def _other_tables(other: Raw, tmp_path: Path) -> list[str]:
    """What mqueue left in the other database (nothing, when it refused)."""
    if other.engine == "sqlite":
        return [r[0] for r in other.sql("SELECT name FROM sqlite_master")]
    found = other.sql("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
    return [r[0] for r in found]


def _same_database_other_url(db: Raw, tmp_path: Path) -> str:
    """Another URL naming ``db``'s database (SQLite: through a symbolic link;
    PostgreSQL: "localhost" for "127.0.0.1")."""
    if db.engine == "sqlite":
        link = tmp_path / "link.db"
        link.symlink_to(Path(db.url[len("sqlite:///") :]))
        return f"sqlite:///{link}"
    parts = urlsplit(db.url)
    assert parts.hostname == "127.0.0.1", db.url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace("127.0.0.1", "localhost")))


def test_wrong_database_is_refused_everywhere(
    db: Raw, other_db: Raw, tmp_path: Path, ns: str
) -> None:
    """SQLite and PostgreSQL: a reservation of a save into ``db`` is never
    settled by asking another database: not by create() at a restart with a
    changed db_url, not by `mqueue save` / `mqueue recover` there; each says
    what to do and changes nothing (not even tables in the other database).
    Another URL naming the same database resolves it."""
    db.create_kamailio_table("q")
    run_save_and_kill(db, ns, 500, "committed")
    tag = _pending(ns)
    assert tag
    with pytest.raises(PersistenceError, match="another database") as ei:
        mqueue.create(ns, ["name=q;dbmode=3;bytes=64M"], db_url=other_db.url, exist_ok=True)
    assert f"mqueue recover {ns} --db-url" in str(ei.value)
    assert "mqueue never saved into it" in str(ei.value)
    for cmd in ("recover", "save"):
        r = _cli(cmd, ns, "--db-url", other_db.url, capture_output=True)
        _assert_cli_error(r, "another database")
    assert _pending(ns) == tag
    assert _other_tables(other_db, tmp_path) == []
    assert db.rows("q") == items(500)
    # the database of the save, through another URL naming it: resolved
    same = _same_database_other_url(db, tmp_path)
    mq = mqueue.create(ns, ["name=q;dbmode=3;bytes=64M"], db_url=same, exist_ok=True)
    mq.close()
    check_exactly_once(db, ns, 500, [])


def test_other_database_with_its_own_id_is_refused(
    db: Raw, other_db: Raw, tmp_path: Path, ns: str
) -> None:
    """The other database has been saved into too (it has an id of its own)
    and even holds a marker row with the pending tag (copied by hand): still
    refused, since the ids differ."""
    db.create_kamailio_table("q")
    mq = mqueue.create(f"{ns}x", ["name=q;dbmode=3"], db_url=other_db.url)
    try:
        mq["q"].add("x", "y")
    finally:
        mq.close()  # saves: other_db gets its id
        mqueue.destroy(f"{ns}x")
    run_save_and_kill(db, ns, 50, "committed")
    tag = _pending(ns)
    other_db.sql(
        'INSERT INTO "mqueue_ops" VALUES (?, ?, ?, ?, NULL)',
        (f"{tag:016x}", "save", "q", f"{socket.gethostname()}:{ns}"),
    )
    r = _cli("recover", ns, "--db-url", other_db.url, capture_output=True)
    msg = _assert_cli_error(r, "another database", "is database id")
    assert _pending(ns) == tag, msg
    check_exactly_once(db, ns, 50, [])


def test_relative_sqlite_path_from_another_directory(tmp_path: Path, ns: str) -> None:
    """`sqlite:///mq.db` names a file in the current directory: a save from
    dir_a, then a recover from dir_b with the same URL is refused (dir_b/mq.db
    is not created); the absolute URL of dir_a/mq.db (another URL, the same
    file) resolves it."""
    import sqlite3

    dir_a, dir_b = tmp_path / "a", tmp_path / "b"
    dir_a.mkdir()
    dir_b.mkdir()
    url = "sqlite:///mq.db"
    rc = run_and_kill(SAVE_CHILD, [ns, url, "200", "committed"], "closing", "committed", dir_a)
    assert rc == -signal.SIGKILL
    r = subprocess.run(
        [sys.executable, "-m", "mqueue", "recover", ns, "--db-url", url],
        cwd=dir_b,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    _assert_cli_error(r, "another database", str(dir_b / "mq.db"), "relative path")
    assert not (dir_b / "mq.db").exists()
    assert _pending(ns)
    conn = sqlite3.connect(dir_a / "mq.db")
    try:
        raw = Raw("sqlite", f"sqlite:///{dir_a / 'mq.db'}", conn)
        r = _cli("recover", ns, "--db-url", raw.url, capture_output=True)
        assert r.returncode == 0, r.stderr
        assert any("had committed" in line for line in json.loads(r.stdout)["resolved"])
        check_exactly_once(raw, ns, 200, [])
    finally:
        conn.close()


@pytest.mark.parametrize("garbage", ["zz", "", "0000000000000000", "ABCDEF0123456789", 5, None])
def test_garbage_database_id(db: Raw, ns: str, garbage: object) -> None:
    """Garbage in mqueue_dbid: a save refuses before taking anything (items
    stay queued, nothing written); a pending save's resolution refuses and
    changes nothing; with the id put back, it resolves exactly once."""
    db.create_kamailio_table("q")
    run_save_and_kill(db, ns, 100, "committed")
    (good,) = db.sql('SELECT "id" FROM "mqueue_dbid"')[0]
    if garbage is None:
        db.sql('DELETE FROM "mqueue_dbid"')
        needle = "has no mqueue database id"
    else:
        if db.engine == "postgresql" and not isinstance(garbage, str):
            garbage = str(garbage)
        db.sql('UPDATE "mqueue_dbid" SET "id" = ?', (garbage,))
        needle = "damaged database id"
    tag = _pending(ns)
    with pytest.raises(PersistenceError, match=needle):
        mqueue.create(ns, ["name=q;dbmode=3;bytes=64M"], db_url=db.url, exist_ok=True)
    assert _pending(ns) == tag
    assert db.rows("q") == items(100)
    if garbage is not None:  # a save into that database refuses too, taking nothing
        mq2 = mqueue.create(f"{ns}s", ["name=q;dbmode=3"], db_url=db.url)
        try:
            mq2["q"].add_many(items(3, "s"))
            with pytest.raises(PersistenceError, match="damaged database id"):
                _persist.save_queues(mq2, db.url)
            assert drain(mq2["q"]) == items(3, "s")
            assert mq2["q"]._reservation().tag == 0  # type: ignore[attr-defined]
        finally:
            mq2.close()
            mqueue.destroy(f"{ns}s")
    db.sql('DELETE FROM "mqueue_dbid"')
    db.sql('INSERT INTO "mqueue_dbid" VALUES (?, ?)', ("id", good))
    check_exactly_once(db, ns, 100, [])


def test_vanished_database_changes_nothing(tmp_path: Path, ns: str) -> None:
    """The database of a pending save is gone (file moved away; a server that
    does not answer): the resolution refuses, changes nothing, creates nothing;
    once it is back, it resolves."""
    import sqlite3

    path = tmp_path / "mq.db"
    conn = sqlite3.connect(path)
    raw = Raw("sqlite", f"sqlite:///{path}", conn)
    try:
        raw.create_kamailio_table("q")
        run_save_and_kill(raw, ns, 100, "committed")
    finally:
        conn.close()
    moved = tmp_path / "moved.db"
    path.rename(moved)
    tag = _pending(ns)
    r = _cli("recover", ns, "--db-url", f"sqlite:///{path}", capture_output=True)
    _assert_cli_error(r, "there is no database file at")
    assert not path.exists() and _pending(ns) == tag
    r = _cli(
        "recover", ns, "--db-url", "postgresql://u:secret@127.0.0.1:1/x?connect_timeout=2",
        capture_output=True,
    )
    # without the PostgreSQL driver (only the 'test' extra installed) the
    # refusal comes earlier, as cleanly
    has_driver = importlib.util.find_spec("psycopg") is not None
    msg = _assert_cli_error(r, "cannot connect" if has_driver else "needs the psycopg 3 driver")
    assert "secret" not in msg
    assert _pending(ns) == tag
    moved.rename(path)
    conn = sqlite3.connect(path)
    try:
        check_exactly_once(Raw("sqlite", f"sqlite:///{path}", conn), ns, 100, [])
    finally:
        conn.close()


KILLED_RESOLVER = textwrap.dedent(
    """
    import os, signal, sys
    import mqueue
    from mqueue import _persist, _shm

    ns, url, when = sys.argv[1], sys.argv[2], sys.argv[3]
    real = _shm.ShmQueue._settle
    def settle(self, tag, commit):
        if when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real(self, tag, commit)
        os.kill(os.getpid(), signal.SIGKILL)   # settled; its marker not deleted yet
    _shm.ShmQueue._settle = settle
    print("ready", flush=True)
    mq = mqueue.attach(ns)
    _persist.resolve_queues(mq, url)
    """
)


@pytest.mark.parametrize("when", ["before", "settled"])
def test_killed_resolver_then_concurrent_recovers(
    db: Raw, other_db: Raw, ns: str, when: str
) -> None:
    """A resolver SIGKILLed just before or just after it settles; then two
    `mqueue recover` with the right URL and one with a wrong one, at once:
    every item exactly once, the wrong one refused or finding nothing."""
    db.create_kamailio_table("q")
    run_save_and_kill(db, ns, 300, "committed")
    rc = run_and_kill(KILLED_RESOLVER, [ns, db.url, when], "ready", when)
    assert rc == -signal.SIGKILL
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mqueue", "recover", ns, "--db-url", url],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for url in (db.url, other_db.url, db.url)
    ]
    for i, p in enumerate(procs):
        _out, err = p.communicate(timeout=60)
        code = p.returncode
        assert "Traceback" not in err, err
        if i == 1 and code:
            assert "another database" in json.loads(err)["error"]["message"]
        else:
            assert code == 0, err
    check_exactly_once(db, ns, 300, [])


def _ask_id(target: Any, barrier: threading.Barrier, got: list[object]) -> None:
    conn = _persist._DB(target)  # its own connection, in its own thread
    try:
        barrier.wait()
        got.append(conn.database_id())
    except Exception as exc:  # noqa: BLE001 - reported by the caller
        got.append(exc)
    finally:
        conn.close()


def test_first_saves_at_once_agree_on_one_id(db: Raw) -> None:
    """Four connections asking for the id of a database that has none, at once
    (two first saves racing): one id, no error; ten rounds."""
    target = _persist._parse_db_url(db.url)
    for _round in range(10):
        db.sql('DROP TABLE IF EXISTS "mqueue_dbid"')
        barrier = threading.Barrier(4)
        got: list[object] = []
        threads = [threading.Thread(target=_ask_id, args=(target, barrier, got)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(got) == 4 and len(set(map(repr, got))) == 1, got
        assert isinstance(got[0], int) and got[0] > 0
        assert db.sql('SELECT "id" FROM "mqueue_dbid"') == [(f"{got[0]:016x}",)]


@pytest.mark.parametrize("name", ["mqueue_dbid", "MQueue_DBID", "mqueue_ops"])
def test_own_tables_are_not_queue_names(name: str) -> None:
    with pytest.raises(mqueue.DefinitionError, match="mqueue's own table"):
        _persist.validate_table_name(name)


def test_reservation_without_database_id_keeps_the_marker_rule(tmp_path: Path, ns: str) -> None:
    """A reservation made by an mqueue that did not record database ids
    (its id word is 0): resolved by the marker, as before: present, done;
    absent, put back (documented: only such old reservations can be doubled
    by a wrong URL)."""
    url = f"sqlite:///{tmp_path / 'mq.db'}"
    mq = mqueue.create(ns, ["name=q;dbmode=3"], db_url=url)
    try:
        q: Any = mq["q"]
        _persist.save_queues(mq, url)  # (empty) makes the database and mqueue_ops
        q.add_many(items(4))
        tag = _persist.new_op_tag()
        assert len(q._reserve(2, tag, 4096, 0)) == 2
        assert q._reservation().db == 0
        import sqlite3

        with contextlib.closing(sqlite3.connect(tmp_path / "mq.db")) as conn:
            conn.execute(
                'INSERT INTO "mqueue_ops" VALUES (?, ?, ?, ?, NULL)',
                (f"{tag:016x}", "save", "q", f"{socket.gethostname()}:{ns}"),
            )
            conn.commit()
        done = _persist.resolve_queues(mq, url)
        assert any("had committed" in d for d in done), done
        assert drain(q) == items(4)[2:]
        q.add_many(items(2))
        tag = _persist.new_op_tag()
        q._reserve(2, tag, 4096, 0)
        done = _persist.resolve_queues(mq, url)
        assert any("had not committed" in d for d in done), done
        assert drain(q) == items(2)
        q.add_many(items(2))
        tag = _persist.new_op_tag()
        q._reserve(2, tag, 4096, 0)  # no database file there: not where it wrote
        with pytest.raises(PersistenceError, match="id unknown .* there is no database file"):
            _persist.resolve_queues(mq, f"sqlite:///{tmp_path / 'none.db'}")
        assert q._reservation().tag == tag
        assert q._settle(tag, False)
    finally:
        mq.close()


# ------------------------------------------------- the engine's reserve / settle


def test_reserve_settle_semantics(ns: str) -> None:
    """What a save or the CLI's fetch relies on, on every kind of queue."""
    mq = mqueue.create(
        ns,
        [
            "name=plain;bytes=4096",
            "name=first;addmode=1;bytes=4096",
            "name=last;addmode=2;bytes=4096",
            "name=bounded;size=3;bytes=4096",
            "name=tight;size=100;bytes=256",
            "name=last2;addmode=2;bytes=512",
        ],
    )
    try:
        q: Any = mq["plain"]
        q.add_many([("a", "1"), ("b", "2"), ("c", "3")])
        assert q._reserve(2, 11) == [("a", "1"), ("b", "2")]
        assert len(q) == 1 and q.fetch() == ("c", "3")  # reserved items are not queued
        with pytest.raises(mqueue.MQueueError, match="pending reservation"):
            q._reserve(1, 12)
        assert q._settle(12, False) is False  # wrong tag: nothing happens
        q.add("d", "4")
        assert q._settle(11, False) is True
        assert drain(q) == [("a", "1"), ("b", "2"), ("d", "4")]
        st = q.stats()
        assert (st.added, st.fetched) == (4, 4)

        first: Any = mq["first"]  # addmode 1: the reserved one is still the first
        first.add_many([("k", "old"), ("j", "1")])
        first._reserve(1, 21)
        assert first.add("k", "new") is False  # refused while "k" is reserved
        first._settle(21, False)
        assert drain(first) == [("k", "old"), ("j", "1")]
        st = first.stats()
        assert (st.added, st.duplicates) == (3, 1)
        assert st.added == st.fetched + st.evicted + st.duplicates + st.length

        last: Any = mq["last"]  # addmode 2: the newer one wins, the put-back one goes
        last.add_many([("k", "old"), ("j", "1")])
        last._reserve(1, 31)
        last.add("k", "new")
        last._settle(31, False)
        assert drain(last) == [("j", "1"), ("k", "new")]
        st = last.stats()
        assert st.added == st.fetched + st.evicted + st.duplicates + st.length

        bounded: Any = mq["bounded"]  # back over the bound: the oldest (put back) go
        bounded.add_many([("1", "a"), ("2", "b"), ("3", "c")])
        bounded._reserve(2, 41)
        bounded.add_many([("4", "d"), ("5", "e")])
        bounded._settle(41, False)
        assert drain(bounded) == [("3", "c"), ("4", "d"), ("5", "e")]
        st = bounded.stats()
        assert (st.evicted, st.added) == (2, 5)

        tight: Any = mq["tight"]  # short of bytes: the reservation is dropped first
        tight.add_many([(str(i), "x" * 30) for i in range(4)])  # 4 x 64 bytes = 256
        tight._reserve(2, 51)
        tight.add("new", "y" * 30)
        assert tight._reservation().tag == 0
        assert tight._settle(51, False) is False
        assert drain(tight) == [("2", "x" * 30), ("3", "x" * 30), ("new", "y" * 30)]
        st = tight.stats()
        assert (st.evicted, st.fetched + st.evicted + st.length) == (2, st.added)

        last2: Any = mq["last2"]  # a repair while reserved must not unindex the reserved
        last2.add_many([("k", "old"), ("j", "1")])
        last2._reserve(1, 61)
        with pytest.raises(mqueue.QueueFullError):
            last2._load(62, [(f"x{i}", "y" * 20) for i in range(20)])  # refused: rebuilds
        last2._settle(61, False)
        last2.add("k", "new")
        assert drain(last2) == [("j", "1"), ("k", "new")]

        q.add("z", "9")  # the load tag makes a load idempotent
        assert q._load(99, [("L", "1")]) == 1
        assert q._load(99, [("L", "1")]) is None
        assert q._reservation().load_tag == 99
        assert drain(q) == [("z", "9"), ("L", "1")]
    finally:
        mq.close()


def test_concurrent_cli_fetches_and_a_save_lose_nothing(tmp_path: Path, ns: str) -> None:
    """Several `mqueue fetch` at once, and a save in the middle: every item is
    printed once or saved once."""
    url = f"sqlite:///{tmp_path / 'mq.db'}"
    mq = mqueue.create(ns, ["name=q;dbmode=3"], db_url=url)
    all_items = [(f"k{i}", "v") for i in range(40)]
    mq["q"].add_many(all_items)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "mqueue", "fetch", ns, "q"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for _ in range(8)
    ]
    saved = _persist.save_queues(mq, url)
    printed = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        if p.returncode == 0:
            doc = json.loads(out)
            printed.append((doc["key"], doc["val"]))
        else:
            assert json.loads(err)["error"]["code"] in (404, 500), err
    import sqlite3

    with contextlib.closing(sqlite3.connect(tmp_path / "mq.db")) as conn:
        rows = [tuple(r) for r in conn.execute("SELECT key, val FROM q ORDER BY id")]
    rest = drain(mq["q"])
    assert sorted(printed + rows + rest) == sorted(all_items)
    assert saved["q"] == len(rows)
    mq._abandon()


# ---------------------------------------------- engine kill points inside a save / load


@pytest.fixture(scope="module")
def testing_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from ctools import build_testing_package, have_gcc

    if not have_gcc():
        pytest.skip("needs gcc for the testing build")
    return build_testing_package(tmp_path_factory.mktemp("persistkp"))


ENGINE_KILL_SAVE = textwrap.dedent(
    """
    import sys
    import mqueue
    ns, url = sys.argv[1], sys.argv[2]
    mq = mqueue.create(ns, ["name=q;dbmode=3;bytes=64M"], db_url=url)
    mq["q"].add_many([(f"i{i}", f"v{i}-" + "x" * 20) for i in range(1000)])
    mq.close()   # MQ_KILLPOINT: the engine _exit(77)s inside the save
    """
)


@pytest.mark.parametrize("point", ["reserve_before_commit", "settle_before_commit"])
def test_engine_killpoint_during_save(
    testing_site: Path, tmp_path: Path, ns: str, point: str
) -> None:
    import sqlite3

    from ctools import py_env

    path = tmp_path / "mq.db"
    conn = sqlite3.connect(path)
    raw = Raw("sqlite", f"sqlite:///{path}", conn)
    try:
        raw.create_kamailio_table("q")
        r = subprocess.run(
            [sys.executable, "-c", ENGINE_KILL_SAVE, ns, raw.url],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
            env=py_env(testing_site, MQ_KILLPOINT=point),
        )
        assert r.returncode == 77, r.stdout + r.stderr
        check_exactly_once(raw, ns, 1000, [])
    finally:
        conn.close()


def test_engine_killpoint_during_recover(testing_site: Path, tmp_path: Path, ns: str) -> None:
    """`mqueue recover` killed inside the engine's settle, before its commit:
    the reservation is still pending (with its database id), and the next
    recover settles it; every item once."""
    import sqlite3

    from ctools import py_env

    path = tmp_path / "mq.db"
    conn = sqlite3.connect(path)
    raw = Raw("sqlite", f"sqlite:///{path}", conn)
    try:
        raw.create_kamailio_table("q")
        run_save_and_kill(raw, ns, 100, "committed")
        tag = _pending(ns)
        r = subprocess.run(
            [sys.executable, "-m", "mqueue", "recover", ns, "--db-url", raw.url],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
            env=py_env(testing_site, MQ_KILLPOINT="settle_before_commit"),
        )
        assert r.returncode == 77, r.stdout + r.stderr
        assert _pending(ns) == tag
        r = _cli("recover", ns, "--db-url", raw.url, capture_output=True)
        assert r.returncode == 0, r.stderr
        check_exactly_once(raw, ns, 100, [])
    finally:
        conn.close()


def test_addmode1_reserved_key_refused_after_a_crash_repair(
    testing_site: Path, ns: str
) -> None:
    """A process dies inside an add (holding the lock) while a reservation is
    pending on an addmode 1 queue: the repair (q_recover, q_rebuild) keeps the
    reserved key in the index, so it is still refused, and a put-back leaves
    every key once."""
    from ctools import py_env

    mq = mqueue.create(ns, ["name=q;addmode=1"])
    try:
        q: Any = mq["q"]
        q.add_many([("K", "old"), ("J", "j")])
        tag = _persist.new_op_tag()
        q._reserve(1, tag)
        code = "import sys, mqueue; mqueue.attach(sys.argv[1])['q'].add('N', 'n')"
        r = subprocess.run(
            [sys.executable, "-c", code, ns],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
            env=py_env(testing_site, MQ_KILLPOINT="add_before_commit"),
        )
        assert r.returncode == 77, r.stdout + r.stderr
        assert q.add("K", "new") is False  # the lock's dead owner: repaired first
        assert q.stats().recoveries == 1
        assert q._settle(tag, False)
        assert drain(q) == [("K", "old"), ("J", "j")]
        st = q.stats()
        assert st.added == st.fetched + st.evicted + st.duplicates + st.length
    finally:
        mq.close()


ENGINE_KILL_LOAD = textwrap.dedent(
    """
    import sys
    import mqueue
    ns, url = sys.argv[1], sys.argv[2]
    mqueue.create(ns, ["name=q;dbmode=1"], db_url=url)   # dies in mq_load's commit
    """
)


def test_engine_killpoint_during_load(testing_site: Path, tmp_path: Path, ns: str) -> None:
    import sqlite3

    from ctools import py_env

    path = tmp_path / "mq.db"
    conn = sqlite3.connect(path)
    raw = Raw("sqlite", f"sqlite:///{path}", conn)
    try:
        raw.create_kamailio_table("q")
        raw.insert("q", items(100))
        r = subprocess.run(
            [sys.executable, "-c", ENGINE_KILL_LOAD, ns, raw.url],
            capture_output=True,
            text=True,
            timeout=120,
            cwd="/",
            env=py_env(testing_site, MQ_KILLPOINT="load_before_commit"),
        )
        assert r.returncode == 77, r.stdout + r.stderr
        mq = mqueue.create(ns, ["name=q;dbmode=1"], db_url=raw.url, exist_ok=True)
        try:
            assert not mq.is_creator
            assert len(mq["q"]) == 0  # the step never committed: nothing queued
            assert raw.rows("q") == items(100)  # and every row stays, unmarked
            assert raw.sql('SELECT "op" FROM "mqueue_ops"') == []
        finally:
            mq.close()
    finally:
        conn.close()


# ------------------------------------- fork during a save: the child keeps no lock

FORK_DURING_SAVE = textwrap.dedent(
    """
    import os, sys, threading, time
    import mqueue
    from mqueue import _persist

    ns, url = sys.argv[1], sys.argv[2]
    _persist._LOCK_TIMEOUT_S = 3
    mq = mqueue.create(ns, ["name=q;dbmode=3"], db_url=url)
    q = mq["q"]
    q.add_many([(f"i{i}", "v") for i in range(100)])
    inside = threading.Event()

    def hook(table, done):
        inside.set()
        time.sleep(0.5)

    _persist._save_hook = hook
    saver = threading.Thread(target=_persist.save_queues, args=(mq, url))
    saver.start()
    inside.wait()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # a long-lived worker that knows nothing of the save
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    saver.join()
    _persist._save_hook = None
    q.add("again", "v")
    try:
        print(_persist.save_queues(mq, url)["q"], flush=True)
    finally:
        os.close(w)
        os.waitpid(pid, 0)
        mq.close()
    """
)


def test_fork_during_sqlite_save_leaves_no_lock_in_the_child(tmp_path: Path, ns: str) -> None:
    """A child forked while another thread saves to SQLite inherits the open file
    description of the persistence lock (flock): it must not keep the database
    locked after the parent's save ended (every later save waited and failed)."""
    url = f"sqlite:///{tmp_path / 'mq.db'}"
    r = subprocess.run(
        [sys.executable, "-c", FORK_DURING_SAVE, ns, url],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "1"


# ------------------------------------------ garbage in the marker table loses nothing


@pytest.mark.parametrize("op", ["0000000000000000", "0", "zz", "-1"])
def test_garbage_load_marker_never_deletes_rows(tmp_path: Path, ns: str, op: str) -> None:
    """A load marker whose tag mqueue never writes (0, not hex) is never taken
    as applied: the rows are loaded, not deleted unloaded; the marker goes."""
    import sqlite3

    url = f"sqlite:///{tmp_path / 'mq.db'}"
    mq = mqueue.create(ns, ["name=q;dbmode=1"], db_url=url)
    mq["q"].add_many(items(5))
    mq.close()
    mqueue.destroy(ns)
    conn = sqlite3.connect(tmp_path / "mq.db")
    try:
        conn.execute(
            'INSERT INTO "mqueue_ops" VALUES (?, ?, ?, ?, ?)',
            (op, "load", "q", f"{socket.gethostname()}:{ns}", 10**9),
        )
        conn.commit()
        mq = mqueue.create(ns, ["name=q;dbmode=1"], db_url=url)
        try:
            assert drain(mq["q"]) == items(5)
        finally:
            mq.close()
        assert conn.execute('SELECT COUNT(*) FROM "q"').fetchone()[0] == 0
        assert conn.execute('SELECT COUNT(*) FROM "mqueue_ops"').fetchone()[0] == 0
    finally:
        conn.close()


# ------------------------------------------- addmode 1 and a put-back reservation


def test_addmode1_put_back_keeps_keys_unique(ns: str) -> None:
    """addmode=1 (the first item of a key wins): a key whose item is reserved (a
    save in its transaction, a `mqueue fetch` printing) is refused as a
    duplicate, so a put-back never queues a key twice (it did: the reserved item
    came back beside the new one)."""
    mq = mqueue.create(ns, ["name=q;addmode=1"])
    try:
        q: Any = mq["q"]
        q.add("K", "old")
        q.add("A", "a")
        tag = _persist.new_op_tag()
        assert len(q._reserve(10, tag, 4096)) == 2
        q.add("K", "new")  # a producer while the save is in its transaction
        assert q._settle(tag, False)  # the save failed: put back
        got = drain(q)
        keys = [key for key, _value in got]
        assert sorted(keys) == sorted(set(keys)), keys
        assert got == [("K", "old"), ("A", "a")]  # the first one won
        st = q.stats()
        assert st.added == st.fetched + st.evicted + st.duplicates + st.length
        assert st.duplicates == 1
    finally:
        mq.close()


def test_addmode1_reserved_keys_every_path(ns: str) -> None:
    """The rule on every way in (add, add_many, load), and after the reservation:
    committed, its keys are free again; put back, they are not."""
    mq = mqueue.create(ns, ["name=q;addmode=1;bytes=4096", "name=u;addmode=1;bytes=512"])
    try:
        q: Any = mq["q"]
        q.add_many([("K", "old"), ("L", "l")])
        tag = _persist.new_op_tag()
        q._reserve(1, tag)  # "K"
        assert q.add_many([("K", "x"), ("M", "m"), ("K", "y"), ("L", "z")]) == 1  # only M
        assert q._load(_persist.new_op_tag(), [("K", "load"), ("N", "n")]) == 1  # only N
        assert q._settle(tag, True)  # saved: "K" is gone, so it may come again
        assert q.add("K", "again") is True
        assert drain(q) == [("L", "l"), ("M", "m"), ("N", "n"), ("K", "again")]
        st = q.stats()
        assert st.added == st.fetched + st.evicted + st.duplicates + st.length
        assert st.duplicates == 4

        # a repair while reserved (an add that fails rebuilds the index) keeps
        # the reserved keys in the index
        u: Any = mq["u"]
        u.add_many([("K", "old"), ("J", "j")])
        tag = _persist.new_op_tag()
        u._reserve(1, tag)
        with pytest.raises(mqueue.QueueFullError):
            u._load(_persist.new_op_tag(), [(f"x{i}", "y" * 20) for i in range(12)])
        assert u.add("K", "new") is False
        assert u._settle(tag, False)
        assert drain(u) == [("K", "old"), ("J", "j")]
    finally:
        mq.close()


def test_cli_fetch_behind_a_dead_savers_reservation_says_recover(tmp_path: Path, ns: str) -> None:
    """A save killed with its items reserved: `mqueue fetch` cannot reserve until
    the database is asked; it must say so (run `mqueue recover --db-url`), not
    "a save in progress; try again" (which stays true forever)."""
    import sqlite3

    path = tmp_path / "mq.db"
    conn = sqlite3.connect(path)
    raw = Raw("sqlite", f"sqlite:///{path}", conn)
    try:
        raw.create_kamailio_table("q")
        run_save_and_kill(raw, ns, 10, "reserved")
        r = _cli("fetch", ns, "q", capture_output=True)
        assert r.returncode == 1
        err = json.loads(r.stderr)["error"]
        assert err["code"] == 500
        assert "mqueue recover" in err["message"] and "--db-url" in err["message"], err
        r = _cli("recover", ns, "--db-url", raw.url, capture_output=True)
        assert r.returncode == 0, r.stderr
        r = _cli("fetch", ns, "q", capture_output=True)
        assert r.returncode == 0 and json.loads(r.stdout)["key"] == "i0", r.stderr
    finally:
        conn.close()
