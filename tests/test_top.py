"""``mqueue top`` (docs/metrics.md): rates, the plain frame, and the live curses
view driven in a real terminal (tmux: send-keys, capture-pane).

Without tmux the terminal tests skip, unless ``MQUEUE_REQUIRE_SERVICES=1`` (CI),
where they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from conftest import MakeMQ

from mqueue import QueueDef, _top, cli
from mqueue._core import QueueStats
from mqueue._metrics import NamespaceSample


def stats(name: str, **kw: int) -> QueueStats:
    base = dict(
        length=0, added=0, fetched=0, evicted=0, duplicates=0, high_water=0,
        recoveries=0, bytes_used=0, capacity=1024, size_limit=0, addmode=0,
    )  # fmt: skip
    base.update(kw)
    return QueueStats(name=name, **base)


def test_rates_from_counter_deltas() -> None:
    prev: dict[tuple[str, str], tuple[float, QueueStats]] = {}
    s0 = [NamespaceSample("n", [stats("q", added=10, fetched=4, evicted=1)], time=100.0)]
    (r0,) = _top.compute_rows(s0, prev)
    assert (r0.add_rate, r0.fetch_rate, r0.evict_rate) == (None, None, None)  # one read only
    s1 = [
        NamespaceSample(
            "n",
            [stats("q", added=30, fetched=9, evicted=5, length=12, size_limit=48), stats("new")],
            time=102.0,
        )
    ]
    r1, r_new = _top.compute_rows(s1, prev)
    assert (r1.add_rate, r1.fetch_rate, r1.evict_rate) == (10.0, 2.5, 2.0)
    assert r1.fill == 0.25
    assert r_new.add_rate is None  # a queue seen for the first time
    # the namespace was re-created: counters restarted, no negative rate
    s2 = [NamespaceSample("n", [stats("q", added=4)], time=104.0)]
    (r2,) = _top.compute_rows(s2, prev)
    assert (r2.add_rate, r2.fetch_rate, r2.evict_rate) == (2.0, 0.0, 0.0)
    assert ("n", "new") not in prev  # gone queues are forgotten


def test_fill_uses_bytes_without_a_count_bound() -> None:
    r = _top.Row("n", "q", length=5, used=256, capacity=1024)
    assert r.fill == 0.25
    assert replace(r, limit=10).fill == 0.5
    assert replace(r, limit=2).fill == 1.0  # never above full
    assert _top.Row("n", "q").fill == 0.0


def test_render_lines_and_weird_names() -> None:
    rows = [
        _top.Row("ns1", "calls", length=25, limit=100, used=1200, capacity=1 << 20,
                 high_water=30, add_rate=12.5, fetch_rate=0.0, evict_rate=None),
        _top.Row("ns1", 'we"ird\\q\nx'),
        _top.Row("broken", "", error="CorruptSegmentError: bad magic"),
    ]  # fmt: skip
    lines = _top.render(rows)
    assert lines[0].split() == [
        "NAMESPACE", "QUEUE", "LEN", "LIMIT", "FILL", "ADD/s", "FETCH/s", "EVICT/s", "HIGH",
        "BYTES",
    ]  # fmt: skip
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    assert "[#####...............]  25%" in lines[1] and "12.5" in lines[1]
    assert 'we"ird\\\\q\\nx' in lines[2]
    assert "cannot read: CorruptSegmentError: bad magic" in lines[3]


def test_once_plain_frame(make_mq: MakeMQ, ns: str, capsys: pytest.CaptureFixture[str]) -> None:
    mq = make_mq(["name=calls;size=4", QueueDef(name="other")])
    for i in range(3):
        mq["calls"].add(f"k{i}", "v")
    assert cli.main(["top", ns, "--once", "--interval", "0.05"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("mqueue top - 1 namespace(s), 2 queue(s)")
    calls = next(line for line in out if " calls " in line).split()
    assert calls[:4] == [ns, "calls", "3", "4"] and "75%" in calls
    assert any(line.split()[:2] == [ns, "other"] for line in out)


def test_once_all_namespaces_and_errors(
    make_mq: MakeMQ, ns: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_mq("name=q1")
    assert cli.main(["top", "--once", "--interval", "0.05"]) == 0
    assert any(line.split()[:2] == [ns, "q1"] for line in capsys.readouterr().out.splitlines())
    assert cli.main(["top", ns, "--interval", "0"]) == 2
    assert json.loads(capsys.readouterr().err)["error"]["code"] == 400


@pytest.mark.parametrize("interval", ["0", "-1", "nan", "inf"])
def test_interval_must_be_finite_and_positive(
    ns: str, interval: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A usage error (exit 2, 400), not a 500 from time.sleep (nan, inf)."""
    assert cli.main(["top", ns, "--once", "--interval", interval]) == 2
    err = json.loads(capsys.readouterr().err)["error"]
    assert err == {"code": 400, "message": "top: --interval must be a positive number of seconds"}


