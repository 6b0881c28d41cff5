"""Why a SQLite database file cannot be opened, in words a user can act on.

SQLite itself only says "unable to open database file".  :func:`sqlite_path_problem`
names the cause when it is the path: a directory that does not exist, a path
component that is not a directory, a directory this user may not write.  Called
by the persistence code when ``sqlite3.connect`` fails.
"""

from __future__ import annotations

import os

_SPECIAL = ("", ":memory:")


def sqlite_path_problem(path: str) -> str | None:
    """A sentence saying what is wrong with ``path`` as a SQLite database file
    to open or create, or None when the path looks usable (or is special)."""
    if path in _SPECIAL:
        return None
    if os.path.isdir(path):
        return f"{path!r} is a directory, not a database file"
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(parent):
        # the deepest part that exists, to say where the path breaks
        missing = parent
        while not os.path.exists(os.path.dirname(missing)):
            missing = os.path.dirname(missing)
        return (
            f"the directory {parent!r} does not exist ({missing!r} is missing); "
            "create it first (mqueue creates the database file, not its directory)"
        )
    if not os.path.isdir(parent):
        return f"{parent!r} is not a directory"
    if not os.path.exists(path) and not os.access(parent, os.W_OK | os.X_OK):
        return f"no permission to create a file in the directory {parent!r}"
    if os.path.exists(path) and not os.access(path, os.R_OK):
        return f"no permission to read {path!r}"
    return None
