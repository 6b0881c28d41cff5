"""mqueue.asyncio on Redis: redis-py's asyncio client, no threads.

The operations are those of the sync backend (:mod:`mqueue._redis`): the same
Lua scripts (imported from there, not copied), the same keys, the same
operation ids with recorded replies, the same retry window and error
classification, the same wake-up tokens.  What differs is only how calls wait:

- Connections: a handle keeps at most :data:`POOL_SIZE` connections per server
  (per cluster node) for operations that do not wait, shared by all its tasks
  (more tasks queue for them), plus, per queue that has waiting tasks, one
  connection that waits for them (below).  No thread at all.
- Waiting: a fetch first takes without waiting.  When the queue is empty, the
  tasks of one handle waiting on one queue line up (FIFO); the first sends
  ``BLPOP`` on the queue's wake list with the take script pipelined behind it
  (one round trip, as the sync backend does), in slices of
  :data:`mqueue._redis.WAIT_SLICE_S`, and hands its place to the next when it
  took items or leaves.  So 1,000 tasks waiting on 8 queues hold 8 waiting
  connections.
- Sessions: an operation id names a session and a number; the sync backend has
  one session per thread, here every operation in flight has a session of its
  own (taken from a free list), so that its recorded reply is not overwritten
  by another task's operation.
- Cancellation: a take whose task is cancelled while the command may be on the
  wire is *settled*: its session is retired and a background task runs the
  resolve script on its operation id: the items it took (if it ran) go to the
  handle's next fetch, and if it had not run it can no longer run.  A fetch
  first waits for the settlements its handle has in progress.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from typing import Any

from . import _redis as R
from ._core import Data, Item, QueueStats
from ._errors import BackendError, MQueueError

POOL_SIZE = 16
"""Connections per Redis server (per cluster node) that the operations of one
asyncio handle share; a queue with waiting tasks holds one more while they wait."""

log = logging.getLogger(__name__)

_BLPOP = "BLPOP"
WAIT_SLICE_S = R.WAIT_SLICE_S


def _drop(c: Any) -> None:
    """Close a connection at once, without awaiting anything (so that a
    cancelled or closing task cannot stop half-way); it is not used again."""
    w = getattr(c, "_writer", None)
    if w is not None:
        with contextlib.suppress(Exception):
            w.close()
        c._writer = c._reader = None


def _cancel_requests(task: asyncio.Task[Any] | None) -> int:
    """The cancellations requested of ``task`` and not withdrawn (Python
    3.11+: ``Task.cancelling``; 0 where it does not exist)."""
    f = getattr(task, "cancelling", None)
    return int(f()) if f is not None else 0


def _expire(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(False)


class _Conns:
    """Connections to one server or cluster node: idle ones, and a bound on
    those in use (None: no bound)."""

    def __init__(self, make: Callable[[], Any], limit: int | None) -> None:
        self.make = make
        self.sem = asyncio.Semaphore(limit) if limit else None
        self.idle: list[Any] = []
        self.all: set[Any] = set()

    async def get(self) -> Any:
        if self.sem is not None:
            await self.sem.acquire()
        while self.idle:
            c = self.idle.pop()
            reader = getattr(c, "_reader", None)
            # closed by the server while idle (restart, timeout, CLIENT KILL):
            # replaced before anything is sent on it
            if c.is_connected and reader is not None and not reader.at_eof():
                return c
            self.all.discard(c)
            _drop(c)
        c = self.make()
        self.all.add(c)
        return c

    def put(self, c: Any, ok: bool) -> None:
        if ok and c.is_connected:
            self.idle.append(c)
        else:
            self.all.discard(c)
            _drop(c)
        if self.sem is not None:
            self.sem.release()

    def close(self) -> None:
        """Close every connection (one in use fails its operation at once)."""
        conns, self.all, self.idle = list(self.all), set(), []
        for c in conns:
            _drop(c)


class _Session:
    __slots__ = ("sid", "n")

    def __init__(self) -> None:
        self.sid = os.urandom(8).hex()
        self.n = 0


class RedisLink:
    """The redis.asyncio side of one asyncio handle on a Redis namespace: its
    client, connections and sessions (the sync handle gives the namespace's
    name, generation, URL and retry window)."""

    def __init__(self, sync: Any) -> None:
        self.sync = sync
        self.url: str = sync.url
        self.cluster: bool = bool(sync.is_cluster)
        self.closed = False
        self._client: Any = None
        self._client_lock: asyncio.Lock | None = None
        self._ops: dict[str, _Conns] = {}
        self._waits: dict[str, _Conns] = {}
        self._free: list[_Session] = []

    # -- clients and connections ------------------------------------------
    async def client(self) -> Any:
        if self._client is not None:
            return self._client
        if self._client_lock is None:
            self._client_lock = asyncio.Lock()
        async with self._client_lock:
            if self._client is None:
                self._client = await _connect(self.url, self.cluster)
        return self._client

    async def _pool(self, key: str, ask: Any, wait: bool) -> _Conns:
        client = await self.client()
        if self.cluster:
            node = ask if ask is not None else client.get_node_from_key(key)
            name = str(node.name)
            cls, kw = node.connection_class, node.connection_kwargs
        else:
            name = ""
            cp = client.connection_pool
            cls, kw = cp.connection_class, cp.connection_kwargs
        pools = self._waits if wait else self._ops
        p = pools.get(name)
        if p is None:
            # no socket timeout of redis-py's own: it wraps writes in
            # asyncio.wait_for, which (Python < 3.12) can swallow a
            # cancellation; send() bounds each exchange itself
            kw = {**kw, "socket_timeout": None}
            p = pools[name] = _Conns(lambda: cls(**kw), None if wait else POOL_SIZE)
        return p

    async def send(
        self, key: str, cmds: list[bytes], ask: Any = None, *, wait: bool = False
    ) -> list[Any]:
        """One attempt: ``cmds`` pipelined on one connection to the node that
        serves ``key`` (``ask``: that node, after ASKING); every reply read.
        Error replies are returned, not raised.  ``wait``: on a waiting
        connection (the caller holds its queue's wait turn)."""
        if self.closed:
            raise MQueueError("the namespace handle is closed")
        pool = await self._pool(key, ask, wait)
        conn = await pool.get()
        ok = False
        # a silent server: the connection is dropped, the read fails ("lost")
        timer = asyncio.get_running_loop().call_later(
            R.SOCKET_TIMEOUT_S + (WAIT_SLICE_S if wait else 0.0), _drop, conn
        )
        try:
            w = conn._writer
            if w is not None and R._stale(w.get_extra_info("socket")):
                _drop(conn)
            if not conn.is_connected:
                try:
                    await conn.connect()
                except Exception as e:
                    R._unsent(e)  # nothing of the operation was sent
                    raise
            if ask is not None:
                cmds = [R._ASKING, *cmds]
            await conn.send_packed_command(cmds, check_health=False)
            rerr = R._redis_module().exceptions.ResponseError
            out: list[Any] = []
            for _ in cmds:
                try:
                    out.append(await conn.read_response(disconnect_on_error=True))
                except rerr as e:
                    out.append(e)
            ok = not self.closed
        finally:
            timer.cancel()
            pool.put(conn, ok)
        return out[1:] if ask is not None else out

    async def refresh_slots(self) -> None:
        with contextlib.suppress(Exception):
            await (await self.client()).nodes_manager.initialize()

    def node(self, host: str, port: int) -> Any:
        return self._client.get_node(host=host, port=port) if self._client else None

    # -- sessions ----------------------------------------------------------
    def session(self) -> _Session:
        return self._free.pop() if self._free else _Session()

    def done_with(self, s: _Session) -> None:
        """The session's last operation has its reply: it may be used again."""
        self._free.append(s)

    async def close(self) -> None:
        self.closed = True
        for p in (*self._ops.values(), *self._waits.values()):
            p.close()
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()


async def _connect(url: str, cluster: bool) -> Any:
    """A redis.asyncio client for ``url`` (a cluster client, its slots read,
    when the sync handle found a cluster there); redis-py's errors propagate."""
    opts: dict[str, Any] = {
        "socket_timeout": R.SOCKET_TIMEOUT_S,
        "socket_connect_timeout": R.CONNECT_TIMEOUT_S,
        "decode_responses": False,
    }
    if not cluster:
        from redis.asyncio import Redis

        return Redis.from_url(url, **opts)
    from redis.asyncio.cluster import RedisCluster

    c = RedisCluster.from_url(url, **opts)
    try:
        await c.initialize()  # its errors are retried as any connection fault
    except BaseException:
        with contextlib.suppress(Exception):
            await c.aclose()
        raise
    return c


class RedisRun:
    """Runs one queue's scripts as the sync backend does (``RedisQueue._run``),
    over redis.asyncio: op ids, retries with the same id for the retry
    window, NOSCRIPT, MOVED/ASK, a handle closed meanwhile."""

    def __init__(self, link: RedisLink, sq: Any) -> None:
        self.link = link
        self.sq = sq  # the sync RedisQueue: keys, messages, record encoding

    def _cmd(
        self, script: Any, args: list[Any], sid: str | None
    ) -> tuple[list[str], list[Any], bytes]:
        keys = list(self.sq._keys)
        if sid is not None:
            keys.append(f"{self.sq._tag}:op:{sid}")
        fixed = [script.sha, len(keys), *keys, self.sq._mq._gen]
        return keys, fixed, R._resp(["EVALSHA", *fixed, *args])

    async def run(
        self,
        script: Any,
        args: list[Any],
        *,
        op: tuple[str, str] | None = None,
        resolve: tuple[str, str] | None = None,
        wait: float = 0.0,
    ) -> Any:
        """Run ``script``; ``op`` = (session, id) of an operation (the id goes
        first in ARGV), ``resolve`` = (session, id) of the operation that
        _RESOLVE settles.  ``wait``: BLPOP the wake list that long first, on
        the queue's waiting connection.  Returns the script's reply."""
        link, sq = self.link, self.sq
        named = op or resolve
        if op is not None:
            args = [op[1], *args]
        elif resolve is not None:
            args = [resolve[1]]
        keys, fixed, cmd = self._cmd(script, args, named[0] if named else None)
        cmds = [R._resp([_BLPOP, keys[3], f"{wait:.3f}"]), cmd] if wait else [cmd]
        ask: Any = None
        att = R._Attempts(sq, op is not None)
        task = asyncio.current_task()
        cancels = _cancel_requests(task)
        while True:
            try:
                replies = await link.send(keys[0], cmds, ask, wait=bool(wait))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if _cancel_requests(task) > cancels:
                    # the task was cancelled and something below turned it
                    # into a fault (a timeout helper of the client library
                    # can, when the cancel meets its own deadline): a
                    # cancellation, not a fault to retry
                    raise asyncio.CancelledError from e
                if link.closed:
                    return await self.after_close(op)
                att.failed(e)
                if link.cluster:
                    await link.refresh_slots()  # after a failover no MOVED comes from a dead master
            else:
                r = replies[-1]
                ask = None
                what = att.reply(r)
                if what == "ok":
                    return r
                if what == "noscript":
                    cmds = [R._resp(["EVAL", script.src, *fixed[1:], *args])]
                    continue
                if what == "ask":
                    ask = link.node(r.host, r.port)
                    if ask is not None:
                        cmds = [cmd]
                        continue
                    att.refused(r)
                if what in ("ask", "moved"):
                    await link.refresh_slots()
            cmds = [cmd]  # a retry runs the script alone (a wait is not repeated)
            pause = att.pause()
            if pause:
                await asyncio.sleep(pause)

    async def after_close(self, op: tuple[str, str] | None) -> Any:
        """The handle was closed while this operation was on the wire: settle
        it on a connection of its own (as the sync backend does).  Returns its
        reply when it ran; raises the closed error when it had not (it then
        can no longer run)."""
        if op is None:
            raise R._closed_error(self.sq._what)
        try:
            c = await _connect(self.link.url, self.link.cluster)
            try:
                keys = [*self.sq._keys, f"{self.sq._tag}:op:{op[0]}"]
                res = await c.eval(R._RESOLVE.src, len(keys), *keys, self.sq._mq._gen, op[1])
            finally:
                await c.aclose()
        except Exception as e:
            raise self.sq._closed_unknown(e) from None
        return self.sq._closed_result(res)


class WaitTurn:
    """The tasks of one handle waiting on one queue line up here: one at a
    time waits on the server (holding the queue's waiting connection)."""

    __slots__ = ("busy", "line")

    def __init__(self) -> None:
        self.busy = False
        self.line: collections.deque[asyncio.Future[bool]] = collections.deque()

    async def take(self, deadline: float | None) -> bool:
        """Wait for the turn until ``deadline`` (loop time; None: forever).
        True: the caller has it (and must :meth:`give`); False: deadline."""
        if not self.busy:
            self.busy = True
            return True
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self.line.append(fut)
        timer = None if deadline is None else loop.call_at(deadline, _expire, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.result():
                self.give()  # handed to us as we were cancelled: pass it on
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def give(self) -> None:
        while self.line:
            f = self.line.popleft()
            if not f.done():
                f.set_result(True)
                return
        self.busy = False


class Ops:
    """The operations of one queue of an asyncio Redis handle."""

    def __init__(self, link: RedisLink, sq: Any) -> None:
        self.link = link
        self.sq = sq
        self.runner = RedisRun(link, sq)
        self.turn = WaitTurn()
        self.settling: set[asyncio.Task[None]] = set()

    async def _op(self, script: Any, args: list[Any], *, wait: float = 0.0) -> Any:
        """Run an operation on a session of its own.  If it ends without its
        reply (cancelled, failed), the session is retired; a take is settled
        in the background (its items go to the handle's next fetch)."""
        s = self.link.session()
        s.n += 1
        op = (s.sid, str(s.n))
        try:
            res = await self.runner.run(script, args, op=op, wait=wait)
        except BaseException as e:
            known = isinstance(e, MQueueError) and getattr(e, "outcome_known", None) is True
            if script is R._TAKE and not self.link.closed and not known:
                # it may have run: its items must reach the next fetch
                t = asyncio.get_running_loop().create_task(self._settle(op))
                self.settling.add(t)
                t.add_done_callback(self._settled_one)
            raise
        self.link.done_with(s)
        return res

    def _settled_one(self, t: asyncio.Task[None]) -> None:
        # the task stays listed (with its error) until a fetch collected it
        if not t.cancelled() and t.exception() is None:
            self.settling.discard(t)

    async def _settle(self, op: tuple[str, str]) -> None:
        try:
            res = await self.runner.run(R._RESOLVE, [], resolve=op)
        except MQueueError:
            if self.link.closed:
                return  # closed meanwhile: nobody to hand the items to
            raise
        if isinstance(res, list) and res and int(res[0]) == 1 and isinstance(res[1], list):
            self.sq._undelivered.extend(R._decode_record(r) for r in res[1][1:])

    async def _collect(self) -> None:
        """Wait for the settlements in progress (their items come first); the
        error of one that failed is raised once."""
        while self.settling:
            ts = list(self.settling)
            await asyncio.shield(asyncio.gather(*ts, return_exceptions=True))
            err: BaseException | None = None
            for t in ts:
                if t in self.settling:  # not collected by a task that waited too
                    self.settling.discard(t)
                    if err is None and not t.cancelled():
                        err = t.exception()
            if err is not None:
                raise err

    # -- operations --------------------------------------------------------
    async def add(self, key: Data, value: Data) -> bool:
        rec = self.sq._record(key, value)
        return bool(self.sq._add_result(await self._op(R._ADD, [rec])) == 1)

    async def add_many(self, items: Iterable[tuple[Data, Data]]) -> int:
        recs = self.sq._records(items)
        if not recs:
            return 0
        return int(self.sq._add_result(await self._op(R._ADD, recs)))

    async def stats(self) -> QueueStats:
        return self.sq._stats_from(await self.runner.run(R._STATS, []))  # type: ignore[no-any-return]

    async def size(self) -> int:
        return (await self.stats()).length

    async def _take_once(self, n: int, wait: float) -> list[Item]:
        res = await self._op(R._TAKE, [n], wait=wait)
        if not isinstance(res, list):
            if int(res) in (-1, -4):
                raise self.sq._lost(int(res))
            raise BackendError(f"{self.sq._what}: unexpected reply {res!r} from Redis")
        return [R._decode_record(r) for r in res[1:]]

    def _kept(self, n: int) -> list[Item]:
        sq = self.sq
        if not sq._undelivered:
            return []
        if n == 1:
            it = sq._deliver()
            return [] if it is None else [it]
        return list(sq._deliver_many(n))

    async def take(self, n: int, timeout: float | None) -> list[Item]:
        """Up to n items, waiting up to ``timeout`` s (None: forever) while
        the queue is empty; [] at the deadline (after one last look)."""
        if self.settling:
            await self._collect()
        kept = self._kept(n)
        if kept:
            return kept
        items = await self._take_once(n, 0.0)
        if items or timeout == 0:
            return items
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if not await self.turn.take(deadline):
            return await self._take_once(n, 0.0)  # the deadline passed in line: one last look
        try:
            while True:
                if self.settling:
                    await self._collect()
                kept = self._kept(n)
                if kept:
                    return kept
                if deadline is None:
                    w = WAIT_SLICE_S
                else:
                    left = deadline - loop.time()
                    if left <= 0:
                        return []
                    w = max(min(left, WAIT_SLICE_S), 0.001)
                items = await self._take_once(n, w)
                if items:
                    return items
        finally:
            self.turn.give()

