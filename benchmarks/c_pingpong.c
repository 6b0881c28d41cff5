/* c_pingpong.c - the C engine alone across processes: one producer process,
 * one consumer process, one queue, nothing else (no Python).
 *
 *   benchmarks/c_pingpong.sh [options]        # builds, then runs it
 *   gcc -std=c11 -O2 -flto -Icsrc -o /tmp/c_pingpong benchmarks/c_pingpong.c \
 *       csrc/mq.c csrc/lock.c csrc/live.c csrc/adapters.c -lpthread
 *
 * Options:
 *   -m single|batch|line   single: the producer loops mq_add, the consumer
 *                     mq_fetch; batch: mq_add_many / mq_fetch_many of -b items;
 *                     line: no queue, one cache line passed back and forth
 *                     (-n round trips): the unit of every cross-core cost
 *   -n ITEMS          items moved per run (default 2,000,000)
 *   -b BATCH          batch size (default 256)
 *   -c P,C            CPUs of the producer and the consumer (default 0,1;
 *                     0,0 puts both on one core)
 *   -r RUNS           runs; every run is printed, then the median (default 5)
 *   -k K -v V         key and value bytes (default 16 and 64)
 *   -s BYTES          queue capacity (default 1 MiB)
 *   -l LIMIT          size limit (0: unbounded, a full ring refuses adds)
 *   -f                before each run, fill the ring to within one batch of
 *                     full (the nearly-full case of issue 10)
 *
 * Each run: a fresh segment (a memfd: nothing in /dev/shm) created by the
 * parent; both children attach through their own open of it (their own
 * liveness slot), pin themselves with sched_setaffinity, wait for a common
 * start, and the run lasts until the consumer has taken every item.  The
 * consumer checks that every item arrives once and in order.  Reported:
 * items per second over the run; the CPU time per item of the busier process
 * (CLOCK_PROCESS_CPUTIME_ID: time it was descheduled by other load does not
 * count, so it varies less on a shared machine; both sides spin rather than
 * sleep while the other is busy, so it is close to the wall time per item
 * when nothing else runs); how often the producer found the ring full, and
 * the consumer's longest gap between two successful fetches.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mq.h"

struct opts {
    int batch_mode, fill;
    long items, batch, runs;
    int cpu_p, cpu_c;
    size_t klen, vlen;
    uint64_t cap;
    int64_t limit;
};

struct shared {                     /* one page, MAP_SHARED between the three processes */
    _Atomic int ready;              /* children attached and pinned */
    _Atomic int go;
    _Atomic int64_t t_start, t_end;
    _Atomic long fulls;             /* producer calls refused with MQ_EFULL */
    _Atomic int64_t max_gap;        /* consumer: longest ns between two takes */
    _Atomic int bad;                /* consumer: an item out of order, or an error */
    _Atomic int64_t cpu[2];         /* CPU ns used by the producer, the consumer */
};

/* CPU time of this process in ns (not counting time it was not running). */
static int64_t cpu_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) { perror("sched_setaffinity"); _exit(2); }
}

/* Attaches to the parent's segment through a new open file description. */
static mq_ns *attach(pid_t parent, int memfd) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)parent, memfd);
    int fd = open(path, O_RDWR);
    if (fd < 0) { perror("open segment"); _exit(2); }
    mq_ns *ns = NULL;
    int rc = mq_attach(fd, &ns);
    close(fd);
    if (rc) { fprintf(stderr, "mq_attach: %d\n", rc); _exit(2); }
    return ns;
}

/* A producer that finds the ring full waits a few microseconds without
 * touching the queue (retrying at once would take the lock from the consumer
 * it waits for). */
static void full_pause(void) {
    for (int k = 0; k < 256; k++) __builtin_ia32_pause();
}

static void start(struct shared *sh) {
    atomic_fetch_add(&sh->ready, 1);
    while (!atomic_load(&sh->go)) { }
}

