/* mq.h - public interface of the mqueue C engine.
 *
 * A namespace is one POSIX shared-memory segment holding a header, a table of
 * queues and one byte ring (plus, for addmode 1/2, a key index) per queue.
 * Every operation on a queue is one call here, under that queue's crash-safe
 * lock (see mq.c).  The caller (Python, through cffi) owns the segment's file
 * descriptor; this layer maps it, validates it and never trusts what it reads
 * from it.
 *
 * Conventions: functions return 0 (or a documented positive value) on success
 * and a negative MQ_E* code on failure.  Unless a function says otherwise, a
 * failure changes nothing in the shared segment.
 */
#ifndef MQUEUE_MQ_H
#define MQUEUE_MQ_H

#include <stddef.h>
#include <stdint.h>

/* Error codes (negative return values). */
#define MQ_OK        0
#define MQ_EINVAL   (-1)   /* bad argument (caller error) */
#define MQ_ENOMEM   (-2)   /* process-local allocation failed */
#define MQ_ESYS     (-3)   /* a system call failed; see mq_last_errno() */
#define MQ_EMAGIC   (-4)   /* not an mqueue segment */
#define MQ_EVERSION (-5)   /* an mqueue segment of another layout version */
#define MQ_ECORRUPT (-6)   /* the segment is damaged */
#define MQ_ETOOBIG  (-7)   /* item larger than the queue's capacity */
#define MQ_EFULL    (-8)   /* unbounded queue has no room in bytes */
#define MQ_EBUF     (-9)   /* output buffer too small; needed size reported */
#define MQ_EINTR    (-10)  /* a signal interrupted a wait; nothing was done */
#define MQ_ESLOTS   (-11)  /* every liveness slot is held by a live process */
#define MQ_ERANGE   (-12)  /* no queue with that index */
#define MQ_ENOTREADY (-13) /* segment exists but its creator has not finished */
#define MQ_ECLOSED  (-14)  /* the handle was detached (mq_detach) */
#define MQ_EAGAIN   (-15)  /* a long wait was cut into slices: nothing done, call again */
/* -16..-19: reserved for the persistence branch.  -20..-24: lifecycle. */
#define MQ_ELOST    (-20)  /* the namespace was destroyed (or its file removed) */
#define MQ_EHALFMADE (-21) /* the segment was never finished: its creator died */
#define MQ_EBUSY    (-16)  /* mq_reserve: the queue already has a pending reservation */
#define MQ_ENORSV   (-17)  /* mq_settle: no pending reservation with that tag */
#define MQ_EAPPLIED (-18)  /* mq_load: a load with that tag was already applied */
#define MQ_ENOSTEP  (-19)  /* mq_load: the batch cannot be applied in one step */

/* Item flags: how the Python layer encoded the key and the value. */
#define MQ_KEY_STR   1u
#define MQ_VAL_STR   2u
#define MQ_FLAGS_MASK 3u

#define MQ_MAX_QUEUES 4096
#define MQ_NSLOTS     1024   /* processes attached at once per namespace */
#define MQ_REC_HDR    24     /* bytes of record header */

typedef struct mq_ns mq_ns;

/* Per-queue parameters given at creation. */
struct mq_qparam {
    uint64_t capacity;   /* usable data bytes (the `bytes=` attribute) */
    int64_t  size_limit; /* max items, <= 0 = no count bound */
    uint32_t addmode;    /* 0, 1, 2 */
};

/* A queue's counters, copied out under the lock. */
struct mq_stats {
    uint64_t count;       /* queued items (held items not counted) */
    uint64_t added;       /* items accepted by add (incl. addmode-1 drops) */
    uint64_t fetched;     /* items taken by fetch */
    uint64_t evicted;     /* items dropped as oldest */
    uint64_t duplicates;  /* items dropped for a duplicate key (addmode 1, 2) */
    uint64_t high_water;  /* the largest count ever reached */
    uint64_t recoveries;  /* dead lock owners recovered from */
    uint64_t bytes_used;  /* ring bytes in use (incl. replaced records) */
    uint64_t capacity;    /* usable data bytes */
    int64_t  size_limit;
    uint32_t addmode;
};

/* Bytes a segment for these queues needs.  Returns 0 and sets *out, or
 * MQ_EINVAL for a bad parameter (nothing else happens). */
