"""cffi builder (API mode) for the C engine: wires csrc/*.c into mqueue._mq_cffi.

The cdef declares functions, opaque types and the process-local structs of
mq.h only; the shared-memory layout stays private to the C code.  Constants
are taken from the compiler (``#define X ...``).  Set MQUEUE_CFLAGS to add
flags (e.g. sanitizers); MQUEUE_TESTING=1 compiles the test kill points in;
MQUEUE_NAIVE_LOCK=1 builds the negative control (csrc/tests/naive_lock.c for
csrc/lock.c) for the crash tests.
"""

import os
import shlex
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent

CDEF = """
/* return codes (values from mq.h; mqueue/_lowlevel.py maps each to an exception) */
#define MQ_EINVAL ...
#define MQ_ENOMEM ...
#define MQ_ESYS ...
#define MQ_EMAGIC ...
#define MQ_EVERSION ...
#define MQ_ECORRUPT ...
#define MQ_ETOOBIG ...
#define MQ_EFULL ...
#define MQ_EBUF ...
#define MQ_EINTR ...
#define MQ_ESLOTS ...
#define MQ_ERANGE ...
#define MQ_ENOTREADY ...
#define MQ_ECLOSED ...
#define MQ_EAGAIN ...
#define MQ_EBUSY ...
#define MQ_ENORSV ...
#define MQ_EAPPLIED ...
#define MQ_ENOSTEP ...
#define MQ_ELOST ...
#define MQ_EHALFMADE ...
#define MQ_KEY_STR ...
#define MQ_VAL_STR ...
#define MQ_MAX_QUEUES ...
#define MQ_REC_HDR ...

typedef struct mq_ns mq_ns;
struct mq_qparam { uint64_t capacity; int64_t size_limit; uint32_t addmode; };
struct mq_stats {
    uint64_t count, added, fetched, evicted, duplicates, high_water, recoveries;
    uint64_t bytes_used, capacity;
    int64_t size_limit;
    uint32_t addmode;
};

int mq_segment_size(uint32_t, const struct mq_qparam *, size_t, uint64_t *);
int mq_create(int, uint32_t, const struct mq_qparam *, const char *, size_t, mq_ns **);
int mq_attach(int, mq_ns **);
int mq_reattach(mq_ns *, int);
void mq_detach(mq_ns *);
void mq_free(mq_ns *);
int mq_last_errno(void);
uint32_t mq_nqueues(const mq_ns *);
int mq_meta(const mq_ns *, const char **, size_t *);
int mq_slot(const mq_ns *);
int mq_add(mq_ns *, uint32_t, const char *, size_t, const char *, size_t, uint32_t);
int64_t mq_add_many(mq_ns *, uint32_t, const char *, size_t, const uint32_t *, size_t);
#define MQ_BATCH_UNIFORM ...
#define MQ_BATCH_NONUL ...
struct mq_fetchbuf {
    mq_ns *ns; uint32_t q; uint32_t info; char *buf; size_t size; uint32_t *meta; uint64_t total;
    int64_t deadline; uint32_t taken; uint32_t reserved2;
};
int64_t mq_fetch_batch(struct mq_fetchbuf *, uint32_t, double);
int64_t mq_add_many_sep(mq_ns *, uint32_t, const char *, size_t, size_t, uint32_t);
int mq_count(mq_ns *, uint32_t, uint64_t *);
int mq_stats(mq_ns *, uint32_t, struct mq_stats *);

/* lifecycle: destroyed namespaces, half-made segments, one slot per process */
int mq_clone(mq_ns *, mq_ns **);
int mq_mark_lost(int);
int mq_creator_lock(int);
/* reserve / settle / load (issue 9) */
struct mq_rsvinfo {
    uint64_t tag; uint64_t count; uint64_t load_tag; uint32_t owner_alive; uint32_t mine;
    uint64_t db;
};
int64_t mq_reserve(struct mq_fetchbuf *, uint32_t, uint64_t, uint64_t);
int mq_settle(mq_ns *, uint32_t, uint64_t, int);
int mq_reservation(mq_ns *, uint32_t, struct mq_rsvinfo *);
int64_t mq_load(mq_ns *, uint32_t, uint64_t, const char *, size_t, const uint32_t *, size_t);
/* Python fast-path entry points (the last block of mq.c / mq.h) */
struct mq_addctx { mq_ns *ns; uint32_t q; uint32_t reserved; };
int mq_add_to(const struct mq_addctx *, const char *, size_t, const char *, size_t, uint32_t);
struct mq_fetch1 { struct mq_fetchbuf fb; double timeout_s; };
#define MQ_ONE_KEYNUL ...
#define MQ_ONE_SHIFT ...
int64_t mq_fetch_one(struct mq_fetch1 *);
"""

