"""The Redis backend: the same queues and semantics on a server or a cluster.

Chosen by ``url="redis://host:port/db"`` (also ``rediss://`` and
``unix:///path/to/socket``); the URL of a Redis Cluster node gives a cluster
client (detected with ``INFO cluster``).  Every queue operation is one Lua
script run atomically by the server (``EVALSHA``) on one slot, so two clients
on two machines never see a half-done add, eviction or dedup, and a client
killed in the middle of an operation leaves the queue as it was before or
after it.

Keys (``<ns>`` and ``<q>`` escaped, see :func:`_esc`)::

    mqueue:{<ns>}:defs           the namespace's definitions (JSON), attach reads it
    mqueue:{<ns>:<q>}:meta       hash: configuration and counters of queue <q>
    mqueue:{<ns>:<q>}:rec        hash: sequence number -> record (the FIFO)
    mqueue:{<ns>:<q>}:idx        hash: key bytes -> sequence number (addmode 1/2)
    mqueue:{<ns>:<q>}:wake       list: wake-up token for blocked fetches
    mqueue:{<ns>:<q>}:op:<sid>   string (TTL): reply of session <sid>'s last operation

The keys of one queue share a hash tag, so every script touches one slot only.
A record is ``flags (1 byte) | klen (4 bytes, big-endian) | key | value``; a
record replaced by addmode 2 becomes a tombstone ``"\\xff" <size>`` that keeps
its bytes accounted until the head passes it, exactly as in shared memory.

Fetch blocks without polling: the client sends ``BLPOP`` on the queue's wake
list and the take script together (an add pushes one token when none is
there; a take that leaves items behind passes a token on); the wait is cut
into slices of :data:`WAIT_SLICE_S` so that Ctrl-C works and a lost token only
delays.

Faults: each add and take carries an operation id; the script records its
reply under the id (same atomic step) and answers a repeated id from the
record.  Connection faults and "not now" answers are retried with the same id
for :data:`RETRY_WINDOW_S`; only then does :class:`BackendError` reach the
caller, with ``outcome_known``.  A queue whose keys vanished (destroyed,
recreated, a restart without persistence, eviction) raises
:class:`NamespaceLostError`.  See docs/redis.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from ._core import (
    FLAG_KEY_STR,
    FLAG_VAL_STR,
    Data,
    Item,
    MQueue,
    Queue,
    QueueStats,
    align8,
    check_mode,
    check_namespace,
    deadline_after,
    encode,
    record_size,
    redact_url,
)
from ._defs import QueueDef
from ._errors import (
    AccessDeniedError,
    ArgumentError,
    BackendError,
    CorruptSegmentError,
    DefinitionError,
    ItemTooLargeError,
    ItemTypeError,
    MQueueError,
    NamespaceExistsError,
    NamespaceLostError,
    NamespaceNotFoundError,
    QueueFullError,
)

WAIT_SLICE_S = 1.0
"""Longest single BLPOP of a blocking fetch; the take is re-run after each slice."""

ATTACH_WAIT_S = 2.0
"""How long attach waits for a namespace that another process is still creating."""

SOCKET_TIMEOUT_S = 30.0
"""Socket timeout of the client: a silent server is reported after this long."""

CONNECT_TIMEOUT_S = 5.0
"""Longest wait for one connection to be made."""

RETRY_WINDOW_S = 10.0
"""How long an operation is retried across connection faults (with backoff,
with the same operation id) before BackendError reaches the caller; per handle
as ``RedisNamespace.retry_window``."""

OP_RECORD_TTL_S = 300
"""How long the server keeps an operation's recorded reply (one per session
and queue): a retry within this time gets the recorded reply."""

_TOMBSTONE = 0xFF
_FORMAT = 1

log = logging.getLogger(__name__)


# --------------------------------------------------------------------- keys
def _esc(name: str) -> str:
    """Escape ``%``, ``:``, ``{`` and ``}`` (percent-encoding) so that a name
    can neither end a hash tag nor be confused with the separator."""
    if not any(c in name for c in "%:{}"):
        return name
    return name.replace("%", "%25").replace(":", "%3A").replace("{", "%7B").replace("}", "%7D")


def defs_key(namespace: str) -> str:
    """The key holding a namespace's definitions."""
    return f"mqueue:{{{_esc(namespace)}}}:defs"


def queue_keys(namespace: str, queue: str) -> list[str]:
    """The keys of one queue: meta, rec, idx, wake (one hash tag)."""
    tag = f"mqueue:{{{_esc(namespace)}:{_esc(queue)}}}"
    return [f"{tag}:meta", f"{tag}:rec", f"{tag}:idx", f"{tag}:wake"]


def _glob_esc(s: str) -> str:
    out = []
    for c in s:
        out.append("\\" + c if c in "*?[]\\" else c)
    return "".join(out)


# ------------------------------------------------------------------ scripts
# Lua helpers shared by the scripts.  Numbers are Lua doubles: exact to 2**53.
#
# Operation records (exactly once across lost replies): KEYS[5] of add and
# take is the calling session's record key ``<tag>:op:<session>`` and ARGV[2]
# the operation id.  A script first looks for a record of this id and returns
# the recorded reply if there is one (the operation already ran: its reply was
# lost); otherwise it runs and records its reply under the id, in the same
# atomic step, for OP_RECORD_TTL_S seconds.  A session is one thread of one
# handle and runs one operation at a time, so one record per session is enough.
#
# Lost keys: a queue whose meta hash is gone, or carries another creation id,
# answers -1; one whose records or key index the server dropped (eviction)
# answers -4 and is marked so for good (its gen becomes "!<gen>").
_LUA_COMMON = r"""
local function recsize(r)
  if string.byte(r, 1) == 255 then return tonumber(string.sub(r, 2)), true end
  local n = 24 + #r - 5
  return n + (8 - n % 8) % 8, false
end
local function reckey(r)
  local kl = ((string.byte(r, 2) * 256 + string.byte(r, 3)) * 256
              + string.byte(r, 4)) * 256 + string.byte(r, 5)
  return string.sub(r, 6, 5 + kl)
end
-- the queue's state: one field 'st' of the meta hash, 10 big-endian doubles
-- (exact to 2**53): head tail count bytes added fetched evicted dups hw recoveries
local ST = '>dddddddddd'
local function gone(g)
  if g and string.sub(g, 1, 1) == '!' then return -4 end
  return -1
end
local function intact(head, tail, count, mode)
  if head < tail and redis.call('EXISTS', KEYS[2]) == 0 then return false end
  if mode ~= 0 and count > 0 and redis.call('EXISTS', KEYS[3]) == 0 then return false end
  return true
end
local function evicted()
  redis.call('HSET', KEYS[1], 'gen', '!' .. ARGV[1])
  return -4
end
"""

