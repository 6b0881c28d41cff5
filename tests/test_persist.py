"""Persistence (dbmode, SPEC.md section 3) against SQLite and PostgreSQL.

Every test that takes the ``db`` fixture runs once per engine.  SQLite uses a
fresh file in ``tmp_path``; PostgreSQL a fresh schema (selected through the URL's
``options=-csearch_path=...``) in the server named by ``MQUEUE_TEST_PG_URL``
(default ``postgresql://mqueue:mqueue@127.0.0.1:5432/mqueue_test``; start one with
``.ci/services-postgres.sh``).  The PostgreSQL cases are skipped when no server is
reachable or psycopg is missing; in CI (``CI`` set) they fail instead.

Two layers: ``_persist`` alone against a small fake of the queues (fast, and lets us
break things precisely), then the real ``mqueue.create`` / ``close`` cycle.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

import mqueue
from mqueue import _persist, kamailio
from mqueue._defs import QueueDef
from mqueue._errors import DefinitionError, MQueueError, PersistenceError

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get(
    "MQUEUE_TEST_PG_URL", "postgresql://mqueue:mqueue@127.0.0.1:5432/mqueue_test"
)

HOSTILE_NAMES = [
    'q"; DROP TABLE x; --',
    "q'; DROP TABLE x; --",
    "q%s%(x)s%%",
    "q?{t}{}",
    'a"b""c',
    "name with spaces;",
    "Ünïcødé ☎ 队列",
    "-- comment",
    "\\backslash\\",
]


# ---------------------------------------------------------------- engines


def _pg_reachable() -> str | None:
    """None if the test server is usable, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(PG_URL, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"no PostgreSQL at {PG_URL}: {exc}"
    return None


_PG_PROBLEM: list[str | None] = []


def _pg_problem() -> str | None:
    if not _PG_PROBLEM:
        _PG_PROBLEM.append(_pg_reachable())
    return _PG_PROBLEM[0]


class Raw:
    """Direct access to the test database, to prepare and inspect tables."""

    def __init__(self, engine: str, url: str, conn: Any) -> None:
        self.engine = engine
        self.url = url
        self.conn = conn

    @staticmethod
    def q(name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def sql(
        self, text: str, params: tuple[Any, ...] = (), t: str | None = None
    ) -> list[tuple[Any, ...]]:
        """Run ``text`` (``?`` placeholders, ``{t}`` for table ``t``, quoted here
        independently of the code under test: by psycopg's own sql.Identifier)."""
        query: Any
        if self.engine == "postgresql":
            from psycopg import sql

            query = sql.SQL(text.replace("?", "%s"))
            if t is not None:
                query = query.format(t=sql.Identifier(t))
        else:
            query = text.format(t=self.q(t)) if t is not None else text
        # (No parameters: pass None, so psycopg does not read a '%' of a name.)
        cur = (
            self.conn.execute(query, params or None)
            if self.engine == "postgresql"
            else (self.conn.execute(query, params))
        )
        rows = cur.fetchall() if cur.description else []
        if self.engine == "sqlite":
            self.conn.commit()
        return [tuple(r) for r in rows]

    def create_kamailio_table(self, name: str, nullable: bool = False) -> None:
        """A table as an operator (or Kamailio's docs) would make it: id, key, val only."""
        null = "" if nullable else " NOT NULL DEFAULT ''"
        idcol = (
            "id INTEGER PRIMARY KEY AUTOINCREMENT"
            if self.engine == "sqlite"
            else "id SERIAL PRIMARY KEY"
        )
        self.sql(f"CREATE TABLE {{t}} ({idcol}, key TEXT{null}, val TEXT{null})", t=name)

    def insert(self, name: str, rows: list[tuple[Any, ...]]) -> None:
        """Rows of (key, val) or (id, key, val)."""
        for row in rows:
            cols = "id, key, val" if len(row) == 3 else "key, val"
            marks = ", ".join("?" * len(row))
            self.sql(f"INSERT INTO {{t}} ({cols}) VALUES ({marks})", row, t=name)

    def rows(self, name: str) -> list[tuple[Any, ...]]:
        """(key, val) of every row, in id order (raw column contents)."""
        return self.sql("SELECT key, val FROM {t} ORDER BY id", t=name)

    def full_rows(self, name: str) -> list[tuple[Any, ...]]:
        return self.sql("SELECT * FROM {t} ORDER BY id", t=name)

    def tables(self) -> list[str]:
        if self.engine == "sqlite":
            found = self.sql("SELECT name FROM sqlite_master WHERE type = 'table'")
        else:
            found = self.sql("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")
        # (mqueue_ops: mqueue's own marker table, see docs/persistence.md)
        return sorted(r[0] for r in found if r[0] not in ("sqlite_sequence", "mqueue_ops"))

    def exists(self, name: str) -> bool:
        if self.engine == "sqlite":
            found = self.sql(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
            )
        else:
            found = self.sql(
                "SELECT 1 FROM pg_tables WHERE schemaname = current_schema() AND tablename = ?",
                (name,),
            )
        return bool(found)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Raw]:
    if request.param == "sqlite":
        with sqlite_db(tmp_path / "mq.db") as raw:
            yield raw
        return

    problem = _pg_problem()
    if problem is not None:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL tests must run in CI: {problem}")
        pytest.skip(problem)
    with pg_schema_db("t") as raw:
        yield raw


@contextlib.contextmanager
def sqlite_db(path: Path) -> Iterator[Raw]:
    """The SQLite database file ``path`` (made when missing), its connection closed afterwards."""
    conn = sqlite3.connect(path)
    try:
        yield Raw("sqlite", f"sqlite:///{path}", conn)
    finally:
        conn.close()


@contextlib.contextmanager
def pg_schema_db(prefix: str) -> Iterator[Raw]:
    """A private schema of the test server as a database (mqueue's tables go
    to the URL's search_path), dropped afterwards."""
    import psycopg

    schema = f"{prefix}{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(PG_URL, autocommit=True)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in PG_URL else "?"
    url = f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    conn = psycopg.connect(url, autocommit=True)
    try:
        yield Raw("postgresql", url, conn)
    finally:
        conn.close()
        admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
        admin.close()


# -------------------------------------------------------- a fake of the queues


class Item(NamedTuple):
    key: str | bytes
    value: str | bytes


@dataclass(frozen=True)
class FakeDef:
    name: str
    size: int = 0
    addmode: int = 0
    dbmode: int = 0
    nbytes: int = 1 << 20


def _kb(key: str | bytes) -> bytes:
    return key.encode() if isinstance(key, str) else key


class FakeQueue:
    """Just enough of a queue: FIFO, size bound, addmode, optional refusal."""

    def __init__(self, d: FakeDef) -> None:
        self.d = d
        self.items: collections.deque[Item] = collections.deque()
        self.refuse: set[bytes] = set()  # keys whose add raises
        self.fetches_left: int | None = None  # fetch_many calls before one raises

    def add(self, key: str | bytes, value: str | bytes) -> bool:
        if not isinstance(key, (str, bytes)) or not isinstance(value, (str, bytes)):
            raise TypeError("str or bytes")
        if _kb(key) in self.refuse:
            raise MQueueError("refused")
        same = [i for i in self.items if self.d.addmode and _kb(i.key) == _kb(key)]
        if same and self.d.addmode == 1:
            return False
        if same and self.d.addmode == 2:
            self.items.remove(same[0])
        self.items.append(Item(key, value))
        if self.d.size > 0 and len(self.items) > self.d.size:
            self.items.popleft()
        return True

    def fetch_many(self, n: int, timeout: float | None = 0) -> list[Item]:
        if self.fetches_left is not None:
            if self.fetches_left == 0:
                raise MQueueError("simulated fetch failure")
            self.fetches_left -= 1
        out = []
        while self.items and len(out) < n:
            out.append(self.items.popleft())
        return out

    def __len__(self) -> int:
        return len(self.items)


class FakeMQ:
    def __init__(self, *defs: FakeDef) -> None:
        self.definitions = list(defs)
        self.queues = {d.name: FakeQueue(d) for d in defs}

    def __getitem__(self, name: str) -> FakeQueue:
        return self.queues[name]


def items_of(q: FakeQueue) -> list[tuple[Any, Any]]:
    return [tuple(i) for i in q.items]


TRICKY_ITEMS: list[tuple[str | bytes, str | bytes]] = [
    ("alice", "call from bob"),
    ("", ""),  # empty str key and value
    (b"", b""),  # empty bytes
    ("k", b"\x00\xff\xfe raw"),  # bytes, not UTF-8, with NUL
    (b"bytes-utf8", b"plain text bytes"),  # bytes that are UTF-8 text
    ("nul\x00in str", "v\x00"),  # str holding U+0000
    ("ünï ☎", "队列"),
    ("looks like b64", "aGVsbG8="),  # a str that happens to be base64
    ("sql'\"; --", "%s ? {t}"),
]


# ------------------------------------------------------------ unit: _persist


def test_roundtrip_types_fake(db: Raw) -> None:
    mq = FakeMQ(FakeDef("q1", dbmode=1))
    for k, v in TRICKY_ITEMS:
        mq["q1"].add(k, v)
    assert _persist.save_queues(mq, db.url) == {"q1": len(TRICKY_ITEMS)}
    assert len(mq["q1"]) == 0  # saved items leave the queue
    assert len(db.rows("q1")) == len(TRICKY_ITEMS)

    mq2 = FakeMQ(FakeDef("q1", dbmode=1))
    assert _persist.load_queues(mq2, db.url) == {"q1": len(TRICKY_ITEMS)}
    got = items_of(mq2["q1"])
    assert got == TRICKY_ITEMS
    assert [(type(k), type(v)) for k, v in got] == [(type(k), type(v)) for k, v in TRICKY_ITEMS]
    assert db.rows("q1") == []  # emptied after load


def test_str_rows_are_plain_text_for_kamailio(db: Raw) -> None:
    mq = FakeMQ(FakeDef("q1", dbmode=3))
    mq["q1"].add("alice", "call from bob")
    mq["q1"].add(b"raw", b"text bytes")
    mq["q1"].add("k", b"\xff")
    _persist.save_queues(mq, db.url)
    assert db.full_rows("q1") == [
        (1, "alice", "call from bob", None, None),
        (2, "raw", "text bytes", "bytes", "bytes"),
        (3, "k", "/w==", None, "base64"),
    ]


def test_kamailio_made_table_load_and_save(db: Raw) -> None:
    db.create_kamailio_table("kq")
    db.insert("kq", [("a", "1"), ("b", "2")])
    mq = FakeMQ(FakeDef("kq", dbmode=1))
    _persist.load_queues(mq, db.url)
    assert items_of(mq["kq"]) == [("a", "1"), ("b", "2")]
    # str items: the table keeps Kamailio's three columns
    _persist.save_queues(mq, db.url)
    assert db.full_rows("kq")[0][1:] == ("a", "1") and len(db.full_rows("kq")[0]) == 3
    db.sql('DELETE FROM "kq"')
    # bytes items: two nullable columns are added; key/val still hold the text
    mq["kq"].add(b"k", b"v")
    _persist.save_queues(mq, db.url)
    assert db.full_rows("kq")[0][1:] == ("k", "v", "bytes", "bytes")
    mq2 = FakeMQ(FakeDef("kq", dbmode=1))
    _persist.load_queues(mq2, db.url)
    assert items_of(mq2["kq"]) == [(b"k", b"v")]


def test_load_in_id_order_fake(db: Raw) -> None:
    db.create_kamailio_table("q")
    db.insert("q", [(50, "k50", "v50"), (7, "k7", "v7"), (1000, "k1000", "v"), (8, "k8", "v8")])
    mq = FakeMQ(FakeDef("q", dbmode=2))
    _persist.load_queues(mq, db.url)
    assert [k for k, _ in items_of(mq["q"])] == ["k7", "k8", "k50", "k1000"]


@pytest.mark.parametrize("column", ["key", "val"])
def test_null_row_leaves_table_intact(db: Raw, column: str) -> None:
    db.create_kamailio_table("q", nullable=True)
    db.insert("q", [(1, "a", "1"), (2, "b", "2")])
    bad = (3, None, "3") if column == "key" else (3, "c", None)
    db.insert("q", [bad, (4, "d", "4")])
    before = db.rows("q")
    mq = FakeMQ(FakeDef("q", dbmode=1))
    with pytest.raises(PersistenceError) as exc:
        _persist.load_queues(mq, db.url)
    msg = str(exc.value)
    assert "'q'" in msg and "id=3" in msg and column in msg and "NULL" in msg
    assert db.rows("q") == before
    assert len(mq["q"]) == 0


def test_bad_marker_and_bad_base64(db: Raw) -> None:
    mq = FakeMQ(FakeDef("q", dbmode=3))
    mq["q"].add("k", b"\xff\x00")
    _persist.save_queues(mq, db.url)
    db.sql("UPDATE \"q\" SET val = '!!not base64!!'")
    with pytest.raises(PersistenceError, match=r"'q' row id=1: val is not valid base64"):
        _persist.load_queues(FakeMQ(FakeDef("q", dbmode=1)), db.url)
    db.sql("UPDATE \"q\" SET val_enc = 'rot13'")
    with pytest.raises(PersistenceError, match=r"'q' row id=1: unknown val_enc 'rot13'"):
        _persist.load_queues(FakeMQ(FakeDef("q", dbmode=1)), db.url)
    assert len(db.rows("q")) == 1


def test_load_is_one_transaction_over_all_tables(db: Raw) -> None:
    db.create_kamailio_table("good")
    db.create_kamailio_table("bad", nullable=True)
    db.insert("good", [("g1", "1"), ("g2", "2")])
    db.insert("bad", [(1, "b1", "1"), (2, "b2", None)])
    mq = FakeMQ(FakeDef("good", dbmode=1), FakeDef("bad", dbmode=2))
    with pytest.raises(PersistenceError, match=r"'bad' row id=2"):
        _persist.load_queues(mq, db.url)
    assert db.rows("good") == [("g1", "1"), ("g2", "2")]
    assert db.rows("bad") == [("b1", "1"), ("b2", None)]


def test_failed_add_during_load_names_row_and_keeps_table(db: Raw) -> None:
    db.create_kamailio_table("q")
    db.insert("q", [("a", "1"), ("boom", "2"), ("c", "3")])
    mq = FakeMQ(FakeDef("q", dbmode=1))
    mq["q"].refuse.add(b"boom")
    with pytest.raises(PersistenceError, match=r"table 'q' row id=2: cannot add"):
        _persist.load_queues(mq, db.url)
    assert db.rows("q") == [("a", "1"), ("boom", "2"), ("c", "3")]


def test_missing_table_is_created_at_load_and_save(db: Raw) -> None:
    mq = FakeMQ(FakeDef("l", dbmode=2), FakeDef("s", dbmode=3), FakeDef("n", dbmode=0))
    assert _persist.load_queues(mq, db.url) == {"l": 0}
    assert db.exists("l") and not db.exists("s") and not db.exists("n")
    assert _persist.save_queues(mq, db.url) == {"s": 0}  # empty queue: table still made
    assert db.exists("s") and not db.exists("n")


def test_dbmode_selection(db: Raw) -> None:
    defs = [FakeDef(f"m{m}", dbmode=m) for m in range(4)]
    mq = FakeMQ(*defs)
    for d in defs:
        mq[d.name].add("k", d.name)
    assert sorted(_persist.save_queues(mq, db.url)) == ["m1", "m3"]
    assert len(mq["m0"]) == 1 and len(mq["m2"]) == 1
    assert len(mq["m1"]) == 0 and len(mq["m3"]) == 0
    db.sql('INSERT INTO "m1" (key, val) VALUES (?, ?)', ("x", "y"))
    db.create_kamailio_table("m2")
    db.insert("m2", [("x", "y")])
    db.insert("m3", [("x", "y")])
    mq2 = FakeMQ(*defs)
    assert sorted(_persist.load_queues(mq2, db.url)) == ["m1", "m2"]
    assert len(mq2["m3"]) == 0 and len(db.rows("m3")) == 2  # dbmode 3 never loads
    assert not db.exists("m0")


def test_save_appends_never_deletes(db: Raw) -> None:
    mq = FakeMQ(FakeDef("q", dbmode=3))
    for round_ in range(3):
        mq["q"].add("k", f"r{round_}")
        _persist.save_queues(mq, db.url)
    assert db.rows("q") == [("k", "r0"), ("k", "r1"), ("k", "r2")]


def test_save_failure_puts_items_back_in_order(db: Raw) -> None:
    # A constraint that refuses one row makes the INSERTs fail half way.
    if db.engine == "sqlite":
        db.sql(
            'CREATE TABLE "q" (id INTEGER PRIMARY KEY AUTOINCREMENT, '
            "key TEXT CHECK (key <> 'bad'), val TEXT)"
        )
    else:
        db.sql(
            "CREATE TABLE \"q\" (id SERIAL PRIMARY KEY, key TEXT CHECK (key <> 'bad'), val TEXT)"
        )
    db.insert("q", [("old", "row")])
    mq = FakeMQ(FakeDef("q", dbmode=1), FakeDef("other", dbmode=3))
    items = [("a", "1"), ("b", b"2\xff"), ("bad", "3"), ("c", "4")]
    for k, v in items:
        mq["q"].add(k, v)
    mq["other"].add("o", "1")
    with pytest.raises(PersistenceError) as exc:
        _persist.save_queues(mq, db.url)
    assert "'q'" in str(exc.value) and "4 item(s) put back" in str(exc.value)
    assert items_of(mq["q"]) == items
    assert db.rows("q") == [("old", "row")]  # the ALTER TABLE was rolled back too
    assert [r[0] for r in db.sql('SELECT * FROM "q"')] == [1]
    assert len(db.full_rows("q")[0]) == 3
    # the other queue was saved all the same
    assert db.rows("other") == [("o", "1")] and len(mq["other"]) == 0


def test_hook_failure_mid_save_rolls_back(db: Raw, monkeypatch: pytest.MonkeyPatch) -> None:
    mq = FakeMQ(FakeDef("q", dbmode=3))
    for i in range(10):
        mq["q"].add(f"k{i}", f"v{i}")

    def hook(table: str, done: int) -> None:
        if done >= 5:
            raise RuntimeError("simulated database failure")

    monkeypatch.setattr(_persist, "_SAVE_BATCH", 1)
    monkeypatch.setattr(_persist, "_save_hook", hook)
    with pytest.raises(PersistenceError, match="simulated database failure"):
        _persist.save_queues(mq, db.url)
    assert [k for k, _ in items_of(mq["q"])] == [f"k{i}" for i in range(10)]
    assert not db.exists("q")  # even its CREATE TABLE was rolled back


def test_fetch_failure_mid_save_puts_back(db: Raw, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_persist, "_FETCH_CHUNK", 2)
    mq = FakeMQ(FakeDef("q", dbmode=1))
    items = [(f"k{i}", f"v{i}") for i in range(7)]
    for k, v in items:
        mq["q"].add(k, v)
    mq["q"].fetches_left = 2  # 4 items come out, then fetch_many raises
    with pytest.raises(PersistenceError, match="simulated fetch failure"):
        _persist.save_queues(mq, db.url)
    # the 4 fetched items were re-added after the 3 never fetched: nothing lost
    assert sorted(items_of(mq["q"])) == items
    assert not db.exists("q")


def test_many_items_in_batches(db: Raw) -> None:
    mq = FakeMQ(FakeDef("q", dbmode=1))
    items = [(f"k{i}", b"\x00" * (i % 7)) for i in range(5000)]
    for k, v in items:
        mq["q"].add(k, v)
    t0 = time.monotonic()
    assert _persist.save_queues(mq, db.url) == {"q": 5000}
    mq2 = FakeMQ(FakeDef("q", dbmode=1))
    assert _persist.load_queues(mq2, db.url) == {"q": 5000}
    assert items_of(mq2["q"]) == items
    assert time.monotonic() - t0 < 60


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_table_names(db: Raw, name: str) -> None:
    db.create_kamailio_table("x")  # the table the names try to drop
    db.insert("x", [("still", "here")])
    mq = FakeMQ(FakeDef(name, dbmode=1))
    mq[name].add("k", "v")
    mq[name].add(b"k2", b"\xff")
    _persist.save_queues(mq, db.url)
    assert db.exists(name)
    assert db.rows(name) == [("k", "v"), ("k2", "/w==")]
    mq2 = FakeMQ(FakeDef(name, dbmode=1))
    _persist.load_queues(mq2, db.url)
    assert items_of(mq2[name]) == [("k", "v"), (b"k2", b"\xff")]
    assert db.rows("x") == [("still", "here")]


def test_names_that_cannot_be_tables(db: Raw) -> None:
    bad = ["nul\x00name", "lone \udcff surrogate"]
    if db.engine == "postgresql":
        bad += ["x" * 64, "é" * 32]  # 64 bytes each
    else:
        bad += ["sqlite_master", "SQLITE_x"]
    for name in bad:
        mq = FakeMQ(FakeDef(name, dbmode=1))
        with pytest.raises(DefinitionError, match="cannot be a database table name"):
            _persist.load_queues(mq, db.url)
        with pytest.raises(DefinitionError, match="cannot be a database table name"):
            _persist.save_queues(mq, db.url)
        with pytest.raises(DefinitionError):
            _persist.validate_table_name(name, db.url)
        with pytest.raises(DefinitionError):
            _persist.validate_table_name(name)  # every engine's rules
    if db.engine == "postgresql":
        _persist.validate_table_name("x" * 63, db.url)
        _persist.validate_table_name("é" * 31, db.url)
    else:
        _persist.validate_table_name("x" * 300, db.url)
    assert db.tables() == []  # refused before touching the database


def test_sqlite_case_collision_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    mq = FakeMQ(FakeDef("Calls", dbmode=1), FakeDef("calls", dbmode=3))
    with pytest.raises(DefinitionError, match="share one table"):
        _persist.load_queues(mq, url)
    with pytest.raises(DefinitionError, match="share one table"):
        _persist.validate_queue_tables(mq.definitions, url)
    assert not (tmp_path / "c.db").exists()  # refused before touching the database
    # PostgreSQL keeps quoted names' case: no collision there
    _persist.validate_queue_tables(mq.definitions, "postgresql://u@h/d")


def test_nothing_to_do_touches_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    mq = FakeMQ(FakeDef("q", dbmode=0), FakeDef("r", dbmode=3))
    assert _persist.load_queues(mq, url) == {}
    assert not (tmp_path / "none.db").exists()
    assert _persist.save_queues(mq, url, queues=[]) == {}
    assert not (tmp_path / "none.db").exists()


def test_queues_argument(db: Raw) -> None:
    mq = FakeMQ(FakeDef("a", dbmode=1), FakeDef("b", dbmode=1))
    mq["a"].add("k", "a")
    mq["b"].add("k", "b")
    assert _persist.save_queues(mq, db.url, queues=["b"]) == {"b": 1}
    assert len(mq["a"]) == 1 and not db.exists("a")
    with pytest.raises(KeyError):
        _persist.save_queues(mq, db.url, queues=["nope"])


# ------------------------------------------------------------------ db_url


def test_db_url_relative_and_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mq = FakeMQ(FakeDef("q", dbmode=3))
    mq["q"].add("k", "v")
    assert _persist.save_queues(mq, "sqlite:///rel.db") == {"q": 1}
    assert (tmp_path / "rel.db").exists()
    mq["q"].add("k", "v")
    absolute = tmp_path / "sub" / "abs.db"
    absolute.parent.mkdir()
    assert _persist.save_queues(mq, f"sqlite:///{absolute}") == {"q": 1}  # sqlite:////abs
    assert absolute.exists()
    assert _persist.validate_db_url("SQLite:///x.db") == "sqlite"
    assert _persist.validate_db_url("postgres://u:p@h/d") == "postgresql"
    assert _persist.validate_db_url("postgresql://u:p@h:5432/d") == "postgresql"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://u:secret@h/d", "unsupported database scheme 'mysql'"),
        ("no-scheme-here", "has no scheme"),
        ("sqlite://host/x.db", "no host part"),
        ("sqlite:///", "no database file path"),
        ("sqlite:///x.db?mode=ro", "query strings"),
        ("sqlite:///:memory:", "in-memory"),
        ("postgresql:/nohost", "postgresql://user:pass@host:port/dbname"),
    ],
)
def test_bad_db_urls(url: str, match: str) -> None:
    with pytest.raises(DefinitionError, match=match) as exc:
        _persist.validate_db_url(url)
    assert "secret" not in str(exc.value)
    mq = FakeMQ(FakeDef("q", dbmode=1))
    with pytest.raises(DefinitionError, match=match):
        _persist.load_queues(mq, url)


