"""The ``mqueue`` command line (also ``python -m mqueue``).

Kamailio answers its ``mqueue.*`` RPC commands over its control socket; this tool
answers them by attaching to the shared queues, printing the same JSON shapes on
standard output.  Errors are printed as ``{"error": {"code": ..., "message": ...}}``
on standard error with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import base64
import errno
import importlib
import json
import math
import os
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


def _attach(args: argparse.Namespace) -> MQueue:
    import mqueue

    trust: dict[str, Any] = {}
    if getattr(args, "allow_owner", None):
        trust["allow_owners"] = tuple(args.allow_owner)
    if getattr(args, "allow_world_writable", False):
        trust["allow_world_writable"] = True
    return mqueue.attach(args.namespace, url=args.url, **trust)


def _cmd_ls(args: argparse.Namespace) -> Any:
    import mqueue

    return list(mqueue._backend(args.url).list_namespaces(url=args.url))


def _cmd_get_size(args: argparse.Namespace) -> Any:
    with _attach(args) as mq:
        return {"name": args.queue, "size": len(mq[args.queue])}


def _cmd_get_sizes(args: argparse.Namespace) -> Any:
    with _attach(args) as mq:
        return [{"name": n, "size": s} for n, s in mq.sizes().items()]


class _Printed:
    """A command's result that the command printed itself."""


_PRINTED = _Printed()
FETCH_BUSY_WAIT_S = 5.0  # how long fetch waits while another reservation is pending


def _write_stdout(doc: Any) -> None:
    """Print ``doc`` as JSON on stdout and flush: UTF-8 text when the
    terminal's encoding can hold it, else ASCII with \\u escapes (never fails
    for the encoding).  Raises OSError (BrokenPipeError) when stdout is gone."""
    try:
        text = json.dumps(doc, ensure_ascii=False)
        text.encode(sys.stdout.encoding or "utf-8")
    except (UnicodeEncodeError, LookupError):
        text = json.dumps(doc, ensure_ascii=True)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _cmd_fetch(args: argparse.Namespace) -> Any:
    """Take the oldest item with a reservation, print it, then settle: an item
    that cannot be written (closed pipe, full disk) goes back to the head."""
    import time

    with _attach(args) as mq:
        q: Any = mq[args.queue]
        if not hasattr(q, "_reserve"):  # a backend without reservations (Redis)
            items = q.fetch_many(1, timeout=0)
            if not items:
                raise RPCError(404, "Empty queue")
            return _item_json(items[0].key, items[0].value)
        from . import _persist
        from ._shm import ReservationBusy

        tag = _persist.new_cli_tag()
        give_up = time.monotonic() + FETCH_BUSY_WAIT_S
        while True:
            info = q._reservation()
            if info.tag & _persist.CLI_TAG_BIT and not info.owner_alive:
                q._settle(info.tag, False)  # a killed `mqueue fetch` left it: put back
            try:
                items = q._reserve(1, tag, 64 * 1024)
                break
            except ReservationBusy:
                info = q._reservation()
                if info.tag and not info.tag & _persist.CLI_TAG_BIT and not info.owner_alive:
                    raise MQueueError(
                        f"queue {args.queue!r}: its oldest {info.size} item(s) are reserved by "
                        "a save whose process died; only its database can tell whether "
                        f"it committed: run `mqueue recover {args.namespace} --db-url URL`"
                    ) from None
                if time.monotonic() > give_up:
                    raise MQueueError(
                        f"queue {args.queue!r}: another process holds its oldest items "
                        "(a save, or another fetch, in progress); try again"
                    ) from None
                time.sleep(0.01)
        if not items:
            raise RPCError(404, "Empty queue")
        try:
            _write_stdout(_item_json(items[0].key, items[0].value))
        except BaseException as exc:
            q._settle(tag, False)
            if isinstance(exc, OSError):
                _silence(sys.stdout)
                raise MQueueError(
                    f"cannot write the item to standard output ({exc}); it was put back "
                    f"at the head of queue {args.queue!r}"
                ) from exc
            raise
        q._settle(tag, True)
        return _PRINTED


