/* uring.c - C-level tests of the asyncio io_uring waits (csrc/uring.c).
 *
 *   gcc -std=c11 -O2 -Wall -Wextra -Werror -Icsrc -o uring csrc/tests/uring.c \
 *       csrc/mq.c csrc/lock.c csrc/live.c csrc/adapters.c csrc/uring.c -lpthread
 *   ./uring [stress-items]        ./uring stress N   (the protocol parts only)
 *
 * Prints "io_uring: no" and passes nothing when the kernel refuses (the
 * Python tests skip then).  Segments live in memfds.  The last line printed
 * is "N passed, N failed"; the exit status is non-zero on any failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lock.h"          /* WAITERS_MASK; mq_internal.h: the queue header */
#include "check.h"
#include "aio_common.h"

/* Waiters counted on queue q (the low bits of data_waiters). */
static uint32_t waiters(mq_ns *ns, uint32_t q) {
    return atomic_load(&ns->q[q].h->data_waiters) & WAITERS_MASK;
}

/* 1 when the ring's fd becomes readable within ms, else 0. */
static int readable(int fd, int ms) {
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, ms) == 1;
}

/* Collects for up to ms: the number of cookies put in got (max 16). */
static int collect_for(mq_uring *r, int ms, uint64_t *got) {
    int64_t until = mono_ns() + (int64_t)ms * 1000000LL;
    int n = 0;
    while (n == 0 && mono_ns() < until) {
        readable(mq_ur_fd(r), 10);
        n = mq_ur_collect(r, got, 16);
    }
    return n;
}

