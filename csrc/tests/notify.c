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
#include "aio_common.h"

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
    shuffled(order, NQ);
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

/* The asyncio protocol (aio_common.h) through a waitset and its eventfd. */
struct ws_way { mq_waitset *ws; int efd; };

static int ws_arm(void *ctx, mq_ns *ns, uint32_t seq, uint64_t cookie) {
    struct ws_way *w = ctx;
    return mq_ws_watch(w->ws, ns, 0, seq, w->efd, cookie);
}

static void ws_disarm(void *ctx, int slot, uint64_t cookie) {
    struct ws_way *w = ctx;
    mq_ws_unwatch(w->ws, slot, cookie);
}

static int ws_await(void *ctx, uint64_t cookie, int ms) {
    struct ws_way *w = ctx;
    uint64_t buf[4];
    for (;;) {
        if (!readable(w->efd, ms)) return 0;
        int k = mq_ws_collect(w->ws, w->efd, buf, 4);
        for (int i = 0; i < k; i++)
            if (buf[i] == cookie) return 1;
    }
}

static void t_stress(int use_waitv, long n) {
    current = use_waitv ? "stress/waitv" : "stress/futex";
    int fd;
    mq_ns *ns = ns_new(1, &fd);
    struct runner r;
    runner_start(&r, use_waitv);
    struct ws_way way = {r.ws, eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)};
    struct waitway w = {ws_arm, ws_disarm, ws_await, &way};
    stress_protocol(fd, ns, &w, n);
    runner_end(&r);
    close(way.efd);
    mq_free(ns);
    close(fd);
}

int main(int argc, char **argv) {
    /* "./notify stress N": the protocol parts only, for a build with a very
     * long -DWS_SLICE_NS, where a lost wake-up cannot hide behind the
     * notifier's 100 ms re-check and fails the 3 s wait */
    int stress_only;
    long n = test_args(argc, argv, &stress_only);
    int waitv = mq_ws_waitv_supported();
    printf("futex_waitv: %s\n", waitv ? "yes" : "no");
    if (stress_only) {
        if (waitv) {
            t_many_queues();
            t_stress(1, n);
        }
        t_stress(0, n / 4);
        return test_report();
    }
    if (waitv) {
        t_basic(1);
        t_many_queues();
        t_stress(1, n);
    }
    t_basic(0);
    t_stress(0, n / 4);
    return test_report();
}
