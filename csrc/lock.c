/* lock.c - the queue lock: a robust benaphore in shared memory.
 *
 *   - the owner word (q_hdr.owner) is the lock; it is taken with one
 *     compare-and-swap, so an uncontended lock/unlock makes no system call;
 *   - a process-shared POSIX semaphore is the wait queue: waiters sleep on it
 *     with a short CLOCK_MONOTONIC timeout (LOCK_SLICE_NS);
 *   - the owner word carries the owner's liveness slot and the generation of
 *     that slot's claim (live.c), so a new process reusing the slot never
 *     makes a dead owner look alive;
 *   - a waiter whose slice expires checks the owner; only a dead owner (slot
 *     generation moved on, or its OFD lock gone) is taken over, by CAS, and
 *     lock_acquire reports it (LOCK_DEAD_OWNER): the caller repairs the queue
 *     (mq.c's q_recover) and counts a recovery.  A slow or stopped owner is
 *     never robbed on a timeout alone.
 *
 * The tests' negative control, csrc/tests/naive_lock.c, implements the same
 * four functions (lock.h) with the semaphore as a plain mutex; the build
 * compiles one or the other.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "lock.h"

#define LOCK_SLICE_NS  10000000LL    /* 10 ms: bounds how long a dead owner blocks others */
/* How long a lock waiter spins before it sleeps on the semaphore, counted
 * from when its backoff reaches LOCK_BACKOFF_MAX (a clock read per look from
 * then on, none before): about the fetch's SPIN_NS (live.c).  Measured in
 * time, not pauses: a pause is 10 ns on some CPUs and 50 on others, and a
 * budget of 500 pauses ended before a 256-item batch released the lock here,
 * so waiters slept and were woken by sem_post (issue 10). */
#define LOCK_SPIN_NS   20000LL
/* The most pauses between two looks at a held lock's owner word.  A waiter
 * looks after 1, 2, 4, ... pauses (exponential backoff), not after every
 * one: each look pulls the lock's line, which the holder writes again
 * before it is done (the state index, the wake-up word of an add, the
 * release), back to the waiter's core and makes the holder fetch it back,
 * so looking at every pause stretched every hold under contention, and the
 * two sides took strict turns (2 processes, one adding, one fetching: ~0.9
 * failed CAS per operation on each side, ~10 pauses per wait, ~1.2 M items/s
 * against ~3.8 M/s with backoff: benchmarks/README.md, issue 10).  64: 32
 * and 16 gave less back, 128 and 256 no more; a pause is 10-50 ns depending
 * on the CPU, so the longest gap between looks is ~0.6-3 us. */
#define LOCK_BACKOFF_MAX 64

/* glibc abort()s ("The futex facility returned an unexpected error code")
 * when a semaphore's private word is garbage, as it may be in a damaged
 * segment.  On 64-bit glibc a sem_t is {uint64 value+waiters; int private;
 * int pad}; what sem_init(pshared = 1) stores in `private` is learnt once
 * from a scratch semaphore, and any other value marks a semaphore damaged.
 * If the layout is not as expected the check is off (returns 0). */
static int sem_damaged(sem_t *sem) {
#if defined(__GLIBC__) && __SIZEOF_POINTER__ == 8
    static _Atomic int expected = -2;    /* -2 unknown yet, -1 check off */
    int e = atomic_load_explicit(&expected, memory_order_relaxed);   /* idempotent init */
    if (e == -2) {
        sem_t probe;
        int priv = -1;
        if (sem_init(&probe, 1, 0) == 0) {
            memcpy(&priv, (const char *)&probe + 8, sizeof priv);
            uint64_t v;
            memcpy(&v, &probe, sizeof v);
            if (v != 0 || priv < 0) priv = -1;
            if (sem_destroy(&probe) != 0) priv = -1;
        }
        e = priv;
        atomic_store_explicit(&expected, e, memory_order_relaxed);
    }
    if (e < 0) return 0;
    int priv;
    memcpy(&priv, (const char *)sem + 8, sizeof priv);
    return priv != e;
#else
    (void)sem;
    return 0;
#endif
}

/* Decrements the whole word w without going below 0.  Never fails. */
static void dec_sat(_Atomic uint32_t *w) { dec_sat_masked(w, UINT32_MAX); }

int lock_init(struct q_hdr *h) {
    /* pshared = 1: across processes; 0 tokens: the semaphore is only the
     * wait queue, the owner word is the lock */
    return sem_init(&h->sem, 1, 0) == 0 ? 0 : sys_fail();
}

int lock_heal(struct q_hdr *h) {
    /* Live waiters time out within a slice and count themselves again.
     * relaxed: a hint (see lock_release); we hold the lock. */
    atomic_store_explicit(&h->lock_waiters, 0, memory_order_relaxed);
    if (sem_damaged(&h->sem)) {
        if (sem_init(&h->sem, 1, 0) != 0) return MQ_ECORRUPT;   /* waiters poll meanwhile */
    } else {
        for (int i = 0; i < 1024 && sem_trywait(&h->sem) == 0; i++) { }   /* stale wake-ups */
    }
    return 0;
}

