"""What only shared memory has of API.md's Pythonic interface: the segment's
file mode.

The semantics every backend shares (SPEC.md section 2: create / attach /
destroy, add / fetch, the held item, eviction, addmodes, byte capacity,
timeouts, bad input) are in tests/test_semantics.py, run on shared memory and
on Redis.
"""

from __future__ import annotations

import os
import stat

import pytest


def test_segment_mode_default_0600(ns, make_mq):
    old = os.umask(0)
    try:
        make_mq(["name=q"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(f"/dev/shm/mqueue.{ns}").st_mode) == 0o600


@pytest.mark.parametrize("mode", [0o640, 0o660, 0o666, 0o400 | 0o200])
def test_segment_mode_exact(ns, make_mq, mode):
    old = os.umask(0o077)  # the exact mode is honoured whatever the umask
    try:
        make_mq(["name=q"], mode=mode)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(f"/dev/shm/mqueue.{ns}").st_mode) == mode
