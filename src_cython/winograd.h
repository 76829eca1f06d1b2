/* Winograd convolution F(m x m, 3 x 3), m = 4 or 2, float32: the C core of _winograd.pyx.
 *
 * A tile of m x m outputs of a stride-1 3x3 convolution is Y = A^T [(G g G^T) . (B^T d B)] A, with d
 * the (m + 2) x (m + 2) input patch under the tile and "." the elementwise product: 36 products per
 * channel pair and 4x4 tile (16 for 2x2) instead of 144 (36). Summed over input channels, the
 * elementwise products become one matrix product per transform coordinate (xi, an entry of the
 * alpha x alpha transformed tile, alpha = m + 2):
 *
 *     M[xi][k][t] = sum_c U[xi][c][k] V[xi][c][t],   U = G g G^T (weights), V = B^T d B (tiles t)
 *
 * The weight gradient is the adjoint of the same bilinear form, with the same three matrices:
 * gw[k][c] = G^T [sum_t (A gy_t A^T) . (B^T d_t B)] G, gy_t the tile's m x m output gradient.
 *
 * Vectors run over tiles: a vector holds one transform coordinate of WG_LANES tiles, so every
 * transform is elementwise vector arithmetic and the products are register-tiled GEMMs that broadcast
 * weights (forward) or reduce over tiles (weight gradient). Tiles are enumerated row by row (see
 * wg_row); the gathers and scatters that move tile rows between NCHW planes and tile-major buffers are
 * the only strided accesses.
 *
 * The vector type is GCC/Clang's generic one (AVX-512, AVX2 or SSE with the matching -march); other
 * compilers get WG_LANES = 1, the same code on scalars.
 */
#ifndef FASTCONV_WINOGRAD_H
#define FASTCONV_WINOGRAD_H

#include <stddef.h>
#include <string.h>

#if defined(__GNUC__) || defined(__clang__)
#if defined(__AVX512F__)
#define WG_LANES 16
#define WG_NK2 14     /* forward tile: 14 x 2 accumulators of 32 registers */
#define WG_NK1 28     /* 28 x 1 */
#define WG_MK 4       /* weight-gradient tile: 4 x 4 accumulators, reduced to one vector */
#elif defined(__AVX__)
#define WG_LANES 8
#define WG_NK2 6      /* 16 registers: 6 x 2 accumulators */
#define WG_NK1 12
#define WG_MK 4       /* 4 x 2 */
#else
#define WG_LANES 4
#define WG_NK2 6
#define WG_NK1 12
#define WG_MK 2       /* 2 x 2 */
#endif
typedef float wg_vec __attribute__((vector_size(4 * WG_LANES)));
#define WG_INLINE static inline __attribute__((always_inline))
#else
#define WG_LANES 1
#define WG_NK2 4
#define WG_NK1 8
#define WG_MK 1
typedef float wg_vec;
#define WG_INLINE static inline
#endif
#define WG_MC (WG_LANES / WG_MK)   /* input channels of the weight-gradient tile */
#define WG_MAX_NK (WG_NK1 > 2 * WG_NK2 ? WG_NK1 : 2 * WG_NK2)

WG_INLINE wg_vec wg_load(const float *p) { wg_vec v; memcpy(&v, p, sizeof v); return v; }
WG_INLINE void wg_store(float *p, wg_vec v) { memcpy(p, &v, sizeof v); }
WG_INLINE ptrdiff_t wg_min(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }
WG_INLINE ptrdiff_t wg_max(ptrdiff_t a, ptrdiff_t b) { return a > b ? a : b; }
WG_INLINE ptrdiff_t wg_round(ptrdiff_t n) { return (n + WG_LANES - 1) / WG_LANES * WG_LANES; }

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

/* The 2-D transforms, one vector of tiles at a time: p holds an n x n tile (entry (i, j) at
 * src[(i * n + j) * ss]), q the transformed tile at dst[(xi * n' + nu) * ds]. */
