/* c_pingpong.c - the C engine alone across processes: one producer process,
 * one consumer process, one queue, nothing else (no Python).
 *
 *   benchmarks/c_pingpong.sh [options]        # builds, then runs it
 *   gcc -std=c11 -O2 -flto -Icsrc -o /tmp/c_pingpong benchmarks/c_pingpong.c \
 *       csrc/mq.c csrc/lock.c csrc/live.c csrc/adapters.c -lpthread
 *
 * Options:
 *   -m MODE[,MODE...] single: the producer loops mq_add, the consumer
 *                     mq_fetch; batch: mq_add_many / mq_fetch_many of -b items;
 *                     line: no queue, one cache line passed back and forth
 *                     (-n round trips): the unit of every cross-core cost.
 *                     Floors for single items (no engine: the least each
 *                     design touches, same item sizes, same checks):
 *                     spsc: a lock-free single-producer/single-consumer ring
 *                     (producer-owned tail line, consumer-owned head line,
 *                     each side caching the other's index, as ck_ring, kfifo
 *                     and the Disruptor do); lock: one lock word (CAS) on its
 *                     line, one state line (head, tail), the records;
 *                     lockpack: the state in the lock's line; lock2: mqueue's
 *                     shape at its least, the lock line holding the index of
 *                     the current state copy, two copies on their own lines,
 *                     each operation writing the other copy and committing by
 *                     one store of the index; lock2pack: both copies in the
 *                     lock's line.  Several modes: runs interleaved (run 1 of
 *                     each, then run 2, ...), then each mode's median.
 *   -n ITEMS          items moved per run (default 2,000,000)
 *   -b BATCH          batch size (default 256)
 *   -c P,C            CPUs of the producer and the consumer (default 0,1;
 *                     0,0 puts both on one core)
 *   -r RUNS           runs; every run is printed, then the median (default 5)
 *   -k K -v V         key and value bytes (default 16 and 64)
 *   -s BYTES          queue capacity (default 1 MiB)
 *   -l LIMIT          size limit (0: unbounded, a full ring refuses adds)
 *   -1                one process (on the producer's CPU) adds one item and
 *                     takes it back, -n times, for each single-item mode:
 *                     CPU ns per pair with no line crossing cores
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
 * the consumer's longest gap between two looks at the clock, which it takes
 * every GAP_EVERY items (a clock read per item would cost ~20 ns per item;
 * every consumer, the floors' too, does the same bookkeeping).
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

enum { M_SINGLE, M_BATCH, M_LINE, M_SPSC, M_LOCK, M_LOCKPACK, M_LOCK2, M_LOCK2PACK, M_N };
static const char *const MODE_NAMES[M_N] = {"single", "batch", "line", "spsc", "lock",
                                            "lockpack", "lock2", "lock2pack"};

struct opts {
    int batch_mode, fill, one;
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
    _Atomic int64_t max_gap;        /* consumer: longest ns between two clock reads (gap_tick) */
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

/* Forks child k (0: the producer, 1: the consumer), which pins itself to its
 * CPU.  Returns the pid in the parent, 0 in the child, -1 when fork failed. */
