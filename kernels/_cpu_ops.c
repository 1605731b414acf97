/* helix.kernels._cpu_ops: decode-step kernels for x86-64 CPUs with AVX2 and FMA, fp32 or bf16
 * data, threads from torch's own OpenMP runtime.
 *
 * linear: y = x @ w.T + bias for row-major weights, for the few rows of a decode step. At one to
 * a few rows a projection is a matrix-vector product whose time is the time to stream the
 * weight from memory; MKL's and oneDNN's GEMMs reach 50-90 % of this machine's streaming
 * bandwidth at the shapes of a small model. This kernel streams each weight row once,
 * multiplies it with every input row while it sits in L1, prefetches the next rows, and splits
 * the output columns over the threads. Layout: x [M, K] (row stride ldx), w [N, K] (row stride
 * ldw), y [M, N] (row stride ldy), bias [N] or NULL; all fp32, except w, which may be bf16
 * (widened to fp32 as it is loaded: products and sums in fp32, as torch's bf16 GEMM on the CPU
 * does). A 4 x 3 register block (4 weight rows, 3 input rows, 8 lanes of K): 7 loads and 12 FMAs
 * per step; the K tail is read with masked loads. Each output is one dot product summed in 8
 * lanes then reduced, so results differ from a BLAS GEMM in the last bits only.
 *
 * decode_attention: one query per sequence against its paged K/V cache, read in place through
 * the block table (no gather), one (sequence, KV head) pair per work item with the query heads
 * of its group; softmax in fp32.
 *
 * Python interface (pointers are integers from torch.Tensor.data_ptr()):
 *   available() -> bool                    the CPU has AVX2 and FMA
 *   bind_openmp(dir) -> str | None         use the OpenMP runtime loaded from under dir
 *   linear(x, w, bias, y, M, K, N, ldx, ldw, ldy, threads, bf16) -> None
 *   decode_attention(q, k, v, tables, lens, out, B, H, Hkv, D, block_size, table_stride, scale,
 *                    threads, bf16) -> None
 * Both release the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <limits.h>
#include <link.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HELIX_X86 1
#else
#define HELIX_X86 0
#endif

typedef struct {
    const float *x, *bias;
    const void *w; /* fp32 or bf16 */
    int bf16;
    float *y;
    int64_t M, K, N, ldx, ldw, ldy;
} job_t;

#if HELIX_X86

#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 8 weights from p as fp32: fp32 loaded as is, bf16 widened (its bits are fp32's top half). */
AVX2 static inline __attribute__((always_inline)) __m256 load_w(const char *p, int bf16) {
    if (bf16) {
        __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
        return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
    }
    return _mm256_loadu_ps((const float *)p);
}

/* The last rem (1..7) weights of a row, zeros after them. */
AVX2 static inline __attribute__((always_inline)) __m256 load_w_tail(const char *p, int64_t rem,
                                                                   __m256i tail, int bf16) {
    if (bf16) {
        uint16_t part[8] = {0};
        memcpy(part, p, (size_t)rem * 2);
        return load_w((const char *)part, 1);
    }
    return _mm256_maskload_ps((const float *)p, tail);
}

/* y[c][r] = dot(w row r, x row c) (+ bias) for r < R, c < C: R weight rows against C input rows.
 * R, C and bf16 are constants at every call site, so the loops below unroll into registers.
 * next: the following 4 weight rows, fetched into cache a line at a time, or NULL. */
