"""Metrics (docs/metrics.md): the exposition, ``stats --format``, ``serve-metrics``.

The exposition is checked with ``prometheus_client``'s own parsers (the classic
text format and the strict OpenMetrics one); the HTTP endpoint with urllib against
a ``mqueue serve-metrics`` subprocess on a free port, while namespaces are created,
damaged and destroyed under it.  ``top`` is in test_top.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import SHM_DIR, MakeMQ, destroy_quietly, new_namespace, service_url

import mqueue
from mqueue import QueueDef, _metrics, cli

pc_parser = pytest.importorskip("prometheus_client.parser")
om_parser = pytest.importorskip("prometheus_client.openmetrics.parser")


Values = dict[tuple[str, str, str], float]  # (sample name, namespace, queue) -> value


def parse(text: str, openmetrics: bool) -> tuple[dict[str, str], Values]:
    """Parse with prometheus_client: ({family: type}, {(sample, ns, queue): value})."""
    fams = (om_parser if openmetrics else pc_parser).text_string_to_metric_families(text)
    types: dict[str, str] = {}
    values: Values = {}
    for fam in fams:
        assert fam.name not in types, f"family {fam.name} twice"
        types[fam.name] = fam.type
        assert fam.documentation, f"no HELP for {fam.name}"
        for s in fam.samples:
            key = (s.name, s.labels["namespace"], s.labels.get("queue", ""))
            assert key not in values, f"sample {key} twice"
            values[key] = s.value
    return types, values


def expected(ns: str, mq: mqueue.MQueue) -> Values:
    want: Values = {
        ("mqueue_namespace_up", ns, ""): 1,
        ("mqueue_namespace_queues", ns, ""): len(mq),
    }
    for q in mq.queues():
        st = q.stats()
        for name, value in [
            ("mqueue_items_added_total", st.added),
            ("mqueue_items_fetched_total", st.fetched),
            ("mqueue_items_evicted_total", st.evicted),
            ("mqueue_items_duplicates_total", st.duplicates),
            ("mqueue_lock_recoveries_total", st.recoveries),
            ("mqueue_queue_length", st.length),
            ("mqueue_queue_high_water", st.high_water),
            ("mqueue_queue_size_limit", st.size_limit),
            ("mqueue_queue_used_bytes", st.bytes_used),
            ("mqueue_queue_capacity_bytes", st.capacity),
        ]:
            want[(name, ns, q.name)] = value
    return want


WEIRD = 'we"ird\\q\nx é'  # a queue name every label escape is needed for


def busy_namespace(make_mq: MakeMQ, namespace: str | None = None, **kw: Any) -> mqueue.MQueue:
    mq = make_mq(
        ["name=calls;size=3", "name=dedup;addmode=1", QueueDef(name=WEIRD)],
        namespace=namespace,
        **kw,
    )
    for i in range(5):
        mq["calls"].add(f"k{i}", "v" * i)  # 2 evicted
    mq["calls"].fetch()
    for k in ("a", "a", "b"):
        mq["dedup"].add(k, "v")  # 1 duplicate
    mq[WEIRD].add("x", "y")
    return mq


EXPECTED_TYPES = {
    "mqueue_namespace_up": "gauge",
    "mqueue_namespace_queues": "gauge",
    "mqueue_items_added": "counter",
    "mqueue_items_fetched": "counter",
    "mqueue_items_evicted": "counter",
    "mqueue_items_duplicates": "counter",
    "mqueue_lock_recoveries": "counter",
    "mqueue_queue_length": "gauge",
    "mqueue_queue_high_water": "gauge",
    "mqueue_queue_size_limit": "gauge",
    "mqueue_queue_used_bytes": "gauge",
    "mqueue_queue_capacity_bytes": "gauge",
}


@pytest.mark.parametrize("openmetrics", [False, True])
def test_exposition_parses_and_matches_stats(make_mq: MakeMQ, ns: str, openmetrics: bool) -> None:
    mq = busy_namespace(make_mq)
    text = _metrics.exposition(_metrics.collect([ns]), openmetrics=openmetrics)
    types, values = parse(text, openmetrics)
    assert types == EXPECTED_TYPES
    assert values == expected(ns, mq)
    assert values[("mqueue_items_evicted_total", ns, "calls")] == 2
    assert values[("mqueue_items_duplicates_total", ns, "dedup")] == 1
    assert values[("mqueue_queue_length", ns, WEIRD)] == 1
    assert text.endswith("# EOF\n") == openmetrics
    assert ("# UNIT mqueue_queue_used_bytes bytes" in text) == openmetrics


@pytest.mark.parametrize("openmetrics", [False, True])
def test_exposition_with_nothing_to_report_still_parses(openmetrics: bool) -> None:
    types, values = parse(_metrics.exposition([], openmetrics=openmetrics), openmetrics)
    assert types == EXPECTED_TYPES and values == {}


def test_unreadable_namespaces_are_reported_not_fatal(make_mq: MakeMQ, ns: str) -> None:
    busy_namespace(make_mq)
    damaged = new_namespace()
    path = os.path.join(SHM_DIR, "mqueue." + damaged)
    with open(path, "wb") as f:
        f.write(b"not a namespace" * 100)
    missing = new_namespace()
    try:
        samples = _metrics.collect([ns, damaged, missing])
        assert [(s.namespace, s.up) for s in samples] == [
            (ns, True),
            (damaged, False),
            (missing, False),
        ]
        for om in (False, True):
            _, values = parse(_metrics.exposition(samples, openmetrics=om), om)
            assert values[("mqueue_namespace_up", damaged, "")] == 0
            assert values[("mqueue_namespace_up", missing, "")] == 0
            assert values[("mqueue_queue_length", ns, "calls")] == 2
            assert not any(k[1] in (damaged, missing) and k[2] for k in values)
        # listing all: the damaged one is reported, the missing one is not there at all
        listed = {s.namespace: s.up for s in _metrics.collect()}
        assert listed[ns] is True and listed[damaged] is False and missing not in listed
    finally:
        os.unlink(path)


@pytest.mark.parametrize(
    ("accept", "om"),
    [
        (None, False),
        ("", False),
        ("text/plain", False),
        ("application/openmetrics-text", True),
        ("application/openmetrics-text; version=1.0.0; charset=utf-8", True),
        (  # what Prometheus sends
            "application/openmetrics-text;version=0.0.1;q=0.75,"
            "text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            True,
        ),
        ("Application/OpenMetrics-Text", True),
        ("application/openmetrics-text;q=0, text/plain", False),
        ("application/openmetrics-text;q=oops", False),
        ("text/plain;version=0.0.4;q=1,*/*;q=0.1", False),
    ],
)
def test_content_negotiation(accept: str | None, om: bool) -> None:
    assert _metrics.wants_openmetrics(accept) is om


# ------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(("fmt", "om"), [("openmetrics", True), ("prometheus", False)])
def test_cli_stats_format(
    make_mq: MakeMQ, ns: str, fmt: str, om: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    mq = busy_namespace(make_mq)
    assert cli.main(["stats", ns, "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert parse(out, om)[1] == expected(ns, mq)


def test_cli_stats_format_errors(ns: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["stats", ns, "--format", "openmetrics"]) == 1
    err = json.loads(capsys.readouterr().err)["error"]
    assert err["code"] == 404
    assert cli.main(["stats", ns, "--format", "xml"]) == 2
    assert json.loads(capsys.readouterr().err)["error"]["code"] == 400


def test_cli_stats_other_formats_unchanged(
    make_mq: MakeMQ, ns: str, capsys: pytest.CaptureFixture[str]
) -> None:
    busy_namespace(make_mq)
    assert cli.main(["stats", ns, "--format", "json"]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert cli.main(["stats", ns, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == as_json
    assert cli.main(["stats", ns]) == 0
    assert capsys.readouterr().out.startswith(f"namespace {ns}\n")


@pytest.fixture
def redis_url() -> str:
    """Skips, or fails under MQUEUE_REQUIRE_SERVICES, without Redis."""
    return service_url("redis")


@pytest.fixture
def redis_ns(redis_url: str) -> Iterator[str]:
    name = new_namespace()
    try:
        yield name
    finally:
        with contextlib.suppress(FileNotFoundError):
            mqueue.destroy(name, url=redis_url)


def test_cli_stats_openmetrics_redis(
    make_mq: MakeMQ, redis_url: str, redis_ns: str, capsys: pytest.CaptureFixture[str]
) -> None:
    mq = busy_namespace(make_mq, namespace=redis_ns, url=redis_url)
    assert cli.main(["stats", redis_ns, "--url", redis_url, "--format", "openmetrics"]) == 0
    assert parse(capsys.readouterr().out, True)[1] == expected(redis_ns, mq)


# ----------------------------------------------------------------- the HTTP server


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies (even by SIGKILL)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class Server:
    """``mqueue serve-metrics`` in a subprocess on a free port."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mqueue", "serve-metrics", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_die_with_parent,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "serving http://127.0.0.1:PORT/metrics"
        if not line.startswith("serving http://"):
            self.stop()
            raise AssertionError(f"serve-metrics did not start: {line}{self.proc.stderr.read()}")
        self.url = line.split()[1]
        self.base = self.url.rsplit("/", 1)[0]
        self.port = int(self.base.rsplit(":", 1)[1])

    def get(self, path: str = "/metrics", accept: str | None = None, method: str = "GET") -> Any:
        req = urllib.request.Request(self.base + path, method=method)
        if accept:
            req.add_header("Accept", accept)
        return urllib.request.urlopen(req, timeout=30)

    def scrape(self, openmetrics: bool = False) -> Values:
        accept = "application/openmetrics-text; version=1.0.0" if openmetrics else None
        with self.get(accept=accept) as r:
            body = r.read().decode("utf-8")
            ctype = r.headers["Content-Type"]
        if openmetrics:
            assert ctype.startswith("application/openmetrics-text; version=1.0.0")
        else:
            assert ctype.startswith("text/plain; version=0.0.4")
        return parse(body, openmetrics)[1]

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str, str]:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate(timeout=30)
        return self.proc.returncode, out, err


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(*args: str) -> Server:
        s = Server(*args)
        started.append(s)
        return s

    try:
        yield start
    finally:
        for s in started:
            s.stop(signal.SIGKILL)


