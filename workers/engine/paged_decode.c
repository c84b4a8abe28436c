/* Paged decode attention on the CPU: one query token per row over the KV blocks of its block
 * table, read where they lie (no gather, no padding), softmax online per block.
 *
 * Layout (workers/engine/kv_cache.py): keys [slots, kv_heads, dim, block] (transposed per
 * block), values [slots, kv_heads, block, dim]. Row r's blocks are slots[ptr[r] .. ptr[r+1]),
 * in order; it attends to its first lengths[r] positions. Queries q [rows, kv_heads, group,
 * dim] float32, already scaled; out has q's shape, float32. Work is split over (row, KV head)
 * pairs with OpenMP (the runtime torch itself loaded, so one thread pool).
 *
 * Built by workers/engine/paged_decode.py with the machine's C compiler; the torch path in
 * attention.py is used where none is available.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_GROUP 16
#define MAX_DIM 256
#define MAX_BLOCK 256

/* exp(x) for x <= 0 (scores less their running max), vectorisable: 2^n * p(r), with r in
 * [-ln2/2, ln2/2] and a degree-6 polynomial (relative error ~2e-7); under -87 gives 0. */
static inline float exp_neg(float x) {
    x = x < -87.0f ? -87.0f : x;
    /* round to nearest by adding and taking away 1.5 * 2^23 (vectorises, unlike roundf) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.6666666e-1f + r * (4.1666668e-2f
              + r * (8.3333764e-3f + r * 1.3888889e-3f)))));
    int32_t e = ((int32_t)n + 127) << 23;
    float s;
    memcpy(&s, &e, sizeof s);
    return p * s;
}

typedef float v8 __attribute__((vector_size(32)));
typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));

static inline v8 load_f32(const float *p) {
    v8 f;
    memcpy(&f, p, sizeof f);
    return f;
}

static inline v8 load_bf16(const uint16_t *p) {
    u16x8 h;
    memcpy(&h, p, sizeof h);
    u32x8 w = __builtin_convertvector(h, u32x8) << 16;
    v8 f;
    memcpy(&f, &w, sizeof f);
    return f;
}

/* One (row, KV head): its GROUP query heads over the row's blocks, eight positions (scores)
 * or eight dimensions (values) at a time in registers. GROUP is a constant in each call
 * site, so the loops over it unroll. */
#define DEFINE_TASK(NAME, T, LOAD)                                                            \
    static inline __attribute__((always_inline)) void NAME(                                   \
        const int64_t GROUP, const float *qr, const T *k, const T *v, const int64_t *slots,   \
        int64_t nblocks, int64_t length, float *o, int64_t h, int64_t kv_heads, int64_t dim,  \
        int64_t block) {                                                                       \
        /* NV vectors of 8 a pass: NV x GROUP independent sums (registers, and FMAs that do   \
         * not wait on each other), each pass reading NV x 8 consecutive values of a row */    \
        const int64_t NV = GROUP >= 8 ? 1 : GROUP >= 4 ? 2 : GROUP >= 2 ? 4 : 8;               \
        float m[MAX_GROUP], l[MAX_GROUP];                                                      \
        float acc[MAX_GROUP][MAX_DIM] __attribute__((aligned(32)));                            \
        float s[MAX_GROUP][MAX_BLOCK] __attribute__((aligned(32)));                            \
        for (int64_t g = 0; g < GROUP; g++) {                                                  \
            m[g] = -1e30f;                                                                     \
            l[g] = 0.0f;                                                                       \
            memset(acc[g], 0, sizeof(float) * dim);                                            \
        }                                                                                      \
        for (int64_t j = 0; j < nblocks; j++) {                                                \
            int64_t n = length - j * block < block ? length - j * block : block;              \
            if (n <= 0) break;                                                                 \
            const T *kb = k + (slots[j] * kv_heads + h) * dim * block;                         \
            const T *vb = v + (slots[j] * kv_heads + h) * block * dim;                         \
            /* the next block's keys and values, fetched while this one is computed */         \
            const char *next = j + 1 < nblocks ? (const char *)(k + (slots[j + 1] * kv_heads + h) \
                                                  * dim * block) : NULL;                        \
            const char *next_v = next ? (const char *)(v + (slots[j + 1] * kv_heads + h)        \
                                                       * block * dim) : NULL;                    \
            const int64_t bytes = dim * block * (int64_t)sizeof(T);                            \
            for (int64_t p0 = 0; p0 < n; p0 += 8 * NV) { /* NV x 8 positions a pass */         \
                v8 sc[NV][MAX_GROUP];                                                          \
                for (int64_t c = 0; c < NV; c++)                                               \
                    for (int64_t g = 0; g < GROUP; g++) sc[c][g] = (v8){0};                    \
                if (next && p0 == 0)                                                           \
                    for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(next + b);      \
                for (int64_t d = 0; d < dim; d++) {                                            \
                    const T *row = kb + d * block + p0;                                        \
                    for (int64_t c = 0; c < NV; c++)                                           \
                        if (p0 + 8 * c < n) {                                                  \
                            v8 kv = LOAD(row + 8 * c);                                         \
                            for (int64_t g = 0; g < GROUP; g++)                                \
                                sc[c][g] += qr[g * dim + d] * kv;                              \
                        }                                                                      \
                }                                                                              \
                for (int64_t c = 0; c < NV; c++)                                               \
                    if (p0 + 8 * c < n)                                                        \
                        for (int64_t g = 0; g < GROUP; g++)                                    \
                            memcpy(&s[g][p0 + 8 * c], &sc[c][g], sizeof(v8));                 \
            }                                                                                  \
            for (int64_t g = 0; g < GROUP; g++) {                                              \
                float *sg = s[g];                                                              \
                float top = m[g];                                                              \
                for (int64_t p = 0; p < n; p++) top = sg[p] > top ? sg[p] : top;              \
                float scale = exp_neg(m[g] - top), sum = 0.0f;                                 \
                for (int64_t p = 0; p < n; p++) {                                              \
                    sg[p] = exp_neg(sg[p] - top);                                              \
                    sum += sg[p];                                                              \
                }                                                                              \
                l[g] = l[g] * scale + sum;                                                     \
                m[g] = top;                                                                    \
                if (scale != 1.0f)                                                             \
                    for (int64_t d = 0; d < dim; d++) acc[g][d] *= scale;                      \
            }                                                                                  \
            if (next_v)                                                                        \
                for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(next_v + b);        \
            for (int64_t d0 = 0; d0 < dim; d0 += 8 * NV) { /* NV x 8 dimensions a pass */       \
                v8 a[NV][MAX_GROUP];                                                           \
                for (int64_t c = 0; c < NV; c++)                                               \
                    if (d0 + 8 * c < dim)                                                      \
                        for (int64_t g = 0; g < GROUP; g++) a[c][g] = load_f32(&acc[g][d0 + 8 * c]); \
                for (int64_t p = 0; p < n; p++) {                                              \
                    const T *row = vb + p * dim + d0;                                          \
                    for (int64_t c = 0; c < NV; c++)                                           \
                        if (d0 + 8 * c < dim) {                                                \
                            v8 vv = LOAD(row + 8 * c);                                         \
                            for (int64_t g = 0; g < GROUP; g++) a[c][g] += s[g][p] * vv;       \
                        }                                                                      \
                }                                                                              \
                for (int64_t c = 0; c < NV; c++)                                               \
                    if (d0 + 8 * c < dim)                                                      \
                        for (int64_t g = 0; g < GROUP; g++)                                    \
                            memcpy(&acc[g][d0 + 8 * c], &a[c][g], sizeof(v8));                 \
            }                                                                                  \
        }                                                                                      \
        for (int64_t g = 0; g < GROUP; g++) {                                                  \
            float inv = l[g] > 0.0f ? 1.0f / l[g] : 0.0f;                                      \
            for (int64_t d = 0; d < dim; d++) o[g * dim + d] = acc[g][d] * inv;                \
        }                                                                                      \
    }

#define DEFINE_DECODE(NAME, TASK, T)                                                          \
    void NAME(const float *q, const T *k, const T *v, const int64_t *ptr,                     \
              const int64_t *slots, const int64_t *lengths, float *out, int64_t rows,         \
              int64_t kv_heads, int64_t group, int64_t dim, int64_t block, int threads) {     \
        int64_t tasks = rows * kv_heads;                                                       \
        _Pragma("omp parallel for schedule(dynamic, 1) num_threads(threads)")                 \
        for (int64_t t = 0; t < tasks; t++) {                                                  \
            int64_t r = t / kv_heads, h = t % kv_heads;                                        \
            const float *qr = q + t * group * dim;                                             \
            float *o = out + t * group * dim;                                                  \
            const int64_t *sl = slots + ptr[r];                                                \
            int64_t nb = ptr[r + 1] - ptr[r], len = lengths[r];                                \
            switch (group) {                                                                   \
            case 1: TASK(1, qr, k, v, sl, nb, len, o, h, kv_heads, dim, block); break;        \
            case 2: TASK(2, qr, k, v, sl, nb, len, o, h, kv_heads, dim, block); break;        \
            case 3: TASK(3, qr, k, v, sl, nb, len, o, h, kv_heads, dim, block); break;        \
            case 4: TASK(4, qr, k, v, sl, nb, len, o, h, kv_heads, dim, block); break;        \
            case 8: TASK(8, qr, k, v, sl, nb, len, o, h, kv_heads, dim, block); break;        \
            default: TASK(group, qr, k, v, sl, nb, len, o, h, kv_heads, dim, block); break;   \
            }                                                                                  \
        }                                                                                      \
    }

DEFINE_TASK(task_f32, float, load_f32)
DEFINE_TASK(task_bf16, uint16_t, load_bf16)
DEFINE_DECODE(jetserve_paged_decode_f32, task_f32, float)
DEFINE_DECODE(jetserve_paged_decode_bf16, task_bf16, uint16_t)

/* The limits the caller must check: group, dim and block at most these; dim and block
 * multiples of 8. */
int64_t jetserve_paged_decode_max_group(void) { return MAX_GROUP; }
int64_t jetserve_paged_decode_max_dim(void) { return MAX_DIM; }
int64_t jetserve_paged_decode_max_block(void) { return MAX_BLOCK; }
