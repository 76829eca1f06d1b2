/* Winograd convolution F(m x m, 3 x 3), m = 4 or 2, float32: the C core of _winograd.pyx.
 *
 * A tile of m x m outputs of a stride-1 3x3 convolution is Y = A^T [(G g G^T) . (B^T d B)] A, with d
 * the (m + 2) x (m + 2) input patch under the tile and "." the elementwise product: 36 products per
 * channel pair and 4x4 tile (16 for 2x2) instead of 144 (36). Summed over input channels, the
 * elementwise products become one matrix product per transform coordinate xi (an entry of the
 * alpha x alpha transformed tile, alpha = m + 2):
 *
 *     M[xi][k][t] = sum_c U[xi][c][k] V[xi][c][t],   U = G g G^T (weights), V = B^T d B (tiles t)
 *
 * The weight gradient is the adjoint of the same bilinear form, with the same three matrices:
 * gw[k][c] = G^T [sum_t (A gy_t A^T) . (B^T d_t B)] G, gy_t the tile's m x m output gradient.
 *
 * Vectors run over tiles: a vector holds one transform coordinate of WG_LANES tiles, so the transforms
 * are elementwise vector arithmetic. Transformed input tiles are stored by vector of tiles, then
 * coordinate, then channel, so a product's reduction over channels reads consecutive vectors. The
 * products are register-tiled: rows of broadcast scalars (transformed weights; in the weight gradient,
 * transformed inputs) times one or two vectors (tiles; in the weight gradient, output channels).
 *
 * The vector type is GCC/Clang's generic one (AVX-512, AVX2 or SSE with the matching -march); other
 * compilers get WG_LANES = 1, the same code on scalars.
 */
#ifndef FASTCONV_WINOGRAD_H
#define FASTCONV_WINOGRAD_H

#include <stddef.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__GNUC__) || defined(__clang__)
#if defined(__AVX512F__)
#define WG_LANES 16
#define WG_NK2 14     /* register tile: 14 rows x 2 vectors of 32 registers */
#define WG_NK1 14     /* or 14 x 1 (28 x 1 is bound by its broadcasts) */
#elif defined(__AVX__)
#define WG_LANES 8
#define WG_NK2 6      /* 16 registers: 6 x 2 */
#define WG_NK1 12
#else
#define WG_LANES 4
#define WG_NK2 6
#define WG_NK1 12
#endif
typedef float wg_vec __attribute__((vector_size(4 * WG_LANES)));
#define WG_INLINE static inline __attribute__((always_inline))
#else
#define WG_LANES 1
#define WG_NK2 4
#define WG_NK1 8
typedef float wg_vec;
#define WG_INLINE static inline
#endif
#define WG_MAX_NK (WG_NK1 > WG_NK2 ? WG_NK1 : WG_NK2)

WG_INLINE wg_vec wg_load(const float *p) { wg_vec v; memcpy(&v, p, sizeof v); return v; }
WG_INLINE void wg_store(float *p, wg_vec v) { memcpy(p, &v, sizeof v); }
WG_INLINE ptrdiff_t wg_min(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }
WG_INLINE ptrdiff_t wg_max(ptrdiff_t a, ptrdiff_t b) { return a > b ? a : b; }
WG_INLINE ptrdiff_t wg_round(ptrdiff_t n) { return (n + WG_LANES - 1) / WG_LANES * WG_LANES; }
/* The stride between transform coordinates of a buffer whose coordinates hold n floats each: one
 * vector more, so that the alpha^2 coordinates a transform reads or writes at once do not map to the
 * same cache sets (strides of a multiple of 4 KB would). */
WG_INLINE ptrdiff_t wg_skew(ptrdiff_t n) { return n + WG_LANES; }

/* ------------------------------------------------------------------ the 1-D transforms
 * Each maps n inputs p[0], p[s], ... to outputs q[0], q[r], ...; applied to the columns and then the
 * rows of a tile they give the 2-D transforms. F(4, 3) uses Lavin's interpolation points 0, +-1, +-2;
 * F(2, 3) the points 0, +-1. */

/* B^T d: alpha -> alpha (input tiles). */
WG_INLINE void wg_bt(int m, const wg_vec *p, int s, wg_vec *q, int r)
{
    if (m == 4) {
        wg_vec d0 = p[0], d1 = p[s], d2 = p[2 * s], d3 = p[3 * s], d4 = p[4 * s], d5 = p[5 * s];
        wg_vec a = d4 - 4.0f * d2, b = d3 - 4.0f * d1, c = d4 - d2, e = 2.0f * (d3 - d1);
        q[0] = 4.0f * d0 - 5.0f * d2 + d4;
        q[r] = a + b;
        q[2 * r] = a - b;
        q[3 * r] = c + e;
        q[4 * r] = c - e;
        q[5 * r] = 4.0f * d1 - 5.0f * d3 + d5;
    } else {
        wg_vec d0 = p[0], d1 = p[s], d2 = p[2 * s], d3 = p[3 * s];
        q[0] = d0 - d2;
        q[r] = d1 + d2;
        q[2 * r] = d2 - d1;
        q[3 * r] = d1 - d3;
    }
}

/* A^T z: alpha -> m (output tiles). */
WG_INLINE void wg_at(int m, const wg_vec *p, int s, wg_vec *q, int r)
{
    if (m == 4) {
        wg_vec z0 = p[0], z1 = p[s], z2 = p[2 * s], z3 = p[3 * s], z4 = p[4 * s], z5 = p[5 * s];
        wg_vec a = z1 + z2, b = z1 - z2, c = z3 + z4, d = z3 - z4;
        q[0] = z0 + a + c;
        q[r] = b + 2.0f * d;
        q[2 * r] = a + 4.0f * c;
        q[3 * r] = b + 8.0f * d + z5;
    } else {
        wg_vec z0 = p[0], z1 = p[s], z2 = p[2 * s], z3 = p[3 * s];
        q[0] = z0 + z1 + z2;
        q[r] = z1 - z2 - z3;
    }
}

/* G g: 3 -> alpha (weights). */
WG_INLINE void wg_g(int m, const wg_vec *p, int s, wg_vec *q, int r)
{
    wg_vec g0 = p[0], g1 = p[s], g2 = p[2 * s];
    if (m == 4) {
        wg_vec a = (g0 + g2) * (-1.0f / 6), b = g1 * (1.0f / 6);
        wg_vec c = g0 * (1.0f / 24) + g2 * (1.0f / 6), d = g1 * (1.0f / 12);
        q[0] = g0 * 0.25f;
        q[r] = a - b;
        q[2 * r] = a + b;
        q[3 * r] = c + d;
        q[4 * r] = c - d;
        q[5 * r] = g2;
    } else {
        wg_vec a = (g0 + g2) * 0.5f, b = g1 * 0.5f;
        q[0] = g0;
        q[r] = a + b;
        q[2 * r] = a - b;
        q[3 * r] = g2;
    }
}

/* A y: m -> alpha (output-gradient tiles; the transpose of wg_at). */
WG_INLINE void wg_a(int m, const wg_vec *p, int s, wg_vec *q, int r)
{
    if (m == 4) {
        wg_vec y0 = p[0], y1 = p[s], y2 = p[2 * s], y3 = p[3 * s];
        wg_vec a = y0 + y2, b = y1 + y3, c = y0 + 4.0f * y2, d = 2.0f * y1 + 8.0f * y3;
        q[0] = y0;
        q[r] = a + b;
        q[2 * r] = a - b;
        q[3 * r] = c + d;
        q[4 * r] = c - d;
        q[5 * r] = y3;
    } else {
        wg_vec y0 = p[0], y1 = p[s];
        q[0] = y0;
        q[r] = y0 + y1;
        q[2 * r] = y0 - y1;
        q[3 * r] = -y1;
    }
}

