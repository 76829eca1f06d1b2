/* Register-blocked direct convolution, float32: the C core of the "blocked" algorithm (_blocked.pyx).
 *
 * A tile of output, nj consecutive pixels of one output row by FC_LANES*nv output channels (16 x 1
 * with AVX-512, else 8 x 1 or 2), stays in nj*nv vector registers while the reduction runs over every
 * (input channel, kernel row, kernel column). Each step loads the tap's FC_LANES*nv weights (packed
 * contiguously, see fc_pack), broadcasts the nj input pixels the tap reads, and does nj*nv
 * multiply-adds. Nothing is unfolded: the input is read in place, or from a zero-padded copy of the
 * rows one task needs. The finished tile is transposed in registers (AVX-512) and written as nj
 * consecutive pixels of each channel. The weight gradient runs the same tile with the roles turned.
 *
 * The vector type is GCC/Clang's generic one; built with -march=native it becomes AVX2 or AVX-512
 * fused multiply-adds. Other compilers get the same loops on scalars.
 */
#ifndef FASTCONV_BLOCKED_CONV_H
#define FASTCONV_BLOCKED_CONV_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/* Floats per vector, vectors per weight block, output pixels per tile. Measured on AVX-512 (Zen 4 and
 * Zen 5): 14 x 1 accumulators beat 14 x 2 (which spill), 12 x 2, 6 x 4 and wider tiles (20 to 28) on
 * kernel rows that share pixels (3x3, 5x5); elsewhere the wide tile below wins. */
#if defined(__AVX512F__)
#define FC_LANES 16
#define FC_NV 1
#define FC_MAX_NJ 14  /* 32 registers: 14 accumulators, 1 weight vector, 1 broadcast */
/* The wide tile: where no input pixel serves two taps of a row (1x1 kernels, flat tables of taps), a tile
 * of 12 pixels by 2 vectors loads 14 values per 24 multiply-adds where 14 x 1 loads 15 per 14 (Zen 5, 2
 * threads, ms, 12 x 2 against 14 x 1: pointwise 2.2-2.4 against 2.9-3.1, AlexNet's conv1 2.5-2.6 against
 * 3.2-3.3; 14 x 2 and 10 x 2 were no better, 6 x 4 slower: its 64-channel weight blocks leave L1). */
#define FC_WIDE_NV 2
#define FC_WIDE_NJ 12
#define FC_ISA "AVX-512"
#else
#define FC_LANES 8
#define FC_NV 2
#define FC_MAX_NJ 6   /* 16 registers: 6 x 2 accumulators, 2 weight vectors, 1 broadcast */
#define FC_WIDE_NV 1  /* no wide tile */
#define FC_WIDE_NJ FC_MAX_NJ
#if defined(__AVX2__) && defined(__FMA__)
#define FC_ISA "AVX2+FMA"
#else
#define FC_ISA "no FMA vectors (a portable build)"
#endif
#endif
#define FC_MAX_NV (FC_WIDE_NV > FC_NV ? FC_WIDE_NV : FC_NV)  /* vectors of any tile */

/* Where one tile reads its input. The reduction runs over ntaps rows of kw taps each: tap j of row r
 * reads x + taps[r] + j*dw, and tile element o (an output pixel of the forward pass, a kernel tap of
 * the weight gradient) adds o * sw, or, with a table, cols[o / ekw] + (o % ekw) * edw (the weight
 * gradient's elements are the taps of ekw-tap kernel rows). The weights hold one vector (or nv) per
 * tap, in order. */
typedef struct {
    const float *x;         /* input at the tile's first element */
    const ptrdiff_t *taps;  /* row offsets from x: the kernel rows (c, i) of the forward pass,
                               c * channel stride + i*dh * row stride; the output pixels of the weight
                               gradient */
    int ntaps;              /* rows */
    int kw, dw;             /* taps per row and their spacing */
    int sw;                 /* element o adds o * sw ... */
    const ptrdiff_t *cols;  /* ... or, when this is not NULL, cols[o / ekw] + (o % ekw) * edw */
    int ekw, edw;
} fc_src;

/* Where one tile's results go: y[c * yc + o * ys] = tile(o, c) (+ bias[c]), for channels c < nc; with
 * add, y[c * yc + o * ys] += tile(o, c). A pixel stride ys of 2 writes one input phase of a stride-2
 * input gradient in place. */
