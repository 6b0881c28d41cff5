/* mq.c - the mqueue engine: crash-safe named queues in one shared segment.
 *
 * The lock, liveness and the wake-up word are in lock.c / live.c (lock.h);
 * the Python-shaped entry points in adapters.c (mq_internal.h says which
 * file holds what).  This file runs the repair when the lock reports that
 * it was taken over from a dead owner (q_lock, q_recover).
 *
 * Crash consistency: every operation builds the new queue state (head, tail,
 * count, counters) in the inactive of two state copies and publishes it with
 * one release store of `cur`.  New record bytes are written before that,
 * into ring space no queued record occupies.  So a process killed at any
 * instruction leaves the queue before or after the operation.  The index
 * chains and the `dead` marks are derived data: they may be touched before
 * the commit, and q_rebuild() re-derives them from the committed records
 * after a crash or an aborted operation.
 *
 * Nothing read from the segment is trusted: the layout is recomputed and
 * compared on attach, the state is checked every time it is loaded, and every
 * record header and chain position is bounds-checked before use.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "lock.h"
#include "mq_internal.h"

#define NLINK_CHECK_NS 100000000LL   /* 100 ms: how often a call checks the file was not removed */
#define CREATE_GRACE_NS 1000000000LL /* 1 s: an empty, unlocked segment younger than this may be
                                      * a creator between its O_EXCL open and its creator lock */

__thread int mq_errno;

int mq_last_errno(void) { return mq_errno; }

/* ------------------------------------------------------------ test kill points */
#ifdef MQ_TESTING
const char *mq_kill_point(void) {
    static const char *kp;
    static int init;
    if (!init) { kp = getenv("MQ_KILLPOINT"); init = 1; }
    return kp;
}
int mq_testing(void) { return 1; }
#else
int mq_testing(void) { return 0; }
#endif

/* ------------------------------------------------------------ small helpers */
static uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

/* FNV-1a hash of n bytes (the key index).  Returns the hash. */
static uint64_t fnv1a(const char *p, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) { h ^= (uint8_t)p[i]; h *= 1099511628211ULL; }
    return h;
}

/* Index buckets for a capacity: a power of two >= cap / 64, at least 16. */
static uint64_t nbuckets_for(uint64_t cap) {
    uint64_t want = cap / 64, n = 16;
    while (n < want) n <<= 1;
    return n;
}

/* Size of the record for klen/vlen, or 0 when it cannot fit a uint32 len. */
static uint64_t rec_size(size_t klen, size_t vlen) {
    if (klen > UINT32_MAX || vlen > UINT32_MAX) return 0;
    uint64_t n = align_up((uint64_t)MQ_REC_HDR + klen + vlen, 8);
    return n > UINT32_MAX ? 0 : n;
}

/* ------------------------------------------------------------ layout */
/* Where everything of a segment goes (layout_compute), with the queue
 * parameters it was computed from.  About 150 KiB: too big for the stack,
 * so the calls that need one (mq_segment_size, mq_create, ns_build) share
 * one per thread, layout_scratch; none of them calls another while using it
 * (mq_create calls mq_attach only after its last use). */
struct layout {
    uint64_t meta_off, qtable_off, total;
    uint64_t index_off[MQ_MAX_QUEUES], nbuckets[MQ_MAX_QUEUES], data_off[MQ_MAX_QUEUES];
    uint64_t caps[MQ_MAX_QUEUES];   /* the inputs: capacity (rounded up to 8), addmode */
    uint32_t am[MQ_MAX_QUEUES];
};

static __thread struct layout layout_scratch;

/* Computes where everything goes.  Returns 0, or MQ_EINVAL for parameters
 * no segment may have (out is then partly written and meaningless). */
static int layout_compute(uint32_t nq, const uint64_t *caps, const uint32_t *addmodes,
                          uint64_t meta_len, struct layout *out) {
    if (nq > MQ_MAX_QUEUES || meta_len > (1u << 30)) return MQ_EINVAL;
    uint64_t off = align_up(sizeof(struct seg_hdr), 64);
    out->meta_off = off;
    off = align_up(off + meta_len, 64);
    out->qtable_off = off;
    off += (uint64_t)nq * sizeof(struct q_hdr);
    for (uint32_t i = 0; i < nq; i++) {
        uint64_t cap = caps[i];
        if (cap < 64 || cap > (1ULL << 40) || cap % 8 || addmodes[i] > 2) return MQ_EINVAL;
        if (addmodes[i]) {
            out->nbuckets[i] = nbuckets_for(cap);
            out->index_off[i] = off;
            off = align_up(off + out->nbuckets[i] * 8, 64);
        } else {
            out->nbuckets[i] = 0;
            out->index_off[i] = 0;
        }
        out->data_off[i] = off;
        off = align_up(off + 2 * cap, 64);
        if (off > (1ULL << 46)) return MQ_EINVAL;
    }
    out->total = align_up(off, 4096);
    return 0;
}

/* Checks creation parameters and fills caps (rounded up to 8) and am.
 * Returns 0 or MQ_EINVAL (caps/am then partly written, meaningless). */
static int params_check(uint32_t nq, const struct mq_qparam *p, uint64_t *caps, uint32_t *am) {
    if (nq > MQ_MAX_QUEUES || (nq && !p)) return MQ_EINVAL;
    for (uint32_t i = 0; i < nq; i++) {
        if (p[i].addmode > 2 || p[i].capacity < 64 || p[i].capacity > (1ULL << 40)) return MQ_EINVAL;
        caps[i] = align_up(p[i].capacity, 8);
        am[i] = p[i].addmode;
    }
    return 0;
}

/* See mq.h. */
int mq_segment_size(uint32_t nq, const struct mq_qparam *params, size_t meta_len, uint64_t *out) {
    struct layout *L = &layout_scratch;
    if (!out) return MQ_EINVAL;
    int rc = params_check(nq, params, L->caps, L->am);
    if (rc) return rc;
    rc = layout_compute(nq, L->caps, L->am, meta_len, L);
    if (rc) return rc;
    *out = L->total;
    return 0;
}

/* ------------------------------------------------------------ ring access */
/* Physical offset of logical position pos (a mask for the usual power-of-two
 * capacities, a division otherwise). */
static inline uint64_t ring_off(const struct mq_q *q, uint64_t pos) {
    return q->mask ? (pos & q->mask) : pos % q->phys;
}

/* Copies n bytes to logical position pos of the ring, wrapping at the
 * physical end (n <= phys, checked by callers).  Never fails. */
static void copy_in(const struct mq_q *q, uint64_t pos, const void *src, size_t n) {
    uint64_t o = ring_off(q, pos), first = q->phys - o;
    if (n <= first) { memcpy(q->data + o, src, n); return; }
    memcpy(q->data + o, src, first);
    memcpy(q->data, (const uint8_t *)src + first, n - first);
}

/* Copies n bytes from logical position pos of the ring, wrapping at the
 * physical end (n <= phys, checked by callers).  Never fails. */
static void copy_out(const struct mq_q *q, uint64_t pos, void *dst, size_t n) {
    uint64_t o = ring_off(q, pos), first = q->phys - o;
    if (n <= first) { memcpy(dst, q->data + o, n); return; }
    memcpy(dst, q->data + o, first);
    memcpy((uint8_t *)dst + first, q->data, n - first);
}

/* Compares n ring bytes at pos with p.  Returns 1 when equal. */
static int ring_eq(const struct mq_q *q, uint64_t pos, const char *p, size_t n) {
    uint64_t o = ring_off(q, pos), first = q->phys - o;
    if (n <= first) return memcmp(q->data + o, p, n) == 0;
    return memcmp(q->data + o, p, first) == 0 && memcmp(q->data, p + first, n - first) == 0;
}

/* fnv1a() of n ring bytes at pos.  Returns the hash. */
static uint64_t ring_hash(const struct mq_q *q, uint64_t pos, size_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) { h ^= q->data[ring_off(q, pos + i)]; h *= 1099511628211ULL; }
    return h;
}

/* Reads and checks the record header at pos, which must end by lim.
 * Returns 0, or MQ_ECORRUPT (r is then meaningless). */
static int rec_read(const struct mq_q *q, uint64_t pos, uint64_t lim, struct rec_hdr *r) {
    if ((pos & 7) || pos >= lim || lim - pos < MQ_REC_HDR) return MQ_ECORRUPT;
    copy_out(q, pos, r, sizeof *r);
    if (r->len < MQ_REC_HDR || (r->len & 7) || r->len > lim - pos) return MQ_ECORRUPT;
    if ((uint64_t)MQ_REC_HDR + r->klen + r->vlen > r->len) return MQ_ECORRUPT;
    return 0;
}

/* Sets the dead mark of the record at pos (derived data: see q_rebuild).
 * Never fails. */
static void rec_set_dead(const struct mq_q *q, uint64_t pos, uint8_t dead) {
    copy_in(q, pos + offsetof(struct rec_hdr, dead), &dead, 1);
}

/* ------------------------------------------------------------ state */
#define LIVE_HEAD_NONE UINT64_MAX   /* never a record position (those are 8-aligned) */

/* Loads the current state (caller holds the lock) into *s and checks it.
 * Returns 0 or MQ_ECORRUPT. */
static int state_load(const struct mq_q *q, struct q_state *s) {
    /* acquire: pairs with the release in state_commit, so the state copy and
     * the records it covers are seen whole */
    uint32_t c = atomic_load_explicit(&q->h->cur, memory_order_acquire) & 1;
    s->p = q->h->st[c];
    s->cold_dirty = 0;
    s->live_head = LIVE_HEAD_NONE;
    s->count = s->p.added - s->p.fetched - s->p.evicted - s->p.duplicates;   /* wraps when damaged: caught below */
    if (s->p.tail < s->p.head || s->p.tail - s->p.head > q->cap || (s->p.head & 7) || (s->p.tail & 7))
        return MQ_ECORRUPT;
    if (s->count > (s->p.tail - s->p.head) / MQ_REC_HDR) return MQ_ECORRUPT;
    if (s->p.rsv_n) {   /* a pending reservation: [rsv, rsv_end) <= head, all within capacity */
        if (s->p.rsv > s->p.rsv_end || s->p.rsv_end > s->p.head || s->p.tail - s->p.rsv > q->cap ||
            (s->p.rsv & 7) || (s->p.rsv_end & 7) || s->p.rsv_n > (s->p.rsv_end - s->p.rsv) / MQ_REC_HDR ||
            s->p.rsv_tag == 0)
            return MQ_ECORRUPT;
    }
    return 0;
}

/* Where the bytes in use begin: the reservation's first record while one is
 * pending (its records stay in the ring), else the head. */
static inline uint64_t q_start(const struct q_state *s) { return s->p.rsv_n ? s->p.rsv : s->p.head; }

/* Forgets the pending reservation in the working copy (not published).
 * Never fails. */
static void rsv_clear(struct q_state *s) {
    s->p.rsv = s->p.rsv_end = s->p.rsv_n = s->p.rsv_tag = s->p.rsv_owner = s->p.rsv_db = 0;
    s->cold_dirty = 1;
}

/* Publishes *s: the operation's commit point.  Writes the first line of the
 * inactive copy, or both when the second line changed (then, after the flip,
 * the second line also into the copy that just became inactive, so both copies
 * agree again: see q_pstate).  Never fails. */
static void state_commit(const struct mq_q *q, struct q_state *s) {
    uint32_t c = atomic_load_explicit(&q->h->cur, memory_order_relaxed) & 1; /* stable: we hold the lock */
    int both = s->cold_dirty;
    memcpy(&q->h->st[c ^ 1], &s->p, both ? sizeof s->p : offsetof(struct q_pstate, rsv));
    KILLPOINT("commit_before_flip");
    /* release: orders the new record bytes, dead marks and the state copy
     * above before the flip; one store, so a crash leaves old or new state */
    atomic_store_explicit(&q->h->cur, c ^ 1, memory_order_release);
    if (both) {
        KILLPOINT("commit_before_sync");
        /* under the lock, read by nobody until we unlock; a crash before this
         * copy is followed by q_recover, which commits both lines again */
        memcpy((char *)&q->h->st[c] + offsetof(struct q_pstate, rsv),
               (const char *)&s->p + offsetof(struct q_pstate, rsv),
               sizeof s->p - offsetof(struct q_pstate, rsv));
        s->cold_dirty = 0;
    }
}