def test_unopenable_sqlite_file_is_persistence_error(tmp_path: Path) -> None:
    mq = FakeMQ(FakeDef("q", dbmode=1))
    mq["q"].add("k", "v")
    url = f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}"
    with pytest.raises(PersistenceError, match="cannot open SQLite database"):
        _persist.save_queues(mq, url)
    assert items_of(mq["q"]) == [("k", "v")]  # nothing fetched
    with pytest.raises(PersistenceError):
        _persist.load_queues(mq, url)


def test_unreachable_postgres_hides_password() -> None:
    mq = FakeMQ(FakeDef("q", dbmode=1))
    mq["q"].add("k", "v")
    url = "postgresql://user:s3cret@127.0.0.1:1/db?connect_timeout=2"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed")
    with pytest.raises(PersistenceError, match="cannot connect to PostgreSQL") as exc:
        _persist.save_queues(mq, url)
    assert "s3cret" not in str(exc.value) and "user:***@127.0.0.1:1" in str(exc.value)
    assert items_of(mq["q"]) == [("k", "v")]


def test_missing_driver_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError
    mq = FakeMQ(FakeDef("q", dbmode=1))
    with pytest.raises(PersistenceError, match=r"mqueue-shm\[postgres\]"):
        _persist.load_queues(mq, "postgresql://u:p@127.0.0.1/d")


