"""The ``mqueue`` command line: JSON results, JSON errors, exit statuses."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import new_namespace

import mqueue
from mqueue.cli import main


@pytest.fixture
def mq(ns: str) -> Iterator[Any]:
    handle = mqueue.create(ns, ["name=q1;size=10", "name=q2", "name='sp ace'"])
    try:
        yield handle
    finally:
        handle.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, Any]:
    """Run main(argv); return (status, stdout JSON or text, stderr JSON or None)."""
    rc = main(list(argv))
    out, err = capsys.readouterr()
    try:
        out_v: Any = json.loads(out) if out.strip() else None
    except json.JSONDecodeError:
        out_v = out
    err_v = json.loads(err) if err.strip() else None
    return rc, out_v, err_v


def assert_error(result: tuple[int, Any, Any], code: int) -> str:
    rc, out, err = result
    assert rc != 0
    assert out is None
    assert set(err) == {"error"}
    assert err["error"]["code"] == code
    assert isinstance(err["error"]["message"], str) and err["error"]["message"]
    return str(err["error"]["message"])


def test_ls(capsys: pytest.CaptureFixture[str], mq: Any, ns: str) -> None:
    rc, out, err = run(capsys, "ls")
    assert rc == 0 and err is None
    assert isinstance(out, list) and ns in out


def test_get_size_and_sizes(capsys: pytest.CaptureFixture[str], mq: Any, ns: str) -> None:
    mq["q1"].add("k", "v")
    mq["q1"].add("k2", "v")
    mq["sp ace"].add("k", "v")
    assert run(capsys, "get_size", ns, "q1") == (0, {"name": "q1", "size": 2}, None)
    assert run(capsys, "get_size", ns, "q2") == (0, {"name": "q2", "size": 0}, None)
    assert run(capsys, "get_sizes", ns) == (
        0,
        [
            {"name": "q1", "size": 2},
            {"name": "q2", "size": 0},
            {"name": "sp ace", "size": 1},
        ],
        None,
    )


def test_not_found_is_404(capsys: pytest.CaptureFixture[str], mq: Any, ns: str) -> None:
    assert "nosuch" in assert_error(run(capsys, "get_size", ns, "nosuch"), 404)
    assert_error(run(capsys, "fetch", ns, "nosuch"), 404)
    missing = new_namespace()
    for argv in (
        ("get_size", missing, "q1"),
        ("get_sizes", missing),
        ("fetch", missing, "q1"),
        ("stats", missing),
        ("destroy", missing),
    ):
        assert missing in assert_error(run(capsys, *argv), 404)


def test_fetch(capsys: pytest.CaptureFixture[str], mq: Any, ns: str) -> None:
    q = mq["q1"]
    q.add("a84b4c76e66710@pc33.example.com", "INVITE sip:bob@biloxi.example.com")
    q.add("", "")
    q.add("ключ", "значение")
    assert run(capsys, "fetch", ns, "q1") == (
        0,
        {"key": "a84b4c76e66710@pc33.example.com", "val": "INVITE sip:bob@biloxi.example.com"},
        None,
    )
    assert run(capsys, "fetch", ns, "q1") == (0, {"key": "", "val": ""}, None)  # not lost
    assert run(capsys, "fetch", ns, "q1") == (0, {"key": "ключ", "val": "значение"}, None)
    assert assert_error(run(capsys, "fetch", ns, "q1"), 404) == "Empty queue"
    assert len(q) == 0


def test_fetch_bytes(capsys: pytest.CaptureFixture[str], mq: Any, ns: str) -> None:
    q = mq["q2"]
    q.add(b"utf8", b"caf\xc3\xa9")
    q.add(b"\xff\x00", b"")
    q.add("k", b"\x80\x81")
    assert run(capsys, "fetch", ns, "q2")[1] == {"key": "utf8", "val": "café"}
    assert run(capsys, "fetch", ns, "q2")[1] == {"key_b64": "/wA=", "val": ""}
    assert run(capsys, "fetch", ns, "q2")[1] == {"key": "k", "val_b64": "gIE="}


def test_fetch_leaves_other_process_held_item(
    capsys: pytest.CaptureFixture[str], mq: Any, ns: str
) -> None:
    q = mq["q1"]
    q.add("k1", "v1")
    q.add("k2", "v2")
    assert q.fetch() == ("k1", "v1")
    assert run(capsys, "fetch", ns, "q1")[1] == {"key": "k2", "val": "v2"}
    assert (q.key, q.value) == ("k1", "v1")


def test_stats(capsys: pytest.CaptureFixture[str], mq: Any, ns: str) -> None:
    q = mq["q1"]
    for i in range(12):
        q.add(f"k{i}", "v")
    q.fetch()
    rc, out, err = run(capsys, "stats", ns, "--json")
    assert rc == 0 and err is None
    assert [row["name"] for row in out] == ["q1", "q2", "sp ace"]
    row = out[0]
    for field in (
        "size", "added", "fetched", "evicted", "duplicates",
        "high_water", "recoveries", "bytes_used", "capacity",
    ):  # fmt: skip
        assert isinstance(row[field], int), field
    assert (row["size"], row["added"], row["fetched"], row["evicted"]) == (9, 12, 1, 2)
    assert row["added"] == row["fetched"] + row["evicted"] + row["size"]
    assert row["limit"] == 10
    rc, text, err = run(capsys, "stats", ns)
    assert rc == 0 and err is None
    assert isinstance(text, str)
    lines = text.splitlines()
    assert ns in lines[0]
    assert "name" in lines[1] and "evicted" in lines[1]
    assert lines[2].split()[:2] == ["q1", "9"]
    assert any(line.startswith("sp ace") for line in lines)


def test_destroy(capsys: pytest.CaptureFixture[str], ns: str) -> None:
    mqueue.create(ns, ["name=q"]).close()
    assert run(capsys, "destroy", ns) == (0, {"namespace": ns, "destroyed": True}, None)
    with pytest.raises(FileNotFoundError):
        mqueue.attach(ns)
    assert_error(run(capsys, "destroy", ns), 404)


@pytest.mark.parametrize(
    "argv",
    [
        ("nosuch",),  # a bare "mqueue" prints its usage summary: test_cli_top.py
        ("get_size",),
        ("get_size", "ns"),
        ("get_size", "ns", "q", "extra"),
        ("save", "ns"),
        ("demo", "--workers", "x"),
        ("demo", "--workers", "0"),
        ("demo", "--seconds", "-1"),
    ],
)
def test_bad_arguments_are_400(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    result = run(capsys, *argv)
    assert_error(result, 400)
    assert result[0] == 2


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "ls", "get_size", "get_sizes", "fetch", "stats", "destroy"):
        assert cmd in out
    assert "key_b64" in out
    assert main(["fetch", "--help"]) == 0
    assert "key_b64" in capsys.readouterr().out


def test_url_option_is_passed(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = new_namespace()  # never created: attach and destroy are replaced below
    seen: list[Any] = []

    def fake_destroy(namespace: str, *, url: str | None = None) -> None:
        seen.append((namespace, url))

    monkeypatch.setattr(mqueue, "destroy", fake_destroy)
    assert run(capsys, "destroy", ns, "--url", "redis://localhost:6379/0")[0] == 0
    assert seen == [(ns, "redis://localhost:6379/0")]

    def fake_attach(namespace: str, *, url: str | None = None) -> Any:
        seen.append((namespace, url))
        raise mqueue.MQueueError("backend not available")

    monkeypatch.setattr(mqueue, "attach", fake_attach)
    assert "backend" in assert_error(run(capsys, "get_sizes", ns, "--url", "redis://h/1"), 500)
    assert seen[-1] == (ns, "redis://h/1")


def test_save_load_without_persistence_module(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, mq: Any, ns: str
) -> None:
    monkeypatch.setitem(sys.modules, "mqueue._persist", None)  # import fails
    for cmd in ("save", "load"):
        msg = assert_error(run(capsys, cmd, ns, "--db-url", "sqlite:///x.db"), 500)
        assert "persist" in msg


def test_save_load_calls_persistence(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, mq: Any, ns: str
) -> None:
    import types

    calls: list[tuple[str, Any, str]] = []
    fake = types.ModuleType("mqueue._persist")
    fake.save_queues = lambda m, url: calls.append(("save", m.namespace, url)) or {"q1": 3}  # type: ignore[attr-defined]
    fake.load_queues = lambda m, url: calls.append(("load", m.namespace, url)) or {}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mqueue._persist", fake)
    rc, out, err = run(capsys, "save", ns, "--db-url", "sqlite:///a.db")
    assert (rc, err) == (0, None)
    assert out == {"namespace": ns, "db_url": "sqlite:///a.db", "saved": {"q1": 3}}
    rc, out, err = run(capsys, "load", ns, "--db-url", "sqlite:///a.db")
    assert (rc, err, out) == (0, None, {"namespace": ns, "db_url": "sqlite:///a.db", "loaded": {}})
    assert calls == [("save", ns, "sqlite:///a.db"), ("load", ns, "sqlite:///a.db")]


def test_save_load_round_trip(capsys: pytest.CaptureFixture[str], ns: str, tmp_path: Path) -> None:
    pytest.importorskip("mqueue._persist")
    url = f"sqlite:///{tmp_path}/mq.db"
    with mqueue.create(ns, ["name=p;dbmode=1", "name=plain"], db_url=url) as mq:
        mq["p"].add("k1", "v1")
        mq["p"].add("", b"\xff")
        rc, out, err = run(capsys, "save", ns, "--db-url", url)
        assert (rc, err) == (0, None)
        assert out["saved"] == {"p": 2}
        assert run(capsys, "get_size", ns, "p")[1] == {"name": "p", "size": 0}
        rc, out, err = run(capsys, "load", ns, "--db-url", url)
        assert (rc, err) == (0, None)
        assert out["loaded"] == {"p": 2}
        assert run(capsys, "fetch", ns, "p")[1] == {"key": "k1", "val": "v1"}
        assert run(capsys, "fetch", ns, "p")[1] == {"key": "", "val_b64": "/w=="}


def test_unavailable_backend_url_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ns = new_namespace()  # never created: the redis package is missing below
    monkeypatch.setitem(sys.modules, "redis", None)  # `import redis` fails
    for argv in (("get_sizes", ns), ("destroy", ns), ("ls",)):
        msg = assert_error(run(capsys, *argv, "--url", "redis://h/0"), 500)
        assert "Redis backend needs the redis package" in msg


def _python_m(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mqueue", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_python_m_mqueue(mq: Any, ns: str) -> None:
    mq["q1"].add("k1", "v1")
    p = _python_m("get_sizes", ns)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0] == {"name": "q1", "size": 1}
    p = _python_m("fetch", ns, "q1")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"key": "k1", "val": "v1"}
    p = _python_m("fetch", ns, "q1")
    assert p.returncode == 1 and p.stdout == ""
    assert json.loads(p.stderr) == {"error": {"code": 404, "message": "Empty queue"}}


def test_python_m_mqueue_usage_error() -> None:
    p = _python_m("get_size")
    assert p.returncode == 2 and p.stdout == ""
    assert json.loads(p.stderr)["error"]["code"] == 400
