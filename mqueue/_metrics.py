"""Metrics: the queues' counters in the Prometheus text formats, and an HTTP endpoint.

- :func:`collect` reads every queue of some namespaces (or of all namespaces on the
  machine, or on a Redis server) into :class:`NamespaceSample` snapshots.  A
  namespace that cannot be read (gone between listing and attaching, damaged,
  foreign, access denied, the Redis server down) is reported as not ``up`` with its
  error; it never stops the others from being read.
- :func:`exposition` renders snapshots in the Prometheus text exposition format
  (``text/plain; version=0.0.4``) or in OpenMetrics 1.0 (``# EOF`` at the end).
- :func:`serve` runs an HTTP ``/metrics`` endpoint (standard library
  ``ThreadingHTTPServer``) that reads the queues afresh at each scrape, negotiates
  the format from the ``Accept`` header, and stops cleanly on SIGTERM / SIGINT.

See ``docs/metrics.md`` for the metric names and an example scrape configuration.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from ._core import QueueStats

__all__ = [
    "CONTENT_TYPE_OPENMETRICS",
    "CONTENT_TYPE_TEXT",
    "METRICS",
    "NamespaceSample",
    "collect",
    "exposition",
    "list_namespaces",
    "serve",
    "wants_openmetrics",
]

log = logging.getLogger(__name__)

READ_TIMEOUT = 5.0
"""Seconds a scrape (or a ``top`` refresh) waits for a namespace's counters."""

CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


@dataclass(frozen=True)
class Metric:
    """One metric family: where its value comes from, and how it is exposed."""

    name: str  # the family name (a counter's samples add "_total")
    kind: str  # "counter" or "gauge"
    source: str  # a QueueStats attribute
    help: str
    unit: str = ""  # OpenMetrics UNIT (the name then ends with "_<unit>")


METRICS: tuple[Metric, ...] = (
    Metric(
        "mqueue_items_added",
        "counter",
        "added",
        "Items accepted by add (addmode-1 duplicates dropped at once included).",
    ),
    Metric("mqueue_items_fetched", "counter", "fetched", "Items taken by fetch (or saved)."),
    Metric(
        "mqueue_items_evicted",
        "counter",
        "evicted",
        "Items dropped as the oldest to make room (count bound or bytes).",
    ),
    Metric(
        "mqueue_items_duplicates",
        "counter",
        "duplicates",
        "Items dropped for a duplicate key (addmode 1: the new one; 2: the old one).",
    ),
    Metric(
        "mqueue_lock_recoveries",
        "counter",
        "recoveries",
        "Times a process took over the queue's lock from a dead owner and repaired it.",
    ),
    Metric(
        "mqueue_queue_length",
        "gauge",
        "length",
        "Items queued now (items held by processes not counted).",
    ),
    Metric(
        "mqueue_queue_high_water",
        "gauge",
        "high_water",
        "The largest length the queue ever reached.",
    ),
    Metric(
        "mqueue_queue_size_limit",
        "gauge",
        "size_limit",
        "The count bound (size=) of the queue; 0 when unbounded.",
    ),
    Metric(
        "mqueue_queue_used_bytes",
        "gauge",
        "bytes_used",
        "Bytes of the queue's data capacity in use.",
        "bytes",
    ),
    Metric(
        "mqueue_queue_capacity_bytes",
        "gauge",
        "capacity",
        "The queue's data capacity in bytes.",
        "bytes",
    ),
)

UP = Metric(
    "mqueue_namespace_up",
    "gauge",
    "",
    "1 when the namespace could be read at this scrape, 0 when reading it failed.",
)
QUEUES = Metric("mqueue_namespace_queues", "gauge", "", "Queues defined in the namespace.")


@dataclass
class NamespaceSample:
    """One namespace read at one instant: its queues' stats, or why it failed."""

    namespace: str
    queues: list[QueueStats] = field(default_factory=list)
    error: str | None = None
    time: float = 0.0  # time.monotonic() when read

    @property
    def up(self) -> bool:
        return self.error is None


# ------------------------------------------------------------------ collecting


