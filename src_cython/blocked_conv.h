/* Register-blocked direct convolution, float32: the C core of the "blocked" algorithm (_blocked.pyx).
 *
 * A tile of output, nj consecutive pixels of one output row by FC_LANES*nv output channels (16 x 1
 * with AVX-512, else 8 x 1 or 2), stays in nj*nv vector registers while the reduction runs over every
 * (input channel, kernel row, kernel column). Each step loads the tap's FC_LANES*nv weights (packed
 * contiguously, see pack_weights in _blocked.pyx), broadcasts the nj input pixels the tap reads, and
 * does nj*nv multiply-adds. Nothing is unfolded: the input is read in place, or from a zero-padded copy
 * of the rows one task needs. The weight gradient runs the same tile with the roles turned (fc_src).
 *
 * The vector type is GCC/Clang's generic one; built with -march=native it becomes AVX2 or AVX-512
 * fused multiply-adds. Other compilers get the same loops on scalars.
 */
#ifndef FASTCONV_BLOCKED_CONV_H
#define FASTCONV_BLOCKED_CONV_H

#include <stddef.h>
#include <string.h>

/* Floats per vector, vectors per weight block, output pixels per tile. Measured on AVX-512 (Zen 4):
 * 14 x 1 accumulators beat 14 x 2 (which spill) and wider tiles (20 to 28 pixels). */
#if defined(__AVX512F__)
#define FC_LANES 16
#define FC_MAX_NV 1
#define FC_MAX_NJ 14  /* 32 registers: 14 accumulators, 1 weight vector, 1 broadcast */
#else
#define FC_LANES 8
#define FC_MAX_NV 2
#define FC_MAX_NJ 6   /* 16 registers: 6 x 2 accumulators, 2 weight vectors, 1 broadcast */
#endif

/* Where one tile reads its input. The reduction runs over ntaps offsets; tile element o (an output
 * pixel of the forward pass, a kernel tap of the weight gradient) adds cols[o], or o * sw. */
typedef struct {
    const float *x;         /* input at the tile's first element */
    const ptrdiff_t *taps;  /* reduction offsets from x: the kernel taps (c, i, j) of the forward pass,
                               c * channel stride + i*dh * row stride + j*dw; the output pixels of the
                               weight gradient */
    int ntaps;
    int sw;                 /* tile element o reads x + taps[t] + o * sw ... */
    const ptrdiff_t *cols;  /* ... or x + taps[t] + cols[o] when this is not NULL */
} fc_src;

#if defined(__GNUC__) || defined(__clang__)
typedef float fc_vec __attribute__((vector_size(4 * FC_LANES)));

/* out[o * FC_LANES*nv + c] = sum over t of w[t, c] * x[taps[t] + (cols ? cols[o] : o*sw)], o < nj.
 * Inlined with constant nj, nv and (for 1 and 2) sw, so the accumulators are registers and the input
 * offsets are constants. */
static inline __attribute__((always_inline)) void fc_tile(const fc_src *s, const float *w, int nj, int nv,
                                                          int sw, const ptrdiff_t *cols, float *out)
{
    fc_vec acc[FC_MAX_NJ][FC_MAX_NV], wv[FC_MAX_NV];
    ptrdiff_t off[FC_MAX_NJ];
    const float *x = s->x;
    const ptrdiff_t *taps = s->taps;
    for (int o = 0; o < nj; o++) {
        off[o] = cols ? cols[o] : (ptrdiff_t)o * sw;
        for (int v = 0; v < nv; v++)
            acc[o][v] = (fc_vec){0};
    }
    for (int t = 0, n = s->ntaps; t < n; t++, w += FC_LANES * nv) {
        const float *p = x + taps[t];
        memcpy(wv, w, sizeof(fc_vec) * nv);
        for (int o = 0; o < nj; o++) {
            float xv = p[off[o]];
            for (int v = 0; v < nv; v++)
                acc[o][v] += xv * wv[v];
        }
    }
    for (int o = 0; o < nj; o++)
        memcpy(out + o * FC_LANES * nv, acc[o], sizeof(fc_vec) * nv);
}
#else
static void fc_tile(const fc_src *s, const float *w, int nj, int nv, int sw, const ptrdiff_t *cols,
                    float *out)
{
    int width = FC_LANES * nv;
    memset(out, 0, sizeof(float) * nj * width);
    for (int t = 0; t < s->ntaps; t++, w += width)
        for (int o = 0; o < nj; o++)
            for (int c = 0; c < width; c++)
                out[o * width + c] += s->x[s->taps[t] + (cols ? cols[o] : (ptrdiff_t)o * sw)] * w[c];
}
#endif

#define FC_CASE(NJ, NV) case NJ:                                         \
    if (s->cols) fc_tile(s, w, NJ, NV, 0, s->cols, out);                  \
    else if (s->sw == 1) fc_tile(s, w, NJ, NV, 1, NULL, out);             \
    else if (s->sw == 2) fc_tile(s, w, NJ, NV, 2, NULL, out);             \
    else fc_tile(s, w, NJ, NV, s->sw, NULL, out);                         \
    return;
#if FC_MAX_NJ > 6
#define FC_WIDE_CASES(NV) FC_CASE(7, NV) FC_CASE(8, NV) FC_CASE(9, NV) FC_CASE(10, NV) FC_CASE(11, NV) \
                          FC_CASE(12, NV) FC_CASE(13, NV) FC_CASE(14, NV)
#else
#define FC_WIDE_CASES(NV)
#endif
#define FC_CASES(NV) FC_CASE(1, NV) FC_CASE(2, NV) FC_CASE(3, NV) FC_CASE(4, NV) FC_CASE(5, NV) \
                     FC_CASE(6, NV) FC_WIDE_CASES(NV)

/* fc_tile specialised for each nj (1 <= nj <= FC_MAX_NJ), nv (1 <= nv <= FC_MAX_NV) and offsets of
 * stride 1, 2, other, or from a table. */
static void fc_tile_any(const fc_src *s, const float *w, int nj, int nv, float *out)
{
    if (nv == 1) {
        switch (nj) { FC_CASES(1) }
    }
#if FC_MAX_NV > 1
    switch (nj) { FC_CASES(2) }
#endif
}

/* One output row of one weight block: y[c * yc + o] (+ bias[c]) for c < nc channels, o < ow pixels.
 * The row is cut into tiles of nearly equal width (at most FC_MAX_NJ pixels). */
static void fc_conv_row(const fc_src *s, const float *w, int nv, int ow, float *y, ptrdiff_t yc, int nc,
                        const float *bias)
{
    float tile[FC_MAX_NJ * FC_MAX_NV * FC_LANES];
    int width = FC_LANES * nv, tiles = (ow + FC_MAX_NJ - 1) / FC_MAX_NJ;
    int nj = tiles ? (ow + tiles - 1) / tiles : 0;
    for (int o0 = 0; o0 < ow; o0 += nj) {
        int n = ow - o0 < nj ? ow - o0 : nj;
        fc_src t = *s;
        t.x += (ptrdiff_t)o0 * s->sw;
        fc_tile_any(&t, w, n, nv, tile);
        for (int c = 0; c < nc; c++) {
            float b = bias ? bias[c] : 0.0f;
            for (int j = 0; j < n; j++)
                y[c * yc + o0 + j] = tile[j * width + c] + b;
        }
    }
}

#endif
