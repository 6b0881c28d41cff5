"""The ``mqueue`` logger: silent by default, what happened at sensible levels.

``logging.getLogger("mqueue")`` carries a :class:`logging.NullHandler`, so
nothing is printed unless the application configures logging.  It records:

- WARNING ``mqueue``: lock recoveries (a process died holding a queue's lock
  and another one repaired the queue), when this process observes them: in
  :meth:`Queue.stats` (the demo and ``mqueue stats`` read it), and at every
  ``add``/``add_many`` while eviction logging is on;
- WARNING ``mqueue``: evictions (a bounded queue dropped its oldest items to
  make room), only when turned on with :func:`log_evictions` or the
  environment variable ``MQUEUE_LOG_EVICTIONS=1``: each ``add``/``add_many``
  then reads the queue's counters before and after (one more engine call per
  side), so leave it off on hot paths; when off, the adds run as before, with
  no logging work at all;
- INFO ``mqueue``: persistence saves and loads (:func:`persisted`);
- ERROR / WARNING ``mqueue``: backend faults (a damaged segment, a lost or
  refusing Redis server) as they are raised (:func:`fault`).

The counters a message reports are the queue's own (all processes); the
difference since this handle last looked is what the message is about.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ._core import redact_url

if TYPE_CHECKING:
    from ._core import Queue, QueueStats

logger = logging.getLogger("mqueue")
logger.addHandler(logging.NullHandler())

ENV_EVICTIONS = "MQUEUE_LOG_EVICTIONS"

_evictions = False
_classes: list[type[Queue]] = []  # every backend's Queue class (see register)
_WRAPPED = ("add", "add_many")


def observe(q: Queue, st: QueueStats) -> None:
    """Log what the counters ``st`` of queue ``q`` show that this handle has
    not seen yet: recoveries (always), evictions (when turned on)."""
    seen: tuple[int, int] | None = getattr(q, "_log_seen", None)
    q._log_seen = (st.recoveries, st.evicted)  # type: ignore[attr-defined]
    if seen is None:  # the first look: a baseline, not news
        return
    recovered = st.recoveries - seen[0]
    if recovered > 0:
        logger.warning(
            "namespace %r, queue %r: %d lock recovery(ies): a process died holding the "
            "queue's lock and the queue was repaired (recoveries total %d)",
            q._mq.namespace,
            q.name,
            recovered,
            st.recoveries,
        )
    evicted = st.evicted - seen[1]
    if _evictions and evicted > 0:
        logger.warning(
            "namespace %r, queue %r: %d item(s) evicted (the oldest, to make room; "
            "evicted total %d, queued %d, bound %d)",
            q._mq.namespace,
            q.name,
            evicted,
            st.evicted,
            st.length,
            st.size_limit,
        )


def _watching(name: str, orig: Callable[..., Any]) -> Callable[..., Any]:
    """``orig`` (an add method) with the counters read before and after."""

    @functools.wraps(orig)
    def watched(self: Queue, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_log_seen", None) is None:
            self.stats()  # the baseline (stats observes)
        try:
            return orig(self, *args, **kwargs)
        finally:
            with contextlib.suppress(Exception):  # logging never changes the outcome
                self.stats()

    watched.__mqueue_watch__ = orig  # type: ignore[attr-defined]
    return watched


def _observing(orig: Callable[..., QueueStats]) -> Callable[..., QueueStats]:
    """``stats`` that also logs what its counters show (not a hot path)."""

    @functools.wraps(orig)
    def stats(self: Queue) -> QueueStats:
        st = orig(self)
        with contextlib.suppress(Exception):  # logging never changes the outcome
            observe(self, st)
        return st

    return stats


def _apply(cls: type[Queue]) -> None:
    for name in _WRAPPED:
        current = cls.__dict__.get(name)
        if current is None:
            continue
        orig = getattr(current, "__mqueue_watch__", None)
        if _evictions and orig is None:
            setattr(cls, name, _watching(name, current))
        elif not _evictions and orig is not None:
            setattr(cls, name, orig)  # the method itself again: no cost at all


def register(cls: type[Queue]) -> None:
    """A backend's Queue class: its adds are watched while eviction logging is on."""
    if cls not in _classes:
        _classes.append(cls)
        st = cls.__dict__.get("stats")
        if st is not None:
            cls.stats = _observing(st)  # type: ignore[method-assign]
        _apply(cls)


def log_evictions(enabled: bool = True) -> None:
    """Turn logging of evictions on or off (for this process).

    When on, every ``add``/``add_many`` that makes a bounded queue drop its
    oldest items logs a WARNING on the ``mqueue`` logger, with the number
    dropped (it reads the queue's counters around each add: slower).  When
    off (the default, unless ``MQUEUE_LOG_EVICTIONS=1``), adds do no logging
    work.  New lock recoveries are logged by the same check.
    """
    global _evictions
    _evictions = bool(enabled)
    for cls in _classes:
        _apply(cls)


def evictions_logged() -> bool:
    """Whether :func:`log_evictions` is on."""
    return _evictions


def persisted(action: str, namespace: str, queue: str, count: int, db_url: str) -> None:
    """INFO: ``action`` ("saved" / "loaded") ``count`` items of a queue to/from a database."""
    logger.info(
        "namespace %r, queue %r: %s %d item(s) %s %s",
        namespace,
        queue,
        action,
        count,
        "to" if action == "saved" else "from",
        redact_url(db_url),
    )


_E = TypeVar("_E", bound=BaseException)


def fault(exc: _E, *, level: int = logging.ERROR) -> _E:
    """Log a backend fault that is about to be raised; returns ``exc``."""
    logger.log(level, "%s: %s", type(exc).__name__, exc)
    return exc


if os.environ.get(ENV_EVICTIONS, "").strip().lower() in ("1", "true", "yes", "on"):
    _evictions = True