#define WG_2D(NAME, ONE_D, N_IN, N_OUT)                                                          \
    WG_INLINE void NAME(int m, const float *src, ptrdiff_t ss, float *dst, ptrdiff_t ds)          \
    {                                                                                            \
        const int ni = N_IN, no = N_OUT;                                                         \
        wg_vec p[36], t[36], q[36];                                                              \
        for (int k = 0; k < ni * ni; k++)                                                        \
            p[k] = wg_load(src + k * ss);                                                        \
        for (int j = 0; j < ni; j++)                                                             \
            ONE_D(m, p + j, ni, t + j, ni);          /* columns: t[xi][j], xi < no */            \
        for (int i = 0; i < no; i++)                                                             \
            ONE_D(m, t + i * ni, 1, q + i * no, 1);  /* rows: q[xi][nu] */                       \
        for (int k = 0; k < no * no; k++)                                                        \
            wg_store(dst + k * ds, q[k]);                                                        \
    }
WG_2D(wg_input_tile, wg_bt, m + 2, m + 2)    /* B^T d B */
WG_2D(wg_output_tile, wg_at, m + 2, m)       /* A^T M A */
WG_2D(wg_weight_tile, wg_g, 3, m + 2)        /* G g G^T */
WG_2D(wg_gy_tile, wg_a, m, m + 2)            /* A gy A^T */
WG_2D(wg_gw_tile, wg_gt, m + 2, 3)           /* G^T M G */

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

/* Stage n x n patches: s[(i * n + j) * sp + t] = plane[row0 + i][col0 + tx * m + j] of every tile of
 * the rows (zero outside the plane), t the tile's index from t0. The patch of tile tx starts m columns
 * after tile tx - 1's; n = m + 2 for input patches (rows from top), m for output-gradient tiles. */
WG_INLINE void wg_gather(int m, int n, const float *plane, const wg_row *r, ptrdiff_t row0,
                         ptrdiff_t col0, ptrdiff_t h, ptrdiff_t w, ptrdiff_t xr, ptrdiff_t xc, float *s,
                         ptrdiff_t sp)
{
    ptrdiff_t tiles = r->tiles;
    /* tiles [lo, hi) read columns inside the plane only */
    ptrdiff_t lo = col0 >= 0 ? 0 : (-col0 + m - 1) / m;
    ptrdiff_t hi = w - n - col0 >= 0 ? (w - n - col0) / m + 1 : 0;
    hi = wg_min(hi, tiles);
    lo = wg_min(lo, hi);
    for (int i = 0; i < n; i++) {
        float *si = s + (ptrdiff_t)i * n * sp;
        ptrdiff_t u = row0 + i;
        if (u < 0 || u >= h) {
            for (int j = 0; j < n; j++)
                memset(si + j * sp, 0, sizeof(float) * tiles);
            continue;
        }
        const float *row = plane + u * xr;
        for (ptrdiff_t tx = 0; tx < tiles; tx++) {
            if (tx == lo)
                tx = hi;
            if (tx >= tiles)
                break;
            for (int j = 0; j < n; j++) {
                ptrdiff_t col = col0 + tx * m + j;
                si[j * sp + tx] = col >= 0 && col < w ? row[col * xc] : 0.0f;
            }
        }
        if (xc == 1) {
            const float *q = row + col0;
            for (ptrdiff_t tx = lo; tx < hi; tx++)
                for (int j = 0; j < n; j++)
                    si[j * sp + tx] = q[tx * m + j];
        } else {
            for (ptrdiff_t tx = lo; tx < hi; tx++)
                for (int j = 0; j < n; j++)
                    si[j * sp + tx] = row[(col0 + tx * m + j) * xc];
        }
    }
}

/* Transformed input tiles of one channel: v[xi * vs + t] = (B^T d_t B)[xi] for the tiles of rows
 * [0, nrows) (t counted from t0; the tiles up to wg_round(count) are zero). s: stage of
 * alpha^2 * wg_round(count) floats. */