def test_sqlite_non_utf8_text_loads_as_bytes(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, key TEXT, val TEXT)")
    # Another program wrote bytes that are not UTF-8 as TEXT, and a BLOB.
    conn.execute("INSERT INTO q (key, val) VALUES (CAST(X'ff61' AS TEXT), X'00ff')")
    conn.commit()
    conn.close()
    mq = FakeMQ(FakeDef("q", dbmode=1))
    _persist.load_queues(mq, f"sqlite:///{path}")
    assert items_of(mq["q"]) == [(b"\xffa", b"\x00\xff")]


def test_non_text_column_value_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "n.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, key, val)")  # no affinity
    conn.execute("INSERT INTO q (key, val) VALUES ('a', 12)")
    conn.commit()
    conn.close()
    with pytest.raises(PersistenceError, match=r"'q' row id=1: val is of type int"):
        _persist.load_queues(FakeMQ(FakeDef("q", dbmode=1)), f"sqlite:///{path}")


def test_table_without_required_columns(db: Raw) -> None:
    db.sql('CREATE TABLE "q" (id INTEGER, k TEXT, v TEXT)')
    with pytest.raises(PersistenceError, match="table 'q' has no column 'key'"):
        _persist.load_queues(FakeMQ(FakeDef("q", dbmode=1)), db.url)
    mq = FakeMQ(FakeDef("q", dbmode=1))
    mq["q"].add("a", "b")
    with pytest.raises(PersistenceError, match="table 'q' has no column 'key'"):
        _persist.save_queues(mq, db.url)
    assert items_of(mq["q"]) == [("a", "b")]