_LUA_OPS = r"""
local function recorded()
  local r = redis.call('GET', KEYS[5])
  if r then
    local id, res = cmsgpack.unpack(r)
    if id == ARGV[2] then return true, res end
  end
  return false, nil
end
local function record(res)
  redis.call('SET', KEYS[5], cmsgpack.pack(ARGV[2], res), 'EX', OP_TTL)
end
"""

# KEYS: meta rec idx wake op.  ARGV: gen, opid, then the records, in order.
# Returns the number stored (>= 0), -1 namespace gone, -2 full, -3 too big,
# -4 keys evicted.
#
# Each item follows csrc/mq.c add_one, in order: (1) addmode 1/2 look the key up
# among queued live items (earlier items of the batch included); addmode 1
# drops the new item, addmode 2 turns the old record into a tombstone;
# (2) tombstones at the head are reclaimed (on every queue); (3) an unbounded
# queue that still has no room fails the whole batch; (4) a bounded one evicts
# from the head until the count and the bytes fit; (5) the record is stored.
# An unbounded batch is first run dry: the same pass with every write kept in
# Lua tables (records, tombstones and key index as they would be), so -2 is
# returned before anything is written, exactly when shared memory refuses.
_LUA_ADD = (
    _LUA_COMMON
    + _LUA_OPS
    + r"""
local done, res = recorded()
if done then return res end
local m = redis.call('HMGET', KEYS[1], 'gen', 'cap', 'limit', 'mode', 'st')
if m[1] ~= ARGV[1] then return gone(m[1]) end
local cap, limit, mode = tonumber(m[2]), tonumber(m[3]), tonumber(m[4])
local S = {struct.unpack(ST, m[5])}
if not intact(S[1], S[2], S[3], mode) then return evicted() end
local n = #ARGV - 2
local keys = {}
for i = 1, n do
  local r = ARGV[2 + i]
  if recsize(r) > cap then return -3 end
  if mode ~= 0 then keys[i] = reckey(r) end
end

-- One pass over the batch.  dry: nothing is written (recs: seq -> record as
-- it would be, idx: key -> seq or false); returns -2 when an item does not fit.
local function pass(dry)
  local head, tail, count, bytes = S[1], S[2], S[3], S[4]
  local added, evicted, dups, hw = S[5], S[7], S[8], S[9]
  local recs, idx = {}, {}
  local function rget(s)
    if dry and recs[s] then return recs[s] end
    local r = redis.call('HGET', KEYS[2], s)
    if not r then error('mqueue: record ' .. s .. ' missing (keys evicted?)') end
    return r
  end
  local function rset(s, r)
    if dry then recs[s] = r else redis.call('HSET', KEYS[2], s, r) end
  end
  local function rdel(s)
    if dry then recs[s] = nil else redis.call('HDEL', KEYS[2], s) end
  end
  local function iget(k)
    if dry and idx[k] ~= nil then return idx[k] end
    local s = redis.call('HGET', KEYS[3], k)
    if s then return tonumber(s) end
    return false
  end
  local function iset(k, s)
    if dry then idx[k] = s else redis.call('HSET', KEYS[3], k, s) end
  end
  local function idel(k)
    if dry then idx[k] = false else redis.call('HDEL', KEYS[3], k) end
  end
  local stored = 0
  for i = 1, n do
    local r = ARGV[2 + i]
    local R = recsize(r)
    local k = keys[i]
    local drop = false
    -- 1. dedup against queued live items
    if mode ~= 0 then
      local old = iget(k)
      if old then
        dups = dups + 1
        if mode == 1 then
          added = added + 1
          drop = true
        else
          rset(old, '\255' .. recsize(rget(old)))
          count = count - 1
        end
      end
    end
    if not drop then
      -- 2. replaced records at the head hold no item: reclaim their bytes
      -- (only addmode 2 ever leaves replaced records)
      while mode == 2 and head < tail do
        local hR, dead = recsize(rget(head))
        if not dead then break end
        rdel(head)
        bytes = bytes - hR
        head = head + 1
      end
      -- 3. an unbounded queue without room refuses the whole batch
      if limit <= 0 and bytes + R > cap then
        if dry then return -2 end
        error('mqueue add: the dry run and the real pass disagree')
      end
      -- 4. a bounded queue drops from the head until the count and the bytes fit
      while (limit > 0 and count + 1 > limit) or bytes + R > cap do
        local h = rget(head)
        local hR, dead = recsize(h)
        rdel(head)
        if not dead then
          count = count - 1
          evicted = evicted + 1
          if mode ~= 0 then idel(reckey(h)) end
        end
        bytes = bytes - hR
        head = head + 1
      end
      -- 5. store at the tail
      rset(tail, r)
      if mode ~= 0 then iset(k, tail) end
      tail = tail + 1
      count = count + 1
      added = added + 1
      bytes = bytes + R
      if count > hw then hw = count end
      stored = stored + 1
    end
  end
  if not dry then
    redis.call('HSET', KEYS[1], 'st', struct.pack(ST, head, tail, count, bytes, added, S[6],
                                                  evicted, dups, hw, S[10]))
    if count > 0 and redis.call('LLEN', KEYS[4]) == 0 then redis.call('RPUSH', KEYS[4], 1) end
  end
  return stored
end

if limit <= 0 and pass(true) < 0 then return -2 end
local stored = pass(false)
record(stored)
return stored
"""
)

# KEYS: meta rec idx wake op.  ARGV: gen, opid, n.  Returns a list: the number
# of items left queued, then the records taken (oldest first, possibly none);
# or -1 namespace gone, -4 keys evicted.
_LUA_TAKE = (
    _LUA_COMMON
    + _LUA_OPS
    + r"""
local done, res = recorded()
if done then return res end
local m = redis.call('HMGET', KEYS[1], 'gen', 'mode', 'st')
if m[1] ~= ARGV[1] then return gone(m[1]) end
local mode = tonumber(m[2])
local S = {struct.unpack(ST, m[3])}
local head, tail, count, bytes = S[1], S[2], S[3], S[4]
if not intact(head, tail, count, mode) then return evicted() end
local fetched = S[6]
local want = tonumber(ARGV[3])
local out = {0}
local head0 = head
while head < tail do
  local h = redis.call('HGET', KEYS[2], head)
  if not h then return evicted() end
  local hR, dead = recsize(h)
  if not dead then
    if #out > want then break end
    out[#out + 1] = h
    count = count - 1
    fetched = fetched + 1
    if mode ~= 0 then redis.call('HDEL', KEYS[3], reckey(h)) end
  end
  redis.call('HDEL', KEYS[2], head)
  bytes = bytes - hR
  head = head + 1
end
if head ~= head0 then
  redis.call('HSET', KEYS[1], 'st', struct.pack(ST, head, tail, count, bytes, S[5], fetched,
                                                S[7], S[8], S[9], S[10]))
end
if count > 0 then
  if redis.call('LLEN', KEYS[4]) == 0 then redis.call('RPUSH', KEYS[4], 1) end
else
  redis.call('DEL', KEYS[4])
end
out[1] = count
if #out > 1 then record(out) end
return out
"""
)