int mq_segment_size(uint32_t nqueues, const struct mq_qparam *params,
                    size_t meta_len, uint64_t *out);

/* Formats a freshly created, zero-filled segment of exactly the size
 * mq_segment_size() gave, maps it and attaches.  `meta` is an opaque blob
 * (the queue definitions) stored for attachers.  The header's magic is
 * written last, so attachers never see a half-made segment as ready.
 * Releases the creator lock (mq_creator_lock) once the segment is ready.
 * Returns 0 and *out, or a negative code with *out untouched and nothing
 * mapped (the segment may be half-formatted: the caller removes it). */
int mq_create(int fd, uint32_t nqueues, const struct mq_qparam *params,
              const char *meta, size_t meta_len, mq_ns **out);

/* Maps and validates an existing segment and claims a liveness slot.  The
 * handle keeps its own duplicate of fd (the caller may close fd at once).
 * Returns 0 and *out; MQ_ENOTREADY while a live creator is still formatting
 * (it holds the creator lock, see mq_creator_lock); MQ_EHALFMADE when the
 * segment is not formatted and nobody holds the creator lock (its creator
 * died); MQ_ELOST for a segment mq_mark_lost marked; MQ_EMAGIC/MQ_EVERSION/
 * MQ_ECORRUPT for a foreign or damaged segment; MQ_ESLOTS/MQ_ESYS.  On
 * failure nothing stays mapped, locked or open. */
int mq_attach(int fd, mq_ns **out);

/* After fork: takes `newfd` (a fresh open of the same segment, so a new open
 * file description) and claims a new liveness slot for this process.  Every
 * handle sharing the mapping (mq_clone) then uses it: calling this for each
 * of them is harmless (the later calls only check and return 0).  newfd is
 * duplicated, never kept: the caller closes it.  newfd < 0 means "the name
 * is gone".  Returns 0; on failure (MQ_ELOST: the name is gone or names
 * another segment; MQ_ESLOTS; MQ_ESYS) the handle is left broken: every
 * later call through it returns that code, until mq_detach. */
int mq_reattach(mq_ns *ns, int newfd);

/* Another handle on ns's mapping and liveness slot (one per process and
 * segment, however many handles): the mapping is released when the last
 * handle sharing it is detached.  Returns 0 and *out; MQ_ECLOSED when ns is
 * detached or broken; MQ_ENOMEM.  Nothing changes on failure. */
int mq_clone(mq_ns *ns, mq_ns **out);

/* Destroy's mark: maps the segment behind fd and, if it is a valid mqueue
 * segment, marks it lost (attached handles then get MQ_ELOST on their next
 * call) and wakes every process blocked in a fetch on it.  Returns 0 when
 * marked (or already marked); a negative code (nothing changed) otherwise. */
int mq_mark_lost(int fd);

/* The creator lock: an OFD write lock on byte MQ_CREATOR_BYTE of the file,
 * taken by create() right after its O_EXCL open and released by mq_create
 * once the segment is ready.  While it is held, attachers wait; a segment
 * that is not ready with the lock free was left by a creator that died.
 * Returns 0 (held through fd's open file description), MQ_ENOTREADY when
 * another open file description holds it (nothing changed), MQ_ESYS. */
int mq_creator_lock(int fd);
#define MQ_CREATOR_BYTE MQ_NSLOTS

/* Detaches this handle, after waiting for calls other threads have in
 * flight through it (a blocked fetch returns MQ_ECLOSED within one wait
 * slice); the last handle sharing the mapping (mq_clone) releases the slot,
 * unmaps the segment and closes the handle's descriptor.  The handle's small struct stays allocated so that later calls
 * through a stale pointer get MQ_ECLOSED.  Idempotent; never fails. */
void mq_detach(mq_ns *ns);

/* mq_detach, then frees the handle: for a caller that knows no pointer to
 * it remains (e.g. a garbage-collected binding object).  Never fails. */
void mq_free(mq_ns *ns);

/* errno of the last MQ_ESYS seen by this process (thread-local). */
int mq_last_errno(void);
/* Number of queues; the stored metadata blob (valid while attached). */
uint32_t mq_nqueues(const mq_ns *ns);
int mq_meta(const mq_ns *ns, const char **data, size_t *len);
/* This process's liveness slot (for tests and diagnostics). */
int mq_slot(const mq_ns *ns);

