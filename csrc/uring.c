/* uring.c - asyncio waits through io_uring (mqueue.asyncio; Linux 6.7+).
 *
 * The notifier threads of mq.c (mq_ws_*) put a thread between an add and the
 * event loop: futex wake -> notifier thread -> eventfd -> epoll.  Here the
 * kernel itself waits: one io_uring per event loop, its fd a reader on the
 * loop, and per watched queue one IORING_OP_FUTEX_WAIT on the queue's seq
 * word.  An add's FUTEX_WAKE completes that request; the completion is run
 * as task work by the loop thread, whose epoll then finds the ring readable.
 * No thread of ours is involved.
 *
 * Accounting is q_wait's: a watch is counted in the queue's data_waiters
 * (WAITER_ADD, seq_cst) before the kernel compares the seq word with the
 * value the loop saw with the queue empty, and uncounted (dec_sat_masked)
 * once its wait is over.  A process killed with watches armed leaves its
 * counts as a killed sync fetch does (its ring dies with it; the next add's
 * FUTEX_WAKE wakes nobody and q_wake resets the count).
 *
 * The namespace: a shared futex is keyed by the file's inode and offset,
 * resolved when the request is issued (inside mq_ur_watch's io_uring_enter,
 * with the namespace held in flight); the kernel never reads the word again.
 * So an armed watch does not hold its namespace: mq_detach never waits for
 * it.  The mapping is used again only to uncount, under ns_enter (a closed
 * namespace is skipped: its count is stale, as a killed waiter's).  A
 * periodic check (UR_SLICE_NS, one IORING_OP_TIMEOUT per ring while a watch
 * is armed) fires the watches whose namespace closed or whose seq moved
 * without a wake-up reaching them (a count reset, see live.c): the same
 * 100 ms bound as the notifier's slice.
 *
 * Every watch's wait ends with exactly one completion (woken, -EAGAIN: seq
 * already moved, -ECANCELED, or an error); its slot is reused only after
 * that.  Removing a watch (mq_ur_unwatch, mq_ur_forget_ns) uncounts it at
 * once and submits IORING_OP_ASYNC_CANCEL; the completion then only frees
 * the slot.  Struct layouts and opcodes are mirrored here (no liburing; the
 * build's kernel headers may predate the futex opcodes) and checked at run
 * time by mq_ur_probe.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "lock.h"
#include "mq_internal.h"

#ifndef UR_SLICE_NS   /* tests set it very long, so that a lost wake-up shows as a hang */
#define UR_SLICE_NS 100000000LL   /* 100 ms, as the notifier's WS_SLICE_NS */
#endif

/* ---- the kernel's interface (include/uapi/linux/io_uring.h, Linux 6.7) ---- */
#ifndef __NR_io_uring_setup          /* the same numbers on every architecture */
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef __NR_io_uring_register
#define __NR_io_uring_register 427
#endif

#define UR_OP_TIMEOUT       11
#define UR_OP_ASYNC_CANCEL  14
#define UR_OP_FUTEX_WAIT    51          /* Linux 6.7 */
#define UR_SQE_CQE_SKIP_SUCCESS (1u << 6)   /* no completion when it succeeds (5.17) */
#define UR_SETUP_CQSIZE     (1u << 3)
#define UR_FEAT_SINGLE_MMAP (1u << 0)
#define UR_FEAT_NODROP      (1u << 1)
#define UR_SQ_CQ_OVERFLOW   (1u << 1)   /* sq ring flags: completions wait in the kernel */
#define UR_ENTER_GETEVENTS  (1u << 0)
#define UR_REGISTER_PROBE   8
#define UR_OP_SUPPORTED     (1u << 0)
#define UR_OFF_SQ_RING      0ULL
#define UR_OFF_SQES         0x10000000ULL
#define UR_FUTEX2_SIZE_U32  0x02u       /* no FUTEX2_PRIVATE: a shared futex */
#define UR_FUTEX_MASK_ANY   0xffffffffu /* FUTEX_BITSET_MATCH_ANY: plain FUTEX_WAKE matches */

