/* notify.c - C-level tests of the asyncio notifier (the mq_ws_* block of csrc/mq.c).
 *
 *   gcc -std=c11 -O2 -Wall -Wextra -Werror -Icsrc -o notify csrc/tests/notify.c \
 *       csrc/mq.c csrc/lock.c csrc/live.c csrc/adapters.c -lpthread
 *   ./notify [stress-items]
 *
 * Each part runs with futex_waitv (when the kernel has it) and with the
 * one-queue FUTEX_WAIT fallback.  Segments live in memfds.  The last line
 * printed is "N passed, N failed"; the exit status is non-zero on any failure.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "mq.h"

#include "check.h"

/* A formatted namespace of nq queues in a memfd; *fd_out gets the fd. */
static mq_ns *ns_new(uint32_t nq, int *fd_out) {
    struct mq_qparam *p = calloc(nq, sizeof *p);
    if (!p) exit(2);
    for (uint32_t i = 0; i < nq; i++) p[i].capacity = 4096;
    uint64_t sz;
    if (mq_segment_size(nq, p, 0, &sz) != 0) exit(2);
    int fd = memfd_create("mq-notify", 0);
    if (fd < 0 || ftruncate(fd, (off_t)sz) != 0) { perror("memfd"); exit(2); }
    mq_ns *ns;
    if (mq_create(fd, nq, p, NULL, 0, &ns) != 0) { fprintf(stderr, "mq_create\n"); exit(2); }
    free(p);
    *fd_out = fd;
    return ns;
}

/* A second handle on the same segment (its own liveness slot). */
static mq_ns *ns_other(int fd) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int f = open(path, O_RDWR);
    mq_ns *ns;
    if (f < 0 || mq_attach(f, &ns) != 0) { fprintf(stderr, "attach\n"); exit(2); }
    return ns;   /* f stays open for the handle's life (closed at exit) */
}

static int add1(mq_ns *ns, uint32_t q) { return mq_add(ns, q, "k", 1, "v", 1, 0); }

static int take1(mq_ns *ns, uint32_t q) {
    char buf[64];
    uint32_t meta[3];
    return mq_fetch(ns, q, 0, buf, sizeof buf, meta);
}

/* 1 when efd becomes readable within ms (then drained), else 0. */
static int readable(int efd, int ms) {
    struct pollfd p = {efd, POLLIN, 0};
    int r = poll(&p, 1, ms);
    if (r == 1) {
        uint64_t v;
        if (read(efd, &v, sizeof v) != sizeof v) return 0;
        return 1;
    }
    return 0;
}

struct runner { mq_waitset *ws; pthread_t th; int rc; };

static void *run_thread(void *arg) {
    struct runner *r = arg;
    r->rc = mq_ws_run(r->ws);
    return NULL;
}

static void runner_start(struct runner *r, int use_waitv) {
    r->ws = mq_ws_new(use_waitv);
    if (!r->ws || pthread_create(&r->th, NULL, run_thread, r) != 0) exit(2);
}

static void runner_end(struct runner *r) {
    mq_ws_stop(r->ws);
    pthread_join(r->th, NULL);
    CHECK_EQ(r->rc, 0);
    mq_ws_free(r->ws);
}

static uint32_t seq_of(mq_ns *ns, uint32_t q) {
    uint32_t s = 0;
    CHECK_EQ(mq_seq(ns, q, &s), 0);
    return s;
}

struct detacher { mq_ns *ns; int64_t took; };
static void *detach_thread(void *arg) {
    struct detacher *d = arg;
    int64_t t0 = mono_ns();
    mq_detach(d->ns);
    d->took = mono_ns() - t0;
    return NULL;
}