/* ------------------------------------------------------------ key index */
/* Looks for a live record with this key in [head, lim).  Returns 1 and *pos
 * when found, 0 when not, MQ_ECORRUPT for a damaged record. */
static int idx_find(const struct mq_q *q, uint64_t hash, const char *key, size_t klen,
                    uint64_t head, uint64_t lim, uint64_t *pos) {
    uint64_t e = atomic_load_explicit(&q->buckets[hash & (q->nbuckets - 1)], memory_order_relaxed);
    while (e) {
        uint64_t p = e - 1;
        if (p < head || p >= lim) return 0;          /* older entries were fetched or evicted */
        struct rec_hdr r;
        if (rec_read(q, p, lim, &r)) return MQ_ECORRUPT;
        if (!r.dead && r.klen == klen && ring_eq(q, p + MQ_REC_HDR, key, klen)) {
            *pos = p;
            return 1;
        }
        if (r.next == 0 || r.next - 1 >= p) return 0;  /* chains strictly descend: no loops */
        e = r.next;
    }
    return 0;
}

/* addmode 1 ("the first item of a key wins"): looks for a live record with
 * this key among the pending reservation's records [s->p.rsv, s->p.rsv_end).  A
 * reserved item is not queued, but it is not gone either: its save or fetch
 * may still put it back, and then it must be the only item of its key, so
 * while it is reserved a later add of its key is refused as a duplicate.
 * The chains hold reserved records (linked when added, and by q_rebuild);
 * records in [rsv_end, head) were fetched or evicted meanwhile and are
 * skipped, as are records at or above head (idx_find's part).  Returns 1
 * (found), 0 (not found, or no reservation) or MQ_ECORRUPT. */
static int idx_find_reserved(const struct mq_q *q, const struct q_state *s, uint64_t hash,
                             const char *key, size_t klen) {
    if (s->p.rsv_n == 0) return 0;
    /* relaxed: the index is read and written under the queue's lock only */
    uint64_t e = atomic_load_explicit(&q->buckets[hash & (q->nbuckets - 1)], memory_order_relaxed);
    while (e) {
        uint64_t p = e - 1;
        if (p < s->p.rsv || p >= s->p.tail) return 0;      /* older than the reservation (or damage) */
        struct rec_hdr r;
        if (rec_read(q, p, s->p.tail, &r)) return MQ_ECORRUPT;
        if (p < s->p.rsv_end && !r.dead && r.klen == klen && ring_eq(q, p + MQ_REC_HDR, key, klen))
            return 1;
        if (r.next == 0 || r.next - 1 >= p) return 0;  /* chains strictly descend: no loops */
        e = r.next;
    }
    return 0;
}

/* Rebuilds the index chains, the dead marks and the count from the records
 * in [s->p.head, s->p.tail) (the committed state).  Used by recovery and to undo
 * an aborted operation.  Returns 0 with s->count set, or MQ_ECORRUPT. */
static int q_rebuild(const struct mq_q *q, struct q_state *s) {
    s->live_head = LIVE_HEAD_NONE;   /* dead marks are re-derived below */
    uint64_t count = 0;
    if (q->buckets)
        for (uint64_t b = 0; b < q->nbuckets; b++)
            atomic_store_explicit(&q->buckets[b], 0, memory_order_relaxed);
    if (q->buckets && q->addmode == 1 && s->p.rsv_n) {
        /* addmode 1: the reserved records stay in the index (idx_find_reserved
         * refuses their keys); not counted: they are not queued */
        for (uint64_t p = s->p.rsv; p < s->p.rsv_end;) {
            struct rec_hdr r;
            if (rec_read(q, p, s->p.rsv_end, &r)) return MQ_ECORRUPT;
            if (!(r.gone & REC_GONE) && !r.dead) {
                uint64_t b = ring_hash(q, p + MQ_REC_HDR, r.klen) & (q->nbuckets - 1);
                /* relaxed: under the lock; derived data, rebuilt again after a crash */
                uint64_t next = atomic_load_explicit(&q->buckets[b], memory_order_relaxed);
                copy_in(q, p + offsetof(struct rec_hdr, next), &next, sizeof next);
                atomic_store_explicit(&q->buckets[b], p + 1, memory_order_relaxed);
            }
            p += r.len;
        }
    }
    for (uint64_t p = s->p.head; p < s->p.tail;) {
        struct rec_hdr r;
        if (rec_read(q, p, s->p.tail, &r)) return MQ_ECORRUPT;
        uint8_t dead = 0;
        if (r.gone & REC_GONE) {   /* left by a put-back (mq_settle): never an item again */
            if (!r.dead) rec_set_dead(q, p, 1);
            p += r.len;
            continue;
        }
        if (q->buckets) {
            uint64_t kpos = p + MQ_REC_HDR, h = ring_hash(q, kpos, r.klen);
            uint64_t b = h & (q->nbuckets - 1);
            if (q->addmode == 2) {
                /* a later record of a key replaces every earlier one */
                uint64_t e = atomic_load_explicit(&q->buckets[b], memory_order_relaxed);
                while (e) {
                    uint64_t o = e - 1;
                    struct rec_hdr or;
                    if (rec_read(q, o, s->p.tail, &or)) return MQ_ECORRUPT;
                    if (!or.dead && or.klen == r.klen) {
                        int same = 1;
                        for (uint32_t i = 0; i < r.klen && same; i++)
                            same = q->data[ring_off(q, kpos + i)] ==
                                   q->data[ring_off(q, o + MQ_REC_HDR + i)];
                        if (same) { rec_set_dead(q, o, 1); count--; break; }
                    }
                    if (or.next == 0 || or.next - 1 >= o) break;
                    e = or.next;
                }
            }
            uint64_t next = atomic_load_explicit(&q->buckets[b], memory_order_relaxed);
            copy_in(q, p + offsetof(struct rec_hdr, next), &next, sizeof next);
            atomic_store_explicit(&q->buckets[b], p + 1, memory_order_relaxed);
        }
        if (r.dead != dead) rec_set_dead(q, p, dead);
        count++;
        p += r.len;
    }
    s->count = count;
    return 0;
}

/* ------------------------------------------------------------ the lock (lock.c) */
/* Repairs a queue whose lock owner died (caller now holds the lock):
 * re-derives the index, dead marks and count from the committed records,
 * heals the lock's wait accounting, counts a recovery and commits.  Returns
 * 0 or MQ_ECORRUPT (then nothing is committed and the caller must unlock). */
static int q_recover(const struct mq_q *q) {
    /* full fence: the dead owner's last stores reached memory before the
     * kernel released its OFD lock, which we observed through a syscall;
     * this orders our reads after that observation */
    atomic_thread_fence(memory_order_seq_cst);
    KILLPOINT("recover_begin");
    struct q_state s;
    if (state_load(q, &s)) return MQ_ECORRUPT;
    uint64_t derived = s.count;
    if (q_rebuild(q, &s)) return MQ_ECORRUPT;
    if (s.count != derived) return MQ_ECORRUPT;   /* records and counters disagree: damage */
    s.p.recoveries++;
    if (s.count > s.p.high_water) s.p.high_water = s.count;
    s.cold_dirty = 1;   /* the dead owner may have died before copying the second line */
    if (lock_heal(q->h)) return MQ_ECORRUPT;   /* the wait accounting the dead process left */
    KILLPOINT("recover_before_commit");
    state_commit(q, &s);
    return 0;
}

/* Releases q's lock.  Never fails. */
static inline void q_unlock(const struct mq_q *q) {
    KILLPOINT("unlock_before_release");
    lock_release(q->h);
}

/* Takes q's lock, repairing the queue first when the lock was taken over
 * from a dead owner.  Returns 0 when taken; lock_acquire's codes (MQ_EINTR,
 * MQ_EAGAIN, MQ_ECLOSED), or MQ_ECORRUPT when a dead owner's queue could not
 * be repaired; on failure the lock is not held. */
static inline int q_lock(const mq_ns *ns, const struct mq_q *q) {
    int rc = lock_acquire(ns, q->h);
    if (__builtin_expect(rc == LOCK_DEAD_OWNER, 0)) {
        if (q_recover(q)) { q_unlock(q); return MQ_ECORRUPT; }
        return 0;
    }
    return rc;
}

/* Takes q's lock and loads its state into *s (for the calls off the hot
 * paths; mq_add and mq_fetch_* spell it out).  Returns 0 with the lock held;
 * on failure q_lock's code, or MQ_ECORRUPT when the state does not check,
 * with the lock not held and the queue left as q_lock left it. */
static int q_lock_load(const mq_ns *ns, const struct mq_q *q, struct q_state *s) {
    int rc = q_lock(ns, q);
    if (rc) return rc;
    if (state_load(q, s)) { q_unlock(q); return MQ_ECORRUPT; }
    return 0;
}

/* ------------------------------------------------------------ attach */
static int q_index(const mq_ns *ns, uint32_t qi, const struct mq_q **q) {
    if (!ns || qi >= ns->nq) return MQ_ERANGE;
    *q = &ns->q[qi];
    return 0;
}

static void ns_leave(mq_ns *ns) {
    /* release: this call's uses of the mapping happen before mq_detach,
     * which waits for the count to reach 0, unmaps it */
    atomic_fetch_sub_explicit(&ns->inflight, 1, memory_order_release);
}

/* Returns CLOCK_MONOTONIC_COARSE in ns (a vDSO read, no system call; ticks
 * of a few ms, enough to space out the nlink checks). */
static int64_t coarse_ns(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) != 0) return 0;   /* cannot fail on Linux */
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* Marks the segment lost (if it is still marked ready) and wakes every
 * process blocked in a fetch on one of its queues, so that it sees the mark
 * at once rather than at the end of its wait slice.  Never fails. */
static void seg_mark_lost(const mq_ns *ns) {
    uint64_t ready = MQ_MAGIC;
    /* seq_cst: the mark is ordered before the seq bumps below, so a waiter
     * woken by them (or whose FUTEX_WAIT sees seq moved) then reads it.  A
     * failed CAS means it is already marked (or damaged): nothing to undo. */
    (void)atomic_compare_exchange_strong_explicit(&ns->h->magic, &ready, MQ_MAGIC_LOST,
                                            memory_order_seq_cst, memory_order_seq_cst);
    for (uint32_t i = 0; i < ns->nq; i++) {
        struct q_hdr *qh = ns->q[i].h;
        /* seq_cst: after the mark (above), before the wake-up */
        atomic_fetch_add_explicit(&qh->seq, 1, memory_order_seq_cst);
        /* shared futex: the waiters are other processes; a failure only
         * delays them to the end of their slice */
        if (syscall(SYS_futex, &qh->seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0) < 0) { }
    }
}

/* Is the namespace behind ns gone?  Reads the mark (one load of a
 * read-mostly line); when `force` or every NLINK_CHECK_NS, also checks that
 * the file still has a name (a segment removed from /dev/shm by hand), and
 * marks it lost for everyone when it has not.  Returns 0 (not lost),
 * MQ_ELOST, or MQ_ECORRUPT for a header whose magic was overwritten. */
static int ns_check_lost(const mq_ns *ns, int force) {
    /* acquire: pairs with seg_mark_lost's seq_cst CAS (a plain flag) */
    uint64_t magic = atomic_load_explicit(&ns->h->magic, memory_order_acquire);
    if (magic == MQ_MAGIC_LOST) return MQ_ELOST;
    if (magic != MQ_MAGIC) return MQ_ECORRUPT;
    struct mq_map *m = ns->map;
    if (!m->linked) return 0;
    int64_t now = coarse_ns();
    /* relaxed: a time hint; racing threads at worst both run the fstat */
    if (!force && now < atomic_load_explicit(&m->next_check, memory_order_relaxed)) return 0;
    atomic_store_explicit(&m->next_check, now + NLINK_CHECK_NS, memory_order_relaxed);
    struct stat st;
    if (fstat(m->fd, &st) != 0 || st.st_nlink > 0) return 0;   /* cannot tell, or still named */
    seg_mark_lost(ns);
    return MQ_ELOST;
}

/* Counts a call in flight on ns (so mq_detach never unmaps under it) and
 * checks that the namespace was not destroyed.  Returns 0, MQ_ERANGE for a
 * NULL handle, MQ_ECLOSED once detached, the broken code (mq_reattach),
 * MQ_ELOST / MQ_ECORRUPT (ns_check_lost); not counted on failure. */