struct ur_sqe {                 /* struct io_uring_sqe, 64 bytes */
    uint8_t opcode, flags;
    uint16_t ioprio;
    int32_t fd;                 /* FUTEX_WAIT: FUTEX2_* flags */
    uint64_t off;               /* FUTEX_WAIT: expected value (addr2); TIMEOUT: count */
    uint64_t addr;              /* the futex word; TIMEOUT: timespec; CANCEL: user_data */
    uint32_t len;
    uint32_t op_flags;          /* timeout_flags, cancel_flags, futex_flags (must be 0) */
    uint64_t user_data;
    uint16_t buf_index, personality;
    uint32_t file_index;
    uint64_t addr3;             /* FUTEX_WAIT: bitset mask */
    uint64_t pad;
};
struct ur_cqe { uint64_t user_data; int32_t res; uint32_t flags; };
struct ur_sq_off { uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1; uint64_t resv2; };
struct ur_cq_off { uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1; uint64_t resv2; };
struct ur_params {
    uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd, resv[3];
    struct ur_sq_off sq_off;
    struct ur_cq_off cq_off;
};
struct ur_probe_op { uint8_t op, resv; uint16_t flags; uint32_t resv2; };
struct ur_probe { uint8_t last_op, ops_len; uint16_t resv; uint32_t resv2[3]; struct ur_probe_op ops[256]; };
struct ur_timespec { int64_t tv_sec; long long tv_nsec; };

_Static_assert(sizeof(struct ur_sqe) == 64, "io_uring_sqe");
_Static_assert(sizeof(struct ur_cqe) == 16, "io_uring_cqe");
_Static_assert(sizeof(struct ur_params) == 120, "io_uring_params");
_Static_assert(sizeof(struct ur_probe_op) == 8, "io_uring_probe_op");

/* ---- the ring ---- */
#define UR_SQ_ENTRIES 32
#define UR_CQ_ENTRIES 4096              /* more completions wait in the kernel (NODROP) */
#define UR_TAG_SLOT   0ULL              /* user_data: a watch's wait, slot in the low bits */
#define UR_TAG_CANCEL (1ULL << 62)      /* a cancel request's own completion (failed only) */
#define UR_TAG_TICK   (2ULL << 62)      /* the periodic check */
#define UR_TAG_MASK   (3ULL << 62)

enum { UR_FREE, UR_ARMED, UR_GONE };    /* UR_GONE: cancelled, waiting for the completion */

struct ur_entry {
    mq_ns *ns;                  /* UR_ARMED only (the caller keeps the handle alive) */
    const struct mq_q *q;
    uint32_t expected;
    int state;
    int counted;                /* counted in q->h->data_waiters now */
    int report;                 /* UR_GONE: the caller wants the cookie */
    uint64_t cookie;
};

struct mq_uring {
    pthread_mutex_t mu;
    pid_t pid;                  /* the process that made it: a forked child never touches it */
    int fd;
    int failed;                 /* errno of a refused request: new watches are refused */
    int tick;                   /* a periodic check is pending */
    void *sq_map, *sqes_map;
    size_t sq_map_len, sqes_map_len;
    _Atomic uint32_t *sq_head, *sq_tail, *sq_flags, *cq_head, *cq_tail;
    uint32_t sq_mask, cq_mask;
    uint32_t *sq_array;
    struct ur_sqe *sqes;
    struct ur_cqe *cqes;
    struct ur_entry *e;
    int cap, armed;
    struct ur_timespec slice;   /* read by the kernel when the timeout is submitted */
};

static long ur_setup(unsigned entries, struct ur_params *p) {
    return syscall(__NR_io_uring_setup, entries, p);
}

static long ur_enter(int fd, unsigned submit, unsigned min_complete, unsigned flags) {
    return syscall(__NR_io_uring_enter, fd, submit, min_complete, flags, NULL, 0);
}