typedef struct {
    float *y;
    ptrdiff_t yc, ys;
    int nc;
    const float *bias;
    int add;
} fc_dst;

#if defined(__GNUC__) || defined(__clang__)
typedef float fc_vec __attribute__((vector_size(4 * FC_LANES)));
typedef float fc_uvec __attribute__((vector_size(4 * FC_LANES), aligned(4)));  /* for unaligned loads */

#if defined(__AVX512F__)
/* r[0..15] (row o = tile element, lane c = channel) becomes r[c] = column c, lane o = tile element. */
static inline __attribute__((always_inline)) void fc_transpose16(__m512 *r)
{
    __m512 t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 4; i++) {  /* u[4i + k], 128-bit lane L: rows 4i..4i+3 of column 4L + k */
        __m512d a0 = _mm512_castps_pd(t[4 * i]), a1 = _mm512_castps_pd(t[4 * i + 1]);
        __m512d a2 = _mm512_castps_pd(t[4 * i + 2]), a3 = _mm512_castps_pd(t[4 * i + 3]);
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
    }
    for (int k = 0; k < 4; k++) {  /* column 4L + k: lane L of u[k], u[4 + k], u[8 + k], u[12 + k] */
        __m512 ab_lo = _mm512_shuffle_f32x4(u[k], u[4 + k], 0x44), ab_hi = _mm512_shuffle_f32x4(u[k], u[4 + k], 0xEE);
        __m512 cd_lo = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0x44);
        __m512 cd_hi = _mm512_shuffle_f32x4(u[8 + k], u[12 + k], 0xEE);
        r[k] = _mm512_shuffle_f32x4(ab_lo, cd_lo, 0x88);
        r[4 + k] = _mm512_shuffle_f32x4(ab_lo, cd_lo, 0xDD);
        r[8 + k] = _mm512_shuffle_f32x4(ab_hi, cd_hi, 0x88);
        r[12 + k] = _mm512_shuffle_f32x4(ab_hi, cd_hi, 0xDD);
    }
}
#endif

#if defined(__AVX512F__)
/* y[o * ys] = v[o] (+= with add) for o < nj: one masked store (ys = 1), or the lanes spread to every other
 * float of two vectors, which masked stores write without touching the floats between (ys = 2), or one
 * float at a time. */
static inline __attribute__((always_inline)) void fc_store_pixels(float *y, __m512 v, int nj, ptrdiff_t ys,
                                                                  int add)
{
    if (ys == 1) {
        __mmask16 mask = (__mmask16)((1u << nj) - 1);
        if (add)
            v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, y));
        _mm512_mask_storeu_ps(y, mask, v);
    } else if (ys == 2) {
        const __m512i spread = _mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
        for (int h = 0; h < 2 && 8 * h < nj; h++, y += 16) {
            int m = nj - 8 * h < 8 ? nj - 8 * h : 8;  /* pixels 8h.. land in lanes 0, 2, .. 2m - 2 */
            __mmask16 mask = (__mmask16)(0x5555u & ((1u << (2 * m)) - 1));
            __m512 u = _mm512_permutexvar_ps(_mm512_add_epi32(spread, _mm512_set1_epi32(8 * h)), v);
            if (add)
                u = _mm512_add_ps(u, _mm512_maskz_loadu_ps(mask, y));
            _mm512_mask_storeu_ps(y, mask, u);
        }
    } else {
        float t[16];
        _mm512_storeu_ps(t, v);
        for (int o = 0; o < nj; o++)
            y[o * ys] = add ? y[o * ys] + t[o] : t[o];
    }
}
#endif

