"""Shared fixtures for the mqueue test suite.

- ``ns``: a unique namespace name for one test, destroyed at teardown if it
  still exists.
- ``make_mq``: a factory ``make_mq(defs, **kw)`` creating a namespace (in the
  test's ``ns`` unless ``namespace=`` is given) that is closed and destroyed at
  teardown.
- A session check: when the whole run (all xdist workers included) is over,
  no ``/dev/shm/mqueue.t<pid>_*`` segment made by one of this run's pytest
  processes may remain.  Leftovers are reported, removed, and fail the run.

Namespace names are ``t<pid>_<8 hex>``: the pid of the pytest process (the
xdist worker) that made the name, so the session check can tell this run's
segments from those of other runs on the same machine.
"""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Callable, Iterable, Iterator

import pytest

import mqueue

SHM_DIR = "/dev/shm"
_SEG_RE = re.compile(r"^mqueue\.t(\d+)_")
REDIS_URL = os.environ.get("MQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6399/0")


def new_namespace() -> str:
    """A fresh namespace name owned by this process."""
    return f"t{os.getpid()}_{uuid.uuid4().hex[:8]}"


def destroy_quietly(namespace: str) -> None:
    """Destroy a namespace if it still exists."""
    with contextlib.suppress(mqueue.NamespaceNotFoundError, FileNotFoundError):
        mqueue.destroy(namespace)


def redis_problem(url: str = REDIS_URL) -> str | None:
    """Why the Redis server at ``url`` cannot be used (redis-py is missing, or
    it does not answer PING within a few seconds), or None when it answers."""
    try:
        import redis
    except ImportError:
        return "redis-py is not installed"
    try:
        c = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        try:
            c.ping()
        finally:
            c.close()
    except Exception as e:  # noqa: BLE001
        return str(e)
    return None


@pytest.fixture
def ns() -> Iterator[str]:
    """A unique namespace name, destroyed at teardown if it still exists."""
    name = new_namespace()
    try:
        yield name
    finally:
        destroy_quietly(name)


MakeMQ = Callable[..., mqueue.MQueue]


@pytest.fixture
def make_mq(ns: str) -> Iterator[MakeMQ]:
    """Factory: ``make_mq(defs, namespace=None, **create_kwargs)``.

    Creates the namespace (the test's ``ns`` by default) with ``mqueue.create``;
    every handle made is closed and every namespace destroyed at teardown.
    """
    made: list[tuple[mqueue.MQueue | None, str]] = []

    def make(
        defs: Iterable[str] | str, namespace: str | None = None, **kw: object
    ) -> mqueue.MQueue:
        name = ns if namespace is None else namespace
        if isinstance(defs, str):
            defs = [defs]
        made.append((None, name))  # destroyed even if create fails half-way
        mq = mqueue.create(name, list(defs), **kw)  # type: ignore[arg-type]
        made.append((mq, name))
        return mq

    try:
        yield make
    finally:
        for mq, _ in reversed(made):
            if mq is not None:
                with contextlib.suppress(Exception):
                    mq.close()
        for name in {name for _, name in made}:
            destroy_quietly(name)


# ---------------------------------------------------------------- session check
_PIDS: set[int] = set()  # this run's pytest processes (controller and xdist workers)
_BEFORE: set[str] = set()  # segments already there when the run started


def _t_segments() -> set[str]:
    try:
        return {n for n in os.listdir(SHM_DIR) if _SEG_RE.match(n)}
    except OSError:
        return set()


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    _PIDS.add(os.getpid())
    if not _is_xdist_worker(config):
        _BEFORE.update(_t_segments())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """xdist controller: remember each worker's pid (sent in its workeroutput)."""
    out = getattr(node, "workeroutput", None) or {}
    pid = out.get("mqueue_pid")
    if pid:
        _PIDS.add(int(pid))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    if _is_xdist_worker(config):
        config.workeroutput["mqueue_pid"] = os.getpid()  # type: ignore[attr-defined]
        return
    left = sorted(
        n
        for n in _t_segments() - _BEFORE
        if int(_SEG_RE.match(n).group(1)) in _PIDS  # type: ignore[union-attr]
    )
    if not left:
        return
    for n in left:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(SHM_DIR, n))
    msg = f"mqueue: the test run left {len(left)} shared-memory segment(s): {', '.join(left)}"
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line("")
        tr.write_line(msg, red=True, bold=True)
    else:  # pragma: no cover
        print(msg)
    if session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