/* Unmaps and closes what mq_ur_new made (fields not yet made are NULL/-1).
 * Never fails (nothing more can be done about a failed munmap or close). */
static void ur_release(mq_uring *r) {
    if (r->sqes_map && munmap(r->sqes_map, r->sqes_map_len) != 0) { }
    if (r->sq_map && munmap(r->sq_map, r->sq_map_len) != 0) { }
    if (r->fd >= 0 && close(r->fd) != 0) { }
    free(r->e);
    free(r);
}

/* Checks that the kernel has the opcodes used here (IORING_REGISTER_PROBE).
 * Returns 0, or MQ_ESYS with mq_errno (EOPNOTSUPP: an opcode is missing). */
static int ur_probe_ops(int fd) {
    struct ur_probe *pr = calloc(1, sizeof *pr);
    if (!pr) return MQ_ENOMEM;
    int rc = 0;
    if (syscall(__NR_io_uring_register, fd, UR_REGISTER_PROBE, pr, 256) != 0) {
        rc = sys_fail();
    } else {
        static const uint8_t need[] = {UR_OP_TIMEOUT, UR_OP_ASYNC_CANCEL, UR_OP_FUTEX_WAIT};
        for (size_t i = 0; i < sizeof need; i++)
            if (need[i] >= pr->ops_len || !(pr->ops[need[i]].flags & UR_OP_SUPPORTED)) {
                mq_errno = EOPNOTSUPP;
                rc = MQ_ESYS;
            }
    }
    free(pr);
    return rc;
}

mq_uring *mq_ur_new(void) {
    mq_uring *r = calloc(1, sizeof *r);
    if (!r) { mq_errno = ENOMEM; return NULL; }
    r->fd = -1;
    r->pid = getpid();
    r->slice.tv_sec = UR_SLICE_NS / NS_PER_S;
    r->slice.tv_nsec = UR_SLICE_NS % NS_PER_S;
    if (pthread_mutex_init(&r->mu, NULL) != 0) { mq_errno = ENOMEM; free(r); return NULL; }
    struct ur_params p;
    memset(&p, 0, sizeof p);
    p.flags = UR_SETUP_CQSIZE;
    p.cq_entries = UR_CQ_ENTRIES;
    long fd = ur_setup(UR_SQ_ENTRIES, &p);    /* EPERM: io_uring_disabled; ENOSYS: seccomp, old kernel */
    if (fd < 0) { sys_fail(); goto fail; }
    r->fd = (int)fd;                          /* io_uring fds are close-on-exec */
    if ((p.features & (UR_FEAT_SINGLE_MMAP | UR_FEAT_NODROP)) != (UR_FEAT_SINGLE_MMAP | UR_FEAT_NODROP)) {
        mq_errno = EOPNOTSUPP;
        goto fail;
    }
    if (ur_probe_ops(r->fd) != 0) goto fail;
    size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
    size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct ur_cqe);
    r->sq_map_len = sq_len > cq_len ? sq_len : cq_len;   /* one mapping for both rings */
    void *m = mmap(NULL, r->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
                   (off_t)UR_OFF_SQ_RING);
    if (m == MAP_FAILED) { sys_fail(); goto fail; }
    r->sq_map = m;
    r->sqes_map_len = p.sq_entries * sizeof(struct ur_sqe);
    m = mmap(NULL, r->sqes_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd,
             (off_t)UR_OFF_SQES);
    if (m == MAP_FAILED) { sys_fail(); goto fail; }
    r->sqes_map = m;
    r->sqes = m;
    uint8_t *b = r->sq_map;
    r->sq_head = (_Atomic uint32_t *)(b + p.sq_off.head);
    r->sq_tail = (_Atomic uint32_t *)(b + p.sq_off.tail);
    r->sq_flags = (_Atomic uint32_t *)(b + p.sq_off.flags);
    r->sq_mask = *(uint32_t *)(b + p.sq_off.ring_mask);
    r->sq_array = (uint32_t *)(b + p.sq_off.array);
    r->cq_head = (_Atomic uint32_t *)(b + p.cq_off.head);
    r->cq_tail = (_Atomic uint32_t *)(b + p.cq_off.tail);
    r->cq_mask = *(uint32_t *)(b + p.cq_off.ring_mask);
    r->cqes = (struct ur_cqe *)(b + p.cq_off.cqes);
    return r;
