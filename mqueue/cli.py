"""The ``mqueue`` command line (also ``python -m mqueue``).

Kamailio answers its ``mqueue.*`` RPC commands over its control socket; this tool
answers them by attaching to the shared queues, printing the same JSON shapes on
standard output.  Errors are printed as ``{"error": {"code": ..., "message": ...}}``
on standard error with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from . import __version__
from ._dist import DIST_NAME
from ._errors import (
    DefinitionError,
    MQueueError,
    NamespaceNotFoundError,
    QueueNotFoundError,
    RPCError,
)

if TYPE_CHECKING:
    from ._core import MQueue

__all__ = ["main"]

EXIT_OK = 0
EXIT_ERROR = 1  # the command ran and failed (404, 500)
EXIT_USAGE = 2  # bad arguments (400), as argparse does

STATS_FIELDS = (
    "added",
    "fetched",
    "evicted",
    "duplicates",
    "high_water",
    "recoveries",
    "bytes_used",
    "capacity",
)

EPILOG = """\
exit status:
  0 success; 1 the command failed (404, 500); 2 bad arguments (400), also a
  bare "mqueue" (which prints this summary); 130 interrupted (Ctrl-C).

output:
  Results are JSON on standard output.  Errors are JSON on standard error,
  {"error": {"code": C, "message": M}}, with exit status 1 (code 404: no such
  namespace or queue, or an empty queue; 500: anything else) or 2 (code 400:
  bad arguments).

keys and values:
  A key or value is printed as a JSON string when it is text (a str, or bytes
  that decode as UTF-8); an empty one is printed as "".  Bytes that are not
  UTF-8 are printed base64-encoded under "key_b64" / "val_b64" instead of
  "key" / "val", e.g. {"key": "k1", "val_b64": "gAE="}.
"""


class _UsageError(Exception):
    """Bad command-line arguments (reported as code 400)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that reports usage errors as JSON instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: {message}")


def _encode(field: str, data: str | bytes) -> dict[str, str]:
    """``{field: text}`` for text, ``{field + "_b64": base64}`` for non-UTF-8 bytes."""
    if isinstance(data, bytes):
        try:
            return {field: data.decode("utf-8")}
        except UnicodeDecodeError:
            return {field + "_b64": base64.b64encode(data).decode("ascii")}
    return {field: data}


def _item_json(key: str | bytes, value: str | bytes) -> dict[str, str]:
    out = _encode("key", key)
    out.update(_encode("val", value))
    return out


_URL_SCHEMES = ("redis://", "rediss://", "unix://")


def _url_arg(text: str) -> str:
    """``--url``: a Redis URL; shared memory is the default (no ``--url``)."""
    if not text.startswith(_URL_SCHEMES):
        raise argparse.ArgumentTypeError(
            f"unsupported URL {text!r}: give redis://HOST:PORT/DB, rediss://... or "
            "unix:///PATH, or no --url for shared memory on this machine"
        )
    return text


def _backend_missing(url: str | None, exc: ImportError) -> MQueueError:
    return MQueueError(f"the backend for url {url!r} is not available: {exc}")


def _attach(args: argparse.Namespace) -> MQueue:
    import mqueue

    try:
        return mqueue.attach(args.namespace, url=args.url)
    except ImportError as exc:
        if args.url is None:
            raise
        raise _backend_missing(args.url, exc) from None


def _cmd_ls(args: argparse.Namespace) -> Any:
    if args.url is None:
        from mqueue import _shm

        return list(_shm.list_namespaces())
    try:
        from mqueue import _redis
    except ImportError as exc:
        raise _backend_missing(args.url, exc) from None
    return list(_redis.list_namespaces(args.url))


def _cmd_get_size(args: argparse.Namespace) -> Any:
    with _attach(args) as mq:
        return {"name": args.queue, "size": len(mq[args.queue])}


def _cmd_get_sizes(args: argparse.Namespace) -> Any:
    with _attach(args) as mq:
        return [{"name": n, "size": s} for n, s in mq.sizes().items()]


def _cmd_fetch(args: argparse.Namespace) -> Any:
    with _attach(args) as mq:
        items = mq[args.queue].fetch_many(1, timeout=0)
        if not items:
            raise RPCError(404, "Empty queue")
        return _item_json(items[0].key, items[0].value)


