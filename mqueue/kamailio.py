"""Kamailio-compatible interface: the ``mqueue`` module's script functions.

For people porting a Kamailio configuration.  :class:`MQueueModule` mirrors the
module's parameters (``modparam``), its start-up and shut-down (``mod_init`` /
``mod_destroy``), its script functions with their exact return codes, its pseudo
variables and its RPC commands, on top of the same shared queues as the Pythonic
interface (:func:`mqueue.create` / :func:`mqueue.attach`)::

    from mqueue import kamailio

    m = kamailio.MQueueModule()
    m.modparam("mqueue", "name=myq;size=20;")
    m.modparam("mqueue_size", 10)
    m.modparam("mqueue_name", "qaz")
    m.init("sipproxy")                 # in the defining process; m.attach(...) elsewhere

    if m.mq_add("myq", "alice", "call from bob") == 1: ...
    while m.mq_fetch("myq") == 1:
        key, value = m.pv("$mqk(myq)"), m.pv("$mqv(myq)")
    m.close()

Return codes follow Kamailio, where a script function cannot return ``0``:
``mq_add`` 1 / -1, ``mq_fetch`` 1 / -1 (unknown queue) / -2 (empty),
``mq_pv_free`` always 1, ``mq_size`` n / -1 (empty) / -2 (unknown queue).

Where Kamailio fails silently or crashes we raise instead: a malformed
definition, an unknown parameter or a queue defined twice raise
:class:`~mqueue.DefinitionError` at the ``modparam`` call, and a queue with a
``dbmode`` but no ``db_url`` at :meth:`MQueueModule.init` at the latest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import mqueue

from ._core import Data
from ._defs import QueueDef, parse_syntax
from ._errors import (
    DefinitionError,
    ItemTypeError,
    MQueueError,
    QueueNotFoundError,
    RPCError,
)

if TYPE_CHECKING:
    from ._core import MQueue, Queue

__all__ = ["MQueueModule"]

_PV_RE = re.compile(r"^\$(mqk|mqv|mq_size)\((.*)\)$", re.DOTALL)

# RPC codes: Kamailio's for the errors it has; ours for the ones it does not.
RPC_BAD_REQUEST = 400
RPC_NOT_FOUND = 404
RPC_INTERNAL = 500


def _as_int(param: str, value: object) -> int:
    """Return ``value`` as an int for an integer modparam, or raise DefinitionError."""
    if isinstance(value, bool):
        raise DefinitionError(f"modparam {param!r}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip(), 10)
        except ValueError:
            pass
    raise DefinitionError(f"modparam {param!r}: expected an integer, got {value!r}")


class MQueueModule:
    """Kamailio's ``mqueue`` module: parameters, lifecycle, script functions, RPC.

    One instance per process.  The defining process calls the ``modparam``
    methods and then :meth:`init`; any other process (forked or started
    separately) calls :meth:`attach` with the same namespace.  A module
    inherited through ``fork`` keeps working in the child.

    Held items (``$mqk`` / ``$mqv``) belong to this process: another
    process's fetches never change them.
    """

    def __init__(self) -> None:
        self._defs: list[QueueDef] = []
        self._texts: list[str] = []  # the source of each definition, for messages
        self._size = 0
        self._addmode = 0
        self._db_url: str | None = None
        self._mq: MQueue | None = None

    # ------------------------------------------------------------------ config

    def modparam(self, name: str, value: object) -> None:
        """Set one module parameter, as ``modparam("mqueue", name, value)``.

        ``name`` is one of:

        - ``"mqueue"``: a queue definition string ``name=...;size=...;...``,
          parsed now; a malformed string or a name already defined raises
          :class:`~mqueue.DefinitionError`.
        - ``"mqueue_name"``: a queue named by the whole string (no parsing, so
          ``"q1;size=3"`` is a queue literally named so) with the
          ``mqueue_size`` and ``mqueue_addmode`` values set *before* this
          call; such a queue never has a dbmode.
        - ``"mqueue_size"``: integer, the ``size`` of later ``mqueue_name`` queues.
        - ``"mqueue_addmode"``: integer 0, 1 or 2, the ``addmode`` of later
          ``mqueue_name`` queues.
        - ``"db_url"``: the database for queues with a dbmode (for example
          ``sqlite:///path/to.db``).

        Any other name raises :class:`~mqueue.DefinitionError`.  Parameters
        can only be set before :meth:`init` / :meth:`attach`.
        """
        if self._mq is not None:
            raise MQueueError(f"modparam {name!r}: parameters must be set before init()")
        if name == "mqueue":
            if not isinstance(value, str):
                raise DefinitionError(f"modparam 'mqueue': expected a string, got {value!r}")
            # db_url may come later (modparams come in any order): init checks
            # that every dbmode queue has one
            self._add_def(parse_syntax(value), value)
        elif name == "mqueue_name":
            if not isinstance(value, str):
                raise DefinitionError(f"modparam 'mqueue_name': expected a string, got {value!r}")
            qdef = QueueDef(name=value, size=self._size, addmode=self._addmode, dbmode=0)
            self._add_def(qdef, value)
        elif name == "mqueue_size":
            self._size = _as_int(name, value)
        elif name == "mqueue_addmode":
            addmode = _as_int(name, value)
            if addmode not in (0, 1, 2):
                raise DefinitionError(
                    f"modparam 'mqueue_addmode': must be 0, 1 or 2, got {addmode}"
                )
            self._addmode = addmode
        elif name == "db_url":
            if not isinstance(value, str) or not value.strip():
                raise DefinitionError(f"modparam 'db_url': expected a URL string, got {value!r}")
            self._db_url = value.strip()
        else:
            raise DefinitionError(
                f"unknown modparam {name!r} for module mqueue (expected one of "
                "'mqueue', 'mqueue_name', 'mqueue_size', 'mqueue_addmode', 'db_url')"
            )

    def _add_def(self, qdef: QueueDef, text: str) -> None:
        for old, old_text in zip(self._defs, self._texts, strict=True):
            if old.name == qdef.name:
                raise DefinitionError(
                    f"queue {qdef.name!r} defined twice ({old_text!r} and {text!r})"
                )
        self._defs.append(qdef)
        self._texts.append(text)

    @property
    def definitions(self) -> list[QueueDef]:
        """The queue definitions given so far (after ``init``/``attach``: the live ones)."""
        if self._mq is not None:
            return list(self._mq.definitions)
        return list(self._defs)

    @property
    def db_url(self) -> str | None:
        """The ``db_url`` modparam, or ``None`` when not set."""
        return self._db_url

    # --------------------------------------------------------------- lifecycle

    def init(
        self,
        namespace: str,
        *,
        mode: int = mqueue.DEFAULT_MODE,
        exist_ok: bool = False,
        url: str | None = None,
        allow_owners: Iterable[int | str] = (),
        allow_world_writable: bool = False,
    ) -> None:
        """Create the queues in ``namespace`` (Kamailio's ``mod_init``).

        ``allow_owners`` / ``allow_world_writable``: as for :func:`mqueue.create`.

        Checks that every queue with a dbmode has a ``db_url``
        (:class:`~mqueue.DefinitionError` otherwise; Kamailio crashes), then
        calls :func:`mqueue.create`, which loads dbmode 1/2 queues.
        """
        if self._mq is not None:
            raise MQueueError("init(): the module is already initialised")
        if self._db_url is None:
            for qdef, text in zip(self._defs, self._texts, strict=True):
                if qdef.dbmode != 0:
                    raise DefinitionError(
                        f"queue {qdef.name!r} ({text!r}) has dbmode={qdef.dbmode} "
                        "but no db_url modparam is set"
                    )
        self._mq = mqueue.create(
            namespace,
            list(self._defs),
            db_url=self._db_url,
            mode=mode,
            exist_ok=exist_ok,
            url=url,
            allow_owners=allow_owners,
            allow_world_writable=allow_world_writable,
        )

    def attach(
        self,
        namespace: str,
        *,
        url: str | None = None,
        allow_owners: Iterable[int | str] = (),
        allow_world_writable: bool = False,
    ) -> None:
        """Attach to queues another process created with :meth:`init`.

        Kamailio's child processes share the queues created in ``mod_init``;
        here any process (forked or started separately) attaches by name.
        ``allow_owners`` / ``allow_world_writable``: as for :func:`mqueue.attach`.
        """
        if self._mq is not None:
            raise MQueueError("attach(): the module is already initialised")
        self._mq = mqueue.attach(
            namespace,
            url=url,
            allow_owners=allow_owners,
            allow_world_writable=allow_world_writable,
        )

    def close(self) -> None:
        """Detach (Kamailio's ``mod_destroy``).

        In the process that called :meth:`init`, this saves dbmode 1/3 queues.
        Calling it again does nothing.
        """
        mq, self._mq = self._mq, None
        if mq is not None:
            mq.close()

    def __enter__(self) -> MQueueModule:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"namespace={self._mq.namespace!r}" if self._mq is not None else "not initialised"
        return f"<MQueueModule {state}, {len(self.definitions)} queue(s)>"

    @property
    def namespace(self) -> str | None:
        """The namespace after ``init``/``attach``, else ``None``."""
        return self._mq.namespace if self._mq is not None else None

    def _require(self) -> MQueue:
        if self._mq is None:
            raise MQueueError("the mqueue module is not initialised: call init() or attach()")
        return self._mq

    def _queue(self, queue: str) -> Queue:
        """The handle of ``queue`` (the namespace's own, so held items stay
        with it); KeyError kind."""
        return self._require()[queue]

    # -------------------------------------------------------- script functions

    def mq_add(self, queue: str, key: Data, value: Data) -> int:
        """Kamailio ``mq_add(queue, key, value)``: append an item at the tail.

        Returns ``1`` on success, also when ``addmode=1`` dropped the new item
        for a duplicate key; ``-1`` for an unknown queue or a failed add (item
        larger than the queue, or a queue with no count bound full in bytes).
        A key or value that is neither ``str`` nor ``bytes`` is a programming
        error, not a failure: it raises :class:`TypeError`.
        """
        try:
            q = self._queue(queue)
        except QueueNotFoundError:
            return -1
        try:
            q.add(key, value)
        except ItemTypeError:
            raise
        except MQueueError:
            return -1
        return 1

    def mq_fetch(self, queue: str) -> int:
        """Kamailio ``mq_fetch(queue)``: take the oldest item as this process's held item.

        The previously held item of that queue is released first.  Returns
        ``1`` when an item was fetched (read it with ``pv("$mqk(q)")`` /
        ``pv("$mqv(q)")``), ``-2`` when the queue is empty (the held item is
        then cleared), ``-1`` for an unknown queue (held item untouched) or a
        failure.  Never waits.
        """
        try:
            q = self._queue(queue)
        except QueueNotFoundError:
            return -1
        try:
            item = q.fetch(timeout=0)
        except MQueueError:
            return -1
        if item is None:
            q.free()  # the fetch already released it; make "cleared" explicit
            return -2
        return 1

    def mq_pv_free(self, queue: str) -> int:
        """Kamailio ``mq_pv_free(queue)``: drop this process's held item. Always ``1``."""
        try:
            q = self._queue(queue)
        except QueueNotFoundError:
            return 1
        q.free()
        return 1

    def mq_size(self, queue: str) -> int:
        """Kamailio ``mq_size(queue)``: the number of queued items (held ones not counted).

        Returns ``n`` when ``n >= 1``, ``-1`` when the queue is empty (a
        Kamailio script function cannot return 0), ``-2`` for an unknown queue.
        """
        try:
            q = self._queue(queue)
        except QueueNotFoundError:
            return -2
        n = len(q)
        return n if n > 0 else -1

    # --------------------------------------------------------- pseudo-variables

    def pv(self, name: str) -> Data | int | None:
        """Read a pseudo-variable: ``$mqk(q)``, ``$mqv(q)`` or ``$mq_size(q)``.

        - ``$mqk(q)`` / ``$mqv(q)``: the key / value of the item this process
          fetched last from ``q`` with :meth:`mq_fetch`, ``None`` (Kamailio's
          ``$null``) when none is held.  An empty key is ``""``, not ``None``.
        - ``$mq_size(q)``: the number of queued items, ``0`` when empty.

        An unknown queue raises :class:`~mqueue.QueueNotFoundError` (a
        ``KeyError``); a malformed name raises :class:`~mqueue.DefinitionError`
        (a ``ValueError``).
        """
        if not isinstance(name, str):
            raise DefinitionError(f"pseudo-variable name must be a string, got {name!r}")
        m = _PV_RE.match(name.strip())
        if m is None or not m.group(2):
            raise DefinitionError(
                f"not an mqueue pseudo-variable: {name!r} "
                "(expected $mqk(queue), $mqv(queue) or $mq_size(queue))"
            )
        kind, queue = m.group(1), m.group(2)
        q = self._queue(queue)
        if kind == "mqk":
            return q.key
        if kind == "mqv":
            return q.value
        return len(q)

    # ---------------------------------------------------------------------- RPC

    def rpc(self, method: str, *args: Any) -> Any:
        """Run one of Kamailio's RPC commands and return its result.

        ``args`` are the command's parameters, as a JSON-RPC ``params`` list.
        Results, error codes and messages are those of Kamailio 5.6 over its
        ``jsonrpcs`` module (checked against the real server by
        ``tests/test_kamailio_real.py``), except where noted:

        - ``rpc("mqueue.get_size", q)`` -> ``{"name": q, "size": n}``
        - ``rpc("mqueue.get_sizes")`` -> ``[{"name": ..., "size": ...}, ...]``,
          the **newest-defined queue first**, as Kamailio lists them (the
          Pythonic :meth:`mqueue.MQueue.sizes` and the command line keep
          definition order)
        - ``rpc("mqueue.fetch", q)`` -> ``{"key": k, "val": v}``, removing the
          oldest item; this process's held item is not touched.  Unlike
          Kamailio, an item with an empty key or value is returned, not lost
          (Kamailio answers 500 ``Unexpected error (result)`` and drops it).

        Parameters beyond those a command uses are ignored, as Kamailio does.
        Errors raise :class:`~mqueue.RPCError` with ``code`` and ``message``:

        - no parameter, or a first parameter that is not a string:
          ``mqueue.get_size`` 400, ``mqueue.fetch`` 500, ``No queue name``;
        - an empty name: ``mqueue.get_size`` 400, ``mqueue.fetch`` 500,
          ``Invalid queue name``;
        - no such queue: 404 ``No such queue`` (Kamailio answers 500 for
          ``mqueue.fetch``: our deliberate fix);
        - ``mqueue.fetch`` of an empty queue: 404 ``Empty queue``;
        - an unknown command: 500 ``Method Not Found`` (as ``jsonrpcs``);
        - any command before :meth:`init` / :meth:`attach`: 500.
        """
        if method == "mqueue.get_sizes":
            mq = self._rpc_mq()
            return [{"name": n, "size": s} for n, s in reversed(mq.sizes().items())]
        if method == "mqueue.get_size":
            queue = self._rpc_name(args, RPC_BAD_REQUEST)
            return {"name": queue, "size": len(self._rpc_queue(queue))}
        if method == "mqueue.fetch":
            queue = self._rpc_name(args, RPC_INTERNAL)
            items = self._rpc_queue(queue).fetch_many(1, timeout=0)
            if not items:
                raise RPCError(RPC_NOT_FOUND, "Empty queue")
            return {"key": items[0].key, "val": items[0].value}
        raise RPCError(RPC_INTERNAL, "Method Not Found")

    @staticmethod
    def _rpc_name(args: tuple[Any, ...], code: int) -> str:
        """The queue name parameter; ``code`` is the command's code for a bad one.

        Kamailio scans one string: a missing or non-string first parameter is
        "No queue name", an empty one "Invalid queue name".
        """
        if not args or not isinstance(args[0], str):
            raise RPCError(code, "No queue name")
        if not args[0]:
            raise RPCError(code, "Invalid queue name")
        return args[0]

    def _rpc_mq(self) -> MQueue:
        if self._mq is None:
            raise RPCError(RPC_INTERNAL, "mqueue module not initialised")
        return self._mq

    def _rpc_queue(self, queue: str) -> Queue:
        self._rpc_mq()
        try:
            return self._queue(queue)
        except QueueNotFoundError:
            raise RPCError(RPC_NOT_FOUND, "No such queue") from None
