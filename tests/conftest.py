"""Shared fixtures for the mqueue test suite.

- ``ns``: a unique namespace name for one test, destroyed at teardown if it
  still exists.
- ``make_mq``: a factory ``make_mq(defs, **kw)`` creating a namespace (in the
  test's ``ns`` unless ``namespace=`` is given) that is closed and destroyed at
  teardown.
- ``backend``: the backend a shared semantic test runs on, one of ``shm``
  (shared memory), ``redis`` (``MQUEUE_TEST_REDIS_URL``, default
  ``redis://127.0.0.1:6399/0``) and ``cluster`` (``MQUEUE_TEST_REDIS_CLUSTER_URL``,
  a Redis Cluster; unset: none).  A test that takes it runs once per backend;
  without redis-py or a server that answers, the Redis variants skip, saying
  why, unless ``MQUEUE_REQUIRE_SERVICES=1`` (CI), where they fail.
- ``make_on_backend``: ``make_mq`` on the test's ``backend``; at teardown it
  also checks that the namespace left nothing behind (no ``/dev/shm``
  segment, no Redis key).
- SIGINT as at a terminal: a shell ignores SIGINT for the commands it starts in
  the background (POSIX), and an ignored signal stays ignored across fork and
  exec, so a suite started that way would hand every child it starts an
  ignored Ctrl-C (a Python child then never raises KeyboardInterrupt: the tests
  that interrupt a child would fail for a reason of the caller's shell).  The
  test processes take Python's own SIGINT handler back; children get the
  default disposition at exec.
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
import signal
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import mqueue

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # see the module docstring
    signal.signal(signal.SIGINT, signal.default_int_handler)

SHM_DIR = "/dev/shm"
_SEG_RE = re.compile(r"^mqueue\.t(\d+)_")
REDIS_URL = os.environ.get("MQUEUE_TEST_REDIS_URL", "redis://127.0.0.1:6399/0")
REDIS_CLUSTER_URL = os.environ.get("MQUEUE_TEST_REDIS_CLUSTER_URL", "")
REQUIRE_SERVICES = bool(os.environ.get("MQUEUE_REQUIRE_SERVICES"))
BACKENDS = ("shm", "redis", "cluster")


def new_namespace() -> str:
    """A fresh namespace name owned by this process."""
    return f"t{os.getpid()}_{uuid.uuid4().hex[:8]}"


def destroy_quietly(namespace: str, url: str | None = None) -> None:
    """Destroy a namespace if it still exists."""
    with contextlib.suppress(mqueue.NamespaceNotFoundError, FileNotFoundError):
        mqueue.destroy(namespace, url=url)


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


def cluster_problem(url: str = REDIS_CLUSTER_URL) -> str | None:
    """Why ``url`` cannot be used as a Redis Cluster, or None when it can."""
    if not url:
        return "MQUEUE_TEST_REDIS_CLUSTER_URL is not set (bash .ci/services-redis-cluster.sh)"
    problem = redis_problem(url)
    if problem is not None:
        return problem
    import redis

    c = redis.Redis.from_url(url)
    try:
        if not int(c.info("cluster").get("cluster_enabled", 0)):
            return f"{url} is not a cluster node"
    finally:
        c.close()
    return None


_PROBLEMS: dict[str, str | None] = {}  # backend -> why it cannot be used (asked once)


def backend_url(kind: str) -> str | None:
    """The URL of backend ``kind`` (None for ``shm``).  A Redis backend that
    cannot be used skips the test, saying why, or fails it when
    ``MQUEUE_REQUIRE_SERVICES`` is set."""
    if kind == "shm":
        return None
    if kind not in _PROBLEMS:
        _PROBLEMS[kind] = redis_problem(REDIS_URL) if kind == "redis" else cluster_problem()
    problem = _PROBLEMS[kind]
    if problem is not None:
        what = f"Redis at {REDIS_URL}" if kind == "redis" else "a Redis Cluster"
        if REQUIRE_SERVICES:
            pytest.fail(f"{what} is required (MQUEUE_REQUIRE_SERVICES) but: {problem}")
        pytest.skip(f"{what} is not available: {problem}")
    return REDIS_URL if kind == "redis" else REDIS_CLUSTER_URL


def service_url(kind: str) -> str:
    """``backend_url`` of ``redis`` or ``cluster``: a URL, or the test skips (fails)."""
    url = backend_url(kind)
    if url is None:
        raise ValueError(f"{kind!r} is not a Redis backend")
    return url


def redis_admin(url: str) -> Any:
    """A redis-py client for ``url``: a RedisCluster on a cluster node."""
    import redis

    c = redis.Redis.from_url(url)
    try:
        cluster = int(c.info("cluster").get("cluster_enabled", 0))
    finally:
        c.close()
    return redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)


def redis_keys_of(client: Any, namespace: str) -> list[bytes]:
    """The Redis keys of ``namespace`` (all of them share its hash tag)."""
    from mqueue import _redis

    pat = _redis._glob_esc(f"mqueue:{{{_redis._esc(namespace)}") + "[:}]*"
    return list(client.scan_iter(match=pat, count=1000))


@dataclass(frozen=True)
class Backend:
    """Where a shared semantic test runs: ``name`` is ``shm``, ``redis`` or
    ``cluster``; ``url`` goes to ``mqueue.create/attach/destroy``."""

    name: str
    url: str | None

    def leftovers(self, namespace: str) -> list[str]:
        """What ``namespace`` still has on this backend: its /dev/shm segment
        or its Redis keys (empty once it is destroyed)."""
        if self.url is None:
            path = os.path.join(SHM_DIR, f"mqueue.{namespace}")
            return [path] if os.path.exists(path) else []
        c = redis_admin(self.url)
        try:
            return [k.decode("utf-8", "replace") for k in redis_keys_of(c, namespace)]
        finally:
            c.close()

    def remove_leftovers(self, namespace: str) -> None:
        """Delete what ``leftovers`` lists."""
        if self.url is None:
            destroy_quietly(namespace)
            return
        c = redis_admin(self.url)
        try:
            for k in redis_keys_of(c, namespace):
                c.delete(k)
        finally:
            c.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each test that takes this runs on shared memory, one redis-server and a
    3-master Redis Cluster (the Redis ones skip or fail as ``backend_url``)."""
    return Backend(request.param, backend_url(request.param))