/* Writes a finished tile: acc[o][v] holds channels v*FC_LANES.. of tile element o. */
static inline __attribute__((always_inline)) void fc_store(fc_vec acc[][FC_MAX_NV], int nj, int nv,
                                                           const fc_dst *d)
{
#if defined(__AVX512F__)
    for (int k = 0; k < nv; k++) {  /* each vector of 16 channels in turn */
        __m512 r[16];
        int nc = d->nc - 16 * k < 16 ? d->nc - 16 * k : 16;
        for (int o = 0; o < 16; o++)
            r[o] = o < nj ? (__m512)acc[o][k] : _mm512_setzero_ps();
        fc_transpose16(r);
        for (int c = 0; c < nc; c++) {
            __m512 v = r[c];
            if (d->bias)
                v = _mm512_add_ps(v, _mm512_set1_ps(d->bias[16 * k + c]));
            fc_store_pixels(d->y + (16 * k + c) * d->yc, v, nj, d->ys, d->add);
        }
    }
    return;
#endif
    int width = FC_LANES * nv;
    float tile[FC_MAX_NJ * FC_MAX_NV * FC_LANES];
    for (int o = 0; o < nj; o++)
        memcpy(tile + o * width, acc[o], sizeof(fc_vec) * nv);
    for (int c = 0; c < d->nc; c++) {
        float *y = d->y + c * d->yc, b = d->bias ? d->bias[c] : 0.0f;
        if (d->add)
            for (int o = 0; o < nj; o++)
                y[o * d->ys] += tile[o * width + c];
        else
            for (int o = 0; o < nj; o++)
                y[o * d->ys] = tile[o * width + c] + b;
    }
}

/* out(o, c) = sum over rows r and taps j of w[r*kw + j, c] * x[taps[r] + j*dw + offset of element o],
 * o < nj, written by fc_store. Inlined with constant nj, nv and (in the common cases) sw, kw, dw, ekw
 * and edw, so the accumulators are registers, the input offsets constants (or a table entry plus a
 * constant), and a pixel that several taps of a row read (o*sw + j*dw equal) is broadcast once. */
static inline __attribute__((always_inline)) void fc_tile(const fc_src *s, const float *w, int nj, int nv,
                                                          int sw, int kw, int dw, const ptrdiff_t *cols,
                                                          int ekw, int edw, const fc_dst *d)
{
    fc_vec acc[FC_MAX_NJ][FC_MAX_NV], wv[FC_MAX_NV];
    ptrdiff_t off[FC_MAX_NJ];
    const float *x = s->x;
    const ptrdiff_t *taps = s->taps;
    for (int o = 0; o < nj; o++) {
        off[o] = cols ? cols[o / ekw] : (ptrdiff_t)o * sw;  /* a table's entries: per ekw elements */
        for (int v = 0; v < nv; v++)
            acc[o][v] = (fc_vec){0};
    }
    for (int r = 0, n = s->ntaps; r < n; r++) {
        const float *p = x + taps[r];
#pragma GCC unroll 12
        for (int j = 0; j < kw; j++, w += FC_LANES * nv) {
            for (int v = 0; v < nv; v++)  /* one vector load each (a memcpy of nv vectors can stall) */
                wv[v] = ((const fc_uvec *)w)[v];
            for (int o = 0; o < nj; o++) {
                float xv = cols ? p[off[o] + (o % ekw) * edw + j * dw] : p[off[o] + j * dw];
                for (int v = 0; v < nv; v++)
                    acc[o][v] += xv * wv[v];
            }
        }
    }
    fc_store(acc, nj, nv, d);
}
#else
static void fc_tile(const fc_src *s, const float *w, int nj, int nv, int sw, int kw, int dw,
                    const ptrdiff_t *cols, int ekw, int edw, const fc_dst *d)
{
    int width = FC_LANES * nv;
    float out[FC_MAX_NJ * FC_MAX_NV * FC_LANES];
    memset(out, 0, sizeof(float) * nj * width);
    for (int r = 0; r < s->ntaps; r++)
        for (int j = 0; j < kw; j++, w += width)
            for (int o = 0; o < nj; o++) {
                ptrdiff_t off = cols ? cols[o / ekw] + (o % ekw) * edw : (ptrdiff_t)o * sw;
                for (int c = 0; c < width; c++)
                    out[o * width + c] += s->x[s->taps[r] + j * dw + off] * w[c];
            }
    for (int c = 0; c < d->nc; c++)
        for (int o = 0; o < nj; o++) {
            float *y = d->y + c * d->yc + o * d->ys;
            *y = (d->add ? *y : (d->bias ? d->bias[c] : 0.0f)) + out[o * width + c];
        }
}
#endif

