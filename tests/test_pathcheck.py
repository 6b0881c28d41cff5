"""A missing SQLite directory is named (mqueue._pathcheck)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import mqueue
from mqueue._pathcheck import sqlite_path_problem


def test_missing_directory_is_named(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "mq.db"
    msg = sqlite_path_problem(str(path))
    assert msg is not None
    assert f"the directory {str(path.parent)!r} does not exist" in msg
    assert repr(str(tmp_path / "no")) in msg  # where the path breaks


def test_usable_paths(tmp_path: Path) -> None:
    assert sqlite_path_problem(str(tmp_path / "mq.db")) is None  # to be created
    (tmp_path / "old.db").write_bytes(b"")
    assert sqlite_path_problem(str(tmp_path / "old.db")) is None
    assert sqlite_path_problem(":memory:") is None
    assert sqlite_path_problem("") is None


def test_other_path_problems(tmp_path: Path) -> None:
    assert "is a directory" in (sqlite_path_problem(str(tmp_path)) or "")
    (tmp_path / "file").write_text("x")
    assert "is not a directory" in (sqlite_path_problem(str(tmp_path / "file" / "mq.db")) or "")


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_directory(tmp_path: Path) -> None:
    d = tmp_path / "ro"
    d.mkdir(mode=0o500)
    try:
        assert "no permission" in (sqlite_path_problem(str(d / "mq.db")) or "")
    finally:
        d.chmod(0o700)


def test_create_with_missing_sqlite_directory_says_so(ns: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/missing/mq.db"
    with pytest.raises(mqueue.PersistenceError, match="does not exist"):
        mqueue.create(ns, ["name=q;dbmode=1"], db_url=url)
    assert not os.path.exists(f"/dev/shm/mqueue.{ns}")
