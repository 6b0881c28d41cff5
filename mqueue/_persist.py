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
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from ._errors import DefinitionError, PersistenceError

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

PG_MAX_IDENTIFIER_BYTES = 63
"""PostgreSQL silently truncates longer identifiers (NAMEDATALEN - 1); we refuse them."""

# Markers of the ``key_enc`` / ``val_enc`` columns (NULL: the column is the str).
ENC_BYTES = "bytes"  # bytes item; the column holds its content, which is UTF-8 text
ENC_BASE64 = "base64"  # bytes item; the column holds its standard base64
ENC_STR_BASE64 = "str-base64"  # str item holding U+0000; column: base64 of its UTF-8
_ENCODINGS = (ENC_BYTES, ENC_BASE64, ENC_STR_BASE64)

# Test hooks (not API).  ``_save_hook(table, rows_inserted_so_far)`` runs after each
# batch of INSERTs of a save, inside its transaction; ``_SAVE_BATCH`` rows per batch.
_save_hook: Callable[[str, int], None] | None = None
_SAVE_BATCH = 500
# How many items one fetch_many call of a save takes.
_FETCH_CHUNK = 1000

Data = str | bytes


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


def _redact(url: str) -> str:
    """Return ``url`` with the password of its authority part replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable db_url>"
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


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
        if self.engine == "sqlite":
            try:
                conn = sqlite3.connect(target.where, timeout=30.0, isolation_level=None)
            except sqlite3.Error as exc:
                raise PersistenceError(
                    f"cannot open SQLite database {target.where!r}: {exc}"
                ) from exc
            conn.text_factory = _sqlite_text
            self._conn = conn
        else:
            try:
                import psycopg  # type: ignore[import-not-found,unused-ignore]
            except ImportError as exc:
                raise PersistenceError(
                    f"db_url {target.shown!r} needs the psycopg 3 driver, which is not "
                    "installed: pip install 'mqueue[postgres]' (from a checkout: "
                    "pip install '.[postgres]'; or 'psycopg[binary]')"
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
            return base64.b64encode(data.encode("utf-8")).decode("ascii"), ENC_STR_BASE64
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
            return raw.decode("utf-8")
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

    db = _DB(target)
    try:
        db.begin()
        # 1. Read and decode every table first: a bad row fails before any add.
        loaded: dict[str, list[tuple[object, Data, Data]]] = {}
        for name in names:
            rows: list[tuple[object, Data, Data]] = []
            with _db_errors(f"loading table {name!r} from {target.shown}"):
                db.ensure_table(name)
                db.lock_for_load(name)
                cols = db.columns(name)
                for required in ("id", "key", "val"):
                    if required not in cols:
                        raise PersistenceError(
                            f"table {name!r} has no column {required!r} "
                            f"(it has {', '.join(cols) or 'none'})"
                        )
                key_enc = '"key_enc"' if "key_enc" in cols else "NULL"
                val_enc = '"val_enc"' if "val_enc" in cols else "NULL"
                cur = db.execute(
                    f'SELECT "id", "key", "val", {key_enc}, {val_enc} FROM {{t}} ORDER BY "id"',
                    name,
                )
                raw_rows = cur.fetchall()
                cur.close()
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
        return counts
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


def _save_one(db: _DB, target: _Target, name: str, q: _QueueLike) -> int:
    """Append queue ``name``'s items to its table in one transaction; returns the count.

    On failure the items are back in the queue and PersistenceError says why.
    """
    items: list[tuple[Data, Data]] = []
    try:
        with _db_errors(f"saving queue {name!r} to table {name!r} in {target.shown}"):
            db.begin()
            db.ensure_table(name)
            cols = db.columns(name)
            for required in ("key", "val"):
                if required not in cols:
                    raise PersistenceError(
                        f"table {name!r} has no column {required!r} "
                        f"(it has {', '.join(cols) or 'none'})"
                    )
            _fetch_into(q, items)
            rows = [_encode(k) + _encode(v) for k, v in items]
            # (key text, key marker, val text, val marker)
            if any(r[1] is not None or r[3] is not None for r in rows):
                for col in ("key_enc", "val_enc"):
                    if col not in cols:
                        # Nullable, so Kamailio (which names its columns) is unaffected.
                        db.execute(f'ALTER TABLE {{t}} ADD COLUMN "{col}" TEXT', name)
                        cols.append(col)
            if "key_enc" in cols and "val_enc" in cols:
                template = (
                    'INSERT INTO {t} ("key", "key_enc", "val", "val_enc") VALUES (?, ?, ?, ?)'
                )
                params: list[tuple[Any, ...]] = [tuple(r) for r in rows]
            else:
                template = 'INSERT INTO {t} ("key", "val") VALUES (?, ?)'
                params = [(r[0], r[2]) for r in rows]
            batch = max(1, _SAVE_BATCH)
            for start in range(0, len(params), batch):
                db.executemany(template, name, params[start : start + batch])
                if _save_hook is not None:
                    _save_hook(name, min(start + batch, len(params)))
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
                counts[name] = _save_one(db, target, name, mq[name])
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
    return counts
