"""Namespace squatting and foreign segments (issue 9, item 11).

A second user is played by a forked child that drops root with
``os.setresuid`` to ``nobody`` (everything it needs is imported first); the
tests skip, saying why, when the suite does not run as root.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import textwrap

import pytest
from ctools import PYTHON, py_env

import mqueue

SHM = "/dev/shm/mqueue."

try:
    NOBODY = pwd.getpwnam("nobody").pw_uid
except KeyError:  # pragma: no cover
    NOBODY = 65534

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to run a child as another user (nobody)"
)

AS_NOBODY = textwrap.dedent(
    """
    import os, sys, mqueue, mqueue._shm   # import everything before dropping root
    uid = int(sys.argv[1])
    os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
    mq = mqueue.create(sys.argv[2], ["name=calls;size=1000"], mode=int(sys.argv[3], 8))
    print("created", flush=True)
    sys.stdin.readline()                   # keep it until told
    print(mq["calls"].fetch(), flush=True)  # what the squatter can read
    mq.close()
    """
)


def _squat(ns: str, mode: int = 0o666) -> subprocess.Popen[str]:
    p = subprocess.Popen(
        [PYTHON, "-c", AS_NOBODY, str(NOBODY), ns, oct(mode)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=py_env(),
        cwd="/",
    )
    assert p.stdout is not None
    assert p.stdout.readline().strip() == "created"
    return p


def _finish(p: subprocess.Popen[str]) -> str:
    out, _ = p.communicate("go\n", timeout=60)
    return out.strip()


@needs_root
def test_create_exist_ok_refuses_a_squatted_namespace(ns: str) -> None:
    """User B made the name first (mode 0666): A's create(exist_ok=True) is
    refused, the segment left alone, and B reads nothing of A's (before: A
    attached silently and B read A's private item)."""
    p = _squat(ns)
    try:
        before = os.stat(SHM + ns)
        with pytest.raises(mqueue.AccessDeniedError) as ei:
            mqueue.create(ns, ["name=calls;size=1000"], exist_ok=True)
        assert isinstance(ei.value, PermissionError)
        msg = str(ei.value)
        assert "owned by uid" in msg and "allow_owners" in msg
        after = os.stat(SHM + ns)
        assert (after.st_ino, after.st_uid, after.st_mode) == (
            before.st_ino,
            before.st_uid,
            before.st_mode,
        )
        with pytest.raises(mqueue.AccessDeniedError):
            mqueue.attach(ns)  # not the caller's, not root's
    finally:
        out = _finish(p)
    assert out == "None"  # nothing of ours got there


@needs_root
def test_sharing_on_purpose(ns: str) -> None:
    """The explicit way: name the owner (uid or user name), and accept a
    world-writable segment explicitly."""
    p = _squat(ns)
    try:
        with pytest.raises(mqueue.AccessDeniedError, match="world-writable"):
            mqueue.attach(ns, allow_owners=["nobody"])
        mq = mqueue.attach(ns, allow_owners=[NOBODY], allow_world_writable=True)
        mq["calls"].add("shared", "on purpose")
        mq.close()
        mq = mqueue.create(
            ns,
            ["name=calls;size=1000"],
            exist_ok=True,
            allow_owners=("nobody",),
            allow_world_writable=True,
        )
        assert not mq.is_creator
        mq.close()
    finally:
        out = _finish(p)
    assert out == "Item(key='shared', value='on purpose')"


@needs_root
def test_group_shared_owner_allowed(ns: str) -> None:
    """A segment of another user that is not world-writable (0640): allowed
    owner, no other switch needed; the CLI passes the option through."""
    p = _squat(ns, 0o660)
    try:
        with pytest.raises(mqueue.AccessDeniedError):
            mqueue.attach(ns)
        r = subprocess.run(
            [PYTHON, "-m", "mqueue", "get_sizes", ns],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode != 0 and "owned by uid" in r.stderr, r.stderr
        r = subprocess.run(
            [PYTHON, "-m", "mqueue", "get_sizes", ns, "--allow-owner", "nobody"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        assert '"calls"' in r.stdout
    finally:
        _finish(p)


def test_own_world_writable_needs_consent(ns: str, make_mq) -> None:  # type: ignore[no-untyped-def]
    mq = make_mq(["name=q"], mode=0o666)  # creating with that mode is explicit
    assert stat.S_IMODE(os.stat(SHM + ns).st_mode) == 0o666
    with pytest.raises(mqueue.AccessDeniedError, match="world-writable"):
        mqueue.attach(ns)
    with pytest.raises(mqueue.AccessDeniedError, match="world-writable"):
        mqueue.create(ns, ["name=q"], exist_ok=True)
    other = mqueue.attach(ns, allow_world_writable=True)
    other.close()
    mq.close()


def test_not_a_regular_file(ns: str) -> None:
    os.mkfifo(SHM + ns, 0o600)
    try:
        with pytest.raises(mqueue.CorruptSegmentError, match="not a regular file"):
            mqueue.attach(ns)
        with pytest.raises(mqueue.CorruptSegmentError):
            mqueue.create(ns, ["name=q"], exist_ok=True)
    finally:
        os.unlink(SHM + ns)


@pytest.mark.parametrize(
    ("owners", "exc"),
    [
        (["no-such-user-here"], mqueue.ArgumentError),
        ([-1], mqueue.ArgumentError),
        ([1.5], mqueue.ArgumentTypeError),
        (3.5, mqueue.ArgumentTypeError),
        ([True], mqueue.ArgumentTypeError),
    ],
)
def test_bad_allow_owners(ns: str, owners: object, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        mqueue.create(ns, ["name=q"], allow_owners=owners)  # type: ignore[arg-type]
    assert not os.path.exists(SHM + ns)


def test_trust_options_are_shm_only() -> None:
    with pytest.raises(mqueue.ArgumentError):
        mqueue.attach("x", url="redis://127.0.0.1:1/0", allow_owners=[0])


def test_kamailio_facade_passes_the_options(ns: str) -> None:
    from mqueue import kamailio

    m = kamailio.MQueueModule()
    m.modparam("mqueue", "name=q")
    m.init(ns, mode=0o666)
    try:
        other = kamailio.MQueueModule()
        with pytest.raises(mqueue.AccessDeniedError, match="world-writable"):
            other.attach(ns)
        other = kamailio.MQueueModule()
        other.attach(ns, allow_world_writable=True, allow_owners=[os.geteuid()])
        assert other.mq_add("q", "k", "v") == 1
        assert m.mq_size("q") == 1
        other.close()
        again = kamailio.MQueueModule()
        again.modparam("mqueue", "name=q")
        with pytest.raises(mqueue.AccessDeniedError):
            again.init(ns, exist_ok=True)
        again = kamailio.MQueueModule()
        again.modparam("mqueue", "name=q")
        again.init(ns, exist_ok=True, allow_world_writable=True)
        again.close()
    finally:
        m.close()