fail:
    pthread_mutex_destroy(&r->mu);
    ur_release(r);
    return NULL;
}

int mq_ur_fd(const mq_uring *r) { return r ? r->fd : -1; }

/* Queues one SQE and submits it (caller holds r->mu).  Returns 0 when the
 * kernel took it (a failure of the request itself comes as its completion),
 * or MQ_ESYS (mq_errno) with nothing submitted. */
static int ur_submit(mq_uring *r, const struct ur_sqe *sqe) {
    /* relaxed: only this process submits, under r->mu; the kernel moves the
     * head only inside our io_uring_enter */
    uint32_t tail = atomic_load_explicit(r->sq_tail, memory_order_relaxed);
    uint32_t i = tail & r->sq_mask;
    r->sqes[i] = *sqe;
    r->sq_array[i] = i;
    /* release: the SQE and its array slot are written before the kernel can
     * see the new tail (it loads the tail with acquire) */
    atomic_store_explicit(r->sq_tail, tail + 1, memory_order_release);
    for (;;) {
        long n = ur_enter(r->fd, 1, 0, 0);
        if (n == 1) return 0;
        int err = n < 0 ? errno : EAGAIN;
        if (err == EINTR) continue;
        /* not taken (EAGAIN/EBUSY: no memory for requests, ENXIO ...): take
         * the SQE back so that it is never submitted later.  acquire: pairs
         * with the kernel's release of the head when it consumes an entry */
        if (atomic_load_explicit(r->sq_head, memory_order_acquire) == tail)
            atomic_store_explicit(r->sq_tail, tail, memory_order_relaxed);  /* the kernel reads it only in io_uring_enter */
        mq_errno = err;
        return MQ_ESYS;
    }
}

/* Submits an ASYNC_CANCEL of slot i's wait (caller holds r->mu).  Returns 0
 * or MQ_ESYS (the wait then stays until its wake-up or the ring's end). */
static int ur_cancel(mq_uring *r, int i) {
    struct ur_sqe s;
    memset(&s, 0, sizeof s);
    s.opcode = UR_OP_ASYNC_CANCEL;
    s.flags = UR_SQE_CQE_SKIP_SUCCESS;
    s.fd = -1;
    s.addr = UR_TAG_SLOT | (uint64_t)i;
    s.user_data = UR_TAG_CANCEL | (uint64_t)i;
    return ur_submit(r, &s);
}

/* Arms the periodic check if a watch is armed and none is pending (caller
 * holds r->mu).  Never fails: without it a wait is bounded only by its
 * wake-up (a failure is recorded in r->failed for the caller to see). */
static void ur_tick(mq_uring *r) {
    if (r->tick || r->armed == 0) return;
    struct ur_sqe s;
    memset(&s, 0, sizeof s);
    s.opcode = UR_OP_TIMEOUT;
    s.fd = -1;
    s.addr = (uint64_t)(uintptr_t)&r->slice;
    s.len = 1;
    s.user_data = UR_TAG_TICK;
    if (ur_submit(r, &s) == 0) r->tick = 1;
    else r->failed = mq_errno;
}

/* Stops counting slot e as a waiter, if its namespace is still open (a
 * closed one may be unmapped: its count stays, as a killed waiter's).
 * Never fails. */
static void ur_uncount(struct ur_entry *e) {
    if (!e->counted) return;
    e->counted = 0;
    if (aio_enter(e->ns) != 0) return;
    dec_sat_masked(&e->q->h->data_waiters, WAITERS_MASK);
    aio_leave(e->ns);
}