# --------------------------------------------- the real cycle: create / close


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"t{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        with contextlib.suppress(FileNotFoundError):
            mqueue.destroy(name)
        assert not os.path.exists(f"/dev/shm/mqueue.{name}")


def restart(mq: mqueue.MQueue, ns: str, defs: list[Any], url: str) -> mqueue.MQueue:
    """Shut down as the creator (saves), remove the namespace, create it again (loads)."""
    mq.close()
    mqueue.destroy(ns)
    return mqueue.create(ns, defs, db_url=url)


def drain(q: Any) -> list[tuple[Any, Any]]:
    return [tuple(i) for i in q.fetch_many(1_000_000, timeout=0)]


def test_dbmode1_cycle(db: Raw, ns: str) -> None:
    defs = ["name=q;dbmode=1"]
    mq = mqueue.create(ns, defs, db_url=db.url)
    assert db.exists("q") and db.rows("q") == []  # created at load
    q = mq["q"]
    q.add("held", "by this process")
    assert q.fetch() == ("held", "by this process")  # held: not saved at close
    for k, v in TRICKY_ITEMS:
        q.add(k, v)
    mq = restart(mq, ns, defs, db.url)
    assert db.rows("q") == []  # loaded, then emptied
    got = drain(mq["q"])
    assert got == TRICKY_ITEMS
    assert [(type(k), type(v)) for k, v in got] == [(type(k), type(v)) for k, v in TRICKY_ITEMS]
    for k, v in TRICKY_ITEMS[:3]:
        mq["q"].add(k, v)
    mq.close()
    assert len(db.rows("q")) == 3  # saved again by the second creator
    with mqueue.attach(ns) as other:
        assert len(other["q"]) == 0  # the saved items left the queue


