"""Hypothesis stateful test: random operations on one queue against a plain Python model.

The model mirrors csrc/mq.c's rules exactly:

- capacity is ``bytes`` rounded up to a multiple of 8; each record takes
  ``align8(24 + len(key) + len(value))`` bytes (key/value as UTF-8 bytes);
- an item whose record is larger than the capacity is refused (nothing changes;
  in ``add_many`` when any one item is);
- addmode 1/2 compare keys by bytes against queued (live) records only;
  addmode 1 drops the new item (``added`` and ``duplicates`` both count it),
  addmode 2 marks the old record dead: it leaves the count but keeps occupying
  its bytes until the head passes it; every add first reclaims dead records at
  the head;
- a queue with no count bound refuses an add that does not fit in bytes
  (QueueFullError; an ``add_many`` batch is all-or-nothing); a bounded queue
  drops records from the head (live ones counted as evicted, dead ones free)
  until the count and the bytes fit;
- fetch skips dead records at the head before and after each item it takes.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections import deque
from dataclasses import dataclass, field

import hypothesis.strategies as st
from hypothesis import event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import mqueue

REC_HDR = 24


def raw(x: str | bytes) -> bytes:
    return x.encode("utf-8", "surrogatepass") if isinstance(x, str) else x


def align8(n: int) -> int:
    return (n + 7) // 8 * 8


@dataclass
class Rec:
    kb: bytes
    key: str | bytes
    value: str | bytes
    size: int
    dead: bool = False


class Full(Exception):
    pass


class TooBig(Exception):
    pass


@dataclass
class Model:
    cap: int
    limit: int
    addmode: int
    recs: deque[Rec] = field(default_factory=deque)
    count: int = 0
    added: int = 0
    fetched: int = 0
    evicted: int = 0
    duplicates: int = 0
    high_water: int = 0

    @property
    def used(self) -> int:
        return sum(r.size for r in self.recs)

    def snapshot(self) -> tuple:
        return (
            [Rec(r.kb, r.key, r.value, r.size, r.dead) for r in self.recs],
            self.count,
            self.added,
            self.fetched,
            self.evicted,
            self.duplicates,
            self.high_water,
        )

    def restore(self, snap: tuple) -> None:
        recs, *counters = snap
        self.recs = deque(recs)
        (self.count, self.added, self.fetched, self.evicted, self.duplicates, self.high_water) = (
            counters
        )

    def record_size(self, key: str | bytes, value: str | bytes) -> int:
        r = align8(REC_HDR + len(raw(key)) + len(raw(value)))
        if r > self.cap:
            raise TooBig
        return r

    def _add_one(self, key: str | bytes, value: str | bytes) -> int:
        R = self.record_size(key, value)
        kb = raw(key)
        unbounded = self.limit <= 0
        if self.addmode:
            found = next((r for r in self.recs if not r.dead and r.kb == kb), None)
            if found is not None:
                self.duplicates += 1
                if self.addmode == 1:
                    self.added += 1
                    return 0
                found.dead = True
                self.count -= 1
        self._skip_dead()  # replaced records at the head hold no item: reclaimed first
        if unbounded and self.used + R > self.cap:
            raise Full  # the caller restores the snapshot: nothing changes
        while (self.limit > 0 and self.count + 1 > self.limit) or self.used + R > self.cap:
            r = self.recs.popleft()
            if not r.dead:
                self.count -= 1
                self.evicted += 1
        self.recs.append(Rec(kb, key, value, R))
        self.count += 1
        self.added += 1
        self.high_water = max(self.high_water, self.count)
        return 1

    def add_many(self, items: list[tuple[str | bytes, str | bytes]]) -> int:
        for k, v in items:
            self.record_size(k, v)  # raises TooBig before anything changes
        snap = self.snapshot()
        try:
            return sum(self._add_one(k, v) for k, v in items)
        except Full:
            self.restore(snap)
            raise

    def _skip_dead(self) -> None:
        while self.recs and self.recs[0].dead:
            self.recs.popleft()

    def take(self, n: int) -> list[tuple[str | bytes, str | bytes]]:
        out: list[tuple[str | bytes, str | bytes]] = []
        if n == 0:  # fetch_many(0) does not touch the queue
            return out
        self._skip_dead()
        while len(out) < n and self.recs:
            r = self.recs.popleft()
            assert not r.dead
            out.append((r.key, r.value))
            self.count -= 1
            self.fetched += 1
            self._skip_dead()
        return out


KEYS = st.sampled_from(["a", "b", "c", b"a", b"b", "", b"", "é", "\ud800", b"\xc3\xa9"])
VALUES = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    st.integers(0, 400).map(lambda n: "v" * n),
    st.integers(0, 400).map(lambda n: b"\0" * n),
)


def typed(x: object) -> tuple[type, object]:
    return (type(x), x)


def typed_items(items) -> list:
    return [(typed(k), typed(v)) for k, v in items]


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.mq: mqueue.MQueue | None = None
        self.ns = f"t{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.held: tuple | None = None

    @initialize(
        size=st.integers(0, 5),
        nbytes=st.integers(256, 2048),
        addmode=st.integers(0, 2),
    )
    def setup(self, size: int, nbytes: int, addmode: int) -> None:
        self.mq = mqueue.create(self.ns, [f"name=q;size={size};addmode={addmode};bytes={nbytes}"])
        self.q = self.mq["q"]
        self.model = Model(cap=align8(nbytes), limit=size, addmode=addmode)

    def teardown(self) -> None:
        if self.mq is not None:
            self.mq.close()
        with contextlib.suppress(mqueue.NamespaceNotFoundError):
            mqueue.destroy(self.ns)

    def _expect(self, model_call, real_call):
        """Run both; return (model_result, real_result) or compare exception kinds."""
        snap = self.model.snapshot()
        try:
            want = model_call()
            want_exc = None
        except (Full, TooBig) as e:
            want, want_exc = None, e
            event(f"model raised {type(e).__name__}")
            self.model.restore(snap)
        try:
            got = real_call()
            got_exc = None
        except (mqueue.QueueFullError, mqueue.ItemTooLargeError) as e:
            got, got_exc = None, e
        if want_exc is None:
            assert got_exc is None, f"model succeeded with {want!r}, queue raised {got_exc!r}"
        elif isinstance(want_exc, Full):
            assert isinstance(got_exc, mqueue.QueueFullError), f"want QueueFullError, got {got!r}"
        else:
            assert isinstance(got_exc, mqueue.ItemTooLargeError), f"want ItemTooLarge, got {got!r}"
        return want, got

    @rule(key=KEYS, value=VALUES)
    def add(self, key, value) -> None:
        want, got = self._expect(
            lambda: self.model.add_many([(key, value)]), lambda: self.q.add(key, value)
        )
        if want is not None:
            assert got is (want == 1)

    @rule(items=st.lists(st.tuples(KEYS, VALUES), max_size=8))
    def add_many(self, items) -> None:
        want, got = self._expect(lambda: self.model.add_many(items), lambda: self.q.add_many(items))
        assert want == got

    @rule()
    def fetch(self) -> None:
        want = self.model.take(1)
        got = self.q.fetch()
        if want:
            assert got is not None and typed_items([got]) == typed_items(want)
            self.held = want[0]
        else:
            assert got is None
            self.held = None

    @rule(n=st.integers(0, 7))
    def fetch_many(self, n) -> None:
        want = self.model.take(n)
        got = self.q.fetch_many(n)
        if (
            self.model.recs
            and self.model.recs[-1].dead is False
            and any(r.dead for r in self.model.recs)
        ):
            event("dead records queued")
        assert typed_items(got) == typed_items(want)

    @rule()
    def free(self) -> None:
        self.q.free()
        self.held = None

    @invariant()
    def counters_match(self) -> None:
        m = self.model
        assert len(self.q) == m.count
        s = self.q.stats()
        assert (s.length, s.added, s.fetched, s.evicted, s.duplicates, s.high_water) == (
            m.count,
            m.added,
            m.fetched,
            m.evicted,
            m.duplicates,
            m.high_water,
        )
        assert s.recoveries == 0
        assert s.bytes_used == m.used
        assert s.capacity == m.cap
        assert s.size_limit == m.limit and s.addmode == m.addmode
        assert s.added == s.fetched + s.evicted + s.duplicates + s.length
        if m.limit > 0:
            assert s.length <= m.limit
        assert s.bytes_used <= s.capacity

    @invariant()
    def held_matches(self) -> None:
        if self.held is None:
            assert self.q.key is None and self.q.value is None
        else:
            k, v = self.held
            assert typed(self.q.key) == typed(k) and typed(self.q.value) == typed(v)


QueueMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("MQ_MODEL_EXAMPLES", "500")),
    stateful_step_count=40,
    deadline=None,
    database=None,
)
TestQueueModel = QueueMachine.TestCase


def _run_random_batches(seed: int, rounds: int) -> None:
    """Large add_many batches full of repeated keys on small unbounded and
    bounded queues: the cases where a batch replaces and reclaims its own
    records, so that its writes could reach bytes of the committed state
    before it fails (the dry run in mq.c's add_many_impl)."""
    import random

    rnd = random.Random(seed)
    keys: list[str | bytes] = ["a", "b", b"c", "d", ""]
    for _ in range(rounds):
        size = rnd.choice([0, 0, 0, 3])
        nbytes = rnd.choice([256, 300, 400])
        addmode = rnd.choice([0, 1, 2, 2, 2])
        ns = f"t{os.getpid()}_{uuid.uuid4().hex[:8]}"
        mq = mqueue.create(ns, [f"name=q;size={size};bytes={nbytes};addmode={addmode}"])
        try:
            q = mq["q"]
            model = Model(cap=align8(nbytes), limit=size, addmode=addmode)
            for _ in range(16):
                if rnd.random() < 0.75:
                    items = [
                        (rnd.choice(keys), b"w" * rnd.randint(0, 40))
                        for _ in range(rnd.randint(1, 14))
                    ]
                    try:
                        want: object = model.add_many(items)
                    except Full:
                        want = "full"
                    except TooBig:
                        want = "toobig"
                    try:
                        got: object = q.add_many(items)
                    except mqueue.QueueFullError:
                        got = "full"
                    except mqueue.ItemTooLargeError:
                        got = "toobig"
                    assert got == want, (items, got, want)
                else:
                    n = rnd.randint(1, 4)
                    assert [tuple(i) for i in q.fetch_many(n)] == model.take(n)
                st = q.stats()
                assert (st.length, st.added, st.evicted, st.duplicates, st.bytes_used) == (
                    model.count,
                    model.added,
                    model.evicted,
                    model.duplicates,
                    model.used,
                )
            assert [tuple(i) for i in q.fetch_many(1000)] == model.take(1000)
        finally:
            mq.close()
            mqueue.destroy(ns)


def test_random_large_batches_against_model() -> None:
    _run_random_batches(seed=20261127, rounds=300)


def test_refused_batch_that_reclaims_its_own_records_changes_nothing() -> None:
    """Found by comparing with the Redis backend: a refused unbounded batch used
    to write over bytes of the committed state before it failed."""
    ns = f"t{os.getpid()}_{uuid.uuid4().hex[:8]}"
    mq = mqueue.create(ns, ["name=q;size=0;bytes=300;addmode=2"])
    try:
        q = mq["q"]
        q.add_many([("a", b"w" * 5), ("d", b"w" * 32), ("d", b"w" * 25)])
        batch: list[tuple[str | bytes, bytes]] = [
            ("b", b"w" * 7), ("a", b"w" * 8), ("a", b"w" * 29), ("a", b""), ("b", b"w" * 14),
            (b"c", b""), ("d", b"w" * 34), (b"c", b"w" * 36), ("", b"w" * 40),
            ("a", b"w" * 12), ("a", b"w" * 4),
        ]  # fmt: skip
        with contextlib.suppress(mqueue.QueueFullError):
            q.add_many(batch)
        assert q.fetch_many(10) == [("a", b"w" * 5), ("d", b"w" * 25)]
    finally:
        mq.close()
        mqueue.destroy(ns)