/* Ends an armed watch before its completion (caller holds r->mu):
 * uncounted, cancelled; `report`: the completion gives the cookie to
 * mq_ur_collect.  Never fails (a cancel that cannot be submitted leaves the
 * wait to its wake-up or the ring's end; the slot stays taken until then). */
static void ur_drop(mq_uring *r, struct ur_entry *e, int report) {
    ur_uncount(e);
    e->state = UR_GONE;
    e->report = report;
    e->ns = NULL;
    e->q = NULL;
    r->armed--;
    if (ur_cancel(r, (int)(e - r->e)) != 0) r->failed = mq_errno;
}

/* A free slot (growing the table), or MQ_ENOMEM (caller holds r->mu). */
static int ur_slot(mq_uring *r) {
    for (int i = 0; i < r->cap; i++)
        if (r->e[i].state == UR_FREE) return i;
    int cap = r->cap ? r->cap * 2 : 64;
    if (cap > (1 << 24)) return MQ_ESLOTS;
    struct ur_entry *ne = realloc(r->e, (size_t)cap * sizeof *ne);
    if (!ne) return MQ_ENOMEM;
    memset(ne + r->cap, 0, (size_t)(cap - r->cap) * sizeof *ne);
    int i = r->cap;
    r->e = ne;
    r->cap = cap;
    return i;
}

/* Locks r for a call of its own process.  Returns 0, MQ_EINVAL (NULL),
 * MQ_ECLOSED in a forked child (the ring is the parent's). */
static int ur_lock(mq_uring *r) {
    if (!r) return MQ_EINVAL;
    if (r->pid != getpid()) return MQ_ECLOSED;
    if (pthread_mutex_lock(&r->mu) != 0) return MQ_ESYS;
    return 0;
}

int mq_ur_watch(mq_uring *r, mq_ns *ns, uint32_t qi, uint32_t seq0, uint64_t cookie) {
    int rc = ur_lock(r);
    if (rc) return rc;
    const struct mq_q *q;
    if (r->failed) { mq_errno = r->failed; rc = MQ_ESYS; goto out; }
    rc = aio_enter(ns);
    if (rc) goto out;
    rc = aio_queue(ns, qi, &q);
    if (rc) goto leave;
    /* acquire: as mq_seq; a move since the caller's empty look means "look again" */
    if (atomic_load_explicit(&q->h->seq, memory_order_acquire) != seq0) { rc = MQ_EAGAIN; goto leave; }
    int i = ur_slot(r);
    if (i < 0) { rc = i; goto leave; }
    struct ur_entry *e = &r->e[i];
    /* seq_cst: counted before the kernel compares the seq word (q_wait's
     * increment before FUTEX_WAIT); q_notify bumps seq, then reads the count */
    atomic_fetch_add_explicit(&q->h->data_waiters, WAITER_ADD, memory_order_seq_cst);
    struct ur_sqe s;
    memset(&s, 0, sizeof s);
    s.opcode = UR_OP_FUTEX_WAIT;
    s.fd = (int32_t)UR_FUTEX2_SIZE_U32;
    s.addr = (uint64_t)(uintptr_t)&q->h->seq;
    s.off = seq0;
    s.addr3 = UR_FUTEX_MASK_ANY;
    s.user_data = UR_TAG_SLOT | (uint64_t)i;
    rc = ur_submit(r, &s);
    if (rc) {
        dec_sat_masked(&q->h->data_waiters, WAITERS_MASK);
        goto leave;
    }
    *e = (struct ur_entry){.ns = ns, .q = q, .expected = seq0, .state = UR_ARMED, .counted = 1,
                           .cookie = cookie};
    r->armed++;
    ur_tick(r);
    rc = i;
leave:
    aio_leave(ns);
out:
    pthread_mutex_unlock(&r->mu);
    return rc;
}