/* G^T z: alpha -> 3 (weight gradients; the transpose of wg_g). */
WG_INLINE void wg_gt(int m, const wg_vec *p, int s, wg_vec *q, int r)
{
    if (m == 4) {
        wg_vec z0 = p[0], z1 = p[s], z2 = p[2 * s], z3 = p[3 * s], z4 = p[4 * s], z5 = p[5 * s];
        wg_vec a = (z1 + z2) * (-1.0f / 6), b = (z2 - z1) * (1.0f / 6), c = z3 + z4, d = z3 - z4;
        q[0] = z0 * 0.25f + a + c * (1.0f / 24);
        q[r] = b + d * (1.0f / 12);
        q[2 * r] = a + c * (1.0f / 6) + z5;
    } else {
        wg_vec z0 = p[0], z1 = p[s], z2 = p[2 * s], z3 = p[3 * s];
        wg_vec a = (z1 + z2) * 0.5f;
        q[0] = z0 + a;
        q[r] = (z1 - z2) * 0.5f;
        q[2 * r] = a + z3;
    }
}

/* The 2-D transforms, one vector of tiles at a time: an n x n tile (entry (i, j) at src[(i * n + j) * ss])
 * to the n' x n' transformed tile (entry (xi, nu) at dst[(xi * n' + nu) * ds]): the 1-D transform of
 * every column, then of every row. NAME_add adds a to every output entry as it is stored, and each
 * stored value times 0 to *chk (NaN from a NaN or inf: finite values leave it zero); NAME adds -0.0f,
 * which leaves every float as it is and which the compiler drops, and checks nothing. */