static int ns_enter(mq_ns *ns) {
    if (!ns) return MQ_ERANGE;
    /* seq_cst pair with mq_detach: either it sees our count, or we see closing */
    atomic_fetch_add_explicit(&ns->inflight, 1, memory_order_seq_cst);
    uint32_t c = atomic_load_explicit(&ns->closing, memory_order_seq_cst);
    if (c) {
        ns_leave(ns);
        return c == 2 ? ns->broken : MQ_ECLOSED;
    }
    /* relaxed: the destroy mark is a flag on a line nobody writes until
     * then; the nlink check is due at most every NLINK_CHECK_NS */
    if (atomic_load_explicit(&ns->h->magic, memory_order_relaxed) != MQ_MAGIC ||
        (ns->map->linked &&
         coarse_ns() >= atomic_load_explicit(&ns->map->next_check, memory_order_relaxed))) {
        int rc = ns_check_lost(ns, 0);
        if (rc) {
            ns_leave(ns);
            return rc;
        }
    }
    return 0;
}


/* Validates a mapped segment and builds the handle.  Returns 0 and *out,
 * or a negative code with nothing allocated. */
static int ns_build(uint8_t *base, uint64_t size, mq_ns **out) {
    struct layout *L = &layout_scratch;
    struct seg_hdr *h = (struct seg_hdr *)base;
    /* acquire: pairs with the creator's release store of magic, so the
     * formatted header and tables are seen whole */
    uint64_t magic = atomic_load_explicit(&h->magic, memory_order_acquire);
    if (magic == MQ_MAGIC_INIT) return MQ_ENOTREADY;   /* the creator is formatting */
    if (magic == MQ_MAGIC_LOST) return MQ_ELOST;       /* destroyed */
    if (magic == 0) {
        for (size_t i = 0; i < sizeof *h; i++) if (base[i]) return MQ_EMAGIC;
        return MQ_ENOTREADY;
    }
    if (magic != MQ_MAGIC) return MQ_EMAGIC;
    /* Validate and use one private copy of the fixed header fields, so that a
     * concurrent writer cannot change a field between its check and its use. */
    struct seg_hdr hc;
    memcpy(&hc, h, offsetof(struct seg_hdr, slot_gen));
    if (hc.layout_version != MQ_LAYOUT_VERSION) return MQ_EVERSION;
    if (hc.hdr_size != sizeof(struct seg_hdr) || hc.qhdr_size != sizeof(struct q_hdr) ||
        hc.nslots != MQ_NSLOTS || hc.rec_hdr != MQ_REC_HDR || hc.total_size != size ||
        hc.nqueues > MQ_MAX_QUEUES || hc.meta_len > (1u << 30))
        return MQ_ECORRUPT;
    uint32_t nq = hc.nqueues;
    if (hc.qtable_off > size || (uint64_t)nq * sizeof(struct q_hdr) > size - hc.qtable_off ||
        (hc.qtable_off % 64))
        return MQ_ECORRUPT;
    struct q_hdr *qt = (struct q_hdr *)(base + hc.qtable_off);
    for (uint32_t i = 0; i < nq; i++) {
        L->caps[i] = qt[i].capacity;
        L->am[i] = qt[i].addmode;
    }
    if (layout_compute(nq, L->caps, L->am, hc.meta_len, L)) return MQ_ECORRUPT;
    if (L->total != size || L->meta_off != hc.meta_off || L->qtable_off != hc.qtable_off)
        return MQ_ECORRUPT;
    mq_ns *ns = calloc(1, sizeof *ns + (size_t)nq * sizeof(struct mq_q));
    if (!ns) return MQ_ENOMEM;
    for (uint32_t i = 0; i < nq; i++) {
        struct q_hdr *qh = &qt[i];
        if (qh->data_off != L->data_off[i] || qh->phys != 2 * L->caps[i] ||
            qh->index_off != L->index_off[i] || qh->nbuckets != L->nbuckets[i]) {
            free(ns);
            return MQ_ECORRUPT;
        }
        struct mq_q *q = &ns->q[i];
        q->h = qh;
        q->data = base + L->data_off[i];
        q->phys = 2 * L->caps[i];
        q->mask = (q->phys & (q->phys - 1)) == 0 ? q->phys - 1 : 0;
        q->cap = L->caps[i];
        q->limit = qh->size_limit;
        q->addmode = L->am[i];
        q->nbuckets = L->nbuckets[i];
        q->buckets = L->am[i] ? (_Atomic uint64_t *)(base + L->index_off[i]) : NULL;
    }
    ns->base = base;
    ns->size = size;
    ns->h = h;
    ns->nq = nq;
    ns->meta = (const char *)base + L->meta_off;
    ns->meta_len = hc.meta_len;
    *out = ns;
    return 0;
}

/* A segment that is not ready (empty, zero header or still marked as being
 * formatted): is its creator alive?  Returns MQ_ENOTREADY while another open
 * file description holds the creator lock, or while an empty file is
 * younger than CREATE_GRACE_NS (its creator may be between the O_EXCL open
 * and taking the lock); MQ_EHALFMADE otherwise (the creator died); MQ_ESYS
 * when the lock cannot be tested. */
static int not_ready(int fd, const struct stat *st) {
    int held = ofd(fd, F_WRLCK, MQ_CREATOR_BYTE, F_OFD_GETLK);
    if (held < 0) { mq_errno = -held; return MQ_ESYS; }
    if (held) return MQ_ENOTREADY;                   /* a live creator is formatting */
    if (st->st_size == 0) {
        struct timespec now;
        if (clock_gettime(CLOCK_REALTIME, &now) != 0) return MQ_ENOTREADY;
        int64_t age = ((int64_t)now.tv_sec - st->st_mtim.tv_sec) * NS_PER_S +
                      (now.tv_nsec - st->st_mtim.tv_nsec);
        if (age < CREATE_GRACE_NS) return MQ_ENOTREADY;
    }
    return MQ_EHALFMADE;
}

int mq_attach(int fd, mq_ns **out) {
    struct stat st;
    if (!out || fd < 0) return MQ_EINVAL;
    if (fstat(fd, &st) != 0) return sys_fail();
    if (st.st_size == 0) return not_ready(fd, &st);
    if ((uint64_t)st.st_size < sizeof(struct seg_hdr)) return MQ_ECORRUPT;
    uint64_t size = (uint64_t)st.st_size;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) return sys_fail();
    mq_ns *ns = NULL;
    struct mq_map *m = NULL;
    int rc = ns_build(base, size, &ns);
    if (rc == MQ_ENOTREADY) rc = not_ready(fd, &st);
    if (rc == 0) {
        m = calloc(1, sizeof *m);
        rc = m ? 0 : MQ_ENOMEM;
    }
    if (rc == 0) {
        m->fd = fcntl(fd, F_DUPFD_CLOEXEC, 3);   /* same open file description: same locks */
        if (m->fd < 0) rc = sys_fail();
    }
    if (rc == 0) {
        rc = slot_claim(ns->h, m->fd, &m->slot, &m->me);
        if (rc) close(m->fd);
    }
    if (rc) {
        free(m);
        free(ns);
        if (munmap(base, size) != 0) { /* nothing more can be done */ }
        return rc;
    }
    m->slot_pid = getpid();
    m->linked = st.st_nlink > 0;
    /* relaxed: process-local, published to other threads with the handle */
    atomic_store_explicit(&m->refs, 1, memory_order_relaxed);
    atomic_store_explicit(&m->next_check, coarse_ns() + NLINK_CHECK_NS, memory_order_relaxed);
    ns->map = m;
    *out = ns;
    return 0;
}

int mq_creator_lock(int fd) {
    if (fd < 0) return MQ_EINVAL;
    int rc = ofd(fd, F_WRLCK, MQ_CREATOR_BYTE, F_OFD_SETLK);
    if (rc == -EAGAIN || rc == -EACCES) return MQ_ENOTREADY;
    if (rc < 0) { mq_errno = -rc; return MQ_ESYS; }
    return 0;
}

int mq_create(int fd, uint32_t nq, const struct mq_qparam *params,
              const char *meta, size_t meta_len, mq_ns **out) {
    struct layout *L = &layout_scratch;
    struct stat st;
    if (!out || fd < 0 || (meta_len && !meta)) return MQ_EINVAL;
    int rc = params_check(nq, params, L->caps, L->am);
    if (rc) return rc;
    for (uint32_t i = 0; i < nq; i++)
        if (params[i].size_limit < 0) return MQ_EINVAL;
    rc = layout_compute(nq, L->caps, L->am, meta_len, L);
    if (rc) return rc;
    if (fstat(fd, &st) != 0) return sys_fail();
    if ((uint64_t)st.st_size != L->total) return MQ_EINVAL;
    uint8_t *base = mmap(NULL, L->total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) return sys_fail();
    struct seg_hdr *h = (struct seg_hdr *)base;
    if (atomic_load_explicit(&h->magic, memory_order_relaxed) != 0) {   /* not fresh */
        rc = MQ_EINVAL;
        goto out;
    }
    /* relaxed: attachers that see this marker wait (MQ_ENOTREADY) and only
     * trust the header once the release store of MQ_MAGIC below */
    atomic_store_explicit(&h->magic, MQ_MAGIC_INIT, memory_order_relaxed);
    DIE_IN_CREATE("create_formatting");
    h->layout_version = MQ_LAYOUT_VERSION;
    h->hdr_size = sizeof(struct seg_hdr);
    h->qhdr_size = sizeof(struct q_hdr);
    h->nqueues = nq;
    h->nslots = MQ_NSLOTS;
    h->rec_hdr = MQ_REC_HDR;
    h->total_size = L->total;
    h->meta_off = L->meta_off;
    h->meta_len = meta_len;
    h->qtable_off = L->qtable_off;
    if (meta_len) memcpy(base + L->meta_off, meta, meta_len);
    struct q_hdr *qt = (struct q_hdr *)(base + L->qtable_off);
    for (uint32_t i = 0; i < nq; i++) {
        struct q_hdr *qh = &qt[i];
        qh->data_off = L->data_off[i];
        qh->phys = 2 * L->caps[i];
        qh->capacity = L->caps[i];
        qh->size_limit = params[i].size_limit;
        qh->index_off = L->index_off[i];
        qh->nbuckets = L->nbuckets[i];
        qh->addmode = L->am[i];
        rc = lock_init(qh);
        if (rc) goto out;
    }
    /* release: the whole formatted header, tables and semaphores before the
     * magic that tells attachers the segment is ready */
    atomic_store_explicit(&h->magic, MQ_MAGIC, memory_order_release);
    /* Ready: attachers no longer look at the creator lock.  A failure to
     * drop it only means it goes when the descriptor is closed. */
    if (ofd(fd, F_UNLCK, MQ_CREATOR_BYTE, F_OFD_SETLK) != 0) { }
    rc = 0;
out:
    if (munmap(base, L->total) != 0 && rc == 0) rc = sys_fail();
    if (rc) return rc;
    return mq_attach(fd, out);
}

/* Leaves ns broken: every later call through it returns rc (until
 * mq_detach).  Returns rc. */
static int ns_break(mq_ns *ns, int rc) {
    ns->broken = rc;
    uint32_t open = 0;
    /* seq_cst: as mq_detach's CAS (ns_enter's Dekker pair); a handle that is
     * already closing stays so */
    atomic_compare_exchange_strong_explicit(&ns->closing, &open, 2, memory_order_seq_cst,
                                            memory_order_seq_cst);
    return rc;
}