/* Waits (for a lock held by a stopped process, or in fetch for an item) are
 * cut into slices of about 100 ms: the call then returns MQ_EAGAIN having done
 * nothing, so that a binding can run its signal handlers and call again (a
 * fetch with fb->deadline).  MQ_EINTR likewise when a signal cut a wait.
 *
 * Appends one item.  Returns 1 stored, 0 dropped as a duplicate (addmode 1;
 * still success); MQ_ETOOBIG, MQ_EFULL, MQ_EINVAL, MQ_ERANGE, MQ_ECORRUPT,
 * MQ_EINTR, MQ_EAGAIN with nothing changed. */
int mq_add(mq_ns *ns, uint32_t q, const char *key, size_t klen,
           const char *val, size_t vlen, uint32_t flags);

/* Appends n items in order.  `data` holds key0 value0 key1 value1 ...
 * back to back; `lens` holds 3 words per item: klen, vlen, flags.  Every item
 * is checked before anything changes.  Returns the number stored (items
 * dropped by addmode 1 are not counted) or a negative code with nothing
 * changed.  The batch is published in one step when it fits the ring's free
 * space; a larger batch on a bounded queue is published in several steps. */
int64_t mq_add_many(mq_ns *ns, uint32_t q, const char *data, size_t data_len,
                    const uint32_t *lens, size_t n);

/* Takes the oldest item, waiting until `deadline_ns` (CLOCK_MONOTONIC,
 * nanoseconds; 0 = do not wait, -1 = wait forever).  On success copies key
 * then value into buf and sets meta[0..2] = klen, vlen, flags; returns 1.
 * Returns 0 when the queue is still empty at the deadline; MQ_EBUF with
 * meta[0] = bytes needed (the item stays queued); MQ_EINTR when a signal
 * arrived (nothing taken); other negative codes with nothing changed. */
int mq_fetch(mq_ns *ns, uint32_t q, int64_t deadline_ns,
             char *buf, size_t bufsize, uint32_t *meta);

/* The fetch buffer of mq_fetch_batch and mq_fetch_one: mq_fetch's arguments in one caller-owned struct, so that a binding
 * pays for one pointer argument instead of six (the Python hot path), and
 * with the timeout in seconds: 0 = do not wait, < 0 or inf = forever, t > 0
 * = up to t seconds from now (NaN: MQ_EINVAL).  The absolute deadline used
 * is stored in fb->deadline (CLOCK_MONOTONIC ns, 0 or -1 as for mq_fetch),
 * so that a caller interrupted by MQ_EINTR can wait out the rest.  The
 * struct is process-local; fields as for mq_fetch, results in meta. */
struct mq_fetchbuf {
    mq_ns *ns;
    uint32_t q;
    uint32_t info;           /* out, mq_fetch_batch: MQ_BATCH_* bits, flags << 8 */
    char *buf;
    size_t size;
    uint32_t *meta;          /* 3 words per item: klen, vlen, flags (needed size on MQ_EBUF) */
    uint64_t total;          /* out, mq_fetch_batch: bytes written to buf */
    int64_t deadline;        /* out: the deadline the timeout gave */
    uint32_t taken;          /* out: items taken by the last call (0 on entry); read
                              * it when the caller was interrupted after the call */
    uint32_t reserved2;
};

#define MQ_BATCH_UNIFORM 1u  /* every item of the batch has the flags in info >> 8 */
#define MQ_BATCH_NONUL   2u  /* no key or value of the batch contains a NUL byte */

/* mq_fetch_many for bindings that split text fast: every key and value in
 * fb->buf is followed by a NUL byte (so a batch whose info has
 * MQ_BATCH_NONUL splits at NULs); fb->total and fb->info describe it.
 * Returns as mq_fetch_many. */
int64_t mq_fetch_batch(struct mq_fetchbuf *fb, uint32_t max, double timeout_s);

/* mq_add_many for bindings that join text fast: data is key0 NUL key1 ...
 * key(n-1) NUL value0 NUL ... value(n-1) (no NUL after the last), so no key
 * or value may hold a NUL byte; every item gets `flags`.  Returns as
 * mq_add_many; MQ_EINVAL (nothing changed) when data does not split into
 * exactly 2n pieces, which is how a NUL inside a key or value shows. */