@pytest.fixture
def ns() -> Iterator[str]:
    """A unique namespace name, destroyed at teardown if it still exists."""
    name = new_namespace()
    try:
        yield name
    finally:
        destroy_quietly(name)


MakeMQ = Callable[..., mqueue.MQueue]


class NamespaceFactory:
    """``make(defs, namespace=None, **create_kwargs)``: ``mqueue.create`` on
    one backend (``url``, unless ``url=`` is given) in the test's namespace
    ``ns`` unless ``namespace`` is given; remembers each namespace (with its
    url) and handle for the teardown."""

    def __init__(self, ns: str, url: str | None) -> None:
        self.ns, self.url = ns, url
        self.names: dict[str, str | None] = {}  # every namespace asked for -> its url
        self.handles: list[mqueue.MQueue] = []

    def __call__(
        self, defs: Iterable[str] | str, namespace: str | None = None, **kw: object
    ) -> mqueue.MQueue:
        name = self.ns if namespace is None else namespace
        if isinstance(defs, str):
            defs = [defs]
        url = kw.pop("url", self.url)
        self.names[name] = url  # type: ignore[assignment]  # destroyed even if create fails
        mq = mqueue.create(name, list(defs), url=url, **kw)  # type: ignore[arg-type]
        self.handles.append(mq)
        return mq


@pytest.fixture
def make_mq(ns: str) -> Iterator[MakeMQ]:
    """Factory: ``make_mq(defs, namespace=None, **create_kwargs)``.

    Creates the namespace (the test's ``ns`` by default) with ``mqueue.create``;
    every handle made is closed and every namespace destroyed at teardown.
    """
    make = NamespaceFactory(ns, None)
    try:
        yield make
    finally:
        for mq in reversed(make.handles):
            with contextlib.suppress(Exception):
                mq.close()
        for name, url in make.names.items():
            destroy_quietly(name, url)


@pytest.fixture
def make_on_backend(backend: Backend, ns: str) -> Iterator[MakeMQ]:
    """``make_mq`` on the test's ``backend``.  At teardown every handle is
    closed (a Redis queue's keys checked for consistency first), every
    namespace made is destroyed, and the test fails if one left a segment or a
    key behind."""
    make = NamespaceFactory(ns, backend.url)
    yield make
    problems: list[str] = []
    for mq in reversed(make.handles):
        if backend.url is not None and not mq.closed:
            for q in mq.queues():
                try:
                    len(q)  # NamespaceLostError: a handle of a namespace destroyed since
                    q._check()  # type: ignore[attr-defined]
                except mqueue.NamespaceLostError:
                    pass
                except Exception as e:  # noqa: BLE001
                    problems.append(f"{mq.namespace}/{q.name}: {e!r}")
        with contextlib.suppress(Exception):
            mq.close()
    for name, url in make.names.items():
        destroy_quietly(name, url)
        left = backend.leftovers(name)
        if left:
            backend.remove_leftovers(name)
            problems.append(f"{name} left {left}")
    assert not problems, problems


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