static void wg_input_channel(int m, const float *x, const wg_row *rows, ptrdiff_t nrows, ptrdiff_t t0,
                             float *s, float *v, ptrdiff_t vs)
{
    int a = m + 2;
    const wg_row *last = rows + nrows - 1;
    ptrdiff_t count = last->t + last->tiles - t0, sp = wg_round(count);
    for (const wg_row *r = rows; r <= last; r++)
        wg_gather(m, a, x + r->x, r, r->top, r->left, r->h, r->w, r->xr, r->xc, s + (r->t - t0), sp);
    for (int k = 0; k < a * a; k++)
        memset(s + k * sp + count, 0, sizeof(float) * (sp - count));
    for (ptrdiff_t t = 0; t < sp; t += WG_LANES)
        wg_input_tile(m, s + t, sp, v + t, vs);
}

/* Transformed output-gradient tiles of one channel: z[xi * zs + t] = (A gy_t A^T)[xi]. */
static void wg_gy_channel(int m, const float *gy, const wg_row *rows, ptrdiff_t nrows, ptrdiff_t t0,
                          float *s, float *z, ptrdiff_t zs)
{
    const wg_row *last = rows + nrows - 1;
    ptrdiff_t count = last->t + last->tiles - t0, sp = wg_round(count);
    for (const wg_row *r = rows; r <= last; r++)
        wg_gather(m, m, gy + r->y, r, r->oy, 0, r->oh, r->ow, r->yr, r->yc, s + (r->t - t0), sp);
    for (int k = 0; k < m * m; k++)
        memset(s + k * sp + count, 0, sizeof(float) * (sp - count));
    for (ptrdiff_t t = 0; t < sp; t += WG_LANES)
        wg_gy_tile(m, s + t, sp, z + t, zs);
}

/* Write output tiles [t_lo, t_hi) (counted from t0) of one channel: o[(i * m + j) * os + t - t_lo]
 * holds output (i, j) of tile t; y points at the channel's sample-0 plane. */
static void wg_scatter(int m, const float *o, ptrdiff_t os, ptrdiff_t t_lo, ptrdiff_t t_hi,
                       const wg_row *rows, ptrdiff_t nrows, ptrdiff_t t0, float *y)
{
    for (const wg_row *r = rows; r < rows + nrows; r++) {
        ptrdiff_t first = r->t - t0, lo = wg_max(t_lo, first), hi = wg_min(t_hi, first + r->tiles);
        if (lo >= hi)
            continue;
        ptrdiff_t tx0 = lo - first, tx1 = hi - first, full = wg_min(tx1, r->ow / m);
        const float *src = o + (first - t_lo);
        for (int i = 0; i < m && r->oy + i < r->oh; i++) {
            float *row = y + r->y + (r->oy + i) * r->yr;
            const float *si = src + i * m * os;
            ptrdiff_t tx = tx0;
            if (r->yc == 1)
                for (; tx < full; tx++)
                    for (int j = 0; j < m; j++)
                        row[tx * m + j] = si[j * os + tx];
            for (; tx < tx1; tx++)
                for (int j = 0; j < m && tx * m + j < r->ow; j++)
                    row[(tx * m + j) * r->yc] = si[j * os + tx];
        }
    }
}

/* ------------------------------------------------------------------------ forward pass */

/* Transformed weights of a block of output channels: u[(xi * cin + c) * us + o] = (G g G^T)[xi] of
 * the kernel of output channel k0 + o and input channel c, o < nk (columns up to us are zero). The
 * kernel tap (i, j) of (k, c) is w[k * ks + c * cs + 3i + j], or with flip w[... + 8 - 3i - j]. */
