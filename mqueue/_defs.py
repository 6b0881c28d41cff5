"""Queue definitions: Kamailio's ``mqueue`` modparam string, parsed strictly.

A queue is defined by one string ``attr=value;attr=value;...``, exactly as in a
Kamailio config (``modparam("mqueue", "mqueue", "name=myq;size=20;")``).  This
module turns such strings into validated, immutable :class:`QueueDef` objects and
back.  The grammar (SPEC.md section 1)::

    definition := WS* attr (WS* ';' WS* attr)* (WS* ';')? WS*
    attr       := NAME WS* '=' WS* value
    value      := '"' (any char but '"')* '"'
                | "'" (any char but "'")* "'"
                | (any char but WS ; , " ')*

``WS`` is ASCII white space (space, tab, CR, LF, FF, VT).  Attribute names are
``name``, ``size``, ``addmode``, ``dbmode`` and ``bytes`` in any (ASCII) case.
Everything Kamailio accepts is accepted; where Kamailio silently guesses (a ``,``,
``size=2x``, an attribute given twice, out-of-range modes, ``dbmode`` without a
``db_url``) we reject.  Every rejection is a :class:`~mqueue._errors.DefinitionError`
whose message quotes the offending string and says why.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ._errors import DefinitionError

__all__ = [
    "DEFAULT_BYTES",
    "MAX_BYTES",
    "MAX_SIZE",
    "MIN_BYTES",
    "QueueDef",
    "parse_bytes",
    "parse_definition",
    "parse_definitions",
]

DEFAULT_BYTES: int = 1 << 20
"""Default data capacity of a queue, in bytes (1 MiB)."""

MIN_BYTES: int = 256
"""Smallest accepted ``bytes=`` value."""

MAX_BYTES: int = 1 << 40
"""Largest accepted ``bytes=`` value (1 TiB)."""

MAX_SIZE: int = (1 << 31) - 1
"""Largest accepted ``size=`` value (Kamailio stores it in a C ``int``)."""

_WS = " \t\r\n\f\v"
_ATTRS = ("name", "size", "addmode", "dbmode", "bytes")
_QUOTES = "\"'"
# Characters that end an unquoted value or cannot appear in one.
_UNQUOTED_STOP = _WS + ";,\"'"
# Characters that force to_modparam() to quote a name ('=' is accepted unquoted
# by the parser, but quoting it keeps the canonical form easy to read).
_NEEDS_QUOTES = _UNQUOTED_STOP + "="

_INT_RE = re.compile(r"([+-]?)([0-9]+)", re.ASCII)
_BYTES_RE = re.compile(r"([+-]?)([0-9]+)([kmg]?)", re.ASCII | re.IGNORECASE)
_SUFFIX = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
# More significant digits than this cannot be in range for any attribute; such
# numbers are clamped (keeping their sign) instead of handed to int(), which
# refuses strings over 4300 digits.
_MAX_DIGITS = 20
_CLAMP: int = int("1" + "0" * _MAX_DIGITS)

_REPR_LIMIT = 200


def _show(text: object) -> str:
    """Return ``repr(text)``, shortened when very long, for error messages."""
    r = repr(text)
    if len(r) > _REPR_LIMIT:
        r = r[: _REPR_LIMIT - 3] + "..."
    return r


def _fail(text: object, reason: str) -> DefinitionError:
    """Build the error for definition ``text`` rejected for ``reason``."""
    return DefinitionError(f"invalid queue definition {_show(text)}: {reason}")


def _is_int(value: object) -> bool:
    """True for a real ``int`` (``bool`` is not accepted as a number)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _digits_to_int(sign: str, digits: str) -> int:
    """Convert a sign and ASCII digit string, clamping absurdly long numbers."""
    digits = digits.lstrip("0") or "0"
    value = _CLAMP if len(digits) > _MAX_DIGITS else int(digits)
    return -value if sign == "-" else value


def _parse_int(text: str, attr: str, value: str) -> int:
    """Parse a decimal integer attribute value (optional sign, ASCII digits)."""
    m = _INT_RE.fullmatch(value)
    if m is None:
        raise _fail(text, f"{attr}={_show(value)} is not an integer")
    return _digits_to_int(m.group(1), m.group(2))


def _int_attr(text: str, seen: Mapping[str, str], attr: str, lo: int, hi: int) -> int:
    """Parse integer attribute ``attr`` (``0`` when absent); check ``lo <= value <= hi``."""
    if attr not in seen:
        return 0
    raw = seen[attr]
    value = _parse_int(text, attr, raw)
    if not lo <= value <= hi:
        raise _fail(text, f"{attr}={_show(raw)} is out of range ({lo} to {hi})")
    return value