/* Item i: the key (klen bytes) and value (vlen >= 8 bytes, starting with i). */
static void make_item(const struct opts *o, uint64_t i, char *kv) {
    memset(kv, 'k', o->klen);
    memcpy(kv + o->klen, &i, sizeof i);
    memset(kv + o->klen + 8, 'v', o->vlen - 8);
}

static void producer(const struct opts *o, struct shared *sh, mq_ns *ns) {
    size_t isz = o->klen + o->vlen;
    char *data = malloc(isz * (size_t)o->batch);
    uint32_t *lens = malloc(3 * sizeof *lens * (size_t)o->batch);
    if (!data || !lens) _exit(2);
    for (long j = 0; j < o->batch; j++) {
        lens[3 * j] = (uint32_t)o->klen;
        lens[3 * j + 1] = (uint32_t)o->vlen;
        lens[3 * j + 2] = 0;
    }
    long fulls = 0;
    start(sh);
    for (uint64_t i = 0; i < (uint64_t)o->items;) {
        if (!o->batch_mode) {
            make_item(o, i, data);
            int rc = mq_add(ns, 0, data, o->klen, data + o->klen, o->vlen, 0);
            if (rc == 1) { i++; continue; }
            if (rc == MQ_EFULL) { fulls++; full_pause(); continue; }
            if (rc == MQ_EAGAIN || rc == MQ_EINTR) continue;
            fprintf(stderr, "mq_add: %d\n", rc);
            _exit(1);
        }
        long n = o->batch;
        if ((uint64_t)n > (uint64_t)o->items - i) n = (long)((uint64_t)o->items - i);
        for (long j = 0; j < n; j++) make_item(o, i + (uint64_t)j, data + (size_t)j * isz);
        for (;;) {
            int64_t rc = mq_add_many(ns, 0, data, isz * (size_t)n, lens, (size_t)n);
            if (rc == n) break;
            if (rc == MQ_EFULL) { fulls++; full_pause(); continue; }
            if (rc == MQ_EAGAIN || rc == MQ_EINTR) continue;
            fprintf(stderr, "mq_add_many: %ld\n", (long)rc);
            _exit(1);
        }
        i += (uint64_t)n;
    }
    atomic_store(&sh->fulls, fulls);
    free(lens);
    free(data);
}

static void consumer(const struct opts *o, struct shared *sh, mq_ns *ns, uint64_t skip) {
    size_t bufsize = (o->klen + o->vlen) * (size_t)o->batch + 64;
    char *buf = malloc(bufsize);
    uint32_t *meta = malloc(3 * sizeof *meta * (size_t)o->batch);
    if (!buf || !meta) _exit(2);
    uint64_t expect = 0, got = 0, skipped = 0;
    int64_t last = 0, gap = 0;
    start(sh);
    last = now_ns();
    atomic_store(&sh->t_start, last);
    while (got < (uint64_t)o->items) {
        int64_t n = o->batch_mode
            ? mq_fetch_many(ns, 0, (uint32_t)o->batch, -1, buf, bufsize, meta)
            : mq_fetch(ns, 0, -1, buf, bufsize, meta);
        if (n == MQ_EAGAIN || n == MQ_EINTR || n == 0) continue;
        if (n < 0) { fprintf(stderr, "fetch: %ld\n", (long)n); atomic_store(&sh->bad, 1); break; }
        int64_t t = now_ns();
        if (t - last > gap) gap = t - last;
        last = t;
        const char *p = buf;
        for (int64_t j = 0; j < n; j++) {
            uint64_t id;
            memcpy(&id, p + meta[3 * j], sizeof id);
            p += meta[3 * j] + meta[3 * j + 1];
            if (skipped < skip) { skipped++; continue; }   /* the fill items */
            if (id != expect) atomic_store(&sh->bad, 1);
            expect++;
            got++;
        }
    }
    atomic_store(&sh->t_end, now_ns());
    atomic_store(&sh->max_gap, gap);
    free(meta);
    free(buf);
}

