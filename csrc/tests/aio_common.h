/* aio_common.h - what the C tests of the asyncio waits (notify.c: the
 * notifier's waitsets, uring.c: the io_uring waits) share: namespaces in
 * memfds, one-item add and take, a thread that detaches a handle, and the
 * asyncio protocol against a producer thread.  Included once, after check.h
 * (and <pthread.h>, <fcntl.h>, <sys/mman.h>, mq.h). */
#ifndef MQ_TESTS_AIO_COMMON_H
#define MQ_TESTS_AIO_COMMON_H

/* A formatted namespace of nq queues in a memfd; *fd_out gets the fd.
 * Exits (status 2) when it cannot be made. */
static mq_ns *ns_new(uint32_t nq, int *fd_out) {
    struct mq_qparam *p = calloc(nq, sizeof *p);
    if (!p) exit(2);
    for (uint32_t i = 0; i < nq; i++) p[i].capacity = 4096;
    uint64_t sz;
    if (mq_segment_size(nq, p, 0, &sz) != 0) exit(2);
    int fd = memfd_create("mq-aio", 0);
    if (fd < 0 || ftruncate(fd, (off_t)sz) != 0) { perror("memfd"); exit(2); }
    mq_ns *ns;
    if (mq_create(fd, nq, p, NULL, 0, &ns) != 0) { fprintf(stderr, "mq_create\n"); exit(2); }
    free(p);
    *fd_out = fd;
    return ns;
}

/* A second handle on the same segment (its own mapping and liveness slot).
 * Exits (status 2) when it cannot be made. */
static mq_ns *ns_other(int fd) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int f = open(path, O_RDWR);
    mq_ns *ns;
    if (f < 0 || mq_attach(f, &ns) != 0) { fprintf(stderr, "attach\n"); exit(2); }
    close(f);   /* the handle keeps its own duplicate */
    return ns;
}

static int add1(mq_ns *ns, uint32_t q) { return mq_add(ns, q, "k", 1, "v", 1, 0); }

static int take1(mq_ns *ns, uint32_t q) {
    char buf[64];
    uint32_t meta[3];
    return mq_fetch(ns, q, 0, buf, sizeof buf, meta);
}

static uint32_t seq_of(mq_ns *ns, uint32_t q) {
    uint32_t s = 0;
    CHECK_EQ(mq_seq(ns, q, &s), 0);
    return s;
}

/* Fills order[0..n) with 0..n-1 in a random order. */
static void shuffled(uint32_t *order, uint32_t n) {
    for (uint32_t i = 0; i < n; i++) order[i] = i;
    for (uint32_t i = n - 1; i > 0; i--) {
        uint32_t j = (uint32_t)(rnd() % (i + 1)), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
}

/* A thread that detaches ns and says how long that took (ns). */
struct detacher { mq_ns *ns; int64_t took; };
static void *detach_thread(void *arg) {
    struct detacher *d = arg;
    int64_t t0 = mono_ns();
    mq_detach(d->ns);
    d->took = mono_ns() - t0;
    return NULL;
}

/* The producer: n adds on queue 0 through its own handle, with random pauses. */
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

/* One way of waiting on queue 0 of a namespace. */
struct waitway {
    /* arms a watch: its slot, MQ_EAGAIN (seq moved) or an error */
    int (*arm)(void *ctx, mq_ns *ns, uint32_t seq, uint64_t cookie);
    void (*disarm)(void *ctx, int slot, uint64_t cookie);
    /* 1 when `cookie` fired within ms (other cookies collected meanwhile are
     * dropped: an abandoned watch may fire before it is removed), else 0 */
    int (*await_cookie)(void *ctx, uint64_t cookie, int ms);
    void *ctx;
};

/* The asyncio protocol against a producer thread: read seq, look, arm with
 * that seq, wait.  A lost wake-up shows as a 3 s wait.  Some waits are
 * abandoned (disarm) as a cancelled task does.  ns is a handle on the
 * segment in fd (queue 0 empty). */
static void stress_protocol(int fd, mq_ns *ns, const struct waitway *w, long n) {
    struct prod p = {fd, n};
    stop_producer = 0;
    pthread_t th;
    if (pthread_create(&th, NULL, producer, &p) != 0) exit(2);
    long got = 0, lost = 0, waits = 0;
    uint64_t cookie = 0;
    while (got < n && lost == 0) {
        uint32_t s = seq_of(ns, 0);
        if (take1(ns, 0) == 1) { got++; continue; }
        int slot = w->arm(w->ctx, ns, s, ++cookie);
        if (slot == MQ_EAGAIN) continue;
        if (slot < 0) { CHECK(slot >= 0); break; }
        waits++;
        if (rnd() % 8 == 0) {            /* a cancelled waiter */
            w->disarm(w->ctx, slot, cookie);
            continue;
        }
        if (!w->await_cookie(w->ctx, cookie, 3000)) lost++;
    }
    stop_producer = 1;
    CHECK_EQ(lost, 0);
    CHECK_EQ(got, n);
    CHECK(waits > 0);
    pthread_join(th, NULL);
}

/* The command line "[stress] [N]": sets *stress_only, returns N (default
 * 20000); arms a 300 s alarm (a hang is a failure too). */
static long test_args(int argc, char **argv, int *stress_only) {
    *stress_only = argc > 1 && strcmp(argv[1], "stress") == 0;
    if (*stress_only) { argc--; argv++; }
    alarm(300);
    return argc > 1 ? atol(argv[1]) : 20000;
}

/* Prints "N passed, N failed"; returns the exit status (1 on any failure). */
static int test_report(void) {
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}

#endif /* MQ_TESTS_AIO_COMMON_H */