# KEYS: meta rec idx.  ARGV: gen.  The counters of a queue, or -1 / -4.
_LUA_STATS = (
    _LUA_COMMON
    + r"""
local m = redis.call('HMGET', KEYS[1], 'gen', 'cap', 'limit', 'mode', 'st')
if m[1] ~= ARGV[1] then return gone(m[1]) end
local S = {struct.unpack(ST, m[5])}
if not intact(S[1], S[2], S[3], tonumber(m[4])) then return evicted() end
return {S[3], S[5], S[6], S[7], S[8], S[9], S[10], S[4], tonumber(m[2]), tonumber(m[3]),
        tonumber(m[4])}
"""
)

# KEYS: meta rec idx wake op.  ARGV: gen, opid.  Settles an operation whose
# reply was lost for good (cut short by an exception, or its handle closed
# meanwhile): {1, reply} when it ran; otherwise records it as cancelled, so
# that it can no longer run, and returns {0}.
_LUA_RESOLVE = (
    r"""
local r = redis.call('GET', KEYS[5])
if r then
  local id, res = cmsgpack.unpack(r)
  if id == ARGV[2] then return {1, res} end
end
redis.call('SET', KEYS[5], cmsgpack.pack(ARGV[2], -5), 'EX', OP_TTL)
return {0}
"""
)

# KEYS: meta rec idx wake.  ARGV: gen, cap, limit, mode.  (Re)initialises a queue.
_LUA_INIT = r"""
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], 'gen', ARGV[1], 'cap', ARGV[2], 'limit', ARGV[3], 'mode', ARGV[4],
           'st', struct.pack('>dddddddddd', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
return 1
"""

# KEYS: defs.  ARGV: expected document, new document.  Compare-and-set.
_LUA_CAS = r"""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"""

# KEYS: defs.  ARGV: gen.  Deletes the definitions if they carry this gen.
_LUA_DEL_IF_GEN = r"""
local d = redis.call('GET', KEYS[1])
if d and string.find(d, ARGV[1], 1, true) then redis.call('DEL', KEYS[1]) return 1 end
return 0
"""

_STATE_FIELDS = ("head", "tail", "count", "bytes", "added", "fetched", "evicted", "dups", "hw",
                 "recoveries")
"""The state packed in the meta hash's ``st`` field (10 big-endian doubles)."""

_STAT_FIELDS = (
    "count",
    "added",
    "fetched",
    "evicted",
    "dups",
    "hw",
    "recoveries",
    "bytes",
    "cap",
    "limit",
    "mode",
)


class _Script:
    """A Lua script: its source and SHA1 (run with EVALSHA, EVAL on NOSCRIPT)."""

    def __init__(self, src: str) -> None:
        self.src = src.replace("OP_TTL", str(int(OP_RECORD_TTL_S)))
        self.sha = hashlib.sha1(self.src.encode()).hexdigest()


_ADD = _Script(_LUA_ADD)
_TAKE = _Script(_LUA_TAKE)
_STATS = _Script(_LUA_STATS)
_RESOLVE = _Script(_LUA_RESOLVE)


# ------------------------------------------------------------ redis-py glue
def _redis_module() -> Any:
    try:
        import redis
    except ImportError:
        from ._dist import install_hint

        raise MQueueError(
            f"the Redis backend needs the redis package: {install_hint('redis')}"
        ) from None
    return redis


def _client_options() -> dict[str, Any]:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "retry": Retry(NoBackoff(), 0),
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "decode_responses": False,
    }


def connect(url: str) -> Any:
    """A redis-py client for ``url`` that never retries a command by itself.

    A ``redis.Redis`` for a single server; a ``redis.RedisCluster`` when the
    server at ``url`` is a node of a Redis Cluster (``INFO cluster`` says
    ``cluster_enabled:1``), so that the same URL works for both.
    """
    redis = _redis_module()
    try:
        client = redis.Redis.from_url(url, retry_on_error=[], retry_on_timeout=False,
                                      **_client_options())
    except ValueError as e:
        raise DefinitionError(f"bad Redis url {redact_url(url)!r}: {e}") from None
    if url.startswith("unix://"):
        return client
    try:
        _first_connection(client)
        info = client.info("cluster")
    except redis.exceptions.ResponseError:
        return client  # INFO refused (ACL): a cluster would also refuse routing; stay single
    except Exception as e:
        client.close()
        if _is_redis_error(e):
            raise _connect_error(e, f"Redis at {redact_url(url)}", url) from e
        raise
    if not int(info.get("cluster_enabled", 0) or 0):
        return client
    client.close()
    try:
        return redis.RedisCluster.from_url(url, **_client_options())
    except ValueError as e:
        raise DefinitionError(f"bad Redis Cluster url {redact_url(url)!r}: {e}") from None
    except Exception as e:
        if _is_redis_error(e):
            raise _connect_error(e, f"Redis Cluster at {redact_url(url)}", url) from e
        raise


def _lost_error(what: str, url: str, code: int) -> NamespaceLostError:
    """The error for a queue (``what``) whose keys are gone from the server at
    ``url``: ``code`` -4 when some were dropped (the queue is marked so for
    good), -1 when its meta hash is gone or carries another creation id."""
    where = redact_url(url)
    if code == -4:
        return NamespaceLostError(
            f"{what}: some of its keys were dropped by Redis at {where} (evicted "
            "under a maxmemory-policy other than noeviction, or deleted): the queue is "
            "lost; destroy and re-create the namespace"
        )
    return NamespaceLostError(
        f"{what}: its keys are gone from Redis at {where} "
        "(destroyed or recreated, the server restarted without persistence, or "
        "evicted its keys)"
    )


def _is_cluster(client: Any) -> bool:
    return type(client).__name__ == "RedisCluster"


def _backend_error(msg: str, outcome_known: bool | None) -> BackendError:
    """A BackendError saying whether the operation's outcome is known, logged
    (WARNING) on the ``mqueue`` logger as a backend fault."""
    from . import _log

    e = BackendError(msg)
    e.outcome_known = outcome_known
    _log.fault(e, level=logging.WARNING)
    return e


def _is_connect_failure(e: BaseException) -> bool:
    """True when ``e`` says a connection could not be made (nothing was sent):
    marked by :func:`_unsent`, or redis-py's connect error."""
    if getattr(e, "mqueue_unsent", False):
        return True
    s = str(e)
    return "connecting to" in s or "Timeout connecting" in s


def _unsent(e: BaseException) -> None:
    """Mark ``e`` as raised while a connection was being made (TCP connect
    or the handshake after it: a proxy whose server is down closes it there),
    before anything of an operation was sent on it."""
    with contextlib.suppress(AttributeError, TypeError):
        e.mqueue_unsent = True  # type: ignore[attr-defined]