static void t_basic(int use_waitv) {
    current = use_waitv ? "basic/waitv" : "basic/futex";
    int fd;
    mq_ns *ns = ns_new(3, &fd);
    struct runner r;
    runner_start(&r, use_waitv);
    CHECK_EQ(mq_ws_capacity(r.ws), use_waitv ? MQ_WS_MAX : 1);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    uint64_t got[8];

    /* argument checks, nothing armed */
    uint32_t s = seq_of(ns, 0);
    CHECK_EQ(mq_seq(ns, 3, &s), MQ_ERANGE);
    CHECK_EQ(mq_seq(ns, 0, NULL), MQ_EINVAL);
    s = seq_of(ns, 0);
    CHECK_EQ(mq_ws_watch(NULL, ns, 0, s, efd, 1), MQ_EINVAL);
    CHECK_EQ(mq_ws_watch(r.ws, ns, 0, s, -1, 1), MQ_EINVAL);
    CHECK_EQ(mq_ws_watch(r.ws, ns, 9, s, efd, 1), MQ_ERANGE);
    CHECK_EQ(mq_ws_watch(r.ws, NULL, 0, s, efd, 1), MQ_ERANGE);
    CHECK_EQ(mq_ws_watch(r.ws, ns, 0, s + 1, efd, 1), MQ_EAGAIN);   /* seq moved: look again */
    CHECK_EQ(mq_ws_armed(r.ws), 0);
    CHECK_EQ(mq_ws_collect(r.ws, efd, NULL, 1), MQ_EINVAL);
    CHECK_EQ(mq_ws_unwatch(r.ws, -1, 1), MQ_EINVAL);

    /* an add fires the watch, once */
    int slot = mq_ws_watch(r.ws, ns, 0, s, efd, 7);
    CHECK(slot >= 0);
    CHECK_EQ(mq_ws_armed(r.ws), 1);
    CHECK(!readable(efd, 50));
    CHECK_EQ(add1(ns, 0), 1);
    CHECK(readable(efd, 2000));
    CHECK_EQ(mq_ws_collect(r.ws, efd, got, 8), 1);
    CHECK_EQ(got[0], 7);
    CHECK_EQ(mq_ws_collect(r.ws, efd, got, 8), 0);
    CHECK_EQ(mq_ws_armed(r.ws), 0);
    CHECK_EQ(take1(ns, 0), 1);

    /* removed: an add does not fire it; the wrong cookie removes nothing */
    s = seq_of(ns, 0);
    slot = mq_ws_watch(r.ws, ns, 0, s, efd, 8);
    CHECK(slot >= 0);
    CHECK_EQ(mq_ws_unwatch(r.ws, slot, 9), 0);
    CHECK_EQ(mq_ws_unwatch(r.ws, slot, 8), 1);
    CHECK_EQ(mq_ws_unwatch(r.ws, slot, 8), 0);
    CHECK_EQ(add1(ns, 0), 1);
    CHECK(!readable(efd, 150));
    CHECK_EQ(take1(ns, 0), 1);

    /* another queue's add does not fire it (waitv: two queues at once) */
    if (use_waitv) {
        uint32_t s1 = seq_of(ns, 1), s2 = seq_of(ns, 2);
        CHECK(mq_ws_watch(r.ws, ns, 1, s1, efd, 11) >= 0);
        CHECK(mq_ws_watch(r.ws, ns, 2, s2, efd, 12) >= 0);
        CHECK_EQ(add1(ns, 0), 1);
        CHECK(!readable(efd, 50));
        CHECK_EQ(add1(ns, 2), 1);
        CHECK(readable(efd, 2000));
        CHECK_EQ(mq_ws_collect(r.ws, efd, got, 8), 1);
        CHECK_EQ(got[0], 12);
        CHECK_EQ(mq_ws_armed(r.ws), 1);
        CHECK_EQ(add1(ns, 1), 1);
        CHECK(readable(efd, 2000));
        CHECK_EQ(mq_ws_collect(r.ws, efd, got, 8), 1);
        CHECK_EQ(got[0], 11);
        CHECK_EQ(take1(ns, 0) + take1(ns, 1) + take1(ns, 2), 3);
    } else {
        s = seq_of(ns, 1);
        CHECK(mq_ws_watch(r.ws, ns, 1, s, efd, 13) >= 0);
        CHECK_EQ(mq_ws_watch(r.ws, ns, 2, seq_of(ns, 2), efd, 14), MQ_ESLOTS);   /* full */
        CHECK_EQ(mq_ws_forget_ns(r.ws, ns), 1);
        CHECK(readable(efd, 2000));
        CHECK_EQ(mq_ws_collect(r.ws, efd, got, 8), 1);
        CHECK_EQ(got[0], 13);
    }

    /* forget_ns fires every watch on that namespace */
    CHECK(mq_ws_watch(r.ws, ns, 0, seq_of(ns, 0), efd, 21) >= 0);
    CHECK_EQ(mq_ws_forget_ns(r.ws, ns), 1);
    CHECK(readable(efd, 2000));
    CHECK_EQ(mq_ws_collect(r.ws, efd, got, 8), 1);
    CHECK_EQ(got[0], 21);

    /* detaching a watched namespace: the watch fires, detach returns soon */
    mq_ns *ns2 = ns_other(fd);
    CHECK(mq_ws_watch(r.ws, ns2, 0, seq_of(ns2, 0), efd, 31) >= 0);
    struct detacher d = {ns2, 0};
    pthread_t th;
    if (pthread_create(&th, NULL, detach_thread, &d) != 0) exit(2);
    pthread_join(th, NULL);
    CHECK(d.took < 1000000000LL);
    CHECK(readable(efd, 2000));
    CHECK_EQ(mq_ws_collect(r.ws, efd, got, 8), 1);
    CHECK_EQ(got[0], 31);
    CHECK_EQ(mq_ws_watch(r.ws, ns2, 0, 0, efd, 32), MQ_ECLOSED);
    CHECK_EQ(mq_seq(ns2, 0, &s), MQ_ECLOSED);
    CHECK_EQ(mq_wake_one(ns2, 0), MQ_ECLOSED);
    CHECK_EQ(mq_wake_one(ns, 0), 0);
    mq_free(ns2);

    /* stop: armed watches fire, new ones are refused */
    CHECK(mq_ws_watch(r.ws, ns, 0, seq_of(ns, 0), efd, 41) >= 0);
    mq_ws_stop(r.ws);
    pthread_join(r.th, NULL);
    CHECK_EQ(r.rc, 0);
    CHECK(readable(efd, 100));
    CHECK_EQ(mq_ws_collect(r.ws, efd, got, 8), 1);
    CHECK_EQ(mq_ws_watch(r.ws, ns, 0, seq_of(ns, 0), efd, 42), MQ_ESLOTS);
    mq_ws_free(r.ws);
    close(efd);
    mq_free(ns);
    close(fd);
}

