/* mq_internal.h - what the engine's source files share (internal).
 *
 * The engine is four files:
 *   mq.c        queues: layout, attach/detach, the ring, add/fetch/reserve/
 *               settle/load, repair after a dead lock owner, the notifier;
 *   lock.c      the robust lock (lock.h): owner word + semaphore wait queue;
 *               it reports a lock taken from a dead owner, mq.c repairs;
 *   live.c      liveness slots (OFD locks) and the futex wake-up word (lock.h);
 *   adapters.c  entry points shaped for the cffi binding (fetch buffer,
 *               NUL-separated batches), built on mq.c's internal calls.
 * The tests' negative control (csrc/tests/naive_lock.c) replaces lock.c.
 *
 * Nothing here is part of the interface (mq.h); every symbol declared here
 * has hidden visibility, so the built module exports only mq.h.
 */
#ifndef MQUEUE_MQ_INTERNAL_H
#define MQUEUE_MQ_INTERNAL_H

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mq.h"
#include "mq_layout.h"

#define MQ_HIDDEN __attribute__((visibility("hidden")))

#define NS_PER_S        1000000000LL
#define RETURN_SLICE_NS 100000000LL  /* 100 ms: a long wait returns MQ_EAGAIN this often */

struct mq_q {                   /* process-local, validated copy of q_hdr's constants */
    struct q_hdr *h;
    uint8_t *data;
    uint64_t phys, cap, nbuckets;
    uint64_t mask;              /* phys - 1 when phys is a power of two, else 0 */
    int64_t limit;
    _Atomic uint64_t *buckets;  /* NULL for addmode 0 */
    uint32_t addmode;
};

/* One per process and mapped segment, shared by every handle (mq_ns) on it
 * (mq_clone): the mapping, the descriptor and the liveness slot.  So the
 * slots count processes, not handles. */
struct mq_map {
    _Atomic uint32_t refs;      /* handles using this mapping; the last mq_detach releases it */
    int fd;                     /* owned: a duplicate of the caller's descriptor */
    int slot;
    pid_t slot_pid;             /* the process that claimed `slot` through `fd` */
    uint64_t me;                /* owner word value of this process */
    int linked;                 /* the file had a name at attach (not a memfd): check nlink */
    _Atomic int64_t next_check; /* CLOCK_MONOTONIC_COARSE ns of the next nlink check */
};

struct mq_ns {
    uint8_t *base;
    uint64_t size;
    struct seg_hdr *h;
    struct mq_map *map;         /* shared with the handle's clones */
    uint32_t nq;
    const char *meta;
    size_t meta_len;
    int broken;                 /* with closing == 2: the code every call returns (mq_reattach) */
    _Atomic uint32_t inflight;  /* calls of this process's threads inside the engine */
    _Atomic uint32_t closing;   /* 1: set by mq_detach, new calls get MQ_ECLOSED; 2: broken */
    struct mq_q q[];
};

/* True once mq_detach began: long waits give up at their next slice. */
static inline int ns_closing(const mq_ns *ns) {
    return atomic_load_explicit(&ns->closing, memory_order_relaxed) != 0;  /* a hint, re-read each slice */
}

/* The errno of the last MQ_ESYS of this thread (mq_last_errno). */
MQ_HIDDEN extern __thread int mq_errno;

/* Records errno for mq_last_errno().  Returns MQ_ESYS. */
static inline int sys_fail(void) { mq_errno = errno; return MQ_ESYS; }

/* Returns CLOCK_MONOTONIC in ns (the clock Python's time.monotonic uses). */
static inline int64_t mono_ns(void) {
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) return 0;   /* cannot fail on Linux */
    return (int64_t)ts.tv_sec * NS_PER_S + ts.tv_nsec;
}

/* ------------------------------------------------------------ test kill points */
#ifdef MQ_TESTING
/* The kill point named by MQ_KILLPOINT (read once per process), or NULL. */
MQ_HIDDEN const char *mq_kill_point(void);
/* Dies here (as a SIGKILL would) when MQ_KILLPOINT names this point.  Every
 * kill point is in mq.c: tests/ctools.py finds them there. */
#define KILLPOINT(name) do { const char *kp_ = mq_kill_point(); \
        if (kp_ && strcmp(kp_, name) == 0) _exit(77); } while (0)
/* Creation kill points: the same mechanism, a separate name so that the
 * operation kill point tests (tests/test_c_engine.py, which find every
 * KILLPOINT) do not look for them; tests/test_lifecycle.py uses them. */
#define DIE_IN_CREATE(name) KILLPOINT(name)
#else
#define DIE_IN_CREATE(name) do { } while (0)
#define KILLPOINT(name) do { } while (0)
#endif

/* ------------------------------------------------------------ mq.c for adapters.c */
/* What a batch fetch reports besides the items (see mq_fetch_batch). */
struct batch_out {
    uint64_t total;
    uint32_t info;
};

/* The fetch loop of every mq_fetch* call (ns_enter .. ns_leave included):
 * takes up to max items, or spins, or sleeps until `deadline` (CLOCK_MONOTONIC
 * ns; 0 = do not wait, -1 = forever).  With bo, every key and value is
 * followed by a NUL byte and bo describes the batch.  Returns the number
 * taken, 0 at the deadline, MQ_EBUF (meta[0] = bytes needed) or another
 * negative code; nothing is taken on failure. */
MQ_HIDDEN int64_t mq_fetch_loop(mq_ns *ns, uint32_t qi, uint32_t max, int64_t deadline,
                                char *buf, size_t bufsize, uint32_t *meta, struct batch_out *bo);

/* ------------------------------------------------------------ mq.c for uring.c */
/* Counts a call in flight on ns (mq_detach waits for it) and checks that it
 * is open.  Returns 0, or MQ_ERANGE (NULL), MQ_ECLOSED, MQ_ELOST,
 * MQ_ECORRUPT, a broken handle's code: not counted then. */
MQ_HIDDEN int aio_enter(mq_ns *ns);
/* Ends aio_enter's count.  Never fails. */
MQ_HIDDEN void aio_leave(mq_ns *ns);
/* Queue qi of ns (in flight).  Returns 0 and *q, or MQ_ERANGE. */
MQ_HIDDEN int aio_queue(mq_ns *ns, uint32_t qi, const struct mq_q **q);

#endif