def test_dbmode2_loads_but_never_saves(db: Raw, ns: str) -> None:
    db.create_kamailio_table("q")
    db.insert("q", [("a", "1"), ("b", "2")])
    mq = mqueue.create(ns, ["name=q;dbmode=2"], db_url=db.url)
    try:
        assert db.rows("q") == []
        mq["q"].add("c", "3")
        assert len(mq["q"]) == 3
    finally:
        mq.close()
    assert db.rows("q") == []
    with mqueue.attach(ns) as other:
        assert other["q"].fetch() == ("a", "1")  # still in the queue


def test_dbmode3_saves_only_and_grows(db: Raw, ns: str) -> None:
    defs = ["name=q;dbmode=3"]
    db.create_kamailio_table("q")
    db.insert("q", [("old", "0")])
    mq = mqueue.create(ns, defs, db_url=db.url)
    assert len(mq["q"]) == 0  # dbmode 3 never loads
    expected = [("old", "0")]
    for run in range(1, 4):
        mq["q"].add_many([(f"k{run}", "a"), (f"k{run}", b"b")])
        expected += [(f"k{run}", "a"), (f"k{run}", "b")]
        mq = restart(mq, ns, defs, db.url)
        assert db.rows("q") == expected  # appended, never deleted
        assert len(mq["q"]) == 0
    mq.close()


