/* torture.c - SIGKILL / SIGSTOP torture of the real engine.
 *
 *   ./torture SECONDS [kill|stop]
 *
 * One namespace (a memfd; children open /proc/<parent>/fd/N, so each has its
 * own open file description and liveness slot) with two queues: q0 bounded
 * (size 64, 8 KiB), q1 unbounded in count (16 KiB, EFULL when full).  NP
 * producers add items with add or add_many; NC consumers take them with fetch
 * or fetch_many (blocking, short deadline).  Every item carries a unique id
 * (from a shared counter), its producer slot, a sequence number per producer
 * incarnation, a variable-length body and a CRC.
 *
 * The parent kills (SIGKILL) a random child every 0-5 ms and starts a
 * replacement (mode kill), or stops one with SIGSTOP for STOP_MS then
 * continues it (mode stop).  After each, deliveries on both queues must
 * resume within 1 s (else a stall); the longest wait is reported.
 *
 * Checks (in a separate shared region the engine never sees):
 *   corrupt: an item whose CRC, length or id does not match;
 *   dup:     an id delivered more than once (delivered[id] counts);
 *   order:   one consumer seeing a producer incarnation's sequence go back;
 *   balance: added == fetched + evicted + duplicates + count per queue;
 *   accounting: consumers record after fetching, so per queue
 *       recorded <= fetched <= recorded + (consumer kills) * BATCH,
 *       and producers count after adding, so
 *       counted <= added <= counted + (producer kills) * BATCH;
 *       in stop mode (nobody dies) both are equalities;
 *   after the run the parent drains both queues: no dup there either.
 * Exit status 0 when every check passes (kill mode also needs recoveries > 0,
 * stop mode needs recoveries == 0), 1 otherwise, 2 on setup errors.
 * Built with csrc/tests/naive_lock.c instead of csrc/lock.c (and -DMQ_NAIVE_LOCK,
 * which tells this harness how to see that a lock is held) it must report a
 * stall: the negative control.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mq.h"
#include "mq_layout.h"

enum { NP = 4, NC = 3, N = NP + NC, NQ = 2, BATCH = 8 };
#define MAXID   (1u << 27)          /* ids; delivered[] is one byte each (lazily touched) */
#define STOP_MS 100                 /* > LOCK_SLICE_NS (10 ms) and the 100 ms wait slice */

struct item {                       /* the value of every queued item */
    uint32_t crc, len;              /* crc over the rest; len = whole value length */
    uint32_t id, producer;
    uint32_t incarnation, queue;
    uint64_t seq;
    uint8_t body[];                 /* (id * 7 + i) bytes */
};

struct shared {                     /* the harness's own shared region */
    _Atomic uint32_t next_id;
    _Atomic int stop;
    _Atomic uint64_t recorded[NQ];  /* deliveries recorded by consumers */
    _Atomic uint64_t counted[NQ];   /* items producers saw accepted */
    _Atomic uint64_t corrupt, dup, order, errors;
    _Atomic uint64_t progress[NQ];
    _Atomic uint8_t delivered[];    /* MAXID */
};

static struct shared *sh;
static int memfd;
static pid_t parent;

static uint32_t crc32c(const void *p, size_t n) {
    const uint8_t *b = p;
    uint32_t c = ~0u;
    while (n--) { c ^= *b++; for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & -(c & 1)); }
    return ~c;
}

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_ns(long ns) {
    struct timespec t = {ns / 1000000000L, ns % 1000000000L};
    nanosleep(&t, NULL);
}

static mq_ns *child_attach(void) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd/%d", (int)parent, memfd);
    int fd = open(path, O_RDWR);
    if (fd < 0) _exit(3);
    mq_ns *ns = NULL;
    if (mq_attach(fd, &ns) != 0) _exit(3);
    return ns;
}

static size_t make_item(uint8_t *buf, uint32_t producer, uint32_t inc, uint32_t q, uint64_t seq,
                        uint64_t *rs) {
    struct item *it = (struct item *)buf;
    uint32_t id = atomic_fetch_add(&sh->next_id, 1);
    if (id >= MAXID) return 0;
    *rs = *rs * 6364136223846793005ULL + 1442695040888963407ULL;
    uint32_t blen = (uint32_t)((*rs >> 33) % 200);
    it->len = (uint32_t)sizeof *it + blen;
    it->id = id;
    it->producer = producer;
    it->incarnation = inc;
    it->queue = q;
    it->seq = seq;
    for (uint32_t i = 0; i < blen; i++) it->body[i] = (uint8_t)(id * 7 + i);
    it->crc = crc32c((uint8_t *)it + 4, it->len - 4);
    return it->len;
}