int mq_ur_unwatch(mq_uring *r, int slot, uint64_t cookie) {
    int rc = ur_lock(r);
    if (rc) return rc;
    if (slot < 0 || slot >= r->cap) {
        rc = MQ_EINVAL;
    } else if (r->e[slot].state == UR_ARMED && r->e[slot].cookie == cookie) {
        ur_drop(r, &r->e[slot], 0);
        rc = 1;
    } else if (r->e[slot].state == UR_GONE && r->e[slot].cookie == cookie && r->e[slot].report) {
        r->e[slot].report = 0;      /* fired, not collected yet: nobody wants it now */
        rc = 1;
    }
    pthread_mutex_unlock(&r->mu);
    return rc;
}

/* The periodic check (caller holds r->mu): fires the watches whose
 * namespace closed or whose seq word moved, re-arms the check.  Never fails. */
static void ur_check(mq_uring *r) {
    r->tick = 0;
    for (int i = 0; i < r->cap; i++) {
        struct ur_entry *e = &r->e[i];
        if (e->state != UR_ARMED) continue;
        if (aio_enter(e->ns) != 0) {
            e->counted = 0;         /* closed: the mapping may be gone (see ur_uncount) */
            ur_drop(r, e, 1);
            continue;
        }
        /* acquire: as mq_seq */
        int moved = atomic_load_explicit(&e->q->h->seq, memory_order_acquire) != e->expected;
        aio_leave(e->ns);
        if (moved) ur_drop(r, e, 1);
    }
    ur_tick(r);
}

/* Handles one completion (caller holds r->mu).  Returns 1 and *cookie when
 * a watch fired for the caller, else 0.  Never fails. */
static int ur_complete(mq_uring *r, const struct ur_cqe *c, uint64_t *cookie) {
    uint64_t tag = c->user_data & UR_TAG_MASK;
    if (tag == UR_TAG_TICK) {
        ur_check(r);
        return 0;
    }
    if (tag == UR_TAG_CANCEL) return 0;   /* -ENOENT: the wait completed first; its completion follows */
    uint64_t i = c->user_data & ~UR_TAG_MASK;
    if (i >= (uint64_t)r->cap) return 0;  /* cannot happen: only our slots are submitted */
    struct ur_entry *e = &r->e[i];
    int fire;
    if (e->state == UR_ARMED) {
        ur_uncount(e);
        r->armed--;
        fire = 1;
    } else {
        fire = e->state == UR_GONE && e->report;
    }
    /* 0 woken, -EAGAIN seq moved, -ECANCELED; anything else is a refusal
     * (e.g. -EINVAL from a kernel that reads the request differently) */
    if (c->res != 0 && c->res != -EAGAIN && c->res != -ECANCELED && c->res != -EINTR && !r->failed)
        r->failed = -c->res;
    *cookie = e->cookie;
    memset(e, 0, sizeof *e);
    return fire;
}