/* The specialisations: rows (sw, kw, dw) of 3x3 kernels (stride 1 or 2, dilation 1 or 2) and 5x5
 * kernels, single taps (1x1 kernels, or any kernel as a flat table of taps: see FC_ROW_SHAPE) at stride
 * 1, 2 or 4, and any other row (runtime sw, kw, dw); element tables (one tap per row) of kernel rows of
 * 3 or 5 taps, dilation 1 or 2, or of single elements. */
/* Whether the forward tile runs kernel rows of (sw, kw, dw) (else a flat table of single taps): the
 * specialised rows, where the pixels that several taps read fit in registers beside the accumulators
 * (AVX-512's 32 registers). */
#if FC_LANES == 16
#define FC_ROW_SHAPE(sw, kw, dw) ((kw) == 1 || ((sw) == 1 && (kw) == 3 && (dw) <= 2) \
                                  || ((sw) == 1 && (kw) == 5 && (dw) == 1) || ((sw) == 2 && (kw) == 3 && (dw) == 1))
#else  /* 16 registers: a row's shared pixels do not fit beside 12 accumulators (AVX2: 75 vs 112 GFLOP/s) */
#define FC_ROW_SHAPE(sw, kw, dw) ((kw) == 1)
#endif
#define FC_CASE(NJ, NV) case NJ:                                                                      \
    if (s->cols) {                                                                                     \
        if (s->ekw == 3 && s->edw == 1) fc_tile(s, w, NJ, NV, 0, s->kw, s->dw, s->cols, 3, 1, d);      \
        else if (s->ekw == 5 && s->edw == 1) fc_tile(s, w, NJ, NV, 0, s->kw, s->dw, s->cols, 5, 1, d); \
        else if (s->ekw == 3 && s->edw == 2) fc_tile(s, w, NJ, NV, 0, s->kw, s->dw, s->cols, 3, 2, d); \
        else fc_tile(s, w, NJ, NV, 0, s->kw, s->dw, s->cols, 1, 0, d);                                 \
    }                                                                                                  \
    else if (s->sw == 1 && s->kw == 3 && s->dw == 1) fc_tile(s, w, NJ, NV, 1, 3, 1, NULL, 1, 0, d);    \
    else if (s->sw == 1 && s->kw == 1) fc_tile(s, w, NJ, NV, 1, 1, 1, NULL, 1, 0, d);                  \
    else if (s->sw == 1 && s->kw == 5 && s->dw == 1) fc_tile(s, w, NJ, NV, 1, 5, 1, NULL, 1, 0, d);    \
    else if (s->sw == 2 && s->kw == 3 && s->dw == 1) fc_tile(s, w, NJ, NV, 2, 3, 1, NULL, 1, 0, d);    \
    else if (s->sw == 1 && s->kw == 3 && s->dw == 2) fc_tile(s, w, NJ, NV, 1, 3, 2, NULL, 1, 0, d);    \
    else if (s->sw == 2 && s->kw == 1) fc_tile(s, w, NJ, NV, 2, 1, 1, NULL, 1, 0, d);                  \
    else if (s->sw == 4 && s->kw == 1) fc_tile(s, w, NJ, NV, 4, 1, 1, NULL, 1, 0, d);                  \
    else fc_tile(s, w, NJ, NV, s->sw, s->kw, s->dw, NULL, 1, 0, d);                                    \
    return;
#if FC_MAX_NJ > 6
#define FC_WIDE_CASES(NV) FC_CASE(7, NV) FC_CASE(8, NV) FC_CASE(9, NV) FC_CASE(10, NV) FC_CASE(11, NV) \
                          FC_CASE(12, NV) FC_CASE(13, NV) FC_CASE(14, NV)
#else
#define FC_WIDE_CASES(NV)
#endif
#define FC_CASES(NV) FC_CASE(1, NV) FC_CASE(2, NV) FC_CASE(3, NV) FC_CASE(4, NV) FC_CASE(5, NV) \
                     FC_CASE(6, NV) FC_WIDE_CASES(NV)

/* fc_tile specialised for each nj (1 <= nj <= FC_MAX_NJ), nv (1 <= nv <= FC_MAX_NV) and row shape
 * (the weight gradient's tables of ekw-tap rows need nj a multiple of ekw). */
