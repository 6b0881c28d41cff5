"""The Redis (or Valkey) backend: the same queues and semantics on a server.

Chosen by ``url="redis://host:port/db"`` (also ``rediss://`` and
``unix:///path/to/socket``).  Every queue operation is one Lua script run
atomically by the server (``EVALSHA``), so two clients on two machines never
see a half-done add, eviction or dedup, and a client killed in the middle of
an operation leaves the queue as it was before or after it.

Keys (``<ns>`` and ``<q>`` escaped, see :func:`_esc`)::

    mqueue:{<ns>}:defs         the namespace's definitions (JSON), attach reads it
    mqueue:{<ns>:<q>}:meta     hash: configuration and counters of queue <q>
    mqueue:{<ns>:<q>}:rec      hash: sequence number -> record (the FIFO)
    mqueue:{<ns>:<q>}:idx      hash: key bytes -> sequence number (addmode 1/2)
    mqueue:{<ns>:<q>}:wake     list: wake-up token for blocked fetches

The keys of one queue share a hash tag, so every script touches one slot only
(Redis Cluster compatible).  A record is ``flags (1 byte) | klen (4 bytes,
big-endian) | key | value``; a record replaced by addmode 2 becomes a
tombstone ``"\\xff" <size>`` that keeps its bytes accounted until the head
passes it (a fetch, or an add reclaiming tombstones at the head), exactly as
in shared memory.

Fetch blocks without polling: the take script returns nothing, the client
waits with ``BLPOP`` on the queue's wake list (an add pushes one token when
none is there; a fetch that leaves items behind passes a token on), then runs
the take script again.  The wait is cut into slices of :data:`WAIT_SLICE_S`
so that Ctrl-C works and a token lost with a killed waiter only delays.

Faults: a lost connection or a server restart raises :class:`BackendError`;
nothing is retried behind the caller's back (a script whose reply was lost
may or may not have run, and the message says so).  A namespace whose keys
vanished (server restarted without persistence, or destroyed) raises
:class:`NamespaceLostError`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
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
    check_namespace,
    encode,
)
from ._defs import QueueDef
from ._errors import (
    AccessDeniedError,
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

REC_HDR = 24
"""Bytes of capacity a record costs besides its key and value (as in shared memory)."""

WAIT_SLICE_S = 1.0
"""Longest single BLPOP of a blocking fetch; the take is re-run after each slice."""

ATTACH_WAIT_S = 2.0
"""How long attach waits for a namespace that another process is still creating."""

SOCKET_TIMEOUT_S = 30.0
"""Socket timeout of the client: a silent server is reported after this long."""

_TOMBSTONE = 0xFF
_FORMAT = 1


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


def _align8(n: int) -> int:
    return (n + 7) & ~7


def record_size(klen: int, vlen: int) -> int:
    """Bytes of capacity one item takes: ``align8(24 + len(key) + len(value))``."""
    return _align8(REC_HDR + klen + vlen)


# ------------------------------------------------------------------ scripts
# Lua helpers shared by the scripts.  Numbers are Lua doubles: exact to 2**53.
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
"""

# KEYS: meta rec idx wake.  ARGV: gen, then per item: record, key-length.
# Returns the number stored (>= 0), -1 namespace gone, -2 full, -3 too big.
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
    + r"""
local m = redis.call('HMGET', KEYS[1], 'gen', 'cap', 'limit', 'mode', 'head', 'tail',
                     'count', 'bytes', 'added', 'evicted', 'dups', 'hw')
if m[1] ~= ARGV[1] then return -1 end
local cap, limit, mode = tonumber(m[2]), tonumber(m[3]), tonumber(m[4])
local n = (#ARGV - 1) / 2
local keys = {}
for i = 1, n do
  local r = ARGV[2 * i]
  if recsize(r) > cap then return -3 end
  if mode ~= 0 then keys[i] = string.sub(r, 6, 5 + tonumber(ARGV[2 * i + 1])) end
end

-- One pass over the batch.  dry: nothing is written (recs: seq -> record as
-- it would be, idx: key -> seq or false); returns -2 when an item does not fit.
local function pass(dry)
  local head, tail, count, bytes = tonumber(m[5]), tonumber(m[6]), tonumber(m[7]), tonumber(m[8])
  local added, evicted, dups, hw = tonumber(m[9]), tonumber(m[10]), tonumber(m[11]),
                                   tonumber(m[12])
  local recs, idx = {}, {}
  local function rget(s)
    if dry and recs[s] then return recs[s] end
    return redis.call('HGET', KEYS[2], s)
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
    local r = ARGV[2 * i]
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
      while head < tail do
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
    redis.call('HSET', KEYS[1], 'head', head, 'tail', tail, 'count', count, 'bytes', bytes,
               'added', added, 'evicted', evicted, 'dups', dups, 'hw', hw)
  end
  return stored
end

if limit <= 0 and pass(true) < 0 then return -2 end
local stored = pass(false)
if stored > 0 and redis.call('LLEN', KEYS[4]) == 0 then redis.call('RPUSH', KEYS[4], 1) end
return stored
"""
)

