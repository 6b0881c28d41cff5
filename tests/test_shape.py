"""The shape of the Python layer (issue 15): one check per argument whatever
the backend, error codes as data, the pieces the backends share, and the
demo's clean-up when it cannot start."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from conftest import REDIS_URL, new_namespace

import mqueue
from mqueue import _core, _demo, _lowlevel

BAD_MODES: list[Any] = [0o1000, -1, "0o600", True, 1.5]


@pytest.mark.parametrize("url", [None, REDIS_URL], ids=["shm", "redis"])
@pytest.mark.parametrize("mode", BAD_MODES)
def test_bad_mode_is_the_same_error_on_every_backend(url: str | None, mode: Any) -> None:
    """A bad ``mode`` is refused with ArgumentError (a ValueError) before
    anything is made, on shared memory and on Redis alike (Redis raised a
    plain ValueError)."""
    ns = new_namespace()
    with pytest.raises(mqueue.ArgumentError, match="mode must be an int in 0..0o777"):
        mqueue.create(ns, ["name=q"], mode=mode, url=url)
    with pytest.raises(mqueue.NamespaceNotFoundError):
        mqueue.destroy(ns)  # nothing was created (shared memory; Redis was not reached)


@pytest.mark.parametrize(("kwargs"), [{"allow_owners": ["root"]}, {"allow_world_writable": True}])
def test_shared_memory_trust_options_refused_on_redis(kwargs: dict[str, Any]) -> None:
    ns = new_namespace()
    for call in (
        lambda: mqueue.create(ns, ["name=q"], url=REDIS_URL, **kwargs),
        lambda: mqueue.attach(ns, url=REDIS_URL, **kwargs),
    ):
        with pytest.raises(mqueue.ArgumentError, match="shared memory"):
            call()


def test_password_hidden_and_host_kept_in_redis_messages() -> None:
    """One redaction for every URL in a message: the password is hidden and the
    host is shown as written (an IPv6 host keeps its brackets; the Redis
    backend's own copy printed ``::1:1``)."""
    pytest.importorskip("redis", reason="the Redis client (extra 'redis') is not installed")
    with pytest.raises(mqueue.BackendError) as exc:
        mqueue.attach(new_namespace(), url="redis://user:s3cret@[::1]:1/0")
    text = str(exc.value)
    assert "s3cret" not in text
    assert "redis://user:***@[::1]:1/0" in text


def test_redact_url() -> None:
    assert _core.redact_url("redis://h:1/0") == "redis://h:1/0"
    assert _core.redact_url("postgresql://u:pw@db/x") == "postgresql://u:***@db/x"
    assert _core.redact_url("redis://:pw@Host.Example:6379/0") == "redis://:***@Host.Example:6379/0"
    assert _core.redact_url("redis://u:p@[::1]:x/0") == "redis://u:***@[::1]:x/0"


def test_every_engine_code_has_an_entry() -> None:
    """The table covers every MQ_E* code the cffi module knows (the values
    come from csrc/mq.h), with distinct codes."""
    codes = {name: getattr(_lowlevel.lib, name) for name in dir(_lowlevel.lib)}
    errs = {n: v for n, v in codes.items() if n.startswith("MQ_E") and isinstance(v, int)}
    assert len(errs) >= 21
    assert len(set(errs.values())) == len(errs)
    for name, rc in errs.items():
        assert rc < 0, name
        assert rc in _lowlevel.ERRORS, name
        assert _lowlevel.strerror(rc) == _lowlevel.ERRORS[rc][1]


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("MQ_ETOOBIG", mqueue.ItemTooLargeError),
        ("MQ_EFULL", mqueue.QueueFullError),
        ("MQ_ECORRUPT", mqueue.CorruptSegmentError),
        ("MQ_EVERSION", mqueue.CorruptSegmentError),
        ("MQ_EMAGIC", mqueue.CorruptSegmentError),
        ("MQ_ELOST", mqueue.NamespaceLostError),
        ("MQ_ESLOTS", mqueue.TooManyProcessesError),
        ("MQ_EINVAL", mqueue.MQueueError),
    ],
)
def test_error_for_returns_the_exception(code: str, kind: type[Exception]) -> None:
    rc = getattr(_lowlevel.lib, code)
    exc = _lowlevel.error_for(rc, "queue 'q'")  # returned, not raised
    assert type(exc) is kind
    assert str(exc).startswith("queue 'q': ")


def test_error_for_half_made_and_unknown_codes() -> None:
    exc = _lowlevel.error_for(_lowlevel.lib.MQ_EHALFMADE, "namespace 'n'")
    assert isinstance(exc, mqueue.NamespaceIncompleteError)
    assert exc.creator_alive is False
    exc2 = _lowlevel.error_for(-999, "namespace 'n'")
    assert type(exc2) is mqueue.MQueueError and "-999" in str(exc2)


