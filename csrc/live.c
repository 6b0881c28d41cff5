/* live.c - process liveness and the wake-up word: what the lock (lock.c)
 * and the blocking fetch (mq.c) build on.
 *
 *   - liveness: each attached process holds an OFD lock on one byte (its
 *     slot) of the segment's file; the kernel drops it when the process dies,
 *     whatever pid namespace it lives in and whoever reuses its pid.  The
 *     owner word of a lock carries the slot and the generation of that
 *     slot's claim (seg_hdr.slot_gen), so a new claim of the slot never makes
 *     a dead owner look alive;
 *   - the wake-up word: q_hdr.seq is bumped after every publish, and a fetch
 *     that finds its queue empty sleeps on it with FUTEX_WAIT, counted in
 *     q_hdr.data_waiters so that an add makes the FUTEX_WAKE system call
 *     only when someone sleeps.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "lock.h"

#define WAIT_SLICE_NS  100000000LL   /* 100 ms: bounds a wait whose waker died */
#define SPIN_NS        20000LL       /* 20 us: how long an empty fetch watches before sleeping */


/* Decrements a waiter count without going below 0.  Counts may be reset by
 * q_notify/q_recover (healing increments left by killed processes), so a
 * plain decrement could wrap. */
void dec_sat_masked(_Atomic uint32_t *w, uint32_t mask) {
    uint32_t v = atomic_load_explicit(w, memory_order_relaxed);
    /* relaxed: the count is only a hint whether to wake; waits are timed */
    while ((v & mask) && !atomic_compare_exchange_weak_explicit(w, &v, v - 1, memory_order_relaxed,
                                                                 memory_order_relaxed)) { }
}


/* Returns 1 when this machine has more than one CPU online (spinning makes
 * sense only then: the process we wait for can run meanwhile). */
int multi_cpu(void) {
    static _Atomic int ncpu;
    /* relaxed: idempotent initialisation, racing threads store the same value */
    int nc = atomic_load_explicit(&ncpu, memory_order_relaxed);
    if (nc == 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        nc = n > 0 ? (int)n : 1;
        atomic_store_explicit(&ncpu, nc, memory_order_relaxed);
    }
    return nc > 1;
}


/* ------------------------------------------------------------ liveness slots */
/* Places, tests or drops an OFD lock on byte `slot`.  Returns 0 done (for
 * F_OFD_GETLK: 0 free, 1 held by another open file description), or -errno. */
int ofd(int fd, short type, int slot, int cmd) {
    struct flock fl;
    memset(&fl, 0, sizeof fl);
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = slot;
    fl.l_len = 1;
    if (fcntl(fd, cmd, &fl) == -1) return -errno;
    if (cmd == F_OFD_GETLK) return fl.l_type != F_UNLCK;
    return 0;
}

/* Claims the first free slot for this process's open file description fd.
 * Returns 0 and sets *slot and *me; MQ_ESLOTS when all are held; MQ_ESYS. */
int slot_claim(struct seg_hdr *h, int fd, int *slot, uint64_t *me) {
    for (int i = 0; i < MQ_NSLOTS; i++) {
        int rc = ofd(fd, F_WRLCK, i, F_OFD_SETLK);
        if (rc == -EAGAIN || rc == -EACCES) continue;       /* a live process has it */
        if (rc < 0) { mq_errno = -rc; return MQ_ESYS; }
        /* seq_cst RMW: any owner word naming the previous claim of slot i
         * stops matching before this process can take a lock with it. */
        uint64_t gen = (atomic_fetch_add(&h->slot_gen[i], 1) + 1) & 0xffffffffffffULL;
        if (gen == 0) gen = atomic_fetch_add(&h->slot_gen[i], 1) + 1;   /* skip 0 on wrap */
        atomic_store_explicit(&h->slot_pid[i], (uint32_t)getpid(), memory_order_relaxed); /* informational */
        *slot = i;
        *me = ((gen & 0xffffffffffffULL) << 16) | (uint64_t)(i + 1);
        return 0;
    }
    return MQ_ESLOTS;
}

/* Returns 1 when the process named by owner word o may still be running,
 * 0 when it is certainly dead (or o is not a valid owner at all). */
