"""``python -m mqueue``: the ``mqueue`` command line (see :mod:`mqueue.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
