// ttft's own f32 GEMM for few rows (short prompts, decode): y = x·Wᵀ + b with W packed once at load
// into panels of 32 output columns, [panel][in][32], so the weight streams through the core
// exactly once, in order, at the memory's read bandwidth.
//
// Why: with 5–12 rows the product is a weight stream, not arithmetic. MKL's small-M sgemm
// streams it at about 5 GB/s on the machine in shared/notes/ground-truth.md and oneDNN's packed
// linear at about 16 GB/s; this kernel reaches 30–36 GB/s there (the plain read rate) and about
// 210 GFLOP/s at 512 rows (oneDNN: 226), scripts/bench-hf-prefill.sh shows both.
//
// The register tile is up to 12 rows × 32 columns (24 accumulators of 16 floats): each weight
// vector loaded is used by every row of the tile, each row's x[m, i] is one broadcast. Rows beyond
// 12 run as further tiles over the same panel, which is then in L2. Sums run over `in` in order,
// in f32, like a plain dot product.
//
// Pure C++ with no libtorch headers: this file alone is compiled for AVX-512F, and only called
// when the CPU has it (ttft_panel_supported). The threading is in onednn.cpp.
#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f")
#include <immintrin.h>

#include "simd.h"

namespace {

constexpr int64_t kWidth = 32;

// One tile: `M` rows of x against one panel, columns [0, cols) stored (cols < 32 only in the
// last panel of a weight whose output count is not a multiple of 32).
template <int M>
void tile(const float *x, int64_t in, const float *p, const float *bias, float *y, int64_t out,
          int cols) {
  __m512 a0[M], a1[M];
  for (int m = 0; m < M; m++) {
    a0[m] = _mm512_setzero_ps();
    a1[m] = _mm512_setzero_ps();
  }
  for (int64_t i = 0; i < in; i++) {
    if constexpr (M >= kPrefetchRows) prefetch_step(p + i * kWidth);
    const __m512 w0 = _mm512_loadu_ps(p + i * kWidth);
    const __m512 w1 = _mm512_loadu_ps(p + i * kWidth + 16);
    for (int m = 0; m < M; m++) {
      const __m512 b = _mm512_set1_ps(x[m * in + i]);
      a0[m] = _mm512_fmadd_ps(b, w0, a0[m]);
      a1[m] = _mm512_fmadd_ps(b, w1, a1[m]);
    }
  }
  const __mmask16 k0 = cols >= 16 ? 0xFFFF : (__mmask16)((1u << cols) - 1);
  const __mmask16 k1 = cols >= 32 ? 0xFFFF : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
  __m512 b0 = _mm512_setzero_ps(), b1 = _mm512_setzero_ps();
  if (bias != nullptr) {
    b0 = _mm512_maskz_loadu_ps(k0, bias);
    b1 = _mm512_maskz_loadu_ps(k1, bias + 16);
  }
  for (int m = 0; m < M; m++) {
    _mm512_mask_storeu_ps(y + m * out, k0, _mm512_add_ps(a0[m], b0));
    _mm512_mask_storeu_ps(y + m * out + 16, k1, _mm512_add_ps(a1[m], b1));
  }
}

using Tile = void (*)(const float *, int64_t, const float *, const float *, float *, int64_t, int);
constexpr int kMaxRows = 12;
const Tile kTiles[kMaxRows + 1] = {nullptr,  tile<1>, tile<2>, tile<3>,  tile<4>,  tile<5>, tile<6>,
                                   tile<7>,  tile<8>, tile<9>, tile<10>, tile<11>, tile<12>};

}  // namespace

extern "C" {

int ttft_panel_supported() { return __builtin_cpu_supports("avx512f") ? 1 : 0; }

// Panels [p0, p1) of y [rows, out] = x [rows, in] · Wᵀ + bias (bias [out] or null), W packed as
// [ceil(out / 32)][in][32] with zero columns past `out`.
void ttft_panel_rows(const float *x, int64_t rows, int64_t in, const float *packed, int64_t p0,
                     int64_t p1, const float *bias, float *y, int64_t out) {
  panel_loop(x, rows, in, packed, in * kWidth, p0, p1, bias, y, out, kTiles, kMaxRows);
}

}  // extern "C"

#pragma GCC pop_options
#else

extern "C" {
int ttft_panel_supported() { return 0; }
void ttft_panel_rows(const float *, int64_t, int64_t, const float *, int64_t, int64_t,
                     const float *, float *, int64_t) {}
}

#endif