static pid_t fork_pinned(const struct opts *o, int k) {
    pid_t pid = fork();
    if (pid == 0) pin(k == 0 ? o->cpu_p : o->cpu_c);
    return pid;
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

/* The consumer's longest gap: a clock read every GAP_EVERY items taken. */
#define GAP_EVERY 64
struct gap { int64_t last, max; uint64_t next; };

/* Starts g at the run's start time t0; returns nothing. */
static void gap_start(struct gap *g, int64_t t0) { *g = (struct gap){t0, 0, GAP_EVERY}; }

/* After `got` items in all: reads the clock when GAP_EVERY more were taken
 * since the last read and keeps the longest gap; returns nothing. */
static void gap_tick(struct gap *g, uint64_t got) {
    if (got < g->next) return;
    int64_t t = now_ns();
    if (t - g->last > g->max) g->max = t - g->last;
    g->last = t;
    g->next = got + GAP_EVERY;
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
    struct gap gap;
    start(sh);
    gap_start(&gap, now_ns());
    atomic_store(&sh->t_start, gap.last);
    while (got < (uint64_t)o->items) {
        int64_t n = o->batch_mode
            ? mq_fetch_many(ns, 0, (uint32_t)o->batch, -1, buf, bufsize, meta)
            : mq_fetch(ns, 0, -1, buf, bufsize, meta);
        if (n == MQ_EAGAIN || n == MQ_EINTR || n == 0) continue;
        if (n < 0) { fprintf(stderr, "fetch: %ld\n", (long)n); atomic_store(&sh->bad, 1); break; }
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
        gap_tick(&gap, got);
    }
    atomic_store(&sh->t_end, now_ns());
    atomic_store(&sh->max_gap, gap.max);
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
        kids[k] = fork_pinned(o, k);
        if (kids[k] < 0) return -1;
        if (kids[k] == 0) {
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

/* Starts both children at once and waits for them.  Returns 1 when both
 * exited with status 0, else 0. */
static int go_and_reap(struct shared *sh, const pid_t kids[2]) {
    while (atomic_load(&sh->ready) < 2) { }
    atomic_store(&sh->go, 1);
    int ok = 1;
    for (int k = 0; k < 2; k++) {
        int st;
        if (waitpid(kids[k], &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) ok = 0;
    }
    return ok;
}

/* A run's figures from sh: sets *fulls, *gap_ms (the consumer's longest gap)
 * and *cpu_item (CPU ns per item of the busier child).  Returns items per
 * second, or -1 when !ok, when an item was wrong or when no time passed. */
static double figures(const struct opts *o, struct shared *sh, int ok, long *fulls,
                      double *gap_ms, double *cpu_item) {
    double secs = (double)(atomic_load(&sh->t_end) - atomic_load(&sh->t_start)) * 1e-9;
    *fulls = atomic_load(&sh->fulls);
    *gap_ms = (double)atomic_load(&sh->max_gap) * 1e-6;
    int64_t c0 = atomic_load(&sh->cpu[0]), c1 = atomic_load(&sh->cpu[1]);
    *cpu_item = (double)(c0 > c1 ? c0 : c1) / (double)o->items;
    if (atomic_load(&sh->bad)) ok = 0;
    return ok && secs > 0 ? (double)o->items / secs : -1;
}

/* ---- floors: minimal rings, no engine (-m spsc|lock|lockpack|lock2|lock2pack) ----
 *
 * The records: slots of round8(8 + klen + vlen) bytes (a header with the two
 * lengths, the key, the value), a power of two of them fitting in -s bytes.
 * Indexes count items since the start; slot = index & mask. */

#define LINE 64
#define FLOOR_DATA 4096         /* the records start here; the lines before it: */
#define L_LOCK 0                /* the lock word (+ the packed states) */
#define L_TAIL 1                /* spsc: the producer's tail; lock: the state */
#define L_HEAD 2                /* spsc: the consumer's head; lock2: copy 0 */
#define L_COPY1 3               /* lock2: copy 1 */

struct fstate { _Atomic uint64_t head, tail; };

struct floor {                  /* one process's view of a floor ring */
    char *base;
    uint64_t mask, stride;
    _Atomic uint32_t *lock;     /* locked modes */
    _Atomic uint32_t *cur;      /* lock2*: which copy is current (NULL: one state) */
    struct fstate *st[2];       /* the state (copy 0), and copy 1 for lock2* */
    _Atomic uint64_t *tail, *head;  /* spsc */
};

/* The view of mode m on the mapping at base (cap data bytes).  Returns it. */
static struct floor floor_view(int m, char *base, const struct opts *o) {
    struct floor f = {base, 0, (8 + o->klen + o->vlen + 7) / 8 * 8, NULL, NULL, {NULL, NULL},
                      NULL, NULL};
    uint64_t slots = 1;
    while (2 * slots * f.stride <= o->cap) slots *= 2;
    f.mask = slots - 1;
    f.lock = (_Atomic uint32_t *)(base + L_LOCK * LINE);
    f.tail = (_Atomic uint64_t *)(base + L_TAIL * LINE);
    f.head = (_Atomic uint64_t *)(base + L_HEAD * LINE);
    if (m == M_LOCK) f.st[0] = (struct fstate *)(base + L_TAIL * LINE);
    if (m == M_LOCKPACK) f.st[0] = (struct fstate *)(base + L_LOCK * LINE + 16);
    if (m == M_LOCK2) {
        f.st[0] = (struct fstate *)(base + L_HEAD * LINE);
        f.st[1] = (struct fstate *)(base + L_COPY1 * LINE);
    }
    if (m == M_LOCK2PACK) {
        f.st[0] = (struct fstate *)(base + L_LOCK * LINE + 16);
        f.st[1] = (struct fstate *)(base + L_LOCK * LINE + 32);
    }
    if (m == M_LOCK2 || m == M_LOCK2PACK) f.cur = (_Atomic uint32_t *)(base + L_LOCK * LINE + 4);
    return f;
}

/* The slot of item index i.  Returns its address. */
static char *slot(const struct floor *f, uint64_t i) {
    return f->base + FLOOR_DATA + (i & f->mask) * f->stride;
}

/* Writes item i (header, key, value) into its slot; returns nothing. */
static void put_record(const struct opts *o, const struct floor *f, uint64_t i, const char *kv) {
    char *r = slot(f, i);
    uint32_t hdr[2] = {(uint32_t)o->klen, (uint32_t)o->vlen};
    memcpy(r, hdr, 8);
    memcpy(r + 8, kv, o->klen + o->vlen);
}

/* Copies record i out into buf (key, value) as mq_fetch does; returns the
 * item's id (the value's first 8 bytes). */
static uint64_t get_record(const struct floor *f, uint64_t i, char *buf) {
    const char *r = slot(f, i);
    uint32_t hdr[2];
    memcpy(hdr, r, 8);
    memcpy(buf, r + 8, (size_t)hdr[0] + hdr[1]);
    uint64_t id;
    memcpy(&id, buf + hdr[0], sizeof id);
    return id;
}

/* Takes the floor's lock, spinning until it is free; returns nothing (it
 * cannot fail: the floors have no crash handling). */
static void floor_lock(const struct floor *f) {
    for (;;) {
        uint32_t z = 0;
        /* acquire: the previous holder's writes (state, records) are seen */
        if (atomic_compare_exchange_weak_explicit(f->lock, &z, 1, memory_order_acquire,
                                                  memory_order_relaxed))
            return;
        /* relaxed: only a hint of when to try again; the CAS orders */
        while (atomic_load_explicit(f->lock, memory_order_relaxed)) __builtin_ia32_pause();
    }
}

/* Releases the floor's lock; returns nothing. */
static void floor_unlock(const struct floor *f) {
    /* release: the state and records written under the lock precede it */
    atomic_store_explicit(f->lock, 0, memory_order_release);
}

/* The current state copy (under the lock, or for a peek). */
static struct fstate *cur_state(const struct floor *f) {
    /* acquire: a peek sees the copy's contents the committing store published */
    return f->cur ? f->st[atomic_load_explicit(f->cur, memory_order_acquire)] : f->st[0];
}

/* Under the lock: sets the state to (head, tail), writing the other copy and
 * committing with one store of the index for lock2*; returns nothing. */
static void commit_state(const struct floor *f, uint64_t head, uint64_t tail) {
    if (!f->cur) {
        /* relaxed: under the lock; the unlock's release orders them for the
         * next holder, and a peek only needs some recent value */
        atomic_store_explicit(&f->st[0]->tail, tail, memory_order_relaxed);
        atomic_store_explicit(&f->st[0]->head, head, memory_order_relaxed);
        return;
    }
    uint32_t c = atomic_load_explicit(f->cur, memory_order_relaxed) ^ 1u;
    /* relaxed: the copy is not current yet; the index store below publishes it */
    atomic_store_explicit(&f->st[c]->head, head, memory_order_relaxed);
    atomic_store_explicit(&f->st[c]->tail, tail, memory_order_relaxed);
    /* release: the copy's contents precede the store that makes it current */
    atomic_store_explicit(f->cur, c, memory_order_release);
}

/* Adds item i (kv) to a floor; head_seen is the producer's copy of the
 * consumer's head (spsc).  Returns 1, or 0 when the ring is full (nothing
 * changed). */
static int floor_put(const struct opts *o, const struct floor *f, uint64_t i, const char *kv,
                     uint64_t *head_seen) {
    if (o->batch_mode == M_SPSC) {
        if (i - *head_seen > f->mask) {
            /* acquire: the consumer's copy-out of the slots it freed is done */
            *head_seen = atomic_load_explicit(f->head, memory_order_acquire);
            if (i - *head_seen > f->mask) return 0;
        }
        put_record(o, f, i, kv);
        /* release: the record's bytes precede the tail that covers them */
        atomic_store_explicit(f->tail, i + 1, memory_order_release);
        return 1;
    }
    floor_lock(f);
    struct fstate *s = cur_state(f);
    uint64_t h = atomic_load_explicit(&s->head, memory_order_relaxed);  /* under the lock */
    if (i - h > f->mask) { floor_unlock(f); return 0; }
    put_record(o, f, i, kv);
    commit_state(f, h, i + 1);
    floor_unlock(f);
    return 1;
}

/* Takes item i from a floor into buf, setting *bad when its id is not i;
 * tail_seen is the consumer's copy of the producer's tail (spsc).  Returns 1,
 * or 0 when the ring is empty (nothing changed). */
static int floor_get(const struct opts *o, const struct floor *f, uint64_t i, char *buf,
                     uint64_t *tail_seen, int *bad) {
    if (o->batch_mode == M_SPSC) {
        if (i == *tail_seen) {
            /* acquire: the producer's record bytes precede this tail */
            *tail_seen = atomic_load_explicit(f->tail, memory_order_acquire);
            if (i == *tail_seen) return 0;
        }
        *bad |= get_record(f, i, buf) != i;
        /* release: the copy-out is done before the producer reuses the slot */
        atomic_store_explicit(f->head, i + 1, memory_order_release);
        return 1;
    }
    /* a peek without the lock: an empty queue leaves the lock line alone
     * (relaxed: a hint; the lock's acquire orders what is then read) */
    if (atomic_load_explicit(&cur_state(f)->tail, memory_order_relaxed) == i) return 0;
    floor_lock(f);
    struct fstate *s = cur_state(f);
    uint64_t t = atomic_load_explicit(&s->tail, memory_order_relaxed);  /* under the lock */
    if (t == i) { floor_unlock(f); return 0; }
    *bad |= get_record(f, i, buf) != i;
    commit_state(f, i + 1, t);
    floor_unlock(f);
    return 1;
}

/* The producer of a floor run: -n items, pausing while the ring is full;
 * stores the count of full rings in sh.  Returns nothing. */
static void floor_producer(const struct opts *o, struct shared *sh, const struct floor *f) {
    char kv[4096];
    long fulls = 0;
    uint64_t head_seen = 0;
    start(sh);
    for (uint64_t i = 0; i < (uint64_t)o->items;) {
        make_item(o, i, kv);
        if (floor_put(o, f, i, kv, &head_seen)) i++;
        else { fulls++; full_pause(); }
    }
    atomic_store(&sh->fulls, fulls);
}

/* The consumer of a floor run: takes -n items in order, timing the run in
 * sh; sets sh->bad when an item is not the one expected.  Returns nothing. */
static void floor_consumer(const struct opts *o, struct shared *sh, const struct floor *f) {
    char buf[4096];
    uint64_t tail_seen = 0;
    int bad = 0;
    struct gap gap;
    start(sh);
    gap_start(&gap, now_ns());
    atomic_store(&sh->t_start, gap.last);
    for (uint64_t i = 0; i < (uint64_t)o->items;) {
        if (floor_get(o, f, i, buf, &tail_seen, &bad)) gap_tick(&gap, ++i);
        else __builtin_ia32_pause();
    }
    atomic_store(&sh->t_end, now_ns());
    atomic_store(&sh->max_gap, gap.max);
    if (bad) atomic_store(&sh->bad, 1);
}

/* -1: one process adds an item and takes it back, -n times, on CPU -c P: what
 * an item costs with no line crossing cores (instructions, L1 hits).  Returns
 * CPU ns per add + fetch pair, or -1 (nothing left open). */
static double one_process(const struct opts *o) {
    pin(o->cpu_p);
    char kv[4096], buf[4096];
    uint32_t meta[3];
    int bad = 0;
    uint64_t hs = 0, ts = 0;
    struct floor f;
    char *base = NULL;
    mq_ns *ns = NULL;
    int memfd = -1;
    size_t size = FLOOR_DATA + (size_t)o->cap;
    if (o->batch_mode == M_SINGLE) {
        struct mq_qparam p = {o->cap, o->limit, 0};
        uint64_t segsize;
        if (mq_segment_size(1, &p, 0, &segsize)) return -1;
        memfd = memfd_create("mq-pingpong", 0);
        if (memfd < 0) return -1;
        if (ftruncate(memfd, (off_t)segsize) != 0 || mq_create(memfd, 1, &p, NULL, 0, &ns)) {
            close(memfd);
            return -1;
        }
    } else {
        base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (base == MAP_FAILED) return -1;
        f = floor_view(o->batch_mode, base, o);
    }
    int64_t c0 = cpu_ns();
    for (uint64_t i = 0; i < (uint64_t)o->items && !bad; i++) {
        make_item(o, i, kv);
        if (o->batch_mode == M_SINGLE) {
            uint64_t id;
            if (mq_add(ns, 0, kv, o->klen, kv + o->klen, o->vlen, 0) != 1) bad = 1;
            if (mq_fetch(ns, 0, 0, buf, sizeof buf, meta) != 1) bad = 1;
            memcpy(&id, buf + o->klen, sizeof id);
            bad |= id != i;
        } else {
            if (!floor_put(o, &f, i, kv, &hs) || !floor_get(o, &f, i, buf, &ts, &bad)) bad = 1;
        }
    }
    int64_t c1 = cpu_ns();
    if (ns) mq_free(ns);
    if (memfd >= 0) close(memfd);
    if (base) munmap(base, size);
    return bad ? -1 : (double)(c1 - c0) / (double)o->items;
}

/* One run of a floor mode: as run() below, on a fresh anonymous shared
 * mapping instead of a segment.  Returns items per second, or -1 (as run(),
 * a failed fork leaves the mappings and a first child waiting: main exits). */
static double floor_run(const struct opts *o, long *fulls, double *gap_ms, double *cpu_item) {
    struct shared *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return -1;
    size_t size = FLOOR_DATA + (size_t)o->cap;
    char *base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) { munmap(sh, 4096); return -1; }
    pid_t kids[2];
    for (int k = 0; k < 2; k++) {
        kids[k] = fork_pinned(o, k);
        if (kids[k] < 0) return -1;
        if (kids[k] == 0) {
            struct floor f = floor_view(o->batch_mode, base, o);
            int64_t c0 = cpu_ns();
            if (k == 0) floor_producer(o, sh, &f);
            else floor_consumer(o, sh, &f);
            atomic_store(&sh->cpu[k], cpu_ns() - c0);
            _exit(0);
        }
    }
    int ok = go_and_reap(sh, kids);
    double rate = figures(o, sh, ok, fulls, gap_ms, cpu_item);
    munmap(base, size);
    munmap(sh, 4096);
    return rate;
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
        kids[k] = fork_pinned(o, k);
        if (kids[k] < 0) return -1;
        if (kids[k] == 0) {
            mq_ns *cns = attach(parent, memfd);
            int64_t c0 = cpu_ns();
            if (k == 0) producer(o, sh, cns);
            else consumer(o, sh, cns, skip);
            atomic_store(&sh->cpu[k], cpu_ns() - c0);
            mq_free(cns);
            _exit(0);
        }
    }
    int ok = go_and_reap(sh, kids);
    struct mq_stats s;
    if (mq_stats(ns, 0, &s) || s.count != 0 || s.added != s.fetched) ok = 0;
    mq_free(ns);
    close(memfd);
    double rate = figures(o, sh, ok, fulls, gap_ms, cpu_item);
    munmap(sh, 4096);
    return rate;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The modes of a -m list, at most M_N.  Returns how many, 0 on an unknown name. */
static int parse_modes(char *arg, int *modes) {
    int n = 0;
    for (char *tok = strtok(arg, ","); tok; tok = strtok(NULL, ",")) {
        int m = 0;
        while (m < M_N && strcmp(tok, MODE_NAMES[m]) != 0) m++;
        if (m == M_N || n == M_N) return 0;
        modes[n++] = m;
    }
    return n;
}

/* -m line, -r times.  Returns 0, or 1 when a run failed. */
static int line_runs(const struct opts *o) {
    double r[100];
    if (o->cpu_p == o->cpu_c) { fprintf(stderr, "-m line needs two CPUs\n"); return 2; }
    for (long i = 0; i < o->runs; i++) {
        r[i] = line_pingpong(o);
        if (r[i] < 0) return 1;
        printf("run %ld: %.1f ns per round trip of a cache line\n", i, 1e9 / r[i]);
    }
    qsort(r, (size_t)o->runs, sizeof r[0], cmp_double);
    printf("line cpus=%d,%d: median %.1f ns per round trip (one way: %.1f ns)\n", o->cpu_p,
           o->cpu_c, 1e9 / r[o->runs / 2], 0.5e9 / r[o->runs / 2]);
    return 0;
}

int main(int argc, char **argv) {
    struct opts o = {0, 0, 0, 2000000, 256, 5, 0, 1, 16, 64, 1 << 20, 0};
    int modes[M_N] = {M_SINGLE}, nmodes = 1;
    int c;
    while ((c = getopt(argc, argv, "m:n:b:c:r:k:v:s:l:f1")) != -1) {
        switch (c) {
        case 'm': nmodes = parse_modes(optarg, modes); if (!nmodes) return 2; break;
        case 'n': o.items = atol(optarg); break;
        case 'b': o.batch = atol(optarg); break;
        case 'c': if (sscanf(optarg, "%d,%d", &o.cpu_p, &o.cpu_c) != 2) return 2; break;
        case 'r': o.runs = atol(optarg); break;
        case 'k': o.klen = (size_t)atol(optarg); break;
        case 'v': o.vlen = (size_t)atol(optarg); break;
        case 's': o.cap = (uint64_t)atoll(optarg); break;
        case 'l': o.limit = atoll(optarg); break;
        case 'f': o.fill = 1; break;
        case '1': o.one = 1; break;
        default: return 2;
        }
    }
    if (o.vlen < 8 || o.batch < 1 || o.items < 1 || o.runs < 1 || o.runs > 100) return 2;
    if (o.klen + o.vlen > 4000 || o.cap < 2 * FLOOR_DATA) return 2;
    long batch = o.batch;
    double r[M_N][100], cpu[M_N][100];
    for (int j = 0; j < nmodes; j++) {
        if (modes[j] == M_LINE && nmodes > 1) { fprintf(stderr, "-m line runs alone\n"); return 2; }
    }
    if (modes[0] == M_LINE) return line_runs(&o);
    for (long i = 0; i < o.runs; i++) {
        for (int j = 0; j < nmodes; j++) {
            long fulls = 0;
            double gap = 0;
            o.batch_mode = modes[j];
            o.batch = o.batch_mode == M_BATCH ? batch : 1;
            if (o.one && (o.batch_mode == M_BATCH || o.batch_mode == M_LINE)) return 2;
            if (o.one) {
                cpu[j][i] = one_process(&o);
                r[j][i] = cpu[j][i] > 0 ? 1e9 / cpu[j][i] : -1;
            } else {
                r[j][i] = o.batch_mode >= M_SPSC ? floor_run(&o, &fulls, &gap, &cpu[j][i])
                                                 : run(&o, &fulls, &gap, &cpu[j][i]);
            }
            if (r[j][i] < 0) {
                fprintf(stderr, "run %ld (%s) failed\n", i, MODE_NAMES[modes[j]]);
                return 1;
            }
            if (o.one)
                printf("run %ld %s: %.0f CPU ns per add + fetch pair, one process\n", i,
                       MODE_NAMES[modes[j]], cpu[j][i]);
            else
                printf("run %ld %s: %.3f M items/s, %.0f CPU ns per item on the busier side  "
                       "(ring full %ld times, longest consumer gap %.2f ms)\n", i,
                       MODE_NAMES[modes[j]], r[j][i] * 1e-6, cpu[j][i], fulls, gap);
            fflush(stdout);
        }
    }
    for (int j = 0; j < nmodes; j++) {
        o.batch_mode = modes[j];
        o.batch = o.batch_mode == M_BATCH ? batch : 1;
        qsort(r[j], (size_t)o.runs, sizeof r[j][0], cmp_double);
        qsort(cpu[j], (size_t)o.runs, sizeof cpu[j][0], cmp_double);
        if (o.one) {
            printf("%s one process cpu=%d items=%ld k=%zu v=%zu: median %.1f CPU ns per add + "
                   "fetch pair (min %.1f, max %.1f)\n", MODE_NAMES[modes[j]], o.cpu_p, o.items,
                   o.klen, o.vlen, cpu[j][o.runs / 2], cpu[j][0], cpu[j][o.runs - 1]);
            continue;
        }
        printf("%s cpus=%d,%d items=%ld batch=%ld k=%zu v=%zu cap=%llu limit=%lld%s: "
               "median %.3f M items/s (min %.3f, max %.3f); median %.0f CPU ns per item on the "
               "busier side\n",
               MODE_NAMES[modes[j]], o.cpu_p, o.cpu_c, o.items, o.batch, o.klen, o.vlen,
               (unsigned long long)o.cap, (long long)o.limit, o.fill ? " fill" : "",
               r[j][o.runs / 2] * 1e-6, r[j][0] * 1e-6, r[j][o.runs - 1] * 1e-6,
               cpu[j][o.runs / 2]);
    }
    return 0;
}