static void wg_weights(int m, const float *w, ptrdiff_t ks, ptrdiff_t cs, int flip, ptrdiff_t k0,
                       ptrdiff_t nk, ptrdiff_t cin, float *u, ptrdiff_t us)
{
    float taps[9 * WG_LANES];
    for (ptrdiff_t c = 0; c < cin; c++)
        for (ptrdiff_t o0 = 0; o0 < us; o0 += WG_LANES) {
            for (int l = 0; l < WG_LANES; l++) {
                const float *g = w + (k0 + o0 + l) * ks + c * cs;
                for (int k = 0; k < 9; k++)
                    taps[k * WG_LANES + l] = o0 + l < nk ? g[flip ? 8 - k : k] : 0.0f;
            }
            wg_weight_tile(m, taps, WG_LANES, u + c * us + o0, cin * us);
        }
}

/* out[o * os + q * WG_LANES + l] = sum_c u[c * us + o] v[c * vs + q * WG_LANES + l], o < nk, q < nt. */
WG_INLINE void wg_mul_tile(const float *u, ptrdiff_t us, const float *v, ptrdiff_t vs, ptrdiff_t n,
                           int nk, int nt, float *out, ptrdiff_t os)
{
    wg_vec acc[WG_MAX_NK][2];
    for (int o = 0; o < nk; o++)
        for (int q = 0; q < nt; q++)
            acc[o][q] = (wg_vec){0};
    for (ptrdiff_t c = 0; c < n; c++, u += us, v += vs) {
        wg_vec v0 = wg_load(v), v1 = nt > 1 ? wg_load(v + WG_LANES) : v0;
        for (int o = 0; o < nk; o++) {
            acc[o][0] += u[o] * v0;
            if (nt > 1)
                acc[o][1] += u[o] * v1;
        }
    }
    for (int o = 0; o < nk; o++)
        for (int q = 0; q < nt; q++)
            wg_store(out + o * os + q * WG_LANES, acc[o][q]);
}

#define WG_MUL_CASE(NK, NT) case NK: wg_mul_tile(u, us, v, vs, n, NK, NT, out, os); return;
#define WG_MUL_CASES_6(NT) WG_MUL_CASE(1, NT) WG_MUL_CASE(2, NT) WG_MUL_CASE(3, NT) WG_MUL_CASE(4, NT) \
                           WG_MUL_CASE(5, NT) WG_MUL_CASE(6, NT)
#define WG_MUL_CASES_14(NT) WG_MUL_CASES_6(NT) WG_MUL_CASE(7, NT) WG_MUL_CASE(8, NT) WG_MUL_CASE(9, NT) \
                            WG_MUL_CASE(10, NT) WG_MUL_CASE(11, NT) WG_MUL_CASE(12, NT)           \
                            WG_MUL_CASE(13, NT) WG_MUL_CASE(14, NT)
#define WG_MUL_CASES_28(NT) WG_MUL_CASES_14(NT) WG_MUL_CASE(15, NT) WG_MUL_CASE(16, NT)            \
                            WG_MUL_CASE(17, NT) WG_MUL_CASE(18, NT) WG_MUL_CASE(19, NT)           \
                            WG_MUL_CASE(20, NT) WG_MUL_CASE(21, NT) WG_MUL_CASE(22, NT)           \
                            WG_MUL_CASE(23, NT) WG_MUL_CASE(24, NT) WG_MUL_CASE(25, NT)           \
                            WG_MUL_CASE(26, NT) WG_MUL_CASE(27, NT) WG_MUL_CASE(28, NT)

/* wg_mul_tile with constant nk (<= WG_NK2 for two vectors of tiles, <= WG_NK1 for one). */
static void wg_mul_any(const float *u, ptrdiff_t us, const float *v, ptrdiff_t vs, ptrdiff_t n, int nk,
                       int nt, float *out, ptrdiff_t os)
{
    if (nt == 2) {
        switch (nk) {
#if WG_NK2 >= 14
            WG_MUL_CASES_14(2)
#else
            WG_MUL_CASES_6(2)
#endif
        }
    } else {
        switch (nk) {
#if WG_NK1 >= 28
            WG_MUL_CASES_28(1)
#else
            WG_MUL_CASES_14(1)
#endif
        }
    }
}

