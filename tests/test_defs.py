"""Conformance tests for the queue-definition parser (SPEC.md section 1)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mqueue._defs import (
    DEFAULT_BYTES,
    MAX_BYTES,
    MAX_SIZE,
    MIN_BYTES,
    QueueDef,
    parse_bytes,
    parse_definition,
    parse_definitions,
)
from mqueue._errors import DefinitionError, MQueueError

# No example database: keeps runs independent and safe under pytest -n auto.
FUZZ = settings(max_examples=400, database=None, suppress_health_check=[HealthCheck.too_slow])

DB = "sqlite:///tmp/never-opened.db"


def Q(
    name: str, size: int = 0, addmode: int = 0, dbmode: int = 0, nbytes: int = DEFAULT_BYTES
) -> QueueDef:
    """Shorthand for a QueueDef in the tables below."""
    return QueueDef(name, size=size, addmode=addmode, dbmode=dbmode, nbytes=nbytes)


# --------------------------------------------------------------------------- accepted

ACCEPTED: list[tuple[str, QueueDef]] = [
    # SPEC.md section 1, "accepted as in Kamailio"
    ("name=q1;size=2;", Q("q1", 2)),
    ("name = q1 ; size = 2", Q("q1", 2)),
    ('name="q1";size="2"', Q("q1", 2)),
    ("name='q 1';size=2", Q("q 1", 2)),
    ("name=q1;size=0", Q("q1", 0)),
    ("name=q1;size=-1", Q("q1", 0)),
    ("name=q1", Q("q1")),
    ("NAME=q1;SiZe=2", Q("q1", 2)),
    ("name=myq;size=20;", Q("myq", 20)),
    # the table of attributes
    ("name=q;addmode=0", Q("q")),
    ("name=q;addmode=1", Q("q", addmode=1)),
    ("name=q;addmode=2", Q("q", addmode=2)),
    ("name=q;dbmode=0", Q("q")),
    ("name=q;bytes=4096", Q("q", nbytes=4096)),
    ("name=q;bytes=64k", Q("q", nbytes=64 * 1024)),
    ("name=q;bytes=64K", Q("q", nbytes=64 * 1024)),
    ("name=q;bytes=2M", Q("q", nbytes=2 << 20)),
    ("name=q;bytes=2m", Q("q", nbytes=2 << 20)),
    ("name=q;bytes=1g", Q("q", nbytes=1 << 30)),
    ("name=q;bytes=1024G", Q("q", nbytes=MAX_BYTES)),
    ("name=q;bytes=256", Q("q", nbytes=MIN_BYTES)),
    ("name=q;bytes='8k'", Q("q", nbytes=8192)),
    ("name=q;BYTES=8k", Q("q", nbytes=8192)),
    # names: case-sensitive, byte-exact, quoted may hold anything but the quote
    ("name=Q1", Q("Q1")),
    ('name="q;1"', Q("q;1")),
    ('name="a,b;c d"', Q("a,b;c d")),
    ("name='say \"hi\"'", Q('say "hi"')),
    ('name="it\'s"', Q("it's")),
    ('name=" padded "', Q(" padded ")),
    ("name=a=b", Q("a=b")),
    ("name=q\u00e9\u4e2d\U0001f600", Q("q\u00e9\u4e2d\U0001f600")),
    ("name=q\xa0", Q("q\xa0")),  # only ASCII white space separates
    ("name=x;size=1", Q("x", 1)),
    # white space and separators
    ("  name=q1;size=2;  ", Q("q1", 2)),
    ("\tname\t=\tq1\t;\tsize\t=\t2\t;\t", Q("q1", 2)),
    ("\nname=q1;\r\nsize=2\n", Q("q1", 2)),
    ("name=q1 ;", Q("q1")),
    ("name=q1 ; ", Q("q1")),
    ('name="q1" ; size = "2" ;', Q("q1", 2)),
    ("size=3;name=q1", Q("q1", 3)),
    # numbers: optional sign, decimal digits only, leading zeros fine
    ("name=q;size=+5", Q("q", 5)),
    ("name=q;size=007", Q("q", 7)),
    ("name=q;size=-99999999999999999999999999999", Q("q", 0)),
    ("name=q;size=" + "-" + "9" * 5000, Q("q", 0)),
    (f"name=q;size={MAX_SIZE}", Q("q", MAX_SIZE)),
    ("name=q;addmode=+1", Q("q", addmode=1)),
    ("name=q;addmode=-0", Q("q")),
    ("name=q;size=2;addmode=1;bytes=1k", Q("q", 2, addmode=1, nbytes=1024)),
]


@pytest.mark.parametrize(("text", "expected"), ACCEPTED)
def test_accepted(text: str, expected: QueueDef) -> None:
    assert parse_definition(text) == expected


@pytest.mark.parametrize("dbmode", [1, 2, 3])
def test_dbmode_with_db_url(dbmode: int) -> None:
    assert parse_definition(f"name=q;dbmode={dbmode}", db_url=DB) == Q("q", dbmode=dbmode)
    assert parse_definitions([f"name=q;dbmode={dbmode}"], db_url=DB) == [Q("q", dbmode=dbmode)]


# --------------------------------------------------------------------------- rejected

REJECTED: list[tuple[str, str]] = [
    # SPEC.md section 1, "rejected as in Kamailio"
    ("name=q1;;size=2", "empty attribute"),
    ("name=q1;foo=1", "unknown attribute"),
    ("size=2", "name is missing"),
    ("name=", "name is empty"),
    ('""', "quoted attribute"),
    ("", "empty definition"),
    ("   ", "empty definition"),
    ("name=q1 size=2", "missing ';'"),
    # SPEC.md section 1, "rejected by us" (deliberate fixes)
    ("name=q1,size=2", "unquoted ','"),
    ("name=q1;size=2,", "unquoted ','"),
    ("name=q1, size=2", "unquoted ','"),
    (",name=q1", "unquoted ','"),
    ("name,=q1", "unquoted ','"),
    ('name="q1",size=2', "unquoted ','"),
    ("name=q1;size=abc", "not an integer"),
    ("name=q1;size=2x", "not an integer"),
    ("name=q1;size=", "not an integer"),
    ("name=q1;size=1.5", "not an integer"),
    ("name=q1;size=''", "not an integer"),
    ('name=q1;size=" 2"', "not an integer"),
    ("name=q1;size=0x10", "not an integer"),
    ("name=q1;size=1e3", "not an integer"),
    ("name=q1;size=1_000", "not an integer"),
    ("name=q1;size=\u0661", "not an integer"),  # ARABIC-INDIC DIGIT ONE
    ("name=q1;size=\uff12", "not an integer"),  # FULLWIDTH DIGIT TWO
    ("name=q1;size=--1", "not an integer"),
    ("name=q1;size=+", "not an integer"),
    ("name=q1;name=q2", "given twice"),
    ("name=q1;size=1;SIZE=2", "given twice"),
    ("name=q;addmode=3", "out of range"),
    ("name=q;addmode=-1", "out of range"),
    ("name=q;addmode=abc", "not an integer"),
    ("name=q;dbmode=4", "out of range"),
    ("name=q;dbmode=-1", "out of range"),
    ("name=q;dbmode=1", "needs a db_url"),
    ("name=q;dbmode=2", "needs a db_url"),
    ("name=q;dbmode=3", "needs a db_url"),
    (f"name=q;size={MAX_SIZE + 1}", "out of range"),
    ("name=q;size=" + "9" * 5000, "out of range"),
    # bytes
    ("name=q;bytes=", "K, M or G"),
    ("name=q;bytes=k", "K, M or G"),
    ("name=q;bytes=2T", "K, M or G"),
    ("name=q;bytes=64kb", "K, M or G"),
    ("name=q;bytes=64KiB", "K, M or G"),
    ("name=q;bytes=1.5M", "K, M or G"),
    ("name=q;bytes='64 k'", "K, M or G"),
    ("name=q;bytes=255", "out of range"),
    ("name=q;bytes=0", "out of range"),
    ("name=q;bytes=-1k", "out of range"),
    ("name=q;bytes=1025G", "out of range"),
    ("name=q;bytes=" + "9" * 5000 + "g", "out of range"),
    # quoting
    ('name="q1', "unterminated"),
    ("name='q1", "unterminated"),
    ("name='q1\"", "unterminated"),
    ('name="q"x', "after closing quote"),
    ("name='q''r'", "after closing quote"),
    ('name=q"1"', "quote character inside unquoted value"),
    ("name=q'", "quote character inside unquoted value"),
    ('"name"=q1', "quoted attribute"),
    ('name=""', "name is empty"),
    # structure
    (";name=q1", "empty attribute"),
    ("name=q1;;", "empty attribute"),
    ("name=q1; ;", "empty attribute"),
    ("name=q1;size", "has no '='"),
    ("name", "has no '='"),
    ("name q1", "has no '='"),
    ("=q1", "attribute name missing"),
    ("name=q1;=2", "attribute name missing"),
    ("name=q 1", "missing ';'"),
    ("name=q1;size=2 3", "missing ';'"),
    ("nam=q1", "unknown attribute"),
    ("name=q1;queue=x", "unknown attribute"),
    ("n\u0430me=q1", "unknown attribute"),  # CYRILLIC a
    ("name=q1;\u017fize=2", "unknown attribute"),  # LATIN SMALL LONG S
    # names
    ("name=q\x00", "NUL"),
    ('name="\x00"', "NUL"),
    ("name=\ud800", "UTF-8"),
]


@pytest.mark.parametrize(("text", "reason"), REJECTED)
def test_rejected(text: str, reason: str) -> None:
    with pytest.raises(DefinitionError) as info:
        parse_definition(text)
    msg = str(info.value)
    assert reason in msg
    # The message names the offending string (repr, shortened when very long).
    assert repr(text)[:100] in msg


def test_definition_error_is_value_error_and_mqueue_error() -> None:
    with pytest.raises(ValueError):
        parse_definition("size=2")
    with pytest.raises(MQueueError):
        parse_definition("size=2")


@pytest.mark.parametrize("bad", [None, 1, b"name=q1", ["name=q1"], QueueDef("q1")])
def test_non_str_input(bad: Any) -> None:
    with pytest.raises(DefinitionError, match="must be a str"):
        parse_definition(bad)


def test_db_url_empty_counts_as_missing() -> None:
    with pytest.raises(DefinitionError, match="db_url"):
        parse_definition("name=q;dbmode=1", db_url="")


def test_db_url_wrong_type() -> None:
    with pytest.raises(DefinitionError, match="db_url"):
        parse_definition("name=q", db_url=5)  # type: ignore[arg-type]


def test_long_text_message_is_shortened() -> None:
    text = "name=q;foo=" + "x" * 10_000
    with pytest.raises(DefinitionError) as info:
        parse_definition(text)
    assert len(str(info.value)) < 1000


# --------------------------------------------------------------------------- parse_bytes


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("256", 256),
        ("64k", 65536),
        ("64K", 65536),
        ("2M", 2 << 20),
        ("2m", 2 << 20),
        ("1g", 1 << 30),
        ("1G", 1 << 30),
        ("1024g", MAX_BYTES),
        ("+1k", 1024),
        ("0001k", 1024),
    ],
)
def test_parse_bytes(text: str, value: int) -> None:
    assert parse_bytes(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "k",
        "1kb",
        "1T",
        "1.5k",
        " 1k",
        "1k ",
        "1 k",
        "0x100",
        "255",
        "0",
        "-1k",
        "1025g",
        "\u0661k",
        "1_024",
        "9" * 5000,
    ],
)
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(DefinitionError, match="bytes"):
        parse_bytes(text)


def test_parse_bytes_non_str() -> None:
    with pytest.raises(DefinitionError):
        parse_bytes(4096)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- QueueDef


def test_queuedef_defaults_and_normalisation() -> None:
    q = QueueDef("q")
    assert (q.name, q.size, q.addmode, q.dbmode, q.nbytes) == ("q", 0, 0, 0, DEFAULT_BYTES)
    assert DEFAULT_BYTES == 1 << 20 and MIN_BYTES == 256 and MAX_BYTES == 1 << 40
    assert QueueDef("q", size=-5) == QueueDef("q", size=0)
    assert QueueDef("q", size=-5).size == 0


def test_queuedef_is_frozen_and_hashable() -> None:
    q = QueueDef("q", size=3)
    with pytest.raises(AttributeError):
        q.size = 4  # type: ignore[misc]
    assert {q: 1}[QueueDef("q", size=3)] == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": ""},
        {"name": "a\x00b"},
        {"name": "\udc80"},
        {"name": 5},
        {"name": b"q"},
        {"name": None},
        {"name": "q", "size": "2"},
        {"name": "q", "size": 2.0},
        {"name": "q", "size": True},
        {"name": "q", "size": MAX_SIZE + 1},
        {"name": "q", "addmode": 3},
        {"name": "q", "addmode": -1},
        {"name": "q", "addmode": None},
        {"name": "q", "dbmode": 4},
        {"name": "q", "dbmode": -1},
        {"name": "q", "nbytes": MIN_BYTES - 1},
        {"name": "q", "nbytes": MAX_BYTES + 1},
        {"name": "q", "nbytes": "1k"},
    ],
)
def test_queuedef_validates(kwargs: dict[str, Any]) -> None:
    with pytest.raises(DefinitionError):
        QueueDef(**kwargs)


@pytest.mark.parametrize(
    ("qdef", "text"),
    [
        (Q("q1"), "name=q1"),
        (Q("q1", 20), "name=q1;size=20"),
        (Q("q 1"), 'name="q 1"'),
        (Q('say "hi"'), "name='say \"hi\"'"),
        (Q("it's"), 'name="it\'s"'),
        (Q("a=b"), 'name="a=b"'),
        (Q("a;b,c"), 'name="a;b,c"'),
        (Q("q", 3, 2, 1, 4096), "name=q;size=3;addmode=2;dbmode=1;bytes=4096"),
    ],
)
def test_to_modparam(qdef: QueueDef, text: str) -> None:
    assert qdef.to_modparam() == text
    assert parse_definition(text, db_url=DB) == qdef


def test_to_modparam_both_quotes_is_an_error() -> None:
    with pytest.raises(DefinitionError, match="both"):
        QueueDef('it\'s "x"').to_modparam()


def test_to_dict_from_dict() -> None:
    q = Q("q 1", 5, 1, 3, 8192)
    d = q.to_dict()
    assert d == {"name": "q 1", "size": 5, "addmode": 1, "dbmode": 3, "nbytes": 8192}
    assert QueueDef.from_dict(json.loads(json.dumps(d))) == q
    assert QueueDef.from_dict({"name": "q"}) == Q("q")


@pytest.mark.parametrize(
    "d",
    [
        None,
        "name=q",
        ["q"],
        {},
        {"size": 2},
        {"name": "q", "bytes": 4096},
        {"name": "q", "extra": 1},
        {1: "q", "name": "q"},
        {"name": ""},
        {"name": 1},
        {"name": "q", "size": "2"},
        {"name": "q", "size": None},
        {"name": "q", "addmode": 7},
        {"name": "q", "dbmode": 1.0},
        {"name": "q", "nbytes": 1},
        {"name": "q", "nbytes": False},
    ],
)
def test_from_dict_rejects(d: Any) -> None:
    with pytest.raises(DefinitionError):
        QueueDef.from_dict(d)


# --------------------------------------------------------------------------- parse_definitions


def test_parse_definitions() -> None:
    assert parse_definitions([]) == []
    assert parse_definitions(["name=myq;size=20;", "name=qaz"]) == [Q("myq", 20), Q("qaz")]
    mixed: list[str | QueueDef] = ["name=b", Q("a", 2)]
    assert parse_definitions(iter(mixed)) == [Q("b"), Q("a", 2)]
    assert parse_definitions(d for d in ["name=x"]) == [Q("x")]


@pytest.mark.parametrize(
    ("defs", "reason"),
    [
        (["name=q1", "name=q1;size=2"], "defined twice"),
        (["name=q1", Q("q1")], "defined twice"),
        ([Q("q1"), Q("q1")], "defined twice"),
        (["name=q1", "name='q1'"], "defined twice"),
        ([Q("q", dbmode=1)], "db_url"),
        (["name=q;dbmode=3"], "db_url"),
        (["name=q1", "size=2"], "name is missing"),
        (["name=q1", 5], "str or QueueDef"),
        (["name=q1", None], "str or QueueDef"),
        (["name=q1", b"name=q2"], "str or QueueDef"),
        ("name=q1", "single str"),
        (b"name=q1", "single bytes"),
        (5, "iterable"),
        (None, "iterable"),
    ],
)
def test_parse_definitions_rejects(defs: Any, reason: str) -> None:
    with pytest.raises(DefinitionError, match=reason):
        parse_definitions(defs)


def test_parse_definitions_names_are_case_sensitive() -> None:
    assert parse_definitions(["name=q", "name=Q"]) == [Q("q"), Q("Q")]


def test_parse_definitions_queuedef_with_db_url() -> None:
    assert parse_definitions([Q("q", dbmode=2)], db_url=DB) == [Q("q", dbmode=2)]


# --------------------------------------------------------------------------- fuzzing

_ALPHABET = st.sampled_from(
    list("=;,\"' \t\nnameNAMEsizeaddmodedbmodebytesq1-+0123456789kKmMgG.\x00\u0661\ud800\xa0")
)
_TOKENS = st.sampled_from(
    [
        "name",
        "size",
        "addmode",
        "dbmode",
        "bytes",
        "NAME",
        "=",
        ";",
        " ",
        ",",
        '"',
        "'",
        "q1",
        "0",
        "1",
        "2",
        "3",
        "-1",
        "64k",
        "1g",
        "4096",
        "x",
        "\x00",
        "",
    ]
)
_TEXTS = st.one_of(
    st.text(),
    st.text(alphabet=_ALPHABET),
    st.lists(_TOKENS, max_size=20).map("".join),
)


@FUZZ
@given(text=_TEXTS, with_db=st.booleans())
def test_fuzz_only_queuedef_or_definition_error(text: str, with_db: bool) -> None:
    try:
        result = parse_definition(text, db_url=DB if with_db else None)
    except DefinitionError as exc:
        assert str(exc)
        return
    assert isinstance(result, QueueDef)
    assert result.name and "\x00" not in result.name
    # Whatever parsed must survive the round trips.
    assert QueueDef.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    try:
        canonical = result.to_modparam()
    except DefinitionError:
        assert "'" in result.name and '"' in result.name
        return
    assert parse_definition(canonical, db_url=DB) == result


_NAMES = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
    min_size=1,
).filter(lambda s: not ("'" in s and '"' in s))

_QDEFS = st.builds(
    QueueDef,
    name=_NAMES,
    size=st.integers(min_value=-(10**30), max_value=MAX_SIZE),
    addmode=st.integers(0, 2),
    dbmode=st.integers(0, 3),
    nbytes=st.integers(MIN_BYTES, MAX_BYTES),
)


@FUZZ
@given(qdef=_QDEFS)
def test_fuzz_queuedef_round_trips(qdef: QueueDef) -> None:
    text = qdef.to_modparam()
    assert parse_definition(text, db_url=DB) == qdef
    assert parse_definition("  " + text + " ;\n", db_url=DB) == qdef
    assert QueueDef.from_dict(json.loads(json.dumps(qdef.to_dict()))) == qdef
    if qdef.dbmode:
        with pytest.raises(DefinitionError, match="db_url"):
            parse_definition(text)


@FUZZ
@given(defs=st.lists(st.one_of(_QDEFS, _QDEFS.map(lambda q: q.to_modparam())), max_size=6))
def test_fuzz_parse_definitions(defs: list[QueueDef | str]) -> None:
    names = [
        d.name if isinstance(d, QueueDef) else parse_definition(d, db_url=DB).name for d in defs
    ]
    if len(set(names)) == len(names):
        assert [q.name for q in parse_definitions(defs, db_url=DB)] == names
    else:
        with pytest.raises(DefinitionError, match="defined twice"):
            parse_definitions(defs, db_url=DB)


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=12), st.from_regex(r"[+-]?[0-9]{1,14}[kKmMgG]?", fullmatch=True)
    )
)
def test_fuzz_parse_bytes(text: str) -> None:
    try:
        value = parse_bytes(text)
    except DefinitionError:
        return
    assert MIN_BYTES <= value <= MAX_BYTES
