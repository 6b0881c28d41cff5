"""Persistence (``dbmode``): load queues from database tables, save them back.

This is Kamailio's ``mqueue`` database support (``mqueue_db.c``), with its rough
edges fixed.  See ``docs/persistence.md`` for the user-facing description.

* One table per queue, named after the queue, with columns ``id`` (auto-increment,
  the order), ``key`` and ``val`` (text).  We also keep two nullable columns,
  ``key_enc`` and ``val_enc``, that say how to read ``key`` and ``val`` when the
  item was ``bytes`` (or a ``str`` that SQL text cannot hold); Kamailio never names
  them, so it ignores them.  ``NULL`` there means "the column is the ``str`` item
  itself", which is exactly what Kamailio writes.
* :func:`load_queues` (dbmode 1 and 2, at creation) reads every table in ``id``
  order, adds the rows through the queue's normal ``add`` (so ``size`` and
  ``addmode`` apply), then deletes the rows, all of it in **one** transaction over
  all tables: any failure leaves every table as it was.
* :func:`save_queues` (dbmode 1 and 3, at the creator's close) fetches each queue's
  items, oldest first, and appends them to its table in one transaction per queue.
  If the database write fails the fetched items are put back into the queue in
  their order, so nothing is lost.  Save never deletes (Kamailio's behaviour), so a
  dbmode 3 table only grows.
* ``db_url``: ``sqlite:///relative/path.db`` or ``sqlite:////absolute/path.db``
  (standard library), ``postgresql://user:pass@host:port/db`` (psycopg 3, the
  optional extra ``mqueue[postgres]``, imported only when used).

Table names are never put into SQL raw: they are quoted as SQL identifiers (and, for
psycopg, their ``%`` doubled); a name that cannot be a table name is refused with a
:class:`~mqueue._errors.DefinitionError` before the database is touched.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol

from . import _log as _mqlog
from ._core import Data, record_size
from ._core import redact_url as _redact
from ._dist import install_hint
from ._errors import DefinitionError, PersistenceError
from ._pathcheck import sqlite_path_problem

__all__ = [
    "LOAD_DBMODES",
    "SAVE_DBMODES",
    "load_queues",
    "save_queues",
    "validate_db_url",
    "validate_queue_tables",
    "validate_table_name",
]

LOAD_DBMODES = frozenset({1, 2})
"""dbmodes whose queues are loaded from their table when the queues are created."""

SAVE_DBMODES = frozenset({1, 3})
"""dbmodes whose queues are saved to their table by the creator's ``close``."""

MARKER_TABLE = "mqueue_ops"
"""Our table of save and load markers (one row per save or load in progress)."""

DBID_TABLE = "mqueue_dbid"
"""Our table holding the database's id (one row, made at the first save): a save's
reservation records it, so that it is resolved only against that database."""

PG_MAX_IDENTIFIER_BYTES = 63
"""PostgreSQL silently truncates longer identifiers (NAMEDATALEN - 1); we refuse them."""

# Markers of the ``key_enc`` / ``val_enc`` columns (NULL: the column is the str).
ENC_BYTES = "bytes"  # bytes item; the column holds its content, which is UTF-8 text
ENC_BASE64 = "base64"  # bytes item; the column holds its standard base64
ENC_STR_BASE64 = "str-base64"  # str holding U+0000 or a lone surrogate: base64 of its UTF-8
# (surrogatepass: a lone surrogate is encoded as its 3 bytes, as the queues store it)
_ENCODINGS = (ENC_BYTES, ENC_BASE64, ENC_STR_BASE64)

# Test hooks (not API).  ``_save_hook(table, rows_inserted_so_far)`` runs after each
# batch of INSERTs of a save, inside its transaction; ``_SAVE_BATCH`` rows per batch.
_save_hook: Callable[[str, int], None] | None = None
_SAVE_BATCH = 500
# How many items one fetch_many call of a save takes (backends without reservations).
_FETCH_CHUNK = 1000
# How long a save or load waits for the table's persistence lock (another save or
# load of it, or a dead session PostgreSQL has not ended yet).
_LOCK_TIMEOUT_S = 30.0
# Test hook (not API): ``_load_hook(stage)`` runs at each stage of a load
# ("marked", "applied"), between its steps.
_load_hook: Callable[[str], None] | None = None

_log = logging.getLogger(__name__)



class _QueueLike(Protocol):
    def add(self, key: Data, value: Data) -> bool: ...

    def fetch_many(self, n: int, timeout: float | None = 0) -> Sequence[Any]: ...

    def __len__(self) -> int: ...


class _DefLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def dbmode(self) -> int: ...


class _MQLike(Protocol):
    @property
    def definitions(self) -> Sequence[_DefLike]: ...

    def __getitem__(self, name: str) -> _QueueLike: ...


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class _Target:
    engine: str  # "sqlite" or "postgresql"
    where: str  # sqlite: the file path; postgresql: the URL for libpq
    shown: str  # the URL with any password hidden, for messages


def _parse_db_url(db_url: object) -> _Target:
    if not isinstance(db_url, str):
        raise DefinitionError(f"db_url must be a str, not {type(db_url).__name__}")
    scheme, sep, _rest = db_url.partition(":")
    scheme = scheme.lower()
    if not sep or not scheme:
        raise DefinitionError(
            f"db_url {_redact(db_url)!r} has no scheme "
            "(use sqlite:///path/to.db or postgresql://user:pass@host:port/db)"
        )
    if scheme == "sqlite":
        prefix = db_url[: len("sqlite:///")]
        if prefix.lower() != "sqlite:///":
            raise DefinitionError(
                f"db_url {db_url!r}: a SQLite URL is sqlite:///relative/path.db "
                "or sqlite:////absolute/path.db (no host part)"
            )
        path = db_url[len("sqlite:///") :]
        if not path:
            raise DefinitionError(f"db_url {db_url!r}: no database file path")
        if "?" in path or "#" in path:
            raise DefinitionError(
                f"db_url {db_url!r}: query strings and fragments are not supported "
                "in a SQLite URL (the path may not contain '?' or '#')"
            )
        if "\x00" in path:
            raise DefinitionError(f"db_url {db_url!r}: the path contains a NUL character")
        if path == ":memory:":
            raise DefinitionError(
                f"db_url {db_url!r}: an in-memory database would lose the queues; name a file"
            )
        return _Target("sqlite", path, db_url)
    if scheme in ("postgresql", "postgres"):
        if not db_url[len(scheme) + 1 :].startswith("//"):
            raise DefinitionError(
                f"db_url {_redact(db_url)!r}: a PostgreSQL URL is "
                "postgresql://user:pass@host:port/dbname"
            )
        return _Target("postgresql", db_url, _redact(db_url))
    raise DefinitionError(
        f"db_url {_redact(db_url)!r}: unsupported database scheme {scheme!r} "
        "(supported: sqlite:///path/to.db, postgresql://user:pass@host:port/db)"
    )


