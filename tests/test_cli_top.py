"""The ``mqueue`` command's top level: ``--version``, a bare ``mqueue``, ``--url`` wording."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

import mqueue
from mqueue.cli import EXIT_USAGE, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == f"mqueue {mqueue.__version__} (distribution mqueue-shm)"
    assert err == ""


def test_version_matches_installed_metadata() -> None:
    assert importlib.metadata.version("mqueue-shm") == mqueue.__version__


def test_bare_mqueue_prints_usage_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == EXIT_USAGE == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("usage: mqueue")
    for command in ("demo", "ls", "get_size", "get_sizes", "fetch", "stats", "destroy"):
        assert f"\n    {command}" in err
    assert "exit status" in err


def test_bare_mqueue_as_a_program() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "mqueue"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert r.stdout == "" and r.stderr.startswith("usage: mqueue")


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "--url", "foo://x"],
        ["get_sizes", "somens", "--url", "http://x"],
        ["destroy", "somens", "--url", "None"],
    ],
)
def test_bad_url_speaks_of_the_command_line(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    assert main(argv) == EXIT_USAGE
    out, err = capsys.readouterr()
    assert out == ""
    msg = json.loads(err)["error"]["message"]
    assert json.loads(err)["error"]["code"] == 400
    assert "None" not in msg.replace(repr("None"), "")  # no Python wording
    assert "no --url for shared memory" in msg


def test_python_api_bad_url_message() -> None:
    with pytest.raises(mqueue.DefinitionError, match="url=None .shared memory"):
        mqueue.attach("x", url="http://x")
