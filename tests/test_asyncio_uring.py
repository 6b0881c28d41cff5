"""mqueue.asyncio's io_uring waits (csrc/uring.c) from Python: when the kernel
refuses io_uring (a seccomp profile as Docker's default, the
``kernel.io_uring_disabled`` sysctl, a kernel before 6.7) the notifier threads
take over, at the probe or at run time; a forked child waits on a ring of its
own while the parent's waits go on.  (tests/test_asyncio.py runs every asyncio
test in both modes; tests/test_asyncio_c.py tests the C side.)

The refusals are real: the child program installs a seccomp filter that makes
the io_uring system calls fail with EPERM, as Docker's default profile does.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from mqueue import _aio_notify

pytestmark = [
    pytest.mark.skipif(
        platform.machine() != "x86_64", reason="the seccomp filter below is for x86_64"
    ),
    pytest.mark.skipif(
        os.environ.get("MQUEUE_AIO_NO_URING", "") not in ("", "0")
        or not _aio_notify.uring_wanted(),
        reason="io_uring futex waits are not available here",
    ),
]

# installs a seccomp filter: syscall `nr` fails with EPERM, everything else runs
SECCOMP = """
import ctypes, struct
def refuse(nr):
    AUDIT_ARCH_X86_64 = 0xC000003E
    prog = [
        (0x20, 0, 0, 4),                      # ld arch
        (0x15, 1, 0, AUDIT_ARCH_X86_64),      # jeq x86_64 -> check nr
        (0x06, 0, 0, 0x7FFF0000),             # other arch: allow
        (0x20, 0, 0, 0),                      # ld nr
        (0x15, 0, 1, nr),                     # jeq nr
        (0x06, 0, 0, 0x00050000 | 1),         # ERRNO(EPERM)
        (0x06, 0, 0, 0x7FFF0000),             # allow
    ]
    raw = b"".join(struct.pack("HBBI", *i) for i in prog)
    buf = ctypes.create_string_buffer(raw)
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    fp = Prog(len(prog), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(38, 1, 0, 0, 0) == 0, ctypes.get_errno()        # PR_SET_NO_NEW_PRIVS
    assert libc.prctl(22, 2, ctypes.byref(fp), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
"""

WAITS = """
import asyncio, sys, threading, mqueue, mqueue.asyncio as amq
from mqueue import _aio_notify
async def waits(mq, n=20):
    ts = [asyncio.create_task(mq["ab"[i % 2]].fetch(None)) for i in range(n)]
    await asyncio.sleep(0.2)
    for name in "ab":
        await mq[name].add_many([(name + str(i), "v") for i in range(n // 2)])
    res = await asyncio.wait_for(asyncio.gather(*ts), 30)
    assert len(set(res)) == n, res
"""


def _run(code: str, ns: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MQUEUE_AIO_")}
    r = subprocess.run(
        [sys.executable, "-c", code, ns], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_probe_refused_uses_the_notifier(ns: str) -> None:
    """io_uring_setup refused (EPERM, as under Docker's default seccomp
    profile): the probe says no, loops wait through the notifier thread."""
    code = (
        SECCOMP
        + WAITS
        + """
refuse(425)   # io_uring_setup
async def main():
    assert _aio_notify.mode() != "io_uring", _aio_notify.mode()
    mq = await amq.create(sys.argv[1], ["name=a", "name=b"])
    try:
        await waits(mq)
        assert amq.notifier_threads() >= 1
        assert not _aio_notify._rings
    finally:
        await mq.close()
        mqueue.destroy(sys.argv[1])
    print("notifier", amq.notifier_threads())
asyncio.run(main())
"""
    )
    assert "notifier 1" in _run(code, ns)


def test_ring_refused_at_run_time_falls_back(ns: str) -> None:
    """The ring made, then io_uring_enter refused (a filter installed later):
    the loop's next watch moves to the notifier, nothing is lost."""
    code = (
        SECCOMP
        + WAITS
        + """
async def main():
    assert _aio_notify.mode() == "io_uring"
    mq = await amq.create(sys.argv[1], ["name=a", "name=b"])
    try:
        await waits(mq)                       # through the ring
        assert amq.notifier_threads() == 0
        refuse(426)                           # io_uring_enter
        await waits(mq)                       # through the notifier
        assert amq.notifier_threads() == 1
    finally:
        await mq.close()
        mqueue.destroy(sys.argv[1])
    print("ok")
asyncio.run(main())
"""
    )
    assert "ok" in _run(code, ns)