def test_dbmode0_ignores_the_database(db: Raw, ns: str) -> None:
    db.create_kamailio_table("q")
    db.insert("q", [("a", "1")])
    mq = mqueue.create(ns, ["name=q", "name=r;dbmode=0"], db_url=db.url)
    assert len(mq["q"]) == 0
    mq["q"].add("b", "2")
    mq["r"].add("b", "2")
    mq.close()
    assert db.rows("q") == [("a", "1")] and not db.exists("r")


def test_load_order_size_and_addmode(db: Raw, ns: str) -> None:
    rows = [(30, "k1", "a"), (10, "k2", "b"), (20, "k1", "c"), (40, "k3", "d"), (50, "k2", "e")]
    # in id order: k2:b k1:c k1:a k3:d k2:e
    for name in ("plain", "size3", "keep", "replace"):
        db.create_kamailio_table(name)
        db.insert(name, rows)
    defs = [
        "name=plain;dbmode=2",
        "name=size3;size=3;dbmode=1",
        "name=keep;addmode=1;dbmode=1",
        "name=replace;addmode=2;dbmode=2",
    ]
    mq = mqueue.create(ns, defs, db_url=db.url)
    try:
        assert drain(mq["plain"]) == [
            ("k2", "b"),
            ("k1", "c"),
            ("k1", "a"),
            ("k3", "d"),
            ("k2", "e"),
        ]
        assert drain(mq["size3"]) == [("k1", "a"), ("k3", "d"), ("k2", "e")]
        assert drain(mq["keep"]) == [("k2", "b"), ("k1", "c"), ("k3", "d")]
        assert drain(mq["replace"]) == [("k1", "a"), ("k3", "d"), ("k2", "e")]
        for name in ("plain", "size3", "keep", "replace"):
            assert db.rows(name) == []  # every table emptied
    finally:
        mq.close()