def test_python_constants_match_the_engine() -> None:
    lib = _lowlevel.lib
    assert _core.REC_HDR == lib.MQ_REC_HDR
    assert (_core.FLAG_KEY_STR, _core.FLAG_VAL_STR) == (lib.MQ_KEY_STR, lib.MQ_VAL_STR)


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        (None, -1.0),
        (0, 0.0),
        (0.5, 0.5),
        (2, 2.0),
        (1e9, -1.0),
        (float("inf"), -1.0),
        (10**400, -1.0),
    ],
)
def test_check_timeout(timeout: Any, expected: float) -> None:
    assert _core.check_timeout(timeout) == expected


@pytest.mark.parametrize("timeout", [-1, -0.5, float("nan"), -(10**400)])
def test_check_timeout_refuses_out_of_range(timeout: Any) -> None:
    with pytest.raises(mqueue.ArgumentError):
        _core.check_timeout(timeout)


@pytest.mark.parametrize("timeout", ["1", True, [1], b"1"])
def test_check_timeout_refuses_non_numbers(timeout: Any) -> None:
    with pytest.raises(mqueue.ArgumentTypeError):
        _core.check_timeout(timeout)


def test_demo_restores_sigterm_handler_when_create_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The demo turns SIGTERM into KeyboardInterrupt while it runs; when it
    cannot even create its namespace, the caller's handler is back (it
    stayed replaced before)."""

    def mine(signum: int, frame: Any) -> None:  # the caller's handler
        pass

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise mqueue.AccessDeniedError("no shared memory for you")

    old = signal.signal(signal.SIGTERM, mine)
    try:
        monkeypatch.setattr(_demo, "clean_leftovers", list)
        monkeypatch.setattr(mqueue, "create", refuse)
        with pytest.raises(mqueue.AccessDeniedError):
            _demo.run(workers=1, seconds=0.1)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)


def test_demo_restores_sigterm_handler_when_clean_up_of_leftovers_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def mine(signum: int, frame: Any) -> None:
        pass

    def broken() -> list[str]:
        raise OSError("cannot list /dev/shm")

    old = signal.signal(signal.SIGTERM, mine)
    try:
        monkeypatch.setattr(_demo, "clean_leftovers", broken)
        with pytest.raises(OSError, match="cannot list"):
            _demo.run(workers=1, seconds=0.1)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, old)


# ---- the fetch fast path (issue 10): one C call, "key NUL value" split once

ODD_ITEMS: list[tuple[Any, Any]] = [
    ("k", "v"),
    ("", ""),
    (b"", b""),
    ("k\0", "v"),  # a NUL in a str key: not split at it
    ("\0", "\0"),
    ("k", "v\0w\0"),  # NULs in the value are kept
    (b"k\0x", b"v\0"),
    (b"\0", b""),
    ("ké€😀", "vé\0€"),  # non-ASCII text
    ("k\ud800", "v\udfff"),  # lone surrogates, as str can hold them
    ("k", b"\xff\0"),
    (b"\xff", "v"),
    ("x" * 300_000, "y"),  # larger than the handle's first buffer
]


def test_fetch_returns_every_kind_of_item_exactly(make_mq: Any) -> None:
    q = make_mq(["name=q;bytes=4M"])["q"]
    for key, value in ODD_ITEMS:
        assert q.add(key, value)
    for key, value in ODD_ITEMS:
        item = q.fetch()
        assert item == (key, value)
        assert type(item.key) is type(key) and type(item.value) is type(value)
        assert (q.key, q.value) == (key, value)
    assert q.fetch() is None
    q.add_many(ODD_ITEMS)
    assert q.fetch_many(100) == ODD_ITEMS


def test_fetch_timeout_is_the_one_of_this_call(make_mq: Any) -> None:
    """The fast path keeps the timeout in the C struct and rewrites it only
    when it changes: a fetch() after a long fetch(timeout=...) must not wait."""
    import threading
    import time

    q = make_mq(["name=q"])["q"]
    threading.Timer(0.2, q.add, ("k", "v")).start()
    assert q.fetch(timeout=30) == ("k", "v")  # waits for the add
    t0 = time.monotonic()
    assert q.fetch() is None  # timeout=0: at once, not 30 s
    assert q.fetch(0) is None
    assert time.monotonic() - t0 < 10
    threading.Timer(0.2, q.add, ("k2", "v2")).start()
    assert q.fetch(None) == ("k2", "v2")
    t0 = time.monotonic()
    assert q.fetch(0.0) is None
    assert time.monotonic() - t0 < 10
