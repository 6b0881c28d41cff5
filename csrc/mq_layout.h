/* mq_layout.h - the shared-memory layout of an mqueue namespace (internal).
 *
 * Only the engine (the csrc .c files) and the C tests include this; the cffi
 * interface never sees it.
 *
 *   [seg_hdr][meta blob][q_hdr x nqueues][queue 0: index?, ring][queue 1 ...]
 *
 * Everything is at an offset that mq_layout() computes from the queue
 * parameters alone, so attach recomputes the layout and demands that the
 * stored offsets match it exactly: a damaged or foreign table is refused
 * before any offset is used.
 *
 * A queue's ring holds records at free-running 64-bit logical byte positions
 * (head <= tail, never reused); the byte at logical position p lives at
 * data[p % phys].  Records may wrap around the physical end (copied in two
 * pieces).  phys = 2 * capacity: used bytes never exceed capacity, so a new
 * record is always written into space no queued record occupies, and an
 * add (including the evictions it causes) is published by one store.
 */
#ifndef MQUEUE_MQ_LAYOUT_H
#define MQUEUE_MQ_LAYOUT_H

#include <semaphore.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>

#include "mq.h"

#define MQ_MAGIC  0x314555455551514dULL        /* the segment is ready */
#define MQ_MAGIC_INIT 0x544955514d514d00ULL    /* its creator is still formatting it */
#define MQ_MAGIC_LOST 0x54534f4c514d514dULL    /* destroyed: attached handles get MQ_ELOST */
/* 3: the destroy mark (MQ_MAGIC_LOST) and the creator lock (byte
 * MQ_CREATOR_BYTE of the file) are part of the protocol: a version-2 process
 * would neither see the one nor take the other, so the versions refuse each
 * other's segments.  Also 3: the reservation and load tag (issue 9).
 * 4: a reservation records its database (rsv_db) and, in an addmode 1 queue,
 * keeps its keys refused while reserved: a version-3 process would neither
 * clear the one nor refuse the other, so the versions refuse each other. */
#define MQ_LAYOUT_VERSION 4u

/* The queue state that one operation changes: two cache lines (the second,
 * the reservation and the load tag, is rarely changed).  Two copies live in
 * q_hdr; `cur` says which is current.  A writer fills the other copy and
 * flips `cur` with one release store: that store is the operation's commit
 * point.  The item count is not stored: it is derived,
 *   count = added - fetched - evicted - duplicates   (every addmode),
 * so the counters balance by construction (reserved items count as fetched
 * until a put-back subtracts them again).
 *
 * The reservation (mq_reserve/mq_settle): rsv_n > 0 items taken from the
 * head and not yet acknowledged.  Their records stay in the ring at
 * [rsv, rsv_end); records in [rsv_end, head) were fetched, evicted or
 * replaced while it was pending (a put-back marks them REC_GONE).  While a
 * reservation is pending the ring's used bytes are [rsv, tail), else
 * [head, tail): always at most capacity, so (as without reservations) a new
 * record is always written where no committed record lies.  When rsv_n == 0
 * rsv, rsv_end, rsv_tag, rsv_owner and rsv_db are 0.  rsv_db: which database
 * the reservation's save writes to (the caller's 64-bit fingerprint, written
 * in the reservation's commit; 0: unknown, as in reservations made before it
 * existed, or none: a command-line fetch).  load_tag: the tag of the last
 * mq_load applied (0: none). */
struct q_pstate {
    /* first line: what every operation changes */
    uint64_t head, tail;        /* logical byte positions, 8-aligned */
    uint64_t added, fetched, evicted, duplicates, high_water, recoveries;
    /* second line: changed only by reserve/settle/load, a reservation dropped
     * for room, and a repair.  Both copies hold the same second line whenever
     * the lock is free (a writer that changed it copies it into the other
     * copy after its commit, still under the lock; a writer killed before that
     * is followed by a repair, which does it), so an operation that leaves it
     * alone commits by writing the first line only. */
    uint64_t rsv, rsv_end, rsv_n, rsv_tag, rsv_owner, load_tag;
    uint64_t rsv_db;            /* was spare[0] (always 0 before): see above */
    uint64_t spare[1];
};