def list_namespaces(url: str | None = None) -> list[str]:
    """The namespaces in shared memory on this machine, or on the Redis server ``url``."""
    import mqueue

    return mqueue._backend(url).list_namespaces(url=url)  # type: ignore[no-any-return]


def _read(namespace: str, url: str | None) -> NamespaceSample | None:
    """Read one namespace; ``None`` when it does not exist (any more)."""
    import mqueue

    from ._errors import NamespaceNotFoundError

    now = time.monotonic()
    try:
        mq = mqueue.attach(namespace, url=url)
    except (NamespaceNotFoundError, FileNotFoundError):
        return None
    except Exception as exc:  # a damaged or foreign segment, access denied, ...
        log.debug("cannot attach namespace %r: %s", namespace, exc)
        return NamespaceSample(namespace, error=f"{type(exc).__name__}: {exc}", time=now)
    try:
        stats = [q.stats() for q in mq.queues()]
    except Exception as exc:
        log.debug("cannot read namespace %r: %s", namespace, exc)
        return NamespaceSample(namespace, error=f"{type(exc).__name__}: {exc}", time=now)
    finally:
        try:
            mq.close()
        except Exception as exc:  # pragma: no cover - an attached handle saves nothing
            log.debug("closing namespace %r: %s", namespace, exc)
    return NamespaceSample(namespace, stats, time=now)


# Reads still running after their deadline, by (url, namespace): a namespace whose
# read is stuck (a queue lock held by a stopped process) gets no second reader.  A
# listing of the namespaces still running is there as (url, None).
_stuck: dict[tuple[str | None, str | None], threading.Thread] = {}
_stuck_lock = threading.Lock()


def _list_with_deadline(url: str | None, timeout: float) -> list[str]:
    """:func:`list_namespaces` in a thread, waited for ``timeout`` seconds.

    Raises :class:`TimeoutError` when it does not return in time (the listing
    goes on and is remembered in ``_stuck``), or at once while such a listing is
    still running; raises what the listing raised when it failed.
    """
    key = (url, None)
    with _stuck_lock:
        earlier = _stuck.get(key)
        if earlier is not None and earlier.is_alive():
            raise TimeoutError(
                "an earlier listing of the namespaces is still waiting "
                "(the server does not answer?)"
            )
    outcome: list[list[str] | BaseException] = []

    def lister() -> None:
        try:
            outcome.append(list_namespaces(url))
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=lister, name="mqueue-list", daemon=True)
    thread.start()
    thread.join(timeout)
    if not outcome:
        with _stuck_lock:
            _stuck[key] = thread
        raise TimeoutError(
            f"listing the namespaces took more than {timeout:g} s (the server does not answer?)"
        )
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def collect(
    namespaces: Sequence[str] | None = None,
    url: str | None = None,
    *,
    timeout: float | None = None,
) -> list[NamespaceSample]:
    """Snapshots of ``namespaces`` (default: every namespace there is), in that order.

    A namespace that does not exist is left out when it was discovered by
    listing (it was destroyed meanwhile), and reported as not up when it was
    asked for by name.  Any other failure to read one namespace is reported in
    its sample; only a failure to list the namespaces raises.

    ``timeout``: seconds to wait for the namespaces' reads (which run in
    parallel threads then).  Reading takes each queue's lock for an instant, so a
    process stopped (SIGSTOP, a debugger) while holding one makes that read wait
    until it resumes: such a namespace is reported as not up ("no answer within
    ..."), the others are not delayed, and while its read is still waiting no
    second read of it is started.  ``None``: read one after the other, waiting
    as long as it takes.  The listing has the same deadline: a Redis server that
    does not answer makes it raise :class:`TimeoutError` after ``timeout``
    seconds, and at once while that listing still waits.
    """
    explicit = namespaces is not None
    if namespaces is not None:
        names = list(namespaces)
    elif timeout is None:
        names = list_namespaces(url)
    else:
        names = _list_with_deadline(url, timeout)
    if timeout is None:
        results: dict[str, NamespaceSample | None] = {n: _read(n, url) for n in names}
    else:
        results = _read_with_deadline(names, url, timeout)
    out: list[NamespaceSample] = []
    for name in names:
        sample = results[name]
        if sample is None:
            if explicit:
                out.append(
                    NamespaceSample(name, error="no such namespace", time=time.monotonic())
                )
            continue
        out.append(sample)
    return out