def namespaces_in(values: Values) -> set[str]:
    return {ns for (name, ns, _q), v in values.items() if name == "mqueue_namespace_up" and v}


def test_serve_given_namespaces_both_formats(
    make_mq: MakeMQ, ns: str, serve: Callable[..., Server]
) -> None:
    mq = busy_namespace(make_mq)
    other = new_namespace()
    srv = serve(ns, other)  # `other` does not exist yet
    try:
        for om in (False, True):
            values = srv.scrape(om)
            assert {k: v for k, v in values.items() if k[1] == ns} == expected(ns, mq)
            assert values[("mqueue_namespace_up", other, "")] == 0
        mq["calls"].add("new", "item")
        assert srv.scrape()[("mqueue_items_added_total", ns, "calls")] == 6
        make_mq("name=late", namespace=other)
        assert srv.scrape(True)[("mqueue_queue_length", other, "late")] == 0
        with srv.get(method="HEAD") as r:
            assert r.status == 200 and r.read() == b""
        with srv.get("/") as r:
            assert b'href="/metrics"' in r.read()
        with pytest.raises(urllib.error.HTTPError) as ei:
            srv.get("/nothing")
        assert ei.value.code == 404
    finally:
        destroy_quietly(other)
    rc, out, err = srv.stop(signal.SIGTERM)
    assert rc == 0, err
    assert json.loads(out) == {"stopped": True, "scrapes": 5}


