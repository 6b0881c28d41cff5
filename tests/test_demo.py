"""``mqueue demo``: a short run balances its books and leaves nothing behind."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mqueue
from mqueue import _demo
from mqueue.cli import main


def _shm_entries(namespace: str) -> list[str]:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        return []
    return [p.name for p in shm.iterdir() if namespace in p.name]


def _gone(namespace: str) -> bool:
    try:
        mqueue.attach(namespace).close()
    except FileNotFoundError:
        return True
    return False


def test_call_event_looks_like_sip() -> None:
    import random

    key, value = _demo.call_event(0x2A, random.Random(1))
    assert key.startswith("000000002a")
    assert key.split("@")[1] in _demo.DOMAINS
    assert value.startswith("INVITE sip:") and "SIP/2.0" in value


def test_demo_short_run_balances(capsys: pytest.CaptureFixture[str]) -> None:
    namespace = f"demo{os.getpid()}"
    rc = main(["demo", "--seconds", "2", "--workers", "2", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    s = json.loads(out)
    assert s["namespace"] == namespace
    assert s["balanced"] is True
    assert s["added"] > 0 and s["fetched"] > 0
    assert s["added"] == s["fetched"] + s["evicted"] + s["left"]
    assert s["listener_added"] == s["added"]
    assert len(s["worker_fetched"]) == 2 and sum(s["worker_fetched"]) == s["fetched"]
    assert s["order_errors"] == 0
    assert "added/s" in err  # the live figures
    assert _gone(namespace)
    assert _shm_entries(namespace) == []
    assert mp.active_children() == []


def test_demo_unpaced_evicts_oldest(capsys: pytest.CaptureFixture[str]) -> None:
    s = _demo.run(workers=1, seconds=1.0, rate=0)
    capsys.readouterr()
    assert s["balanced"] is True
    assert s["evicted"] > 0  # the listener outruns one worker: oldest dropped
    assert s["high_water"] <= _demo.QUEUE_SIZE
    assert _gone(s["namespace"])
    assert mp.active_children() == []
    text = _demo.format_summary(s)
    assert "OK" in text and "evicted" in text


def _children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(d.name))
    return out


def _signal_state(pid: int) -> str:
    """The Sig* lines of /proc/PID/status (pending, blocked, ignored, caught masks)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as e:
        return f"no /proc/{pid}/status: {e}"
    wanted = [line.replace("\t", " ") for line in lines if line.startswith(("Sig", "ShdPnd"))]
    return ", ".join(wanted)


def test_demo_as_program() -> None:
    p = subprocess.run(
        [sys.executable, "-m", "mqueue", "demo", "--seconds", "1", "--workers", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "added == fetched + evicted + left" in p.stdout and "OK" in p.stdout
    assert "fetched/s" in p.stderr


def test_demo_ctrl_c_cleans_up() -> None:
    p = subprocess.Popen(
        [sys.executable, "-m", "mqueue", "demo", "--seconds", "30", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    namespace = f"demo{p.pid}"
    try:
        deadline = time.monotonic() + 60
        assert p.stderr is not None
        while time.monotonic() < deadline:  # wait until it runs (the figures' header)
            line = p.stderr.readline()
            if "added/s" in line or not line:
                break
        children = _children_of(p.pid)
        assert children
        sig_state = _signal_state(p.pid)  # for the message, should the SIGINT be lost
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode != 0, f"the SIGINT was lost ({sig_state}); the demo's stderr:\n{err}"
    assert "interrupted" in err
    assert _gone(namespace)
    assert _shm_entries(namespace) == []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{c}").exists() for c in children):
        time.sleep(0.1)
    assert [c for c in children if Path(f"/proc/{c}").exists()] == []