int mq_ur_collect(mq_uring *r, uint64_t *cookies, int max) {
    if (!cookies || max < 0) return MQ_EINVAL;
    int rc = ur_lock(r);
    if (rc) return rc;
    int n = 0, flushed = 0;
    /* relaxed: only this process consumes, under r->mu */
    uint32_t head = atomic_load_explicit(r->cq_head, memory_order_relaxed);
    while (n < max) {
        /* acquire: pairs with the kernel's release of the tail after it
         * wrote the CQEs before it.  Re-read after each completion: handling
         * one may submit a cancel, whose completion is posted meanwhile */
        if (head == atomic_load_explicit(r->cq_tail, memory_order_acquire)) {
            /* relaxed: a hint; completions that overflowed the CQ wait in
             * the kernel until io_uring_enter(GETEVENTS) flushes them */
            if (flushed || !(atomic_load_explicit(r->sq_flags, memory_order_relaxed) & UR_SQ_CQ_OVERFLOW))
                break;
            flushed = 1;
            if (ur_enter(r->fd, 0, 0, UR_ENTER_GETEVENTS) < 0 && errno != EINTR && errno != EBUSY) {
                r->failed = errno;
                break;
            }
            continue;
        }
        uint64_t ck;
        if (ur_complete(r, &r->cqes[head & r->cq_mask], &ck)) cookies[n++] = ck;
        head++;
        /* release: our reads of the CQE happen before the kernel may reuse
         * its slot (it reads the head before writing) */
        atomic_store_explicit(r->cq_head, head, memory_order_release);
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

int mq_ur_forget_ns(mq_uring *r, mq_ns *ns) {
    int rc = ur_lock(r);
    if (rc) return rc;
    int n = 0;
    for (int i = 0; i < r->cap; i++) {
        struct ur_entry *e = &r->e[i];
        if (e->state == UR_ARMED && e->ns == ns) {
            ur_drop(r, e, 1);
            n++;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return n;
}

/* r->failed (which = 1) or r->armed (0), read under the lock; or ur_lock's code. */
static int ur_read(mq_uring *r, int which) {
    int rc = ur_lock(r);
    if (rc) return rc;
    int v = which ? r->failed : r->armed;
    pthread_mutex_unlock(&r->mu);
    return v;
}

int mq_ur_armed(mq_uring *r) { return ur_read(r, 0); }

int mq_ur_failed(mq_uring *r) { return ur_read(r, 1); }

void mq_ur_free(mq_uring *r) {
    if (!r) return;
    if (r->pid != getpid()) {   /* a forked child: the parent's waits stay as they are */
        mq_ur_abandon(r);
        return;
    }
    if (pthread_mutex_lock(&r->mu) != 0) return;   /* cannot happen (default mutex): leak it */
    for (int i = 0; i < r->cap; i++)
        if (r->e[i].state == UR_ARMED) ur_uncount(&r->e[i]);
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_destroy(&r->mu);
    ur_release(r);   /* closing the ring cancels its waits */
}

void mq_ur_abandon(mq_uring *r) {
    /* a forked child: r->mu may have been held by a thread that does not
     * exist here; the mappings and the fd are this process's copies */
    if (r) ur_release(r);
}

int mq_ur_probe(void) {
    mq_uring *r = mq_ur_new();
    if (!r) return 0;
    /* a real wait with a value that does not match: -EAGAIN at once
     * (proves that seccomp lets io_uring_enter through and that the kernel
     * reads the request as laid out here) */
    uint32_t word = 1;
    struct ur_sqe s;
    memset(&s, 0, sizeof s);
    s.opcode = UR_OP_FUTEX_WAIT;
    s.fd = (int32_t)UR_FUTEX2_SIZE_U32;
    s.addr = (uint64_t)(uintptr_t)&word;
    s.off = 0;
    s.addr3 = UR_FUTEX_MASK_ANY;
    s.user_data = UR_TAG_CANCEL;
    int ok = 0;
    if (pthread_mutex_lock(&r->mu) == 0) {
        if (ur_submit(r, &s) == 0) {
            long n = ur_enter(r->fd, 0, 1, UR_ENTER_GETEVENTS);
            while (n < 0 && errno == EINTR) n = ur_enter(r->fd, 0, 1, UR_ENTER_GETEVENTS);
            /* head relaxed: nobody else consumes; tail acquire: as in mq_ur_collect */
            uint32_t head = atomic_load_explicit(r->cq_head, memory_order_relaxed);
            if (n >= 0 && atomic_load_explicit(r->cq_tail, memory_order_acquire) != head) {
                ok = r->cqes[head & r->cq_mask].res == -EAGAIN;
                if (!ok) mq_errno = -r->cqes[head & r->cq_mask].res;
            } else if (n < 0) {
                mq_errno = errno;
            }
        }
        pthread_mutex_unlock(&r->mu);
    }
    mq_ur_free(r);
    return ok;
}