int64_t mq_add_many_sep(mq_ns *ns, uint32_t q, const char *data, size_t data_len, size_t n,
                        uint32_t flags);


/* A queue handle's context for mq_add_to, built once per handle: the call
 * then converts one pointer instead of the handle and the queue index. */
struct mq_addctx {
    mq_ns *ns;
    uint32_t q;
    uint32_t reserved;
};
/* mq_add(c->ns, c->q, ...).  Returns as mq_add; MQ_EINVAL for a NULL c. */
int mq_add_to(const struct mq_addctx *c, const char *key, size_t klen,
              const char *val, size_t vlen, uint32_t flags);

/* mq_fetch_batch of one item with the timeout in the struct, so that the
 * call has a single pointer argument (cffi then builds no argument tuple). */
struct mq_fetch1 {
    struct mq_fetchbuf fb;   /* as for mq_fetch_batch; its results likewise */
    double timeout_s;        /* in: as mq_fetch_batch's timeout_s */
};
#define MQ_ONE_KEYNUL 4u     /* in mq_fetch_one's result: the key holds a NUL byte */
#define MQ_ONE_SHIFT 3       /* mq_fetch_one's result >> this = bytes of key NUL value */
/* Takes the oldest item as mq_fetch_batch(&f->fb, 1, f->timeout_s) does (key,
 * NUL, value, NUL in fb.buf; meta, taken, deadline, total and info set as it
 * sets them).  Returns (klen + 1 + vlen) << MQ_ONE_SHIFT | MQ_ONE_KEYNUL when
 * the key holds a NUL | the item's flags: one integer a binding splits with
 * two operations, and whose low bits say whether splitting the buffer at its
 * first NUL separates key and value; 0 when the queue is (still) empty;
 * otherwise the negative code of mq_fetch_batch, nothing taken. */
int64_t mq_fetch_one(struct mq_fetch1 *f);

/* Takes up to `max` oldest items at once (waiting like mq_fetch only while
 * the queue is empty).  Items are packed in buf as mq_fetch does, one after
 * another; meta gets 3 words per item.  Returns the number taken (0 when
 * empty at the deadline); MQ_EBUF with meta[0] = bytes the first item needs
 * when not even one fits; MQ_EINTR; other negative codes, nothing taken. */
int64_t mq_fetch_many(mq_ns *ns, uint32_t q, uint32_t max, int64_t deadline_ns,
                      char *buf, size_t bufsize, uint32_t *meta);

/* Queued item count (held items not counted).  Returns 0 and *out. */
int mq_count(mq_ns *ns, uint32_t q, uint64_t *out);

/* Copies a queue's counters.  Returns 0 and *out; changes nothing. */
int mq_stats(mq_ns *ns, uint32_t q, struct mq_stats *out);

/* Reserve / settle: a take acknowledged later (see mq.c).
 *
 * mq_reserve takes up to `max` of the oldest items into the queue's reservation, tagged `tag` (non-zero, chosen
 * by the caller) and owned by this process's liveness slot; they are copied
 * out as mq_fetch_batch does (fb's fields and results likewise) and counted as
 * fetched.  They are no longer queued, but their records stay in the segment
 * until mq_settle.  One reservation per queue at a time.  Never waits for
 * items.  Returns the number reserved (0: empty, no reservation made);
 * MQ_EBUSY when one is pending; MQ_EBUF (meta[0] = bytes needed); other
 * negative codes; nothing changes on failure.
 *
 * While a reservation is pending, its bytes still count against the queue's
 * capacity; a bounded queue that must drop items for bytes drops the whole
 * reservation first (its items are the oldest), counted as evicted, and a
 * later mq_settle with its tag gets MQ_ENORSV.
 *
 * `db` is stored with the reservation, in the same commit, and read back by
 * mq_reservation: the persistence layer puts the fingerprint of the database
 * its save writes to there (0: none or unknown).
 *
 * addmode 1: while an item is reserved, an add of its key is refused as a
 * duplicate (the first item wins: a put-back brings it back). */
int64_t mq_reserve(struct mq_fetchbuf *fb, uint32_t max, uint64_t tag, uint64_t db);