/* M[xi][o][t] = sum_c u[xi][c][o] v[xi][c][t] for o < nk, t < n (rounded up to vectors):
 * u as wg_weights writes it, v[(xi * cin + c) * vs + t], m_[(xi * us + o) * ms + t]. */
static void wg_multiply(int m, const float *u, ptrdiff_t us, ptrdiff_t nk, ptrdiff_t cin, const float *v,
                        ptrdiff_t vs, ptrdiff_t n, float *m_, ptrdiff_t ms)
{
    int a2 = (m + 2) * (m + 2);
    ptrdiff_t np = wg_round(n);
    for (int xi = 0; xi < a2; xi++) {
        const float *ux = u + xi * cin * us, *vx = v + xi * cin * vs;
        float *mx = m_ + xi * us * ms;
        ptrdiff_t t = 0;
        for (; t + 2 * WG_LANES <= np; t += 2 * WG_LANES)  /* two vectors of tiles, rows in even blocks */
            for (ptrdiff_t o = 0, blocks = (nk + WG_NK2 - 1) / WG_NK2; o < nk;) {
                int rows = (int)((nk - o + blocks - 1) / blocks);
                wg_mul_any(ux + o, us, vx + t, vs, cin, rows, 2, mx + o * ms + t, ms);
                o += rows;
                blocks--;
            }
        for (; t < np; t += WG_LANES)
            for (ptrdiff_t o = 0, blocks = (nk + WG_NK1 - 1) / WG_NK1; o < nk;) {
                int rows = (int)((nk - o + blocks - 1) / blocks);
                wg_mul_any(ux + o, us, vx + t, vs, cin, rows, 1, mx + o * ms + t, ms);
                o += rows;
                blocks--;
            }
    }
}

/* Output tiles [t_lo, t_lo + n) of channels k < nk from m_ (as wg_multiply writes it), plus bias,
 * into y (channel k's sample-0 plane at y + k * yk); o: stage of m * m * ms floats. */
static void wg_output(int m, const float *m_, ptrdiff_t us, ptrdiff_t ms, ptrdiff_t nk, const float *bias,
                      ptrdiff_t t_lo, ptrdiff_t n, const wg_row *rows, ptrdiff_t nrows, ptrdiff_t t0,
                      float *o, float *y, ptrdiff_t yk)
{
    for (ptrdiff_t k = 0; k < nk; k++) {
        for (ptrdiff_t t = 0; t < n; t += WG_LANES) {
            wg_output_tile(m, m_ + k * ms + t, us * ms, o + t, ms);
            if (bias)
                for (int e = 0; e < m * m; e++)
                    wg_store(o + e * ms + t, wg_load(o + e * ms + t) + bias[k]);
        }
        wg_scatter(m, o, ms, t_lo, t_lo + n, rows, nrows, t0, y + k * yk);
    }
}

/* --------------------------------------------------------------------- weight gradient */

/* Sum the lanes of WG_LANES vectors: lane l of the result is the sum of acc[l] (a tree of shuffles). */
WG_INLINE wg_vec wg_reduce(wg_vec *acc)
{
#if defined(__GNUC__) && !defined(__clang__) && WG_LANES > 1
    typedef int wg_mask __attribute__((vector_size(4 * WG_LANES)));
    for (int h = WG_LANES / 2, n = WG_LANES; h >= 1; h /= 2, n /= 2) {
        wg_mask lo, hi;
        for (int l = 0; l < WG_LANES; l++) {
            lo[l] = l / h * 2 * h + l % h;
            hi[l] = lo[l] + h;
        }
        for (int p = 0; p < n / 2; p++)
            acc[p] = __builtin_shuffle(acc[2 * p], acc[2 * p + 1], lo)
                   + __builtin_shuffle(acc[2 * p], acc[2 * p + 1], hi);
    }
    return acc[0];
#else
    float sums[WG_LANES], lanes[WG_LANES];
    for (int k = 0; k < WG_LANES; k++) {
        memcpy(lanes, &acc[k], sizeof lanes);
        sums[k] = 0.0f;
        for (int l = 0; l < WG_LANES; l++)
            sums[k] += lanes[l];
    }
    return wg_load(sums);
#endif
}