static void t_basic(void) {
    current = "basic";
    int fd;
    mq_ns *ns = ns_new(3, &fd);
    mq_uring *r = mq_ur_new();
    CHECK(r != NULL);
    if (!r) return;
    int rfd = mq_ur_fd(r);
    uint64_t got[16];

    /* argument checks, nothing armed */
    uint32_t s = seq_of(ns, 0);
    CHECK_EQ(mq_ur_fd(NULL), -1);
    CHECK_EQ(mq_ur_watch(NULL, ns, 0, s, 1), MQ_EINVAL);
    CHECK_EQ(mq_ur_watch(r, ns, 9, s, 1), MQ_ERANGE);
    CHECK_EQ(mq_ur_watch(r, NULL, 0, s, 1), MQ_ERANGE);
    CHECK_EQ(mq_ur_watch(r, ns, 0, s + 1, 1), MQ_EAGAIN);   /* seq moved: look again */
    CHECK_EQ(mq_ur_armed(r), 0);
    CHECK_EQ(waiters(ns, 0), 0);
    CHECK_EQ(mq_ur_collect(r, NULL, 1), MQ_EINVAL);
    CHECK_EQ(mq_ur_unwatch(r, -1, 1), MQ_EINVAL);
    CHECK_EQ(mq_ur_failed(r), 0);

    /* an add fires the watch, once; the count is back to 0 */
    int slot = mq_ur_watch(r, ns, 0, s, 7);
    CHECK(slot >= 0);
    CHECK_EQ(mq_ur_armed(r), 1);
    CHECK_EQ(waiters(ns, 0), 1);
    CHECK(!readable(rfd, 50));
    CHECK_EQ(add1(ns, 0), 1);
    CHECK(readable(rfd, 2000));
    CHECK_EQ(mq_ur_collect(r, got, 16), 1);
    CHECK_EQ(got[0], 7);
    CHECK_EQ(mq_ur_collect(r, got, 16), 0);
    CHECK(!readable(rfd, 0));
    CHECK_EQ(mq_ur_armed(r), 0);
    CHECK_EQ(waiters(ns, 0), 0);
    CHECK_EQ(take1(ns, 0), 1);

    /* removed: uncounted at once, an add does not fire it; the wrong cookie removes nothing */
    s = seq_of(ns, 0);
    slot = mq_ur_watch(r, ns, 0, s, 8);
    CHECK(slot >= 0);
    CHECK_EQ(mq_ur_unwatch(r, slot, 9), 0);
    CHECK_EQ(mq_ur_unwatch(r, slot, 8), 1);
    CHECK_EQ(mq_ur_unwatch(r, slot, 8), 0);
    CHECK_EQ(waiters(ns, 0), 0);
    CHECK_EQ(add1(ns, 0), 1);
    CHECK_EQ(collect_for(r, 150, got), 0);
    CHECK_EQ(take1(ns, 0), 1);

    /* another queue's add does not fire it: two queues at once */
    uint32_t s1 = seq_of(ns, 1), s2 = seq_of(ns, 2);
    CHECK(mq_ur_watch(r, ns, 1, s1, 11) >= 0);
    CHECK(mq_ur_watch(r, ns, 2, s2, 12) >= 0);
    CHECK_EQ(add1(ns, 0), 1);
    CHECK_EQ(collect_for(r, 50, got), 0);
    CHECK_EQ(add1(ns, 2), 1);
    CHECK_EQ(collect_for(r, 2000, got), 1);
    CHECK_EQ(got[0], 12);
    CHECK_EQ(mq_ur_armed(r), 1);
    CHECK_EQ(add1(ns, 1), 1);
    CHECK_EQ(collect_for(r, 2000, got), 1);
    CHECK_EQ(got[0], 11);
    CHECK_EQ(take1(ns, 0) + take1(ns, 1) + take1(ns, 2), 3);

    /* forget_ns fires every watch on that namespace, uncounted at once */
    CHECK(mq_ur_watch(r, ns, 0, seq_of(ns, 0), 21) >= 0);
    CHECK(mq_ur_watch(r, ns, 1, seq_of(ns, 1), 22) >= 0);
    CHECK_EQ(mq_ur_forget_ns(r, ns), 2);
    CHECK_EQ(waiters(ns, 0) + waiters(ns, 1), 0);
    CHECK_EQ(mq_ur_armed(r), 0);
    int n = collect_for(r, 2000, got);
    if (n == 1) n += collect_for(r, 2000, got + 1);
    CHECK_EQ(n, 2);
    CHECK_EQ(got[0] + got[1], 43);

    /* fired by forget_ns, then removed before collected: not reported */
    slot = mq_ur_watch(r, ns, 0, seq_of(ns, 0), 23);
    CHECK_EQ(mq_ur_forget_ns(r, ns), 1);
    CHECK_EQ(mq_ur_unwatch(r, slot, 23), 1);
    CHECK_EQ(collect_for(r, 100, got), 0);

    /* detaching a watched namespace does not wait for the watch (it holds
     * nothing); the periodic check fires it within a slice */
    mq_ns *ns2 = ns_other(fd);
    CHECK(mq_ur_watch(r, ns2, 0, seq_of(ns2, 0), 31) >= 0);
    struct detacher d = {ns2, 0};
    pthread_t th;
    if (pthread_create(&th, NULL, detach_thread, &d) != 0) exit(2);
    pthread_join(th, NULL);
    CHECK(d.took < 50000000LL);
    CHECK_EQ(collect_for(r, 2000, got), 1);
    CHECK_EQ(got[0], 31);
    CHECK_EQ(mq_ur_watch(r, ns2, 0, 0, 32), MQ_ECLOSED);
    /* its count stayed (the mapping was gone), as a killed waiter's: the next
     * add's FUTEX_WAKE wakes nobody and resets it */
    CHECK_EQ(waiters(ns, 0), 1);
    CHECK_EQ(add1(ns, 0), 1);
    CHECK_EQ(waiters(ns, 0), 0);
    CHECK_EQ(take1(ns, 0), 1);
    mq_free(ns2);

    /* freed with a watch armed: uncounted, nothing fires any more */
    CHECK(mq_ur_watch(r, ns, 0, seq_of(ns, 0), 41) >= 0);
    CHECK_EQ(waiters(ns, 0), 1);
    mq_ur_free(r);
    CHECK_EQ(waiters(ns, 0), 0);
    mq_free(ns);
    close(fd);
}

/* A destroyed namespace (marked lost) wakes its watches at once. */
static void t_lost(void) {
    current = "lost";
    int fd;
    mq_ns *ns = ns_new(1, &fd);
    mq_uring *r = mq_ur_new();
    uint64_t got[16];
    CHECK(mq_ur_watch(r, ns, 0, seq_of(ns, 0), 5) >= 0);
    int64_t t0 = mono_ns();
    CHECK_EQ(mq_mark_lost(fd), 0);
    CHECK_EQ(collect_for(r, 2000, got), 1);
    CHECK(mono_ns() - t0 < 50000000LL);   /* the wake-up, not the periodic check */
    CHECK_EQ(mq_ur_watch(r, ns, 0, 0, 6), MQ_ELOST);
    CHECK_EQ(mq_ur_armed(r), 0);
    mq_ur_free(r);
    mq_free(ns);
    close(fd);
}

/* 300 queues on one ring (no per-ring limit): each add fires exactly its
 * queue's watch; then 100,000 watch/unwatch pairs leave nothing behind. */