def validate_db_url(db_url: str) -> str:
    """Check ``db_url`` without connecting; return its engine (``"sqlite"`` or
    ``"postgresql"``).  Raises :class:`DefinitionError` (a ``ValueError``) for a
    malformed URL or an unsupported scheme.
    """
    return _parse_db_url(db_url).engine


# ------------------------------------------------------------------- table names


def _name_problem(name: object, engine: str | None) -> str | None:
    """Why ``name`` cannot be a table name for ``engine`` (None: any engine)."""
    if not isinstance(name, str):
        return f"a table name must be a str, not {type(name).__name__}"
    if not name:
        return "a table name cannot be empty"
    if "\x00" in name:
        return "it contains a NUL character"
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid Unicode text (a lone surrogate)"
    if engine in (None, "postgresql") and len(raw) > PG_MAX_IDENTIFIER_BYTES:
        return (
            f"it is {len(raw)} bytes long in UTF-8; PostgreSQL table names are at most "
            f"{PG_MAX_IDENTIFIER_BYTES} bytes"
        )
    if engine in (None, "sqlite") and raw[:7].lower() == b"sqlite_":
        return "SQLite reserves table names that begin with 'sqlite_'"
    if name.lower() == MARKER_TABLE:
        return f"{MARKER_TABLE!r} is mqueue's own table of save and load markers"
    if name.lower() == DBID_TABLE:
        return f"{DBID_TABLE!r} is mqueue's own table holding the database's id"
    return None


def validate_table_name(name: str, db_url: str | None = None) -> None:
    """Raise :class:`DefinitionError` if queue ``name`` cannot be its table's name.

    With ``db_url`` the rules of that engine apply; without it, the rules of every
    supported engine (no NUL, valid Unicode, at most 63 UTF-8 bytes for PostgreSQL,
    no ``sqlite_`` prefix for SQLite).  Any other character is fine: names are
    always quoted.  Nothing is connected to.
    """
    engine = None if db_url is None else _parse_db_url(db_url).engine
    problem = _name_problem(name, engine)
    if problem is not None:
        where = f" in {engine}" if engine else ""
        raise DefinitionError(
            f"queue name {name!r} cannot be a database table name{where}: {problem}"
        )


def _table_identity(name: str, engine: str) -> bytes:
    """The key under which ``engine`` knows the table (SQLite folds ASCII case)."""
    raw = name.encode("utf-8")
    return raw.lower() if engine == "sqlite" else raw


def _check_tables(names: Iterable[str], target: _Target) -> list[str]:
    names = list(names)
    seen: dict[bytes, str] = {}
    for name in names:
        problem = _name_problem(name, target.engine)
        if problem is not None:
            raise DefinitionError(
                f"queue name {name!r} cannot be a database table name in {target.engine}: {problem}"
            )
        ident = _table_identity(name, target.engine)
        other = seen.get(ident)
        if other is not None and other != name:
            raise DefinitionError(
                f"queues {other!r} and {name!r} would share one table in {target.engine} "
                "(SQLite table names ignore ASCII case); rename one of them"
            )
        seen[ident] = name
    return names


def validate_queue_tables(definitions: Iterable[_DefLike], db_url: str) -> None:
    """Check, without connecting, that every queue with a dbmode can have its own
    table in ``db_url``'s engine (valid URL, valid names, no two queues on one
    table).  Raises :class:`DefinitionError`.
    """
    target = _parse_db_url(db_url)
    _check_tables((d.name for d in definitions if d.dbmode), target)


# ------------------------------------------------------------ database wrapper


def _quote_ident(name: str) -> str:
    """Standard SQL quoted identifier (both SQLite and PostgreSQL)."""
    return '"' + name.replace('"', '""') + '"'