int mq_reattach(mq_ns *ns, int newfd) {
    int slot;
    uint64_t me;
    if (!ns) return MQ_EINVAL;
    /* relaxed: after fork only this thread exists */
    uint32_t c = atomic_load_explicit(&ns->closing, memory_order_relaxed);
    if (c == 1) return MQ_ECLOSED;
    struct mq_map *m = ns->map;
    /* after fork only this thread exists: calls the parent's other threads
     * had in flight are not ours */
    atomic_store_explicit(&ns->inflight, 0, memory_order_relaxed);
    if (m->slot_pid == getpid())                     /* a clone already re-attached the mapping */
        return c == 2 ? ns->broken : 0;
    if (c == 2) return ns->broken;                   /* broken in an earlier generation */
    if (newfd < 0) return ns_break(ns, MQ_ELOST);
    /* newfd must name the very segment we mapped (the name may have been
     * destroyed and created again meanwhile). */
    struct stat a, b;
    if (fstat(m->fd, &a) != 0 || fstat(newfd, &b) != 0) return ns_break(ns, sys_fail());
    if (a.st_dev != b.st_dev || a.st_ino != b.st_ino || (uint64_t)b.st_size != ns->size)
        return ns_break(ns, MQ_ELOST);
    int nfd = fcntl(newfd, F_DUPFD_CLOEXEC, 3);
    if (nfd < 0) return ns_break(ns, sys_fail());
    /* The mapping inherited from the parent holds the parent's open file
     * description, and so its OFD lock (its liveness), for as long as this
     * process lives.  Map the same pages through newfd at the same address
     * (MAP_FIXED replaces the old mapping atomically; pointers stay valid). */
    void *p = mmap(ns->base, ns->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, nfd, 0);
    if (p == MAP_FAILED) {
        int rc = sys_fail();
        close(nfd);
        return ns_break(ns, rc);
    }
    int rc = slot_claim(ns->h, nfd, &slot, &me);
    if (rc) {
        /* the mapping is this process's own now, but without a slot the
         * handle must not operate: the parent's liveness would vouch for it */
        close(nfd);
        return ns_break(ns, rc);
    }
    /* The inherited descriptor shares the parent's open file description:
     * closing it here leaves the parent's locks alone. */
    if (close(m->fd) != 0) { }
    m->fd = nfd;
    m->slot = slot;
    m->slot_pid = getpid();
    m->me = me;
    return 0;
}

int mq_clone(mq_ns *ns, mq_ns **out) {
    if (!out) return MQ_EINVAL;
    int rc = ns_enter(ns);                           /* the mapping cannot go meanwhile */
    if (rc) return rc == MQ_ERANGE ? MQ_EINVAL : MQ_ECLOSED;
    size_t sz = sizeof *ns + (size_t)ns->nq * sizeof(struct mq_q);
    mq_ns *c = malloc(sz);
    if (!c) {
        ns_leave(ns);
        return MQ_ENOMEM;
    }
    memcpy(c, ns, sz);
    c->broken = 0;
    /* relaxed: process-local; published to other threads with the handle */
    atomic_store_explicit(&c->inflight, 0, memory_order_relaxed);
    atomic_store_explicit(&c->closing, 0, memory_order_relaxed);
    /* relaxed: the count only decides who unmaps; ns is held in flight */
    atomic_fetch_add_explicit(&ns->map->refs, 1, memory_order_relaxed);
    ns_leave(ns);
    *out = c;
    return 0;
}

void mq_detach(mq_ns *ns) {
    if (!ns) return;
    /* seq_cst: see ns_enter; only the first detach goes on (idempotent);
     * a broken handle (2) is detached too */
    uint32_t c = atomic_load_explicit(&ns->closing, memory_order_seq_cst);
    do {
        if (c == 1) return;
    } while (!atomic_compare_exchange_weak_explicit(&ns->closing, &c, 1, memory_order_seq_cst,
                                                    memory_order_seq_cst));
    struct mq_map *m = ns->map;
    /* A forked child that never re-attached inherited the parent's count of
     * calls in flight: those threads do not exist in this process. */
    if (m->slot_pid != getpid()) atomic_store_explicit(&ns->inflight, 0, memory_order_relaxed);
    /* Calls of other threads finish first: a blocked fetch or lock wait
     * notices `closing` within one slice and returns MQ_ECLOSED.  seq_cst:
     * the other half of ns_enter's Dekker pair (closing vs inflight). */
    while (atomic_load_explicit(&ns->inflight, memory_order_seq_cst)) {
        struct timespec z = {0, 1000000};
        nanosleep(&z, NULL);
    }
    /* acq_rel: the last handle out sees every other handle's uses of the
     * mapping finished before it unmaps */
    if (atomic_fetch_sub_explicit(&m->refs, 1, memory_order_acq_rel) != 1) return;
    /* Dropping the OFD lock frees the slot (closing the fd would too).  Only
     * the claiming process may: a forked child that never re-attached shares
     * the parent's open file description, and unlocking it would make the
     * living parent look dead. */
    if (m->slot_pid == getpid() && ofd(m->fd, F_UNLCK, m->slot, F_OFD_SETLK) != 0) {
        /* nothing more can be done: closing the fd below drops it anyway */
    }
    if (close(m->fd) != 0) { }
    if (munmap(ns->base, ns->size) != 0) { /* cannot happen for a valid mapping */ }
    free(m);
    /* The handle struct itself is kept (a few bytes per queue): a binding
     * that still holds the pointer gets MQ_ECLOSED, never freed memory. */
}

void mq_free(mq_ns *ns) {
    mq_detach(ns);
    free(ns);
}

int mq_mark_lost(int fd) {
    struct stat st;
    if (fd < 0) return MQ_EINVAL;
    if (fstat(fd, &st) != 0) return sys_fail();
    if ((uint64_t)st.st_size < sizeof(struct seg_hdr)) return MQ_ENOTREADY;
    uint64_t size = (uint64_t)st.st_size;
    void *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) return sys_fail();
    mq_ns *ns = NULL;
    int rc = ns_build(base, size, &ns);
    if (rc == 0) {
        seg_mark_lost(ns);
        free(ns);
    } else if (rc == MQ_ELOST) {
        rc = 0;                                      /* already marked */
    }
    if (munmap(base, size) != 0) { /* cannot happen for a valid mapping */ }
    return rc;
}

uint32_t mq_nqueues(const mq_ns *ns) { return ns ? ns->nq : 0; }
/* The slot is the mapping's, shared by clones; -1 for NULL. */
int mq_slot(const mq_ns *ns) { return ns ? ns->map->slot : -1; }

int mq_meta(const mq_ns *ns, const char **data, size_t *len) {
    if (!ns || !data || !len) return MQ_EINVAL;
    *data = ns->meta;
    *len = ns->meta_len;
    return 0;
}

/* ------------------------------------------------------------ add */
/* Advances s->p.head over whole records until an item of R more bytes fits
 * (and, on a bounded queue, one more item fits the count).  Dead records are
 * reclaimed, live ones counted as evicted.  Returns 0 or MQ_ECORRUPT. */
static int make_room(const struct mq_q *q, struct q_state *s, uint64_t R) {
    while ((q->limit > 0 && s->count + 1 > (uint64_t)q->limit) || (s->p.tail - q_start(s)) + R > q->cap) {
        struct rec_hdr r;
        if (s->p.rsv_n && (s->p.tail - s->p.rsv) + R > q->cap) {
            /* Bytes are short while a reservation holds the oldest records:
             * only dropping it frees them.  Its items are the oldest, so they
             * go first, counted as evicted instead of fetched. */
            s->p.fetched -= s->p.rsv_n;
            s->p.evicted += s->p.rsv_n;
            rsv_clear(s);
            continue;
        }
        if (s->p.head == s->p.tail) return MQ_ECORRUPT;   /* R <= cap, so impossible when sane */
        if (rec_read(q, s->p.head, s->p.tail, &r)) return MQ_ECORRUPT;
        if (!r.dead) {
            if (s->count == 0) return MQ_ECORRUPT;
            s->count--;
            s->p.evicted++;
        }
        s->p.head += r.len;
    }
    return 0;
}

/* Writes one record at s->p.tail (space checked by the caller), links it into
 * the index and updates *s.  Not yet published. */
static void put_record(const struct mq_q *q, struct q_state *s, uint64_t hash, const char *key,
                       size_t klen, const char *val, size_t vlen, uint32_t flags, uint64_t R) {
    struct rec_hdr r;
    memset(&r, 0, sizeof r);
    r.len = (uint32_t)R;
    r.klen = (uint32_t)klen;
    r.vlen = (uint32_t)vlen;
    r.flags = (uint8_t)flags;
    uint64_t pos = s->p.tail;
    if (q->buckets) r.next = atomic_load_explicit(&q->buckets[hash & (q->nbuckets - 1)], memory_order_relaxed);
    copy_in(q, pos, &r, sizeof r);
    if (klen) copy_in(q, pos + MQ_REC_HDR, key, klen);
    KILLPOINT("add_mid_copy");
    if (vlen) copy_in(q, pos + MQ_REC_HDR + klen, val, vlen);
    if (q->buckets)   /* relaxed: under the lock; a crash before commit is undone by q_rebuild */
        atomic_store_explicit(&q->buckets[hash & (q->nbuckets - 1)], pos + 1, memory_order_relaxed);
    s->p.tail += R;
    s->count++;
    s->p.added++;
    if (s->count > s->p.high_water) s->p.high_water = s->count;
}

/* Undoes uncommitted index/dead-mark changes and unlocks.  Returns rc. */
static int abort_op(const struct mq_q *q, int rc) {
    struct q_state s;
    if (state_load(q, &s) == 0 && q_rebuild(q, &s) == 0) { /* derived data restored */ }
    q_unlock(q);
    return rc;
}

static int skip_dead(const struct mq_q *q, struct q_state *s);

/* The derived-data changes (index buckets, dead marks) of an add_many on an
 * unbounded queue with a key index, logged so that a batch refused for room
 * (MQ_EFULL) half-way is undone in O(batch) (undo_apply) rather than by
 * re-deriving the index of the whole queue (abort_op): the cost of a refused
 * add must not grow with the queue.  At most two entries per item. */
struct undo {
    struct undo_ent {
        uint64_t where;         /* bucket index, or UNDO_DEAD | record position */
        uint64_t old;           /* the bucket's old value */
    } *e;
    size_t n;
};
#define UNDO_DEAD (1ULL << 63)

/* Restores, newest first, what u logged, then unlocks.  Returns rc. */
static int undo_apply(const struct mq_q *q, struct undo *u, int rc) {
    while (u->n > 0) {
        const struct undo_ent *x = &u->e[--u->n];
        if (x->where & UNDO_DEAD) rec_set_dead(q, x->where & ~UNDO_DEAD, 0);   /* was live: idx_find found it */
        else   /* relaxed: under the lock, as put_record's store */
            atomic_store_explicit(&q->buckets[x->where], x->old, memory_order_relaxed);
    }
    q_unlock(q);
    return rc;
}

/* One item of an add: dedup, room, write.  Returns 1 stored, 0 dropped
 * (addmode 1), or a negative code: MQ_EFULL leaves the segment as it was
 * but for the changes logged in u (only *s changed, which the caller drops;
 * u may be NULL when nothing was changed before this item); any other code
 * may leave derived data (index, dead marks) to be restored by abort_op. */
static int add_one(const struct mq_q *q, struct q_state *s, const char *key, size_t klen,
                   const char *val, size_t vlen, uint32_t flags, uint64_t R, struct undo *u) {
    uint64_t hash = 0, killed = 0;
    if (q->buckets) {
        /* 0 only for the compiler: idx_find sets it whenever it returns 1,
         * the one case it is read, but gcc 12's LTO inlining loses track of
         * that and -Werror=maybe-uninitialized stops the build */
        uint64_t found = 0;
        hash = fnv1a(key, klen);
        int rc = idx_find(q, hash, key, klen, s->p.head, s->p.tail, &found);
        if (rc == 0 && q->addmode == 1 && s->p.rsv_n)   /* reserved, not gone: refused too */
            rc = idx_find_reserved(q, s, hash, key, klen);
        if (rc < 0) return rc;
        if (rc == 1) {
            s->p.duplicates++;
            if (q->addmode == 1) { s->p.added++; return 0; }
            rec_set_dead(q, found, 1);     /* addmode 2: the old one goes */
            s->live_head = LIVE_HEAD_NONE;  /* it may have been the head */
            KILLPOINT("add_after_kill");
            s->count--;
            killed = found + 1;
        }
    }
    /* Replaced records at the head hold no item: reclaim their bytes first. */
    int rc = skip_dead(q, s);
    if (rc) return rc;
    if (q->limit <= 0 && (s->p.tail - q_start(s)) + R > q->cap) {
        if (killed) rec_set_dead(q, killed - 1, 0);   /* undo: nothing changes */
        return MQ_EFULL;
    }
    rc = make_room(q, s, R);
    if (rc) return rc;
    if (u) {
        if (killed) u->e[u->n++] = (struct undo_ent){UNDO_DEAD | (killed - 1), 0};
        uint64_t b = hash & (q->nbuckets - 1);
        /* relaxed: under the lock */
        u->e[u->n++] = (struct undo_ent){b, atomic_load_explicit(&q->buckets[b], memory_order_relaxed)};
    }
    put_record(q, s, hash, key, klen, val, vlen, flags, R);
    return 1;
}