static void t_many_queues(void) {
    current = "many-queues";
    enum { NQ = 300 };
    int fd;
    mq_ns *ns = ns_new(NQ, &fd);
    mq_uring *r = mq_ur_new();
    for (uint32_t q = 0; q < NQ; q++) CHECK(mq_ur_watch(r, ns, q, seq_of(ns, q), 1000 + q) >= 0);
    CHECK_EQ(mq_ur_armed(r), NQ);
    uint32_t order[NQ];
    shuffled(order, NQ);
    int wrong = 0;
    for (uint32_t i = 0; i < NQ; i++) {
        uint32_t q = order[i];
        CHECK_EQ(add1(ns, q), 1);
        uint64_t got[16];
        int n = collect_for(r, 2000, got);
        if (n != 1 || got[0] != 1000 + q) wrong++;
    }
    CHECK_EQ(wrong, 0);
    CHECK_EQ(mq_ur_armed(r), 0);
    for (uint32_t q = 0; q < NQ; q++) CHECK_EQ(take1(ns, q), 1);

    current = "cancel-storm";
    uint64_t got[16];
    long bad = 0;
    for (int i = 0; i < 100000; i++) {
        uint32_t q = (uint32_t)(rnd() % NQ);
        int slot = mq_ur_watch(r, ns, q, seq_of(ns, q), 5000000 + (uint64_t)i);
        if (slot < 0 || mq_ur_unwatch(r, slot, 5000000 + (uint64_t)i) != 1) bad++;
        if (i % 16 == 0 && mq_ur_collect(r, got, 16) != 0) bad++;   /* removed: never reported */
    }
    CHECK_EQ(bad, 0);
    CHECK_EQ(collect_for(r, 200, got), 0);
    CHECK_EQ(mq_ur_armed(r), 0);
    uint32_t counted = 0;
    for (uint32_t q = 0; q < NQ; q++) counted += waiters(ns, q);
    CHECK_EQ(counted, 0);
    CHECK_EQ(mq_ur_failed(r), 0);
    mq_ur_free(r);
    mq_free(ns);
    close(fd);
}

/* More completions at once than the CQ holds (UR_CQ_ENTRIES = 4096): the
 * kernel keeps the rest (IORING_FEAT_NODROP) and mq_ur_collect flushes them;
 * every cookie is reported once, by a destroy's wake-up and by forget_ns. */
static void t_overflow(void) {
    current = "cq-overflow";
    enum { N = 6000 };
    int fd;
    mq_ns *ns = ns_new(1, &fd);
    mq_uring *r = mq_ur_new();
    static uint8_t seen[N];
    for (int round = 0; round < 2; round++) {
        memset(seen, 0, sizeof seen);
        uint32_t s = seq_of(ns, 0);
        int bad = 0;
        for (int i = 0; i < N; i++) bad += mq_ur_watch(r, ns, 0, s, (uint64_t)i) < 0;
        CHECK_EQ(bad, 0);
        CHECK_EQ(waiters(ns, 0), N);
        if (round == 0) CHECK_EQ(mq_ur_forget_ns(r, ns), N);
        else CHECK_EQ(mq_mark_lost(fd), 0);   /* FUTEX_WAKE of every waiter */
        int got = 0, dup = 0;
        uint64_t buf[256];
        int64_t until = mono_ns() + 5000000000LL;
        while (got < N && mono_ns() < until) {
            readable(mq_ur_fd(r), 10);
            int k = mq_ur_collect(r, buf, 256);
            for (int i = 0; i < k; i++) {
                dup += buf[i] >= N || seen[buf[i]];
                if (buf[i] < N) seen[buf[i]] = 1;
            }
            got += k > 0 ? k : 0;
        }
        CHECK_EQ(got, N);
        CHECK_EQ(dup, 0);
        CHECK_EQ(mq_ur_armed(r), 0);
        CHECK_EQ(mq_ur_failed(r), 0);
        if (round == 0) CHECK_EQ(waiters(ns, 0), 0);
    }
    mq_ur_free(r);
    mq_free(ns);
    close(fd);
}

/* The asyncio protocol (aio_common.h) through a ring; with -DUR_SLICE_NS=60 s
 * the periodic check cannot hide a lost wake-up. */
static int ur_arm(void *ctx, mq_ns *ns, uint32_t seq, uint64_t cookie) {
    return mq_ur_watch(ctx, ns, 0, seq, cookie);
}

static void ur_disarm(void *ctx, int slot, uint64_t cookie) { mq_ur_unwatch(ctx, slot, cookie); }

static int ur_await(void *ctx, uint64_t cookie, int ms) {
    uint64_t buf[16];
    for (;;) {
        if (!readable(mq_ur_fd(ctx), ms)) return 0;
        int k = mq_ur_collect(ctx, buf, 16);
        for (int i = 0; i < k; i++)
            if (buf[i] == cookie) return 1;
    }
}