def _stale(sock: Any) -> bool:
    """True when ``sock``, an idle connection's socket (None: not connected),
    is readable: the server closed it while idle (restart, timeout, CLIENT
    KILL), so it is replaced before anything is sent on it."""
    if sock is None:
        return False
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _first_connection(client: Any) -> None:
    """Make ``client``'s first connection (a single server's), its failure
    marked by :func:`_unsent`."""
    pool = client.connection_pool
    try:
        conn = pool.get_connection()
    except Exception as e:
        _unsent(e)
        raise
    pool.release(conn)


def _connect_error(e: Exception, where: str, url: str) -> MQueueError:
    redis = _redis_module()
    ex = redis.exceptions
    if isinstance(e, ex.AuthenticationError | ex.NoPermissionError):
        return AccessDeniedError(f"{where}: Redis at {redact_url(url)} refused access: {e}")
    if _is_connect_failure(e):
        return _backend_error(
            f"{where}: could not connect to Redis at {redact_url(url)} ({e})", True
        )
    return _translate(e, where, url, unsure=False)


def _translate(e: Exception, where: str, url: str, *, unsure: bool) -> MQueueError:
    """The mqueue exception for a redis-py exception, logged (WARNING) on the
    ``mqueue`` logger as a backend fault."""
    from . import _log

    exc = _translate_exc(e, where, url, unsure=unsure)
    if not isinstance(exc, BackendError):  # _backend_error logged those already
        _log.fault(exc, level=logging.WARNING)
    return exc


def _translate_exc(e: Exception, where: str, url: str, *, unsure: bool) -> MQueueError:
    """The mqueue exception for a redis-py exception (no retry was possible)."""
    redis = _redis_module()
    ex = redis.exceptions
    target = redact_url(url)
    if isinstance(e, ex.AuthenticationError | ex.NoPermissionError):
        return AccessDeniedError(f"{where}: Redis at {target} refused access: {e}")
    if isinstance(e, ex.ConnectionError | ex.TimeoutError | OSError):
        if _is_connect_failure(e):
            return _backend_error(f"{where}: could not connect to Redis at {target} ({e})", True)
        tail = (
            "; the operation may or may not have been applied on the server"
            if unsure
            else ""
        )
        return _backend_error(
            f"{where}: lost the connection to Redis at {target} ({e}){tail}",
            None if not unsure else False,
        )
    if isinstance(e, ex.ResponseError):
        return _backend_error(f"{where}: Redis at {target} refused the operation: {e}", True)
    return _backend_error(f"{where}: Redis at {target} failed: {e!r}", None)


def _is_redis_error(e: BaseException) -> bool:
    ex = _redis_module().exceptions
    return isinstance(e, ex.RedisError | ex.RedisClusterException | OSError)


def _transient(e: BaseException) -> str | None:
    """How a failed attempt may be retried: "connect" (nothing was sent),
    "lost" (sent, the reply was lost: the operation may have run), "refused"
    (the server answered that it did not run it, for now), or None (final)."""
    redis = _redis_module()
    ex = redis.exceptions
    if isinstance(e, ex.AuthenticationError | ex.NoPermissionError):
        return None
    if isinstance(e, ex.ConnectionError | ex.TimeoutError | OSError):
        return "connect" if _is_connect_failure(e) else "lost"
    if isinstance(e, ex.ClusterError):
        return "refused"  # redis-py gave up on redirections: nothing ran
    if isinstance(
        e, ex.TryAgainError | ex.ClusterDownError | ex.BusyLoadingError | ex.ReadOnlyError
        | ex.AskError | ex.SlotNotCoveredError
    ):
        return "refused"
    if isinstance(e, ex.ResponseError):
        msg = str(e)
        if msg.startswith(("BUSY", "LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN",
                           "CLUSTERDOWN", "NOREPLICAS")):
            return "refused"
    return None


class _Scripts:
    """The registered admin scripts of one client (create and destroy)."""

    def __init__(self, client: Any) -> None:
        self.init = client.register_script(_LUA_INIT)
        self.cas = client.register_script(_LUA_CAS)
        self.del_if_gen = client.register_script(_LUA_DEL_IF_GEN)


def _resp_args(args: Sequence[Any]) -> bytes:
    """RESP bulk strings for ``args`` (bytes, str or int), without the array header."""
    out = []
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif not isinstance(a, bytes):
            a = b"%d" % a
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _resp(args: Sequence[Any]) -> bytes:
    """One command in RESP (what redis-py's packer makes, faster for our few types)."""
    return b"*%d\r\n%s" % (len(args), _resp_args(args))


_ASKING = _resp(["ASKING"])


def _closed_error(what: str) -> MQueueError:
    return MQueueError(f"{what}: the namespace handle is closed")


class _Attempts:
    """The retry state of one operation (``RedisQueue._run``, and the asyncio
    backend's, mqueue._aio_redis): connection faults and "not now" answers
    are retried, with backoff, for the handle's retry window."""

    def __init__(self, q: RedisQueue, op: bool) -> None:
        self.q = q
        self.op = op
        self.deadline = 0.0
        self.delay = 0.0
        self.maybe_ran = False
        self.last: BaseException | None = None
        self.kinds: set[str] = set()

    def failed(self, e: Exception) -> None:
        """An attempt raised ``e``: noted for a retry, or the final mqueue
        error raised (``e`` itself when it is not a fault of the connection: a
        signal handler's exception)."""
        if not _is_redis_error(e):
            raise e
        kind = _transient(e)
        if kind is None:
            raise _translate(e, self.q._what, self.q._rns.url or "", unsure=self.op) from e
        self.maybe_ran = self.maybe_ran or (self.op and kind == "lost")
        self.last = e
        self.kinds.add(kind)

    def refused(self, r: BaseException) -> None:
        """The server did not run it (a redirection that could not be followed)."""
        self.last = r
        self.kinds.add("refused")

    def reply(self, r: Any) -> str:
        """What the script's reply ``r`` means: "ok" (the result), "noscript"
        (send it with EVAL), "ask" (to the node the AskError names, else as
        "moved"), "moved" (refresh the slots, retry), "retry"; raises a final
        error reply."""
        ex = _redis_module().exceptions
        if isinstance(r, ex.NoScriptError):
            return "noscript"
        if isinstance(r, ex.AskError):
            return "ask"
        if isinstance(r, ex.MovedError):
            self.refused(r)
            return "moved"
        if isinstance(r, ex.ResponseError):
            kind = _transient(r)
            if kind is None:
                raise _translate(r, self.q._what, self.q._rns.url or "", unsure=False)
            self.last = r
            self.kinds.add(kind)
            return "retry"
        return "ok"

    def pause(self) -> float:
        """Before a retry: how long to wait first; raises BackendError once
        the retry window is over."""
        log.debug("%s: retrying after %r", self.q._what, self.last)
        now = time.monotonic()
        if not self.deadline:
            self.deadline = now + self.q._rns.retry_window
        elif now >= self.deadline:
            raise self.q._give_up(self.last, self.kinds, self.maybe_ran, self.op)
        pause = min(self.delay, max(0.0, self.deadline - now)) if self.delay else 0.0
        self.delay = min(max(self.delay * 2, 0.02), 0.5)
        return pause