/* sums[a * WG_MC + b] = sum_t z[a][t] v[b][t] over t < n (a multiple of WG_LANES), a < WG_MK,
 * b < WG_MC: WG_LANES accumulators over tiles, reduced at the end. */
WG_INLINE void wg_reduce_tile(const float *const *z, const float *const *v, ptrdiff_t n, float *sums)
{
    wg_vec acc[WG_LANES];
    for (int k = 0; k < WG_LANES; k++)
        acc[k] = (wg_vec){0};
    for (ptrdiff_t t = 0; t < n; t += WG_LANES) {
        wg_vec zv[WG_MK], vv[WG_MC];
        for (int a = 0; a < WG_MK; a++)
            zv[a] = wg_load(z[a] + t);
        for (int b = 0; b < WG_MC; b++)
            vv[b] = wg_load(v[b] + t);
        for (int a = 0; a < WG_MK; a++)
            for (int b = 0; b < WG_MC; b++)
                acc[a * WG_MC + b] += zv[a] * vv[b];
    }
    wg_store(sums, wg_reduce(acc));
}

/* The weight gradient of a block of nk output by nc input channels over one chunk of tiles:
 * gw[(k * cin + c) * 9 + tap] (+)= G^T [sum_t z[xi][k][t] v[xi][c][t]] G, with
 * z[(xi * kz + k) * sp + t], v[(xi * cv + c) * sp + t], sp tiles (zero past the last one); acc
 * false: assign. mt: scratch of alpha^2 * kp * cp floats, nk and nc rounded up to WG_MK and WG_LANES. */
static void wg_weight_grad(int m, const float *z, ptrdiff_t kz, const float *v, ptrdiff_t cv, ptrdiff_t sp,
                           ptrdiff_t nk, ptrdiff_t nc, float *mt, float *gw, ptrdiff_t cin, int acc)
{
    int a2 = (m + 2) * (m + 2);
    ptrdiff_t kp = (nk + WG_MK - 1) / WG_MK * WG_MK, cp = wg_round(nc);
    for (int xi = 0; xi < a2; xi++) {
        const float *zx = z + xi * kz * sp, *vx = v + xi * cv * sp;
        for (ptrdiff_t k = 0; k < kp; k += WG_MK)
            for (ptrdiff_t c = 0; c < cp; c += WG_MC) {
                /* rows past the block repeat its last row: their sums land in padding never read */
                const float *zr[WG_MK], *vr[WG_MC];
                float sums[WG_LANES];
                for (int a = 0; a < WG_MK; a++)
                    zr[a] = zx + wg_min(k + a, nk - 1) * sp;
                for (int b = 0; b < WG_MC; b++)
                    vr[b] = vx + wg_min(c + b, nc - 1) * sp;
                wg_reduce_tile(zr, vr, sp, sums);
                for (int a = 0; a < WG_MK; a++)
                    memcpy(mt + (xi * kp + k + a) * cp + c, sums + a * WG_MC, sizeof(float) * WG_MC);
            }
    }
    float taps[9 * WG_LANES];
    for (ptrdiff_t k = 0; k < nk; k++)
        for (ptrdiff_t c = 0; c < cp; c += WG_LANES) {
            wg_gw_tile(m, mt + k * cp + c, kp * cp, taps, WG_LANES);
            for (ptrdiff_t l = 0; l < WG_LANES && c + l < nc; l++)
                for (int tap = 0; tap < 9; tap++) {
                    float *g = gw + (k * cin + c + l) * 9 + tap;
                    *g = acc ? *g + taps[tap * WG_LANES + l] : taps[tap * WG_LANES + l];
                }
        }
}

#endif