/* 300 queues over three waitsets: each add fires exactly its queue's watch. */
static void t_many_queues(void) {
    current = "many-queues";
    enum { NQ = 300, NWS = (NQ + MQ_WS_MAX - 1) / MQ_WS_MAX };
    int fd;
    mq_ns *ns = ns_new(NQ, &fd);
    struct runner r[NWS];
    for (int i = 0; i < NWS; i++) runner_start(&r[i], 1);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    for (uint32_t q = 0; q < NQ; q++)
        CHECK(mq_ws_watch(r[q / MQ_WS_MAX].ws, ns, q, seq_of(ns, q), efd, 1000 + q) >= 0);
    CHECK_EQ(mq_ws_watch(r[0].ws, ns, 0, seq_of(ns, 0), efd, 1), MQ_ESLOTS);
    uint32_t order[NQ];
    for (uint32_t i = 0; i < NQ; i++) order[i] = i;
    for (uint32_t i = NQ - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(rnd() % (i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    int wrong = 0;
    for (uint32_t i = 0; i < NQ; i++) {
        uint32_t q = order[i];
        CHECK_EQ(add1(ns, q), 1);
        int n = 0;
        uint64_t got[4];
        int64_t until = mono_ns() + 2000000000LL;
        while (n == 0 && mono_ns() < until) {
            readable(efd, 10);
            n = mq_ws_collect(r[q / MQ_WS_MAX].ws, efd, got, 4);
        }
        if (n != 1 || got[0] != 1000 + q) wrong++;
    }
    CHECK_EQ(wrong, 0);
    for (int i = 0; i < NWS; i++) {
        CHECK_EQ(mq_ws_armed(r[i].ws), 0);
        runner_end(&r[i]);
    }
    close(efd);
    mq_free(ns);
    close(fd);
}

/* The asyncio protocol against a producer thread with its own handle: read
 * seq, look, arm with that seq, wait for the eventfd.  A lost wake-up shows as
 * a 3 s wait.  Some waits are abandoned (unwatch) as a cancelled task does. */
struct prod { int fd; long n; };
static volatile int stop_producer;
static void *producer(void *arg) {
    struct prod *p = arg;
    mq_ns *ns = ns_other(p->fd);
    for (long i = 0; i < p->n; i++) {
        while (add1(ns, 0) != 1 && !stop_producer) {   /* full: the consumer catches up */
            struct timespec z = {0, 100000};
            nanosleep(&z, NULL);
        }
        if (rnd() % 4 == 0) {
            struct timespec z = {0, (long)(rnd() % 200000)};
            nanosleep(&z, NULL);
        }
    }
    mq_free(ns);
    return NULL;
}

static void t_stress(int use_waitv, long n) {
    current = use_waitv ? "stress/waitv" : "stress/futex";
    int fd;
    mq_ns *ns = ns_new(1, &fd);
    struct runner r;
    runner_start(&r, use_waitv);
    int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct prod p = {fd, n};
    stop_producer = 0;
    pthread_t th;
    if (pthread_create(&th, NULL, producer, &p) != 0) exit(2);
    long got = 0, lost = 0, waits = 0;
    uint64_t cookie = 0, buf[4];
    while (got < n && lost == 0) {
        uint32_t s = seq_of(ns, 0);
        int rc = take1(ns, 0);
        if (rc == 1) { got++; continue; }
        int slot = mq_ws_watch(r.ws, ns, 0, s, efd, ++cookie);
        if (slot == MQ_EAGAIN) continue;
        if (slot < 0) { CHECK(slot >= 0); break; }
        waits++;
        if (rnd() % 8 == 0) {            /* a cancelled waiter */
            mq_ws_unwatch(r.ws, slot, cookie);
            continue;
        }
        /* wait for this watch's cookie (an abandoned watch may have fired
         * before it was removed: its eventfd write is stale, as in a loop) */
        int mine = 0;
        while (!mine) {
            if (!readable(efd, 3000)) break;
            int k = mq_ws_collect(r.ws, efd, buf, 4);
            for (int i = 0; i < k; i++) mine |= buf[i] == cookie;
        }
        if (!mine) { lost++; break; }
    }
    stop_producer = 1;
    CHECK_EQ(lost, 0);
    CHECK_EQ(got, n);
    CHECK(waits > 0);
    pthread_join(th, NULL);
    runner_end(&r);
    close(efd);
    mq_free(ns);
    close(fd);
}

int main(int argc, char **argv) {
    /* "./notify stress N": the protocol parts only, for a build with a very
     * long -DWS_SLICE_NS, where a lost wake-up cannot hide behind the
     * notifier's 100 ms re-check and fails the 3 s wait */
    int stress_only = argc > 1 && strcmp(argv[1], "stress") == 0;
    if (stress_only) { argc--; argv++; }
    long n = argc > 1 ? atol(argv[1]) : 20000;
    alarm(300);   /* a hang is a failure too */
    int waitv = mq_ws_waitv_supported();
    printf("futex_waitv: %s\n", waitv ? "yes" : "no");
    if (stress_only) {
        if (waitv) {
            t_many_queues();
            t_stress(1, n);
        }
        t_stress(0, n / 4);
        printf("%d passed, %d failed\n", passed, failed);
        return failed ? 1 : 0;
    }
    if (waitv) {
        t_basic(1);
        t_many_queues();
        t_stress(1, n);
    }
    t_basic(0);
    t_stress(0, n / 4);
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