#define WG_2D(NAME, ONE_D, N_IN, N_OUT)                                                          \
    WG_INLINE void NAME##_add(int m, const float *src, ptrdiff_t ss, float *dst, ptrdiff_t ds, wg_vec a, \
                              wg_vec *chk)                                                       \
    {                                                                                            \
        const int ni = N_IN, no = N_OUT;                                                         \
        wg_vec t[36];                                                                            \
        for (int j = 0; j < ni; j++) {                                                           \
            wg_vec col[6];                                                                       \
            for (int i = 0; i < ni; i++)                                                         \
                col[i] = wg_load(src + (i * ni + j) * ss);                                       \
            ONE_D(m, col, 1, t + j, ni);                   /* t[xi][j], xi < no */               \
        }                                                                                        \
        for (int i = 0; i < no; i++) {                                                           \
            wg_vec row[6];                                                                       \
            ONE_D(m, t + i * ni, 1, row, 1);                                                     \
            for (int k = 0; k < no; k++) {                                                       \
                wg_store(dst + (i * no + k) * ds, row[k] + a);                                   \
                if (chk)                                                                         \
                    *chk += row[k] * 0.0f;                                                       \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    WG_INLINE void NAME(int m, const float *src, ptrdiff_t ss, float *dst, ptrdiff_t ds)          \
    {                                                                                            \
        NAME##_add(m, src, ss, dst, ds, -(wg_vec){0}, NULL);                                     \
    }
WG_2D(wg_input_tile, wg_bt, m + 2, m + 2)    /* B^T d B */
WG_2D(wg_output_tile, wg_at, m + 2, m)       /* A^T M A */
WG_2D(wg_weight_tile, wg_g, 3, m + 2)        /* G g G^T */
WG_2D(wg_gy_tile, wg_a, m, m + 2)            /* A gy A^T */
WG_2D(wg_gw_tile, wg_gt, m + 2, 3)           /* G^T M G */

/* Transpose WG_LANES vectors in place (r[i] lane j <-> r[j] lane i): log2(WG_LANES) rounds, each
 * swapping the off-diagonal b x b blocks of every 2b x 2b block. */
#if defined(__GNUC__) && !defined(__clang__) && WG_LANES > 1
typedef int wg_mask __attribute__((vector_size(4 * WG_LANES)));
#define WG_SWAP(B, LO, HI)                                                                       \
    for (int i = 0; i < WG_LANES; i++)                                                           \
        if (!(i & B)) {                                                                          \
            wg_vec a = r[i], b = r[i + B];                                                       \
            r[i] = __builtin_shuffle(a, b, (wg_mask)LO);                                         \
            r[i + B] = __builtin_shuffle(a, b, (wg_mask)HI);                                     \
        }
WG_INLINE void wg_transpose(wg_vec *r)
{
#if WG_LANES == 16
    WG_SWAP(8, ((wg_mask){0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23}),
            ((wg_mask){8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}))
    WG_SWAP(4, ((wg_mask){0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27}),
            ((wg_mask){4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31}))
    WG_SWAP(2, ((wg_mask){0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29}),
            ((wg_mask){2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}))
    WG_SWAP(1, ((wg_mask){0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30}),
            ((wg_mask){1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}))
#elif WG_LANES == 8
    WG_SWAP(4, ((wg_mask){0, 1, 2, 3, 8, 9, 10, 11}),
            ((wg_mask){4, 5, 6, 7, 12, 13, 14, 15}))
    WG_SWAP(2, ((wg_mask){0, 1, 8, 9, 4, 5, 12, 13}),
            ((wg_mask){2, 3, 10, 11, 6, 7, 14, 15}))
    WG_SWAP(1, ((wg_mask){0, 8, 2, 10, 4, 12, 6, 14}),
            ((wg_mask){1, 9, 3, 11, 5, 13, 7, 15}))
#else
    WG_SWAP(2, ((wg_mask){0, 1, 4, 5}),
            ((wg_mask){2, 3, 6, 7}))
    WG_SWAP(1, ((wg_mask){0, 4, 2, 6}),
            ((wg_mask){1, 5, 3, 7}))
#endif
}
#else
WG_INLINE void wg_transpose(wg_vec *r)
{
    float a[WG_LANES][WG_LANES];
    memcpy(a, r, sizeof a);
    for (int i = 0; i < WG_LANES; i++)
        for (int j = 0; j < WG_LANES; j++)
            ((float *)&r[i])[j] = a[j][i];
}
#endif

/* ---------------------------------------------------------------------------- tile rows
 * One row of tiles of one plane of one sample. A plane is the whole image, or with dilation d one of
 * its d x d interleaved sub-grids, each a dense 3x3 convolution. All fields are ptrdiff_t so that an
 * int64 array of shape (rows, 16) is an array of wg_row. */
typedef struct {
    ptrdiff_t x, y;           /* offsets of the plane's pixel (0, 0) in x and y (channel 0 of the sample) */
    ptrdiff_t h, w, xr, xc;   /* the plane's input size and strides (row, column) */
    ptrdiff_t oh, ow, yr, yc; /* the plane's output size and strides */
    ptrdiff_t top, left;      /* input row and column of the first tile's patch corner (may be < 0) */
    ptrdiff_t oy;             /* output row of the tiles' first row */
    ptrdiff_t tiles;          /* tiles in the row */
    ptrdiff_t t;              /* index of the row's first tile among all tiles */
    ptrdiff_t unused;
} wg_row;

/* s[j * sp + tx] = q[tx * m + j] for j < k (k = m, or 2 < m) and tx < n, a multiple of WG_LANES: the
 * interleaved loads that GCC turns into vector permutes, whole vectors at a time. */
WG_INLINE void wg_split(int m, int k, const float *restrict q, float *restrict s, ptrdiff_t sp, ptrdiff_t n)
{
    float *restrict s0 = s, *restrict s1 = s + sp, *restrict s2 = s + 2 * sp, *restrict s3 = s + 3 * sp;
    for (ptrdiff_t t = 0; t < n; t += WG_LANES, q += m * WG_LANES)
        if (k == 4)
            for (int l = 0; l < WG_LANES; l++) {
                s0[t + l] = q[4 * l];
                s1[t + l] = q[4 * l + 1];
                s2[t + l] = q[4 * l + 2];
                s3[t + l] = q[4 * l + 3];
            }
        else
            for (int l = 0; l < WG_LANES; l++) {
                s0[t + l] = q[m * l];
                s1[t + l] = q[m * l + 1];
            }
}

/* The inverse of wg_split for k = m: q[tx * m + j] = s[j * sp + tx], tx < n (a multiple of WG_LANES). */
WG_INLINE void wg_merge(int m, const float *restrict s, ptrdiff_t sp, float *restrict q, ptrdiff_t n)
{
    const float *restrict s0 = s, *restrict s1 = s + sp, *restrict s2 = s + 2 * sp, *restrict s3 = s + 3 * sp;
    for (ptrdiff_t t = 0; t < n; t += WG_LANES, q += m * WG_LANES)
        if (m == 4)
            for (int l = 0; l < WG_LANES; l++) {
                q[4 * l] = s0[t + l];
                q[4 * l + 1] = s1[t + l];
                q[4 * l + 2] = s2[t + l];
                q[4 * l + 3] = s3[t + l];
            }
        else
            for (int l = 0; l < WG_LANES; l++) {
                q[2 * l] = s0[t + l];
                q[2 * l + 1] = s1[t + l];
            }
}

/* Copy len floats of a plane row from column col0 on (stride xc) into line, zero outside [0, w). */
WG_INLINE void wg_pad_row(const float *row, ptrdiff_t col0, ptrdiff_t len, ptrdiff_t w, ptrdiff_t xc,
                          float *line)
{
    ptrdiff_t lo = wg_min(wg_max(-col0, 0), len), hi = wg_max(wg_min(w - col0, len), lo);
    memset(line, 0, sizeof(float) * lo);
    if (xc == 1)
        memcpy(line + lo, row + col0 + lo, sizeof(float) * (hi - lo));
    else
        for (ptrdiff_t k = lo; k < hi; k++)
            line[k] = row[(col0 + k) * xc];
    memset(line + hi, 0, sizeof(float) * (len - hi));
}

/* AVX2 and scalar builds stage rows of fewer than WG_NARROW tiles, and write them back, several at a
 * time, their tiles side by side in full vectors, at most WG_GROUP tiles a group: one row at a time, a
 * 14 x 14 map's rows of 4 tiles would fill a quarter of each vector. Wider rows pay less for their
 * empty lanes than groups pay for copying their rows (64 channels, batch 8, forward ms, one row at a
 * time against grouped: 56x56, 14 tiles a row, 2.2 against 2.6; 40x40, 10 tiles, 1.1-1.2 against
 * 1.2-1.5; 14x14, 4 tiles, 0.23 against 0.21; dilation 2 at 32x32, 4 tiles, 0.56 against 0.41).
 * AVX-512 moves rows of up to WG_NARROW tiles straight between their planes and the tiles, any column
 * stride (wg_gather_narrow): 128 channels at 28x28 in 4 groups, batch 8, ms, grouped against straight:
 * forward 1.14-1.43 against 0.97-1.04, input gradient 1.32-1.39 against 0.90-1.01, weight gradient
 * median 2.55 against 2.35; rows of 8 tiles, 32 channels at 64x64 with dilation 2, straight and not as
 * wide rows, with wg_even_lanes computed from bounds: forward 1.63 -> 0.87, weight gradient 1.69 ->
 * 0.91. */
#define WG_GROUP (4 * WG_LANES)
#define WG_NARROW (WG_LANES / 2)

/* Floats of the line scratch that wg_stage and wg_scatter take, for rows of at most widest tiles: one
 * zero-padded row, or two lines of a group (wg_gather_group). */
static ptrdiff_t wg_line_floats(int m, ptrdiff_t widest)
{
    return wg_max(wg_round(widest) * m + 2 + WG_LANES, 2 * (WG_GROUP + WG_LANES) * m);
}

#if WG_LANES == 16 && defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__)
/* AVX-512: rows of tiles move between planes and tile-major buffers through masked loads and stores
 * (lanes outside the plane read as zero and are not written) and in-register permutes, 16 tiles at a
 * time, without a copy of the row. */
#define WG_MASKED 1
#define WG_SHUF(a, b, ...) __builtin_shuffle(a, b, (wg_mask){__VA_ARGS__})
/* Shuffle masks: lane l of the result is lane mask[l] of the concatenated pair (32 lanes). Columns 0 and
 * 1 (2 and 3) of 8 tiles of 4 columns; the low (high) 8 lanes of each; even and odd lanes; lanes 0-7
 * (8-15) of each interleaved one by one, two by two. */
#define WG_PHASES01 0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13, 17, 21, 25, 29
#define WG_PHASES23 2, 6, 10, 14, 18, 22, 26, 30, 3, 7, 11, 15, 19, 23, 27, 31
#define WG_LOW_HALVES 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23
#define WG_HIGH_HALVES 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31
#define WG_EVEN 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30
#define WG_ODD 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31
#define WG_ZIP_LOW 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23
#define WG_ZIP_HIGH 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31
#define WG_ZIP2_LOW 0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23
#define WG_ZIP2_HIGH 8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31

/* Lanes [lo, hi) of a vector. */
WG_INLINE __mmask16 wg_lanes(ptrdiff_t lo, ptrdiff_t hi)
{
    lo = wg_max(lo, 0);
    hi = wg_min(hi, 16);
    return hi > lo ? (__mmask16)(((1u << hi) - 1) & ~((1u << lo) - 1)) : 0;
}

/* The 16 floats of a row of w from column c on, zero outside [0, w). */
WG_INLINE wg_vec wg_load_cols(const float *row, ptrdiff_t c, ptrdiff_t w)
{
    if (c >= 0 && c + 16 <= w)
        return wg_load(row + c);
    return (wg_vec)_mm512_maskz_loadu_ps(wg_lanes(-c, w - c), row + c);
}

/* Phases j < k (k = 2 or 4) of 16 tiles of 4 columns, the 64 floats a..d: p[j][l] = (a..d)[4l + j]. */
WG_INLINE void wg_phases4(wg_vec a, wg_vec b, wg_vec c, wg_vec d, int k, wg_vec *p)
{
    wg_vec lo = WG_SHUF(a, b, WG_PHASES01), hi = WG_SHUF(c, d, WG_PHASES01);  /* 8 tiles each */
    p[0] = WG_SHUF(lo, hi, WG_LOW_HALVES);
    p[1] = WG_SHUF(lo, hi, WG_HIGH_HALVES);
    if (k == 4) {
        lo = WG_SHUF(a, b, WG_PHASES23);
        hi = WG_SHUF(c, d, WG_PHASES23);
        p[2] = WG_SHUF(lo, hi, WG_LOW_HALVES);
        p[3] = WG_SHUF(lo, hi, WG_HIGH_HALVES);
    }
}

/* Phases 0, 1 of 16 tiles of 2 columns, the 32 floats a, b. */
WG_INLINE void wg_phases2(wg_vec a, wg_vec b, wg_vec *p)
{
    p[0] = WG_SHUF(a, b, WG_EVEN);
    p[1] = WG_SHUF(a, b, WG_ODD);
}

/* The even lanes 2l for l in [lo, hi) (clamped to [0, 8)): the floats of up to 8 columns of a row whose
 * columns are two floats apart. (Computed from the bounds: moving a mask's bits one by one cost the
 * dilated layers' staging more than their loads.) */
WG_INLINE __mmask16 wg_even_lanes(ptrdiff_t lo, ptrdiff_t hi)
{
    lo = wg_max(lo, 0);
    hi = wg_min(hi, 8);
    return hi > lo ? (__mmask16)(((1u << 2 * hi) - 1) & ~((1u << 2 * lo) - 1) & 0x5555u) : 0;
}

/* The 16 floats of a row of w columns two floats apart (a dilation sub-grid) from column c on, zero
 * outside [0, w): two masked loads (only the columns' own floats are read) and the even lanes. */
WG_INLINE wg_vec wg_load_cols2(const float *row, ptrdiff_t c, ptrdiff_t w)
{
    int inside = c >= 0 && c + 16 <= w;
    wg_vec a = (wg_vec)_mm512_maskz_loadu_ps(inside ? 0x5555 : wg_even_lanes(-c, w - c), row + 2 * c);
    wg_vec b = (wg_vec)_mm512_maskz_loadu_ps(inside ? 0x5555 : wg_even_lanes(-c - 8, w - c - 8),
                                             row + 2 * c + 16);
    return WG_SHUF(a, b, WG_EVEN);
}

/* Lane l: l * step. */
WG_INLINE __m512i wg_strides(ptrdiff_t step)
{
    return _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                              _mm512_set1_epi32((int)step));
}

/* The 16 floats of a row of w columns xc floats apart from column c on, zero outside [0, w): one
 * masked load (xc = 1), two and a permute (xc = 2), a masked gather (wider dilation sub-grids). */
WG_INLINE wg_vec wg_load_colsx(const float *row, ptrdiff_t c, ptrdiff_t w, ptrdiff_t xc)
{
    if (xc == 1)
        return wg_load_cols(row, c, w);
    if (xc == 2)
        return wg_load_cols2(row, c, w);
    return (wg_vec)_mm512_mask_i32gather_ps(_mm512_setzero_ps(), wg_lanes(-c, w - c), wg_strides(xc),
                                            row + c * xc, 4);
}

/* Stage one plane row (columns xc floats apart) of count tiles (a multiple of 16) as wg_split does, from
 * column col0 on, zero outside [0, w). */
WG_INLINE void wg_split_row(int m, int n, const float *row, ptrdiff_t col0, ptrdiff_t w, ptrdiff_t xc,
                            float *s, ptrdiff_t sp, ptrdiff_t count)
{
    for (ptrdiff_t t = 0; t < count; t += 16) {
        ptrdiff_t c = col0 + t * m;
        wg_vec p[6];
        if (m == 4) {
            wg_phases4(wg_load_colsx(row, c, w, xc), wg_load_colsx(row, c + 16, w, xc),
                       wg_load_colsx(row, c + 32, w, xc), wg_load_colsx(row, c + 48, w, xc), 4, p);
            if (n > 4)  /* the next tile's first two columns: phases 0, 1 four columns on */
                wg_phases4(wg_load_colsx(row, c + 4, w, xc), wg_load_colsx(row, c + 20, w, xc),
                           wg_load_colsx(row, c + 36, w, xc), wg_load_colsx(row, c + 52, w, xc), 2, p + 4);
        } else {
            wg_phases2(wg_load_colsx(row, c, w, xc), wg_load_colsx(row, c + 16, w, xc), p);
            if (n > 2)
                wg_phases2(wg_load_colsx(row, c + 2, w, xc), wg_load_colsx(row, c + 18, w, xc), p + 2);
        }
        for (int j = 0; j < n; j++)
            wg_store(s + j * sp + t, p[j]);
    }
}

/* row[l * yc] = lane l of v for l < k (yc > 1: the columns of a dilation sub-grid; the floats between
 * are other sub-grids' and are not written). */
WG_INLINE void wg_put_cols(float *row, ptrdiff_t yc, wg_vec v, ptrdiff_t k)
{
    if (yc == 1) {
        _mm512_mask_storeu_ps(row, wg_lanes(0, k), (__m512)v);
    } else if (yc == 2) {
        _mm512_mask_storeu_ps(row, k >= 16 ? 0x5555 : wg_even_lanes(0, k), (__m512)WG_SHUF(v, v, WG_ZIP_LOW));
        _mm512_mask_storeu_ps(row + 16, k >= 16 ? 0x5555 : wg_even_lanes(0, k - 8),
                              (__m512)WG_SHUF(v, v, WG_ZIP_HIGH));
    } else {
        _mm512_mask_i32scatter_ps(row, wg_lanes(0, k), wg_strides(yc), (__m512)v, 4);
    }
}

/* The inverse for output rows: row[(tx * m + j) * yc] = s[j * sp + tx] for the columns in [0, w), tx <
 * count (a multiple of 16); other columns (and the floats between them) are not written. */
WG_INLINE void wg_merge_row(int m, const float *s, ptrdiff_t sp, float *row, ptrdiff_t yc, ptrdiff_t w,
                            ptrdiff_t count)
{
    for (ptrdiff_t t = 0; t < count; t += 16) {
        ptrdiff_t c = t * m;
        wg_vec p0 = wg_load(s + t), p1 = wg_load(s + sp + t), out[4];
        if (m == 4) {
            wg_vec p2 = wg_load(s + 2 * sp + t), p3 = wg_load(s + 3 * sp + t);
            wg_vec a = WG_SHUF(p0, p1, WG_ZIP_LOW), b = WG_SHUF(p2, p3, WG_ZIP_LOW);    /* tiles 0-7 */
            wg_vec e = WG_SHUF(p0, p1, WG_ZIP_HIGH), f = WG_SHUF(p2, p3, WG_ZIP_HIGH);  /* tiles 8-15 */
            out[0] = WG_SHUF(a, b, WG_ZIP2_LOW);
            out[1] = WG_SHUF(a, b, WG_ZIP2_HIGH);
            out[2] = WG_SHUF(e, f, WG_ZIP2_LOW);
            out[3] = WG_SHUF(e, f, WG_ZIP2_HIGH);
        } else {
            out[0] = WG_SHUF(p0, p1, WG_ZIP_LOW);
            out[1] = WG_SHUF(p0, p1, WG_ZIP_HIGH);
        }
        for (int v = 0; v < m; v++) {
            ptrdiff_t k = w - c - 16 * v;  /* columns of this vector inside the row */
            if (k >= 16 && yc == 1)
                wg_store(row + c + 16 * v, out[v]);
            else if (k > 0)
                wg_put_cols(row + (c + 16 * v) * yc, yc, out[v], wg_min(k, 16));
        }
    }
}
#endif

/* The plane a row of tiles reads: its input plane (patches), or with gy its output plane (output-
 * gradient tiles). */
typedef struct {
    const float *plane;
    ptrdiff_t row0, col0, h, w, xr, xc;
} wg_plane;

WG_INLINE wg_plane wg_plane_of(int gy, const float *x, const wg_row *r)
{
    if (gy)
        return (wg_plane){x + r->y, r->oy, 0, r->oh, r->ow, r->yr, r->yc};
    return (wg_plane){x + r->x, r->top, r->left, r->h, r->w, r->xr, r->xc};
}

/* line[k] = plane row u at column col0 + k, k < len, zero outside the plane; may write up to a vector
 * past len. */
WG_INLINE void wg_plane_cols(const wg_plane *p, ptrdiff_t u, ptrdiff_t col0, ptrdiff_t len, float *line)
{
    if (u < 0 || u >= p->h) {
        memset(line, 0, sizeof(float) * len);
        return;
    }
    wg_pad_row(p->plane + u * p->xr, col0, len, p->w, p->xc, line);
}

#ifdef WG_MASKED
/* Shuffle mask: lane l < 8 is float M * l + J of a pair of vectors, phase J of 8 tiles of M columns
 * (lanes 8-15: don't care). */
#define WG_PHASE(M, J) (J), (M) + (J), 2 * (M) + (J), 3 * (M) + (J), 4 * (M) + (J), 5 * (M) + (J),       \
                       6 * (M) + (J), 7 * (M) + (J), 0, 0, 0, 0, 0, 0, 0, 0

/* v with lane 7 set to f. */
WG_INLINE wg_vec wg_lane7(wg_vec v, float f)
{
    return (wg_vec)_mm512_mask_mov_ps((__m512)v, 0x80, _mm512_set1_ps(f));
}

/* Stage one narrow row (at most 8 tiles: a patch row is at most 34 columns) of plane p as wg_gather
 * does, straight from the plane: per patch row, two vectors of columns and a permute per entry, each
 * stored as a whole vector (its lanes past the row's tiles belong to the rows staged after it); the
 * last columns of a row of 8 patches of 6 (32 and 33) go in as scalars. */
WG_INLINE void wg_gather_narrow(int m, int n, const wg_plane *p, ptrdiff_t tiles, float *s, ptrdiff_t sp)
{
    for (int i = 0; i < n; i++) {
        ptrdiff_t u = p->row0 + i;
        wg_vec a = {0}, b = {0}, q[6];
        float e[2] = {0, 0};
        if (u >= 0 && u < p->h) {
            const float *row = p->plane + u * p->xr;
            ptrdiff_t c = p->col0;
            a = wg_load_colsx(row, c, p->w, p->xc);
            if (m == 4 || tiles * m + n - m > 16)
                b = wg_load_colsx(row, c + 16, p->w, p->xc);
            for (int k = 0; k < 2; k++)
                if (tiles * m + n - m > 32 + k && c + 32 + k >= 0 && c + 32 + k < p->w)
                    e[k] = row[(c + 32 + k) * p->xc];
        }
        if (m == 4) {
            q[0] = WG_SHUF(a, b, WG_PHASE(4, 0));
            q[1] = WG_SHUF(a, b, WG_PHASE(4, 1));
            q[2] = WG_SHUF(a, b, WG_PHASE(4, 2));
            q[3] = WG_SHUF(a, b, WG_PHASE(4, 3));
            if (n > 4) {  /* the eighth tile's phases 4 and 5 (lane 7) are columns 32 and 33 */
                q[4] = wg_lane7(WG_SHUF(a, b, WG_PHASE(4, 4)), e[0]);
                q[5] = wg_lane7(WG_SHUF(a, b, WG_PHASE(4, 5)), e[1]);
            }
        } else {
            q[0] = WG_SHUF(a, b, WG_PHASE(2, 0));
            q[1] = WG_SHUF(a, b, WG_PHASE(2, 1));
            if (n > 2) {
                q[2] = WG_SHUF(a, b, WG_PHASE(2, 2));
                q[3] = WG_SHUF(a, b, WG_PHASE(2, 3));
            }
        }
        for (int j = 0; j < n; j++)
            wg_store(s + (i * n + j) * sp, q[j]);
    }
}

/* The inverse for an output row of a narrow row of tiles: row[(tx * m + j) * yc] = s[j * sp + tx]
 * for the len (at most 8 m) columns of the row. */
WG_INLINE void wg_merge_narrow(int m, const float *s, ptrdiff_t sp, float *row, ptrdiff_t yc, ptrdiff_t len)
{
    wg_vec p0 = wg_load(s), p1 = wg_load(s + sp);
    if (m == 2) {
        wg_put_cols(row, yc, WG_SHUF(p0, p1, WG_ZIP_LOW), len);
        return;
    }
    wg_vec a = WG_SHUF(p0, p1, WG_ZIP_LOW), b = WG_SHUF(wg_load(s + 2 * sp), wg_load(s + 3 * sp), WG_ZIP_LOW);
    wg_put_cols(row, yc, WG_SHUF(a, b, WG_ZIP2_LOW), len);
    if (len > 16)
        wg_put_cols(row + 16 * yc, yc, WG_SHUF(a, b, WG_ZIP2_HIGH), len - 16);
}
#endif

/* Stage the n x n patches of one row of tiles tiles long (n = m + 2: input patches; n = m: output-
 * gradient tiles) of plane p: s[(i * n + j) * sp + tx] = plane[row0 + i][col0 + tx * m + j], zero outside
 * the plane, for tx < wg_round(tiles): up to a vector past the row's tiles, which the next row
 * overwrites (or the stage's zero tail, or its skew). Unless AVX-512 splits it in place, each plane row
 * is first copied, zero-padded, into line (wg_line_floats). */
WG_INLINE void wg_gather(int m, int n, const wg_plane *p, ptrdiff_t tiles, float *line, float *s, ptrdiff_t sp)
{
    ptrdiff_t count = wg_round(tiles);
    for (int i = 0; i < n; i++) {
        float *si = s + (ptrdiff_t)i * n * sp;
        ptrdiff_t u = p->row0 + i;
        if (u < 0 || u >= p->h) {
            for (int j = 0; j < n; j++)
                memset(si + j * sp, 0, sizeof(float) * tiles);
            continue;
        }
#ifdef WG_MASKED
        wg_split_row(m, n, p->plane + u * p->xr, p->col0, p->w, p->xc, si, sp, count);
#else
        wg_plane_cols(p, u, p->col0, count * m + n - m, line);
        wg_split(m, m, line, si, sp, count);
        if (n > m)  /* the two columns past a tile's m are the next tile's first two */
            wg_split(m, 2, line + m, si + m * sp, sp, count);
#endif
    }
}

/* Prefetch plane rows row0 + first .. row0 + n - 1 of row r of tiles (n = m + 2: input patches; m:
 * output-gradient tiles), the columns it reads: rows on their way from memory, which the hardware
 * prefetcher does not see coming where rows of tiles move to another plane (sample, channel). */
WG_INLINE void wg_prefetch(int m, int n, const wg_plane *p, ptrdiff_t tiles, int first)
{
    ptrdiff_t c0 = wg_max(p->col0, 0), c1 = wg_min(p->w, p->col0 + tiles * m + n - m);
    for (int i = first; i < n; i++) {
        ptrdiff_t u = p->row0 + i;
        if (u >= 0 && u < p->h)
            for (ptrdiff_t c = c0 * p->xc; c < c1 * p->xc; c += 64 / sizeof(float))
                __builtin_prefetch(p->plane + u * p->xr + c);
    }
}

/* Stage the narrow rows r0..r1 (consecutive, at most WG_GROUP tiles in all) as wg_gather stages one
 * row, their tiles side by side: each patch row of every tile row goes into line a (the m columns
 * of its tiles) and, for input patches (n > m), line b (the two columns past each tile's m: the next
 * tile's first two), and the lines are split into s as one row of tiles. */
WG_INLINE void wg_gather_group(int m, int n, int gy, const float *x, const wg_row *r0, const wg_row *r1,
                               const wg_row *last, float *line, float *s, ptrdiff_t sp)
{
    ptrdiff_t count = wg_round(r1->t + r1->tiles - r0->t);
    float *a = line, *b = line + (WG_GROUP + WG_LANES) * m;
    /* the next group's rows, on their way from memory: narrow rows of many planes (samples, channels)
     * are too short for the hardware prefetcher */
    for (const wg_row *r = r1 + 1; r <= last && r <= r1 + (r1 - r0) + 1; r++) {
        wg_plane p = wg_plane_of(gy, x, r);
        wg_prefetch(m, n, &p, r->tiles, 0);
    }
    for (int i = 0; i < n; i++) {
        for (const wg_row *r = r0; r <= r1; r++) {
            wg_plane p = wg_plane_of(gy, x, r);
            ptrdiff_t at = (r->t - r0->t) * m, len = r->tiles * m;
            wg_plane_cols(&p, p.row0 + i, p.col0, len, a + at);
            if (n > m)
                wg_plane_cols(&p, p.row0 + i, p.col0 + m, len, b + at);
        }
        float *si = s + (ptrdiff_t)i * n * sp;
        wg_split(m, m, a, si, sp, count);
        if (n > m)
            wg_split(m, 2, b, si + m * sp, sp, count);
    }
}

/* Whether rows of at most WG_NARROW tiles go straight between their planes and the tiles, not in
 * groups (wg_gather_narrow, wg_merge_narrow), and strided rows split in registers, not through scratch
 * lines: AVX-512. */
#ifdef WG_MASKED
#define WG_STRAIGHT 1
#else
#define WG_STRAIGHT 0
#endif

/* The last row of the group of narrow rows that starts at r (r itself when it is wide), rows up to
 * last: consecutive narrow rows whose tiles, from lo on, number at most WG_GROUP. */
WG_INLINE const wg_row *wg_group_end(const wg_row *r, const wg_row *last, ptrdiff_t lo)
{
    if (r->tiles >= WG_NARROW || WG_STRAIGHT)
        return r;
    while (r < last && r[1].tiles < WG_NARROW && r[1].t + r[1].tiles - lo <= WG_GROUP)
        r++;
    return r;
}

/* Stage the patches of every tile of rows[0, nrows) of one plane-0 pointer x (input patches from
 * the rows' input planes, or with gy the output-gradient tiles from their output planes), entry e of
 * tile t at s[e * wg_skew(sp) + t]; tiles are counted from t0 and zero from the last one up to
 * sp = wg_round(tiles). Returns sp. line: wg_line_floats(m, the widest row) floats. */
WG_INLINE ptrdiff_t wg_stage(int m, int gy, const float *x, const float *next, const wg_row *rows,
                             ptrdiff_t nrows, ptrdiff_t t0, float *line, float *s)
{
    int n = gy ? m : m + 2;
    const wg_row *last = rows + nrows - 1;
    ptrdiff_t count = last->t + last->tiles - t0, sp = wg_round(count), ss = wg_skew(sp);
    for (const wg_row *r = rows; r <= last; r++) {
        const wg_row *end = wg_group_end(r, last, r->t);
        if (end > r) {  /* (which prefetches the next group's rows) */
            wg_gather_group(m, n, gy, x, r, end, last, line, s + (r->t - t0), ss);
            r = end;
            continue;
        }
        wg_plane p = wg_plane_of(gy, x, r);
        if (next) {  /* this row's plane rows in the channel staged next, a channel's staging ahead
                      * (than the next row's: grouped_3x3 with its operands in memory 7-12% faster,
                      * vgg_3x3's forward + backward 4% in 9 of 10 rounds) */
            wg_plane q = wg_plane_of(gy, next, r);
            int seen = r > rows && r[-1].x == r->x && r[-1].y == r->y && r[-1].top + m == r->top;
            wg_prefetch(m, n, &q, r->tiles, seen ? n - m : 0);
        } else if (r < last) {  /* the next row's new plane rows (all of them on another plane) */
            wg_plane q = wg_plane_of(gy, x, r + 1);
            wg_prefetch(m, n, &q, r[1].tiles, q.plane == p.plane && q.row0 == p.row0 + m ? n - m : 0);
        }
#ifdef WG_MASKED
        if (r->tiles <= WG_NARROW) {
            wg_gather_narrow(m, n, &p, r->tiles, s + (r->t - t0), ss);
            continue;
        }
#endif
        wg_gather(m, n, &p, r->tiles, line, s + (r->t - t0), ss);
    }
    for (int k = 0; k < n * n; k++)
        memset(s + k * ss + count, 0, sizeof(float) * (sp - count));
    return sp;
}

/* Transformed input tiles of one channel: v[(t / L) * vt + xi * vx + t % L] = (B^T d_t B)[xi] (L =
 * WG_LANES; tiles past the last are zero). s: stage of alpha^2 * wg_skew(wg_round(tiles)) floats. */
WG_INLINE void wg_input_channel_m(int m, const float *x, const float *next, const wg_row *rows,
                                  ptrdiff_t nrows, ptrdiff_t t0, float *line, float *s, float *v, ptrdiff_t vt,
                                  ptrdiff_t vx)
{
    ptrdiff_t sp = wg_stage(m, 0, x, next, rows, nrows, t0, line, s);
    for (ptrdiff_t t = 0; t < sp; t += WG_LANES)
        wg_input_tile(m, s + t, wg_skew(sp), v + t / WG_LANES * vt, vx);
}
static void wg_input_channel(int m, const float *x, const float *next, const wg_row *rows, ptrdiff_t nrows,
                             ptrdiff_t t0, float *line, float *s, float *v, ptrdiff_t vt, ptrdiff_t vx)
{
    if (m == 4)
        wg_input_channel_m(4, x, next, rows, nrows, t0, line, s, v, vt, vx);
    else
        wg_input_channel_m(2, x, next, rows, nrows, t0, line, s, v, vt, vx);
}

/* row[k * yc] = src[k] for k < len: an output row's columns, yc floats apart. */
WG_INLINE void wg_put_row(float *row, ptrdiff_t yc, const float *src, ptrdiff_t len)
{
    if (yc == 1)
        memcpy(row, src, sizeof(float) * len);
    else
        for (ptrdiff_t k = 0; k < len; k++)
            row[k * yc] = src[k];
}

/* wg_scatter's tiles [lo, hi) of the narrow rows r0..r1 (o at tile lo): every output row of the
 * group merged at once into line, then each tile row's part copied to its plane. */
WG_INLINE void wg_scatter_group(int m, const float *o, ptrdiff_t os, ptrdiff_t lo, ptrdiff_t hi,
                                const wg_row *r0, const wg_row *r1, ptrdiff_t t0, float *y, float *line)
{
    ptrdiff_t count = wg_round(hi - lo);
    for (int i = 0; i < m; i++) {
        wg_merge(m, o + i * m * os, os, line, count);
        for (const wg_row *r = r0; r <= r1; r++) {
            ptrdiff_t first = r->t - t0, a = wg_max(lo, first), e = wg_min(hi, first + r->tiles);
            if (a >= e || r->oy + i >= r->oh)
                continue;
            ptrdiff_t tx0 = a - first, len = wg_min((e - first) * m, r->ow) - tx0 * m;
            float *row = y + r->y + (r->oy + i) * r->yr + tx0 * m * r->yc;
            wg_put_row(row, r->yc, line + (a - lo) * m, len);
        }
    }
}

/* Write output tiles [t_lo, t_hi) (counted from t0) of one channel: o[(i * m + j) * os + t - t_lo]
 * holds output (i, j) of tile t (o readable a vector of tiles past t_hi); y points at the channel's
 * sample-0 plane. Output rows go through line (wg_line_floats floats) unless written straight. */
WG_INLINE void wg_scatter(int m, const float *o, ptrdiff_t os, ptrdiff_t t_lo, ptrdiff_t t_hi,
                          const wg_row *rows, ptrdiff_t nrows, ptrdiff_t t0, float *y, float *line)
{
    const wg_row *last = rows + nrows - 1;
    for (const wg_row *r = rows; r <= last; r++) {
        ptrdiff_t first = r->t - t0, lo = wg_max(t_lo, first), hi = wg_min(t_hi, first + r->tiles);
        if (lo >= hi)
            continue;
        const wg_row *end = wg_group_end(r, last, lo + t0);
        if (end > r) {  /* narrow rows: merged together into line, then copied row by row */
            ptrdiff_t ghi = wg_min(t_hi, end->t + end->tiles - t0);
            wg_scatter_group(m, o + (lo - t_lo), os, lo, ghi, r, end, t0, y, line);
            r = end;
            continue;
        }
        ptrdiff_t tx0 = lo - first, len = wg_min((hi - first) * m, r->ow) - tx0 * m;
        for (int i = 0; i < m && r->oy + i < r->oh; i++) {
            float *row = y + r->y + (r->oy + i) * r->yr + tx0 * m * r->yc;
#ifdef WG_MASKED
            if (r->tiles <= WG_NARROW)
                wg_merge_narrow(m, o + i * m * os + (lo - t_lo), os, row, r->yc, len);
            else
                wg_merge_row(m, o + i * m * os + (lo - t_lo), os, row, r->yc, len, wg_round(hi - lo));
#else
            wg_merge(m, o + i * m * os + (lo - t_lo), os, line, wg_round(hi - lo));
            wg_put_row(row, r->yc, line, len);
#endif
        }
    }
}

/* ----------------------------------------------------------------------- matrix products */

/* out[o * os + q * L + l] = sum over i < ni, j < nj of b[i * bi + j * bj + o * bo] *
 * v[i * vi + j * vj + q * vq + l], for rows o < nk and vectors q < nt (L = WG_LANES): nk x nt
 * accumulators stay in registers through the whole reduction. */
WG_INLINE void wg_mul_tile(const float *b, ptrdiff_t bi, ptrdiff_t bj, int bo, const float *v, ptrdiff_t vi,
                           ptrdiff_t vj, ptrdiff_t vq, ptrdiff_t ni, ptrdiff_t nj, int nk, int nt, float *out,
                           ptrdiff_t os)
{
    wg_vec acc[WG_MAX_NK][2];
    for (int o = 0; o < nk; o++)
        for (int q = 0; q < nt; q++)
            acc[o][q] = (wg_vec){0};
    for (ptrdiff_t i = 0; i < ni; i++) {
        const float *bp = b + i * bi, *vp = v + i * vi;
        for (ptrdiff_t j = 0; j < nj; j++, bp += bj, vp += vj) {
            wg_vec v0 = wg_load(vp), v1 = nt > 1 ? wg_load(vp + vq) : v0;
            for (int o = 0; o < nk; o++) {
                acc[o][0] += bp[o * bo] * v0;
                if (nt > 1)
                    acc[o][1] += bp[o * bo] * v1;
            }
        }
    }
    for (int o = 0; o < nk; o++)
        for (int q = 0; q < nt; q++)
            wg_store(out + o * os + q * WG_LANES, acc[o][q]);
}

#define WG_MUL_CASE(NK) case NK: wg_mul_tile(b, bi, bj, ROW, v, vi, vj, vq, ni, nj, NK, NT, out, os); return;
/* The cases 1..N of a switch on nk, for N = WG_NK1 and WG_NK2 (each register tile its own code). */
#define WG_MUL_4 WG_MUL_CASE(1) WG_MUL_CASE(2) WG_MUL_CASE(3) WG_MUL_CASE(4)
#define WG_MUL_6 WG_MUL_4 WG_MUL_CASE(5) WG_MUL_CASE(6)
#define WG_MUL_8 WG_MUL_6 WG_MUL_CASE(7) WG_MUL_CASE(8)
#define WG_MUL_12 WG_MUL_8 WG_MUL_CASE(9) WG_MUL_CASE(10) WG_MUL_CASE(11) WG_MUL_CASE(12)
#define WG_MUL_14 WG_MUL_12 WG_MUL_CASE(13) WG_MUL_CASE(14)
#define WG_CAT_(a, b) a##b
#define WG_CAT(a, b) WG_CAT_(a, b)
#define WG_MUL_NK2 WG_CAT(WG_MUL_, WG_NK2)
#define WG_MUL_NK1 WG_CAT(WG_MUL_, WG_NK1)

/* wg_mul_tile with constant nk and row stride bo (1, or WG_LANES): nk <= WG_NK2 for nt = 2 vectors,
 * nk <= WG_NK1 for one. */
#define WG_MUL_ANY(NAME, BO)                                                                          \
    static void NAME(const float *b, ptrdiff_t bi, ptrdiff_t bj, const float *v, ptrdiff_t vi,          \
                     ptrdiff_t vj, ptrdiff_t vq, ptrdiff_t ni, ptrdiff_t nj, int nk, int nt, float *out, \
                     ptrdiff_t os)                                                                    \
    {                                                                                                 \
        enum { ROW = BO };                                                                            \
        if (nt == 2) {                                                                                \
            enum { NT = 2 };                                                                          \
            switch (nk) { WG_MUL_NK2 }                                                                \
        } else {                                                                                      \
            enum { NT = 1 };                                                                          \
            switch (nk) { WG_MUL_NK1 }                                                                \
        }                                                                                             \
    }
WG_MUL_ANY(wg_mul_rows, 1)           /* rows adjacent: transformed weights (forward) */
WG_MUL_ANY(wg_mul_lanes, WG_LANES)   /* rows a vector apart: transformed tiles (weight gradient) */

/* nk rows in blocks of nearly equal size, at most most rows each: calls body(first, count). */
#define WG_ROW_BLOCKS(NK, MOST, FIRST, COUNT, BODY)                                \
    for (ptrdiff_t FIRST = 0, blocks_ = ((NK) + (MOST) - 1) / (MOST); FIRST < (NK); blocks_--) { \
        int COUNT = (int)(((NK) - FIRST + blocks_ - 1) / blocks_);                 \
        BODY;                                                                      \
        FIRST += COUNT;                                                            \
    }

/* ------------------------------------------------------------------------ forward pass */

/* Transformed weights of a block of output channels: u[xi * wg_skew(cin * us) + c * us + o] =
 * (G g G^T)[xi] of the kernel of output channel k0 + o and input channel c, o < nk (columns up to us
 * are zero). The
 * kernel tap (i, j) of (k, c) is w[k * ks + c * cs + 3i + j], or with flip w[... + 8 - 3i - j]. */
WG_INLINE void wg_weights_m(int m, const float *w, ptrdiff_t ks, ptrdiff_t cs, int flip, ptrdiff_t k0,
                       ptrdiff_t nk, ptrdiff_t cin, float *u, ptrdiff_t us)
{
    float taps[9 * WG_LANES];
    for (ptrdiff_t o0 = 0; o0 < us; o0 += WG_LANES)
        for (ptrdiff_t c = 0; c < cin; c++) {
#if WG_LANES == 16 && defined(__AVX512F__)  /* a kernel per vector, transposed to a vector per tap */
            wg_vec r[WG_LANES];
            for (int l = 0; l < WG_LANES; l++) {
                const float *g = w + (k0 + o0 + l) * ks + c * cs;
                if (o0 + l < nk && c + 16 < cin)
                    __builtin_prefetch(g + 16 * cs);  /* 16 rows far apart outrun the prefetcher */
                r[l] = o0 + l < nk ? (wg_vec)_mm512_maskz_loadu_ps(0x1ff, g) : (wg_vec){0};
            }
            wg_transpose(r);
            for (int k = 0; k < 9; k++)
                wg_store(taps + k * WG_LANES, r[flip ? 8 - k : k]);
#else
            for (int l = 0; l < WG_LANES; l++) {
                const float *g = w + (k0 + o0 + l) * ks + c * cs;
                for (int k = 0; k < 9; k++)
                    taps[k * WG_LANES + l] = o0 + l < nk ? g[flip ? 8 - k : k] : 0.0f;
            }
#endif
            wg_weight_tile(m, taps, WG_LANES, u + c * us + o0, wg_skew(cin * us));
        }
}
static void wg_weights(int m, const float *w, ptrdiff_t ks, ptrdiff_t cs, int flip, ptrdiff_t k0,
                       ptrdiff_t nk, ptrdiff_t cin, float *u, ptrdiff_t us)
{
    if (m == 4)
        wg_weights_m(4, w, ks, cs, flip, k0, nk, cin, u, us);
    else
        wg_weights_m(2, w, ks, cs, flip, k0, nk, cin, u, us);
}

/* M[xi][o][t] = sum_c u[xi][c][o] v[xi][c][t] for o < nk, tiles t < n (rounded up to vectors): u as
 * wg_weights writes it, v as wg_input_channel writes it (vt, vx: its strides; v at the first tile's
 * vector), m_[xi * wg_skew(us * ms) + o * ms + t]. */
WG_INLINE void wg_multiply_m(int m, const float *u, ptrdiff_t us, ptrdiff_t nk, ptrdiff_t cin, const float *v,
                        ptrdiff_t vt, ptrdiff_t vx, ptrdiff_t n, float *m_, ptrdiff_t ms)
{
    int a2 = (m + 2) * (m + 2);
    ptrdiff_t np = wg_round(n);
    for (int xi = 0; xi < a2; xi++) {
        const float *ux = u + xi * wg_skew(cin * us);
        float *mx = m_ + xi * wg_skew(us * ms);
        ptrdiff_t t = 0;
        for (; t + 2 * WG_LANES <= np; t += 2 * WG_LANES)
            WG_ROW_BLOCKS(nk, WG_NK2, o, rows,
                          wg_mul_rows(ux + o, 0, us, v + t / WG_LANES * vt + xi * vx, 0, WG_LANES, vt, 1, cin,
                                      rows, 2, mx + o * ms + t, ms))
        for (; t < np; t += WG_LANES)
            WG_ROW_BLOCKS(nk, WG_NK1, o, rows,
                          wg_mul_rows(ux + o, 0, us, v + t / WG_LANES * vt + xi * vx, 0, WG_LANES, vt, 1, cin,
                                      rows, 1, mx + o * ms + t, ms))
    }
}
static void wg_multiply(int m, const float *u, ptrdiff_t us, ptrdiff_t nk, ptrdiff_t cin, const float *v,
                        ptrdiff_t vt, ptrdiff_t vx, ptrdiff_t n, float *m_, ptrdiff_t ms)
{
    if (m == 4)
        wg_multiply_m(4, u, us, nk, cin, v, vt, vx, n, m_, ms);
    else
        wg_multiply_m(2, u, us, nk, cin, v, vt, vx, n, m_, ms);
}

/* Prefetch the output rows of the rows of tiles among rows[0, nrows) that tiles [t_lo, t_hi) (counted
 * from t0) touch, in the channel whose sample-0 plane is y: in a training step results land on memory
 * no kernel touched for a while, and each output row's first store would wait for its lines. Forward +
 * backward steps, alternating in one process, ms: grouped_3x3 3.11 -> 2.98 (faster in 14 of 14 rounds),
 * vgg_3x3 8.36 -> 7.93, the dilated layer 3.21 -> 3.01; a pass alone, repeated (its output in cache
 * from the call before), within 2% either way. */
WG_INLINE void wg_prefetch_output(int m, const wg_row *rows, ptrdiff_t nrows, ptrdiff_t t0, ptrdiff_t t_lo,
                                  ptrdiff_t t_hi, float *y)
{
    for (const wg_row *r = rows; r < rows + nrows; r++)
        if (r->t - t0 < t_hi && r->t - t0 + r->tiles > t_lo) {
            wg_plane q = wg_plane_of(1, y, r);
            wg_prefetch(m, m, &q, r->tiles, 0);
        }
}

/* Output tiles [t_lo, t_lo + n) of channels k < nk from m_ (as wg_multiply writes it), plus bias,
 * into y (channel k's sample-0 plane at y + k * yk); o: a stage of m * m * ms floats, a vector, then a
 * line of wg_round(tiles) * m floats (wg_scatter). Every output (before the bias, the cropped ones of
 * edge tiles too) times 0 is added to chk[0, WG_LANES): NaN there where one is not finite. */
WG_INLINE void wg_output_m(int m, const float *m_, ptrdiff_t us, ptrdiff_t ms, ptrdiff_t nk,
                            const float *bias, ptrdiff_t t_lo, ptrdiff_t n, const wg_row *rows,
                            ptrdiff_t nrows, ptrdiff_t t0, float *o, float *y, ptrdiff_t yk, float *chk)
{
    wg_vec seen = wg_load(chk);
    for (ptrdiff_t k = 0; k < nk; k++) {
        wg_vec b = -(wg_vec){0} + (bias ? bias[k] : -0.0f);  /* -0.0f: adds nothing */
        if (k + 1 < nk)  /* the next channel's rows, a channel ahead */
            wg_prefetch_output(m, rows, nrows, t0, t_lo, t_lo + n, y + (k + 1) * yk);
        for (ptrdiff_t t = 0; t < n; t += WG_LANES)
            wg_output_tile_add(m, m_ + k * ms + t, wg_skew(us * ms), o + t, ms, b, &seen);
        wg_scatter(m, o, ms, t_lo, t_lo + n, rows, nrows, t0, y + k * yk, o + m * m * ms + WG_LANES);
    }
    wg_store(chk, seen);
}
static void wg_output(int m, const float *m_, ptrdiff_t us, ptrdiff_t ms, ptrdiff_t nk, const float *bias,
                      ptrdiff_t t_lo, ptrdiff_t n, const wg_row *rows, ptrdiff_t nrows, ptrdiff_t t0,
                      float *o, float *y, ptrdiff_t yk, float *chk)
{
    if (m == 4)
        wg_output_m(4, m_, us, ms, nk, bias, t_lo, n, rows, nrows, t0, o, y, yk, chk);
    else
        wg_output_m(2, m_, us, ms, nk, bias, t_lo, n, rows, nrows, t0, o, y, yk, chk);
}

/* --------------------------------------------------------------------- weight gradient */

/* Transformed output-gradient tiles of nk <= WG_LANES channels (channel k's sample-0 plane at
 * gy + k * yk), channels in lanes: z[xi * zx + t * WG_LANES + k] = (A gy_t A^T)[xi] for every tile t
 * (sp tiles, rounded up to vectors, zero past the last): one panel of output channels. s: stage of
 * WG_LANES * m^2 * wg_skew(sp) floats; line: as for wg_gather. */
WG_INLINE void wg_gy_block_m(int m, const float *gy, ptrdiff_t yk, ptrdiff_t nk, const wg_row *rows,
                        ptrdiff_t nrows, ptrdiff_t t0, float *line, float *s, float *z, ptrdiff_t zx)
{
    int m2 = m * m;
    const wg_row *last = rows + nrows - 1;
    ptrdiff_t sp = wg_round(last->t + last->tiles - t0), ss = wg_skew(sp);
    float tile[WG_LANES * 16 * WG_LANES];  /* m^2 entries of WG_LANES tiles, channels in lanes */
    for (ptrdiff_t k = 0; k < nk; k++)
        wg_stage(m, 1, gy + k * yk, k + 1 < nk ? gy + (k + 1) * yk : NULL, rows, nrows, t0, line,
                 s + k * m2 * ss);
    for (ptrdiff_t t = 0; t < sp; t += WG_LANES) {
        for (int e = 0; e < m2; e++) {  /* e-th entry of WG_LANES tiles: to tiles of channel lanes */
            wg_vec r[WG_LANES];
            for (int k = 0; k < WG_LANES; k++)
                r[k] = k < nk ? wg_load(s + (k * m2 + e) * ss + t) : (wg_vec){0};
            wg_transpose(r);
            for (int l = 0; l < WG_LANES; l++)
                wg_store(tile + (l * m2 + e) * WG_LANES, r[l]);
        }
        for (int l = 0; l < WG_LANES; l++)
            wg_gy_tile(m, tile + l * m2 * WG_LANES, WG_LANES, z + (t + l) * WG_LANES, zx);
    }
}
static void wg_gy_block(int m, const float *gy, ptrdiff_t yk, ptrdiff_t nk, const wg_row *rows,
                        ptrdiff_t nrows, ptrdiff_t t0, float *line, float *s, float *z, ptrdiff_t zx)
{
    if (m == 4)
        wg_gy_block_m(4, gy, yk, nk, rows, nrows, t0, line, s, z, zx);
    else
        wg_gy_block_m(2, gy, yk, nk, rows, nrows, t0, line, s, z, zx);
}

/* The weight gradient of nc input by nk output channels over one chunk of sp tiles (a multiple of
 * WG_LANES): gw[(k * cin + c) * 9 + tap] (+)= G^T [sum_t v[xi][c][t] z[xi][t][k]] G, with v as
 * wg_input_channel writes it (at channel c = 0; strides vt, vx) and z as wg_gy_block writes its panels
 * (at k = 0, panels sp * WG_LANES apart, coordinates zx apart); acc false: assign. mt: scratch of
 * alpha^2 * wg_skew(nc * wg_round(nk)) floats. */
WG_INLINE void wg_weight_grad_m(int m, const float *v, ptrdiff_t vt, ptrdiff_t vx, const float *z,
                                 ptrdiff_t zx, ptrdiff_t sp, ptrdiff_t nc, ptrdiff_t nk, float *mt, float *gw,
                                 ptrdiff_t cin, int acc)
{
    int a2 = (m + 2) * (m + 2);
    ptrdiff_t kp = wg_round(nk), ntb = sp / WG_LANES;
    for (int xi = 0; xi < a2; xi++) {
        float *mx = mt + xi * wg_skew(nc * kp);
        for (ptrdiff_t k = 0; k < kp; k += 2 * WG_LANES) {
            int nt = k + WG_LANES < kp ? 2 : 1;
            WG_ROW_BLOCKS(nc, nt == 2 ? WG_NK2 : WG_NK1, c, rows,
                          wg_mul_lanes(v + xi * vx + c * WG_LANES, vt, 1, z + xi * zx + k * sp,
                                       WG_LANES * WG_LANES, WG_LANES, sp * WG_LANES, ntb, WG_LANES, rows, nt,
                                       mx + c * kp + k, kp))
        }
    }
    float taps[9 * WG_LANES];
    for (ptrdiff_t c = 0; c < nc; c++)
        for (ptrdiff_t k = 0; k < kp; k += WG_LANES) {
            wg_gw_tile(m, mt + c * kp + k, wg_skew(nc * kp), taps, WG_LANES);
#if WG_LANES == 16 && defined(__AVX512F__)  /* transposed to a vector of 9 taps per output channel */
            wg_vec r[WG_LANES];
            for (int tap = 0; tap < WG_LANES; tap++)
                r[tap] = tap < 9 ? wg_load(taps + tap * WG_LANES) : (wg_vec){0};
            wg_transpose(r);
            for (ptrdiff_t l = 0; l < WG_LANES && k + l < nk; l++) {
                float *g = gw + ((k + l) * cin + c) * 9;
                __m512 add = (__m512)r[l];
                if (acc)
                    add = _mm512_add_ps(add, _mm512_maskz_loadu_ps(0x1ff, g));
                _mm512_mask_storeu_ps(g, 0x1ff, add);
            }
#else
            for (ptrdiff_t l = 0; l < WG_LANES && k + l < nk; l++)
                for (int tap = 0; tap < 9; tap++) {
                    float *g = gw + ((k + l) * cin + c) * 9 + tap;
                    *g = acc ? *g + taps[tap * WG_LANES + l] : taps[tap * WG_LANES + l];
                }
#endif
        }
}
static void wg_weight_grad(int m, const float *v, ptrdiff_t vt, ptrdiff_t vx, const float *z, ptrdiff_t zx,
                           ptrdiff_t sp, ptrdiff_t nc, ptrdiff_t nk, float *mt, float *gw, ptrdiff_t cin,
                           int acc)
{
    if (m == 4)
        wg_weight_grad_m(4, v, vt, vx, z, zx, sp, nc, nk, mt, gw, cin, acc);
    else
        wg_weight_grad_m(2, v, vt, vx, z, zx, sp, nc, nk, mt, gw, cin, acc);
}

#endif