/* Settles the reservation tagged `tag`: commit != 0 drops it (its items stay
 * counted as fetched); commit == 0 puts its items back at the head in their
 * order, counted as neither added nor fetched (addmode 2: an item whose key
 * was queued again meanwhile is dropped as a duplicate; addmode 1: its keys
 * were refused meanwhile, so every item comes back, keys unique).  Any process may settle any reservation.  Returns 0; MQ_ENORSV when
 * no reservation with that tag is pending; other negative codes with nothing
 * changed. */
int mq_settle(mq_ns *ns, uint32_t q, uint64_t tag, int commit);

struct mq_rsvinfo {
    uint64_t tag;            /* the pending reservation's tag, 0 = none */
    uint64_t count;          /* its items */
    uint64_t load_tag;       /* the tag of the last mq_load applied, 0 = none */
    uint32_t owner_alive;    /* 1: the reserving process may still be running */
    uint32_t mine;           /* 1: reserved through this handle's slot */
    uint64_t db;             /* the reservation's `db` (mq_reserve), 0 = none/unknown */
};
/* Reads the queue's reservation and load tag.  Returns 1 when a reservation
 * is pending, 0 when not, or a negative code. */
int mq_reservation(mq_ns *ns, uint32_t q, struct mq_rsvinfo *out);

/* Adds n items (packed as for mq_add_many) in one step, and records `tag`
 * (non-zero) as the queue's load tag in the same commit, so that whether the
 * load happened can be read later (mq_reservation).  All or nothing: on any
 * failure nothing is added.  A bounded queue keeps the newest items that fit
 * its size and bytes (the older ones of the batch count as added and
 * evicted).  Returns the number stored; MQ_EAPPLIED (nothing done) when the
 * load tag already is `tag`; MQ_EFULL, MQ_ETOOBIG; MQ_ENOSTEP when an
 * unbounded queue cannot take the batch in one step; other negative codes. */
int64_t mq_load(mq_ns *ns, uint32_t q, uint64_t tag, const char *data, size_t data_len,
                const uint32_t *lens, size_t n);

/* Test support: returns 1 when this build has the test kill points
 * (-DMQ_TESTING), else 0.  In such a build, a process whose environment
 * holds MQ_KILLPOINT=name _exit()s (status 77) at the kill point of that
 * name; the names are the KILLPOINT("...") marks in csrc/mq.c. */
int mq_testing(void);


/* ---- asyncio notifier (mqueue.asyncio; see the last block of mq.c) ---- */
#define MQ_WS_MAX 127   /* watches per waitset: FUTEX_WAITV_MAX (128) less the control word */
typedef struct mq_waitset mq_waitset;

/* Reads q's wake-up word (bumped after every publish).  Read it before a
 * fetch that finds the queue empty, then arm a watch with it.  Returns 0 and
 * *out; MQ_ERANGE, MQ_ECLOSED, MQ_EINVAL. */
int mq_seq(mq_ns *ns, uint32_t q, uint32_t *out);
/* Wakes one process (or notifier) sleeping for data on q: passes on a
 * wake-up that a cancelled async waiter received.  Returns 0 or MQ_ERANGE,
 * MQ_ECLOSED; changes nothing in the queue. */
int mq_wake_one(mq_ns *ns, uint32_t q);
/* 1 when the kernel has futex_waitv (Linux 5.16+), else 0. */
int mq_ws_waitv_supported(void);
/* A new, empty waitset: MQ_WS_MAX watches with futex_waitv (use_waitv = 1),
 * or 1 watch with FUTEX_WAIT.  Returns NULL when out of memory. */
mq_waitset *mq_ws_new(int use_waitv);
/* Watches a waitset holds at most. */
int mq_ws_capacity(const mq_waitset *ws);
/* The notifier loop, for one thread (it blocks): waits until a watched seq
 * word moves, then fires that watch (eventfd written).  Returns 0 after
 * mq_ws_stop, or MQ_ESYS (mq_last_errno) when the futex call is refused;
 * either way every watch still armed has fired. */
int mq_ws_run(mq_waitset *ws);
/* Asks mq_ws_run to return (at once); armed watches fire.  Never fails. */
void mq_ws_stop(mq_waitset *ws);
/* Frees a waitset whose mq_ws_run has returned (or never ran). */
void mq_ws_free(mq_waitset *ws);
/* Arms a one-shot watch: when q's seq word is no longer seq0, write 1 to
 * eventfd efd and keep `cookie` for mq_ws_collect.  Holds ns in flight until
 * it fires or is removed.  Returns the watch's slot (>= 0); MQ_EAGAIN when
 * seq is already not seq0 (nothing armed: look at the queue again);
 * MQ_ESLOTS when the waitset is full or stopped; MQ_ERANGE, MQ_ECLOSED,
 * MQ_EINVAL, MQ_ESYS with nothing armed. */
