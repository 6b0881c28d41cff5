/* engine_loop.c - the C engine alone, no Python: ns per add + fetch pair and
 * per item of add_many / fetch_many, one process, uncontended.
 *
 *   gcc -std=c11 -O2 -flto -Icsrc -o /tmp/engine_loop benchmarks/engine_loop.c \
 *       csrc/mq.c csrc/lock.c csrc/live.c csrc/adapters.c
 *   /tmp/engine_loop
 *
 * Shows what the queue itself costs, against which the Python figures of
 * percall.py and profile_calls.py can be read.  The segment is unlinked as soon
 * as it is open, so nothing is left in /dev/shm. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "mq.h"

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(void) {
    struct mq_qparam p = {1 << 20, 0, 0};
    uint64_t size;
    char name[64];
    snprintf(name, sizeof name, "/mqueue-engine-loop-%d", (int)getpid());
    if (mq_segment_size(1, &p, 2, &size)) return 1;
    int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
    if (fd < 0) return 1;
    shm_unlink(name);
    if (ftruncate(fd, (off_t)size)) return 1;
    mq_ns *ns;
    if (mq_create(fd, 1, &p, "{}", 2, &ns)) return 1;
    static char key[16], val[64], data[200 * 80], buf[1 << 20];
    static uint32_t meta[600], lens[600];
    memset(key, 'k', sizeof key);
    memset(val, 'v', sizeof val);
    memset(data, 'x', sizeof data);
    for (int i = 0; i < 200; i++) {
        lens[3 * i] = 16;
        lens[3 * i + 1] = 64;
        lens[3 * i + 2] = 3;
    }
    for (int rep = 0; rep < 5; rep++) {
        int n = 5000, rounds = 100, batches = 40;
        double t0 = now();
        for (int j = 0; j < rounds; j++) {
            for (int i = 0; i < n; i++) mq_add(ns, 0, key, 16, val, 64, 3);
            for (int i = 0; i < n; i++) mq_fetch(ns, 0, 0, buf, sizeof buf, meta);
        }
        double t1 = now();
        for (int j = 0; j < batches; j++) mq_add_many(ns, 0, data, sizeof data, lens, 200);
        double t2 = now();
        for (int j = 0; j < batches; j++) mq_fetch_many(ns, 0, 200, 0, buf, sizeof buf, meta);
        double t3 = now();
        printf("add+fetch %.1f ns   add_many %.1f ns/item   fetch_many %.1f ns/item\n",
               (t1 - t0) / (n * rounds) * 1e9, (t2 - t1) / (batches * 200) * 1e9,
               (t3 - t2) / (batches * 200) * 1e9);
    }
    mq_free(ns);
    close(fd);
    return 0;
}
