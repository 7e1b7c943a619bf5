// AVX-512F helpers shared by ttft's CPU kernels (panel.cpp, panel_bf16.cpp, attention.cpp,
// norm.cpp, act.cpp): the panel GEMMs' loop, e^x, and rows of f32 or bf16 widened to f32 and
// narrowed back with torch's rounding. Included only
// inside each file's `#pragma GCC target("avx512f")` region, after <immintrin.h>.
#pragma once

#include <cstdint>

namespace {

// e^x for x <= 0 (attention scores minus their row maximum, silu's e^-|g|): 2^n · p(r), x = n·ln2 + r, |r| <= ln2/2,
// p a degree-6 Taylor polynomial (relative error below 2e-7 on that interval).
inline __m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// Software prefetch for the panel GEMMs' weight stream, `kPrefetchAhead` bytes ahead of the
// load, into L1. Why: from about 4 rows up a tile's FMAs take long enough that the hardware
// prefetchers no longer keep the stream at the memory's read rate. Measured on a 2-core Zen 5
// (SmolLM2-135M's 121 weights, 538 MB per pass, in periods when a plain read ran at 75-79
// GB/s): f32 with 8 rows 53 -> 67 GB/s, 12 rows 38 -> 65; 5 rows 61 -> 64. With 1 row it cost 3 %
// (70.5 -> 68.4), hence only for tiles of kPrefetchRows rows or more. 16 KiB ahead was best of
// 1, 2, 4, 8, 16 and 32 KiB (L2 as the target was no better). Past the end of a panel the next
// panel follows in memory; past a weight's end the lines are wasted (at most 16 KiB a thread).
constexpr int64_t kPrefetchAhead = 16384;
constexpr int kPrefetchRows = 4;

// One 128-byte step of a panel stream (32 f32, or 32 bf16 pairs): prefetch its two lines ahead.
inline void prefetch_step(const void *step) {
  const char *c = (const char *)step + kPrefetchAhead;
  _mm_prefetch(c, _MM_HINT_T0);
  _mm_prefetch(c + 64, _MM_HINT_T0);
}

inline __mmask16 tail(int64_t left) {
  return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}

// Elements [j, j + n) of a row, n <= 16, widened to f32 (zeros past n). AVX-512F has no masked
// 16-bit loads, so a partial bf16 chunk goes through a small buffer.
inline __m512 load(const void *x, bool bf16, int64_t j, int64_t n) {
  if (!bf16) return _mm512_maskz_loadu_ps(tail(n), (const float *)x + j);
  const uint16_t *p = (const uint16_t *)x + j;
  uint16_t buf[16] = {0};
  if (n < 16) {
    for (int64_t i = 0; i < n; i++) buf[i] = p[i];
    p = buf;
  }
  const __m256i h = _mm256_loadu_si256((const __m256i *)p);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// f32 -> bf16 bits, round to nearest even; NaN stays a quiet NaN.
inline __m512i to_bf16_bits(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF)));
  r = _mm512_srli_epi32(r, 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  return _mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC0));
}

inline __m512 round_bf16(__m512 v) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(to_bf16_bits(v), 16));
}

inline void store(void *y, bool bf16, int64_t j, int64_t n, __m512 v) {
  if (!bf16) {
    _mm512_mask_storeu_ps((float *)y + j, tail(n), v);
    return;
  }
  const __m256i h = _mm512_cvtepi32_epi16(to_bf16_bits(v));
  uint16_t *p = (uint16_t *)y + j;
  if (n >= 16) {
    _mm256_storeu_si256((__m256i *)p, h);
    return;
  }
  uint16_t buf[16];
  _mm256_storeu_si256((__m256i *)buf, h);
  for (int64_t i = 0; i < n; i++) p[i] = buf[i];
}

// The loop both panel GEMMs share: panels [p0, p1) of y [rows, out] = x [rows, in] · Wᵀ + bias,
// each panel (32 output columns, `panel_elems` packed elements) against tiles of up to
// `max_rows` rows of x; `tiles[n]` runs n rows. T is the element type (float, or bf16 bits).
template <typename T, typename Tile>
void panel_loop(const T *x, int64_t rows, int64_t in, const T *packed, int64_t panel_elems,
                int64_t p0, int64_t p1, const float *bias, T *y, int64_t out, const Tile *tiles,
                int64_t max_rows) {
  for (int64_t p = p0; p < p1; p++) {
    const int64_t col = p * 32;
    const int cols = (int)(out - col < 32 ? out - col : 32);
    const float *b = bias != nullptr ? bias + col : nullptr;
    for (int64_t m = 0; m < rows; m += max_rows) {
      const int64_t n = rows - m < max_rows ? rows - m : max_rows;
      tiles[n](x + m * in, in, packed + p * panel_elems, b, y + m * out + col, out, cols);
    }
  }
}

}  // namespace