int mq_ws_watch(mq_waitset *ws, mq_ns *ns, uint32_t q, uint32_t seq0, int efd, uint64_t cookie);
/* Removes the watch in `slot` if it is still the one named `cookie`, armed
 * or fired.  Returns 1 removed, 0 not there (collected already); MQ_EINVAL. */
int mq_ws_unwatch(mq_waitset *ws, int slot, uint64_t cookie);
/* Takes the fired watches of eventfd efd: up to max cookies into `cookies`.
 * Returns how many; MQ_EINVAL. */
int mq_ws_collect(mq_waitset *ws, int efd, uint64_t *cookies, int max);
/* Fires every armed watch on ns (before closing it: nothing keeps it in
 * flight afterwards).  Returns how many fired; MQ_EINVAL, MQ_ESYS. */
int mq_ws_forget_ns(mq_waitset *ws, mq_ns *ns);
/* Armed watches (tests, diagnostics); MQ_EINVAL, MQ_ESYS. */
int mq_ws_armed(mq_waitset *ws);

/* ---- asyncio waits through io_uring (mqueue.asyncio; csrc/uring.c) ----
 * One ring per event loop, its fd a reader on the loop: no notifier thread.
 * Every function except mq_ur_free/mq_ur_abandon returns MQ_ECLOSED in a
 * forked child (the ring is the parent's) and MQ_EINVAL for a NULL ring. */
typedef struct mq_uring mq_uring;
/* 1 when a ring can be made and a futex wait through it works (Linux 6.7+,
 * io_uring allowed by the sysctl and seccomp), else 0 (mq_last_errno: why). */
int mq_ur_probe(void);
/* A new ring, or NULL (mq_last_errno: EPERM/ENOSYS refused, EOPNOTSUPP an
 * opcode missing, ENOMEM ...) with nothing left open. */
mq_uring *mq_ur_new(void);
/* The ring's fd: readable when mq_ur_collect has something; -1 for NULL. */
int mq_ur_fd(const mq_uring *r);
/* Arms a one-shot watch: when q's seq word is no longer seq0, the ring
 * becomes readable and mq_ur_collect gives `cookie`.  Counted as a waiter of
 * q until then; does not hold ns (mq_detach does not wait for it).  Returns
 * the watch's slot (>= 0); MQ_EAGAIN when seq is already not seq0 (look at the
 * queue again); MQ_ESYS (mq_last_errno) when the ring refuses (use the
 * notifier then); MQ_ERANGE, MQ_ECLOSED, MQ_ENOMEM; nothing armed on failure. */
int mq_ur_watch(mq_uring *r, mq_ns *ns, uint32_t q, uint32_t seq0, uint64_t cookie);
/* Removes the watch in `slot` if it is still the one named `cookie` (armed,
 * or fired and not collected: it is then not reported).  Returns 1 removed,
 * 0 not there; MQ_EINVAL. */
int mq_ur_unwatch(mq_uring *r, int slot, uint64_t cookie);
/* Takes the ring's completions: the cookies of fired watches, up to max
 * (call again while it returns max).  Returns how many; MQ_EINVAL. */
int mq_ur_collect(mq_uring *r, uint64_t *cookies, int max);
/* Fires every armed watch on ns (before closing it).  Returns how many. */
int mq_ur_forget_ns(mq_uring *r, mq_ns *ns);
/* Armed watches (tests, diagnostics). */
int mq_ur_armed(mq_uring *r);
/* 0, or the errno with which the kernel refused a request (new watches then
 * get MQ_ESYS: the caller falls back to the notifier). */
int mq_ur_failed(mq_uring *r);
/* Uncounts the armed watches and closes the ring (the kernel cancels its
 * waits).  In a forked child: mq_ur_abandon.  Never fails. */
void mq_ur_free(mq_uring *r);
/* A forked child's copy of a parent's ring: closes its fd and frees its
 * memory, touching nothing the parent uses.  Never fails. */
void mq_ur_abandon(mq_uring *r);

#endif
