/* c_fullring.c - what an add_many costs as the ring fills (issue 10: "the cost
 * of an add must not depend on how full the ring is").
 *
 *   benchmarks/c_pingpong.sh builds the engine the same way; by hand:
 *   gcc -std=c11 -O2 -flto -Icsrc -o /tmp/c_fullring benchmarks/c_fullring.c \
 *       csrc/mq.c csrc/lock.c csrc/live.c csrc/adapters.c -lpthread
 *   /tmp/c_fullring [capacity-bytes]      (default 16 MiB)
 *
 * One process, one unbounded queue of every addmode.  The ring is filled to
 * 10 %, 50 %, 90 % and to within less than one batch of full; at each level a
 * batch of 256 items (16-byte keys, 64-byte values) is offered 200 times:
 * when it fits it is taken and then fetched again (the level stays), when it
 * does not it is refused (MQ_EFULL).  Printed: microseconds per add_many call
 * (median of the 200) at each level, i.e. how long the queue's lock is held
 * by it (a consumer waits that long).  Keys are all distinct.
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

#define BATCH 256
#define KL 16
#define VL 64
#define TRIES 200

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static uint64_t serial;

/* A batch of BATCH items with fresh keys into data/lens. */
static void make_batch(char *data, uint32_t *lens) {
    for (int i = 0; i < BATCH; i++) {
        char *p = data + i * (KL + VL);
        snprintf(p, KL + 1, "%016llu", (unsigned long long)serial++);
        memset(p + KL, 'v', VL);
        lens[3 * i] = KL;
        lens[3 * i + 1] = VL;
        lens[3 * i + 2] = 0;
    }
}

int main(int argc, char **argv) {
    uint64_t cap = argc > 1 ? (uint64_t)atoll(argv[1]) : 16u << 20;
    static char data[BATCH * (KL + VL)], buf[BATCH * (KL + VL) + 64];
    static uint32_t lens[3 * BATCH], meta[3 * BATCH];
    const uint64_t rec = (24 + KL + VL + 7) / 8 * 8;
    printf("capacity %llu bytes, batches of %d items of %llu bytes; us per add_many (median of %d)\n",
           (unsigned long long)cap, BATCH, (unsigned long long)rec, TRIES);
    printf("| addmode | 10 %% full | 50 %% | 90 %% | full (refused) |\n|--:|--:|--:|--:|--:|\n");
    for (uint32_t am = 0; am <= 2; am++) {
        struct mq_qparam p = {cap, 0, am};
        uint64_t size;
        if (mq_segment_size(1, &p, 0, &size)) return 1;
        int fd = memfd_create("mq-fullring-bench", 0);
        if (fd < 0 || ftruncate(fd, (off_t)size)) return 1;
        mq_ns *ns = NULL;
        if (mq_create(fd, 1, &p, NULL, 0, &ns) || !ns) return 1;
        printf("| %u |", am);
        const double levels[] = {0.10, 0.50, 0.90, 1.0};
        uint64_t items = 0;
        for (int l = 0; l < 4; l++) {
            uint64_t want = levels[l] < 1.0 ? (uint64_t)(levels[l] * (double)cap) / rec
                                            : cap / rec - BATCH / 2;   /* a batch does not fit */
            while (items < want) {
                char kv[KL + VL];
                snprintf(kv, KL + 1, "%016llu", (unsigned long long)serial++);
                memset(kv + KL, 'f', VL);
                if (mq_add(ns, 0, kv, KL, kv + KL, VL, 0) != 1) return 1;
                items++;
            }
            int64_t t[TRIES];
            for (int i = 0; i < TRIES; i++) {
                make_batch(data, lens);
                int64_t t0 = now_ns();
                int64_t rc = mq_add_many(ns, 0, data, sizeof data, lens, BATCH);
                t[i] = now_ns() - t0;
                if (rc == BATCH) {      /* taken: give the room back (oldest items) */
                    if (mq_fetch_many(ns, 0, BATCH, 0, buf, sizeof buf, meta) != BATCH) return 1;
                } else if (rc != MQ_EFULL || l < 3) {
                    fprintf(stderr, "add_many: %lld at level %d\n", (long long)rc, l);
                    return 1;
                }
            }
            qsort(t, TRIES, sizeof t[0], cmp_i64);
            printf(" %.1f |", (double)t[TRIES / 2] * 1e-3);
        }
        printf("\n");
        mq_free(ns);
        close(fd);
    }
    return 0;
}