static void producer(uint32_t p, uint32_t inc) {
    mq_ns *ns = child_attach();
    uint64_t rs = ((uint64_t)inc << 32) ^ (uint64_t)getpid();
    uint64_t seq[NQ] = {0, 0};
    uint8_t data[BATCH * (8 + sizeof(struct item) + 200)];
    uint32_t lens[3 * BATCH];
    while (!atomic_load(&sh->stop)) {
        rs = rs * 6364136223846793005ULL + 1442695040888963407ULL;
        uint32_t q = (uint32_t)(rs >> 40) % NQ;
        int many = (rs >> 50) % 3 == 0;
        size_t n = many ? 1 + (rs >> 20) % BATCH : 1, off = 0;
        for (size_t i = 0; i < n; i++) {
            memcpy(data + off, &p, 4);              /* key: producer slot + 4 bytes of seq */
            memcpy(data + off + 4, &seq[q], 4);
            size_t vl = make_item(data + off + 8, p, inc, q, seq[q]++, &rs);
            if (!vl) { sleep_ns(1000000); return; }
            lens[3 * i] = 8;
            lens[3 * i + 1] = (uint32_t)vl;
            lens[3 * i + 2] = 0;
            off += 8 + vl;
        }
        for (;;) {
            int64_t rc = many ? mq_add_many(ns, q, (char *)data, off, lens, n)
                              : mq_add(ns, q, (char *)data, 8, (char *)data + 8, lens[1], 0);
            if (rc >= 0) {
                atomic_fetch_add(&sh->counted[q], many ? (uint64_t)rc : 1);
                break;
            }
            if (rc == MQ_EAGAIN || rc == MQ_EINTR) continue;   /* a long lock wait: again */
            if (rc == MQ_EFULL) {                  /* unbounded queue full: wait for consumers */
                if (atomic_load(&sh->stop)) return;
                sleep_ns(200000);
                continue;
            }
            atomic_fetch_add(&sh->errors, 1);
            break;
        }
    }
}

static void check_item(const uint8_t *buf, uint32_t klen, uint32_t vlen, uint32_t q,
                       uint64_t *last_seq, uint32_t *last_inc) {
    const struct item *it = (const struct item *)(buf + klen);
    if (klen != 8 || vlen < sizeof *it || it->len != vlen || it->id >= MAXID ||
        it->producer >= NP || it->queue != q ||
        crc32c((const uint8_t *)it + 4, vlen - 4) != it->crc) {
        atomic_fetch_add(&sh->corrupt, 1);
        return;
    }
    for (uint32_t i = 0; i < vlen - sizeof *it; i++)
        if (it->body[i] != (uint8_t)(it->id * 7 + i)) { atomic_fetch_add(&sh->corrupt, 1); return; }
    if (atomic_fetch_add(&sh->delivered[it->id], 1) != 0) atomic_fetch_add(&sh->dup, 1);
    uint32_t slot = q * NP + it->producer;
    if (last_inc && last_inc[slot] == it->incarnation && last_seq[slot] >= it->seq + 1)
        atomic_fetch_add(&sh->order, 1);
    if (last_inc) { last_inc[slot] = it->incarnation; last_seq[slot] = it->seq + 1; }
}

static void consumer(uint32_t c) {
    mq_ns *ns = child_attach();
    static uint8_t buf[1 << 16];
    uint32_t meta[3 * BATCH];
    uint64_t last_seq[NQ * NP] = {0};
    uint32_t last_inc[NQ * NP] = {0};
    uint64_t rs = (uint64_t)getpid() * 2654435761u + c;
    while (!atomic_load(&sh->stop)) {
        rs = rs * 6364136223846793005ULL + 1442695040888963407ULL;
        uint32_t q = (uint32_t)(rs >> 40) % NQ;
        int64_t dl = mono_ns() + 20000000LL;
        int64_t n = (rs >> 50) % 2 ? mq_fetch_many(ns, q, BATCH, dl, (char *)buf, sizeof buf, meta)
                                   : mq_fetch(ns, q, dl, (char *)buf, sizeof buf, meta);
        if (n == MQ_EAGAIN || n == MQ_EINTR) continue;   /* a long lock wait: again */
        if (n < 0) { atomic_fetch_add(&sh->errors, 1); continue; }
        size_t off = 0;
        for (int64_t i = 0; i < n; i++) {
            check_item(buf + off, meta[3 * i], meta[3 * i + 1], q, last_seq, last_inc);
            off += meta[3 * i] + meta[3 * i + 1];
        }
        if (n > 0) {
            atomic_fetch_add(&sh->recorded[q], (uint64_t)n);
            atomic_fetch_add(&sh->progress[q], (uint64_t)n);
        }
    }
}