/* The process-local working copy: the state copy, then the derived count
 * and whether the second line changed. */
struct q_state {
    struct q_pstate p;
    uint64_t count;             /* live records in [head, tail) */
    uint64_t live_head;         /* a head position known to hold a live record (skip_dead
                                 * has looked), or LIVE_HEAD_NONE */
    int cold_dirty;             /* the second line changed: commit both lines */
};

struct q_hdr {
    /* Written at creation, read-only afterwards (validated on attach and
     * then cached in the process-local handle; never re-read). */
    uint64_t data_off;          /* ring bytes */
    uint64_t phys;              /* ring size = 2 * capacity */
    uint64_t capacity;          /* usable bytes, multiple of 8 */
    int64_t  size_limit;        /* <= 0: no count bound */
    uint64_t index_off;         /* key index (addmode 1/2), else 0 */
    uint64_t nbuckets;          /* power of two, or 0 */
    uint32_t addmode;
    uint32_t reserved0;
    uint64_t reserved1;

    /* What every operation touches, in one cache line: the lock (owner word
     * + process-shared semaphore as its wait queue), the futex word bumped
     * after every publish (blocking fetch) and the current state index. */
    _Alignas(64) _Atomic uint64_t owner;   /* 0 free, else (gen << 16) | (slot + 1) */
    _Atomic uint32_t lock_waiters;
    _Atomic uint32_t seq;
    _Atomic uint32_t data_waiters;
    _Atomic uint32_t cur;
    sem_t sem;

    /* Double-buffered state, two cache lines each. */
    _Alignas(64) struct q_pstate st[2];
} __attribute__((aligned(64)));

struct seg_hdr {
    _Atomic uint64_t magic;     /* written last at creation (release); MQ_MAGIC_LOST once
                                 * destroyed (read by every call: read-mostly line) */
    uint32_t layout_version;
    uint32_t hdr_size;          /* sizeof(struct seg_hdr) */
    uint32_t qhdr_size;         /* sizeof(struct q_hdr) */
    uint32_t nqueues;
    uint32_t nslots;
    uint32_t rec_hdr;
    uint64_t total_size;
    uint64_t meta_off, meta_len;
    uint64_t qtable_off;
    uint64_t reserved[4];
    /* Liveness slots: a process owns slot i while it holds an OFD write
     * lock on byte i of the segment's file; slot_gen[i] is bumped by every
     * claim so an owner word naming a dead claim never matches a new one. */
    _Atomic uint64_t slot_gen[MQ_NSLOTS];
    _Atomic uint32_t slot_pid[MQ_NSLOTS];   /* informational only */
} __attribute__((aligned(64)));

/* A record in the ring. len covers header, key, value and padding. */
struct rec_hdr {
    uint32_t len;
    uint32_t klen;
    uint32_t vlen;
    uint8_t  flags;     /* MQ_KEY_STR | MQ_VAL_STR */
    uint8_t  dead;      /* replaced by a later add of the same key (addmode 2) */
    uint16_t gone;      /* REC_GONE: not an item (set by a put-back, see q_pstate) */
    uint64_t next;      /* index chain: (older record's position + 1), 0 = end */
};

_Static_assert(sizeof(struct rec_hdr) == MQ_REC_HDR, "record header size");
#define REC_GONE 1u

_Static_assert(sizeof(struct q_pstate) == 128, "a state copy is two cache lines");
_Static_assert(offsetof(struct q_pstate, rsv) == 64, "the second line starts at rsv");
_Static_assert(sizeof(struct q_hdr) == 384, "queue header: constants, hot line, two states");

#endif