def test_top_without_a_terminal_is_a_clear_error(ns: str) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "mqueue", "top", ns],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    err = json.loads(p.stderr)["error"]
    assert err["code"] == 400 and "--once" in err["message"] and "terminal" in err["message"]


# ------------------------------------------------------------------ in a terminal

TMUX = shutil.which("tmux")


class Tmux:
    """A private tmux server (its own socket) running one command in a pane."""

    def __init__(
        self,
        command: list[str],
        width: int = 160,
        height: int = 40,
        term_name: str = "xterm-256color",
    ) -> None:
        self.dir = tempfile.mkdtemp(prefix="mqtop")
        self.sock = os.path.join(self.dir, "tmux.sock")
        self.status_file = os.path.join(self.dir, "status")
        self.session = "t" + uuid.uuid4().hex[:8]
        cmd = " ".join(_quote(c) for c in command)
        # the shell writes the program's exit status (128 + N: killed by signal N);
        # it survives the Ctrl-C sent to the program (a handler, not SIG_IGN, which
        # the program would inherit)
        shell = (
            f"trap : INT; TERM={_quote(term_name)} {cmd} 2>{self.dir}/stderr; "
            f"echo $? >{self.status_file}"
        )
        self.tmux("new-session", "-d", "-s", self.session, "-x", str(width), "-y", str(height),
                  "sh -c " + _quote(shell))  # fmt: skip
        self.tmux("set-option", "-t", self.session, "remain-on-exit", "on")
        self.resize(width, height)

    def resize(self, width: int, height: int) -> None:
        self.tmux("resize-window", "-t", self.session, "-x", str(width), "-y", str(height))

    def program_pid(self) -> int:
        """The pid of the program (the child of the pane's shell)."""
        shell = int(self.pane("#{pane_pid}"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            children = []
            for task in os.listdir(f"/proc/{shell}/task"):
                with open(f"/proc/{shell}/task/{task}/children") as f:
                    children += [int(p) for p in f.read().split()]
            if children:
                return children[0]
            time.sleep(0.05)
        raise AssertionError("no program under the pane's shell")

    def stderr(self) -> str:
        try:
            with open(os.path.join(self.dir, "stderr")) as f:
                return f.read()
        except OSError:
            return ""

    def tmux(self, *args: str) -> str:
        p = subprocess.run(
            [str(TMUX), "-S", self.sock, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if p.returncode != 0:
            raise AssertionError(f"tmux {args}: {p.stderr}")
        return p.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", self.session)

    def pane(self, fmt: str) -> str:
        return self.tmux("display-message", "-p", "-t", self.session, fmt).strip()

    def wait_for(self, what: Callable[[str], bool], timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if what(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"screen never matched; last screen:\n{screen}")

    def wait_dead(self, timeout: float = 30.0) -> int:
        """The program's exit status once it has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(self.status_file) as f:
                    text = f.read().strip()
            except FileNotFoundError:
                text = ""
            if text:
                return int(text)
            time.sleep(0.1)
        raise AssertionError(f"the program did not exit; screen:\n{self.screen()}")

    def kill(self) -> None:
        subprocess.run(
            [str(TMUX), "-S", self.sock, "kill-server"], capture_output=True, timeout=30
        )
        shutil.rmtree(self.dir, ignore_errors=True)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


@pytest.fixture
def term() -> Iterator[Callable[..., Tmux]]:
    if TMUX is None:
        if os.environ.get("MQUEUE_REQUIRE_SERVICES"):
            pytest.fail("tmux is required (MQUEUE_REQUIRE_SERVICES): apt-get install tmux")
        pytest.skip("tmux is not installed (apt-get install tmux)")
    made: list[Tmux] = []

    def start(*args: str, **kw: Any) -> Tmux:
        t = Tmux([sys.executable, "-m", "mqueue", "top", *args], **kw)
        made.append(t)
        return t

    try:
        yield start
    finally:
        for t in made:
            t.kill()


def _row(screen: str, ns: str, queue: str) -> list[str]:
    for line in screen.splitlines():
        parts = line.split()
        if parts[:2] == [ns, queue]:
            return parts
    return []


def _rate(screen: str, ns: str, queue: str, col: int) -> float:
    """Column ``col`` of a queue's row (6: ADD/s, 7: FETCH/s, 8: EVICT/s), -1 if absent."""
    row = _row(screen, ns, queue)
    try:
        return float(row[col].rstrip("kM"))
    except (IndexError, ValueError):
        return -1.0


def test_live_view_updates_and_quits_on_q(
    make_mq: MakeMQ, ns: str, term: Callable[..., Tmux]
) -> None:
    mq = make_mq(["name=calls;size=10", "name=jobs"])
    t = term(ns, "--interval", "0.2")
    screen = t.wait_for(lambda s: bool(_row(s, ns, "calls")))
    assert "NAMESPACE" in screen and "ADD/s" in screen and "q: quit" in screen
    assert _row(screen, ns, "calls")[2:4] == ["0", "10"]
    for i in range(7):
        mq["calls"].add(f"k{i}", "v")
    screen = t.wait_for(lambda s: _row(s, ns, "calls")[2:3] == ["7"])
    assert "[##############......]  70%" in screen
    # steady adds and fetches show as rates (columns ADD/s, FETCH/s), then fall back to 0
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            mq["jobs"].add("k", "v")
            mq["jobs"].fetch()
            time.sleep(0.01)

    th = threading.Thread(target=traffic)
    th.start()
    try:
        t.wait_for(lambda s: _rate(s, ns, "jobs", 6) > 0 and _rate(s, ns, "jobs", 7) > 0)
    finally:
        stop.set()
        th.join()
    t.wait_for(lambda s: _rate(s, ns, "jobs", 6) == 0 == _rate(s, ns, "jobs", 7))
    t.tmux("send-keys", "-t", t.session, "q")
    assert t.wait_dead() == 0
    # the terminal was restored: the alternate screen is gone with the view
    assert "NAMESPACE" not in t.screen()


def test_live_view_ctrl_c_sigterm_and_resize(
    make_mq: MakeMQ, ns: str, term: Callable[..., Tmux]
) -> None:
    make_mq("name=q")
    t = term(ns, "--interval", "0.2", width=40, height=5)  # smaller than the table
    t.wait_for(lambda s: "mqueue top" in s)
    t.resize(150, 30)
    t.wait_for(lambda s: bool(_row(s, ns, "q")))
    t.tmux("send-keys", "-t", t.session, "C-c")
    assert t.wait_dead() == 0
    assert t.stderr() == ""

    t2 = term(ns, "--interval", "0.2")
    t2.wait_for(lambda s: bool(_row(s, ns, "q")))
    os.kill(t2.program_pid(), signal.SIGTERM)
    assert t2.wait_dead() == 0
    assert "NAMESPACE" not in t2.screen()


def test_live_view_namespace_destroyed_meanwhile(
    make_mq: MakeMQ, ns: str, term: Callable[..., Tmux]
) -> None:
    import mqueue

    mq = make_mq("name=q")
    t = term("--interval", "0.2")  # every namespace
    t.wait_for(lambda s: bool(_row(s, ns, "q")))
    mq.close()
    mqueue.destroy(ns)
    t.wait_for(lambda s: "mqueue top" in s and not _row(s, ns, "q"))
    assert t.pane("#{pane_dead}") == "0"
    t.tmux("send-keys", "-t", t.session, "q")
    assert t.wait_dead() == 0


@pytest.mark.parametrize("term_name", ["dumb", "", "no-such-terminal"])
def test_live_view_refuses_a_terminal_it_cannot_drive(
    ns: str, term: Callable[..., Tmux], term_name: str
) -> None:
    """A terminal that cannot move the cursor (TERM=dumb: an Emacs shell buffer, a
    serial console) or that curses does not know: a clear 400 error suggesting
    --once, not a view drawn as one garbled line that never refreshes."""
    t = term(ns, term_name=term_name)
    assert t.wait_dead(timeout=15) == 2
    err = json.loads(t.stderr())["error"]
    assert err["code"] == 400
    assert "--once" in err["message"] and f"TERM={term_name!r}" in err["message"]