AVX2 static inline __attribute__((always_inline)) void block(
    const char *w, int64_t ldw, const float *x, int64_t ldx, float *y, int64_t ldy,
    const float *bias, int64_t K, __m256i tail, const char *next, int R, int C, int bf16) {
    const int64_t es = bf16 ? 2 : 4; /* bytes per weight */
    __m256 acc[4][3];
    for (int r = 0; r < R; r++)
        for (int c = 0; c < C; c++) acc[r][c] = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 8 <= K; k += 8) {
        __m256 xv[3];
        for (int c = 0; c < C; c++) xv[c] = _mm256_loadu_ps(x + c * ldx + k);
        if (next && ((k * es) & 63) == 0)
            for (int r = 0; r < 4; r++) _mm_prefetch(next + (r * ldw + k) * es, _MM_HINT_T0);
        for (int r = 0; r < R; r++) {
            __m256 wv = load_w(w + (r * ldw + k) * es, bf16);
            for (int c = 0; c < C; c++) acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
        }
    }
    if (k < K) { /* 1..7 trailing columns: zeros past K */
        __m256 xv[3];
        for (int c = 0; c < C; c++) xv[c] = _mm256_maskload_ps(x + c * ldx + k, tail);
        for (int r = 0; r < R; r++) {
            __m256 wv = load_w_tail(w + (r * ldw + k) * es, K - k, tail, bf16);
            for (int c = 0; c < C; c++) acc[r][c] = _mm256_fmadd_ps(wv, xv[c], acc[r][c]);
        }
    }
    for (int r = 0; r < R; r++) {
        float b = bias ? bias[r] : 0.0f;
        for (int c = 0; c < C; c++) y[c * ldy + r] = hsum(acc[r][c]) + b;
    }
}

#define BLOCK(R, C) block(w, j->ldw, x, j->ldx, y, j->ldy, b, j->K, tail, next, R, C, bf16)

/* Output columns [n0, n1) of y, every input row. */
AVX2 static inline __attribute__((always_inline)) void rows(const job_t *j, int64_t n0,
                                                          int64_t n1, int bf16) {
    const int64_t es = bf16 ? 2 : 4;
    int64_t rem = j->K % 8;
    int32_t lanes[8];
    for (int i = 0; i < 8; i++) lanes[i] = i < rem ? -1 : 0;
    __m256i tail = _mm256_loadu_si256((const __m256i *)lanes);
    for (int64_t n = n0; n < n1; n += 4) {
        int R = n1 - n < 4 ? (int)(n1 - n) : 4;
        const char *w = (const char *)j->w + n * j->ldw * es;
        const float *b = j->bias ? j->bias + n : NULL;
        for (int64_t m = 0; m < j->M; m += 3) {
            int C = j->M - m < 3 ? (int)(j->M - m) : 3;
            const float *x = j->x + m * j->ldx;
            float *y = j->y + m * j->ldy + n;
            /* While the first input rows meet this block, fetch the next block's weights. */
            const int64_t ahead = bf16 ? 8 : 4; /* rows: about 12 KB ahead at K = 768 */
            const char *next = m == 0 && n + ahead + 4 <= n1 ? w + ahead * j->ldw * es : NULL;
            switch (R * 4 + C) {
                case 4 * 4 + 3: BLOCK(4, 3); break;
                case 4 * 4 + 2: BLOCK(4, 2); break;
                case 4 * 4 + 1: BLOCK(4, 1); break;
                case 3 * 4 + 3: BLOCK(3, 3); break;
                case 3 * 4 + 2: BLOCK(3, 2); break;
                case 3 * 4 + 1: BLOCK(3, 1); break;
                case 2 * 4 + 3: BLOCK(2, 3); break;
                case 2 * 4 + 2: BLOCK(2, 2); break;
                case 2 * 4 + 1: BLOCK(2, 1); break;
                case 1 * 4 + 3: BLOCK(1, 3); break;
                case 1 * 4 + 2: BLOCK(1, 2); break;
                default: BLOCK(1, 1); break;
            }
        }
    }
}

AVX2 static void rows_fp32(const job_t *j, int64_t n0, int64_t n1) { rows(j, n0, n1, 0); }
AVX2 static void rows_bf16(const job_t *j, int64_t n0, int64_t n1) { rows(j, n0, n1, 1); }

/* Part `part` of `parts`: a contiguous run of output columns, in multiples of 16 (whole cache
 * lines of y, and of 4-row weight blocks). */
static void linear_part(const void *data, int part, int parts) {
    const job_t *j = data;
    int64_t chunks = (j->N + 15) / 16;
    int64_t n0 = chunks * part / parts * 16, n1 = chunks * (part + 1) / parts * 16;
    if (n1 > j->N) n1 = j->N;
    if (n0 < n1) (j->bf16 ? rows_bf16 : rows_fp32)(j, n0, n1);
}

/* ---- threads: torch's own OpenMP runtime ------------------------------------------------- */