def test_bad_row_fails_create_and_changes_nothing(db: Raw, ns: str) -> None:
    db.create_kamailio_table("good")
    db.create_kamailio_table("bad", nullable=True)
    db.insert("good", [("g", "1")])
    db.insert("bad", [(5, "b", "1"), (9, None, "2")])
    defs = ["name=good;dbmode=1", "name=bad;dbmode=1", "name=later;dbmode=3"]
    with pytest.raises(PersistenceError) as exc:
        mqueue.create(ns, defs, db_url=db.url)
    assert "'bad'" in str(exc.value) and "id=9" in str(exc.value)
    assert "key is NULL" in str(exc.value)
    assert db.rows("good") == [("g", "1")]  # one transaction: rolled back
    assert db.rows("bad") == [("b", "1"), (None, "2")]
    assert not db.exists("later")  # a failed start never saves
    with pytest.raises(FileNotFoundError):
        mqueue.attach(ns)


def test_item_too_large_for_queue_fails_create(db: Raw, ns: str) -> None:
    db.create_kamailio_table("q")
    db.insert("q", [("a", "1"), ("big", "x" * 4096)])
    with pytest.raises(PersistenceError, match=r"table 'q' row id=2: cannot add"):
        mqueue.create(ns, ["name=q;dbmode=1;bytes=1K"], db_url=db.url)
    assert db.rows("q") == [("a", "1"), ("big", "x" * 4096)]
    with pytest.raises(FileNotFoundError):
        mqueue.attach(ns)


def test_missing_tables_created(db: Raw, ns: str) -> None:
    mq = mqueue.create(
        ns, ["name=one;dbmode=1", "name=two;dbmode=2", "name=three;dbmode=3"], db_url=db.url
    )
    assert db.tables() == ["one", "two"]
    mq.close()
    assert db.tables() == ["one", "three", "two"]