static void fc_tile_any(const fc_src *s, const float *w, int nj, int nv, const fc_dst *d)
{
    if (nv == 1) {
        switch (nj) { FC_CASES(1) }
    }
#if FC_MAX_NV > 1
    if (nv == 2) {
        switch (nj) { FC_CASES(2) }
    }
#endif
}

#if defined(__AVX512F__) && (defined(__GNUC__) || defined(__clang__))
/* The weight gradient's tile for nr kernel rows of 3 taps (dilation 1) at stride st (1 or 2), nv vectors
 * of channels: element (k, e) of output pixel j reads x + taps[r] + cols[k] + st*j + e. Consecutive
 * pixels share inputs (two of a kernel row's three at stride 1, one at stride 2), so each pixel
 * broadcasts st new inputs per kernel row (and loads nv vectors of output gradient) for 3 * nr * nv
 * multiply-adds: two vectors halve the broadcasts per multiply-add. */
#define FC_WG_MAX_NR 4
static inline __attribute__((always_inline)) void fc_wgrad3(const fc_src *s, const float *w, int nr, int st,
                                                            int nv, const fc_dst *d)
{
    fc_vec acc[3 * FC_WG_MAX_NR][FC_MAX_NV], b[FC_WG_MAX_NR][3], g[FC_MAX_NV];
    for (int o = 0; o < 3 * nr; o++)
        for (int v = 0; v < nv; v++)
            acc[o][v] = (fc_vec){0};
    for (int r = 0, n = s->ntaps; r < n; r++) {
        const float *p = s->x + s->taps[r], *q[FC_WG_MAX_NR];
        for (int k = 0; k < nr; k++) {
            q[k] = p + s->cols[k];
            b[k][0] = (fc_vec){0} + q[k][0];
            if (st == 1)
                b[k][1] = (fc_vec){0} + q[k][1];
        }
        for (int j = 0, ow = s->kw; j < ow; j++, w += FC_LANES * nv) {
            for (int v = 0; v < nv; v++)
                g[v] = ((const fc_uvec *)w)[v];
            for (int k = 0; k < nr; k++) {
                if (st == 2)
                    b[k][1] = (fc_vec){0} + q[k][2 * j + 1];
                b[k][2] = (fc_vec){0} + q[k][st * j + 2];
                for (int e = 0; e < 3; e++)
                    for (int v = 0; v < nv; v++)
                        acc[3 * k + e][v] += b[k][e] * g[v];
                b[k][0] = st == 1 ? b[k][1] : b[k][2];
                if (st == 1)
                    b[k][1] = b[k][2];
            }
        }
    }
    fc_store(acc, 3 * nr, nv, d);
}

/* Kernel rows per tile of fc_wgrad3 that fit in the 32 registers: 4 with one vector (12 accumulators,
 * 12 inputs), 3 with two (18 and 9). */
static inline int fc_wgrad3_rows(int nv)
{
    return nv == 1 ? 4 : 3;
}

#define FC_WG_CASES(NV) switch (nr) {                                            \
    case 1: if (s->dw == 1) fc_wgrad3(s, w, 1, 1, NV, d); else fc_wgrad3(s, w, 1, 2, NV, d); return 1; \
    case 2: if (s->dw == 1) fc_wgrad3(s, w, 2, 1, NV, d); else fc_wgrad3(s, w, 2, 2, NV, d); return 1; \
    case 3: if (s->dw == 1) fc_wgrad3(s, w, 3, 1, NV, d); else fc_wgrad3(s, w, 3, 2, NV, d); return 1; \
    case 4: if (NV == 1) { if (s->dw == 1) fc_wgrad3(s, w, 4, 1, NV, d); else fc_wgrad3(s, w, 4, 2, NV, d); return 1; } \
    } return 0;

/* fc_wgrad3 for 1 to fc_wgrad3_rows(nv) kernel rows at stride 1 or 2 (the tile's pixel spacing s->dw);
 * returns 0 where it does not apply (then use fc_tile_any). */
static int fc_wgrad3_any(const fc_src *s, const float *w, int nr, int nv, const fc_dst *d)
{
    if (s->ekw != 3 || s->edw != 1 || (s->dw != 1 && s->dw != 2) || nr < 1 || nr > fc_wgrad3_rows(nv))
        return 0;
    if (nv == 1) {
        FC_WG_CASES(1)
    }
    if (nv == 2) {
        FC_WG_CASES(2)
    }
    return 0;
}
#else
static inline int fc_wgrad3_rows(int nv)
{
    (void)nv;
    return 0;
}