/* mq_add without the in-flight accounting.  Returns as mq_add. */
static int add_impl(mq_ns *ns, uint32_t qi, const char *key, size_t klen,
                    const char *val, size_t vlen, uint32_t flags) {
    const struct mq_q *q;
    int rc = q_index(ns, qi, &q);
    if (rc) return rc;
    if ((klen && !key) || (vlen && !val) || (flags & ~MQ_FLAGS_MASK)) return MQ_EINVAL;
    uint64_t R = rec_size(klen, vlen);
    if (R == 0 || R > q->cap) return MQ_ETOOBIG;
    rc = q_lock(ns, q);
    if (rc) return rc;
    KILLPOINT("add_locked");
    struct q_state s;
    if (state_load(q, &s)) { q_unlock(q); return MQ_ECORRUPT; }
    rc = add_one(q, &s, key, klen, val, vlen, flags, R, NULL);
    if (rc == MQ_EFULL) { q_unlock(q); return rc; }   /* nothing was touched */
    if (rc < 0) return abort_op(q, rc);
    KILLPOINT("add_before_commit");
    state_commit(q, &s);
    KILLPOINT("add_after_commit");
    uint32_t w = rc == 1 ? q_bump(q) : 0;   /* under the lock: its line is ours now */
    q_unlock(q);
    if (w) q_wake(q, 1, w);
    return rc;
}

/* One record of the dry run below: a committed record (key in the ring at
 * kpos) or an item of the batch (key in the caller's data). */
struct sim_rec {
    uint64_t R, hash, kpos;
    const char *key;            /* NULL: the key is in the ring */
    uint32_t klen;
    uint8_t dead;
};

/* Returns 1 when r's key equals key. */
static int sim_key_eq(const struct mq_q *q, const struct sim_rec *r, const char *key, size_t klen) {
    if (r->klen != klen) return 0;
    return r->key ? memcmp(r->key, key, klen) == 0 : ring_eq(q, r->kpos, key, klen);
}

/* Slot of `key` in the open-addressing table (its record, or the empty slot
 * where it would go). */
static size_t sim_slot(const struct mq_q *q, const struct sim_rec *recs, const int64_t *tab,
                       size_t mask, uint64_t hash, const char *key, size_t klen) {
    size_t i = hash & mask;
    while (tab[i] >= 0 && !(recs[tab[i]].hash == hash && sim_key_eq(q, &recs[tab[i]], key, klen)))
        i = (i + 1) & mask;
    return i;
}

/* Decides, without changing anything, whether a whole batch fits an
 * unbounded queue, following add_one's steps exactly (duplicates, replaced
 * records reclaimed at the head, the byte check) on a process-local copy of
 * the queue's record list.  Needed only when the batch may write over bytes
 * of the committed state before it could fail: then the real pass must be
 * sure to succeed, so that it may publish in several steps.  Costs a scan of
 * the queue.  Returns 0 (fits), MQ_EFULL, MQ_ENOMEM, MQ_ECORRUPT. */
static int sim_batch(const struct mq_q *q, const struct q_state *s0, const char *data,
                     const uint32_t *lens, size_t n) {
    size_t nc = 0;
    for (uint64_t p = s0->p.head; p < s0->p.tail; nc++) {
        struct rec_hdr r;
        if (rec_read(q, p, s0->p.tail, &r)) return MQ_ECORRUPT;
        p += r.len;
    }
    size_t total = nc + n, tabn = 16;
    while (tabn < 2 * total) tabn <<= 1;
    struct sim_rec *recs = malloc(total * sizeof *recs);
    int64_t *tab = q->buckets ? malloc(tabn * sizeof *tab) : NULL;
    int rc = MQ_ENOMEM;
    if (!recs || (q->buckets && !tab)) goto out;
    if (tab) memset(tab, 0xff, tabn * sizeof *tab);      /* all -1: empty */
    size_t nr = 0;
    for (uint64_t p = s0->p.head; p < s0->p.tail; nr++) {
        struct rec_hdr r;
        if (nr == nc) { rc = MQ_ECORRUPT; goto out; }   /* the records changed under us */
        if (rec_read(q, p, s0->p.tail, &r)) { rc = MQ_ECORRUPT; goto out; }
        struct sim_rec *x = &recs[nr];
        x->R = r.len;
        x->kpos = p + MQ_REC_HDR;
        x->key = NULL;
        x->klen = r.klen;
        x->dead = r.dead;
        x->hash = tab ? ring_hash(q, x->kpos, r.klen) : 0;
        if (tab && !x->dead) {          /* committed live keys are unique: no compare */
            size_t i = x->hash & (tabn - 1);
            while (tab[i] >= 0) i = (i + 1) & (tabn - 1);
            tab[i] = (int64_t)nr;
        }
        p += r.len;
    }
    size_t h = 0;
    uint64_t used = s0->p.tail - q_start(s0);
    int reclaim = s0->p.rsv_n == 0;   /* a pending reservation keeps every byte from rsv on */
    const char *p = data;
    for (size_t i = 0; i < n; i++) {
        size_t kl = lens[3 * i], vl = lens[3 * i + 1];
        uint64_t R = rec_size(kl, vl), hash = 0;
        size_t slot = 0;
        if (tab) {
            hash = fnv1a(p, kl);
            slot = sim_slot(q, recs, tab, tabn - 1, hash, p, kl);
            if (tab[slot] >= 0 && !recs[tab[slot]].dead) {
                if (q->addmode == 1) { p += kl + vl; continue; }   /* dropped */
                recs[tab[slot]].dead = 1;                            /* replaced */
            } else if (q->addmode == 1 && s0->p.rsv_n) {
                int found = idx_find_reserved(q, s0, hash, p, kl);   /* as add_one */
                if (found < 0) { rc = found; goto out; }
                if (found) { p += kl + vl; continue; }               /* dropped */
            }
        }
        while (h < nr && recs[h].dead) {
            if (reclaim) used -= recs[h].R;
            h++;
        }
        if (used + R > q->cap) { rc = MQ_EFULL; goto out; }
        recs[nr] = (struct sim_rec){R, hash, 0, p, (uint32_t)kl, 0};
        if (tab) tab[slot] = (int64_t)nr;
        nr++;
        used += R;
        p += kl + vl;
    }
    rc = 0;
out:
    free(tab);
    free(recs);
    return rc;
}

/* mq_add_many without the in-flight accounting.  Returns as mq_add_many. */
static int64_t add_many_impl(mq_ns *ns, uint32_t qi, const char *data, size_t data_len,
                             const uint32_t *lens, size_t n) {
    const struct mq_q *q;
    int rc = q_index(ns, qi, &q);
    if (rc) return rc;
    if (n == 0) return 0;
    if (!lens || (data_len && !data) || n > (size_t)1 << 40) return MQ_EINVAL;
    uint64_t total = 0, total_R = 0;
    for (size_t i = 0; i < n; i++) {            /* check every item first */
        uint64_t kl = lens[3 * i], vl = lens[3 * i + 1];
        if (lens[3 * i + 2] & ~MQ_FLAGS_MASK) return MQ_EINVAL;
        uint64_t R = rec_size(kl, vl);
        if (R == 0 || R > q->cap) return MQ_ETOOBIG;
        total += kl + vl;
        total_R += R;
        if (total > data_len) return MQ_EINVAL;
    }
    rc = q_lock(ns, q);
    if (rc) return rc;
    struct q_state s;
    if (state_load(q, &s)) { q_unlock(q); return MQ_ECORRUPT; }
    uint64_t committed_start = q_start(&s);   /* committed bytes: [committed_start, tail) */
    /* A bounded queue never fails for space, so it may publish a batch in
     * steps.  An unbounded one fails whole or succeeds whole: when the batch
     * could write over committed bytes before it fails (only when it replaces
     * and reclaims its own or queued records), decide first by a dry run. */
    int may_split = q->limit > 0;
    struct undo undo = {NULL, 0}, *u = NULL;
    if (!may_split && (s.p.tail - q_start(&s)) + total_R > q->cap) {
        /* It may not fit.  Without a key index nothing in the batch frees
         * bytes (no duplicates, no replaced records): only the replaced
         * records already at the head can go, so the answer is known now,
         * whatever the queue holds. */
        if (!q->buckets) {
            if (skip_dead(q, &s)) { q_unlock(q); return MQ_ECORRUPT; }
            if ((s.p.tail - q_start(&s)) + total_R > q->cap) { q_unlock(q); return MQ_EFULL; }
        } else if ((s.p.tail - q_start(&s)) + total_R > q->phys) {
            rc = sim_batch(q, &s, data, lens, n);
            if (rc) { q_unlock(q); return rc; }
            may_split = 1;
        } else {
            /* duplicates may make it fit: try, logging what to undo */
            undo.e = malloc(2 * n * sizeof *undo.e);
            u = undo.e ? &undo : NULL;   /* no memory: a refusal re-derives the index */
        }
    }
    int64_t stored = 0, pending = 0;
    const char *p = data;
    for (size_t i = 0; i < n; i++) {
        size_t kl = lens[3 * i], vl = lens[3 * i + 1];
        uint64_t R = rec_size(kl, vl);
        /* The record goes at [tail, tail + R); it must not overwrite bytes of
         * the last published state.  Only a batch larger than the free space
         * gets here, and only when it cannot fail: publish what we have first. */
        if (may_split) {
            if (s.p.tail + R - committed_start > q->phys) {
                state_commit(q, &s);
                committed_start = q_start(&s);
                q_notify(q, pending);
                pending = 0;
            }
        }
        rc = add_one(q, &s, p, kl, p + kl, vl, lens[3 * i + 2], R, u);
        if (rc < 0) {   /* after a split, only on damage */
            if (rc == MQ_EFULL && u) rc = undo_apply(q, u, rc);
            else rc = abort_op(q, rc);
            free(undo.e);
            return rc;
        }
        stored += rc;
        pending += rc;
        p += kl + vl;
        KILLPOINT("add_many_mid");
    }
    free(undo.e);
    state_commit(q, &s);
    uint32_t w = pending ? q_bump(q) : 0;   /* under the lock: its line is ours now */
    q_unlock(q);
    if (w) q_wake(q, pending, w);
    return stored;
}

int mq_add(mq_ns *ns, uint32_t qi, const char *key, size_t klen,
           const char *val, size_t vlen, uint32_t flags) {
    int rc = ns_enter(ns);
    if (rc) return rc;
    rc = add_impl(ns, qi, key, klen, val, vlen, flags);
    ns_leave(ns);
    return rc;
}

int64_t mq_add_many(mq_ns *ns, uint32_t qi, const char *data, size_t data_len,
                    const uint32_t *lens, size_t n) {
    int rc = ns_enter(ns);
    if (rc) return rc;
    int64_t r = add_many_impl(ns, qi, data, data_len, lens, n);
    ns_leave(ns);
    return r;
}

/* ------------------------------------------------------------ fetch */
/* Skips dead records at s->p.head.  Returns 0 or MQ_ECORRUPT. */
static int skip_dead(const struct mq_q *q, struct q_state *s) {
    /* looked already in this operation, and nothing marked it dead since
     * (add_one forgets it when it marks a record dead, q_rebuild always) */
    if (s->p.head == s->live_head) return 0;
    while (s->p.head < s->p.tail) {
        struct rec_hdr r;
        if (rec_read(q, s->p.head, s->p.tail, &r)) return MQ_ECORRUPT;
        if (!r.dead) { s->live_head = s->p.head; return 0; }
        s->p.head += r.len;
    }
    if (s->count) return MQ_ECORRUPT;
    return 0;
}

/* Takes up to max items under one lock hold.  With bo, every key and value
 * is followed by a NUL byte and bo describes the batch.  Returns the number
 * taken (0 = empty), MQ_EBUF (meta[0] = need), or a negative code; nothing
 * is taken on failure.  meta[2] (the first item's flags) is written only
 * once the take is committed: a binding that set it to a value no flags word
 * has can tell from it alone whether anything was taken, whatever the call
 * returned (failures after a copy leave it untouched). */
