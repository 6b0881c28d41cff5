/* naive_lock.c - the negative control of the crash tests: replaces csrc/lock.c.
 *
 * The semaphore used as a plain mutex, as most IPC queues do.  A holder that
 * dies leaves it taken forever; the torture test (csrc/tests/torture.c built
 * with it) and tests/test_crash.py's holder-death control must see that stall.
 * Built by tests/ctools.py (compile_c(..., naive=True)) and by csrc/build_ffi.py
 * with MQUEUE_NAIVE_LOCK=1, instead of csrc/lock.c; never in a release build.
 * Implements lock.h's four lock functions; it never reports a dead owner.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <semaphore.h>

#include "lock.h"

int lock_init(struct q_hdr *h) {
    /* pshared = 1: across processes; one token: the lock is free */
    return sem_init(&h->sem, 1, 1) == 0 ? 0 : sys_fail();
}

/* Never called: lock_acquire never reports LOCK_DEAD_OWNER.  Returns 0. */
int lock_heal(struct q_hdr *h) {
    (void)h;
    return 0;
}

void lock_release(struct q_hdr *h) {
    sem_post(&h->sem);   /* fails only on overflow, impossible for a mutex */
}

/* Returns 0 when taken, or MQ_EINTR (not held). */
int lock_acquire(const mq_ns *ns, struct q_hdr *h) {
    (void)ns;
    for (;;) {
        if (sem_wait(&h->sem) == 0) return 0;
        if (errno == EINTR) return MQ_EINTR;
    }
}
