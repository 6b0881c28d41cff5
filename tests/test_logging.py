"""The ``mqueue`` logger: silent by default; recoveries, evictions (when turned
on), persistence and backend faults at their levels; no work on the add path
while eviction logging is off."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import replace

import pytest
from conftest import MakeMQ

import mqueue
import mqueue.asyncio as amqueue
from mqueue import _log, _shm


@pytest.fixture(autouse=True)
def evictions_off() -> Iterator[None]:
    was = _log.evictions_logged()
    yield
    mqueue.log_evictions(was)


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "mqueue"]


def test_logger_is_silent_by_default(ns: str) -> None:
    """Unconfigured logging: an eviction, a fault, nothing on stderr."""
    code = textwrap.dedent(
        f"""
        import logging, mqueue
        assert any(isinstance(h, logging.NullHandler)
                   for h in logging.getLogger("mqueue").handlers)
        mqueue.log_evictions(True)
        with mqueue.create({ns!r}, ["name=q;size=1"]) as mq:
            try:
                mq["q"].add("a", "1"); mq["q"].add("b", "2")
                assert mq["q"].stats().evicted == 1
            finally:
                mqueue.destroy({ns!r})
        try:
            mqueue.attach("x", url="redis://127.0.0.1:1/0")
        except mqueue.MQueueError:
            pass
        print("done")
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "done\n"
    assert r.stderr == ""


def test_no_eviction_logging_work_when_off(make_mq: MakeMQ) -> None:
    mqueue.log_evictions(False)
    for name in ("add", "add_many"):
        method = _shm.ShmQueue.__dict__[name]
        assert not hasattr(method, "__mqueue_watch__")
        assert method.__code__.co_filename == _shm.__file__  # the backend's own method
    mqueue.log_evictions(True)
    assert _shm.ShmQueue.__dict__["add"].__mqueue_watch__ is not None
    mqueue.log_evictions(False)
    assert not hasattr(_shm.ShmQueue.__dict__["add"], "__mqueue_watch__")


def test_evictions_logged_when_on(make_mq: MakeMQ, caplog: pytest.LogCaptureFixture) -> None:
    q = make_mq("name=q;size=3")["q"]
    caplog.set_level(logging.INFO, logger="mqueue")
    for i in range(3):
        q.add(f"k{i}", "v")  # fills the queue: no eviction
    mqueue.log_evictions(True)
    q.add("k3", "v")
    q.add_many([(f"m{i}", "v") for i in range(4)])
    mqueue.log_evictions(False)
    q.add("k9", "v")  # evicts, unlogged
    recs = _records(caplog)
    assert [r.levelno for r in recs] == [logging.WARNING, logging.WARNING]
    assert "1 item(s) evicted" in recs[0].getMessage()
    assert "4 item(s) evicted" in recs[1].getMessage()
    assert repr(q.name) in recs[0].getMessage()
    assert q.stats().evicted == 6


def test_evictions_env_var(ns: str) -> None:
    code = textwrap.dedent(
        f"""
        import logging, mqueue
        logging.basicConfig(level=logging.WARNING, format="%(name)s %(levelname)s %(message)s")
        with mqueue.create({ns!r}, ["name=q;size=1"]) as mq:
            try:
                mq["q"].add("a", "1"); mq["q"].add("b", "2")
            finally:
                mqueue.destroy({ns!r})
        """
    )
    env = dict(os.environ, MQUEUE_LOG_EVICTIONS="1")
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 0, r.stderr
    assert "mqueue WARNING" in r.stderr and "1 item(s) evicted" in r.stderr
    env["MQUEUE_LOG_EVICTIONS"] = "0"
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 0 and r.stderr == ""


def test_recoveries_logged_when_observed(
    make_mq: MakeMQ, caplog: pytest.LogCaptureFixture
) -> None:
    q = make_mq("name=q")["q"]
    caplog.set_level(logging.INFO, logger="mqueue")
    st = q.stats()  # the baseline
    assert _records(caplog) == []
    _log.observe(q, replace(st, recoveries=st.recoveries + 2))  # as after two take-overs
    recs = _records(caplog)
    assert len(recs) == 1 and recs[0].levelno == logging.WARNING
    assert "2 lock recovery(ies)" in recs[0].getMessage()
    _log.observe(q, replace(st, recoveries=st.recoveries + 2))  # nothing new: nothing logged
    assert len(_records(caplog)) == 1


def test_corrupt_segment_is_logged(ns: str, caplog: pytest.LogCaptureFixture) -> None:
    mqueue.create(ns, ["name=q"]).close()
    with open(f"/dev/shm/mqueue.{ns}", "r+b") as f:
        f.write(b"\xff" * 64)  # the header's magic and version
    caplog.set_level(logging.INFO, logger="mqueue")
    with pytest.raises(mqueue.CorruptSegmentError):
        mqueue.attach(ns)
    recs = _records(caplog)
    assert recs and recs[-1].levelno == logging.ERROR
    assert "CorruptSegmentError" in recs[-1].getMessage()


def test_redis_fault_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("redis")
    caplog.set_level(logging.INFO, logger="mqueue")
    with pytest.raises(mqueue.BackendError):
        mqueue.attach("x", url="redis://user:secret@127.0.0.1:1/0")
    recs = _records(caplog)
    assert recs and recs[-1].levelno == logging.WARNING
    assert "BackendError" in recs[-1].getMessage() and "secret" not in recs[-1].getMessage()


def test_persisted_message(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mqueue")
    _log.persisted("saved", "ns", "calls", 3, "postgresql://u:pw@db/x")
    _log.persisted("loaded", "ns", "calls", 2, "sqlite:///tmp/a.db")
    msgs = [(r.levelno, r.getMessage()) for r in _records(caplog)]
    assert msgs == [
        (logging.INFO, "namespace 'ns', queue 'calls': saved 3 item(s) to postgresql://u:***@db/x"),
        (logging.INFO, "namespace 'ns', queue 'calls': loaded 2 item(s) from sqlite:///tmp/a.db"),
    ]


@pytest.mark.parametrize("create", [mqueue.create, amqueue.create], ids=["sync", "asyncio"])
def test_default_mode_shows_in_octal(create: object) -> None:
    import inspect
    import pydoc

    assert mqueue.DEFAULT_MODE == 0o600
    assert "mode: 'int' = 0o600" in str(inspect.signature(create))  # type: ignore[arg-type]
    assert "mode: 'int' = 0o600" in pydoc.render_doc(create)
    assert "384" not in pydoc.render_doc(create)