static int64_t take(const struct mq_q *q, uint32_t max, char *buf, size_t bufsize, uint32_t *meta,
                    struct batch_out *bo) {
    struct q_state s;
    if (state_load(q, &s)) return MQ_ECORRUPT;
    uint64_t head0 = s.p.head;
    int64_t n = 0;
    size_t used = 0, sep = bo ? 1 : 0;
    uint32_t info = MQ_BATCH_UNIFORM | MQ_BATCH_NONUL, first_flags = 0;
    while (n < (int64_t)max && s.p.head < s.p.tail) {
        struct rec_hdr r;
        if (rec_read(q, s.p.head, s.p.tail, &r)) return MQ_ECORRUPT;
        if (r.dead) { s.p.head += r.len; continue; }   /* replaced: reclaimed, as skip_dead does */
        size_t need = (size_t)r.klen + r.vlen + 2 * sep;
        if (need > bufsize - used) {
            if (n == 0) { meta[0] = (uint32_t)(need > UINT32_MAX ? UINT32_MAX : need); return MQ_EBUF; }
            break;
        }
        if (sep) {
            char *k = buf + used, *v = k + r.klen + 1;
            copy_out(q, s.p.head + MQ_REC_HDR, k, r.klen);
            k[r.klen] = 0;
            copy_out(q, s.p.head + MQ_REC_HDR + r.klen, v, r.vlen);
            v[r.vlen] = 0;
            if (memchr(k, 0, r.klen) || memchr(v, 0, r.vlen)) info &= ~MQ_BATCH_NONUL;
            if (n > 0 && (r.flags & MQ_FLAGS_MASK) != first_flags) info &= ~MQ_BATCH_UNIFORM;
        } else {
            copy_out(q, s.p.head + MQ_REC_HDR, buf + used, need);
        }
        KILLPOINT("fetch_after_copy");
        meta[3 * n] = r.klen;
        meta[3 * n + 1] = r.vlen;
        if (n == 0) first_flags = r.flags & MQ_FLAGS_MASK;   /* meta[2]: after the commit */
        else meta[3 * n + 2] = r.flags & MQ_FLAGS_MASK;
        used += need;
        s.p.head += r.len;
        if (s.count == 0) return MQ_ECORRUPT;
        s.count--;
        s.p.fetched++;
        n++;
    }
    if (skip_dead(q, &s)) return MQ_ECORRUPT;   /* replaced records after the last one taken */
    if (n == 0 && s.count) return MQ_ECORRUPT;
    if (n || s.p.head != head0) state_commit(q, &s);
    if (n) meta[2] = first_flags;   /* the "taken" marker: only now that the take is committed */
    KILLPOINT("fetch_after_commit");
    if (bo) {
        bo->total = used;
        bo->info = info | (first_flags << 8);
    }
    return n;
}

/* The fetch loop: take, or spin, or sleep on the futex word until the
 * deadline.  Returns as mq_fetch_many; nothing is taken on failure. */
static int64_t fetch_impl(mq_ns *ns, uint32_t qi, uint32_t max, int64_t deadline,
                      char *buf, size_t bufsize, uint32_t *meta, struct batch_out *bo) {
    const struct mq_q *q;
    int rc = q_index(ns, qi, &q);
    if (rc) return rc;
    if (!meta || (bufsize && !buf) || max == 0 || deadline < -1) return MQ_EINVAL;
    /* when this call first found the queue empty (0: not yet); read only
     * then, not on every call: a clock read costs a streaming consumer ~20 ns
     * per item (issue 10) */
    int64_t started = 0;
    for (;;) {
        rc = q_lock(ns, q);
        if (rc) return rc;
        int64_t n = take(q, max, buf, bufsize, meta, bo);
        /* Read only when the queue was empty (a streaming consumer leaves the
         * line to the producer), under the lock: every add bumps seq after
         * its publish, under the lock or after it, so an add this take did
         * not see moves seq after this read and FUTEX_WAIT returns at once.
         * relaxed: the lock orders it. */
        uint32_t seq0 = n == 0 ? atomic_load_explicit(&q->h->seq, memory_order_relaxed) : 0;
        q_unlock(q);
        if (n != 0) return n;
        if (deadline == 0) return 0;
        if (started == 0) started = mono_ns();
        if (q_spin(q, seq0, deadline)) continue;      /* an add arrived meanwhile */
        int w = q_wait(q, seq0, deadline);
        if (w < 0) return w;
        if (w == 1) return 0;
        if (ns_closing(ns)) return MQ_ECLOSED;
        rc = ns_check_lost(ns, w == 2);               /* destroyed while we waited? */
        if (rc) return rc;
        /* Back to the caller every slice: a signal that arrived outside the
         * futex wait (no EINTR) must not wait for the deadline to be seen. */
        if (mono_ns() - started >= RETURN_SLICE_NS) return MQ_EAGAIN;
    }
}

/* See mq_internal.h (fetch_impl inside the in-flight accounting). */
int64_t mq_fetch_loop(mq_ns *ns, uint32_t qi, uint32_t max, int64_t deadline,
                      char *buf, size_t bufsize, uint32_t *meta, struct batch_out *bo) {
    int rc = ns_enter(ns);
    if (rc) return rc;
    int64_t n = fetch_impl(ns, qi, max, deadline, buf, bufsize, meta, bo);
    ns_leave(ns);
    return n;
}

int mq_fetch(mq_ns *ns, uint32_t qi, int64_t deadline_ns, char *buf, size_t bufsize, uint32_t *meta) {
    return (int)mq_fetch_loop(ns, qi, 1, deadline_ns, buf, bufsize, meta, NULL);
}

int64_t mq_fetch_many(mq_ns *ns, uint32_t qi, uint32_t max, int64_t deadline_ns,
                      char *buf, size_t bufsize, uint32_t *meta) {
    return mq_fetch_loop(ns, qi, max, deadline_ns, buf, bufsize, meta, NULL);
}

/* ------------------------------------------------------------ inspection */
int mq_count(mq_ns *ns, uint32_t qi, uint64_t *out) {
    struct mq_stats st;
    if (!out) return MQ_EINVAL;
    int rc = mq_stats(ns, qi, &st);
    if (rc) return rc;
    *out = st.count;
    return 0;
}

/* The read-only calls (mq_stats, mq_reservation): finds queue qi (*qp) and
 * copies its state into *s under its lock, released again.  Returns 0,
 * q_index's code, MQ_EINVAL when out (the caller's result) is NULL, or
 * q_lock_load's code; the lock is not held on return and nothing changes. */
static int q_snapshot(mq_ns *ns, uint32_t qi, const void *out, const struct mq_q **qp,
                      struct q_state *s) {
    int rc = q_index(ns, qi, qp);
    if (rc) return rc;
    if (!out) return MQ_EINVAL;
    rc = q_lock_load(ns, *qp, s);
    if (rc) return rc;
    q_unlock(*qp);
    return 0;
}

/* mq_stats without the in-flight accounting.  Returns as mq_stats. */
static int stats_impl(mq_ns *ns, uint32_t qi, struct mq_stats *out) {
    const struct mq_q *q;
    struct q_state s;
    int rc = q_snapshot(ns, qi, out, &q, &s);
    if (rc) return rc;
    out->count = s.count;
    out->added = s.p.added;
    out->fetched = s.p.fetched;
    out->evicted = s.p.evicted;
    out->duplicates = s.p.duplicates;
    out->high_water = s.p.high_water;
    out->recoveries = s.p.recoveries;
    out->bytes_used = s.p.tail - q_start(&s);
    out->capacity = q->cap;
    out->size_limit = q->limit;
    out->addmode = q->addmode;
    return 0;
}

int mq_stats(mq_ns *ns, uint32_t qi, struct mq_stats *out) {
    int rc = ns_enter(ns);
    if (rc) return rc;
    rc = stats_impl(ns, qi, out);
    ns_leave(ns);
    return rc;
}

/* ------------------------------------------------------------ reserve / settle / load
 * A two-phase take for callers that hand items to something that may fail or
 * die (a database transaction, a terminal): mq_reserve takes items into the
 * queue's one reservation, tagged by the caller, and mq_settle acknowledges
 * (drops) or puts back exactly that reservation.  The reserved records stay
 * in the ring until then, so a reservation left by a dead process can be
 * settled by another, which reads its tag with mq_reservation.  mq_load adds
 * a batch in one step and records its tag in the same commit. */

/* Reserves up to max items, packed as mq_fetch_batch packs them (every key
 * and value followed by a NUL; fb->total and fb->info describe the batch).
 * Replaced records between them (addmode 2) fall inside the reservation and
 * are marked REC_GONE if it is put back.  `db` (the fingerprint of the
 * database a save writes to, 0: none) is recorded with the tag, in the same
 * commit.  Returns the number
 * reserved (0: the queue is empty; no reservation is made), MQ_EBUSY when a
 * reservation is already pending, MQ_EBUF (meta[0] = bytes the first item
 * needs), other negative codes; nothing changes on failure. */
static int64_t reserve_impl(struct mq_fetchbuf *fb, uint32_t max, uint64_t tag, uint64_t db) {
    const struct mq_q *q;
    mq_ns *ns = fb->ns;
    int rc = q_index(ns, fb->q, &q);
    if (rc) return rc;
    if (!fb->meta || (fb->size && !fb->buf) || max == 0 || tag == 0) return MQ_EINVAL;
    struct q_state s;
    rc = q_lock_load(ns, q, &s);
    if (rc) return rc;
    if (s.p.rsv_n) { q_unlock(q); return MQ_EBUSY; }
    if (skip_dead(q, &s)) { q_unlock(q); return MQ_ECORRUPT; }
    uint64_t first = s.p.head;
    int64_t n = 0;
    size_t used = 0;
    uint32_t info = MQ_BATCH_UNIFORM | MQ_BATCH_NONUL, first_flags = 0;
    while (n < (int64_t)max && s.p.head < s.p.tail) {
        struct rec_hdr r;
        if (rec_read(q, s.p.head, s.p.tail, &r)) { q_unlock(q); return MQ_ECORRUPT; }
        if (r.dead) { s.p.head += r.len; continue; }   /* replaced: not an item */
        size_t need = (size_t)r.klen + r.vlen + 2;
        if (need > fb->size - used) {
            if (n == 0) {
                fb->meta[0] = (uint32_t)(need > UINT32_MAX ? UINT32_MAX : need);
                q_unlock(q);
                return MQ_EBUF;
            }
            break;
        }
        char *k = fb->buf + used, *v = k + r.klen + 1;
        copy_out(q, s.p.head + MQ_REC_HDR, k, r.klen);
        k[r.klen] = 0;
        copy_out(q, s.p.head + MQ_REC_HDR + r.klen, v, r.vlen);
        v[r.vlen] = 0;
        if (memchr(k, 0, r.klen) || memchr(v, 0, r.vlen)) info &= ~MQ_BATCH_NONUL;
        if (n == 0) first_flags = r.flags & MQ_FLAGS_MASK;
        else if ((r.flags & MQ_FLAGS_MASK) != first_flags) info &= ~MQ_BATCH_UNIFORM;
        fb->meta[3 * n] = r.klen;
        fb->meta[3 * n + 1] = r.vlen;
        fb->meta[3 * n + 2] = r.flags & MQ_FLAGS_MASK;
        used += need;
        s.p.head += r.len;
        if (s.count == 0) { q_unlock(q); return MQ_ECORRUPT; }
        s.count--;
        s.p.fetched++;                             /* taken; a put-back subtracts it */
        n++;
    }
    if (n) {
        s.p.rsv = first;
        s.p.rsv_end = s.p.head;
        s.p.rsv_n = (uint64_t)n;
        s.p.rsv_tag = tag;
        s.p.rsv_owner = ns->map->me;
        s.p.rsv_db = db;                           /* in the same commit as the reservation */
        s.cold_dirty = 1;
        KILLPOINT("reserve_before_commit");
        state_commit(q, &s);
    }
    q_unlock(q);
    fb->total = used;
    fb->info = info | (first_flags << 8);
    fb->taken = (uint32_t)n;
    return n;
}

int64_t mq_reserve(struct mq_fetchbuf *fb, uint32_t max, uint64_t tag, uint64_t db) {
    if (!fb) return MQ_EINVAL;
    fb->taken = 0;
    int rc = ns_enter(fb->ns);
    if (rc) return rc;
    int64_t n = reserve_impl(fb, max, tag, db);
    ns_leave(fb->ns);
    return n;
}

/* Marks every record in [from, to) REC_GONE and dead.  Returns 0 or
 * MQ_ECORRUPT (marks may then be partly set: they lie outside the committed
 * records, or on records already not items). */
