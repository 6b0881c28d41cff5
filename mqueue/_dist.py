"""The name users install this package by.

The import name is ``mqueue``; the distribution on PyPI is ``mqueue-shm`` (the
name ``mqueue`` belongs to an unrelated project).  Every message that tells a
user to install something goes through :func:`install_hint`.
"""

from __future__ import annotations

DIST_NAME = "mqueue-shm"


def install_hint(extra: str) -> str:
    """How to install the optional dependencies of ``extra``, e.g. ``"redis"``:
    ``pip install 'mqueue-shm[redis]' (from a checkout: pip install '.[redis]')``."""
    return f"pip install '{DIST_NAME}[{extra}]' (from a checkout: pip install '.[{extra}]')"