# ------------------------------------------------------------------ classes
class RedisQueue(Queue):
    """A queue of a namespace on Redis (see :class:`mqueue.Queue`)."""

    def __init__(self, mq: MQueue, index: int, definition: QueueDef) -> None:
        super().__init__(mq, index, definition)
        rns: RedisNamespace = mq  # type: ignore[assignment]
        self._rns = rns
        self._keys = queue_keys(mq.namespace, definition.name)
        self._tag = self._keys[0][: -len(":meta")]
        self._cap = align8(definition.nbytes)
        self._what = f"queue {definition.name!r} of namespace {mq.namespace!r}"
        # the last take left the queue empty: the next blocking fetch waits first
        self._emptied = False

    # -- helpers ---------------------------------------------------------
    def _client(self) -> Any:
        if self._rns._closed:
            raise _closed_error(self._what)
        return self._rns._client

    def _lost(self, code: int = -1) -> NamespaceLostError:
        return _lost_error(self._what, self._rns.url or "", code)

    def _run(
        self,
        script: _Script,
        args: list[Any],
        *,
        op: bool,
        wait: float = 0.0,
        resolve: str | None = None,
    ) -> Any:
        """Run ``script`` on this queue's keys; with ``op``, as an operation with
        an id (see _LUA_OPS).  ``wait``: first wait up to that long for a
        wake-up token (BLPOP pipelined before the script, one round trip).
        ``resolve``: run ``script`` (_RESOLVE) on the operation record of this
        thread's earlier operation of that id.

        Connection faults and "not now" answers (TRYAGAIN, LOADING, a cluster
        redirection, ...) are retried with backoff for ``retry_window``
        seconds, with the same operation id, so an operation whose reply was
        lost is answered from its record, never run twice.
        """
        rns = self._rns
        if rns._closed:
            raise _closed_error(self._what)
        opkey = opid = None
        st = rns._state
        fixed = st.prefix.get((self._index, script.sha))
        if fixed is None:
            keys = self._keys
            if op or resolve is not None:
                keys = [*keys, f"{self._tag}:op:{st.sid}"]
            head = ["EVALSHA", script.sha, len(keys), *keys, rns._gen]
            fixed = (keys, len(head), _resp_args(head))
            st.prefix[(self._index, script.sha)] = fixed
        keys, nfix, body = fixed
        if op:
            if isinstance(st.pending.get(self._index), tuple):
                self._settle_pending()  # before this session's record is overwritten
            opkey = keys[4]
            st.n += 1
            opid = str(st.n)
            args = [opid, *args]
            if script is _TAKE:
                # until _take has the items in hand: an exception anywhere in
                # between (Ctrl-C, a signal handler's) leaves this to settle
                st.pending[self._index] = (opkey, opid)
        elif resolve is not None:
            args = [resolve]
        cmd = b"*%d\r\n%s%s" % (nfix + len(args), body, _resp_args(args))
        cmds = [_resp(["BLPOP", keys[3], f"{wait:.3f}"]), cmd] if wait else [cmd]
        ask: Any = None
        att = _Attempts(self, op)
        while True:
            try:
                replies = rns._send(keys[0], cmds, ask)
            except Exception as e:
                if rns._closed:
                    return self._after_close(opkey, opid)
                att.failed(e)
                if rns._cluster:
                    rns._refresh_slots()  # after a failover no MOVED comes from a dead master
            else:
                r = replies[-1]
                ask = None
                what = att.reply(r)
                if what == "ok":
                    return r
                if what == "noscript":
                    cmds = [_resp(["EVAL", script.src, len(keys), *keys, rns._gen, *args])]
                    continue
                if what == "ask":
                    ask = rns._node(r.host, r.port)
                    if ask is not None:
                        log.debug("%s: asked to %s:%s", self._what, r.host, r.port)
                        cmds = [cmd]
                        continue
                    att.refused(r)
                if what in ("ask", "moved"):
                    rns._refresh_slots()
            cmds = [cmd]  # a retry runs the script alone (a wait is not repeated)
            pause = att.pause()
            if pause:
                time.sleep(pause)

    def _give_up(
        self, last: BaseException | None, kinds: set[str], maybe_ran: bool, op: bool
    ) -> BackendError:
        url = redact_url(self._rns.url or "")
        w = self._rns.retry_window
        if maybe_ran:
            return _backend_error(
                f"{self._what}: lost the connection to Redis at {url} and could not reach "
                f"it again within {w:g} s ({last}); the operation may or may not have been "
                "applied",
                False,
            )
        if kinds == {"connect"}:
            return _backend_error(
                f"{self._what}: could not connect to Redis at {url} within {w:g} s ({last}); "
                + ("the operation was not applied" if op else "nothing was changed"),
                True,
            )
        return _backend_error(
            f"{self._what}: Redis at {url} did not run the operation within {w:g} s "
            f"({last}); it was not applied",
            True,
        )

    def _after_close(self, opkey: str | None, opid: str | None) -> Any:
        """The handle was closed while this thread's operation was on the wire:
        settle it on a fresh connection.  Returns the operation's reply when it
        ran (its items are delivered, not lost); raises the closed error when it
        had not (it is then cancelled on the server and can no longer run)."""
        if opkey is None:
            raise _closed_error(self._what)
        try:
            c = connect(self._rns.url or "")
            try:
                keys = [*self._keys, opkey]
                res = c.eval(_RESOLVE.src, len(keys), *keys, self._rns._gen, opid)
            finally:
                c.close()
        except Exception as e:
            raise self._closed_unknown(e) from None
        return self._closed_result(res)

    def _closed_unknown(self, e: BaseException) -> BackendError:
        """The error when an operation cut short by close could not be settled."""
        return _backend_error(
            f"{self._what}: the namespace handle was closed during the operation and "
            f"its outcome could not be learnt ({e}); it may or may not have been applied",
            False,
        )

    def _closed_result(self, res: Any) -> Any:
        """The reply of an operation cut short by close, from _RESOLVE's answer
        ``res``; the closed error when it had not run."""
        if isinstance(res, list) and res and int(res[0]) == 1:
            return res[1]
        raise _closed_error(self._what)

    def _record(self, key: object, value: object) -> bytes:
        kb, ks = encode(key)
        vb, vs = encode(value)
        if record_size(len(kb), len(vb)) > self._cap or len(kb) > 0xFFFFFFFF:
            raise ItemTooLargeError(
                f"{self._what}: item of {len(kb) + len(vb)} bytes is larger than the "
                f"queue's byte capacity ({self._cap})"
            )
        flags = (FLAG_KEY_STR if ks else 0) | (FLAG_VAL_STR if vs else 0)
        return bytes((flags,)) + len(kb).to_bytes(4, "big") + kb + vb

    def _add_result(self, reply: Any) -> int:
        rc = int(reply)
        if rc >= 0:
            return rc
        if rc in (-1, -4):
            raise self._lost(rc)
        if rc == -2:
            raise QueueFullError(
                f"{self._what}: queue is full (no count bound and no room left in bytes); "
                "nothing added"
            )
        if rc == -3:
            raise ItemTooLargeError(f"{self._what}: item is larger than the queue's byte capacity")
        raise BackendError(f"{self._what}: unexpected reply {rc} from Redis")

    # -- operations --------------------------------------------------------
    def add(self, key: Data, value: Data) -> bool:
        return self._add_result(self._run(_ADD, [self._record(key, value)], op=True)) == 1

    def _records(self, items: Iterable[tuple[Data, Data]]) -> list[bytes]:
        """The records of add_many's items (its argument errors)."""
        args: list[bytes] = []
        try:
            for key, value in items:
                args.append(self._record(key, value))
        except (TypeError, ValueError) as e:
            if isinstance(e, ItemTypeError | ItemTooLargeError):
                raise
            raise ItemTypeError(f"add_many takes an iterable of (key, value) pairs: {e}") from None
        return args

    def add_many(self, items: Iterable[tuple[Data, Data]]) -> int:
        args = self._records(items)
        if not args:
            return 0
        return self._add_result(self._run(_ADD, list(args), op=True))

    def _settle_pending(self) -> None:
        """Settle this thread's take that an exception cut short: the items it
        took (if it ran) replace its pending entry, and the thread's next fetch
        returns them first; if it had not run, it can no longer run.

        The entry goes from (record key, id) to the list of items in one store,
        and items leave that list one ``pop`` at a time, so an exception at any
        point can delay an item but never deliver it twice."""
        st = self._rns._state
        entry = st.pending[self._index]
        assert isinstance(entry, tuple)
        res = self._run(_RESOLVE, [], op=False, resolve=entry[1])
        items: list[Item] = []
        if isinstance(res, list) and res and int(res[0]) == 1 and isinstance(res[1], list):
            items = [_decode_record(r) for r in res[1][1:]]
        st.pending[self._index] = items

    def _take(self, n: int, timeout: float) -> list[Item]:
        deadline = deadline_after(timeout)
        st = self._rns._state
        if isinstance(st.pending.get(self._index), tuple):
            self._settle_pending()
        kept = st.pending.get(self._index)
        if isinstance(kept, list):
            out: list[Item] = []
            while kept and len(out) < n:
                out.append(kept.pop(0))
            if not kept:
                st.pending.pop(self._index, None)
            if out:
                return out
        wait = 0.0
        if deadline != 0 and self._emptied:
            wait = self._slice(deadline)
        while True:
            res = self._run(_TAKE, [n], op=True, wait=wait)
            if not isinstance(res, list):
                st.pending.pop(self._index, None)
                if int(res) in (-1, -4):
                    raise self._lost(int(res))
                raise BackendError(f"{self._what}: unexpected reply {res!r} from Redis")
            recs = res[1:]
            self._emptied = int(res[0]) == 0
            if recs or deadline == 0:
                break
            st.pending.pop(self._index, None)
            wait = self._slice(deadline)
            if wait <= 0:
                return []
        try:
            items = [_decode_record(r) for r in recs]
        except BaseException:
            # an exception (a signal handler's) after the server took the
            # items: keep them for this handle's next fetch
            with contextlib.suppress(Exception):
                self._undelivered.extend(_decode_record(r) for r in recs)
                st.pending.pop(self._index, None)
            raise
        st.pending.pop(self._index, None)
        return items

    @staticmethod
    def _slice(deadline: int) -> float:
        """How long the next wait may last (0: the deadline has passed)."""
        if deadline < 0:
            return WAIT_SLICE_S
        left = (deadline - time.monotonic_ns()) / 1e9
        if left <= 0:
            return 0.0
        return max(min(left, WAIT_SLICE_S), 0.001)

    def _meta(self, res: Any = None) -> dict[str, int]:
        """The stats script's reply (``res``, or run now) as a dict."""
        if res is None:
            res = self._run(_STATS, [], op=False)
        if not isinstance(res, list):
            raise self._lost(int(res))
        return {f: int(v) for f, v in zip(_STAT_FIELDS, res, strict=True)}

    def __len__(self) -> int:
        return self._meta()["count"]

    def stats(self) -> QueueStats:
        return self._stats_from(None)

    def _stats_from(self, res: Any) -> QueueStats:
        """The queue's counters from the stats script's reply ``res`` (None:
        run it now); mqueue._aio_redis runs it on its own connections."""
        m = self._meta(res)
        return QueueStats(
            name=self.name,
            length=m["count"],
            added=m["added"],
            fetched=m["fetched"],
            evicted=m["evicted"],
            duplicates=m["dups"],
            high_water=m["hw"],
            recoveries=m["recoveries"],
            bytes_used=m["bytes"],
            capacity=m["cap"],
            size_limit=max(0, m["limit"]),
            addmode=m["mode"],
        )

    def _check(self) -> None:
        """Verify the queue's structure on the server (tests, diagnostics).

        Not atomic with respect to other clients: call it on a quiet queue.
        Raises CorruptSegmentError describing the first inconsistency.
        """
        client = self._client()
        raw = client.hgetall(self._keys[0])
        meta = {k: int(raw[k.encode()]) for k in ("cap", "limit", "mode")}
        meta.update(zip(_STATE_FIELDS, map(int, struct.unpack(">10d", raw[b"st"])), strict=True))
        recs = client.hgetall(self._keys[1])
        idx = client.hgetall(self._keys[2])
        head, tail = meta["head"], meta["tail"]

        def bad(why: str) -> CorruptSegmentError:
            return CorruptSegmentError(f"{self._what}: {why}")

        if set(recs) != {str(i).encode() for i in range(head, tail)}:
            raise bad("records do not cover head..tail exactly")
        live = 0
        used = 0
        want_idx: dict[bytes, bytes] = {}
        for i in range(head, tail):
            r = recs[str(i).encode()]
            if r[0] == _TOMBSTONE:
                used += int(r[1:])
                continue
            live += 1
            klen = int.from_bytes(r[1:5], "big")
            used += record_size(klen, len(r) - 5 - klen)
            if meta["mode"]:
                k = r[5 : 5 + klen]
                if k in want_idx:
                    raise bad(f"key {k!r} queued twice with addmode {meta['mode']}")
                want_idx[k] = str(i).encode()
        if live != meta["count"]:
            raise bad(f"count {meta['count']} but {live} live records")
        if used != meta["bytes"] or used > meta["cap"]:
            raise bad(f"bytes {meta['bytes']} but records take {used} (cap {meta['cap']})")
        if meta["mode"] and idx != want_idx:
            raise bad("key index does not match the records")
        if meta["limit"] > 0 and live > meta["limit"]:
            raise bad("more items than the count bound")
        if meta["added"] != meta["fetched"] + meta["evicted"] + meta["dups"] + live:
            raise bad("counters do not add up")