def _cmd_recover(args: argparse.Namespace) -> Any:
    """Resolve what dead processes left: an item a killed `mqueue fetch` took
    (put back), and with --db-url a save or load a dead process left unfinished
    (the database says whether it committed)."""
    from . import _persist

    done: list[str] = []
    with _attach(args) as mq:
        for name in mq:
            q: Any = mq[name]
            if not hasattr(q, "_reservation"):
                continue
            info = q._reservation()
            dead_fetch = info.tag & _persist.CLI_TAG_BIT and not info.owner_alive
            if dead_fetch and q._settle(info.tag, False):
                done.append(f"queue {name!r}: put back the item of a dead `mqueue fetch`")
        if args.db_url:
            done += _persist.resolve_queues(mq, args.db_url)
        pending = []
        for name in mq:
            q = mq[name]
            if hasattr(q, "_reservation") and q._reservation().tag:
                pending.append(name)
    out: dict[str, Any] = {"namespace": args.namespace, "resolved": done}
    if pending:
        out["still_reserved"] = pending
    return out


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
    fmt = "json" if args.json else args.format
    if fmt in ("openmetrics", "prometheus"):
        return _metrics_text(args, fmt)
    with _attach(args) as mq:
        rows = _stats_rows(mq)
    if fmt == "json":
        return rows
    return _Text(f"namespace {args.namespace}\n" + _table(rows))


def _cmd_destroy(args: argparse.Namespace) -> Any:
    import mqueue

    mqueue.destroy(args.namespace, url=args.url)
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


# ------------------------------------------------ metrics: stats --format, serve-metrics, top


def _metrics_text(args: argparse.Namespace, fmt: str) -> Any:
    """``stats NS --format openmetrics|prometheus``: the namespace's exposition."""
    from . import _metrics

    with _attach(args):  # a missing namespace or backend is an error here, as for stats
        pass
    (sample,) = _metrics.collect([args.namespace], args.url)
    if not sample.up:
        raise MQueueError(f"cannot read namespace {args.namespace!r}: {sample.error}")
    text = _metrics.exposition([sample], openmetrics=fmt == "openmetrics")
    return _Text(text.rstrip("\n"))


def _cmd_serve_metrics(args: argparse.Namespace) -> Any:
    from . import _metrics

    if not 0 <= args.port <= 65535:
        raise _UsageError("serve-metrics: --port must be 0..65535")
    try:
        scrapes = _metrics.serve(
            args.namespaces or None, bind=args.bind, port=args.port, url=args.url
        )
    except OSError as exc:  # the address: unknown, not on this machine, in use, privileged
        raise MQueueError(
            f"serve-metrics: cannot listen on {args.bind} port {args.port}: {exc.strerror or exc}"
        ) from None
    return {"stopped": True, "scrapes": scrapes}


def _cmd_top(args: argparse.Namespace) -> Any:
    from . import _top

    if not (math.isfinite(args.interval) and args.interval > 0):
        raise _UsageError("top: --interval must be a positive number of seconds")
    namespaces = [args.namespace] if args.namespace else None
    if args.once:
        return _Text(_top.run_once(namespaces, args.url, args.interval))
    try:
        _top.run(namespaces, args.url, args.interval)
    except _top.TopError as exc:
        raise _UsageError(str(exc)) from None
    return _Text("")