static void t_stress(long n) {
    current = "stress";
    int fd;
    mq_ns *ns = ns_new(1, &fd);
    mq_uring *r = mq_ur_new();
    struct waitway w = {ur_arm, ur_disarm, ur_await, r};
    stress_protocol(fd, ns, &w, n);
    CHECK_EQ(mq_ur_armed(r), 0);
    CHECK_EQ(waiters(ns, 0), 0);
    mq_ur_free(r);
    mq_free(ns);
    close(fd);
}

/* fork: the child cannot use the parent's ring (MQ_ECLOSED) and abandons it
 * without disturbing the parent's armed wait; it makes its own ring.  A
 * SIGKILLed process with an armed watch leaves a count that the next add
 * heals, as a killed sync waiter does. */
static void t_fork(void) {
    current = "fork";
    int fd;
    mq_ns *ns = ns_new(2, &fd);
    mq_uring *r = mq_ur_new();
    uint64_t got[16];
    CHECK(mq_ur_watch(r, ns, 0, seq_of(ns, 0), 77) >= 0);
    pid_t pid = fork();
    if (pid == 0) {
        int bad = 0;
        bad |= mq_ur_watch(r, ns, 1, 0, 1) != MQ_ECLOSED;
        bad |= mq_ur_collect(r, got, 16) != MQ_ECLOSED;
        bad |= mq_ur_forget_ns(r, ns) != MQ_ECLOSED;
        mq_ur_free(r);   /* abandons: the parent's wait stays */
        mq_ns *mine = ns_other(fd);
        mq_uring *cr = mq_ur_new();
        bad |= cr == NULL;
        uint32_t s = 0;
        if (cr && mq_seq(mine, 1, &s) == 0 && mq_ur_watch(cr, mine, 1, s, 3) >= 0) {
            int64_t until = mono_ns() + 5000000000LL;
            int n = 0;
            while (n == 0 && mono_ns() < until) {
                readable(mq_ur_fd(cr), 10);
                n = mq_ur_collect(cr, got, 16);
            }
            bad |= n != 1 || got[0] != 3;
        } else {
            bad = 1;
        }
        _exit(bad ? 3 : 0);
    }
    CHECK(pid > 0);
    struct timespec z = {0, 100000000};
    nanosleep(&z, NULL);
    CHECK_EQ(add1(ns, 1), 1);                  /* for the child */
    int st = 0;
    CHECK_EQ(waitpid(pid, &st, 0), pid);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK_EQ(mq_ur_armed(r), 1);
    CHECK_EQ(collect_for(r, 100, got), 0);     /* the child's exit fired nothing here */
    CHECK_EQ(add1(ns, 0), 1);
    CHECK_EQ(collect_for(r, 2000, got), 1);
    CHECK_EQ(got[0], 77);
    CHECK_EQ(waiters(ns, 0), 0);
    CHECK_EQ(take1(ns, 0), 1);

    current = "killed";
    pid = fork();
    if (pid == 0) {
        mq_ur_abandon(r);
        mq_ns *mine = ns_other(fd);
        mq_uring *cr = mq_ur_new();
        uint32_t s = 0;
        if (!cr || mq_seq(mine, 0, &s) != 0 || mq_ur_watch(cr, mine, 0, s, 1) < 0) _exit(3);
        for (;;) pause();
    }
    int64_t until = mono_ns() + 5000000000LL;
    while (waiters(ns, 0) == 0 && mono_ns() < until) nanosleep(&(struct timespec){0, 1000000}, NULL);
    CHECK_EQ(waiters(ns, 0), 1);
    kill(pid, SIGKILL);
    CHECK_EQ(waitpid(pid, &st, 0), pid);
    CHECK_EQ(waiters(ns, 0), 1);               /* stale, as a killed sync fetch's */
    /* the kernel tears the dead process's ring down in the background: until
     * then its wait may absorb an add's wake-up; the first add that wakes
     * nobody resets the count */
    int adds = 0;
    until = mono_ns() + 5000000000LL;
    while (waiters(ns, 0) != 0 && mono_ns() < until) {
        CHECK_EQ(add1(ns, 0), 1);
        CHECK_EQ(take1(ns, 0), 1);
        adds++;
        nanosleep(&(struct timespec){0, 10000000}, NULL);
    }
    CHECK_EQ(waiters(ns, 0), 0);
    printf("killed watcher: count reset by add #%d\n", adds);
    mq_ur_free(r);
    mq_free(ns);
    close(fd);
}

int main(int argc, char **argv) {
    int stress_only;
    long n = test_args(argc, argv, &stress_only);
    int ok = mq_ur_probe();
    printf("io_uring: %s\n", ok ? "yes" : "no");
    if (!ok) {
        printf("refused: %s\n", strerror(mq_last_errno()));
        return test_report();
    }
    if (!stress_only) {
        t_basic();
        t_lost();
        t_many_queues();
        t_overflow();
        t_fork();
    }
    t_stress(n);
    return test_report();
}