def _decode_record(r: bytes) -> Item:
    flags = r[0]
    klen = int.from_bytes(r[1:5], "big")
    k = r[5 : 5 + klen]
    v = r[5 + klen :]
    return Item(
        k.decode("utf-8", "surrogatepass") if flags & FLAG_KEY_STR else k,
        v.decode("utf-8", "surrogatepass") if flags & FLAG_VAL_STR else v,
    )


class _ThreadState(threading.local):
    """Per thread of a handle: its operation session, its connections."""

    def __init__(self) -> None:
        self.sid = os.urandom(8).hex()
        self.n = 0
        self.conns: dict[str, Any] = {}  # node name ("" for one server) -> connection
        # per queue: a take an exception cut short, as (record key, op id), and
        # once settled, the items it had taken (handed out first by _take)
        self.pending: dict[int, tuple[str, str] | list[Item]] = {}
        # per (queue, script): keys, number and RESP encoding of the fixed arguments
        self.prefix: dict[tuple[int, str], tuple[list[str], int, bytes]] = {}


class RedisNamespace(MQueue):
    """A namespace on a Redis server or cluster (see :class:`mqueue.MQueue`).

    ``retry_window``: how long (seconds) an operation is retried across
    connection faults before :class:`BackendError` reaches the caller
    (default :data:`RETRY_WINDOW_S`).
    """

    def __init__(
        self,
        namespace: str,
        definitions: Sequence[QueueDef],
        *,
        client: Any,
        gen: str,
        url: str,
        db_url: str | None,
        creator: bool,
    ) -> None:
        self._client = client
        self._gen = gen
        self._cluster = _is_cluster(client)
        self.retry_window = RETRY_WINDOW_S
        self._state = _ThreadState()
        self._conns: list[Any] = []
        self._conns_lock = threading.Lock()
        super().__init__(
            namespace, definitions, RedisQueue, url=url, db_url=db_url, creator=creator
        )

    @property
    def is_cluster(self) -> bool:
        """True when the server is a Redis Cluster (queues spread over its nodes)."""
        return self._cluster

    def _local_state(self) -> _ThreadState:
        return self._state

    def _pool(self, key: str, node: Any) -> tuple[str, Any]:
        """The node that serves ``key`` (or ``node``): its name and connection pool."""
        if not self._cluster:
            return "", self._client.connection_pool
        if node is None:
            node = self._client.get_node_from_key(key)
        return str(node.name), self._client.get_redis_connection(node).connection_pool

    def _node(self, host: str, port: int) -> Any:
        return self._client.get_node(host=host, port=port)

    def _refresh_slots(self) -> None:
        with contextlib.suppress(Exception):
            self._client.nodes_manager.initialize()

    def _send(self, key: str, cmds: list[bytes], ask: Any = None) -> list[Any]:
        """One attempt: send ``cmds`` pipelined on this thread's own connection
        to the node that serves ``key`` (``ask``: that node, after ASKING) and
        read every reply; error replies are returned, not raised."""
        name, pool = self._pool(key, ask)
        st = self._state
        conn = st.conns.get(name)
        if conn is None:
            conn = pool.connection_class(**pool.connection_kwargs)
            with self._conns_lock:
                if self._closed:
                    raise _closed_error(f"namespace {self.namespace!r}")
                self._conns.append(conn)
            st.conns[name] = conn
        if _stale(conn._sock):
            conn.disconnect()
        if not conn.is_connected:
            try:
                conn.connect()
            except BaseException as e:
                conn.disconnect()  # a handshake cut short must not leave replies behind
                _unsent(e)
                raise
        if ask is not None:
            cmds = [_ASKING, *cmds]
        rerr = _redis_module().exceptions.ResponseError
        try:
            conn.send_packed_command(cmds, check_health=False)
            out: list[Any] = []
            for _ in cmds:
                try:
                    out.append(conn.read_response())
                except rerr as e:
                    out.append(e)
        except BaseException:
            conn.disconnect()
            raise
        if self._closed:
            conn.disconnect()
        return out[1:] if ask is not None else out

    def _release(self) -> None:
        # Connections of other threads are only shut down (their blocked reads
        # wake with an error at once); each thread closes its own socket when it
        # sees the error, so a socket number is never freed, and reused by
        # another connection, under a thread that is about to wait on it.
        with self._conns_lock:
            conns, self._conns = self._conns, []
        mine = set(map(id, self._state.conns.values()))
        for c in conns:
            with contextlib.suppress(Exception):
                if id(c) in mine:
                    c.disconnect()
                else:
                    sock = c._sock
                    if sock is not None:
                        sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self._client.close()

    def _reattach_in_child(self) -> None:
        # the parent's sessions and sockets are the parent's: new ones (redis-py
        # does not shut a socket down from a process that did not open it)
        self._state = _ThreadState()
        self._conns = []
        self._conns_lock = threading.Lock()


