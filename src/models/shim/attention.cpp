// ttft's causal attention for the CPU: softmax(q·kᵀ · scale) · v over each query's keys
// 0..past+i, in f32, for one head and a block of query rows at a time.
//
// Why: libtorch's CPU scaled_dot_product_attention runs its blocks through small GEMM calls
// (MKL's on f32, which is slow for small shapes on the AMD CPU of shared/notes/ground-truth.md)
// and took 5.4 ms per SmolLM2 layer at 500 tokens, about a third of a bf16 long-prompt prefill.
// Here the scores of 4 query rows are a register tile over 32 keys (K is transposed once per
// call, so keys are contiguous), the softmax is exact (max, exp, sum over the row; the row is
// at most the context long), and P·V is a second register tile over the head dimension.
// Differences from transformers' eager attention are rounding only: the normalisation by the
// row sum is applied to the output instead of to each probability.
//
// Pure C++ with no libtorch headers, compiled for AVX-512F and called only when the CPU has it
// (ttft_panel_supported, panel.cpp). Threading and layout checks are in onednn.cpp.
#include <cmath>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f")
#include <immintrin.h>

#include "simd.h"

namespace {

constexpr int kRows = 4;  // query rows per register tile


// Scores of `rows` query rows against keys [0, keys): s[r][j] = scale · q[r]·k[j], with
// kt [d][stride] (keys contiguous, zero past the cache's length).
void scores(const float *q, int rows, int64_t d, const float *kt, int64_t stride, int64_t keys,
            float scale, float *s, int64_t s_stride) {
  const __m512 sc = _mm512_set1_ps(scale);
  for (int64_t j = 0; j < keys; j += 32) {
    __m512 a0[kRows], a1[kRows];
    for (int r = 0; r < kRows; r++) a0[r] = a1[r] = _mm512_setzero_ps();
    for (int64_t c = 0; c < d; c++) {
      const __m512 k0 = _mm512_loadu_ps(kt + c * stride + j);
      const __m512 k1 = _mm512_loadu_ps(kt + c * stride + j + 16);
      for (int r = 0; r < rows; r++) {
        const __m512 b = _mm512_set1_ps(q[r * d + c]);
        a0[r] = _mm512_fmadd_ps(b, k0, a0[r]);
        a1[r] = _mm512_fmadd_ps(b, k1, a1[r]);
      }
    }
    for (int r = 0; r < rows; r++) {
      _mm512_storeu_ps(s + r * s_stride + j, _mm512_mul_ps(a0[r], sc));
      _mm512_storeu_ps(s + r * s_stride + j + 16, _mm512_mul_ps(a1[r], sc));
    }
  }
}

// In place: s[j] = exp(s[j] - max) for j < n, 0 for n <= j < padded; returns the sum.
float softmax_row(float *s, int64_t n, int64_t padded) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < n; j += 16)
    m = _mm512_max_ps(m, _mm512_mask_loadu_ps(m, tail(n - j), s + j));
  const __m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(m));
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < padded; j += 16) {
    const __mmask16 k = j < n ? tail(n - j) : 0;
    const __m512 e = _mm512_maskz_mov_ps(k, exp_ps(_mm512_sub_ps(_mm512_loadu_ps(s + j), mx)));
    _mm512_storeu_ps(s + j, e);
    sum = _mm512_add_ps(sum, e);
  }
  return _mm512_reduce_add_ps(sum);
}

// o[r][c0 .. c0 + 16W) += Σ_j p[r][j] · v[j][c0 ..], for `rows` rows and keys [0, keys); key
// j's row starts at v + j · v_stride.
template <int W>
void pv(const float *p, int rows, int64_t p_stride, const float *v, int64_t v_stride,
        int64_t keys, const float *inv_sum, float *o, int64_t o_stride) {
  __m512 a[kRows][W];
  for (int r = 0; r < kRows; r++)
    for (int w = 0; w < W; w++) a[r][w] = _mm512_setzero_ps();
  for (int64_t j = 0; j < keys; j++) {
    __m512 vv[W];
    for (int w = 0; w < W; w++) vv[w] = _mm512_loadu_ps(v + j * v_stride + w * 16);
    for (int r = 0; r < rows; r++) {
      const __m512 b = _mm512_set1_ps(p[r * p_stride + j]);
      for (int w = 0; w < W; w++) a[r][w] = _mm512_fmadd_ps(b, vv[w], a[r][w]);
    }
  }
  for (int r = 0; r < rows; r++) {
    const __m512 is = _mm512_set1_ps(inv_sum[r]);
    for (int w = 0; w < W; w++) _mm512_storeu_ps(o + r * o_stride + w * 16, _mm512_mul_ps(a[r][w], is));
  }
}

}  // namespace

extern "C" {

// Query rows [i0, i1) of one head: q [t][d] (this head's rows), kt [d][stride], v [keys][d]
// with key j's row at v + j * v_stride, row i sees keys [0, past + i]; output rows
// o + i * o_stride. `scratch` holds kRows * stride floats. d must be a multiple of 16.
void ttft_attn_rows(const float *q, int64_t d, const float *kt, int64_t stride, const float *v,
                    int64_t v_stride, int64_t past, int64_t i0, int64_t i1, float scale, float *o,
                    int64_t o_stride, float *scratch) {
  for (int64_t i = i0; i < i1; i += kRows) {
    const int rows = (int)(i1 - i < kRows ? i1 - i : kRows);
    const int64_t keys = past + i + rows;  // the last row's count; earlier rows see fewer
    const int64_t padded = (keys + 31) / 32 * 32;
    scores(q + i * d, rows, d, kt, stride, keys, scale, scratch, stride);
    float inv[kRows];
    for (int r = 0; r < rows; r++) inv[r] = 1.0f / softmax_row(scratch + r * stride, past + i + r + 1, padded);
    for (int64_t c = 0; c < d; c += 64) {
      const int64_t w = (d - c < 64 ? d - c : 64) / 16;
      float *oc = o + i * o_stride + c;
      const float *vc = v + c;
      if (w == 4) pv<4>(scratch, rows, stride, vc, v_stride, keys, inv, oc, o_stride);
      else if (w == 3) pv<3>(scratch, rows, stride, vc, v_stride, keys, inv, oc, o_stride);
      else if (w == 2) pv<2>(scratch, rows, stride, vc, v_stride, keys, inv, oc, o_stride);
      else pv<1>(scratch, rows, stride, vc, v_stride, keys, inv, oc, o_stride);
    }
  }
}

}  // extern "C"

#pragma GCC pop_options
#else

extern "C" {
void ttft_attn_rows(const float *, int64_t, const float *, int64_t, const float *, int64_t,
                    int64_t, int64_t, int64_t, float, float *, int64_t, float *) {}
}

#endif
