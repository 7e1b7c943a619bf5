// ttft's RMSNorm for the CPU, one pass per row, in f32 or bf16 with transformers' roundings.
//
// Why: libtorch runs LlamaRMSNorm as seven ops (widen, square, mean, add, rsqrt, multiply,
// narrow, then the weight's multiply), each a pass over the activations: 0.12 ms for SmolLM2's
// [498, 576] in bf16 here, 0.06 ms in one pass. Here a row is read twice (sum of squares, then
// the scaled write) and written once.
//
// Roundings, as transformers does them (modeling_llama.LlamaRMSNorm, modeling_gemma.GemmaRMSNorm):
// the statistics in f32; Llama: y = w · round(x · r) with the product rounded to the model
// dtype before the weight's multiply (`weight * hidden.to(input_dtype)`); Gemma (one_plus):
// y = round((x · r) · (1 + w)) with the whole product in f32. Rounding to bf16 is to nearest
// even, like torch's conversion.
//
// Pure C++ with no libtorch headers, compiled for AVX-512F and called only when the CPU has it.
#include <cmath>
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f")
#include <immintrin.h>

#include "simd.h"

extern "C" {

// Rows [r0, r1) of x [rows][n] (f32, or bf16 when bf16 != 0) into y, same layout; w [n] f32
// (Llama's weight widened exactly, or Gemma's 1 + w when one_plus != 0).
void ttft_rms_rows(const void *x, int bf16, int64_t n, int64_t r0, int64_t r1, const float *w,
                   float eps, int one_plus, void *y) {
  const size_t elt = bf16 ? 2 : 4;
  for (int64_t r = r0; r < r1; r++) {
    const char *xr = (const char *)x + r * n * elt;
    char *yr = (char *)y + r * n * elt;
    __m512 ss = _mm512_setzero_ps();
    for (int64_t j = 0; j < n; j += 16) {
      const __m512 v = load(xr, bf16, j, n - j);
      ss = _mm512_fmadd_ps(v, v, ss);
    }
    const float rs = 1.0f / std::sqrt(_mm512_reduce_add_ps(ss) / (float)n + eps);
    const __m512 rv = _mm512_set1_ps(rs);
    for (int64_t j = 0; j < n; j += 16) {
      const __m512 wv = _mm512_maskz_loadu_ps(tail(n - j), w + j);
      __m512 t = _mm512_mul_ps(load(xr, bf16, j, n - j), rv);
      if (bf16 && !one_plus) t = round_bf16(t);
      store(yr, bf16, j, n - j, _mm512_mul_ps(t, wv));
    }
  }
}

}  // extern "C"

#pragma GCC pop_options
#else

extern "C" {
void ttft_rms_rows(const void *, int, int64_t, int64_t, int64_t, const float *, float, int,
                   void *) {}
}

#endif