# --------------------------------------------------------------- namespaces
def _doc(namespace: str, defs: Sequence[QueueDef], gen: str, state: str) -> bytes:
    d = {
        "mqueue": _FORMAT,
        "namespace": namespace,
        "gen": gen,
        "state": state,
        "queues": [x.to_dict() for x in defs],
    }
    return json.dumps(d, separators=(",", ":"), ensure_ascii=True).encode()


def _parse_doc(raw: bytes, namespace: str) -> tuple[list[QueueDef], str, str]:
    try:
        doc = json.loads(raw)
        if (
            not isinstance(doc, dict)
            or doc.get("mqueue") != _FORMAT
            or not isinstance(doc.get("queues"), list)
            or not isinstance(doc.get("gen"), str)
            or doc.get("state") not in ("creating", "ready")
        ):
            raise ValueError("not an mqueue definitions document")
        defs = [QueueDef.from_dict(d) for d in doc["queues"]]
    except (ValueError, TypeError, UnicodeDecodeError) as e:
        raise CorruptSegmentError(
            f"namespace {namespace!r}: the definitions stored in Redis are damaged or foreign ({e})"
        ) from None
    if len({d.name for d in defs}) != len(defs):
        raise CorruptSegmentError(f"namespace {namespace!r}: queue names repeat in its definitions")
    return defs, doc["gen"], doc["state"]


def _call(fn: Any, where: str, url: str, *, unsure: bool = False) -> Any:
    try:
        return fn()
    except Exception as e:
        if _is_redis_error(e):
            raise _translate(e, where, url, unsure=unsure) from e
        raise


def _check_url(url: object) -> str:
    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise DefinitionError(f"not a Redis url: {url!r}")
    return url