READERS = 8
"""Threads reading namespaces in parallel in :func:`collect` with a ``timeout``."""


def _read_with_deadline(
    names: list[str], url: str | None, timeout: float
) -> dict[str, NamespaceSample | None]:
    """Read ``names`` with up to :data:`READERS` threads; after ``timeout`` seconds
    every namespace not read yet is reported as not up, and the reads still running
    are remembered in ``_stuck``."""
    results: dict[str, NamespaceSample | None] = {}
    with _stuck_lock:
        for key in [k for k, t in _stuck.items() if not t.is_alive()]:
            del _stuck[key]
        waiting = {n for n in names if (url, n) in _stuck}
    todo = [n for n in names if n not in waiting]
    lock = threading.Lock()
    reading: dict[threading.Thread, str] = {}  # what each reader is on now
    next_index = [0]

    def reader() -> None:
        me = threading.current_thread()
        while True:
            with lock:
                if next_index[0] >= len(todo) or next_index[0] < 0:
                    reading.pop(me, None)
                    return
                name = todo[next_index[0]]
                next_index[0] += 1
                reading[me] = name
            sample = _read(name, url)
            with lock:
                results[name] = sample

    threads = [
        threading.Thread(target=reader, name="mqueue-read", daemon=True)
        for _ in range(min(READERS, len(todo)))
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    now = time.monotonic()
    with lock:
        next_index[0] = -1  # the readers still running stop after their current read
        for t, name in reading.items():
            if t.is_alive() and name not in results:
                with _stuck_lock:
                    _stuck[(url, name)] = t
        for name in names:
            if name in results:
                continue
            if name in waiting:
                error = (
                    "an earlier read is still waiting for a queue lock "
                    "(held by a stopped process?)"
                )
            else:
                error = f"no answer within {timeout:g} s (a queue lock held by a stopped process?)"
            results[name] = NamespaceSample(name, error=error, time=now)
        return dict(results)


# ------------------------------------------------------------------- rendering


def _escape_label(value: str) -> str:
    value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    # a lone surrogate cannot be UTF-8: show it as an escape instead
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _family(m: Metric, openmetrics: bool) -> list[str]:
    lines = [f"# HELP {m.name} {_escape_help(m.help)}", f"# TYPE {m.name} {m.kind}"]
    if openmetrics and m.unit:
        lines.append(f"# UNIT {m.name} {m.unit}")
    if not openmetrics and m.kind == "counter":
        # the classic format names the family after its samples
        lines = [line.replace(f" {m.name} ", f" {m.name}_total ", 1) for line in lines]
    return lines


def exposition(samples: Iterable[NamespaceSample], *, openmetrics: bool = False) -> str:
    """The samples in the Prometheus text format, or OpenMetrics 1.0 if asked.

    One family per metric of :data:`METRICS`, with the labels ``namespace`` and
    ``queue``; plus ``mqueue_namespace_up`` and ``mqueue_namespace_queues`` per
    namespace.  Every family is written (with no sample when there is nothing
    to report), each once, as both formats require.
    """
    samples = list(samples)
    lines: list[str] = []
    for m in (UP, QUEUES):
        lines += _family(m, openmetrics)
        for s in samples:
            value = (1 if s.up else 0) if m is UP else len(s.queues)
            if m is QUEUES and not s.up:
                continue
            lines.append(f'{m.name}{{namespace="{_escape_label(s.namespace)}"}} {value}')
    for m in METRICS:
        lines += _family(m, openmetrics)
        sample_name = m.name + "_total" if m.kind == "counter" else m.name
        for s in samples:
            ns = _escape_label(s.namespace)
            for st in s.queues:
                value = int(getattr(st, m.source))
                lines.append(
                    f'{sample_name}{{namespace="{ns}",queue="{_escape_label(st.name)}"}} {value}'
                )
    if openmetrics:
        lines.append("# EOF")
    return "\n".join(lines) + "\n"


def wants_openmetrics(accept: str | None) -> bool:
    """True when an HTTP ``Accept`` header asks for OpenMetrics (with a q above 0)."""
    if not accept:
        return False
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if media.lower() != "application/openmetrics-text":
            continue
        q = 1.0
        for p in params:
            k, _, v = p.partition("=")
            if k.strip().lower() == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if q > 0:
            return True
    return False


# --------------------------------------------------------------------- serving


class _Handler(BaseHTTPRequestHandler):
    server: _MetricsServer
    protocol_version = "HTTP/1.1"
    server_version = "mqueue-metrics"
    timeout = 60  # seconds a connection may stay idle (or half-sent) before it is closed

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self._answer(send_body=True)

    def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's name
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            om = wants_openmetrics(self.headers.get("Accept"))
            try:
                body = exposition(self.server.collect(), openmetrics=om).encode("utf-8")
            except Exception as exc:  # listing failed (Redis down, ...): say so, keep serving
                log.warning("scrape failed: %s", exc)
                self._send(500, "text/plain; charset=utf-8", f"scrape failed: {exc}\n", send_body)
                return
            self.server.scrapes += 1
            ctype = CONTENT_TYPE_OPENMETRICS if om else CONTENT_TYPE_TEXT
            self._send_bytes(200, ctype, body, send_body)
        elif path == "/":
            page = (
                "<html><head><title>mqueue metrics</title></head><body>"
                '<h1>mqueue metrics</h1><p><a href="/metrics">/metrics</a></p></body></html>\n'
            )
            self._send(200, "text/html; charset=utf-8", page, send_body)
        else:
            self._send(404, "text/plain; charset=utf-8", "not found: try /metrics\n", send_body)

    def _send(self, code: int, ctype: str, text: str, send_body: bool) -> None:
        self._send_bytes(code, ctype, text.encode("utf-8"), send_body)

    def _send_bytes(self, code: int, ctype: str, body: bytes, send_body: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("%s - " + format, self.address_string(), *args)


class _MetricsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # the listen backlog: connections the kernel holds until they are accepted; the
    # standard library's 5 makes a burst of scrapers retry their SYN after 1 s, 3 s...
    request_queue_size = 128

    def __init__(
        self, address: tuple[str, int], namespaces: Sequence[str] | None, url: str | None
    ) -> None:
        if ":" in address[0]:  # an IPv6 address such as ::1 or ::
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.namespaces = list(namespaces) if namespaces else None
        self.url = url
        self.scrapes = 0

    def collect(self) -> list[NamespaceSample]:
        return collect(self.namespaces, self.url, timeout=READ_TIMEOUT)


def serve(
    namespaces: Sequence[str] | None = None,
    *,
    bind: str = "127.0.0.1",
    port: int = 9712,
    url: str | None = None,
    announce: TextIO | None = sys.stderr,
    stop: threading.Event | None = None,
) -> int:
    """Serve ``/metrics`` until SIGTERM or SIGINT (or ``stop`` is set); return the scrape count.

    ``namespaces``: the namespaces to expose (default: all, found afresh at each
    scrape).  ``port`` 0 picks a free port.  The address actually bound is
    written to ``announce`` (``serving http://HOST:PORT/metrics``) once the
    server is listening.  Signal handlers are installed only when called from
    the main thread; the previous ones are restored on return.
    """
    server = _MetricsServer((bind, port), namespaces, url)
    stop = stop or threading.Event()
    previous: dict[int, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[int(sig)] = signal.signal(sig, on_signal)
    thread = threading.Thread(target=server.serve_forever, name="mqueue-metrics", daemon=True)
    try:
        thread.start()
        host, bound_port = server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else str(host)
        if announce is not None:
            shown = f"[{host}]" if ":" in host else host
            print(f"serving http://{shown}:{bound_port}/metrics", file=announce, flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        if thread.is_alive():
            server.shutdown()
            thread.join()
        server.server_close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return server.scrapes
