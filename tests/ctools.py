"""Helpers for the tests that compile C programs or a testing build of the engine.

Everything is built into a directory the caller gives (a ``tmp_path_factory``
directory), never into the source tree, so ``pytest -n auto`` workers do not
race each other.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CTESTS = CSRC / "tests"
PKG = ROOT / "mqueue"
PYTHON = sys.executable

CFLAGS = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror"]
SANITIZE = [
    "-fsanitize=address,undefined",
    "-fno-omit-frame-pointer",
    "-fno-sanitize-recover=all",
    "-g",
]


def have_gcc() -> bool:
    return shutil.which("gcc") is not None


def engine_sources(*, naive: bool = False) -> list[Path]:
    """The engine's C files, as csrc/build_ffi.py compiles them (with the
    negative control's csrc/tests/naive_lock.c for csrc/lock.c when ``naive``)."""
    spec = importlib.util.spec_from_file_location("_mq_build_ffi", CSRC / "build_ffi.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return [ROOT / s for s in mod.engine_sources(naive)]


def killpoint_names() -> list[str]:
    """Every KILLPOINT("name") in the engine's sources, in order of first appearance."""
    text = "".join(p.read_text() for p in engine_sources())
    names: list[str] = []
    for m in re.finditer(r'KILLPOINT\("([A-Za-z0-9_]+)"\)', text):
        if m.group(1) not in names:
            names.append(m.group(1))
    return names


def compile_c(
    program: str,
    outdir: Path,
    *,
    sanitize: bool = False,
    testing: bool = False,
    naive: bool = False,
    extra: list[str] | None = None,
) -> Path:
    """Compile csrc/tests/<program>.c with the engine into outdir; return the binary.

    ``naive`` links the negative control's lock (csrc/tests/naive_lock.c)
    instead of csrc/lock.c, and defines MQ_NAIVE_LOCK for the program's own
    checks (torture.c reads the lock differently then)."""
    tag = program + ("-san" if sanitize else "") + ("-kp" if testing else "")
    tag += "-naive" if naive else ""
    out = outdir / tag
    flags = list(CFLAGS)
    if sanitize:
        flags += SANITIZE
    if testing:
        flags.append("-DMQ_TESTING")
    if naive:
        flags.append("-DMQ_NAIVE_LOCK")
    flags += extra or []
    cmd = [
        "gcc",
        *flags,
        f"-I{CSRC}",
        "-o",
        str(out),
        str(CTESTS / f"{program}.c"),
        *(str(p) for p in engine_sources(naive=naive)),
        "-lpthread",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"compile failed: {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return out


def build_testing_package(dest: Path, *, naive: bool = False) -> Path:
    """A copy of the mqueue package whose _mq_cffi is built with -DMQ_TESTING
    (and with csrc/tests/naive_lock.c for csrc/lock.c, the negative control,
    when ``naive``).

    Returns the directory to put first on PYTHONPATH.  The copy imports exactly
    like the real package (same Python files), only the engine differs.
    """
    build = dest / "build"
    (build / "csrc" / "tests").mkdir(parents=True, exist_ok=True)
    # cffi compiles the sources ("csrc/mq.c", ...) from inside its tmpdir
    for f in [*engine_sources(naive=naive), *CSRC.glob("*.h")]:
        rel = f.relative_to(ROOT)
        shutil.copy2(f, build / rel)
    site = dest / "site"
    pkg = site / "mqueue"
    pkg.mkdir(parents=True, exist_ok=True)
    for f in PKG.glob("*.py"):
        shutil.copy2(f, pkg / f.name)
    code = (
        f"import sys; sys.path.insert(0, {str(CSRC)!r}); import os; os.chdir({str(ROOT)!r});"
        f"import build_ffi; print(build_ffi.ffibuilder.compile(tmpdir={str(build)!r}))"
    )
    env = dict(os.environ, MQUEUE_TESTING="1")
    env.pop("MQUEUE_NAIVE_LOCK", None)
    if naive:
        env["MQUEUE_NAIVE_LOCK"] = "1"
    r = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"testing build failed:\n{r.stdout}\n{r.stderr}")
    so = Path(r.stdout.strip().splitlines()[-1])
    shutil.copy2(so, pkg / so.name)
    return site


def py_env(site: Path | None = None, **extra: str) -> dict[str, str]:
    """Environment for a Python child: the testing package first when given."""
    env = dict(os.environ)
    env.pop("MQ_KILLPOINT", None)
    if site is not None:
        env["PYTHONPATH"] = str(site) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def shm_leftovers(prefix: str) -> list[str]:
    """Segments in /dev/shm whose name starts with mqueue.<prefix>."""
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith("mqueue." + prefix))
    except OSError:
        return []