/* The kernel runs its parts on the OpenMP team that torch's ops use, found among the loaded
 * libraries (under torch's lib folder) by bind_openmp(). A second pool of threads would fight
 * torch's: after each parallel torch op (SDPA runs one per layer) its OpenMP workers spin for
 * milliseconds, and on a machine with as many threads as cores a spinning worker of one pool
 * starves the other's. Without a bound runtime the kernel runs on the calling thread. */
typedef void (*gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
typedef int (*omp_int_fn)(void);
static gomp_parallel_fn gomp_parallel;
static omp_int_fn omp_thread_num, omp_num_threads;
static char omp_path[4096];

static int find_openmp(struct dl_phdr_info *info, size_t size, void *dir) {
    (void)size;
    const char *name = info->dlpi_name, *prefix = dir;
    char real[PATH_MAX]; /* compared resolved: a venv reached through a symlink still matches */
    if (!name || !*name || !realpath(name, real) || strncmp(real, prefix, strlen(prefix)) != 0)
        return 0;
    const char *base = strrchr(name, '/');
    base = base ? base + 1 : name;
    if (!strstr(base, "gomp") && !strstr(base, "iomp")) return 0;
    void *lib = dlopen(name, RTLD_NOLOAD | RTLD_LAZY);
    if (!lib) return 0;
    gomp_parallel_fn run = (gomp_parallel_fn)dlsym(lib, "GOMP_parallel");
    omp_int_fn num = (omp_int_fn)dlsym(lib, "omp_get_thread_num");
    omp_int_fn team = (omp_int_fn)dlsym(lib, "omp_get_num_threads");
    if (!run || !num || !team) {
        dlclose(lib);
        return 0;
    }
    gomp_parallel = run, omp_thread_num = num, omp_num_threads = team;
    snprintf(omp_path, sizeof omp_path, "%s", name);
    return 1; /* the handle stays open: the library stays loaded while we hold its functions */
}

typedef void (*part_fn)(const void *data, int part, int parts);
typedef struct {
    part_fn part;
    const void *data;
} team_t;

static void run_team(void *arg) {
    const team_t *team = arg; /* the team may be smaller than asked for */
    team->part(team->data, omp_thread_num(), omp_num_threads());
}

/* part(data, i, n) for i < n on n <= threads threads, the caller included. */
static void parallel(part_fn part, const void *data, int threads) {
    if (threads > 1 && gomp_parallel) {
        team_t team = {part, data};
        gomp_parallel(run_team, &team, (unsigned)threads, 0);
    } else {
        part(data, 0, 1);
    }
}

/* ---- decode attention --------------------------------------------------------------------- */

typedef struct {
    const float *q; /* [B, H, D] */
    const void *k, *v; /* [num_blocks, block_size, Hkv, D], fp32 or bf16 */
    const int32_t *tables; /* [B, table_stride] */
    const int32_t *lens;   /* [B] */
    float *out;            /* [B, H, D] */
    int64_t B, H, Hkv, D, bs, table_stride;
    float scale;
    int bf16;
    int failed; /* set when a scratch buffer could not be allocated */
} attn_t;

/* Sequence b, KV head g: the group of query heads that share it. */
AVX2 static inline __attribute__((always_inline)) void attn_item(attn_t *a, int64_t b, int64_t g,
                                                               int bf16) {
    const int64_t group = a->H / a->Hkv, D = a->D, L = a->lens[b], es = bf16 ? 2 : 4;
    const int32_t *table = a->tables + b * a->table_stride;
    const float *q = a->q + (b * a->H + g * group) * D; /* [group, D] */
    float *out = a->out + (b * a->H + g * group) * D;   /* [group, D] */
    for (int64_t i = 0; i < group * D; i++) out[i] = 0.0f;
    if (L <= 0) return;
    float *scores = malloc(sizeof(float) * (size_t)(group * L + group)); /* [group, L] + sums */
    if (!scores) {
        a->failed = 1;
        return;
    }
    float *inv = scores + group * L;
#define ROW(cache, t)                                                                             \
    ((const char *)(cache) +                                                                      \
     ((((int64_t)table[(t) / a->bs]) * a->bs + (t) % a->bs) * a->Hkv + g) * D * es)
    for (int64_t t = 0; t < L; t++) {
        const char *k = ROW(a->k, t);
        for (int64_t h = 0; h < group; h++) {
            __m256 acc = _mm256_setzero_ps();
            for (int64_t d = 0; d < D; d += 8)
                acc = _mm256_fmadd_ps(load_w(k + d * es, bf16), _mm256_loadu_ps(q + h * D + d), acc);
            scores[h * L + t] = hsum(acc) * a->scale;
        }
    }
    for (int64_t h = 0; h < group; h++) {
        float *row = scores + h * L, top = row[0], sum = 0.0f;
        for (int64_t t = 1; t < L; t++) top = row[t] > top ? row[t] : top;
        for (int64_t t = 0; t < L; t++) sum += row[t] = expf(row[t] - top);
        inv[h] = 1.0f / sum;
    }
    for (int64_t t = 0; t < L; t++) {
        const char *v = ROW(a->v, t);
        for (int64_t h = 0; h < group; h++) {
            __m256 p = _mm256_set1_ps(scores[h * L + t] * inv[h]);
            float *o = out + h * D;
            for (int64_t d = 0; d < D; d += 8)
                _mm256_storeu_ps(o + d, _mm256_fmadd_ps(p, load_w(v + d * es, bf16),
                                                        _mm256_loadu_ps(o + d)));
        }
    }
#undef ROW
    free(scores);
}

AVX2 static void attn_items_fp32(attn_t *a, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) attn_item(a, i / a->Hkv, i % a->Hkv, 0);
}
AVX2 static void attn_items_bf16(attn_t *a, int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; i++) attn_item(a, i / a->Hkv, i % a->Hkv, 1);
}