def _sqlite_text(raw: bytes) -> str | bytes:
    """text_factory: TEXT that is not valid UTF-8 (written by another program) comes
    back as bytes instead of failing the whole query."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


class _DB:
    """One connection, with SQL written once for both engines.

    Statement templates use ``{t}`` for the (quoted) table and ``?`` for parameters.
    """

    def __init__(self, target: _Target) -> None:
        self.target = target
        self.engine = target.engine
        self._conn: Any
        self._lockfd: int | None = None  # SQLite: flock on a file beside the database
        self._lockdepth = 0
        self._pg_locks: list[int] = []  # PostgreSQL: advisory locks this session holds
        self._connect()

    def _connect(self) -> None:
        target = self.target
        if self.engine == "sqlite":
            try:
                conn = sqlite3.connect(target.where, timeout=30.0, isolation_level=None)
            except sqlite3.Error as exc:
                problem = sqlite_path_problem(target.where) or exc
                raise PersistenceError(
                    f"cannot open SQLite database {target.where!r}: {problem}"
                ) from exc
            conn.text_factory = _sqlite_text
            self._conn = conn
        else:
            try:
                import psycopg  # type: ignore[import-not-found,unused-ignore]
            except ImportError as exc:
                raise PersistenceError(
                    f"db_url {target.shown!r} needs the psycopg 3 driver, which is not "
                    f"installed: {install_hint('postgres')}"
                ) from exc
            kwargs: dict[str, Any] = {"autocommit": False, "client_encoding": "utf8"}
            if "connect_timeout" not in target.where:
                kwargs["connect_timeout"] = 10
            try:
                self._conn = psycopg.connect(target.where, **kwargs)
            except Exception as exc:
                raise PersistenceError(
                    f"cannot connect to PostgreSQL at {target.shown!r}: {exc}"
                ) from exc

    # -- SQL text
    def _sql(self, template: str, table: str | None) -> str:
        ident = _quote_ident(table) if table is not None else ""
        if self.engine == "postgresql":
            # psycopg reads %s placeholders: double every % of the identifier, and
            # always pass a parameter tuple so that %% is understood.
            return template.replace("?", "%s").format(t=ident.replace("%", "%%"))
        return template.format(t=ident)

    def execute(self, template: str, table: str | None = None, params: Sequence[Any] = ()) -> Any:
        return self._conn.execute(self._sql(template, table), tuple(params))

    def executemany(self, template: str, table: str, rows: Sequence[Sequence[Any]]) -> None:
        sql = self._sql(template, table)
        if self.engine == "sqlite":
            self._conn.executemany(sql, rows)
        else:
            with self._conn.cursor() as cur:
                cur.executemany(sql, rows)

    # -- transactions
    def begin(self) -> None:
        if self.engine == "sqlite":
            # IMMEDIATE: take the write lock now, not at the first write (no
            # deadlock between two loaders that both read first).
            self._conn.execute("BEGIN IMMEDIATE")
        # psycopg (autocommit off) opens a transaction at the first statement.

    def commit(self) -> None:
        if self.engine == "sqlite":
            self._conn.execute("COMMIT")
        else:
            self._conn.commit()

    def rollback(self) -> None:
        try:
            if self.engine == "sqlite":
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
            else:
                self._conn.rollback()
        except Exception:  # the connection may be gone; the server rolls back anyway
            pass

    def close(self) -> None:
        with suppress(Exception):
            self._conn.close()
        if self._lockfd is not None:
            self._close_lockfd()  # drops the flock
            self._lockdepth = 0

    def reconnect(self) -> None:
        """A fresh connection (after one was lost), holding the same locks again.

        PostgreSQL: the advisory locks are taken again by the new session, so
        this waits until the old session has ended (its last transaction is
        then committed or rolled back for good) or the lock timeout passes."""
        with suppress(Exception):
            self._conn.close()
        self._connect()
        keys, self._pg_locks = self._pg_locks, []
        for key in keys:
            self._pg_lock(key)

    # -- serialising the loads and saves of one table (see docs/persistence.md)
    def lock_table(self, table: str) -> None:
        """Hold the table's persistence lock until unlock_table: loads and saves
        of one table, from any process, run one at a time, and a process that
        dies drops its lock (SQLite: flock of ``<db>.mqueue-lock``, for the whole
        file; PostgreSQL: a session advisory lock keyed on the table name)."""
        if self.engine == "sqlite":
            if self._lockdepth == 0:
                path = self.target.where + ".mqueue-lock"
                with _lock_files_guard:  # a fork never sees an fd that is not listed
                    try:
                        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                    except OSError as exc:
                        raise PersistenceError(
                            f"cannot open the lock file {path!r}: {exc}"
                        ) from exc
                    self._lockfd = fd
                    _lock_files.add(self)
                give_up = time.monotonic() + _LOCK_TIMEOUT_S
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if time.monotonic() > give_up:
                            self._close_lockfd()
                            raise PersistenceError(
                                f"another process holds {path!r} (a save or load of "
                                f"this database) for more than {_LOCK_TIMEOUT_S:g} s"
                            ) from None
                        time.sleep(0.01)
            self._lockdepth += 1
            return
        self._pg_lock(_pg_lock_key(table))

    def _close_lockfd(self) -> None:
        """Close the SQLite lock file (dropping its flock) if open.  Never fails."""
        with _lock_files_guard:
            fd, self._lockfd = self._lockfd, None
            _lock_files.discard(self)
        if fd is not None:
            with suppress(OSError):
                os.close(fd)

    def _pg_lock(self, key: int) -> None:
        with _db_errors(f"taking the persistence lock of {self.target.shown}"):
            ms = int(_LOCK_TIMEOUT_S * 1000)
            self._conn.execute(f"SET lock_timeout = {ms}")
            self._conn.execute("SELECT pg_advisory_lock(%s)", (key,))
            self._conn.commit()  # a session lock: it outlives this transaction
        self._pg_locks.append(key)

    def unlock_table(self, table: str) -> None:
        """Release lock_table's lock (best effort: a lost session has none)."""
        if self.engine == "sqlite":
            self._lockdepth -= 1
            if self._lockdepth == 0:
                self._close_lockfd()
            return
        key = _pg_lock_key(table)
        if key in self._pg_locks:
            self._pg_locks.remove(key)
            with suppress(Exception):
                self.rollback()
                self._conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
                self._conn.commit()

    def ensure_markers(self) -> None:
        """Create our marker table if missing (Kamailio never names it), in a
        transaction of its own (the caller's begin/commit)."""
        ddl = (
            'CREATE TABLE IF NOT EXISTS {t} ("op" TEXT PRIMARY KEY, "kind" TEXT NOT NULL, '
            '"tbl" TEXT NOT NULL, "ns" TEXT NOT NULL, "max_id" BIGINT)'
        )
        try:
            self.execute(ddl, MARKER_TABLE)
        except Exception:
            if self.engine != "postgresql":
                raise
            # Two sessions creating it at once: PostgreSQL may fail one of them
            # (a unique violation in its catalog); the table exists by now.
            self.rollback()
            self.execute(ddl, MARKER_TABLE)

    def database_id(self) -> int:
        """This database's id (see DBID_TABLE), made at first use: a random
        63-bit number that every URL naming this database reads alike.  Its own
        transaction.  PersistenceError if the stored id is not one we write."""
        ddl = 'CREATE TABLE IF NOT EXISTS {t} ("k" TEXT PRIMARY KEY, "id" TEXT NOT NULL)'
        with _db_errors(f"reading the mqueue id of {self.target.shown}"):
            self.begin()
            try:
                try:
                    self.execute(ddl, DBID_TABLE)
                except Exception:
                    if self.engine != "postgresql":
                        raise
                    self.rollback()  # created by another session meanwhile (as above)
                    self.execute(ddl, DBID_TABLE)
                # one id, also when two first saves race (SQLite before 3.24 has
                # no ON CONFLICT clause: OR IGNORE is the same there)
                insert = (
                    'INSERT OR IGNORE INTO {t} ("k", "id") VALUES (?, ?)'
                    if self.engine == "sqlite"
                    else 'INSERT INTO {t} ("k", "id") VALUES (?, ?) ON CONFLICT DO NOTHING'
                )
                self.execute(insert, DBID_TABLE, ("id", _op_text(new_op_tag())))
                raw = self._read_id()
                self.commit()
            except BaseException:
                self.rollback()
                raise
        dbid = _parse_dbid(raw)
        if dbid is None:
            raise PersistenceError(
                f"{self.target.shown}: table {DBID_TABLE!r} holds a damaged database id "
                f"{raw!r} (mqueue writes 16 hexadecimal digits); nothing was saved.  Resolve "
                "the saves still pending against this database first (`mqueue recover NS "
                f"--db-url URL`), then delete that row: the next save makes a new id"
            )
        return dbid

    def _read_id(self) -> object:
        """The raw id of the caller's transaction (None: no row)."""
        cur = self.execute('SELECT "id" FROM {t} WHERE "k" = ?', DBID_TABLE, ("id",))
        row = cur.fetchone()
        cur.close()
        return None if row is None else row[0]

    def peek_database_id(self) -> tuple[bool, object]:
        """(whether the id table exists, the raw id or None), written nowhere:
        for a resolution, which must change nothing in a database that is not
        the one a pending save wrote to."""
        with _db_errors(f"reading the mqueue id of {self.target.shown}"):
            try:
                if self.engine == "sqlite":
                    cur = self.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                        None,
                        (DBID_TABLE,),
                    )
                else:
                    cur = self.execute("SELECT to_regclass(?)", None, (_quote_ident(DBID_TABLE),))
                row = cur.fetchone()
                cur.close()
                exists = row is not None and row[0] is not None
                raw = self._read_id() if exists else None
            finally:
                self.rollback()
        return exists, raw

    # -- schema
    def ensure_table(self, table: str) -> None:
        """Create ``table`` if missing (with our columns); never alters an existing one."""
        if self.engine == "sqlite":
            ddl = (
                'CREATE TABLE IF NOT EXISTS {t} ("id" INTEGER PRIMARY KEY AUTOINCREMENT, '
                "\"key\" TEXT NOT NULL DEFAULT '', \"val\" TEXT NOT NULL DEFAULT '', "
                '"key_enc" TEXT, "val_enc" TEXT)'
            )
        else:
            ddl = (
                'CREATE TABLE IF NOT EXISTS {t} ("id" SERIAL PRIMARY KEY, '
                "\"key\" TEXT NOT NULL DEFAULT '', \"val\" TEXT NOT NULL DEFAULT '', "
                '"key_enc" TEXT, "val_enc" TEXT)'
            )
        self.execute(ddl, table)

    def columns(self, table: str) -> list[str]:
        cur = self.execute("SELECT * FROM {t} WHERE 1 = 0", table)
        names = [str(d[0]) for d in (cur.description or ())]
        cur.close()
        return names

    def lock_for_load(self, table: str) -> None:
        """Keep other writers out until commit, so the DELETE removes exactly the
        rows that were read (SQLite's BEGIN IMMEDIATE already locks the file)."""
        if self.engine == "postgresql":
            self.execute("LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE", table)


