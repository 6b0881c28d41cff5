/* fullring.c - add_many on a nearly full ring means what the same adds one by
 * one mean (a differential test of the batch paths).
 *
 *   gcc -std=c11 -O2 -Wall -Wextra -Werror -Icsrc -o fullring csrc/tests/fullring.c \
 *       csrc/mq.c csrc/lock.c csrc/live.c csrc/adapters.c
 *   ./fullring [rounds]
 *
 * Two namespaces of the same shape, A and B.  Every batch goes to A with one
 * mq_add_many and to B item by item with mq_add.  A bounded queue (evicting)
 * must end in the same state both ways; an unbounded one must take the whole
 * batch exactly when every single add succeeds, and otherwise refuse it
 * (MQ_EFULL) with nothing changed: B is then put back from a snapshot of its
 * own queue region (segment C) taken before the batch.  A and B never share
 * bytes otherwise, so damage to A's derived data (key index, dead marks) by a
 * refused batch shows later as a different duplicate or a different item.
 * Small rings (they fill at once), few keys (duplicates, replaced records),
 * reservations put back (dead records inside the queue), every addmode.
 * Compared after each step: the return codes and every mq_stats field; after
 * each fetch: the items.  Prints "N passed, N failed".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "mq.h"
#include "mq_layout.h"

#include "check.h"

struct seg {
    int fd;
    uint64_t size;
    uint8_t *map;       /* our own view of the bytes, for the snapshot */
    mq_ns *ns;
};

static void seg_open(struct seg *g, const struct mq_qparam *p) {
    if (mq_segment_size(1, p, 0, &g->size) != 0) exit(2);
    g->fd = memfd_create("mq-fullring", 0);
    if (g->fd < 0 || ftruncate(g->fd, (off_t)g->size) != 0) { perror("memfd"); exit(2); }
    if (mq_create(g->fd, 1, p, NULL, 0, &g->ns) != 0) { fprintf(stderr, "mq_create\n"); exit(2); }
    g->map = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_SHARED, g->fd, 0);
    if (g->map == MAP_FAILED) { perror("mmap"); exit(2); }
}

static void seg_close(struct seg *g) {
    mq_free(g->ns);
    munmap(g->map, g->size);
    close(g->fd);
}

/* Copies the queue region (queue header, index, ring) of `from` into `to`:
 * the same queue state, bytes and all.  Both locks are free. */
static void seg_copy(struct seg *to, const struct seg *from) {
    uint64_t off = ((const struct seg_hdr *)from->map)->qtable_off;
    memcpy(to->map + off, from->map + off, from->size - off);
}

static void same_stats(mq_ns *a, mq_ns *b) {
    struct mq_stats x, y;
    CHECK_EQ(mq_stats(a, 0, &x), 0);
    CHECK_EQ(mq_stats(b, 0, &y), 0);
    CHECK_EQ(x.count, y.count);
    CHECK_EQ(x.added, y.added);
    CHECK_EQ(x.fetched, y.fetched);
    CHECK_EQ(x.evicted, y.evicted);
    CHECK_EQ(x.duplicates, y.duplicates);
    CHECK_EQ(x.high_water, y.high_water);
    CHECK_EQ(x.bytes_used, y.bytes_used);
    CHECK_EQ(x.added, x.fetched + x.evicted + x.duplicates + x.count);
}

/* Takes up to max items from both and compares them.  Returns how many. */
static int64_t fetch_both(mq_ns *a, mq_ns *b, uint32_t max) {
    static char ba[1 << 16], bb[1 << 16];
    static uint32_t ma[3 * 64], mb[3 * 64];
    int64_t na = mq_fetch_many(a, 0, max, 0, ba, sizeof ba, ma);
    int64_t nb = mq_fetch_many(b, 0, max, 0, bb, sizeof bb, mb);
    CHECK_EQ(na, nb);
    if (na > 0 && na == nb) {
        size_t used = 0;
        for (int64_t i = 0; i < na; i++) used += ma[3 * i] + ma[3 * i + 1];
        CHECK(memcmp(ma, mb, (size_t)na * 3 * sizeof ma[0]) == 0);
        CHECK(memcmp(ba, bb, used) == 0);
    }
    return na;
}

/* Reserves up to max items in both and puts them back (dead records then
 * lie inside the queue: the records taken meanwhile). */
/* mq_reserve of up to max items of ns's queue 0, tagged tag.  Returns as it. */
static int64_t reserve(mq_ns *ns, uint32_t max, uint64_t tag) {
    static char buf[1 << 16];
    static uint32_t meta[3 * 64];
    struct mq_fetchbuf fb;
    memset(&fb, 0, sizeof fb);
    fb.ns = ns;
    fb.buf = buf;
    fb.size = sizeof buf;
    fb.meta = meta;
    return mq_reserve(&fb, max, tag, 0);
}