def _parse_bytes_value(value: str) -> int | None:
    """Parse ``value`` as a byte count with optional K/M/G suffix, or ``None``."""
    m = _BYTES_RE.fullmatch(value)
    if m is None:
        return None
    return _digits_to_int(m.group(1), m.group(2)) * _SUFFIX[m.group(3).lower()]


def _check_name(name: object, where: object) -> str:
    """Validate a queue name; ``where`` is what error messages quote."""
    if not isinstance(name, str):
        raise _fail(where, f"queue name must be a str, not {type(name).__name__}")
    if not name:
        raise _fail(where, "queue name is missing or empty")
    if "\0" in name:
        raise _fail(where, "queue name contains a NUL character")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise _fail(where, "queue name is not encodable as UTF-8 (lone surrogate)") from None
    return name


def _check_db_url(db_url: object) -> bool:
    """Return whether a usable ``db_url`` was given (``None``/``""`` mean none)."""
    if db_url is None:
        return False
    if not isinstance(db_url, str):
        raise DefinitionError(f"db_url must be a str or None, not {type(db_url).__name__}")
    return db_url != ""


@dataclass(frozen=True)
class QueueDef:
    """One validated queue definition.

    Constructing a ``QueueDef`` validates every field (raising
    :class:`DefinitionError`), so an instance is always valid.  A ``size`` of zero
    or less is normalised to ``0``, meaning no count limit.

    Attributes:
        name: the queue name; non-empty, case-sensitive, byte-exact (compared as
            its UTF-8 encoding), any character but NUL.
        size: maximum number of queued items, ``0`` for no count limit; when over
            it, the oldest item is dropped.
        addmode: ``0`` always append; ``1`` keep the queued item with the same key
            and drop the new one; ``2`` remove the queued one and append the new.
        dbmode: ``0`` no persistence; ``1`` load at start and save at shutdown;
            ``2`` load only; ``3`` save only.  Needs a ``db_url`` when not ``0``
            (checked by :func:`parse_definition`, which knows the ``db_url``).
        nbytes: the ``bytes=`` attribute, data capacity in bytes
            (``MIN_BYTES``..``MAX_BYTES``).
    """

    name: str
    size: int = 0
    addmode: int = 0
    dbmode: int = 0
    nbytes: int = DEFAULT_BYTES

    def __post_init__(self) -> None:
        """Validate types and ranges; normalise ``size <= 0`` to ``0``."""
        where = f"QueueDef(name={_show(self.name)})"
        _check_name(self.name, where)
        for field in ("size", "addmode", "dbmode", "nbytes"):
            value = getattr(self, field)
            if not _is_int(value):
                raise _fail(where, f"{field} must be an int, not {type(value).__name__}")
        if self.size < 0:
            object.__setattr__(self, "size", 0)
        if self.size > MAX_SIZE:
            raise _fail(where, f"size {self.size} is out of range (at most {MAX_SIZE})")
        if not 0 <= self.addmode <= 2:
            raise _fail(where, f"addmode {self.addmode} is out of range (0, 1 or 2)")
        if not 0 <= self.dbmode <= 3:
            raise _fail(where, f"dbmode {self.dbmode} is out of range (0 to 3)")
        if not MIN_BYTES <= self.nbytes <= MAX_BYTES:
            raise _fail(
                where,
                f"bytes {self.nbytes} is out of range ({MIN_BYTES} to {MAX_BYTES})",
            )

    def to_modparam(self) -> str:
        """Return the canonical modparam string for this definition.

        :func:`parse_definition` turns it back into an equal ``QueueDef``.  The
        name is quoted when it holds white space, ``;``, ``,``, ``=`` or a quote,
        with a quote character it does not contain; ``size``, ``addmode``,
        ``dbmode`` and ``bytes`` are written only when not the default, so a
        definition using only Kamailio's attributes stays valid for Kamailio.
        (A ``dbmode`` other than 0 needs a ``db_url`` when parsed back.)

        Raises:
            DefinitionError: the name holds both ``'`` and ``"``, so no quoting
                can express it.
        """
        name = self.name
        if any(c in _NEEDS_QUOTES for c in name):
            if '"' not in name:
                name = f'"{name}"'
            elif "'" not in name:
                name = f"'{name}'"
            else:
                raise DefinitionError(
                    f"queue name {_show(self.name)} holds both ' and \" and cannot be "
                    "written as a modparam string"
                )
        parts = [f"name={name}"]
        if self.size:
            parts.append(f"size={self.size}")
        if self.addmode:
            parts.append(f"addmode={self.addmode}")
        if self.dbmode:
            parts.append(f"dbmode={self.dbmode}")
        if self.nbytes != DEFAULT_BYTES:
            parts.append(f"bytes={self.nbytes}")
        return ";".join(parts)

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-able dict of the fields (see :meth:`from_dict`)."""
        return {
            "name": self.name,
            "size": self.size,
            "addmode": self.addmode,
            "dbmode": self.dbmode,
            "nbytes": self.nbytes,
        }

    @classmethod
    def from_dict(cls, d: object) -> QueueDef:
        """Build a ``QueueDef`` from a dict made by :meth:`to_dict`.

        ``name`` is required; the other keys (``size``, ``addmode``, ``dbmode``,
        ``nbytes``) default as in the constructor.  Unknown keys, wrong types and
        out-of-range values raise :class:`DefinitionError`.
        """
        if not isinstance(d, Mapping):
            raise DefinitionError(
                f"queue definition dict expected, got {type(d).__name__}: {_show(d)}"
            )
        fields = ("name", "size", "addmode", "dbmode", "nbytes")
        unknown = [k for k in d if k not in fields]
        if unknown:
            raise DefinitionError(
                f"queue definition dict {_show(d)} has unknown keys: "
                + ", ".join(_show(k) for k in unknown)
            )
        if "name" not in d:
            raise DefinitionError(f"queue definition dict {_show(d)} has no 'name'")
        kwargs: dict[str, object] = {k: d[k] for k in fields if k in d}
        # Types are checked by __post_init__ (DefinitionError on any mismatch).
        return cls(**kwargs)  # type: ignore[arg-type]


def parse_bytes(text: str) -> int:
    """Parse a byte capacity: decimal digits with an optional K, M or G suffix.

    Suffixes are 1024-based and case-insensitive (``"64k"`` == ``"64K"`` ==
    65536).  The result must lie in ``MIN_BYTES``..``MAX_BYTES``.

    Raises:
        DefinitionError: not a number with a valid suffix, or out of range.
    """
    if not isinstance(text, str):
        raise DefinitionError(f"bytes value must be a str, not {type(text).__name__}")
    value = _parse_bytes_value(text)
    if value is None:
        raise DefinitionError(
            f"invalid bytes value {_show(text)}: expected an integer with an "
            "optional K, M or G suffix"
        )
    if not MIN_BYTES <= value <= MAX_BYTES:
        raise DefinitionError(
            f"invalid bytes value {_show(text)}: out of range ({MIN_BYTES} to {MAX_BYTES})"
        )
    return value


def _tokenize(text: str) -> list[tuple[str, str, int]]:
    """Split a definition into ``(attribute, value, position)`` triples.

    Checks only the syntax (the grammar in the module docstring); attribute
    names are returned as written.
    """
    n = len(text)
    i = 0
    out: list[tuple[str, str, int]] = []

    def skip_ws(j: int) -> int:
        while j < n and text[j] in _WS:
            j += 1
        return j

    i = skip_ws(i)
    if i == n:
        raise _fail(text, "empty definition (queue name is missing)")
    while True:
        # --- attribute name -------------------------------------------------
        start = i
        while i < n and text[i] not in _WS and text[i] not in "=;,\"'":
            i += 1
        attr = text[start:i]
        if not attr:
            if i < n and text[i] == ",":
                raise _fail(text, f"unquoted ',' at position {i}")
            if i < n and text[i] in _QUOTES:
                raise _fail(text, f"quoted attribute name at position {i}")
            if i < n and text[i] == "=":
                raise _fail(text, f"attribute name missing before '=' at position {i}")
            raise _fail(text, f"empty attribute at position {start}")
        i = skip_ws(i)
        if i == n or text[i] != "=":
            if i < n and text[i] == ",":
                raise _fail(text, f"unquoted ',' at position {i}")
            raise _fail(text, f"attribute {_show(attr)} has no '=' and value")
        i = skip_ws(i + 1)
        # --- value ----------------------------------------------------------
        vpos = i
        if i < n and text[i] in _QUOTES:
            quote = text[i]
            end = text.find(quote, i + 1)
            if end < 0:
                raise _fail(text, f"unterminated {quote} quote at position {i}")
            value = text[i + 1 : end]
            i = end + 1
            if i < n and text[i] not in _WS and text[i] != ";":
                if text[i] == ",":
                    raise _fail(text, f"unquoted ',' at position {i}")
                raise _fail(text, f"unexpected {text[i]!r} after closing quote at position {i}")
        else:
            while i < n and text[i] not in _UNQUOTED_STOP:
                i += 1
            value = text[vpos:i]
            if i < n and text[i] == ",":
                raise _fail(text, f"unquoted ',' at position {i}")
            if i < n and text[i] in _QUOTES:
                raise _fail(text, f"quote character inside unquoted value at position {i}")
        out.append((attr, value, start))
        # --- separator ------------------------------------------------------
        i = skip_ws(i)
        if i == n:
            return out
        if text[i] == ",":
            raise _fail(text, f"unquoted ',' at position {i}")
        if text[i] != ";":
            raise _fail(text, f"missing ';' before {text[i : i + 20]!r} at position {i}")
        i = skip_ws(i + 1)
        if i == n:
            return out  # one trailing ';'


def parse_definition(text: str, *, db_url: str | None = None) -> QueueDef:
    """Parse one modparam definition string such as ``"name=myq;size=20;"``.

    Args:
        text: the definition (``name``, ``size``, ``addmode``, ``dbmode``,
            ``bytes`` attributes; see the module docstring for the syntax).
        db_url: the database URL, required for a ``dbmode`` other than 0.

    Raises:
        DefinitionError: anything malformed; the message quotes ``text`` and
            gives the reason.
    """
    have_db = _check_db_url(db_url)
    qdef = parse_syntax(text)
    if qdef.dbmode != 0 and not have_db:
        raise _fail(text, f"dbmode {qdef.dbmode} needs a db_url, and none is set")
    return qdef


def parse_syntax(text: str) -> QueueDef:
    """:func:`parse_definition` without the check that a ``dbmode`` has a
    ``db_url``: for a caller that checks it later (Kamailio's modparams come
    in any order, ``db_url`` possibly after the queues; ``MQueueModule.init``
    checks)."""
    if not isinstance(text, str):
        raise DefinitionError(
            f"queue definition must be a str, not {type(text).__name__}: {_show(text)}"
        )
    seen: dict[str, str] = {}
    for attr, value, pos in _tokenize(text):
        key = attr.lower() if attr.isascii() else attr
        if key not in _ATTRS:
            raise _fail(
                text,
                f"unknown attribute {_show(attr)} at position {pos} "
                f"(expected one of {', '.join(_ATTRS)})",
            )
        if key in seen:
            raise _fail(text, f"attribute {_show(key)} given twice")
        seen[key] = value
    if "name" not in seen:
        raise _fail(text, "queue name is missing (no name= attribute)")
    name = seen["name"]
    if not name:
        raise _fail(text, "queue name is empty")
    _check_name(name, text)
    # size: zero, negative (any magnitude) or absent all mean "no count limit".
    size = max(0, _int_attr(text, seen, "size", -_CLAMP, MAX_SIZE))
    addmode = _int_attr(text, seen, "addmode", 0, 2)
    dbmode = _int_attr(text, seen, "dbmode", 0, 3)
    nbytes = DEFAULT_BYTES
    if "bytes" in seen:
        raw = seen["bytes"]
        parsed = _parse_bytes_value(raw)
        if parsed is None:
            raise _fail(
                text,
                f"bytes={_show(raw)} is not an integer with an optional K, M or G suffix",
            )
        if not MIN_BYTES <= parsed <= MAX_BYTES:
            raise _fail(text, f"bytes={_show(raw)} is out of range ({MIN_BYTES} to {MAX_BYTES})")
        nbytes = parsed
    return QueueDef(name=name, size=size, addmode=addmode, dbmode=dbmode, nbytes=nbytes)


def parse_definitions(
    defs: Iterable[str | QueueDef], *, db_url: str | None = None
) -> list[QueueDef]:
    """Parse a list of definitions (strings or ready ``QueueDef`` objects).

    Strings are parsed with :func:`parse_definition`; ``QueueDef`` objects are
    taken as they are, except that a ``dbmode`` other than 0 without ``db_url``
    is still rejected.  The order is kept.  An empty list gives ``[]``.

    Raises:
        DefinitionError: a malformed definition, an item of another type, a
            single string instead of a list, or a queue name defined twice.
    """
    if isinstance(defs, (str, bytes, bytearray)):
        raise DefinitionError(
            f"expected a list of queue definitions, got a single {type(defs).__name__}: "
            f"{_show(defs)}"
        )
    have_db = _check_db_url(db_url)
    try:
        items = list(defs)
    except TypeError:
        raise DefinitionError(
            f"expected an iterable of queue definitions, not {type(defs).__name__}"
        ) from None
    result: list[QueueDef] = []
    seen: dict[str, object] = {}
    for item in items:
        if isinstance(item, QueueDef):
            qdef = item
            if qdef.dbmode != 0 and not have_db:
                raise DefinitionError(
                    f"queue {_show(qdef.name)}: dbmode {qdef.dbmode} needs a db_url, "
                    "and none is set"
                )
        elif isinstance(item, str):
            qdef = parse_definition(item, db_url=db_url)
        else:
            raise DefinitionError(
                f"queue definition must be a str or QueueDef, not {type(item).__name__}: "
                f"{_show(item)}"
            )
        if qdef.name in seen:
            raise DefinitionError(
                f"queue {_show(qdef.name)} defined twice: {_show(seen[qdef.name])} "
                f"and {_show(item)}"
            )
        seen[qdef.name] = item
        result.append(qdef)
    return result
