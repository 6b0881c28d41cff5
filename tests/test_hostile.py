"""Hostile segments (issue 3, item 5): attaching to and operating on damaged,
truncated, zero-filled, random, foreign or other-version segments raises only
documented ``mqueue.MQueueError`` subclasses: never a crash, never a hang.

Every risky attach + operation runs in a process forked from a sandbox
(a single-threaded Python child started once per module), so a segfault or a
hang is seen as the exit status or a timeout of that process, not as a dead
test runner.  Parser fuzzing is in tests/test_defs.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import subprocess
import textwrap
import uuid
from collections.abc import Iterator

import pytest
from ctools import PYTHON, py_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mqueue

SHM = "/dev/shm/mqueue."

SANDBOX = textwrap.dedent(
    """
    import json, os, select, signal, sys, time
    import mqueue, mqueue._shm

    def work(ns, w):
        def say(x):
            os.write(w, (json.dumps(x) + "\\n").encode())
        try:
            mq = mqueue.attach(ns)
        except mqueue.MQueueError as e:
            say(["refused", type(e).__name__]); return
        except BaseException as e:
            say(["bad", "attach", type(e).__name__, str(e)]); return
        for name in list(mq):
            q = mq[name]
            ops = [
                ("stats", lambda: q.stats()),
                ("len", lambda: len(q)),
                ("add", lambda: q.add("k1", "v" * 40)),
                ("add_many", lambda: q.add_many([("k1", "a"), ("k2", b"b" * 100)])),
                ("fetch", lambda: q.fetch()),
                ("fetch_many", lambda: q.fetch_many(10)),
                ("fetch_wait", lambda: q.fetch(timeout=0.02)),
                ("stats", lambda: q.stats()),
            ]
            for op, f in ops:
                try:
                    f()
                except mqueue.MQueueError as e:
                    say(["error", op, type(e).__name__])
                except BaseException as e:
                    say(["bad", op, type(e).__name__, str(e)])
        mq.close()
        say(["done"])

    for line in sys.stdin:
        ns = line.strip()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            work(ns, w)
            os._exit(0)
        os.close(w)
        out, deadline, status = b"", time.monotonic() + 10, None
        while True:
            ready, _, _ = select.select([r], [], [], 0.05)
            if ready:
                chunk = os.read(r, 65536)
                out += chunk
            p, st = os.waitpid(pid, os.WNOHANG)
            if p:
                status = st
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = "hang"
                break
        while True:
            chunk = os.read(r, 65536)
            if not chunk:
                break
            out += chunk
        os.close(r)
        if status == "hang":
            result = "hang"
        elif os.WIFSIGNALED(status):
            result = "signal %d" % os.WTERMSIG(status)
        else:
            result = "exit %d" % os.WEXITSTATUS(status)
        lines = [json.loads(x) for x in out.decode().splitlines() if x]
        print(json.dumps({"result": result, "events": lines}), flush=True)
    """
)


class Sandbox:
    def __init__(self) -> None:
        self.p = subprocess.Popen(
            [PYTHON, "-c", SANDBOX],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=py_env(),
        )

    def run(self, ns: str) -> dict[str, object]:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(ns + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        assert line, "sandbox died"
        out: dict[str, object] = json.loads(line)
        return out

    def close(self) -> None:
        if self.p.stdin:
            self.p.stdin.close()
        self.p.wait(timeout=30)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    s = Sandbox()
    yield s
    s.close()


def assert_documented(res: dict[str, object]) -> None:
    """Exit 0, no hang, no signal, only MQueueError subclasses."""
    assert res["result"] == "exit 0", res
    events = res["events"]
    assert isinstance(events, list)
    bad = [e for e in events if e[0] == "bad"]
    assert not bad, res
    assert events and events[-1][0] in ("done", "refused"), res
    for e in events:
        if e[0] in ("error", "refused"):
            assert issubclass(getattr(mqueue, e[-1]), mqueue.MQueueError), e


DEFS = [
    "name=plain;size=5;bytes=512",
    "name=uniq;addmode=1;bytes=512",
    "name=repl;addmode=2;bytes=1k",
]


def make_ns() -> str:
    ns = f"hostile_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    mq = mqueue.create(ns, DEFS)
    for i in range(14):
        for q in mq.queues():
            q.add(f"k{i % 4}", f"value-{i}-" + "x" * (i * 3))
    mq["repl"].fetch()
    mq.close()
    return ns


@pytest.fixture
def ns() -> Iterator[str]:
    name = make_ns()
    yield name
    with contextlib.suppress(mqueue.NamespaceNotFoundError):
        mqueue.destroy(name)


def layout(path: str) -> dict[str, object]:
    """Offsets of the regions worth damaging, read from a healthy segment."""
    with open(path, "rb") as f:
        data = f.read()
    (qtable_off,) = struct.unpack_from("<Q", data, 56)
    qhdr_size, nq = struct.unpack_from("<II", data, 16)
    queues = []
    for i in range(nq):
        base = qtable_off + i * qhdr_size
        data_off, phys = struct.unpack_from("<QQ", data, base)
        index_off, nbuckets = struct.unpack_from("<QQ", data, base + 32)
        queues.append((base, data_off, phys, index_off, nbuckets))
    return {"size": len(data), "qtable_off": qtable_off, "qhdr_size": qhdr_size, "queues": queues}


SEM_LO, SEM_HI = 80, 112  # the sem_t inside q_hdr: see test_c_engine's damaged-sem xfail

regions = st.sampled_from(["header", "qtable", "lockstate", "records", "index", "anywhere"])
damage = st.lists(
    st.tuples(regions, st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
    min_size=1,
    max_size=10,
)


def offset_for(lay: dict[str, object], region: str, frac: float, pick: int) -> int:
    queues = lay["queues"]
    assert isinstance(queues, list)
    base, data_off, phys, index_off, nbuckets = queues[pick % len(queues)]
    qhs = int(lay["qhdr_size"])  # type: ignore[call-overload]
    if region == "header":
        off = int(frac * 104)
    elif region == "qtable":
        off = int(lay["qtable_off"]) + int(frac * qhs * len(queues))  # type: ignore[call-overload]
    elif region == "lockstate":
        off = base + 64 + int(frac * (qhs - 64))
    elif region == "records":
        off = data_off + int(frac * phys)
    elif region == "index" and nbuckets:
        off = index_off + int(frac * nbuckets * 8)
    else:
        off = int(frac * int(lay["size"]))  # type: ignore[call-overload]
    rel = (off - int(lay["qtable_off"])) % qhs  # type: ignore[call-overload]
    if off >= int(lay["qtable_off"]) and SEM_LO <= rel < SEM_HI:  # type: ignore[call-overload]
        off -= rel - SEM_LO + 1
    return off


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(damage=damage, pick=st.integers(0, 2))
def test_damaged_segment(sandbox: Sandbox, damage: list[tuple[str, float, int]], pick: int) -> None:
    name = make_ns()
    try:
        path = SHM + name
        lay = layout(path)
        with open(path, "r+b") as f:
            for region, frac, value in damage:
                f.seek(offset_for(lay, region, frac, pick))
                f.write(bytes([value]))
        assert_documented(sandbox.run(name))
    finally:
        mqueue.destroy(name)


def rewrite(path: str, data: bytes | None = None, size: int | None = None) -> None:
    with open(path, "r+b") as f:
        if data is not None:
            f.seek(0)
            f.write(data)
        if size is not None:
            f.truncate(size)


def test_truncated(sandbox: Sandbox, ns: str) -> None:
    size = os.path.getsize(SHM + ns)
    for cut in (size // 2, 4096, 100, 0):
        rewrite(SHM + ns, size=cut)
        res = sandbox.run(ns)
        assert_documented(res)
        assert res["events"][-1][0] == "refused", (cut, res)  # type: ignore[index]


def test_zero_filled(sandbox: Sandbox, ns: str) -> None:
    size = os.path.getsize(SHM + ns)
    rewrite(SHM + ns, data=bytes(size))
    res = sandbox.run(ns)  # "not ready" for 2 s, then a clear error
    assert_documented(res)
    assert res["events"][-1][0] == "refused"  # type: ignore[index]


@pytest.mark.parametrize("where", ["whole", "header"])
def test_random_bytes(sandbox: Sandbox, ns: str, where: str) -> None:
    size = os.path.getsize(SHM + ns)
    rewrite(SHM + ns, data=os.urandom(size if where == "whole" else 64))
    res = sandbox.run(ns)
    assert_documented(res)
    assert res["events"][-1][0] == "refused"  # type: ignore[index]


def test_other_layout_version(sandbox: Sandbox, ns: str) -> None:
    with open(SHM + ns, "r+b") as f:
        f.seek(8)
        (v,) = struct.unpack("<I", f.read(4))
        f.seek(8)
        f.write(struct.pack("<I", v + 1))
    res = sandbox.run(ns)
    assert_documented(res)
    assert res["events"] == [["refused", "CorruptSegmentError"]]
    with pytest.raises(mqueue.CorruptSegmentError, match="another layout version"):
        mqueue.attach(ns)


@pytest.mark.parametrize("content", [b"", b"hello, I am not a queue\n", b"\0" * 10 + b"x" * 70000])
def test_foreign_file(sandbox: Sandbox, content: bytes) -> None:
    name = f"x{os.getpid()}_{uuid.uuid4().hex[:8]}"
    path = SHM + name
    with open(path, "wb") as f:
        f.write(content)
    try:
        res = sandbox.run(name)
        assert_documented(res)
        assert res["events"][-1][0] == "refused"  # type: ignore[index]
    finally:
        os.unlink(path)


def test_foreign_file_named_mqueue_x(sandbox: Sandbox) -> None:
    """The literal name of the issue, only when no one else uses it."""
    path = SHM + "x"
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        pytest.skip("/dev/shm/mqueue.x exists")
    try:
        os.write(fd, b"#!/bin/sh\necho foreign\n")
        os.close(fd)
        res = sandbox.run("x")
        assert_documented(res)
        assert res["events"][-1][0] == "refused"  # type: ignore[index]
    finally:
        os.unlink(path)