@pytest.mark.parametrize("name", HOSTILE_NAMES[:4])
def test_hostile_queue_name_real(db: Raw, ns: str, name: str) -> None:
    db.create_kamailio_table("x")
    db.insert("x", [("still", "here")])
    defs = [QueueDef(name=name, dbmode=1)]
    mq = mqueue.create(ns, defs, db_url=db.url)
    mq[name].add("k", b"v")
    mq = restart(mq, ns, defs, db.url)
    assert drain(mq[name]) == [("k", b"v")]
    mq.close()
    assert db.rows("x") == [("still", "here")]


def test_hostile_name_in_a_modparam_string(db: Raw, ns: str) -> None:
    db.create_kamailio_table("x")
    mq = mqueue.create(ns, ["name='q\"; DROP TABLE x; --';dbmode=3"], db_url=db.url)
    mq['q"; DROP TABLE x; --'].add("k", "v")
    mq.close()
    assert db.rows('q"; DROP TABLE x; --') == [("k", "v")] and db.exists("x")


def test_name_that_cannot_be_a_table_refused_at_create(db: Raw, ns: str) -> None:
    name = "x" * 64 if db.engine == "postgresql" else "sqlite_q"
    with pytest.raises(DefinitionError, match="cannot be a database table name"):
        mqueue.create(ns, [QueueDef(name=name, dbmode=1)], db_url=db.url)
    with pytest.raises(FileNotFoundError):
        mqueue.attach(ns)
    assert db.tables() == []


def test_attached_and_forked_close_do_not_save(db: Raw, ns: str) -> None:
    mq = mqueue.create(ns, ["name=q;dbmode=1"], db_url=db.url)
    mq["q"].add_many([("a", "1"), ("b", "2"), ("c", "3")])
    # another process attaches and closes
    code = "import sys, mqueue; m = mqueue.attach(sys.argv[1]); assert len(m['q']) == 3; m.close()"
    subprocess.run([sys.executable, "-c", code, ns], cwd=REPO, env=_child_env(), check=True)
    # an attached handle in this process
    mqueue.attach(ns).close()
    # a forked child closes the creator's own handle
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        status = 0
        try:
            mq.close()
        except BaseException:
            status = 1
        os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert db.rows("q") == [] and len(mq["q"]) == 3
    mq.close()  # the creator
    assert db.rows("q") == [("a", "1"), ("b", "2"), ("c", "3")]


def test_kamailio_facade_cycle(db: Raw, ns: str) -> None:
    def module() -> kamailio.MQueueModule:
        m = kamailio.MQueueModule()
        m.modparam("db_url", db.url)
        m.modparam("mqueue", "name=myq;size=20;dbmode=1")
        return m

    m = module()
    m.init(ns)
    assert m.mq_add("myq", "alice", "call from bob") == 1
    assert m.mq_add("myq", "", "") == 1
    m.close()
    assert db.rows("myq") == [("alice", "call from bob"), ("", "")]
    mqueue.destroy(ns)
    m = module()
    m.init(ns)
    assert db.rows("myq") == []
    assert m.mq_fetch("myq") == 1 and m.pv("$mqk(myq)") == "alice"
    assert m.mq_fetch("myq") == 1 and m.pv("$mqk(myq)") == "" and m.pv("$mqv(myq)") == ""
    m.close()


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


KILL_CHILD = textwrap.dedent(
    """
    import sys, time
    import mqueue
    from mqueue import _persist

    ns, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    mq = mqueue.create(ns, ["name=q;dbmode=3"], db_url=url)
    mq["q"].add_many([(f"new{i}", "v" * 50) for i in range(n)])

    def hook(table, done):
        if done == n // 2:
            print("halfway", flush=True)
        time.sleep(0.005)

    _persist._SAVE_BATCH = 1
    _persist._save_hook = hook
    mq.close()  # saves, row by row, until killed
    print("saved", flush=True)
    """
)


@pytest.mark.parametrize("kill", [True, False])
def test_killed_during_save_leaves_old_or_new_rows(db: Raw, ns: str, kill: bool) -> None:
    db.create_kamailio_table("q")
    old = [("old1", "a"), ("old2", "b")]
    db.insert("q", old)
    n = 200
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, ns, db.url, str(n)],
        cwd=REPO,
        env=_child_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "halfway"
        if kill:
            child.send_signal(signal.SIGKILL)
            assert child.wait(timeout=30) == -signal.SIGKILL
        else:
            assert child.stdout.readline().strip() == "saved"
            assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    deadline = time.monotonic() + 30
    while True:  # PostgreSQL ends the dead client's transaction on its own
        try:
            rows = db.rows("q")
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    new = [(f"new{i}", "v" * 50) for i in range(n)]
    assert rows == (old if kill else old + new)
    # The table is still usable: a later save appends after the old rows.
    mqueue.destroy(ns)
    mq = mqueue.create(ns, ["name=q;dbmode=3"], db_url=db.url)
    mq["q"].add("after", "kill")
    mq.close()
    assert db.rows("q")[-1] == ("after", "kill")