def _stats_rows(mq: MQueue) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    defs = {d.name: d for d in mq.definitions}
    for name in mq:
        q = mq[name]
        st = q.stats()
        d = defs.get(name)
        row: dict[str, Any] = {"name": name, "size": len(q)}
        if d is not None:
            row.update(limit=d.size, addmode=d.addmode, dbmode=d.dbmode)
        for field in STATS_FIELDS:
            row[field] = getattr(st, field)
        rows.append(row)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no queues)"
    cols = list(rows[0])
    cells = [[str(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        )
    ]
    for row in cells:
        lines.append(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


class _Text(str):
    """A result printed as it is, not as JSON."""


def _cmd_stats(args: argparse.Namespace) -> Any:
    with _attach(args) as mq:
        rows = _stats_rows(mq)
    if args.json:
        return rows
    return _Text(f"namespace {args.namespace}\n" + _table(rows))


def _cmd_destroy(args: argparse.Namespace) -> Any:
    import mqueue

    try:
        mqueue.destroy(args.namespace, url=args.url)
    except ImportError as exc:
        if args.url is None:
            raise
        raise _backend_missing(args.url, exc) from None
    return {"namespace": args.namespace, "destroyed": True}


def _persist_call(args: argparse.Namespace, func: str, field: str) -> Any:
    try:
        persist = importlib.import_module("mqueue._persist")
    except ImportError as exc:
        raise MQueueError(f"persistence is not available in this build: {exc}") from None
    with _attach(args) as mq:
        result = getattr(persist, func)(mq, args.db_url)
    out: dict[str, Any] = {"namespace": args.namespace, "db_url": args.db_url}
    try:
        json.dumps(result)
        out[field] = result
    except (TypeError, ValueError):
        out[field] = repr(result)
    return out


def _cmd_save(args: argparse.Namespace) -> Any:
    return _persist_call(args, "save_queues", "saved")


def _cmd_load(args: argparse.Namespace) -> Any:
    return _persist_call(args, "load_queues", "loaded")


def _cmd_demo(args: argparse.Namespace) -> Any:
    from . import _demo

    if args.workers < 1:
        raise _UsageError("demo: --workers must be at least 1")
    if args.seconds <= 0:
        raise _UsageError("demo: --seconds must be positive")
    if args.rate is not None and args.rate < 0:
        raise _UsageError("demo: --rate must be 0 (unpaced) or positive")
    rate = _demo.DEFAULT_RATE if args.rate is None else args.rate
    summary = _demo.run(workers=args.workers, seconds=args.seconds, rate=rate)
    if not summary["balanced"]:
        args.status = EXIT_ERROR
    if args.json:
        return summary
    return _Text(_demo.format_summary(summary))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mqueue`` command."""
    parser = _Parser(
        prog="mqueue",
        description="Named message queues in POSIX shared memory, with Kamailio's "
        "mqueue semantics: inspect and manage them, or run the demo.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"mqueue {__version__} (distribution {DIST_NAME})",
        help="print the version and exit",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, help_: str, func: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        return p

    def ns(p: argparse.ArgumentParser) -> None:
        p.add_argument("namespace", metavar="NAMESPACE", help="the queues' namespace")
        p.add_argument(
            "--url",
            default=None,
            type=_url_arg,
            help="a Redis URL (default, without --url: POSIX shared memory on this machine)",
        )

    p = add("demo", "run the built-in example: a SIP listener and workers", _cmd_demo)
    p.add_argument("--workers", type=int, default=3, help="worker processes (default 3)")
    p.add_argument("--seconds", type=float, default=10.0, help="run time (default 10)")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="steady call events added per second (default 4000, with a 1 s flood "
        "at 6x in the middle; 0: as fast as possible, no flood)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the summary as JSON (live figures still go to stderr)",
    )

    p = add("ls", "list the namespaces present on this machine (or on --url)", _cmd_ls)
    p.add_argument(
        "--url",
        default=None,
        type=_url_arg,
        help="a Redis URL (default, without --url: POSIX shared memory)",
    )

    p = add("get_size", 'number of queued items: {"name": ..., "size": ...}', _cmd_get_size)
    ns(p)
    p.add_argument("queue", metavar="QUEUE")

    p = add("get_sizes", 'sizes of all queues: [{"name": ..., "size": ...}, ...]', _cmd_get_sizes)
    ns(p)

    p = add("fetch", 'remove the oldest item and print it: {"key": ..., "val": ...}', _cmd_fetch)
    ns(p)
    p.add_argument("queue", metavar="QUEUE")

    p = add("stats", "counters per queue (a table; --json for JSON)", _cmd_stats)
    ns(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")

    p = add("destroy", "remove the namespace for good", _cmd_destroy)
    ns(p)

    p = add(
        "save",
        "save the items of dbmode 1/3 queues to the database (they leave the queues); "
        'prints {"saved": {queue: count}}',
        _cmd_save,
    )
    ns(p)
    p.add_argument("--db-url", required=True, help="e.g. sqlite:///path/to.db")

    p = add(
        "load",
        "load the items of dbmode 1/2 queues from the database (the rows are deleted); "
        'prints {"loaded": {queue: count}}',
        _cmd_load,
    )
    ns(p)
    p.add_argument("--db-url", required=True, help="e.g. sqlite:///path/to.db")

    return parser


def _error_code(exc: BaseException) -> int:
    if isinstance(exc, RPCError):
        return exc.code
    if isinstance(exc, (_UsageError, DefinitionError)):
        return 400
    if isinstance(exc, (NamespaceNotFoundError, QueueNotFoundError)):
        return 404
    return 500


def _error_message(exc: BaseException) -> str:
    if isinstance(exc, RPCError):
        return exc.message
    if isinstance(exc, QueueNotFoundError):
        return str(exc) or "No such queue"
    if isinstance(exc, NamespaceNotFoundError):
        return str(exc) or "No such namespace"
    return str(exc) or type(exc).__name__


def _fail(exc: BaseException) -> int:
    code = _error_code(exc)
    err = {"error": {"code": code, "message": _error_message(exc)}}
    print(json.dumps(err), file=sys.stderr)
    return EXIT_USAGE if code == 400 else EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``mqueue`` with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(list(argv) if argv is not None else None)
    except _UsageError as exc:
        return _fail(exc)
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if getattr(args, "func", None) is None:  # a bare "mqueue": the usage summary
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # every failure is reported as JSON, never a traceback
        return _fail(exc)
    if isinstance(result, _Text):
        print(result)
    else:
        print(json.dumps(result, ensure_ascii=False))
    status: int = getattr(args, "status", EXIT_OK)
    return status