static void attn_part(const void *data, int part, int parts) {
    attn_t *a = (attn_t *)data;
    int64_t items = a->B * a->Hkv;
    int64_t i0 = items * part / parts, i1 = items * (part + 1) / parts;
    (a->bf16 ? attn_items_bf16 : attn_items_fp32)(a, i0, i1);
}

static int cpu_ok(void) {
    static int ok = -1;
    if (ok < 0) {
        __builtin_cpu_init();
        ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    }
    return ok;
}

#endif /* HELIX_X86 */

static PyObject *py_available(PyObject *self, PyObject *args) {
    (void)self;
    (void)args;
#if HELIX_X86
    return PyBool_FromLong(cpu_ok());
#else
    Py_RETURN_FALSE;
#endif
}

static PyObject *py_linear(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long x, w, bias, y;
    long long M, K, N, ldx, ldw, ldy;
    int threads, bf16;
    if (!PyArg_ParseTuple(args, "KKKKLLLLLLip", &x, &w, &bias, &y, &M, &K, &N, &ldx, &ldw, &ldy,
                          &threads, &bf16))
        return NULL;
#if HELIX_X86
    if (!cpu_ok()) {
        PyErr_SetString(PyExc_RuntimeError, "_cpu_ops: this CPU lacks AVX2 or FMA");
        return NULL;
    }
    if (!x || !w || !y || M < 0 || K <= 0 || N < 0 || ldx < K || ldw < K || ldy < N) {
        PyErr_Format(PyExc_ValueError, "_cpu_ops.linear: bad shape M=%lld K=%lld N=%lld", M,
                     K, N);
        return NULL;
    }
    if (N < 64 * (int64_t)threads) threads = (int)(N / 64); /* at least 64 outputs a part */
    if (threads < 1) threads = 1;
    job_t job = {(const float *)(uintptr_t)x, (const float *)(uintptr_t)bias,
                 (const void *)(uintptr_t)w, bf16, (float *)(uintptr_t)y, M, K, N, ldx, ldw, ldy};
    if (M > 0 && N > 0) {
        Py_BEGIN_ALLOW_THREADS parallel(linear_part, &job, threads);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
#else
    (void)x, (void)w, (void)bias, (void)y, (void)M, (void)K, (void)N, (void)ldx, (void)ldw;
    (void)ldy, (void)threads, (void)bf16;
    PyErr_SetString(PyExc_RuntimeError, "_cpu_ops: built for a CPU other than x86-64");
    return NULL;
#endif
}

static PyObject *py_decode_attention(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long q, k, v, tables, lens, out;
    long long B, H, Hkv, D, bs, table_stride;
    double scale;
    int threads, bf16;
    if (!PyArg_ParseTuple(args, "KKKKKKLLLLLLdip", &q, &k, &v, &tables, &lens, &out, &B, &H,
                          &Hkv, &D, &bs, &table_stride, &scale, &threads, &bf16))
        return NULL;
#if HELIX_X86
    if (!cpu_ok()) {
        PyErr_SetString(PyExc_RuntimeError, "_cpu_ops: this CPU lacks AVX2 or FMA");
        return NULL;
    }
    if (!q || !k || !v || !tables || !lens || !out || B < 0 || Hkv <= 0 || H % Hkv != 0 ||
        D <= 0 || D % 8 != 0 || bs <= 0 || table_stride < 0) {
        PyErr_Format(PyExc_ValueError,
                     "_cpu_ops.decode_attention: bad shape B=%lld H=%lld Hkv=%lld D=%lld "
                     "(D must be a multiple of 8, H of Hkv)",
                     B, H, Hkv, D);
        return NULL;
    }
    attn_t job = {(const float *)(uintptr_t)q, (const void *)(uintptr_t)k,
                  (const void *)(uintptr_t)v, (const int32_t *)(uintptr_t)tables,
                  (const int32_t *)(uintptr_t)lens, (float *)(uintptr_t)out, B, H, Hkv, D, bs,
                  table_stride, (float)scale, bf16, 0};
    int64_t work = 0; /* multiply-adds: below ~256k one thread is quicker than a fork/join */
    for (int64_t b = 0; b < B; b++) work += (int64_t)job.lens[b] * H * D * 2;
    if (work < (1 << 18)) threads = 1;
    if (threads > B * Hkv) threads = (int)(B * Hkv);
    if (threads < 1) threads = 1;
    Py_BEGIN_ALLOW_THREADS parallel(attn_part, &job, threads);
    Py_END_ALLOW_THREADS
    if (job.failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
#else
    (void)q, (void)k, (void)v, (void)tables, (void)lens, (void)out, (void)B, (void)H, (void)Hkv;
    (void)D, (void)bs, (void)table_stride, (void)scale, (void)threads, (void)bf16;
    PyErr_SetString(PyExc_RuntimeError, "_cpu_ops: built for a CPU other than x86-64");
    return NULL;
#endif
}

static PyObject *py_bind_openmp(PyObject *self, PyObject *args) {
    (void)self;
    const char *dir;
    if (!PyArg_ParseTuple(args, "s", &dir)) return NULL;
#if HELIX_X86
    if (!gomp_parallel) dl_iterate_phdr(find_openmp, (void *)dir);
    if (gomp_parallel) return PyUnicode_FromString(omp_path);
#endif
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"decode_attention", py_decode_attention, METH_VARARGS,
     "decode_attention(q, k, v, tables, lens, out, B, H, Hkv, D, block_size, table_stride, "
     "scale, threads, bf16): out = softmax(q k^T * scale) v per sequence over its paged cache; "
     "q, out fp32 [B, H, D]; k, v [blocks, block_size, Hkv, D] fp32 or bf16; int32 tables, lens."},
    {"bind_openmp", py_bind_openmp, METH_VARARGS,
     "bind_openmp(dir): use the OpenMP runtime loaded from under dir (torch's lib folder) for "
     "the kernel's threads; its path, or None where none is loaded."},
    {"available", py_available, METH_NOARGS, "Whether this CPU can run the kernel (AVX2, FMA)."},
    {"linear", py_linear, METH_VARARGS,
     "linear(x, w, bias, y, M, K, N, ldx, ldw, ldy, threads, bf16): y = x @ w.T + bias; x, y, "
     "bias fp32 (bias may be 0), w fp32 or (bf16=True) bf16."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_cpu_ops",
                                    "decode-step kernels for x86-64 CPUs (AVX2, FMA)", -1, methods};

PyMODINIT_FUNC PyInit__cpu_ops(void) { return PyModule_Create(&module); }
