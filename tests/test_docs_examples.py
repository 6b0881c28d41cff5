"""The Python examples of README.md and docs/API.md run as written.

Every ```python block is run as a script in a scratch directory, with only its
namespace names changed to one of this test's own (so that parallel runs do
not collide); it must exit 0 and leave nothing in /dev/shm.  A block preceded
by a ``<!-- docs-example: not run (...) -->`` line is skipped (the README's API
summary lists signatures, not a program).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import destroy_quietly, new_namespace

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", ROOT / "docs" / "API.md"]
SKIP = "<!-- docs-example: not run"
NAMESPACES = ("sipproxy", "ns")  # the names the examples use, as string literals

_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(path: Path) -> list[tuple[str, str, bool]]:
    """``(id, code, skipped)`` of every python block of a Markdown file."""
    text = path.read_text()
    out = []
    for m in _BLOCK.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
        out.append((f"{path.name}:{line}", m.group(1), before.startswith(SKIP)))
    return out


BLOCKS = [b for p in DOCS if p.exists() for b in python_blocks(p)]


def test_the_docs_have_examples() -> None:
    if not all(p.exists() for p in DOCS):
        pytest.skip("not a checkout: the docs are not here")
    ran = [b for b in BLOCKS if not b[2]]
    assert len(ran) >= 5  # README: listener/workers, kamailio, persistence; API: 3


@pytest.mark.parametrize("block", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_doc_example_runs(block: tuple[str, str, bool], tmp_path: Path) -> None:
    where, code, skipped = block
    if skipped:
        pytest.skip(f"{where}: marked as not run")
    names = {old: new_namespace() for old in NAMESPACES}
    for old, new in names.items():
        code = code.replace(f'"{old}"', f'"{new}"')
    script = tmp_path / "example.py"
    script.write_text(code)
    env = dict(os.environ)
    env.pop("MQUEUE_LOG_EVICTIONS", None)
    try:
        r = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
            env=env,
        )
        assert r.returncode == 0, f"{where} failed:\n{r.stdout}\n{r.stderr}"
        left = [n for n in names.values() if os.path.exists(f"/dev/shm/mqueue.{n}")]
        assert left == [], f"{where} left {left} in /dev/shm"
    finally:
        for n in names.values():
            destroy_quietly(n)