static int mark_gone(const struct mq_q *q, uint64_t from, uint64_t to) {
    for (uint64_t p = from; p < to;) {
        struct rec_hdr r;
        if (rec_read(q, p, to, &r)) return MQ_ECORRUPT;
        uint16_t g = (uint16_t)(r.gone | REC_GONE);
        copy_in(q, p + offsetof(struct rec_hdr, gone), &g, sizeof g);
        if (!r.dead) rec_set_dead(q, p, 1);
        p += r.len;
    }
    return 0;
}

/* Puts the reservation's records back before the head (working copy *s;
 * head is the committed head).  addmode 2: a put-back item whose key was
 * queued again meanwhile is the older one, so it is dropped as a duplicate.
 * addmode 1: no key of the reservation was queued again (add_one refused
 * them as duplicates while they were reserved: the first item wins), so
 * every item comes back and the keys stay unique.
 * Returns the number of items back in the queue, or a negative code (marks
 * outside the committed records may then be set; abort_op restores the rest). */
static int64_t put_back(const struct mq_q *q, struct q_state *s) {
    uint64_t live_head = s->p.head;
    int rc = mark_gone(q, s->p.rsv_end, s->p.head);   /* fetched/evicted/replaced meanwhile */
    if (rc) return rc;
    int64_t back = 0;
    char *key = NULL;
    size_t keycap = 0;
    for (uint64_t p = s->p.rsv; p < s->p.rsv_end;) {
        struct rec_hdr r;
        if (rec_read(q, p, s->p.rsv_end, &r)) { free(key); return MQ_ECORRUPT; }
        if (r.dead || (r.gone & REC_GONE)) {
            /* replaced before it was reserved: its replacement may be gone by
             * now, so make it permanently not an item (q_rebuild keeps it so) */
            uint16_t g = (uint16_t)(r.gone | REC_GONE);
            copy_in(q, p + offsetof(struct rec_hdr, gone), &g, sizeof g);
            if (!r.dead) rec_set_dead(q, p, 1);
            p += r.len;
            continue;
        }
        uint8_t dead = 0;
        if (q->addmode == 2) {
            if (r.klen > keycap) {
                char *k2 = realloc(key, r.klen);
                if (!k2) { free(key); return MQ_ENOMEM; }
                key = k2;
                keycap = r.klen;
            }
            copy_out(q, p + MQ_REC_HDR, key, r.klen);
            uint64_t found;
            rc = idx_find(q, fnv1a(key, r.klen), key, r.klen, live_head, s->p.tail, &found);
            if (rc < 0) { free(key); return rc; }
            dead = rc == 1;
        }
        rec_set_dead(q, p, dead);   /* also clears a mark left by an aborted put-back */
        if (dead) s->p.duplicates++;
        else back++;
        p += r.len;
    }
    free(key);
    s->p.fetched -= s->p.rsv_n;                  /* with duplicates++ above: count += back */
    s->count += (uint64_t)back;
    s->p.head = s->p.rsv;
    rsv_clear(s);
    /* A bounded queue that took items meanwhile is over its count now: the
     * put-back items are the oldest, so they are dropped first. */
    while (q->limit > 0 && s->count > (uint64_t)q->limit) {
        struct rec_hdr r;
        if (s->p.head >= s->p.tail || rec_read(q, s->p.head, s->p.tail, &r)) return MQ_ECORRUPT;
        if (!r.dead) {
            s->count--;
            s->p.evicted++;
            if (back) back--;
        }
        s->p.head += r.len;
    }
    if (s->count > s->p.high_water) s->p.high_water = s->count;
    return back;
}

/* mq_settle without the in-flight accounting.  Returns as mq_settle. */
static int settle_impl(mq_ns *ns, uint32_t qi, uint64_t tag, int commit) {
    const struct mq_q *q;
    int rc = q_index(ns, qi, &q);
    if (rc) return rc;
    if (tag == 0) return MQ_EINVAL;
    struct q_state s;
    rc = q_lock_load(ns, q, &s);
    if (rc) return rc;
    if (s.p.rsv_n == 0 || s.p.rsv_tag != tag) { q_unlock(q); return MQ_ENORSV; }
    int64_t back = 0;
    if (commit) {
        rsv_clear(&s);                           /* its items stay counted as fetched */
    } else {
        back = put_back(q, &s);
        if (back < 0) return abort_op(q, (int)back);
        /* Re-derive the index and dead marks over the new [head, tail): a
         * repair (q_rebuild) while the reservation was pending left its
         * records out of the key index.  The count must come out the same. */
        struct q_state chk = s;
        if (q_rebuild(q, &chk) || chk.count != s.count) return abort_op(q, MQ_ECORRUPT);
    }
    KILLPOINT("settle_before_commit");
    state_commit(q, &s);
    q_unlock(q);
    if (back) q_notify(q, back);
    return 0;
}

int mq_settle(mq_ns *ns, uint32_t qi, uint64_t tag, int commit) {
    int rc = ns_enter(ns);
    if (rc) return rc;
    rc = settle_impl(ns, qi, tag, commit);
    ns_leave(ns);
    return rc;
}

/* mq_reservation without the in-flight accounting.  Returns as mq_reservation. */
static int reservation_impl(mq_ns *ns, uint32_t qi, struct mq_rsvinfo *out) {
    const struct mq_q *q;
    struct q_state s;
    int rc = q_snapshot(ns, qi, out, &q, &s);
    if (rc) return rc;
    out->tag = s.p.rsv_tag;
    out->count = s.p.rsv_n;
    out->load_tag = s.p.load_tag;
    out->db = s.p.rsv_db;
    out->owner_alive = s.p.rsv_n ? (uint32_t)owner_alive(ns, s.p.rsv_owner) : 0;
    out->mine = s.p.rsv_n && s.p.rsv_owner == ns->map->me;
    return s.p.rsv_n ? 1 : 0;
}

int mq_reservation(mq_ns *ns, uint32_t qi, struct mq_rsvinfo *out) {
    int rc = ns_enter(ns);
    if (rc) return rc;
    rc = reservation_impl(ns, qi, out);
    ns_leave(ns);
    return rc;
}

/* mq_load without the in-flight accounting.  Returns as mq_load. */
static int64_t load_impl(mq_ns *ns, uint32_t qi, uint64_t tag, const char *data, size_t data_len,
                         const uint32_t *lens, size_t n) {
    const struct mq_q *q;
    int rc = q_index(ns, qi, &q);
    if (rc) return rc;
    if (tag == 0 || (n && !lens) || (data_len && !data) || n > (size_t)1 << 40) return MQ_EINVAL;
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {            /* check every item first */
        uint64_t kl = lens[3 * i], vl = lens[3 * i + 1];
        if (lens[3 * i + 2] & ~MQ_FLAGS_MASK) return MQ_EINVAL;
        uint64_t R = rec_size(kl, vl);
        if (R == 0 || R > q->cap) return MQ_ETOOBIG;
        total += kl + vl;
        if (total > data_len) return MQ_EINVAL;
    }
    /* A bounded queue keeps only the newest items that fit its count and
     * bytes: the older ones of the batch are counted as added and evicted
     * without being written, so the rest fits in one step. */
    size_t skip = 0;
    uint64_t kept_R = 0;
    if (q->limit > 0) {
        size_t kept = 0;
        for (size_t i = n; i > 0; i--) {
            uint64_t R = rec_size(lens[3 * (i - 1)], lens[3 * (i - 1) + 1]);
            if (kept + 1 > (uint64_t)q->limit || kept_R + R > q->cap) break;
            kept++;
            kept_R += R;
        }
        skip = n - kept;
    } else {
        for (size_t i = 0; i < n; i++) kept_R += rec_size(lens[3 * i], lens[3 * i + 1]);
    }
    struct q_state s;
    rc = q_lock_load(ns, q, &s);
    if (rc) return rc;
    if (s.p.load_tag == tag) { q_unlock(q); return MQ_EAPPLIED; }
    /* One commit: the records written must not overlap the committed bytes
     * [start, tail).  Bounded: kept_R <= capacity and tail - start <= capacity,
     * so they fit the 2 x capacity ring.  Unbounded: checked here. */
    if (q->limit <= 0 && (s.p.tail - q_start(&s)) + kept_R > q->phys) { q_unlock(q); return MQ_ENOSTEP; }
    const char *p = data;
    for (size_t i = 0; i < skip; i++) p += lens[3 * i] + lens[3 * i + 1];
    s.p.added += skip;
    s.p.evicted += skip;
    int64_t stored = 0;
    for (size_t i = skip; i < n; i++) {
        size_t kl = lens[3 * i], vl = lens[3 * i + 1];
        rc = add_one(q, &s, p, kl, p + kl, vl, lens[3 * i + 2], rec_size(kl, vl), NULL);
        if (rc < 0) return abort_op(q, rc);      /* MQ_EFULL included: nothing published */
        stored += rc;
        p += kl + vl;
    }
    s.p.load_tag = tag;
    s.cold_dirty = 1;
    KILLPOINT("load_before_commit");
    state_commit(q, &s);
    q_unlock(q);
    if (stored) q_notify(q, stored);
    return stored;
}

int64_t mq_load(mq_ns *ns, uint32_t qi, uint64_t tag, const char *data, size_t data_len,
                const uint32_t *lens, size_t n) {
    int rc = ns_enter(ns);
    if (rc) return rc;
    int64_t r = load_impl(ns, qi, tag, data, data_len, lens, n);
    ns_leave(ns);
    return r;
}

/* ============================================================ asyncio notifier
 * (mqueue.asyncio; a self-contained block: new functions only.)
 *
 * An event loop must never block on a queue, and must not spend a thread per
 * waiting fetch.  A waitset is the registry of one notifier thread: up to
 * MQ_WS_MAX one-shot watches, each "tell eventfd `efd` when queue q's seq word
 * is no longer seq0".  The notifier (mq_ws_run, called from one Python thread
 * with the GIL released) waits on all armed seq words at once with
 * futex_waitv (Linux 5.16+), plus a process-private control word that wakes
 * it when the registrations change.  While it sleeps it is counted in each
 * watched queue's data_waiters exactly as q_wait counts a sleeping fetch, so
 * q_notify wakes it; it compares every seq word with its expected value after
 * counting itself (the q_wait/q_notify pairing: no lost wake-up).  A watch
 * that fires writes to its eventfd and is done; the loop collects it.
 *
 * Without futex_waitv (older kernels, or use_waitv = 0) a waitset watches one
 * queue and waits with FUTEX_WAIT on it (the control word cannot interrupt
 * that wait: removing the watch wakes the seq word instead).
 *
 * Every armed watch holds its namespace "in flight" (ns_enter), so the
 * mapping stays while the notifier reads the seq word; mq_detach of that
 * namespace waits until the watch fires (the notifier notices `closing`
 * within WS_SLICE_NS) or is removed (mq_ws_unwatch, mq_ws_forget_ns). */
#include <pthread.h>

#ifndef WS_SLICE_NS   /* tests set it very long, so that a lost wake-up shows as a hang */
#define WS_SLICE_NS   100000000LL   /* 100 ms: bounds noticing a closing namespace or a lost wake-up */
#endif
#define WS_ARMED 1
#define WS_FIRED 2
#ifndef SYS_futex_waitv
#define SYS_futex_waitv 449
#endif

struct ws_entry {
    mq_ns *ns;
    const struct mq_q *q;
    uint32_t expected;          /* the seq value the loop saw with the queue empty */
    int state;                  /* 0 free, WS_ARMED, WS_FIRED */
    int counted;                /* this entry is counted in q->h->data_waiters now */
    int efd;
    uint64_t cookie;            /* the caller's name for this watch */
};

struct mq_waitset {
    pthread_mutex_t mu;
    _Atomic uint32_t ctl;       /* control futex word (private): bumped when watches change */
    int stop;
    int sleeping;               /* the notifier is (about to be) in its futex wait */
    int use_waitv;
    int cap;
    struct ws_entry e[MQ_WS_MAX];
};

/* Mirror of the kernel's struct futex_waitv (linux/futex.h, 5.16+). */
struct ws_waitv { uint64_t val; uint64_t uaddr; uint32_t flags; uint32_t reserved; };
#define WS_FUTEX_32 2u              /* FUTEX2_SIZE_U32 */
#define WS_FUTEX_PRIVATE 128u       /* FUTEX2_PRIVATE (= FUTEX_PRIVATE_FLAG) */

