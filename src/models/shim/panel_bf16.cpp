// ttft's bf16 GEMM for few rows: y = round_bf16(x·Wᵀ + b), the weight packed once at load into
// panels of 32 output columns holding input pairs, [panel][ceil(in / 2)][32][2], so one
// VDPBF16PS multiplies a broadcast pair of x by 16 columns' pairs and accumulates in f32 (the
// instruction oneDNN's bf16 GEMM uses on CPUs without AMX, hence the same numerics class as
// transformers' bf16 linear: bf16 products summed in f32, rounded to bf16 once at the end).
//
// Why: with 5–12 rows the product streams the weight; oneDNN's bf16 path read SmolLM2's 270 MB
// at about 13–16 GB/s here (an 8-token bf16 prefill was no faster than f32 with panel.cpp).
//
// Tiles and threading as in panel.cpp. Compiled for AVX-512F + AVX512_BF16 and called only when
// the CPU has both (ttft_panel_bf16_supported).
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bf16")
#include <immintrin.h>

#include "simd.h"

namespace {

constexpr int64_t kWidth = 32;

// The pair (x[i], x[i + 1]) broadcast as one 32-bit lane pattern (a single broadcast load).
inline __m512bh pair(const uint16_t *x, int64_t i) {
  int32_t v;
  __builtin_memcpy(&v, x + i, sizeof v);
  return (__m512bh)_mm512_set1_epi32(v);
}

template <int M>
void tile(const uint16_t *x, int64_t in, const uint16_t *p, const float *bias, uint16_t *y,
          int64_t out, int cols) {
  __m512 a0[M], a1[M];
  for (int m = 0; m < M; m++) a0[m] = a1[m] = _mm512_setzero_ps();
  const int64_t whole = in / 2;
  for (int64_t ip = 0; ip < whole; ip++) {
    if constexpr (M >= kPrefetchRows) prefetch_step(p + ip * 2 * kWidth);
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(p + ip * 2 * kWidth);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(p + ip * 2 * kWidth + kWidth);
    for (int m = 0; m < M; m++) {
      const __m512bh b = pair(x + m * in, 2 * ip);
      a0[m] = _mm512_dpbf16_ps(a0[m], b, w0);
      a1[m] = _mm512_dpbf16_ps(a1[m], b, w1);
    }
  }
  if (in % 2 != 0) {  // the last input alone, its partner zero (as the packed weight's)
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(p + whole * 2 * kWidth);
    const __m512bh w1 = (__m512bh)_mm512_loadu_si512(p + whole * 2 * kWidth + kWidth);
    for (int m = 0; m < M; m++) {
      const __m512bh b = (__m512bh)_mm512_set1_epi32((int32_t)x[m * in + in - 1]);
      a0[m] = _mm512_dpbf16_ps(a0[m], b, w0);
      a1[m] = _mm512_dpbf16_ps(a1[m], b, w1);
    }
  }
  const int c0 = cols < 16 ? cols : 16, c1 = cols - c0;
  __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
  if (bias != nullptr) {
    b0 = _mm512_maskz_loadu_ps(tail(c0), bias);
    b1 = _mm512_maskz_loadu_ps(tail(c1), bias + 16);
  }
  for (int m = 0; m < M; m++) {
    store(y + m * out, true, 0, c0, _mm512_add_ps(a0[m], b0));
    if (c1 > 0) store(y + m * out, true, 16, c1, _mm512_add_ps(a1[m], b1));
  }
}

using Tile = void (*)(const uint16_t *, int64_t, const uint16_t *, const float *, uint16_t *,
                      int64_t, int);
constexpr int kMaxRows = 12;
const Tile kTiles[kMaxRows + 1] = {nullptr,  tile<1>, tile<2>, tile<3>,  tile<4>,  tile<5>, tile<6>,
                                   tile<7>,  tile<8>, tile<9>, tile<10>, tile<11>, tile<12>};

}  // namespace

extern "C" {

int ttft_panel_bf16_supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16") ? 1 : 0;
}

// Panels [p0, p1) of y [rows, out] (bf16) = x [rows, in] (bf16) · Wᵀ + bias (f32 [out] or
// null), W packed as [ceil(out / 32)][ceil(in / 2)][32][2] with zeros past `out` and `in`.
void ttft_panel_rows_bf16(const uint16_t *x, int64_t rows, int64_t in, const uint16_t *packed,
                          int64_t p0, int64_t p1, const float *bias, uint16_t *y, int64_t out) {
  const int64_t pairs = (in + 1) / 2;
  panel_loop(x, rows, in, packed, pairs * 2 * kWidth, p0, p1, bias, y, out, kTiles, kMaxRows);
}

}  // extern "C"

#pragma GCC pop_options
#else

extern "C" {
int ttft_panel_bf16_supported() { return 0; }
void ttft_panel_rows_bf16(const uint16_t *, int64_t, int64_t, const uint16_t *, int64_t, int64_t,
                          const float *, uint16_t *, int64_t) {}
}

#endif
