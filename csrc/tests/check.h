/* check.h - the test harness shared by csrc/tests/unit.c and notify.c.
 *
 * CHECK / CHECK_EQ count a passed or failed check (a failure is printed on
 * stderr with its file, line and the test named by `current`); the program
 * prints "N passed, N failed" at the end.  Also a fixed-seed xorshift
 * generator (rnd) and the monotonic clock (mono_ns).  Included once, by the
 * one .c file of a test program, after <stdio.h>, <stdint.h> and <time.h>.
 */
#ifndef MQ_TESTS_CHECK_H
#define MQ_TESTS_CHECK_H

static int passed, failed;
static const char *current = "";

#define CHECK(cond) do { if (cond) passed++; else { failed++; \
    fprintf(stderr, "FAIL %s:%d [%s]: %s\n", __FILE__, __LINE__, current, #cond); } } while (0)
#define CHECK_EQ(a, b) do { long long a_ = (long long)(a), b_ = (long long)(b); \
    if (a_ == b_) passed++; else { failed++; \
    fprintf(stderr, "FAIL %s:%d [%s]: %s == %s (%lld != %lld)\n", __FILE__, __LINE__, \
            current, #a, #b, a_, b_); } } while (0)

#ifndef MQUEUE_MQ_INTERNAL_H   /* a test that reads the engine's internals has its mono_ns */
/* CLOCK_MONOTONIC in nanoseconds.  Never fails (the clock always exists). */
static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
#endif

/* The next value of a fixed-seed xorshift64 sequence (the same run every
 * time, so a failure reproduces).  Never fails. */
static uint64_t rng_state = 88172645463325252ULL;
static uint64_t rnd(void) {
    rng_state ^= rng_state << 13; rng_state ^= rng_state >> 7; rng_state ^= rng_state << 17;
    return rng_state;
}

#endif /* MQ_TESTS_CHECK_H */
