"""The asyncio notifier's C block (``mq_seq``, ``mq_wake_one``, ``mq_ws_*`` in
csrc/mq.c) tested in C by csrc/tests/notify.c, plain and under ASan + UBSan:
argument checks, one-shot watches firing exactly for their queue, removal,
``forget_ns``, a namespace detached while watched, 300 queues over three
waitsets, and the asyncio protocol (read seq, look, arm, wait) against a
producer thread with random abandoned waits: a lost wake-up fails it.  The
io_uring waits (``mq_ur_*`` in csrc/uring.c) the same way by csrc/tests/uring.c."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from ctools import compile_c, have_gcc

pytestmark = pytest.mark.skipif(not have_gcc(), reason="needs gcc")


@pytest.mark.parametrize("sanitize", [False, True], ids=["plain", "asan-ubsan"])
def test_notifier_c(tmp_path: Path, sanitize: bool) -> None:
    exe = compile_c("notify", tmp_path, sanitize=sanitize)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
    r = subprocess.run(
        [str(exe), "5000" if sanitize else "20000"],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
    )
    out = r.stdout + r.stderr
    m = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M)
    assert m and r.returncode == 0 and m.group(2) == "0", out
    assert int(m.group(1)) > 100
    assert "runtime error" not in out and "AddressSanitizer" not in out, out


def test_notifier_c_no_lost_wakeup(tmp_path: Path) -> None:
    """The protocol with the notifier's periodic re-check pushed to 60 s: a
    lost wake-up would show as a 3 s wait and fail."""
    exe = compile_c("notify", tmp_path, extra=["-DWS_SLICE_NS=60000000000LL"])
    r = subprocess.run([str(exe), "stress", "30000"], capture_output=True, text=True, timeout=280)
    m = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M)
    assert m and r.returncode == 0 and m.group(2) == "0", r.stdout + r.stderr


def _run_c(exe: Path, *args: str) -> str:
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0")
    r = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=280, env=env)
    out = r.stdout + r.stderr
    m = re.search(r"^(\d+) passed, (\d+) failed$", r.stdout, re.M)
    assert m and r.returncode == 0 and m.group(2) == "0", out
    assert "runtime error" not in out and "AddressSanitizer" not in out, out
    if "io_uring: no" in r.stdout:
        pytest.skip("io_uring futex waits are refused here: " + r.stdout)
    assert int(m.group(1)) > 100, out
    return out


@pytest.mark.parametrize("sanitize", [False, True], ids=["plain", "asan-ubsan"])
def test_uring_c(tmp_path: Path, sanitize: bool) -> None:
    """csrc/uring.c by csrc/tests/uring.c: argument checks, one-shot watches
    counted and uncounted, removal, forget_ns, a namespace detached (not
    waited for) or destroyed while watched, 300 queues on one ring, a storm of
    100,000 watch/unwatch pairs, 6,000 completions at once (more than the
    completion ring holds), fork (the child cannot use the parent's ring,
    the parent's wait survives), a SIGKILLed watcher's count healed, and the
    asyncio protocol against a producer thread."""
    exe = compile_c("uring", tmp_path, sanitize=sanitize)
    _run_c(exe, "5000" if sanitize else "20000")


def test_uring_c_no_lost_wakeup(tmp_path: Path) -> None:
    """The protocol with the ring's periodic check pushed to 60 s: a lost
    wake-up would show as a 3 s wait and fail."""
    exe = compile_c("uring", tmp_path, extra=["-DUR_SLICE_NS=60000000000LL"])
    _run_c(exe, "stress", "30000")
