"""``mqueue top``: a live terminal view of every queue (curses, standard library).

Each refresh reads the queues' counters (:func:`mqueue._metrics.collect`) and
shows, per queue, its length, its bound, a fill bar, the rates of adds, fetches and
evictions (counter deltas over the time between two reads) and its bytes.  ``q``
or Ctrl-C quits, SIGTERM too, and the terminal is always restored.  Only plain
ASCII and the terminal's reverse video are used, so it works over ssh on any
terminal curses knows.  ``--once`` prints one plain-text frame (two reads an
interval apart, for the rates) instead: for scripts, logs and terminals without
curses.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from ._metrics import READ_TIMEOUT, NamespaceSample, collect

if TYPE_CHECKING:
    from ._core import QueueStats

__all__ = ["Row", "TopError", "compute_rows", "render", "run", "run_once"]

BAR_WIDTH = 20


class TopError(Exception):
    """``top`` cannot run here (no terminal)."""


@dataclass(frozen=True)
class Row:
    """One line of the view: a queue, or a namespace that could not be read."""

    namespace: str
    queue: str
    length: int = 0
    limit: int = 0
    used: int = 0
    capacity: int = 0
    high_water: int = 0
    add_rate: float | None = None  # per second; None before a second read
    fetch_rate: float | None = None
    evict_rate: float | None = None
    error: str | None = None

    @property
    def fill(self) -> float:
        """Fraction full: of the count bound when there is one, else of the bytes."""
        if self.limit > 0:
            return min(1.0, self.length / self.limit)
        if self.capacity > 0:
            return min(1.0, self.used / self.capacity)
        return 0.0


def _rate(now: int, before: int | None, dt: float) -> float | None:
    if before is None or dt <= 0:
        return None
    delta = now - before
    if delta < 0:  # the namespace was re-created: the counter restarted from 0
        delta = now
    return delta / dt


def compute_rows(
    samples: Sequence[NamespaceSample],
    previous: dict[tuple[str, str], tuple[float, QueueStats]] | None = None,
) -> list[Row]:
    """The rows for ``samples``; rates from the counters in ``previous``.

    ``previous`` maps (namespace, queue) to (time read, stats) from the last
    refresh; it is updated in place with this refresh's counters, and queues no
    longer present are dropped from it.
    """
    prev = previous if previous is not None else {}
    rows: list[Row] = []
    seen: set[tuple[str, str]] = set()
    for s in samples:
        if not s.up:
            rows.append(Row(s.namespace, "", error=s.error))
            continue
        for st in s.queues:
            key = (s.namespace, st.name)
            seen.add(key)
            before = prev.get(key)
            dt = s.time - before[0] if before else 0.0
            b = before[1] if before else None
            rows.append(
                Row(
                    s.namespace,
                    st.name,
                    length=st.length,
                    limit=st.size_limit,
                    used=st.bytes_used,
                    capacity=st.capacity,
                    high_water=st.high_water,
                    add_rate=_rate(st.added, b.added if b else None, dt),
                    fetch_rate=_rate(st.fetched, b.fetched if b else None, dt),
                    evict_rate=_rate(st.evicted, b.evicted if b else None, dt),
                )
            )
            prev[key] = (s.time, st)
    for key in list(prev):
        if key not in seen:
            del prev[key]
    return rows


def _num(n: float | None) -> str:
    if n is None:
        return "-"
    if n >= 10_000_000:
        return f"{n / 1e6:.0f}M"
    if n >= 100_000:
        return f"{n / 1e3:.0f}k"
    if n >= 100 or n == int(n):
        return f"{n:.0f}"
    return f"{n:.1f}"


def _bytes(n: int) -> str:
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # pragma: no cover


def _bar(fill: float) -> str:
    full = round(fill * BAR_WIDTH)
    return "[" + "#" * full + "." * (BAR_WIDTH - full) + f"] {fill * 100:3.0f}%"


COLUMNS = (
    ("NAMESPACE", "<"),
    ("QUEUE", "<"),
    ("LEN", ">"),
    ("LIMIT", ">"),
    ("FILL", "<"),
    ("ADD/s", ">"),
    ("FETCH/s", ">"),
    ("EVICT/s", ">"),
    ("HIGH", ">"),
    ("BYTES", ">"),
)


def _printable(text: str) -> str:
    """``text`` with control characters (and the backslash) escaped, one line."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(
        c if c.isprintable() and c != "\\" else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def _cells(r: Row) -> list[str]:
    if r.error is not None:
        return [_printable(r.namespace), f"(cannot read: {_printable(r.error)})"]
    return [
        _printable(r.namespace),
        _printable(r.queue),
        str(r.length),
        str(r.limit) if r.limit > 0 else "-",
        _bar(r.fill),
        _num(r.add_rate),
        _num(r.fetch_rate),
        _num(r.evict_rate),
        str(r.high_water),
        f"{_bytes(r.used)}/{_bytes(r.capacity)}",
    ]