static int fc_wgrad3_any(const fc_src *s, const float *w, int nr, int nv, const fc_dst *d)
{
    (void)s; (void)w; (void)nr; (void)nv; (void)d;
    return 0;
}
#endif

/* Tiles of nearly equal width (at most most elements) covering n elements: returns the width. */
static inline int fc_tile_width_max(ptrdiff_t n, int most)
{
    ptrdiff_t tiles = (n + most - 1) / most;
    return tiles ? (int)((n + tiles - 1) / tiles) : 0;
}

static inline int fc_tile_width(ptrdiff_t n)
{
    return fc_tile_width_max(n, FC_MAX_NJ);
}

/* One output row of one weight block: y[c * yc + o * ys] (+ bias[c]) for c < nc channels, o < ow pixels. */
static void fc_conv_row(const fc_src *s, const float *w, int nv, int ow, float *y, ptrdiff_t yc, ptrdiff_t ys,
                        int nc, const float *bias)
{
    int nj = fc_tile_width_max(ow, nv > FC_NV ? FC_WIDE_NJ : FC_MAX_NJ);
    fc_src t = *s;
    fc_dst d = {y, yc, ys, nc, bias, 0};
    for (int o0 = 0; o0 < ow; o0 += nj, t.x += (ptrdiff_t)nj * s->sw, d.y += nj * ys)
        fc_tile_any(&t, w, ow - o0 < nj ? ow - o0 : nj, nv, &d);
}

/* The tile for few output channels (at most FC_PIX_MAX_NC): nr output rows of FC_LANES consecutive
 * pixels (npix of them valid) by nc channels, the pixels in the vector lanes. Each tap loads one input
 * vector per row (x + taps[t] + r*xr) and broadcasts one weight per channel (the first nc of the tap's
 * FC_LANES packed weights), so no lane holds a missing channel; output pixels lie ys apart. Stride 1
 * only; the input must stay readable FC_LANES - npix floats past each vector (a padded band with slack). */
#if FC_LANES == 16
#define FC_PIX_MAX_ACC 24  /* 32 registers: 24 accumulators, 3 input vectors, 1 broadcast */
#else
#define FC_PIX_MAX_ACC 12
#endif
#define FC_PIX_MAX_NC 8
#define FC_PIX_MAX_NR 3
static inline __attribute__((always_inline)) void fc_ptile(const float *x, const ptrdiff_t *taps, int ntaps,
                                                           ptrdiff_t xr, const float *w, int nc, int nr, int npix,
                                                           float *y, ptrdiff_t yc, ptrdiff_t yr,
                                                           ptrdiff_t ys, const float *bias)
{
    fc_vec acc[FC_PIX_MAX_NR][FC_PIX_MAX_NC], v[FC_PIX_MAX_NR];
    for (int r = 0; r < nr; r++)
        for (int c = 0; c < nc; c++)
            acc[r][c] = (fc_vec){0};
    for (int t = 0; t < ntaps; t++, w += FC_LANES) {
        for (int r = 0; r < nr; r++)
            v[r] = *(const fc_uvec *)(x + taps[t] + r * xr);
        for (int c = 0; c < nc; c++) {
            fc_vec b = (fc_vec){0} + w[c];
            for (int r = 0; r < nr; r++)
                acc[r][c] += v[r] * b;
        }
    }
    for (int r = 0; r < nr; r++)
        for (int c = 0; c < nc; c++) {
            fc_vec out = acc[r][c] + (bias ? bias[c] : 0.0f);
            float *dst = y + c * yc + r * yr;
#if defined(__AVX512F__)
            fc_store_pixels(dst, (__m512)out, npix, ys, 0);
#else
            if (npix == FC_LANES && ys == 1)
                *(fc_uvec *)dst = out;
            else
                for (int o = 0; o < npix; o++)
                    dst[o * ys] = out[o];
#endif
        }
}

/* Rows that fit beside nc channels' accumulators. */
static inline int fc_ptile_rows(int nc)
{
    int nr = FC_PIX_MAX_ACC / nc;
    return nr < FC_PIX_MAX_NR ? nr : FC_PIX_MAX_NR;
}