/* Fills the ring to within one batch of its capacity with items the
 * consumer skips.  Returns how many. */
static uint64_t fill(const struct opts *o, mq_ns *ns) {
    char kv[4096];
    if (o->klen + o->vlen > sizeof kv) return 0;
    uint64_t n = 0, per = (24 + o->klen + o->vlen + 7) / 8 * 8;
    while ((n + 1 + (uint64_t)o->batch) * per <= o->cap) {
        make_item(o, ~(uint64_t)0, kv);
        if (mq_add(ns, 0, kv, o->klen, kv + o->klen, o->vlen, 0) != 1) break;
        n++;
    }
    return n;
}

/* -m line: the cost of moving one cache line between the two CPUs and back,
 * the unit every cross-core cost of the queue is made of.  Two processes
 * take turns incrementing one shared counter (each waits for the other's
 * value).  Returns round trips per second, or -1. */
static double line_pingpong(const struct opts *o) {
    struct shared *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return -1;
    _Atomic long *word = (_Atomic long *)((char *)sh + 2048);
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        if (kids[k] < 0) return -1;
        if (kids[k] == 0) {
            pin(k == 0 ? o->cpu_p : o->cpu_c);
            start(sh);
            if (k == 0) atomic_store(&sh->t_start, now_ns());
            for (long i = k; i < 2 * o->items; i += 2) {
                while (atomic_load_explicit(word, memory_order_acquire) != i) { }
                atomic_store_explicit(word, i + 1, memory_order_release);
            }
            if (k == 1) atomic_store(&sh->t_end, now_ns());
            _exit(0);
        }
    }
    while (atomic_load(&sh->ready) < 2) { }
    atomic_store(&sh->go, 1);
    for (int k = 0; k < 2; k++) waitpid(kids[k], NULL, 0);
    double secs = (double)(atomic_load(&sh->t_end) - atomic_load(&sh->t_start)) * 1e-9;
    munmap(sh, 4096);
    return secs > 0 ? (double)o->items / secs : -1;
}