def _attach(namespace: str, url: str, client: Any) -> RedisNamespace:
    where = f"namespace {namespace!r}"
    key = defs_key(namespace)
    give_up = time.monotonic() + ATTACH_WAIT_S
    while True:
        raw = _call(lambda: client.get(key), where, url)
        if raw is None:
            raise NamespaceNotFoundError(
                f"no namespace {namespace!r} on Redis at {redact_url(url)}"
            )
        defs, gen, state = _parse_doc(raw, namespace)
        if state == "ready":
            break
        if time.monotonic() > give_up:
            raise CorruptSegmentError(
                f"{where}: still being created after {ATTACH_WAIT_S} s (its creator may "
                "have died: mqueue.destroy() removes it)"
            )
        time.sleep(0.01)
    pipe = client.pipeline(transaction=False)
    for d in defs:
        pipe.hmget(queue_keys(namespace, d.name)[0], ["gen", "cap", "limit", "mode"])
    metas = _call(pipe.execute, where, url)
    for d, m in zip(defs, metas, strict=True):
        if m[0] is None or m[0] == b"!" + gen.encode():
            # its keys were evicted or deleted: lost, as its operations say
            code = -1 if m[0] is None else -4
            raise _lost_error(f"queue {d.name!r} of {where}", url, code)
        if m[0].decode() != gen:
            raise CorruptSegmentError(
                f"{where}: queue {d.name!r} belongs to another incarnation of the namespace"
            )
        if (int(m[1]), int(m[2]), int(m[3])) != (align8(d.nbytes), max(0, d.size), d.addmode):
            raise CorruptSegmentError(f"{where}: queue {d.name!r} does not match its definition")
    return RedisNamespace(
        namespace, defs, client=client, gen=gen, url=url, db_url=None, creator=False
    )


def _no_owner_checks(allow_owners: Iterable[int | str], allow_world_writable: bool) -> None:
    """Refuse the shared-memory trust options: a Redis server's own users and
    ACLs govern access to it."""
    if allow_owners != () or allow_world_writable:
        raise ArgumentError(
            "allow_owners and allow_world_writable apply to shared memory (url=None) only"
        )


def attach(
    namespace: str,
    *,
    url: str,
    allow_owners: Iterable[int | str] = (),
    allow_world_writable: bool = False,
) -> RedisNamespace:
    """Attach to an existing namespace on the Redis server at ``url``."""
    check_namespace(namespace)
    _no_owner_checks(allow_owners, allow_world_writable)
    client = connect(_check_url(url))
    try:
        return _attach(namespace, url, client)
    except BaseException:
        client.close()
        raise


def create(
    namespace: str,
    defs: Sequence[QueueDef],
    *,
    mode: int = 0o600,
    exist_ok: bool = False,
    db_url: str | None = None,
    url: str,
    allow_owners: Iterable[int | str] = (),
    allow_world_writable: bool = False,
) -> RedisNamespace:
    """Create a namespace holding these queues on the Redis server at ``url``.

    ``mode`` is checked as for shared memory but has no effect: access to a
    Redis server is governed by its own users and ACLs (``allow_owners`` and
    ``allow_world_writable`` are refused: ArgumentError).
    """
    check_namespace(namespace)
    _check_url(url)
    _no_owner_checks(allow_owners, allow_world_writable)
    check_mode(mode)
    defs = list(defs)
    where = f"namespace {namespace!r}"
    client = connect(url)
    try:
        gen = os.urandom(12).hex()
        key = defs_key(namespace)
        creating = _doc(namespace, defs, gen, "creating")
        if not _call(lambda: client.set(key, creating, nx=True), where, url, unsure=True):
            if not exist_ok:
                raise NamespaceExistsError(
                    f"namespace {namespace!r} already exists on Redis at {redact_url(url)}"
                )
            mq = _attach(namespace, url, client)
            if mq.definitions != defs:
                mq.close()
                raise NamespaceExistsError(
                    f"namespace {namespace!r} already exists with other queue definitions"
                )
            return mq
        scripts = _Scripts(client)
        try:
            for d in defs:
                args = [gen, align8(d.nbytes), max(0, d.size), d.addmode]
                _call(
                    lambda d=d, args=args: scripts.init(
                        keys=queue_keys(namespace, d.name), args=args, client=client
                    ),
                    where,
                    url,
                )
            ready = _doc(namespace, defs, gen, "ready")
            ok = _call(
                lambda: scripts.cas(keys=[key], args=[creating, ready], client=client),
                where,
                url,
            )
            if not ok:
                raise NamespaceLostError(f"{where}: destroyed by another process while created")
        except BaseException:
            with contextlib.suppress(Exception):
                scripts.del_if_gen(keys=[key], args=[gen], client=client)
                for d in defs:
                    client.delete(*queue_keys(namespace, d.name))
            raise
        return RedisNamespace(
            namespace, defs, client=client, gen=gen, url=url, db_url=db_url, creator=True
        )
    except BaseException:
        client.close()
        raise


def destroy(namespace: str, *, url: str) -> None:
    """Remove a namespace and every key of its queues from the server.

    Processes still attached get :class:`NamespaceLostError` on their next
    operation (a blocked fetch within :data:`WAIT_SLICE_S`).
    """
    check_namespace(namespace)
    client = connect(_check_url(url))
    where = f"namespace {namespace!r}"
    try:
        key = defs_key(namespace)
        raw = _call(lambda: client.get(key), where, url)
        names: list[str] | None = None
        if raw is not None:
            try:
                names = [d.name for d in _parse_doc(raw, namespace)[0]]
            except CorruptSegmentError:
                names = None
        _call(lambda: client.delete(key), where, url)
        if names is not None:
            for n in names:
                ks = queue_keys(namespace, n)
                _call(lambda ks=ks: client.delete(*ks), where, url)
        # Whatever else the namespace left: operation records (they would
        # expire within OP_RECORD_TTL_S), and every key when the definitions
        # were unreadable or missing.  On a cluster, SCAN visits every master.
        pattern = _glob_esc(f"mqueue:{{{_esc(namespace)}:") + "*"
        found = _call(lambda: set(client.scan_iter(match=pattern, count=1000)), where, url)
        for k in found:
            _call(lambda k=k: client.delete(k), where, url)
        if raw is None and not found:
            raise NamespaceNotFoundError(
                f"no namespace {namespace!r} on Redis at {redact_url(url)}"
            )
    finally:
        client.close()


def list_namespaces(url: str) -> list[str]:
    """Namespaces present on the Redis server at ``url`` (every master of a
    cluster), sorted."""
    from urllib.parse import unquote

    client = connect(_check_url(url))
    try:
        keys = _call(
            lambda: set(client.scan_iter(match="mqueue:{*}:defs", count=1000)), "list", url
        )
    finally:
        client.close()
    out = []
    for k in keys:
        tag = k.decode("utf-8", "replace")[len("mqueue:{") : -len("}:defs")]
        if ":" not in tag:
            out.append(unquote(tag))
    return sorted(out)


__all__ = [
    "NamespaceLostError",
    "RedisNamespace",
    "RedisQueue",
    "attach",
    "create",
    "defs_key",
    "destroy",
    "list_namespaces",
    "queue_keys",
    "record_size",
]