static pid_t spawn(int i, uint32_t inc) {
    pid_t p = fork();
    if (p == 0) {
        if (i < NP) producer((uint32_t)i, inc);
        else consumer((uint32_t)(i - NP));
        _exit(0);
    }
    return p;
}

int main(int argc, char **argv) {
    double seconds = argc > 1 ? atof(argv[1]) : 10;
    int stop_mode = argc > 2 && strcmp(argv[2], "stop") == 0;
    parent = getpid();
    sh = mmap(NULL, sizeof *sh + MAXID, PROT_READ | PROT_WRITE,
              MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (sh == MAP_FAILED) { perror("mmap"); return 2; }
    struct mq_qparam qp[NQ] = {{8192, 64, 0}, {16384, 0, 0}};
    uint64_t size;
    if (mq_segment_size(NQ, qp, 0, &size) != 0) return 2;
    memfd = memfd_create("mq-torture", 0);
    if (memfd < 0 || ftruncate(memfd, (off_t)size) != 0) { perror("memfd"); return 2; }
    mq_ns *ns = NULL;
    if (mq_create(memfd, NQ, qp, NULL, 0, &ns) != 0) { fprintf(stderr, "create\n"); return 2; }

    /* the parent reads owner words to aim half of its kills at a lock holder */
    uint8_t *seg = mmap(NULL, size, PROT_READ, MAP_SHARED, memfd, 0);
    if (seg == MAP_FAILED) { perror("mmap seg"); return 2; }
    struct seg_hdr *sgh = (struct seg_hdr *)seg;
    struct q_hdr *qtab = (struct q_hdr *)(seg + sgh->qtable_off);
    long aimed = 0, stopped_holding = 0, killed_holding = 0, frozen = 0, mass = 0;
    pid_t kids[N];
    uint32_t inc = 1;
    long kills[N] = {0}, events = 0, stalls = 0;
    for (int i = 0; i < N; i++) kids[i] = spawn(i, inc++);
    srand((unsigned)getpid());
    int64_t end = mono_ns() + (int64_t)(seconds * 1e9), longest = 0;
    while (mono_ns() < end) {
        sleep_ns((rand() % 5000) * 1000L);                 /* 0-5 ms */
        int i = rand() % N;
        uint64_t aimed_owner = 0;
        int aimed_q = 0;
        if (rand() % 2) {                                  /* aim at the holder of a lock */
            uint64_t o = 0;
            for (int spin = 0; spin < 200000 && !o; spin++) {
                aimed_q = spin % NQ;
                o = atomic_load(&qtab[aimed_q].owner);
            }
            if (o && (o & 0xffff) <= MQ_NSLOTS) {
                pid_t holder = (pid_t)atomic_load(&sgh->slot_pid[(o & 0xffff) - 1]);
                for (int j = 0; j < N; j++)
                    if (kids[j] == holder) { i = j; aimed++; aimed_owner = o; break; }
            }
        }
        uint64_t p0[NQ];
        for (int q = 0; q < NQ; q++) p0[q] = atomic_load(&sh->progress[q]);
        int64_t t0 = mono_ns();
        if (!stop_mode && events % 16 == 15) {
            /* mass kill: wait until some lock is held, then kill every child at
             * once, so the holder dies with it (the negative control's way in:
             * its semaphore shows only *that* the lock is held, not by whom) */
            for (int spin = 0; spin < 2000000; spin++) {
                int v = 1;
                sem_getvalue(&qtab[spin % NQ].sem, &v);
#ifdef MQ_NAIVE_LOCK
                if (v == 0) break;
#else
                if (atomic_load(&qtab[spin % NQ].owner)) break;
#endif
            }
            uint64_t p0m[NQ];
            for (int q = 0; q < NQ; q++) p0m[q] = atomic_load(&sh->progress[q]);
            int64_t tm = mono_ns();
            /* freeze everyone first: a lock held now stays held until the kill */
            for (int j = 0; j < N; j++) kill(kids[j], SIGSTOP);
            for (int j = 0; j < N; j++) waitpid(kids[j], NULL, WUNTRACED);
            for (int q = 0; q < NQ; q++)
#ifdef MQ_NAIVE_LOCK
                { int v = 1; sem_getvalue(&qtab[q].sem, &v); killed_holding += v == 0; }
#else
                killed_holding += atomic_load(&qtab[q].owner) != 0;
#endif
            for (int j = 0; j < N; j++) kill(kids[j], SIGKILL);
            for (int j = 0; j < N; j++) {
                waitpid(kids[j], NULL, 0);
                kills[j]++;
                kids[j] = spawn(j, inc++);
            }
            events++;
            mass++;
            int64_t dlm = mono_ns() + 1000000000LL;
            int okm = 0;
            while (mono_ns() < dlm) {
                if (atomic_load(&sh->progress[0]) > p0m[0] && atomic_load(&sh->progress[1]) > p0m[1]) {
                    okm = 1;
                    break;
                }
                sleep_ns(100000);
            }
            if (mono_ns() - tm > longest) longest = mono_ns() - tm;
            if (!okm && ++stalls >= 2) break;
            continue;
        }
        int holding = 0;
        if (aimed_owner) {              /* freeze it, then see whether it still holds the lock */
            kill(kids[i], SIGSTOP);
            int st;
            waitpid(kids[i], &st, WUNTRACED);
            holding = atomic_load(&qtab[aimed_q].owner) == aimed_owner;
        }
        if (stop_mode) {
            stopped_holding += holding;
            kill(kids[i], SIGSTOP);
            sleep_ns(STOP_MS / 2 * 1000000L);
            uint64_t p1[NQ];
            for (int q = 0; q < NQ; q++) p1[q] = atomic_load(&sh->progress[q]);
            sleep_ns(STOP_MS / 2 * 1000000L);
            for (int q = 0; q < NQ; q++)                   /* a queue frozen while it was stopped */
                if (atomic_load(&sh->progress[q]) == p1[q]) { frozen++; break; }
            kill(kids[i], SIGCONT);
        } else {
            killed_holding += holding;
            kill(kids[i], SIGKILL);
            waitpid(kids[i], NULL, 0);
            kills[i]++;
            kids[i] = spawn(i, inc++);
        }
        events++;
        /* progress: both queues deliver again within 1 s of the event */
        int64_t dl = mono_ns() + 1000000000LL;
        int ok = 0;
        while (mono_ns() < dl) {
            if (atomic_load(&sh->progress[0]) > p0[0] && atomic_load(&sh->progress[1]) > p0[1]) {
                ok = 1;
                break;
            }
            sleep_ns(100000);
        }
        int64_t pause = mono_ns() - t0 - (stop_mode ? STOP_MS * 1000000LL : 0);
        if (pause > longest) longest = pause;
        if (!ok) {
            stalls++;
            if (stalls >= 2) break;                        /* a wedged lock stays wedged */
        }
    }
    atomic_store(&sh->stop, 1);
    /* children finish their current operation and exit; a wedged one is killed */
    long producer_kills = 0, consumer_kills = 0;
    for (int i = 0; i < N; i++) *(i < NP ? &producer_kills : &consumer_kills) += kills[i];
    int64_t give_up = mono_ns() + 3000000000LL;
    int wedged = 0;
    for (int i = 0; i < N; i++) {
        int st;
        while (waitpid(kids[i], &st, WNOHANG) == 0) {
            if (mono_ns() > give_up) { kill(kids[i], SIGKILL); wedged++; }
            sleep_ns(1000000);
        }
    }
    int failed = 0;
    uint64_t recoveries = 0;
    printf("mode=%s seconds=%.1f\n", stop_mode ? "stop" : "kill", seconds);
    if (stalls || wedged) {
        /* the lock may be held for good (NAIVE build): do not touch it */
        printf("kills=%ld producer_kills=%ld consumer_kills=%ld events=%ld stalls=%ld wedged=%d "
               "longest_pause_ms=%.1f corrupt=%llu dup=%llu\n",
               producer_kills + consumer_kills, producer_kills, consumer_kills, events, stalls, wedged,
               longest / 1e6, (unsigned long long)sh->corrupt, (unsigned long long)sh->dup);
        printf("FAIL: stall (no progress within 1 s)\n");
        return 1;
    }
    uint64_t drained_total = 0;
    for (int q = 0; q < NQ; q++) {
        struct mq_stats st;
        if (mq_stats(ns, (uint32_t)q, &st) != 0) { printf("FAIL: stats q%d\n", q); return 1; }
        recoveries += st.recoveries;
        uint64_t recorded = atomic_load(&sh->recorded[q]), counted = atomic_load(&sh->counted[q]);
        printf("q%d: added=%llu fetched=%llu evicted=%llu duplicates=%llu count=%llu "
               "recoveries=%llu recorded=%llu counted=%llu\n", q,
               (unsigned long long)st.added, (unsigned long long)st.fetched,
               (unsigned long long)st.evicted, (unsigned long long)st.duplicates,
               (unsigned long long)st.count, (unsigned long long)st.recoveries,
               (unsigned long long)recorded, (unsigned long long)counted);
        if (st.added != st.fetched + st.evicted + st.duplicates + st.count) {
            printf("FAIL: q%d counters do not balance\n", q); failed = 1;
        }
        if (recorded > st.fetched || st.fetched > recorded + (uint64_t)consumer_kills * BATCH) {
            printf("FAIL: q%d fetched vs recorded\n", q); failed = 1;
        }
        if (counted > st.added || st.added > counted + (uint64_t)producer_kills * BATCH) {
            printf("FAIL: q%d added vs counted\n", q); failed = 1;
        }
        if (stop_mode && (recorded != st.fetched || counted != st.added)) {
            printf("FAIL: q%d lost items in stop mode\n", q); failed = 1;
        }
        /* drain: what is left is whole and never delivered before */
        static uint8_t buf[1 << 16];
        uint32_t meta[3 * BATCH];
        uint64_t drained = 0;
        for (;;) {
            int64_t n = mq_fetch_many(ns, (uint32_t)q, BATCH, 0, (char *)buf, sizeof buf, meta);
            if (n <= 0) { if (n < 0) failed = 1; break; }
            size_t off = 0;
            for (int64_t i = 0; i < n; i++) {
                check_item(buf + off, meta[3 * i], meta[3 * i + 1], (uint32_t)q, NULL, NULL);
                off += meta[3 * i] + meta[3 * i + 1];
            }
            drained += (uint64_t)n;
        }
        if (drained != st.count) { printf("FAIL: q%d drained %llu of %llu\n", q,
                                          (unsigned long long)drained, (unsigned long long)st.count); failed = 1; }
        drained_total += drained;
    }
    /* leftovers of processes killed while waiting (diagnostics only) */
    uint8_t *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    if (m != MAP_FAILED) {
        struct q_hdr *qt = (struct q_hdr *)(m + ((struct seg_hdr *)m)->qtable_off);
        for (int q = 0; q < NQ; q++) {
            int v = -1;
            sem_getvalue(&qt[q].sem, &v);
            printf("q%d: lock_waiters=%u sem_value=%d data_waiters=%u (no process attached)\n", q,
                   atomic_load(&qt[q].lock_waiters), v, atomic_load(&qt[q].data_waiters));
        }
        munmap(m, size);
    }
    printf("kills=%ld recoveries=%llu longest_pause_ms=%.1f stalls=%ld corrupt=%llu dup=%llu "
           "order=%llu errors=%llu events=%ld aimed=%ld killed_holding=%ld stopped_holding=%ld "
           "frozen=%ld mass_kills=%ld drained=%llu\n",
           producer_kills + consumer_kills, (unsigned long long)recoveries, longest / 1e6, stalls,
           (unsigned long long)sh->corrupt, (unsigned long long)sh->dup,
           (unsigned long long)sh->order, (unsigned long long)sh->errors, events, aimed,
           killed_holding, stopped_holding, frozen, mass, (unsigned long long)drained_total);
    if (sh->corrupt || sh->dup || sh->order || sh->errors) failed = 1;
    /* A run that never killed a lock holder proves nothing about recovery
     * (luck on a loaded machine); one that did must have recovered. */
    if (!stop_mode && recoveries == 0 && killed_holding > 0) {
        printf("FAIL: a holder was killed and no recovery happened\n");
        failed = 1;
    }
    /* (recoveries may be fewer than killed_holding: a taker killed inside its
     * own recovery is recovered from once, for both deaths) */
    if (stop_mode && recoveries != 0) { printf("FAIL: a stopped owner was robbed\n"); failed = 1; }
    printf(failed ? "FAIL\n" : "OK\n");
    mq_free(ns);
    return failed;
}