def render(rows: Sequence[Row]) -> list[str]:
    """The view as lines of plain text: a header line, then one line per row."""
    table = [[c for c, _ in COLUMNS]] + [_cells(r) for r in rows]
    widths = [0] * len(COLUMNS)
    for cells in table:
        if len(cells) == len(COLUMNS):
            for i, c in enumerate(cells):
                widths[i] = max(widths[i], len(c))
    widths[0] = min(widths[0], 24)
    widths[1] = min(widths[1], 32)
    out = []
    for cells in table:
        if len(cells) != len(COLUMNS):  # an error line
            out.append(f"{cells[0][: widths[0]]:<{widths[0]}}  {cells[1]}")
            continue
        parts = []
        for (_, align), w, c in zip(COLUMNS, widths, cells, strict=True):
            c = c if len(c) <= w else c[: w - 1] + "~"
            parts.append(f"{c:{align}{w}}")
        out.append("  ".join(parts).rstrip())
    return out


def _title(samples: Sequence[NamespaceSample], interval: float) -> str:
    nq = sum(len(s.queues) for s in samples)
    clock = time.strftime("%H:%M:%S")
    return (
        f"mqueue top - {len(samples)} namespace(s), {nq} queue(s) - {clock} - "
        f"every {interval:g}s - q: quit"
    )


def run_once(
    namespaces: Sequence[str] | None, url: str | None, interval: float = 1.0
) -> str:
    """One plain-text frame: two reads ``interval`` seconds apart (for the rates)."""
    previous: dict[tuple[str, str], tuple[float, QueueStats]] = {}
    compute_rows(collect(namespaces, url, timeout=READ_TIMEOUT), previous)
    time.sleep(interval)
    samples = collect(namespaces, url, timeout=READ_TIMEOUT)
    rows = compute_rows(samples, previous)
    lines = [_title(samples, interval), *render(rows)]
    if not rows:
        lines.append("(no queues)")
    return "\n".join(lines)


class _Terminated(Exception):
    pass


def _on_term(signum: int, frame: FrameType | None) -> None:
    raise _Terminated


def run(namespaces: Sequence[str] | None, url: str | None, interval: float = 1.0) -> None:
    """The live view, until ``q``, Ctrl-C or SIGTERM; the terminal is restored."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise TopError(
            "mqueue top needs a terminal (standard input and output); "
            "use --once for a plain-text frame"
        )
    import curses

    _check_terminal()
    previous_term = signal.signal(signal.SIGTERM, _on_term)
    try:
        curses.wrapper(_loop, namespaces, url, interval)
    except (KeyboardInterrupt, _Terminated):
        pass  # curses.wrapper has already restored the terminal
    except curses.error as exc:
        raise TopError(f"mqueue top: the terminal cannot be driven: {exc}") from None
    finally:
        signal.signal(signal.SIGTERM, previous_term)


def _check_terminal() -> None:
    """Raise :class:`TopError` unless curses knows the terminal ``TERM`` names and it
    can move the cursor (``dumb`` cannot: the view would be one garbled line)."""
    import curses

    term = os.environ.get("TERM", "")
    try:
        curses.setupterm(term or None, sys.stdout.fileno())
        movable = curses.tigetstr("cup") is not None
    except curses.error as exc:
        problem = f"curses does not know it ({exc})"
    else:
        problem = "" if movable else "it cannot move the cursor"
    if problem:
        raise TopError(
            f"mqueue top cannot drive this terminal (TERM={term!r}): {problem}; "
            "use --once for a plain-text frame"
        )


def _loop(stdscr: Any, namespaces: Sequence[str] | None, url: str | None, interval: float) -> None:
    import curses

    with contextlib.suppress(curses.error):  # some terminals cannot hide the cursor
        curses.curs_set(0)
    stdscr.timeout(100)  # getch waits at most 0.1 s: keys are seen at once
    previous: dict[tuple[str, str], tuple[float, QueueStats]] = {}
    next_read = 0.0
    lines: list[str] = []
    title = ""
    error = ""
    while True:
        now = time.monotonic()
        if now >= next_read:
            next_read = now + interval
            try:
                samples = collect(namespaces, url, timeout=min(READ_TIMEOUT, max(1.0, interval)))
                rows = compute_rows(samples, previous)
                title = _title(samples, interval)
                lines = render(rows) if rows else ["(no queues)"]
                error = ""
            except Exception as exc:  # listing failed (Redis down, ...): show it, go on
                error = f"cannot list the namespaces: {exc}"
            _draw(stdscr, title, lines, error)
        ch = stdscr.getch()
        if ch in (ord("q"), ord("Q")):
            return
        if ch == curses.KEY_RESIZE:
            _draw(stdscr, title, lines, error)


def _draw(stdscr: Any, title: str, lines: list[str], error: str) -> None:
    import curses

    height, width = stdscr.getmaxyx()
    stdscr.erase()

    def put(y: int, text: str, attr: int = 0) -> None:
        if 0 <= y < height and width > 1:
            # curses.error: the last cell of the screen, or a character it cannot show
            with contextlib.suppress(curses.error):
                stdscr.addnstr(y, 0, text, width - 1, attr)

    put(0, title, curses.A_BOLD)
    y = 1
    if error:
        put(y, error, curses.A_BOLD)
        y += 1
    for i, line in enumerate(lines):
        put(y + i, line, curses.A_REVERSE if i == 0 and lines[0].startswith("NAMESPACE") else 0)
    if len(lines) + y > height:
        put(height - 1, f"... {len(lines) + y - height + 1} more line(s): enlarge the window")
    stdscr.refresh()
