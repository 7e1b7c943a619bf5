// ttft's rotary position embedding for the CPU: x·cos + rotate_half(x)·sin over rows of
// x [b, heads, t, d] in one pass, f32 or bf16 with transformers' roundings.
//
// Why: libtorch runs transformers' `apply_rotary_pos_emb` as five allocating ops (neg, cat, two
// multiplies, an add) on q and again on k, ten per layer. With few tokens each op is mostly
// dispatch and allocation: measured on a 2-core Zen 5, an 8-token f32 SmolLM2
// prefill spent about 1.5 ms outside its projections, of about 11-14 ms.
// Roundings as transformers (modeling_llama.apply_rotary_pos_emb, `q * cos + rotate_half(q) *
// sin` in the model dtype): each product rounded to the dtype, then their sum, with no fused
// multiply-add (see the pragma below), so the result is bit-identical to libtorch's chain in f32
// and bf16. rotate_half(x) = cat(-x[half:], x[:half]).
//
// Pure C++ with no libtorch headers, compiled for AVX-512F and called only when the CPU has it.
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f")
// Each product rounded on its own, as libtorch's separate ops do: GCC would otherwise fuse a
// product and the sum into one FMA (its default -ffp-contract=fast), which changes the last bit.
#pragma GCC optimize("fp-contract=off")
#include <immintrin.h>

#include "simd.h"

extern "C" {

// Rows [r0, r1) of x [b][heads][t][d] (element strides sb, sh, st; unit stride along d; bf16
// when bf16 != 0), row r being (r / (heads · t), r / t % heads, r % t), against cos and sin
// [t][d] in x's dtype; y [b][heads][t][d] contiguous.
void ttft_rope_rows(const void *x, int bf16, int64_t heads, int64_t t, int64_t sb, int64_t sh,
                    int64_t st, int64_t d, const void *cos, const void *sin, int64_t r0,
                    int64_t r1, void *y) {
  const size_t elt = bf16 ? 2 : 4;
  const int64_t half = d / 2;
  for (int64_t r = r0; r < r1; r++) {
    const int64_t i = r % t, head = r / t % heads, batch = r / (heads * t);
    const char *xr = (const char *)x + (batch * sb + head * sh + i * st) * elt;
    const char *c = (const char *)cos + i * d * elt, *s = (const char *)sin + i * d * elt;
    char *yr = (char *)y + r * d * elt;
    for (int64_t j = 0; j < half; j += 16) {
      const int64_t n = half - j;
      const __m512 x1 = load(xr, bf16, j, n), x2 = load(xr, bf16, half + j, n);
      __m512 a1 = _mm512_mul_ps(x1, load(c, bf16, j, n));
      __m512 b1 = _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), x2), load(s, bf16, j, n));
      __m512 a2 = _mm512_mul_ps(x2, load(c, bf16, half + j, n));
      __m512 b2 = _mm512_mul_ps(x1, load(s, bf16, half + j, n));
      if (bf16) {
        a1 = round_bf16(a1), b1 = round_bf16(b1), a2 = round_bf16(a2), b2 = round_bf16(b2);
      }
      store(yr, bf16, j, n, _mm512_add_ps(a1, b1));
      store(yr, bf16, half + j, n, _mm512_add_ps(a2, b2));
    }
  }
}

}  // extern "C"

#pragma GCC pop_options
#else

extern "C" {
void ttft_rope_rows(const void *, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                    const void *, const void *, int64_t, int64_t, void *) {}
}

#endif
