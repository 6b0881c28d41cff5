"""Packaging: the distribution name users are told to install, the LICENSE,
the version, the sdist's manifest.  (.ci/sdist builds and installs the sdist,
.ci/build-wheel and .ci/test-wheel the wheel.)"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

import mqueue
from mqueue._dist import DIST_NAME, install_hint

ROOT = Path(__file__).resolve().parent.parent
CHECKOUT = (ROOT / "pyproject.toml").exists() and (ROOT / "mqueue").is_dir()
needs_checkout = pytest.mark.skipif(not CHECKOUT, reason="not a checkout")

# "pip install mqueue", "pip install 'mqueue[redis]'", "pip install mqueue[x]": the
# unrelated PyPI project.  `pip install -e '.[...]'` and 'mqueue-shm[...]' are fine.
_BAD_HINT = re.compile(r"""pip install\s+(?:-U\s+)?['"]?mqueue(?:\[|['"\s]|$)""", re.M)


def _user_facing() -> list[Path]:
    files = sorted((ROOT / "mqueue").glob("*.py"))
    files += [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    files += [ROOT / "benchmarks" / "README.md"]
    return [f for f in files if f.exists()]


def test_install_hint_names_the_distribution() -> None:
    assert DIST_NAME == "mqueue-shm"
    assert install_hint("redis") == (
        "pip install 'mqueue-shm[redis]' (from a checkout: pip install '.[redis]')"
    )


@needs_checkout
def test_pyproject_names_the_distribution() -> None:
    if sys.version_info < (3, 11):
        pytest.skip("tomllib is 3.11+")
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["name"] == DIST_NAME
    assert meta["version"] == mqueue.__version__
    assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]
    assert "setuptools>=68" in meta["optional-dependencies"]["test"]


@needs_checkout
def test_license_is_mit() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY" in text




@needs_checkout
@pytest.mark.parametrize(
    "path",
    [
        pytest.param(f, id=f.name)
        for f in _user_facing()
    ],
)
def test_no_install_hint_names_the_unrelated_mqueue(path: Path) -> None:
    bad = [m.group(0) for m in _BAD_HINT.finditer(path.read_text())]
    assert bad == [], f"{path.name}: {bad}"


@needs_checkout
def test_manifest_carries_sources_docs_tests() -> None:
    text = (ROOT / "MANIFEST.in").read_text()
    for line in (
        "recursive-include csrc *.c *.h *.py",
        "recursive-include docs *.md",
        "recursive-include tests *.py",
    ):
        assert line in text
    assert "LICENSE" in text