#define FC_PCASE(NC) case NC:                                                                          \
    switch (nr) {                                                                                      \
    case 1: fc_ptile(x, taps, ntaps, xr, w, NC, 1, npix, y, yc, yr, ys, bias); return;                     \
    case 2: if (2 * NC <= FC_PIX_MAX_ACC) fc_ptile(x, taps, ntaps, xr, w, NC, 2, npix, y, yc, yr, ys, bias); return; \
    case 3: if (3 * NC <= FC_PIX_MAX_ACC) fc_ptile(x, taps, ntaps, xr, w, NC, 3, npix, y, yc, yr, ys, bias); return; \
    } return;

/* fc_ptile specialised for each nc <= FC_PIX_MAX_NC and nr <= fc_ptile_rows(nc). */
static void fc_ptile_any(const float *x, const ptrdiff_t *taps, int ntaps, ptrdiff_t xr, const float *w, int nc,
                         int nr, int npix, float *y, ptrdiff_t yc, ptrdiff_t yr, ptrdiff_t ys, const float *bias)
{
    switch (nc) { FC_PCASE(1) FC_PCASE(2) FC_PCASE(3) FC_PCASE(4) FC_PCASE(5) FC_PCASE(6) FC_PCASE(7) FC_PCASE(8) }
}

/* Packs one block of weights in the order the tile reads them, or checks that it is packed: row
 * t = run*len + k of out holds, in lane l < nc, src[l*so + run*srun + (rev ? len-1-k : k)] (zero for
 * lanes past nc). Each source row is a run of consecutive taps, so AVX-512 moves 16 x 16 pieces with one
 * transpose. Only rows that differ (bit for bit) from what out holds are written, unless fresh; returns
 * whether any was. */
#ifndef FC_PACK_AHEAD
#define FC_PACK_AHEAD 64
#endif
static int fc_pack_block(const float *src, ptrdiff_t so, int runs, ptrdiff_t srun, int len, int rev, int nc,
                         int width, float *out, int fresh)
{
    int changed = 0;
#if defined(__AVX512F__) && (defined(__GNUC__) || defined(__clang__))
    if (width % 16 == 0) {  /* 16 lanes at a time */
        for (int run = 0; run < runs; run++)
        for (int h = 0; h < width; h += 16) {
            const float *base = src + run * srun + h * so;
            float *dst = out + (ptrdiff_t)run * len * width + h;
            for (int k0 = 0; k0 < len; k0 += 16) {
                int m = len - k0 < 16 ? len - k0 : 16, first = rev ? len - k0 - m : k0;
                __mmask16 mask = (__mmask16)((1u << m) - 1);
                __m512 r[16];
                for (int l = 0; l < 16; l++) {
                    _mm_prefetch((const char *)(base + l * so + first + FC_PACK_AHEAD), _MM_HINT_T0);
                    r[l] = h + l < nc ? _mm512_maskz_loadu_ps(mask, base + l * so + first) : _mm512_setzero_ps();
                }
                _mm_prefetch((const char *)(dst + (ptrdiff_t)(rev ? len - first - 16 : first) * width + width * FC_PACK_AHEAD), _MM_HINT_T0);
                fc_transpose16(r);  /* r[q]: source tap first + q of every lane */
                for (int q = 0; q < m; q++) {
                    float *row = dst + (ptrdiff_t)(rev ? len - 1 - first - q : first + q) * width;
                    if (fresh || _mm512_cmpneq_epi32_mask(_mm512_castps_si512(r[q]), _mm512_loadu_si512(row))) {
                        _mm512_storeu_ps(row, r[q]);
                        changed = 1;
                    }
                }
            }
        }
        return changed;
    }
#endif
    float row[FC_LANES * FC_MAX_NV];
    for (int run = 0; run < runs; run++)
        for (int k = 0; k < len; k++, out += width) {
            for (int l = 0; l < width; l++)
                row[l] = l < nc ? src[l * so + run * srun + (rev ? len - 1 - k : k)] : 0.0f;
            if (fresh || memcmp(row, out, sizeof(float) * width)) {
                memcpy(out, row, sizeof(float) * width);
                changed = 1;
            }
        }
    return changed;
}

#endif