def test_serve_all_namespaces_as_they_come_and_go(
    make_mq: MakeMQ, serve: Callable[..., Server]
) -> None:
    srv = serve()
    a, b = new_namespace(), new_namespace()
    make_mq("name=qa", namespace=a)
    assert a in namespaces_in(srv.scrape())
    mq_b = make_mq(["name=qb;size=2"], namespace=b)
    mq_b["qb"].add("k", "v")
    values = srv.scrape(True)
    assert {a, b} <= namespaces_in(values)
    assert values[("mqueue_queue_length", b, "qb")] == 1
    mqueue.destroy(a)
    values = srv.scrape()
    assert a not in {k[1] for k in values} and b in namespaces_in(values)
    # a damaged segment appears as down; the endpoint goes on
    damaged = new_namespace()
    path = os.path.join(SHM_DIR, "mqueue." + damaged)
    with open(path, "wb") as f:
        f.write(b"\x00garbage" * 64)
    try:
        values = srv.scrape(True)
        assert values[("mqueue_namespace_up", damaged, "")] == 0
        assert b in namespaces_in(values)
    finally:
        os.unlink(path)
    mqueue.destroy(b)
    values = srv.scrape()
    assert not {a, b, damaged} & {k[1] for k in values}
    rc, _, err = srv.stop(signal.SIGINT)
    assert rc == 0, err


