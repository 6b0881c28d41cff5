/* lock.h - the queue lock, process liveness and the wake-up word (internal).
 *
 * The lock (lock.c, or the tests' negative control csrc/tests/naive_lock.c,
 * chosen by the build) knows nothing of queues: lock_acquire reports a lock
 * taken over from a dead owner (LOCK_DEAD_OWNER) and its caller (mq.c's
 * q_lock) repairs the queue before using it.  Liveness and the futex word
 * (live.c) serve the lock and the blocking fetch.
 */
#ifndef MQUEUE_LOCK_H
#define MQUEUE_LOCK_H

#include "mq_internal.h"

/* ------------------------------------------------------------ lock.c */
#define LOCK_DEAD_OWNER 1   /* lock_acquire: taken over from a dead owner */

/* Takes the lock of queue header h for ns's process.  Returns 0 when taken,
 * LOCK_DEAD_OWNER when taken over from an owner that died holding it (the
 * caller must repair what the lock protects, then release it), MQ_EINTR when
 * a signal arrived while waiting, MQ_EAGAIN after RETURN_SLICE_NS behind a
 * live owner, MQ_ECLOSED when the handle is being detached; on a negative
 * code the lock is not held. */
MQ_HIDDEN int lock_acquire(const mq_ns *ns, struct q_hdr *h);
/* Releases h's lock and wakes one waiter if any sleeps.  Never fails. */
MQ_HIDDEN void lock_release(struct q_hdr *h);
/* Formats h's lock in a segment being created.  Returns 0, or MQ_ESYS
 * (mq_last_errno) when the semaphore cannot be made. */
MQ_HIDDEN int lock_init(struct q_hdr *h);
/* After LOCK_DEAD_OWNER: heals the wait accounting the dead owner (or a dead
 * waiter) may have left (caller holds the lock).  Returns 0, or MQ_ECORRUPT
 * when a damaged semaphore cannot be made again (waiters poll meanwhile). */
MQ_HIDDEN int lock_heal(struct q_hdr *h);

/* ------------------------------------------------------------ live.c */
/* Places, tests or drops an OFD lock on byte `slot` of fd's file.  Returns 0
 * done (for F_OFD_GETLK: 0 free, 1 held by another open file description),
 * or -errno. */
MQ_HIDDEN int ofd(int fd, short type, int slot, int cmd);
/* Claims the first free liveness slot for the open file description fd.
 * Returns 0 and sets *slot and *me; MQ_ESLOTS when all are held; MQ_ESYS. */
MQ_HIDDEN int slot_claim(struct seg_hdr *h, int fd, int *slot, uint64_t *me);
/* Returns 1 when the process named by owner word o may still be running,
 * 0 when it is certainly dead (or o is not a valid owner at all). */
MQ_HIDDEN int owner_alive(const mq_ns *ns, uint64_t o);
/* Returns 1 when this machine has more than one CPU online (spinning makes
 * sense only then: the process we wait for can run meanwhile). */
MQ_HIDDEN int multi_cpu(void);
/* Decrements the count in w's `mask` bits without going below 0 (counts may
 * be reset by q_notify or a repair).  Never fails. */
MQ_HIDDEN void dec_sat_masked(_Atomic uint32_t *w, uint32_t mask);

/* data_waiters: waiter count in the low 16 bits, an epoch above them. */
#define WAITERS_MASK 0xffffu
#define WAITER_ADD   0x10001u

/* After a publish: bumps q's wake-up word.  Called before the lock is
 * released (the line is ours then, and a fetch reads the word under the
 * lock), or after.  Returns the waiter word for q_wake when a process may
 * sleep on q, else 0.  Never fails. */
MQ_HIDDEN uint32_t q_bump(const struct mq_q *q);
/* Wakes up to n processes blocked in a fetch on q; w is q_bump's result.
 * Best done after unlocking (a system call).  Never fails (a failed wake-up
 * only delays a waiter to its slice). */
MQ_HIDDEN void q_wake(const struct mq_q *q, int64_t n, uint32_t w);
/* q_bump, then q_wake if needed.  Never fails. */
MQ_HIDDEN void q_notify(const struct mq_q *q, int64_t n);
/* Watches q's wake-up word for a few microseconds before a fetch sleeps
 * (multi-CPU only).  Returns 1 when it moved away from seq0, else 0. */
MQ_HIDDEN int q_spin(const struct mq_q *q, uint32_t seq0, int64_t deadline);
/* Sleeps until q's wake-up word moves away from seq0, a slice passes or the
 * deadline.  Returns 0 (check again), 2 (a whole slice passed: check again),
 * 1 (deadline reached), MQ_EINTR. */
MQ_HIDDEN int q_wait(const struct mq_q *q, uint32_t seq0, int64_t deadline);

/* Tells the CPU we are spinning (cheaper for the sibling hyperthread). */
static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