void lock_release(struct q_hdr *h) {
    /* seq_cst (a release would do for the data): everything done under the
     * lock happens-before the next owner's acquiring CAS, and the store is
     * ordered before the lock_waiters load below (StoreLoad), the other half
     * of the waiter's increment-then-recheck in lock_acquire */
    atomic_store_explicit(&h->owner, 0, memory_order_seq_cst);
    /* seq_cst load: pairs with the waiter's seq_cst increment + owner
     * re-check in lock_acquire, so a waiter is either seen here or sees 0 there */
    if (atomic_load_explicit(&h->lock_waiters, memory_order_seq_cst) && !sem_damaged(&h->sem)) {
        int v = 0;
        /* a pending post already wakes the next waiter; more would only pile
         * up when the count is stale (a waiter was killed) */
        if (sem_getvalue(&h->sem, &v) != 0 || v <= 0)
            sem_post(&h->sem);   /* fails only on overflow; waiters time out anyway */
    }
}

int lock_acquire(const mq_ns *ns, struct q_hdr *h) {
    int64_t slice_end = 0;   /* when the current owner is next checked for liveness */
    int64_t started = 0;     /* when this call began to sleep (MQ_EAGAIN after a while) */
    /* locks are held for a few microseconds at most: spin first (multi-CPU only) */
    int spinning = multi_cpu();
    int backoff = 1;         /* pauses before the next look at the owner word */
    int64_t spin_end = 0;    /* when spinning stops (0: backoff not at its cap yet) */
    for (;;) {
        uint64_t expected = 0;
        /* acquire: pairs with the release in lock_release */
        if (atomic_compare_exchange_strong_explicit(&h->owner, &expected, ns->map->me,
                                                    memory_order_acquire, memory_order_relaxed))
            return 0;
        if (spinning) {
            do {
                for (int k = 0; k < backoff; k++) cpu_relax();
                if (backoff < LOCK_BACKOFF_MAX) backoff *= 2;
                else if (spin_end == 0) spin_end = mono_ns() + LOCK_SPIN_NS;
                else if (mono_ns() >= spin_end) spinning = 0;   /* one more CAS, then sleep */
                /* relaxed: only a hint that the CAS above may now succeed */
            } while (spinning && atomic_load_explicit(&h->owner, memory_order_relaxed) != 0);
            continue;
        }
        /* seq_cst: see lock_release */
        atomic_fetch_add_explicit(&h->lock_waiters, 1, memory_order_seq_cst);
        if (atomic_load_explicit(&h->owner, memory_order_seq_cst) == 0) {
            dec_sat(&h->lock_waiters);
            continue;
        }
        int64_t now = mono_ns();
        if (started == 0) started = now;
        else if (now - started >= RETURN_SLICE_NS) {
            /* a live owner holds the lock for long (stopped?): let the caller
             * run its signal handlers, then call again */
            dec_sat(&h->lock_waiters);
            return MQ_EAGAIN;
        }
        if (slice_end == 0) slice_end = now + LOCK_SLICE_NS;
        int err = ETIMEDOUT;
        if (now < slice_end) {
            if (sem_damaged(&h->sem)) {
                /* never hand glibc a damaged semaphore (it abort()s): poll */
                struct timespec z = {0, 1000000};
                nanosleep(&z, NULL);
                err = 0;
            } else {
                struct timespec ts = {(time_t)(slice_end / NS_PER_S), (long)(slice_end % NS_PER_S)};
                err = sem_clockwait(&h->sem, CLOCK_MONOTONIC, &ts) ? errno : 0;
            }
        }
        dec_sat(&h->lock_waiters);
        if (err == EINTR) return MQ_EINTR;
        if (ns_closing(ns)) return MQ_ECLOSED;        /* mq_detach is waiting for us */
        /* Woken within the slice: try again.  Wake-ups alone never postpone
         * the liveness check past the slice (stale posts cannot starve it). */
        if (err == 0 && mono_ns() < slice_end) continue;
        if (err != 0 && err != ETIMEDOUT) {           /* unexpected error: do not spin hot */
            struct timespec z = {0, 1000000};
            nanosleep(&z, NULL);
        }
        slice_end = 0;
        uint64_t o = atomic_load_explicit(&h->owner, memory_order_acquire);
        if (o == 0 || owner_alive(ns, o)) continue;   /* never steal from a live owner */
        /* acquire: we take over the dead owner's lock; only one taker wins */
        if (atomic_compare_exchange_strong_explicit(&h->owner, &o, ns->map->me,
                                                    memory_order_acquire, memory_order_relaxed))
            return LOCK_DEAD_OWNER;
    }
}