# ---- asyncio notifier (mqueue.asyncio): the last block of mq.c / mq.h ----
CDEF += """
#define MQ_WS_MAX ...
typedef struct mq_waitset mq_waitset;
int mq_seq(mq_ns *, uint32_t, uint32_t *);
int mq_wake_one(mq_ns *, uint32_t);
int mq_ws_waitv_supported(void);
mq_waitset *mq_ws_new(int);
int mq_ws_capacity(const mq_waitset *);
int mq_ws_run(mq_waitset *);
void mq_ws_stop(mq_waitset *);
void mq_ws_free(mq_waitset *);
int mq_ws_watch(mq_waitset *, mq_ns *, uint32_t, uint32_t, int, uint64_t);
int mq_ws_unwatch(mq_waitset *, int, uint64_t);
int mq_ws_collect(mq_waitset *, int, uint64_t *, int);
int mq_ws_forget_ns(mq_waitset *, mq_ns *);
int mq_ws_armed(mq_waitset *);
"""

# ---- asyncio waits through io_uring (csrc/uring.c) ----
CDEF += """
typedef struct mq_uring mq_uring;
int mq_ur_probe(void);
mq_uring *mq_ur_new(void);
int mq_ur_fd(const mq_uring *);
int mq_ur_watch(mq_uring *, mq_ns *, uint32_t, uint32_t, uint64_t);
int mq_ur_unwatch(mq_uring *, int, uint64_t);
int mq_ur_collect(mq_uring *, uint64_t *, int);
int mq_ur_forget_ns(mq_uring *, mq_ns *);
int mq_ur_armed(mq_uring *);
int mq_ur_failed(mq_uring *);
void mq_ur_free(mq_uring *);
void mq_ur_abandon(mq_uring *);
"""

# The engine's sources, relative to the project root (setup.py runs from
# there); the naive lock of the tests replaces lock.c in the negative-control
# build (tests/ctools.py builds the C tests from this list too).
ENGINE_SOURCES = ["csrc/mq.c", "csrc/lock.c", "csrc/live.c", "csrc/adapters.c", "csrc/uring.c"]
NAIVE_LOCK_SOURCE = "csrc/tests/naive_lock.c"


def engine_sources(naive: bool = False) -> list[str]:
    """The C files of the engine; with ``naive``, the negative control's lock."""
    if not naive:
        return list(ENGINE_SOURCES)
    return [NAIVE_LOCK_SOURCE if s == "csrc/lock.c" else s for s in ENGINE_SOURCES]


# -flto: the engine's files are compiled as one unit at link time, so the
# lock calls on the hot paths are inlined across files as when they were one.
CFLAGS = ["-std=c11", "-O2", "-flto", "-Wall", "-Wextra", "-Werror", "-Wno-unused-parameter"]
CFLAGS += shlex.split(os.environ.get("MQUEUE_CFLAGS", ""))
if os.environ.get("MQUEUE_TESTING") == "1":
    CFLAGS.append("-DMQ_TESTING")
NAIVE = os.environ.get("MQUEUE_NAIVE_LOCK") == "1"  # negative control for the crash tests only

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "mqueue._mq_cffi",
    '#include "mq.h"',
    sources=engine_sources(NAIVE),
    include_dirs=[str(HERE)],
    extra_compile_args=CFLAGS,
    extra_link_args=["-O2", "-flto", *shlex.split(os.environ.get("MQUEUE_LDFLAGS", ""))],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