int mq_seq(mq_ns *ns, uint32_t qi, uint32_t *out) {
    const struct mq_q *q;
    if (!out) return MQ_EINVAL;
    int rc = ns_enter(ns);
    if (rc) return rc;
    rc = q_index(ns, qi, &q);
    if (rc == 0)
        /* acquire: as fetch_impl's read of seq before it looks at the queue,
         * so an add published after this read moves seq */
        *out = atomic_load_explicit(&q->h->seq, memory_order_acquire);
    ns_leave(ns);
    return rc;
}

/* csrc/uring.c's way in (see mq_internal.h). */
int aio_enter(mq_ns *ns) { return ns_enter(ns); }
void aio_leave(mq_ns *ns) { ns_leave(ns); }
int aio_queue(mq_ns *ns, uint32_t qi, const struct mq_q **q) { return q_index(ns, qi, q); }

int mq_wake_one(mq_ns *ns, uint32_t qi) {
    const struct mq_q *q;
    int rc = ns_enter(ns);
    if (rc) return rc;
    rc = q_index(ns, qi, &q);
    if (rc == 0) {
        /* seq_cst: pairs with the waiter's increment before its futex wait */
        if (atomic_load_explicit(&q->h->data_waiters, memory_order_seq_cst) & WAITERS_MASK)
            syscall(SYS_futex, &q->h->seq, FUTEX_WAKE, 1, NULL, NULL, 0); /* a hint: failure only delays a waiter by a slice */
    }
    ns_leave(ns);
    return rc;
}

int mq_ws_waitv_supported(void) {
    /* nr = 0 is EINVAL where the call exists, ENOSYS where it does not */
    long rc = syscall(SYS_futex_waitv, NULL, 0, 0, NULL, CLOCK_MONOTONIC);
    return !(rc == -1 && errno == ENOSYS);
}

mq_waitset *mq_ws_new(int use_waitv) {
    mq_waitset *ws = calloc(1, sizeof *ws);
    if (!ws) return NULL;
    /* adaptive: the loop thread's collect right after a fire meets the
     * notifier still finishing its (short) round: spin a little, do not sleep */
    pthread_mutexattr_t attr;
    if (pthread_mutexattr_init(&attr) != 0) { free(ws); return NULL; }
    if (pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP) != 0) { /* default type then */ }
    int rc = pthread_mutex_init(&ws->mu, &attr);
    pthread_mutexattr_destroy(&attr);
    if (rc != 0) { free(ws); return NULL; }
    ws->use_waitv = use_waitv ? 1 : 0;
    ws->cap = use_waitv ? MQ_WS_MAX : 1;
    return ws;
}

int mq_ws_capacity(const mq_waitset *ws) { return ws ? ws->cap : 0; }

/* Stops counting entry e as a waiter (caller holds ws->mu; e's ns is in
 * flight).  Never fails. */
static void ws_uncount(struct ws_entry *e) {
    if (e->counted) {
        dec_sat_masked(&e->q->h->data_waiters, WAITERS_MASK);
        e->counted = 0;
    }
}

/* Ends an armed watch (caller holds ws->mu): uncounts it, wakes a fallback
 * notifier out of a FUTEX_WAIT on its seq word when `wake_seq`, and releases
 * the namespace.  e's shared memory is not touched afterwards.  Never fails. */
static void ws_release(mq_waitset *ws, struct ws_entry *e, int wake_seq) {
    ws_uncount(e);
    if (wake_seq && !ws->use_waitv && ws->sleeping)
        syscall(SYS_futex, &e->q->h->seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0); /* hint: others re-check */
    ns_leave(e->ns);
    e->ns = NULL;
    e->q = NULL;
}

/* Fires an armed watch: released (see ws_release for wake_seq), marked for
 * collection, its eventfd written (caller holds ws->mu).  Never fails (a failed eventfd write means
 * the counter is saturated: the loop is woken anyway). */
static void ws_fire(mq_waitset *ws, struct ws_entry *e, int wake_seq) {
    ws_release(ws, e, wake_seq);
    e->state = WS_FIRED;
    uint64_t one = 1;
    if (write(e->efd, &one, sizeof one) < 0) { /* EAGAIN: already readable */ }
}

/* Makes the notifier re-read the watches if it sleeps (caller holds ws->mu).
 * Never fails. */
static void ws_kick(mq_waitset *ws) {
    /* relaxed: the notifier reads ctl under ws->mu; the futex compares it */
    atomic_fetch_add_explicit(&ws->ctl, 1, memory_order_relaxed);
    if (ws->sleeping) syscall(SYS_futex, &ws->ctl, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

int mq_ws_watch(mq_waitset *ws, mq_ns *ns, uint32_t qi, uint32_t seq0, int efd, uint64_t cookie) {
    const struct mq_q *q;
    if (!ws || efd < 0) return MQ_EINVAL;
    int rc = ns_enter(ns);
    if (rc) return rc;
    rc = q_index(ns, qi, &q);
    if (rc) { ns_leave(ns); return rc; }
    /* acquire: as mq_seq; a move since the caller's empty look means "look again" */
    if (atomic_load_explicit(&q->h->seq, memory_order_acquire) != seq0) { ns_leave(ns); return MQ_EAGAIN; }
    if (pthread_mutex_lock(&ws->mu) != 0) { ns_leave(ns); return MQ_ESYS; }
    int slot = -1;
    for (int i = 0; i < ws->cap; i++)
        if (ws->e[i].state == 0) { slot = i; break; }
    if (slot < 0 || ws->stop) {
        pthread_mutex_unlock(&ws->mu);
        ns_leave(ns);
        return MQ_ESLOTS;
    }
    struct ws_entry *e = &ws->e[slot];
    e->ns = ns;                 /* stays in flight until the watch fires or is removed */
    e->q = q;
    e->expected = seq0;
    e->state = WS_ARMED;
    e->counted = 0;
    e->efd = efd;
    e->cookie = cookie;
    ws_kick(ws);
    pthread_mutex_unlock(&ws->mu);
    return slot;
}

int mq_ws_unwatch(mq_waitset *ws, int slot, uint64_t cookie) {
    if (!ws || slot < 0 || slot >= ws->cap) return MQ_EINVAL;
    if (pthread_mutex_lock(&ws->mu) != 0) return MQ_ESYS;
    struct ws_entry *e = &ws->e[slot];
    int rc = 0;
    if (e->state && e->cookie == cookie) {
        if (e->state == WS_ARMED) ws_release(ws, e, 1);
        e->state = 0;
        rc = 1;
    }
    pthread_mutex_unlock(&ws->mu);
    return rc;
}

int mq_ws_collect(mq_waitset *ws, int efd, uint64_t *cookies, int max) {
    if (!ws || !cookies || max < 0) return MQ_EINVAL;
    if (pthread_mutex_lock(&ws->mu) != 0) return MQ_ESYS;
    int n = 0;
    for (int i = 0; i < ws->cap && n < max; i++) {
        struct ws_entry *e = &ws->e[i];
        if (e->state == WS_FIRED && e->efd == efd) {
            cookies[n++] = e->cookie;
            e->state = 0;
        }
    }
    pthread_mutex_unlock(&ws->mu);
    return n;
}

int mq_ws_forget_ns(mq_waitset *ws, mq_ns *ns) {
    if (!ws) return MQ_EINVAL;
    if (pthread_mutex_lock(&ws->mu) != 0) return MQ_ESYS;
    int n = 0;
    for (int i = 0; i < ws->cap; i++) {
        struct ws_entry *e = &ws->e[i];
        if (e->state == WS_ARMED && e->ns == ns) {
            ws_fire(ws, e, 1);
            n++;
        }
    }
    if (n) ws_kick(ws);
    pthread_mutex_unlock(&ws->mu);
    return n;
}

int mq_ws_armed(mq_waitset *ws) {
    if (!ws) return MQ_EINVAL;
    if (pthread_mutex_lock(&ws->mu) != 0) return MQ_ESYS;
    int n = 0;
    for (int i = 0; i < ws->cap; i++) n += ws->e[i].state == WS_ARMED;
    pthread_mutex_unlock(&ws->mu);
    return n;
}

void mq_ws_stop(mq_waitset *ws) {
    if (!ws || pthread_mutex_lock(&ws->mu) != 0) return;
    ws->stop = 1;
    ws_kick(ws);
    /* a fallback notifier sleeps on a seq word: wake it there too */
    for (int i = 0; i < ws->cap; i++)
        if (ws->e[i].state == WS_ARMED) ws_fire(ws, &ws->e[i], 1);
    pthread_mutex_unlock(&ws->mu);
}

int mq_ws_run(mq_waitset *ws) {
    struct ws_waitv wv[MQ_WS_MAX + 1];
    if (!ws) return MQ_EINVAL;
    if (pthread_mutex_lock(&ws->mu) != 0) return sys_fail();
    int rc = 0;
    while (!ws->stop) {
        /* relaxed: read under ws->mu, where every change bumps it */
        uint32_t ctl = atomic_load_explicit(&ws->ctl, memory_order_relaxed);
        int n = 0;
        for (int i = 0; i < ws->cap; i++) {
            struct ws_entry *e = &ws->e[i];
            if (e->state != WS_ARMED) continue;
            if (ns_closing(e->ns)) { ws_fire(ws, e, 0); continue; }   /* mq_detach waits for us */
            /* seq_cst: count ourselves before comparing seq (q_wait's
             * increment); q_notify bumps seq, then reads the count */
            atomic_fetch_add_explicit(&e->q->h->data_waiters, WAITER_ADD, memory_order_seq_cst);
            e->counted = 1;
            if (atomic_load_explicit(&e->q->h->seq, memory_order_seq_cst) != e->expected) {
                ws_fire(ws, e, 0);
                continue;
            }
            wv[n].val = e->expected;
            wv[n].uaddr = (uint64_t)(uintptr_t)&e->q->h->seq;
            wv[n].flags = WS_FUTEX_32;     /* shared: the adders are other processes */
            wv[n].reserved = 0;
            n++;
        }
        int nq = n;
        wv[n].val = ctl;
        wv[n].uaddr = (uint64_t)(uintptr_t)&ws->ctl;
        wv[n].flags = WS_FUTEX_32 | WS_FUTEX_PRIVATE;
        wv[n].reserved = 0;
        n++;
        ws->sleeping = 1;
        pthread_mutex_unlock(&ws->mu);
        long r;
        if (ws->use_waitv) {
            int64_t end = mono_ns() + WS_SLICE_NS;
            struct timespec ts = {(time_t)(end / NS_PER_S), (long)(end % NS_PER_S)};
            r = syscall(SYS_futex_waitv, wv, (unsigned)n, 0, &ts, CLOCK_MONOTONIC);
        } else {
            /* one word: the watched queue's, else the control word */
            struct timespec rel = {(time_t)(WS_SLICE_NS / NS_PER_S), (long)(WS_SLICE_NS % NS_PER_S)};
            int op = nq ? FUTEX_WAIT : FUTEX_WAIT_PRIVATE;
            r = syscall(SYS_futex, (void *)(uintptr_t)wv[0].uaddr, op, (uint32_t)wv[0].val, &rel, NULL, 0);
        }
        int err = r < 0 ? errno : 0;
        if (pthread_mutex_lock(&ws->mu) != 0) return sys_fail();   /* cannot happen (default mutex) */
        ws->sleeping = 0;
        if (err == ENOSYS || err == EINVAL) {   /* refused (seccomp, old kernel): new watches go elsewhere */
            mq_errno = err;
            rc = MQ_ESYS;
            ws->stop = 1;
            break;
        }
        /* woken, EAGAIN (a word moved), ETIMEDOUT (slice), EINTR, EFAULT (a
         * watch removed meanwhile, its mapping gone): re-check every watch */
        for (int i = 0; i < ws->cap; i++) {
            struct ws_entry *e = &ws->e[i];
            if (e->state != WS_ARMED) continue;
            ws_uncount(e);
            /* acquire: as mq_seq */
            if (atomic_load_explicit(&e->q->h->seq, memory_order_acquire) != e->expected || ns_closing(e->ns))
                ws_fire(ws, e, 0);
        }
    }
    /* stopped (or failed): every remaining watch fires, so no waiter sleeps on */
    for (int i = 0; i < ws->cap; i++)
        if (ws->e[i].state == WS_ARMED) ws_fire(ws, &ws->e[i], 0);
    pthread_mutex_unlock(&ws->mu);
    return rc;
}

void mq_ws_free(mq_waitset *ws) {
    if (!ws) return;
    pthread_mutex_destroy(&ws->mu);
    free(ws);
}