def _add_metrics_commands(add: Any) -> None:
    """The ``serve-metrics`` and ``top`` subcommands (``stats --format`` is with ``stats``)."""
    p = add(
        "serve-metrics",
        "serve the queues' counters over HTTP at /metrics for Prometheus (OpenMetrics "
        "or the classic text format, by the Accept header); SIGTERM or Ctrl-C stops it",
        _cmd_serve_metrics,
    )
    p.add_argument(
        "namespaces",
        metavar="NAMESPACE",
        nargs="*",
        help="namespaces to expose (default: every namespace, found afresh at each scrape)",
    )
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=9712, help="TCP port (default 9712; 0: any free)")
    p.add_argument("--url", default=None, help="backend URL (default: POSIX shared memory)")

    p = add(
        "top",
        "live view of every queue: length, fill, adds/s, fetches/s, evictions/s "
        "(q or Ctrl-C quits)",
        _cmd_top,
    )
    p.add_argument("namespace", metavar="NAMESPACE", nargs="?", help="default: every namespace")
    p.add_argument("--url", default=None, help="backend URL (default: POSIX shared memory)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument(
        "--once",
        action="store_true",
        help="print one plain-text frame (rates over one interval) and exit; no terminal needed",
    )


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
        p.add_argument(
            "--allow-owner",
            action="append",
            metavar="USER",
            help="shared memory: also trust a namespace owned by this user (name or uid; "
            "repeatable); by default only your own or root's",
        )
        p.add_argument(
            "--allow-world-writable",
            action="store_true",
            help="shared memory: use a namespace any local user may write to",
        )

    def add_ns(name: str, help_: str, func: Any) -> argparse.ArgumentParser:
        """A subcommand on one namespace: NAMESPACE and the backend options first."""
        p = add(name, help_, func)
        ns(p)
        return p

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

    p = add_ns("get_size", 'number of queued items: {"name": ..., "size": ...}', _cmd_get_size)
    p.add_argument("queue", metavar="QUEUE")

    p = add_ns(
        "get_sizes", 'sizes of all queues: [{"name": ..., "size": ...}, ...]', _cmd_get_sizes
    )

    p = add_ns("fetch", 'remove the oldest item and print it: {"key": ..., "val": ...}', _cmd_fetch)
    p.add_argument("queue", metavar="QUEUE")

    p = add_ns("stats", "counters per queue (a table; --json, --format openmetrics)", _cmd_stats)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument(
        "--format",
        choices=("table", "json", "openmetrics", "prometheus"),
        default="table",
        help="table (default), json, openmetrics (OpenMetrics 1.0 text) or prometheus "
        "(the Prometheus text format 0.0.4); see docs/metrics.md",
    )

    p = add_ns("destroy", "remove the namespace for good", _cmd_destroy)

    p = add_ns(
        "recover",
        "settle what dead processes left: the item of a killed fetch (put back), and "
        "with --db-url an unfinished save or load (the database says whether it "
        'committed); prints {"resolved": [...]}',
        _cmd_recover,
    )
    p.add_argument(
        "--db-url",
        default=None,
        help="the database of the dbmode queues (an unfinished save is settled only by "
        "the database it wrote to: another one is refused, nothing changed)",
    )

    p = add_ns(
        "save",
        "save the items of dbmode 1/3 queues to the database (they leave the queues); "
        'prints {"saved": {queue: count}}',
        _cmd_save,
    )
    p.add_argument("--db-url", required=True, help="e.g. sqlite:///path/to.db")

    p = add_ns(
        "load",
        "load the items of dbmode 1/2 queues from the database (the rows are deleted); "
        'prints {"loaded": {queue: count}}',
        _cmd_load,
    )
    p.add_argument("--db-url", required=True, help="e.g. sqlite:///path/to.db")

    _add_metrics_commands(add)
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
    try:
        print(json.dumps(err), file=sys.stderr, flush=True)
    except OSError:  # stderr is gone too: the exit status says it
        _silence(sys.stderr)
    return EXIT_USAGE if code == 400 else EXIT_ERROR


def _silence(stream: Any) -> None:
    """Point a stream whose reader is gone at /dev/null, so that the
    interpreter's flush at exit does not print a traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


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
        if isinstance(exc, OSError) and exc.errno == errno.EPIPE:
            _silence(sys.stdout)
        return _fail(exc)
    try:
        if isinstance(result, _Text):
            if result:
                print(result, flush=True)
        elif not isinstance(result, _Printed):
            _write_stdout(result)
    except OSError as exc:  # stdout is gone (a closed pipe)
        _silence(sys.stdout)
        return _fail(MQueueError(f"cannot write to standard output: {exc}"))
    status: int = getattr(args, "status", EXIT_OK)
    return status