static void reserve_put_back(mq_ns *a, mq_ns *b, uint32_t max, int take_between) {
    mq_ns *both[2] = {a, b};
    for (int i = 0; i < 2; i++) {
        int64_t n = reserve(both[i], max, 7);
        if (n > 0 && take_between) {
            char t[4096];
            uint32_t m[3 * 8];
            if (mq_fetch_many(both[i], 0, 2, 0, t, sizeof t, m) < 0) failed++;
        }
        if (n > 0) CHECK_EQ(mq_settle(both[i], 0, 7, 0), 0);
    }
}

/* Reserves up to max items in both and leaves the reservations pending
 * (batches then meet reserved keys: addmode 1 refuses them).  Returns 1 when
 * both hold one. */
static int reserve_hold(mq_ns *a, mq_ns *b, uint32_t max) {
    int64_t n[2] = {reserve(a, max, 9), reserve(b, max, 9)};
    CHECK_EQ(n[0], n[1]);
    return n[0] > 0 && n[1] > 0;
}

/* Settles the pending reservations of both the same way (a bounded queue
 * may have dropped them meanwhile: then both say MQ_ENORSV). */
static void settle_both(mq_ns *a, mq_ns *b, int commit) {
    int ra = mq_settle(a, 0, 9, commit), rb = mq_settle(b, 0, 9, commit);
    CHECK_EQ(ra, rb);
    CHECK(ra == 0 || ra == MQ_ENORSV);
}

static void run(uint32_t addmode, int64_t limit, uint64_t cap, long rounds) {
    static char data[1 << 16];
    static uint32_t lens[3 * 64];
    struct mq_qparam p = {cap, limit, addmode};
    struct seg A, B, C;
    seg_open(&A, &p);
    seg_open(&B, &p);
    seg_open(&C, &p);
    long refused = 0, taken = 0;
    int held = 0;   /* a reservation is pending in A and B */
    for (long r = 0; r < rounds; r++) {
        uint64_t what = rnd() % 100;
        if (what < 60) {                               /* a batch */
            size_t n = 1 + rnd() % (rnd() % 8 ? 24 : 64), off = 0;   /* some larger than the free half of the ring */
            for (size_t i = 0; i < n; i++) {
                uint32_t kl = 2, vl = (uint32_t)(rnd() % 48);
                snprintf(data + off, 3, "%02u", (unsigned)(rnd() % 40));   /* 40 keys */
                for (uint32_t j = 0; j < vl; j++) data[off + kl + j] = (char)('a' + rnd() % 26);
                lens[3 * i] = kl;
                lens[3 * i + 1] = vl;
                lens[3 * i + 2] = 0;
                off += kl + vl;
            }
            seg_copy(&C, &B);                          /* B's own state before the batch */
            int64_t ra = mq_add_many(A.ns, 0, data, off, lens, n);
            int64_t rb = 0;
            int full = 0;
            const char *q = data;
            for (size_t i = 0; i < n && !full; i++) {
                int rc = mq_add(B.ns, 0, q, lens[3 * i], q + lens[3 * i], lens[3 * i + 1], 0);
                if (rc == MQ_EFULL) full = 1;
                else if (rc < 0) { CHECK_EQ(rc, 0); break; }
                else rb += rc;
                q += lens[3 * i] + lens[3 * i + 1];
            }
            if (full) {
                CHECK(limit == 0);                     /* a bounded queue evicts instead */
                CHECK_EQ(ra, MQ_EFULL);
                seg_copy(&B, &C);                      /* the batch never happened */
                refused++;
            } else {
                CHECK_EQ(ra, rb);
                taken++;
            }
        } else if (what < 90) {
            fetch_both(A.ns, B.ns, (uint32_t)(1 + rnd() % 8));
        } else if (held) {
            settle_both(A.ns, B.ns, (int)(rnd() % 4 == 0));
            held = 0;
        } else if (what < 95) {
            reserve_put_back(A.ns, B.ns, (uint32_t)(1 + rnd() % 6), (int)(rnd() % 2));
        } else {
            held = reserve_hold(A.ns, B.ns, (uint32_t)(1 + rnd() % 6));
        }
        same_stats(A.ns, B.ns);
    }
    if (held) settle_both(A.ns, B.ns, 0);
    while (fetch_both(A.ns, B.ns, 64) > 0) { }
    same_stats(A.ns, B.ns);
    printf("addmode=%u limit=%lld cap=%llu: %ld batches taken, %ld refused\n", addmode,
           (long long)limit, (unsigned long long)cap, taken, refused);
    if (limit == 0) CHECK(refused > rounds / 50);     /* the ring was full often */
    seg_close(&A);
    seg_close(&B);
    seg_close(&C);
}

int main(int argc, char **argv) {
    int64_t t0 = mono_ns();
    long rounds = argc > 1 ? atol(argv[1]) : 20000;
    for (uint32_t am = 0; am <= 2; am++) {
        current = "unbounded";
        run(am, 0, 2048, rounds);
        current = "bounded";
        run(am, 20, 2048, rounds);
        current = "bounded-bytes";
        run(am, 1000, 1024, rounds);
    }
    printf("%.2f s\n", (double)(mono_ns() - t0) * 1e-9);
    printf("%d passed, %d failed\n", passed, failed);
    return failed != 0;
}