int owner_alive(const mq_ns *ns, uint64_t o) {
    uint64_t s1 = o & 0xffff, gen = o >> 16;
    const struct mq_map *m = ns->map;
    if (o == m->me) return 1;                        /* another thread of this process */
    if (s1 == 0 || s1 > MQ_NSLOTS) return 0;         /* garbage: nobody can own with it */
    int slot = (int)s1 - 1;
    /* acquire: pairs with the seq_cst RMW in slot_claim */
    if ((atomic_load_explicit(&ns->h->slot_gen[slot], memory_order_acquire) & 0xffffffffffffULL) != gen)
        return 0;                                    /* slot reclaimed since: owner died */
    if (slot == m->slot) return 1;                   /* our own slot, current gen: it is us */
    int rc = ofd(m->fd, F_WRLCK, slot, F_OFD_GETLK);
    return rc != 0;                                  /* error: assume alive, never steal */
}

/* ------------------------------------------------------------ the wake-up word */
uint32_t q_bump(const struct mq_q *q) {
    /* seq_cst: the bump is ordered before the waiter-count load, pairing
     * with q_wait's increment before FUTEX_WAIT (no lost wake-up) */
    atomic_fetch_add_explicit(&q->h->seq, 1, memory_order_seq_cst);
    uint32_t w = atomic_load_explicit(&q->h->data_waiters, memory_order_seq_cst);
    return (w & WAITERS_MASK) ? w : 0;
}

void q_wake(const struct mq_q *q, int64_t n, uint32_t w) {
    int cnt = n > INT_MAX ? INT_MAX : (int)n;
    /* shared futex (no FUTEX_PRIVATE_FLAG): waiters are other processes */
    long woken = syscall(SYS_futex, &q->h->seq, FUTEX_WAKE, cnt, NULL, NULL, 0);
    if (woken == 0) {
        /* Nobody was asleep: the count is stale (a waiter was killed) or
         * every counted waiter is between its increment and FUTEX_WAIT;
         * those read seq before our bump, so their FUTEX_WAIT returns at
         * once.  Resetting stops a stale count costing every add a
         * syscall.  relaxed CAS: the count is only a hint. */
        atomic_compare_exchange_strong_explicit(&q->h->data_waiters, &w, w & ~WAITERS_MASK,
                                                memory_order_relaxed, memory_order_relaxed);
    }
}

void q_notify(const struct mq_q *q, int64_t n) {
    uint32_t w = q_bump(q);
    if (w) q_wake(q, n, w);
}

/* Watches q's seq for up to SPIN_NS before a fetch goes to sleep: a producer
 * that is streaming adds again within microseconds, while a sleep and its
 * wake-up cost two system calls and a context switch on each side.  Only on
 * machines with more than one CPU.  Returns 1 when seq moved. */
int q_spin(const struct mq_q *q, uint32_t seq0, int64_t deadline) {
    if (!multi_cpu()) return 0;
    int64_t end = mono_ns() + SPIN_NS;
    if (deadline > 0 && deadline < end) end = deadline;
    do {
        for (int i = 0; i < 64; i++) {
            /* relaxed: only a hint to look again; take() reads under the lock */
            if (atomic_load_explicit(&q->h->seq, memory_order_relaxed) != seq0) return 1;
            cpu_relax();
        }
    } while (mono_ns() < end);
    return 0;
}

/* Sleeps until q's seq moves away from seq0, a slice passes or the deadline.
 * Returns 0 (check again), 2 (a whole slice passed: check again), 1
 * (deadline reached), MQ_EINTR. */
int q_wait(const struct mq_q *q, uint32_t seq0, int64_t deadline) {
    int64_t now = mono_ns(), slice = WAIT_SLICE_NS;
    if (deadline >= 0) {
        if (now >= deadline) return 1;
        if (deadline - now < slice) slice = deadline - now;
    }
    struct timespec rel = {(time_t)(slice / NS_PER_S), (long)(slice % NS_PER_S)};
    /* seq_cst: see q_notify.  The count is the low 16 bits; every waiter
     * also bumps the epoch above them, so q_notify's reset (a CAS from the
     * value it read) fails if a waiter came and went meanwhile (no ABA). */
    atomic_fetch_add_explicit(&q->h->data_waiters, WAITER_ADD, memory_order_seq_cst);
    long rc = syscall(SYS_futex, &q->h->seq, FUTEX_WAIT, seq0, &rel, NULL, 0);
    int err = rc ? errno : 0;
    dec_sat_masked(&q->h->data_waiters, WAITERS_MASK);
    if (rc && err == EINTR) return MQ_EINTR;
    if (rc && err == ETIMEDOUT) return 2;   /* a whole slice passed: the caller checks more */
    return 0;   /* woken, EAGAIN (seq moved): re-check */
}