# KEYS: meta rec idx wake.  ARGV: gen, n.  Returns a list of records
# (oldest first, possibly empty) or -1 when the namespace is gone.
_LUA_TAKE = (
    _LUA_COMMON
    + r"""
local m = redis.call('HMGET', KEYS[1], 'gen', 'mode', 'head', 'tail', 'count', 'bytes',
                     'fetched')
if m[1] ~= ARGV[1] then return -1 end
local mode = tonumber(m[2])
local head, tail, count, bytes = tonumber(m[3]), tonumber(m[4]), tonumber(m[5]), tonumber(m[6])
local fetched = tonumber(m[7])
local want = tonumber(ARGV[2])
local out = {}
local head0 = head
while head < tail do
  local h = redis.call('HGET', KEYS[2], head)
  local hR, dead = recsize(h)
  if not dead then
    if #out >= want then break end
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
  redis.call('HSET', KEYS[1], 'head', head, 'count', count, 'bytes', bytes, 'fetched', fetched)
end
if count > 0 then
  if redis.call('LLEN', KEYS[4]) == 0 then redis.call('RPUSH', KEYS[4], 1) end
else
  redis.call('DEL', KEYS[4])
end
return out
"""
)

# KEYS: meta rec idx wake.  ARGV: gen, cap, limit, mode.  (Re)initialises a queue.
_LUA_INIT = r"""
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], 'gen', ARGV[1], 'cap', ARGV[2], 'limit', ARGV[3], 'mode', ARGV[4],
           'head', 0, 'tail', 0, 'count', 0, 'bytes', 0, 'added', 0, 'fetched', 0,
           'evicted', 0, 'dups', 0, 'hw', 0, 'recoveries', 0)
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

_STAT_FIELDS = (
    "gen",
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


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "<unparsable url>"


def connect(url: str) -> Any:
    """A redis-py client for ``url`` that never retries a command by itself."""
    redis = _redis_module()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        client = redis.Redis.from_url(
            url,
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
            retry_on_timeout=False,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=10.0,
            decode_responses=False,
        )
    except ValueError as e:
        raise DefinitionError(f"bad Redis url {_redact(url)!r}: {e}") from None
    return client


def _translate(e: Exception, where: str, url: str, *, unsure: bool) -> MQueueError:
    """The mqueue exception for a redis-py exception, logged (WARNING) on the
    ``mqueue`` logger as a backend fault."""
    from . import _log

    exc = _translate_exc(e, where, url, unsure=unsure)
    _log.fault(exc, level=logging.WARNING)
    return exc


def _translate_exc(e: Exception, where: str, url: str, *, unsure: bool) -> MQueueError:
    """The mqueue exception for a redis-py exception."""
    redis = _redis_module()
    ex = redis.exceptions
    target = _redact(url)
    if isinstance(e, ex.AuthenticationError | ex.NoPermissionError):
        return AccessDeniedError(f"{where}: Redis at {target} refused access: {e}")
    if isinstance(e, ex.ConnectionError | ex.TimeoutError | OSError):
        tail = (
            "; the operation may or may not have been applied on the server (nothing was retried)"
            if unsure
            else ""
        )
        return BackendError(f"{where}: lost the connection to Redis at {target} ({e}){tail}")
    if isinstance(e, ex.ResponseError):
        return BackendError(f"{where}: Redis at {target} refused the operation: {e}")
    return BackendError(f"{where}: Redis at {target} failed: {e!r}")


def _is_redis_error(e: BaseException) -> bool:
    mod = _redis_module()
    return isinstance(e, mod.exceptions.RedisError | OSError)


class _Scripts:
    """The registered scripts of one client."""

    def __init__(self, client: Any) -> None:
        self.add = client.register_script(_LUA_ADD)
        self.take = client.register_script(_LUA_TAKE)
        self.init = client.register_script(_LUA_INIT)
        self.cas = client.register_script(_LUA_CAS)
        self.del_if_gen = client.register_script(_LUA_DEL_IF_GEN)


# ------------------------------------------------------------------ classes
class RedisQueue(Queue):
    """A queue of a namespace on Redis (see :class:`mqueue.Queue`)."""

    def __init__(self, mq: MQueue, index: int, definition: QueueDef) -> None:
        super().__init__(mq, index, definition)
        rns: RedisNamespace = mq  # type: ignore[assignment]
        self._rns = rns
        self._keys = queue_keys(mq.namespace, definition.name)
        self._cap = _align8(definition.nbytes)
        self._what = f"queue {definition.name!r} of namespace {mq.namespace!r}"

    # -- helpers ---------------------------------------------------------
    def _client(self) -> Any:
        if self._rns._closed:
            raise MQueueError(f"{self._what}: the namespace handle is closed")
        return self._rns._client

    def _lost(self) -> NamespaceLostError:
        return NamespaceLostError(
            f"{self._what}: its keys are gone from Redis at {_redact(self._rns.url or '')} "
            "(destroyed or recreated, or the server restarted without persistence)"
        )

    def _run(self, script: Any, args: list[Any], *, unsure: bool) -> Any:
        client = self._client()
        try:
            return script(keys=self._keys, args=args, client=client)
        except Exception as e:
            if _is_redis_error(e):
                raise _translate(e, self._what, self._rns.url or "", unsure=unsure) from e
            raise

    def _record(self, key: object, value: object) -> tuple[bytes, int]:
        kb, ks = encode(key)
        vb, vs = encode(value)
        if record_size(len(kb), len(vb)) > self._cap or len(kb) > 0xFFFFFFFF:
            raise ItemTooLargeError(
                f"{self._what}: item of {len(kb) + len(vb)} bytes is larger than the "
                f"queue's byte capacity ({self._cap})"
            )
        flags = (FLAG_KEY_STR if ks else 0) | (FLAG_VAL_STR if vs else 0)
        return bytes((flags,)) + len(kb).to_bytes(4, "big") + kb + vb, len(kb)

    def _add_result(self, reply: Any) -> int:
        rc = int(reply)
        if rc >= 0:
            return rc
        if rc == -1:
            raise self._lost()
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
        rec, klen = self._record(key, value)
        rc = self._run(self._rns._scripts.add, [self._rns._gen, rec, klen], unsure=True)
        return self._add_result(rc) == 1

    def add_many(self, items: Iterable[tuple[Data, Data]]) -> int:
        args: list[Any] = [self._rns._gen]
        try:
            for key, value in items:
                rec, klen = self._record(key, value)
                args.append(rec)
                args.append(klen)
        except (TypeError, ValueError) as e:
            if isinstance(e, ItemTypeError | ItemTooLargeError):
                raise
            raise ItemTypeError(f"add_many takes an iterable of (key, value) pairs: {e}") from None
        if len(args) == 1:
            return 0
        rc = self._run(self._rns._scripts.add, args, unsure=True)
        return self._add_result(rc)

    def _take(self, n: int, deadline: int) -> list[Item]:
        gen = self._rns._gen
        take = self._rns._scripts.take
        while True:
            res = self._run(take, [gen, n], unsure=True)
            if not isinstance(res, list):
                if int(res) == -1:
                    raise self._lost()
                raise BackendError(f"{self._what}: unexpected reply {res!r} from Redis")
            if res:
                try:
                    return [_decode_record(r) for r in res]
                except BaseException:
                    # an exception (a signal handler's) after the server took the
                    # items: keep them for this handle's next fetch
                    with contextlib.suppress(Exception):
                        self._undelivered.extend(_decode_record(r) for r in res)
                    raise
            if deadline == 0:
                return []
            if deadline < 0:
                wait = WAIT_SLICE_S
            else:
                left = (deadline - time.monotonic_ns()) / 1e9
                if left <= 0:
                    return []
                wait = min(left, WAIT_SLICE_S)
            self._wait(max(wait, 0.001))

    def _wait(self, seconds: float) -> None:
        """Block until an add may have happened (a token) or ``seconds`` passed."""
        client = self._client()
        try:
            client.blpop([self._keys[3]], timeout=seconds)
        except Exception as e:
            if _is_redis_error(e):
                raise BackendError(
                    f"{self._what}: lost the connection to Redis at "
                    f"{_redact(self._rns.url or '')} while waiting for an item ({e}); "
                    "no item was taken"
                ) from e
            raise

    def _meta(self) -> dict[str, int]:
        client = self._client()
        try:
            vals = client.hmget(self._keys[0], list(_STAT_FIELDS))
        except Exception as e:
            if _is_redis_error(e):
                raise _translate(e, self._what, self._rns.url or "", unsure=False) from e
            raise
        if vals[0] is None or vals[0].decode() != self._rns._gen:
            raise self._lost()
        return {f: int(v) for f, v in zip(_STAT_FIELDS[1:], vals[1:], strict=True)}

    def __len__(self) -> int:
        return self._meta()["count"]

    def stats(self) -> QueueStats:
        m = self._meta()
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
        meta = {k.decode(): int(v) for k, v in client.hgetall(self._keys[0]).items() if k != b"gen"}
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


class RedisNamespace(MQueue):
    """A namespace on a Redis server (see :class:`mqueue.MQueue`)."""

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
        self._scripts = _Scripts(client)
        super().__init__(
            namespace, definitions, RedisQueue, url=url, db_url=db_url, creator=creator
        )

    def _release(self) -> None:
        with contextlib.suppress(Exception):
            self._client.close()


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
            raise NamespaceNotFoundError(f"no namespace {namespace!r} on Redis at {_redact(url)}")
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
        if m[0] is None or m[0].decode() != gen:
            raise CorruptSegmentError(
                f"{where}: queue {d.name!r} is missing from Redis or belongs to another "
                "incarnation of the namespace"
            )
        if (int(m[1]), int(m[2]), int(m[3])) != (_align8(d.nbytes), max(0, d.size), d.addmode):
            raise CorruptSegmentError(f"{where}: queue {d.name!r} does not match its definition")
    return RedisNamespace(
        namespace, defs, client=client, gen=gen, url=url, db_url=None, creator=False
    )


def attach(namespace: str, *, url: str) -> RedisNamespace:
    """Attach to an existing namespace on the Redis server at ``url``."""
    check_namespace(namespace)
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
) -> RedisNamespace:
    """Create a namespace holding these queues on the Redis server at ``url``.

    ``mode`` is checked as for shared memory but has no effect: access to a
    Redis server is governed by its own users and ACLs.
    """
    check_namespace(namespace)
    _check_url(url)
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be an int in 0..0o777, not {mode!r}")
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
                    f"namespace {namespace!r} already exists on Redis at {_redact(url)}"
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
                args = [gen, _align8(d.nbytes), max(0, d.size), d.addmode]
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
            return
        # Unreadable or missing definitions: sweep whatever keys the namespace left.
        pattern = _glob_esc(f"mqueue:{{{_esc(namespace)}:") + "*"
        found = _call(lambda: list(client.scan_iter(match=pattern, count=1000)), where, url)
        for k in found:
            _call(lambda k=k: client.delete(k), where, url)
        if raw is None and not found:
            raise NamespaceNotFoundError(f"no namespace {namespace!r} on Redis at {_redact(url)}")
    finally:
        client.close()


def list_namespaces(url: str) -> list[str]:
    """Namespaces present on the Redis server at ``url``, sorted."""
    from urllib.parse import unquote

    client = connect(_check_url(url))
    try:
        keys = _call(
            lambda: list(client.scan_iter(match="mqueue:{*}:defs", count=1000)), "list", url
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