# The _DB objects with an open SQLite lock file.  A flock belongs to the open file
# description, which fork() shares: a child would hold the parent's lock for as
# long as it lives (every later save or load of that database then waited and
# failed).  The child closes its copies at once; the parent's lock is untouched.
_lock_files: weakref.WeakSet[_DB] = weakref.WeakSet()
_lock_files_guard = threading.Lock()


def _close_inherited_lock_files() -> None:
    _lock_files_guard.release()
    for db in list(_lock_files):
        fd, db._lockfd = db._lockfd, None
        if fd is not None:
            with suppress(OSError):
                os.close(fd)
    _lock_files.clear()


os.register_at_fork(
    before=_lock_files_guard.acquire,
    after_in_parent=_lock_files_guard.release,
    after_in_child=_close_inherited_lock_files,
)


@contextmanager
def _db_errors(what: str) -> Iterator[None]:
    """Turn a driver exception into a PersistenceError that says ``what`` failed."""
    try:
        yield
    except (PersistenceError, DefinitionError):
        raise
    except Exception as exc:
        raise PersistenceError(f"{what}: {exc}") from exc


# ---------------------------------------------------------------- row encoding


def _encode(data: Data) -> tuple[str, str | None]:
    """(column text, marker) for one key or value."""
    if isinstance(data, bytes):
        if b"\x00" not in data:
            try:
                return data.decode("utf-8"), ENC_BYTES
            except UnicodeDecodeError:
                pass
        return base64.b64encode(data).decode("ascii"), ENC_BASE64
    if isinstance(data, str):
        if "\x00" in data:
            raw = data.encode("utf-8", "surrogatepass")
            return base64.b64encode(raw).decode("ascii"), ENC_STR_BASE64
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no SQL text can hold it
            raw = data.encode("utf-8", "surrogatepass")
            return base64.b64encode(raw).decode("ascii"), ENC_STR_BASE64
        return data, None
    raise TypeError(f"key or value must be str or bytes, not {type(data).__name__}")