/* One run.  Returns items per second, or -1. */
static double run(const struct opts *o, long *fulls, double *gap_ms, double *cpu_item) {
    struct shared *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return -1;
    struct mq_qparam p = {o->cap, o->limit, 0};
    uint64_t size;
    if (mq_segment_size(1, &p, 0, &size)) return -1;
    int memfd = memfd_create("mq-pingpong", 0);
    if (memfd < 0 || ftruncate(memfd, (off_t)size) != 0) return -1;
    mq_ns *ns = NULL;
    if (mq_create(memfd, 1, &p, NULL, 0, &ns)) return -1;
    uint64_t skip = o->fill ? fill(o, ns) : 0;
    pid_t parent = getpid(), kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork();
        if (kids[k] < 0) return -1;
        if (kids[k] == 0) {
            pin(k == 0 ? o->cpu_p : o->cpu_c);
            mq_ns *cns = attach(parent, memfd);
            int64_t c0 = cpu_ns();
            if (k == 0) producer(o, sh, cns);
            else consumer(o, sh, cns, skip);
            atomic_store(&sh->cpu[k], cpu_ns() - c0);
            mq_free(cns);
            _exit(0);
        }
    }
    while (atomic_load(&sh->ready) < 2) { }
    atomic_store(&sh->go, 1);
    int ok = 1;
    for (int k = 0; k < 2; k++) {
        int st;
        if (waitpid(kids[k], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) ok = 0;
    }
    struct mq_stats s;
    if (mq_stats(ns, 0, &s) || s.count != 0 || s.added != s.fetched) ok = 0;
    mq_free(ns);
    close(memfd);
    double secs = (double)(atomic_load(&sh->t_end) - atomic_load(&sh->t_start)) * 1e-9;
    *fulls = atomic_load(&sh->fulls);
    *gap_ms = (double)atomic_load(&sh->max_gap) * 1e-6;
    int64_t c0 = atomic_load(&sh->cpu[0]), c1 = atomic_load(&sh->cpu[1]);
    *cpu_item = (double)(c0 > c1 ? c0 : c1) / (double)o->items;
    if (atomic_load(&sh->bad)) ok = 0;
    munmap(sh, 4096);
    return ok && secs > 0 ? (double)o->items / secs : -1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    struct opts o = {0, 0, 2000000, 256, 5, 0, 1, 16, 64, 1 << 20, 0};
    int c;
    while ((c = getopt(argc, argv, "m:n:b:c:r:k:v:s:l:f")) != -1) {
        switch (c) {
        case 'm': o.batch_mode = strcmp(optarg, "batch") == 0 ? 1 : strcmp(optarg, "line") == 0 ? 2 : 0; break;
        case 'n': o.items = atol(optarg); break;
        case 'b': o.batch = atol(optarg); break;
        case 'c': if (sscanf(optarg, "%d,%d", &o.cpu_p, &o.cpu_c) != 2) return 2; break;
        case 'r': o.runs = atol(optarg); break;
        case 'k': o.klen = (size_t)atol(optarg); break;
        case 'v': o.vlen = (size_t)atol(optarg); break;
        case 's': o.cap = (uint64_t)atoll(optarg); break;
        case 'l': o.limit = atoll(optarg); break;
        case 'f': o.fill = 1; break;
        default: return 2;
        }
    }
    if (o.vlen < 8 || o.batch < 1 || o.items < 1 || o.runs < 1 || o.runs > 100) return 2;
    if (!o.batch_mode) o.batch = 1;
    double r[100], cpu[100];
    if (o.batch_mode == 2) {
        if (o.cpu_p == o.cpu_c) { fprintf(stderr, "-m line needs two CPUs\n"); return 2; }
        for (long i = 0; i < o.runs; i++) {
            r[i] = line_pingpong(&o);
            if (r[i] < 0) return 1;
            printf("run %ld: %.1f ns per round trip of a cache line\n", i, 1e9 / r[i]);
        }
        qsort(r, (size_t)o.runs, sizeof r[0], cmp_double);
        printf("line cpus=%d,%d: median %.1f ns per round trip (one way: %.1f ns)\n", o.cpu_p,
               o.cpu_c, 1e9 / r[o.runs / 2], 0.5e9 / r[o.runs / 2]);
        return 0;
    }
    for (long i = 0; i < o.runs; i++) {
        long fulls;
        double gap;
        r[i] = run(&o, &fulls, &gap, &cpu[i]);
        if (r[i] < 0) { fprintf(stderr, "run %ld failed\n", i); return 1; }
        printf("run %ld: %.3f M items/s, %.0f CPU ns per item on the busier side  (ring full %ld "
               "times, longest consumer gap %.2f ms)\n", i, r[i] * 1e-6, cpu[i], fulls, gap);
        fflush(stdout);
    }
    qsort(r, (size_t)o.runs, sizeof r[0], cmp_double);
    qsort(cpu, (size_t)o.runs, sizeof cpu[0], cmp_double);
    printf("%s cpus=%d,%d items=%ld batch=%ld k=%zu v=%zu cap=%llu limit=%lld%s: "
           "median %.3f M items/s (min %.3f, max %.3f); median %.0f CPU ns per item on the "
           "busier side\n",
           o.batch_mode ? "batch" : "single", o.cpu_p, o.cpu_c, o.items, o.batch, o.klen, o.vlen,
           (unsigned long long)o.cap, (long long)o.limit, o.fill ? " fill" : "",
           r[o.runs / 2] * 1e-6, r[0] * 1e-6, r[o.runs - 1] * 1e-6, cpu[o.runs / 2]);
    return 0;
}
