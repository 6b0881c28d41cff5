/* adapters.c - entry points shaped for the cffi binding (mqueue/_shm.py).
 *
 * What exists only to make the Python side cheap lives here, apart from the
 * engine (mq.c), as py-lmdb keeps its Python helpers apart from liblmdb:
 *   - the fetch buffer (struct mq_fetchbuf): one pre-built struct the binding
 *     passes to every fetch, with the timeout in seconds as Python has it;
 *   - NUL-separated batches: keys and values joined by NUL bytes, split here
 *     (mq_add_many_sep) or written so by the fetch (mq_fetch_batch), so that
 *     Python splits or joins a batch with one call.
 * Everything here is built on mq.c's calls; nothing touches shared memory.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mq_internal.h"

/* The deadline for a timeout in seconds (see struct mq_fetchbuf in mq.h), stored in
 * fb->deadline.  Returns 0, or MQ_EINVAL for NaN. */
static int fb_deadline(struct mq_fetchbuf *fb, double timeout_s) {
    if (timeout_s != timeout_s) return MQ_EINVAL;                /* NaN */
    if (timeout_s == 0) fb->deadline = 0;
    else if (timeout_s < 0 || timeout_s > 1e9) fb->deadline = -1;  /* forever (incl. inf) */
    else fb->deadline = mono_ns() + (int64_t)(timeout_s * 1e9) + 1;
    return 0;
}

int64_t mq_fetch_batch(struct mq_fetchbuf *fb, uint32_t max, double timeout_s) {
    if (!fb) return MQ_EINVAL;
    fb->taken = 0;
    int rc = fb_deadline(fb, timeout_s);
    if (rc) return rc;
    struct batch_out bo = {0, 0};
    int64_t n = mq_fetch_loop(fb->ns, fb->q, max, fb->deadline, fb->buf, fb->size, fb->meta, &bo);
    if (n > 0) fb->taken = (uint32_t)n;
    fb->total = bo.total;
    fb->info = bo.info;
    return n;
}

int64_t mq_add_many_sep(mq_ns *ns, uint32_t qi, const char *data, size_t data_len, size_t n,
                        uint32_t flags) {
    if (n == 0) return 0;
    if (!data || n > ((size_t)1 << 32) || (flags & ~MQ_FLAGS_MASK)) return MQ_EINVAL;
    /* Split at the NULs into the (lens, packed data) form of mq_add_many:
     * piece i < n is key i, piece n + i is value i. */
    uint32_t *lens = malloc(3 * n * sizeof *lens);
    const char **at = malloc(2 * n * sizeof *at);
    char *packed = malloc(data_len ? data_len : 1);
    int64_t r = MQ_ENOMEM;
    if (!lens || !at || !packed) goto out;
    const char *p = data, *end = data + data_len;
    size_t pieces = 0;
    r = MQ_EINVAL;
    for (;;) {
        const char *z = memchr(p, 0, (size_t)(end - p));
        size_t l = (size_t)((z ? z : end) - p);
        if (pieces == 2 * n) goto out;                  /* more pieces than items */
        if (l > UINT32_MAX) { r = MQ_ETOOBIG; goto out; }
        size_t item = pieces < n ? pieces : pieces - n;
        lens[3 * item + (pieces < n ? 0 : 1)] = (uint32_t)l;
        lens[3 * item + 2] = flags;
        at[pieces] = p;
        pieces++;
        if (!z) break;
        p = z + 1;
    }
    if (pieces != 2 * n) goto out;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {                    /* key i, value i, ... */
        memcpy(packed + off, at[i], lens[3 * i]);
        off += lens[3 * i];
        memcpy(packed + off, at[n + i], lens[3 * i + 1]);
        off += lens[3 * i + 1];
    }
    r = mq_add_many(ns, qi, packed, off, lens, n);
out:
    free(packed);
    free(at);
    free(lens);
    return r;
}

/* Single-pointer entry points (cffi converts one pointer and builds no
 * argument tuple): see mq.h for what each returns. */

int mq_add_to(const struct mq_addctx *c, const char *key, size_t klen,
              const char *val, size_t vlen, uint32_t flags) {
    if (!c) return MQ_EINVAL;
    return mq_add(c->ns, c->q, key, klen, val, vlen, flags);
}

int64_t mq_fetch_one(struct mq_fetch1 *f) {
    if (!f) return MQ_EINVAL;
    struct mq_fetchbuf *fb = &f->fb;
    int64_t n = mq_fetch_batch(fb, 1, f->timeout_s);
    if (n <= 0) return n;
    uint32_t klen = fb->meta[0], vlen = fb->meta[1], flags = fb->meta[2] & MQ_FLAGS_MASK;
    /* klen + 1 + vlen <= fb->size, which is far below 2**60: the shift is exact */
    int64_t out = (int64_t)(((uint64_t)klen + 1 + vlen) << MQ_ONE_SHIFT) | flags;
    /* the take found no NUL in key or value (the common case): none to look for */
    if (!(fb->info & MQ_BATCH_NONUL) && memchr(fb->buf, 0, klen)) out |= MQ_ONE_KEYNUL;
    return out;
}