def _decode(text: object, enc: object, table: str, row_id: object, column: str) -> Data:
    where = f"table {table!r} row id={row_id}"
    if text is None:
        raise PersistenceError(f"{where}: {column} is NULL")
    if enc is None:
        if isinstance(text, (str, bytes)):  # bytes: a BLOB/BYTEA column, or non-UTF-8
            return text
        if isinstance(text, (bytearray, memoryview)):
            return bytes(text)
        raise PersistenceError(f"{where}: {column} is of type {type(text).__name__}, not text")
    if not isinstance(text, str):
        raise PersistenceError(f"{where}: {column} must be text when {column}_enc is {enc!r}")
    if enc == ENC_BYTES:
        return text.encode("utf-8")
    if enc in (ENC_BASE64, ENC_STR_BASE64):
        try:
            raw = base64.b64decode(text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise PersistenceError(f"{where}: {column} is not valid base64: {exc}") from exc
        if enc == ENC_BASE64:
            return raw
        try:
            return raw.decode("utf-8", "surrogatepass")  # a str may hold lone surrogates
        except UnicodeDecodeError as exc:
            raise PersistenceError(f"{where}: {column} is not UTF-8 text: {exc}") from exc
    raise PersistenceError(
        f"{where}: unknown {column}_enc {enc!r} (expected NULL or one of {', '.join(_ENCODINGS)})"
    )


# ------------------------------------------------------------------ selection


def _selected(mq: _MQLike, modes: frozenset[int], queues: Iterable[str] | None) -> list[str]:
    defs = list(mq.definitions)
    wanted = None if queues is None else set(queues)
    if wanted is not None:
        known = {d.name for d in defs}
        unknown = sorted(wanted - known)
        if unknown:
            from ._errors import QueueNotFoundError

            raise QueueNotFoundError(f"no queue named {unknown[0]!r}")
    return [d.name for d in defs if d.dbmode in modes and (wanted is None or d.name in wanted)]


def _all_persisted(mq: _MQLike) -> list[str]:
    return [d.name for d in mq.definitions if d.dbmode]


# ------------------------------------------------------------------------ load


def load_queues(mq: _MQLike, db_url: str, *, queues: Iterable[str] | None = None) -> dict[str, int]:
    """Load every queue with dbmode 1 or 2 from its table, then empty the tables.

    Rows are added in ``id`` order through the queue's ``add`` (``size`` and
    ``addmode`` apply).  A missing table is created.  Everything happens in one
    transaction over all the tables: on any failure (a bad row, an ``add`` that
    fails, a database error) every table is left as it was and
    :class:`PersistenceError` names the table (and the row's id).  Items already
    added to the queues stay there: the caller (``create``) destroys the namespace.
    ``queues`` restricts the work to those names (all dbmode 1/2 queues by default).

    Returns ``{queue name: number of rows read}``.
    """
    target = _parse_db_url(db_url)
    _check_tables(_all_persisted(mq), target)
    names = _selected(mq, LOAD_DBMODES, queues)
    if not names:
        return {}
    if all(_reservable(mq[n]) for n in names):
        return _logged("loaded", mq, _load_reserved(mq, target, names), target)

    db = _DB(target)  # a backend without reservations (Redis): one transaction
    try:
        db.begin()
        # 1. Read and decode every table first: a bad row fails before any add.
        loaded: dict[str, list[tuple[object, Data, Data]]] = {}
        for name in names:
            rows: list[tuple[object, Data, Data]] = []
            with _db_errors(f"loading table {name!r} from {target.shown}"):
                raw_rows = _read_table(db, name)
            for row_id, k, v, kenc, venc in raw_rows:
                key = _decode(k, kenc, name, row_id, "key")
                value = _decode(v, venc, name, row_id, "val")
                rows.append((row_id, key, value))
            loaded[name] = rows

        # 2. Add through the normal path, then empty the table.
        counts: dict[str, int] = {}
        for name in names:
            q = mq[name]
            for row_id, key, value in loaded[name]:
                try:
                    q.add(key, value)
                except Exception as exc:
                    raise PersistenceError(
                        f"table {name!r} row id={row_id}: cannot add it to queue {name!r}: {exc}"
                    ) from exc
            with _db_errors(f"emptying table {name!r} in {target.shown}"):
                db.execute("DELETE FROM {t}", name)
            counts[name] = len(loaded[name])

        with _db_errors(f"committing the load of {', '.join(map(repr, names))}"):
            db.commit()
        return _logged("loaded", mq, counts, target)
    except BaseException:
        db.rollback()
        raise
    finally:
        db.close()


# ------------------------------------------------------------------------ save


def _fetch_into(q: _QueueLike, items: list[tuple[Data, Data]]) -> None:
    """Take the items queued now, oldest first (not ones added meanwhile), appending
    them to ``items`` as they come, so that a failure half way loses none."""
    want = len(q)
    while len(items) < want:
        chunk = q.fetch_many(min(_FETCH_CHUNK, want - len(items)), timeout=0)
        if not chunk:
            break
        for item in chunk:
            key, value = item
            items.append((key, value))


def _put_back(q: _QueueLike, items: Sequence[tuple[Data, Data]]) -> int:
    """Re-add ``items`` in order; return how many could not be re-added."""
    lost = 0
    for key, value in items:
        try:
            q.add(key, value)
        except Exception:
            lost += 1
    return lost


def _table_columns(db: _DB, name: str) -> list[str]:
    """Create table ``name`` if missing and return its columns (inside the caller's
    transaction); PersistenceError if it lacks a "key" or "val" column."""
    db.ensure_table(name)
    cols = db.columns(name)
    _require_columns(name, cols, ("key", "val"))
    return cols


def _require_columns(name: str, cols: list[str], required: tuple[str, ...]) -> None:
    """PersistenceError naming the first of ``required`` missing from ``cols``."""
    for col in required:
        if col not in cols:
            raise PersistenceError(
                f"table {name!r} has no column {col!r} (it has {', '.join(cols) or 'none'})"
            )


def _read_table(db: _DB, name: str) -> list[tuple[Any, ...]]:
    """Create table ``name`` if missing, lock it for the load and return its rows
    as (id, key, val, key_enc, val_enc) in id order (the caller's transaction);
    PersistenceError if it lacks an "id", "key" or "val" column."""
    db.ensure_table(name)
    db.lock_for_load(name)
    cols = db.columns(name)
    _require_columns(name, cols, ("id", "key", "val"))
    key_enc = '"key_enc"' if "key_enc" in cols else "NULL"
    val_enc = '"val_enc"' if "val_enc" in cols else "NULL"
    cur = db.execute(
        f'SELECT "id", "key", "val", {key_enc}, {val_enc} FROM {{t}} ORDER BY "id"',
        name,
    )
    raw_rows: list[tuple[Any, ...]] = cur.fetchall()
    cur.close()
    return raw_rows


def _insert_items(
    db: _DB, name: str, cols: list[str], items: Sequence[tuple[Data, Data]]
) -> None:
    """Append ``items`` to table ``name`` (columns ``cols``, updated in place) in the
    caller's transaction, in batches of _SAVE_BATCH rows.

    The nullable "key_enc"/"val_enc" columns are added first when an item needs them.
    """
    rows = [_encode(k) + _encode(v) for k, v in items]
    # (key text, key marker, val text, val marker)
    if any(r[1] is not None or r[3] is not None for r in rows):
        for col in ("key_enc", "val_enc"):
            if col not in cols:
                # Nullable, so Kamailio (which names its columns) is unaffected.
                db.execute(f'ALTER TABLE {{t}} ADD COLUMN "{col}" TEXT', name)
                cols.append(col)
    if "key_enc" in cols and "val_enc" in cols:
        template = 'INSERT INTO {t} ("key", "key_enc", "val", "val_enc") VALUES (?, ?, ?, ?)'
        params: list[tuple[Any, ...]] = [tuple(r) for r in rows]
    else:
        template = 'INSERT INTO {t} ("key", "val") VALUES (?, ?)'
        params = [(r[0], r[2]) for r in rows]
    batch = max(1, _SAVE_BATCH)
    for start in range(0, len(params), batch):
        db.executemany(template, name, params[start : start + batch])
        if _save_hook is not None:
            _save_hook(name, min(start + batch, len(params)))


def _save_one(db: _DB, target: _Target, name: str, q: _QueueLike) -> int:
    """Append queue ``name``'s items to its table in one transaction; returns the count.

    On failure the items are back in the queue and PersistenceError says why.
    """
    items: list[tuple[Data, Data]] = []
    try:
        with _db_errors(f"saving queue {name!r} to table {name!r} in {target.shown}"):
            db.begin()
            cols = _table_columns(db, name)
            _fetch_into(q, items)
            _insert_items(db, name, cols, items)
            db.commit()
        return len(items)
    except BaseException as exc:
        db.rollback()
        lost = _put_back(q, items)
        if not isinstance(exc, Exception):
            raise
        back = f"; {len(items) - lost} item(s) put back into the queue" if items else ""
        if lost:
            back += f", {lost} could not be put back and are lost"
        if isinstance(exc, PersistenceError):
            raise PersistenceError(f"{exc}{back}") from (exc.__cause__ or exc)
        raise PersistenceError(
            f"saving queue {name!r} to table {name!r} in {target.shown}: {exc}{back}"
        ) from exc


def save_queues(mq: _MQLike, db_url: str, *, queues: Iterable[str] | None = None) -> dict[str, int]:
    """Save every queue with dbmode 1 or 3: its items leave the queue, oldest first,
    and are appended to its table (created if missing; rows are never deleted).

    One transaction per queue: a crash leaves the table with either its old rows or
    old + new.  If a queue's write fails, its items are put back into the queue in
    order, the other queues are still saved, and :class:`PersistenceError` is raised
    at the end naming every table that failed.  Items held by processes (fetched
    before) are not saved.  ``queues`` restricts the work to those names.

    Returns ``{queue name: number of items saved}``.
    """
    target = _parse_db_url(db_url)
    _check_tables(_all_persisted(mq), target)
    names = _selected(mq, SAVE_DBMODES, queues)
    if not names:
        return {}

    db = _DB(target)  # a connection failure leaves every queue untouched
    counts: dict[str, int] = {}
    errors: list[PersistenceError] = []
    try:
        for name in names:
            try:
                q = mq[name]
                if _reservable(q):
                    counts[name] = _save_reserved(db, target, mq, name, q)
                else:  # a backend without reservations (Redis)
                    counts[name] = _save_one(db, target, name, q)
            except PersistenceError as exc:
                errors.append(exc)
    finally:
        db.close()
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise PersistenceError(
            f"saving {len(errors)} queues failed: " + "; ".join(str(e) for e in errors)
        ) from errors[0]
    return _logged("saved", mq, counts, target)


def _logged(action: str, mq: Any, counts: dict[str, int], target: _Target) -> dict[str, int]:
    """Log what a save or load moved (the ``mqueue`` logger, INFO); returns ``counts``."""
    for name, n in counts.items():
        _mqlog.persisted(action, getattr(mq, "namespace", "?"), name, n, target.shown)
    return counts


# ----------------------------------------------- reservations, markers, resolution
#
# The protocol (docs/persistence.md, "Crash safety"): a save reserves the items
# in shared memory (mq_reserve: they leave the queue but stay in the segment,
# tagged), then inserts the rows and a marker row naming the tag in one
# transaction, commits, then acknowledges the reservation (mq_settle).  A load
# records a marker (tag, highest row id) and commits, adds the rows in one
# engine step that records the tag in the queue's state, then deletes the rows
# and the marker.  Loads and saves of one table hold its persistence lock
# (_DB.lock_table) throughout, and every save or load starts by resolving what
# a dead or failed predecessor left (_resolve): the marker's presence says
# whether a reserved save committed; the queue's load tag says whether a
# marked load was applied.  Nothing is guessed: when the database cannot be
# asked, the reservation stays and PersistenceError says so.

CLI_TAG_BIT = 1 << 63
"""Reservation tags with this bit are the command line's fetch (no database)."""


def new_op_tag() -> int:
    """A fresh random tag for a save or load (never 0, CLI bit clear)."""
    while True:
        tag = secrets.randbits(63)
        if tag:
            return tag


def new_cli_tag() -> int:
    """A fresh random tag for the command line's fetch (CLI bit set)."""
    return CLI_TAG_BIT | secrets.randbits(63)


def _op_text(tag: int) -> str:
    return f"{tag:016x}"


def _parse_dbid(raw: object) -> int | None:
    """A database id as DB.database_id writes it (16 lowercase hexadecimal
    digits, not 0), else None (garbage)."""
    if not isinstance(raw, str) or len(raw) != 16 or raw.strip("0123456789abcdef"):
        return None
    return int(raw, 16) or None


def _sqlite_where(target: _Target) -> str:
    """Where a SQLite URL points, for messages (a relative path is resolved from
    the current directory)."""
    path = os.path.abspath(target.where)
    if os.path.isabs(target.where):
        return repr(path)
    return f"{path!r} (the relative path {target.where!r} from the current directory)"


def _check_database(db: _DB | None, target: _Target, mq: Any, name: str, info: Any) -> None:
    """A pending save reservation may be settled by asking this database only if
    it is the one the save wrote to (the id the reservation recorded; 0: made
    before ids existed, then the marker decides, as it did).  ``db`` None: the
    SQLite file does not exist.  Raises PersistenceError, having written nothing."""
    if db is None:  # not where any save wrote, whatever its id
        here = f"there is no database file at {_sqlite_where(target)}"
    elif not info.db:
        _log.warning(
            "queue %r: resolving a save reservation made without a database id "
            "(by an older mqueue) against %s by its marker alone",
            name,
            target.shown,
        )
        return
    else:
        exists, raw = db.peek_database_id()
        found = _parse_dbid(raw) if exists else None
        if found == info.db:
            return
        where = _sqlite_where(target) if target.engine == "sqlite" else repr(target.shown)
        if not exists or raw is None:
            here = f"{where} has no mqueue database id (mqueue never saved into it)"
        elif found is None:
            here = f"{where} holds a damaged database id {raw!r} in table {DBID_TABLE!r}"
        else:
            here = f"{where} is database id {found:016x}"
    ns = getattr(mq, "namespace", "NAMESPACE")
    which = f"mqueue database id {info.db:016x}" if info.db else "id unknown (an older mqueue)"
    raise PersistenceError(
        f"queue {name!r}: {info.size} item(s) are reserved by an unfinished save into "
        f"another database, {which}; {here}.  Only that "
        "database can tell whether the save committed: nothing was changed.  Run "
        f"`mqueue recover {ns} --db-url URL` with the URL of the database the save "
        f"wrote to (its id is in its table {DBID_TABLE!r})"
    )


def _pg_lock_key(table: str) -> int:
    digest = hashlib.blake2b(b"mqueue-table:" + table.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _ns_id(mq: Any) -> str:
    """Who made a marker: this host and namespace (a segment is per host)."""
    return f"{socket.gethostname()}:{getattr(mq, 'namespace', '')}"


def _reservable(q: Any) -> bool:
    return hasattr(q, "_reserve") and hasattr(q, "_settle")


def _other_load_applied(ns_id: str, queue: str, tag: int) -> bool:
    """Whether the load `tag` was applied to `queue` of another namespace on this
    host (False when that namespace or queue does not exist any more: its
    items, if any, went with it)."""
    host, _, namespace = ns_id.partition(":")
    if host != socket.gethostname():
        raise PersistenceError(
            f"table {queue!r}: a load by namespace {namespace!r} on host {host!r} is "
            "unresolved; run `mqueue recover` for it on that host"
        )
    from . import _shm
    from ._errors import MQueueError, NamespaceNotFoundError

    try:
        other = _shm.attach(namespace)
    except NamespaceNotFoundError:
        return False
    except MQueueError as exc:
        raise PersistenceError(
            f"table {queue!r}: cannot tell whether namespace {namespace!r} applied a load: {exc}"
        ) from exc
    try:
        if queue not in [d.name for d in other.definitions]:
            return False
        return bool(other[queue]._reservation().load_tag == tag)  # type: ignore[attr-defined]
    finally:
        other.close()


def _resolve(db: _DB, mq: Any, name: str, q: Any) -> list[str]:
    """Settle what an earlier save or load of queue ``name`` left unfinished
    (the caller holds the table's lock).  Returns what was done, for messages."""
    done: list[str] = []
    shown = db.target.shown
    info = q._reservation()
    if info.tag:
        if info.tag & CLI_TAG_BIT:
            # a command line fetch printing its item: wait for it, or put back
            give_up = time.monotonic() + 5.0
            while info.tag & CLI_TAG_BIT and info.owner_alive and not info.mine:
                if time.monotonic() > give_up:
                    raise PersistenceError(
                        f"queue {name!r}: a live `mqueue fetch` holds its oldest item"
                    )
                time.sleep(0.01)
                info = q._reservation()
            if info.tag & CLI_TAG_BIT:
                q._settle(info.tag, False)
                done.append(f"queue {name!r}: put back the item of a dead `mqueue fetch`")
                info = q._reservation()
        if info.tag:
            if info.owner_alive and not info.mine:
                raise PersistenceError(
                    f"queue {name!r}: {info.size} item(s) are reserved by a save of another "
                    "live process (to another database?); resolve it there"
                )
            _check_database(db, db.target, mq, name, info)
    with _db_errors(f"resolving queue {name!r} in {shown}"):
        db.begin()
        db.ensure_markers()
        db.commit()
    if info.tag:
        with _db_errors(f"resolving a save of queue {name!r} in {shown}"):
            cur = db.execute(
                'SELECT 1 FROM {t} WHERE "op" = ?', MARKER_TABLE, (_op_text(info.tag),)
            )
            committed = cur.fetchone() is not None
            cur.close()
            db.rollback()
        if q._settle(info.tag, committed):
            done.append(
                f"queue {name!r}: an unfinished save of {info.size} item(s) "
                + (
                    "had committed: they are in the table"
                    if committed
                    else "had not committed: they are back in the queue"
                )
            )
    me = _ns_id(mq)
    with _db_errors(f"resolving the markers of table {name!r} in {shown}"):
        db.begin()
        cur = db.execute(
            'SELECT "op", "kind", "ns", "max_id" FROM {t} WHERE "tbl" = ?', MARKER_TABLE, (name,)
        )
        markers = cur.fetchall()
        cur.close()
        for op, kind, ns_id, max_id in markers:
            if kind == "save":
                if ns_id != me:
                    continue  # another namespace's save: its own to resolve
                # ours, and no save of ours is pending any more
            elif kind == "load":
                try:
                    tag = int(op, 16)
                except (TypeError, ValueError):
                    tag = 0
                if tag <= 0:  # never a tag of ours (a queue that never loaded has 0)
                    applied = False
                elif ns_id == me:
                    applied = q._reservation().load_tag == tag
                else:
                    applied = _other_load_applied(ns_id, name, tag)
                if applied:
                    db.execute('DELETE FROM {t} WHERE "id" <= ?', name, (int(max_id),))
                    done.append(f"table {name!r}: deleted the rows of an applied load")
                else:
                    done.append(f"table {name!r}: kept the rows of a load never applied")
            db.execute('DELETE FROM {t} WHERE "op" = ?', MARKER_TABLE, (op,))
        db.commit()
    return done


def resolve_queues(mq: _MQLike, db_url: str, *, queues: Iterable[str] | None = None) -> list[str]:
    """Resolve every save or load of the namespace's persisted queues that a
    dead or failed process left unfinished (see docs/persistence.md); also puts
    back an item a dead ``mqueue fetch`` reserved.  Returns what was done.
    Raises PersistenceError when the database cannot be asked, or is not the one
    a pending save wrote to (nothing is then guessed: the reservation stays; the
    other queues are still resolved).  A SQLite database file that does not exist
    is not created."""
    target = _parse_db_url(db_url)
    _check_tables(_all_persisted(mq), target)
    names = _selected(mq, frozenset({1, 2, 3}), queues)
    names = [n for n in names if _reservable(mq[n])]
    if not names:
        return []
    if target.engine == "sqlite" and not os.path.exists(target.where):
        # nothing of a save or load can be in it: only a pending save matters
        for name in names:
            q: Any = mq[name]
            info = q._reservation()
            if info.tag and not info.tag & CLI_TAG_BIT:
                _check_database(None, target, mq, name, info)
        return []
    db = _DB(target)
    done: list[str] = []
    errors: list[PersistenceError] = []
    try:
        for name in names:
            db.lock_table(name)
            try:
                done += _resolve(db, mq, name, mq[name])
            except PersistenceError as exc:
                errors.append(exc)
            finally:
                db.unlock_table(name)
    finally:
        db.close()
    if errors:
        also = f" (resolved meanwhile: {'; '.join(done)})" if done else ""
        first = errors[0]
        if len(errors) == 1 and not done:
            raise first
        raise PersistenceError("; ".join(str(e) for e in errors) + also) from first
    return done


def _commit_outcome(db: _DB, tag: int) -> bool | None:
    """After COMMIT raised: whether the transaction holding marker `tag`
    committed (True/False), or None when the database cannot tell us."""
    try:
        db.reconnect()  # PostgreSQL: waits until the old session has ended
        cur = db.execute('SELECT 1 FROM {t} WHERE "op" = ?', MARKER_TABLE, (_op_text(tag),))
        found = cur.fetchone() is not None
        cur.close()
        db.rollback()
        return found
    except Exception:  # noqa: BLE001 - unknown: the caller says so, never guesses
        _log.warning("cannot ask the database whether a commit happened", exc_info=True)
        return None


def _save_reserved(db: _DB, target: _Target, mq: Any, name: str, q: Any) -> int:
    """Save queue ``name`` through a reservation (see the protocol above)."""
    what = f"saving queue {name!r} to table {name!r} in {target.shown}"
    db.lock_table(name)
    try:
        _resolve(db, mq, name, q)
        with _db_errors(what):
            db.begin()
            cols = _table_columns(db, name)
            db.commit()
        n = len(q)
        if n == 0:
            return 0
        dbid = db.database_id()  # recorded with the reservation: resolved only here
        tag = new_op_tag()
        # Everything queued now, in one reservation (bytes_used bounds the copy).
        items = q._reserve(n, tag, q.stats().bytes_used + 64, dbid)
        if not items:
            return 0
        try:
            with _db_errors(what):
                db.begin()
                _insert_items(db, name, cols, items)
                db.execute(
                    'INSERT INTO {t} ("op", "kind", "tbl", "ns", "max_id") '
                    "VALUES (?, ?, ?, ?, NULL)",
                    MARKER_TABLE,
                    (_op_text(tag), "save", name, _ns_id(mq)),
                )
        except BaseException as exc:
            db.rollback()  # nothing committed: the items go back, in order
            back = q._settle(tag, False)
            if not isinstance(exc, Exception):
                raise
            note = (
                f"; its {len(items)} item(s) are back in the queue"
                if back
                else "; its items had been dropped as the oldest by the bounded queue"
            )
            if isinstance(exc, PersistenceError):
                raise PersistenceError(f"{exc}{note}") from (exc.__cause__ or exc)
            raise PersistenceError(f"{what}: {exc}{note}") from exc
        try:
            db.commit()
        except BaseException as exc:
            committed = _commit_outcome(db, tag)
            if committed is None:
                raise PersistenceError(
                    f"{what}: COMMIT got no answer ({exc}) and the database cannot be asked "
                    f"whether it committed: the {len(items)} item(s) stay reserved in queue "
                    f"{name!r} (not fetchable, not lost) until the next save or load, "
                    "create(..., db_url=...) or `mqueue recover NAMESPACE --db-url URL` "
                    "asks the database and settles them"
                ) from exc
            q._settle(tag, committed)
            if not committed:
                raise PersistenceError(
                    f"{what}: COMMIT failed ({exc}); the database confirms nothing was "
                    f"written: the {len(items)} item(s) are back in the queue"
                ) from exc
        else:
            q._settle(tag, True)
        with suppress(Exception):  # a leftover marker is removed by the next _resolve
            db.begin()
            db.execute('DELETE FROM {t} WHERE "op" = ?', MARKER_TABLE, (_op_text(tag),))
            db.commit()
        return len(items)
    finally:
        db.unlock_table(name)


def _record_size(key: Data, value: Data) -> int:
    kb = key if isinstance(key, bytes) else key.encode("utf-8", "surrogatepass")
    vb = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
    return record_size(len(kb), len(vb))


def _precheck(name: str, q: Any, items: Sequence[tuple[Data, Data]], ids: Sequence[object]) -> None:
    """Refuse, before any queue changes, a batch the queue would refuse for size."""
    st = q.stats()
    sizes = [_record_size(k, v) for k, v in items]
    for row_id, size in zip(ids, sizes, strict=True):
        if size > st.capacity:
            raise PersistenceError(
                f"table {name!r} row id={row_id}: cannot add it to queue {name!r}: the item "
                f"is larger than the queue's byte capacity ({st.capacity}); nothing was added"
            )
    if st.size_limit <= 0 and st.addmode == 0 and st.bytes_used + sum(sizes) > st.capacity:
        raise PersistenceError(
            f"table {name!r}: its {len(items)} rows do not fit queue {name!r} "
            f"(no count bound; {st.capacity - st.bytes_used} bytes free)"
        )


def _load_reserved(mq: Any, target: _Target, names: list[str]) -> dict[str, int]:
    """Load the tables of queues ``names`` (see the protocol above)."""
    db = _DB(target)
    locked: list[str] = []
    try:
        for name in sorted(names):  # one order everywhere: no deadlock between loaders
            db.lock_table(name)
            locked.append(name)
        for name in names:
            _resolve(db, mq, name, mq[name])
        # 1. Read and decode every table, then mark each load, in one transaction.
        plan: dict[str, tuple[int, int, list[tuple[Data, Data]]]] = {}
        row_ids: dict[str, list[object]] = {}
        db.begin()
        try:
            for name in names:
                with _db_errors(f"loading table {name!r} from {target.shown}"):
                    raw_rows = _read_table(db, name)
                items = [
                    (_decode(k, ke, name, i, "key"), _decode(v, ve, name, i, "val"))
                    for i, k, v, ke, ve in raw_rows
                ]
                if items:
                    plan[name] = (new_op_tag(), max(int(r[0]) for r in raw_rows), items)
                    row_ids[name] = [r[0] for r in raw_rows]
            for name, (tag, max_id, _items) in plan.items():
                with _db_errors(f"marking the load of table {name!r} in {target.shown}"):
                    db.execute(
                        'INSERT INTO {t} ("op", "kind", "tbl", "ns", "max_id") '
                        "VALUES (?, ?, ?, ?, ?)",
                        MARKER_TABLE,
                        (_op_text(tag), "load", name, _ns_id(mq), max_id),
                    )
            with _db_errors(f"committing the load of {', '.join(map(repr, names))}"):
                db.commit()
        except BaseException:
            db.rollback()
            raise
        if _load_hook is not None:
            _load_hook("marked")

        def unmark(which: Iterable[str]) -> None:
            with suppress(Exception):  # else the next _resolve drops them (never applied)
                db.begin()
                for n in which:
                    op = _op_text(plan[n][0])
                    db.execute('DELETE FROM {t} WHERE "op" = ?', MARKER_TABLE, (op,))
                db.commit()

        # 2. Refuse what would not fit before any queue changes; then apply each
        # table in one engine step that records its tag.
        try:
            for name, (_tag, _max_id, items) in plan.items():
                _precheck(name, mq[name], items, row_ids[name])
        except BaseException:
            unmark(plan)
            raise
        def delete_loaded(which: Iterable[str]) -> None:
            try:
                with _db_errors(f"deleting the loaded rows in {target.shown}"):
                    db.begin()
                    for n in which:
                        tag, max_id, _items = plan[n]
                        db.execute('DELETE FROM {t} WHERE "id" <= ?', n, (max_id,))
                        db.execute('DELETE FROM {t} WHERE "op" = ?', MARKER_TABLE, (_op_text(tag),))
                    db.commit()
            except PersistenceError:
                db.rollback()  # the markers stay: the next _resolve deletes those rows
                _log.warning(
                    "loaded rows not deleted yet; the next save, load or recover deletes them",
                    exc_info=True,
                )

        done: list[str] = []
        for name, (tag, _max_id, items) in plan.items():
            try:
                mq[name]._load(tag, items)
            except Exception as exc:
                rest = [n for n in plan if n not in done]
                unmark(rest)
                if done and not getattr(mq, "is_creator", False):
                    delete_loaded(done)  # a live namespace keeps what was loaded
                also = f" (tables {', '.join(map(repr, done))} were loaded)" if done else ""
                raise PersistenceError(
                    f"table {name!r}: cannot add its {len(items)} rows to queue {name!r}: "
                    f"{exc}; nothing of it was added and every row remains{also}"
                ) from exc
            done.append(name)
        if _load_hook is not None:
            _load_hook("applied")
        # 3. The rows are in the queues: delete them, and the markers.
        delete_loaded(plan)
        return {name: len(plan[name][2]) if name in plan else 0 for name in names}
    finally:
        for name in locked:
            db.unlock_table(name)
        db.close()