def test_serve_under_churn_and_concurrent_scrapes(
    make_mq: MakeMQ, serve: Callable[..., Server]
) -> None:
    """Namespaces created and destroyed as fast as possible while four clients
    scrape: every scrape answers 200 with a valid exposition."""
    srv = serve()
    stop = threading.Event()
    failures: list[str] = []
    scrapes = [0]

    def scraper(om: bool) -> None:
        while not stop.is_set():
            try:
                srv.scrape(om)
                scrapes[0] += 1
            except Exception as e:  # noqa: BLE001
                failures.append(repr(e))
                return

    threads = [threading.Thread(target=scraper, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not failures:
            name = new_namespace()
            mq = mqueue.create(name, ["name=q1", "name=q2;size=1"])
            mq["q1"].add("k", "v")
            mq.close()
            mqueue.destroy(name)
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures
    assert scrapes[0] > 4
    assert srv.proc.poll() is None


def test_serve_redis(
    make_mq: MakeMQ, redis_url: str, redis_ns: str, serve: Callable[..., Server]
) -> None:
    srv = serve("--url", redis_url)
    mq = busy_namespace(make_mq, namespace=redis_ns, url=redis_url)
    values = srv.scrape(True)
    assert {k: v for k, v in values.items() if k[1] == redis_ns} == expected(redis_ns, mq)
    mq.close()
    mqueue.destroy(redis_ns, url=redis_url)
    assert redis_ns not in {k[1] for k in srv.scrape()}


def test_a_burst_of_scrapers_waits_in_the_listen_queue() -> None:
    """Clients connecting at once (several Prometheus servers, a dashboard, a loop of
    curls) are queued by the kernel until the server accepts them: with the accept
    loop not running yet, all 50 handshakes complete.  With the standard library's
    listen backlog of 5, all but 6 would have their SYN dropped and retried after
    1 s, 3 s, 7 s (50 scrapes at once: median 1.3 s, up to 7.8 s, against 0.04 s)."""
    import select
    import socket

    srv = _metrics._MetricsServer(("127.0.0.1", 0), None, None)
    socks: list[socket.socket] = []
    try:
        for _ in range(50):
            s = socket.socket()
            socks.append(s)
            s.setblocking(False)
            s.connect_ex(srv.server_address[:2])
        connected: set[socket.socket] = set()
        deadline = time.monotonic() + 5
        while len(connected) < len(socks) and time.monotonic() < deadline:
            _, writable, _ = select.select([], [s for s in socks if s not in connected], [], 0.1)
            for s in writable:
                assert s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
                connected.add(s)
        assert len(connected) == len(socks)
    finally:
        for s in socks:
            s.close()
        srv.server_close()


def test_serve_port_in_use_is_a_clear_error(serve: Callable[..., Server]) -> None:
    srv = serve()
    p = subprocess.run(
        [sys.executable, "-m", "mqueue", "serve-metrics", "--port", str(srv.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 1
    err = json.loads(p.stderr)["error"]
    assert err["code"] == 500 and "in use" in err["message"].lower()
    assert srv.scrape() is not None  # the first one is unharmed


@pytest.mark.parametrize(
    ("bind", "reason"),
    [("999.1.1.1", "not known"), ("192.0.2.1", "assign requested address")],
)
def test_serve_address_it_cannot_listen_on(
    bind: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown host or an address not on this machine: the error names it."""
    assert cli.main(["serve-metrics", "--bind", bind, "--port", "0"]) == 1
    err = json.loads(capsys.readouterr().err)["error"]
    assert err["code"] == 500
    assert err["message"].startswith(f"serve-metrics: cannot listen on {bind} port 0: ")
    assert reason in err["message"]


@pytest.mark.parametrize("port", ["-1", "65536", "http"])
def test_serve_bad_port(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve-metrics", "--port", port]) == 2
    assert json.loads(capsys.readouterr().err)["error"]["code"] == 400


def test_serve_in_process_stops_on_event(make_mq: MakeMQ, ns: str) -> None:
    """``serve`` from a thread (no signal handlers then) stops when asked."""
    busy_namespace(make_mq)
    stop = threading.Event()
    announce: list[str] = []

    class Out:
        def write(self, s: str) -> None:
            announce.append(s)

        def flush(self) -> None:
            pass

    result: list[int] = []
    t = threading.Thread(
        target=lambda: result.append(_metrics.serve([ns], port=0, announce=Out(), stop=stop))  # type: ignore[arg-type]
    )
    t.start()
    deadline = time.monotonic() + 30
    while not announce and time.monotonic() < deadline:
        time.sleep(0.01)
    url = "".join(announce).split()[1]
    with urllib.request.urlopen(url, timeout=30) as r:
        assert parse(r.read().decode(), False)[1][("mqueue_namespace_up", ns, "")] == 1
    stop.set()
    t.join(30)
    assert result == [1]


def test_a_stuck_namespace_does_not_hold_up_the_others(
    make_mq: MakeMQ, ns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read that waits on a queue lock (its holder stopped) is reported after the
    deadline, and gets no second reader until it returns.  The wait is simulated:
    a real lock holder would have to be stopped inside its critical section."""
    busy_namespace(make_mq)
    stuck = new_namespace()
    make_mq("name=s", namespace=stuck)
    release = threading.Event()
    reads: list[str] = []
    real_read = _metrics._read

    def read(name: str, url: str | None) -> Any:
        reads.append(name)
        if name == stuck:
            release.wait(60)
        return real_read(name, url)

    monkeypatch.setattr(_metrics, "_read", read)
    try:
        t0 = time.monotonic()
        samples = _metrics.collect([ns, stuck], timeout=0.5)
        assert time.monotonic() - t0 < 30
        assert [(s.namespace, s.up) for s in samples] == [(ns, True), (stuck, False)]
        assert "no answer within 0.5 s" in str(samples[1].error)
        samples = _metrics.collect([ns, stuck], timeout=0.5)
        assert "still waiting" in str(samples[1].error)
        assert reads.count(stuck) == 1  # no second reader piled up
        _, values = parse(_metrics.exposition(samples, openmetrics=True), True)
        assert values[("mqueue_namespace_up", stuck, "")] == 0
        assert values[("mqueue_queue_length", ns, "calls")] == 2
    finally:
        release.set()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the stuck read returns, then it is read again
        samples = _metrics.collect([ns, stuck], timeout=5)
        if samples[1].up:
            break
        time.sleep(0.05)
    assert samples[1].up and reads.count(stuck) >= 2


def test_many_namespaces_one_stuck(monkeypatch: pytest.MonkeyPatch) -> None:
    """More namespaces than reader threads, one of them stuck first in line: every
    other one is still read within the deadline."""
    release = threading.Event()
    names = ["stuck"] + [f"n{i}" for i in range(3 * _metrics.READERS)]

    def read(name: str, url: str | None) -> Any:
        if name == "stuck":
            release.wait(60)
        return _metrics.NamespaceSample(name, time=time.monotonic())

    monkeypatch.setattr(_metrics, "_read", read)
    try:
        samples = _metrics.collect(names, timeout=1.0)
        assert [s.namespace for s in samples] == names
        assert [s.up for s in samples] == [False] + [True] * (len(names) - 1)
    finally:
        release.set()


def test_serve_with_the_redis_server_down(serve: Callable[..., Server]) -> None:
    """Nothing listens at this URL: listing fails (500 for that scrape), named
    namespaces are down, and the endpoint keeps answering."""
    pytest.importorskip("redis")
    down = "redis://127.0.0.1:1/0"
    srv = serve("--url", down)
    for _ in range(2):
        with pytest.raises(urllib.error.HTTPError) as ei:
            srv.get()
        assert ei.value.code == 500
        assert b"scrape failed" in ei.value.read()
    srv2 = serve("--url", down, "ns1")
    assert srv2.scrape(True) == {("mqueue_namespace_up", "ns1", ""): 0}
    assert srv.proc.poll() is None and srv2.proc.poll() is None


def test_serve_ipv6_loopback(make_mq: MakeMQ, ns: str, serve: Callable[..., Server]) -> None:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback here: {e}")
    busy_namespace(make_mq)
    srv = serve("--bind", "::1", ns)
    assert srv.base.startswith("http://[::1]:")
    assert srv.scrape(True)[("mqueue_namespace_up", ns, "")] == 1
