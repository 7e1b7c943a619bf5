// What the libtorch-facing shim files (onednn.cpp, layer.cpp) share: the error convention of
// the Rust boundary, row splitting across libtorch's threads, the raw kernels (each in its own
// file, compiled without libtorch headers) and the two kernel drivers onednn.cpp defines.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Parallel.h>
#include <cstdint>
#include <cstring>
#include <exception>
#include <string>

extern "C" {
// panel.cpp: the AVX-512 small-M kernel.
int ttft_panel_supported();
void ttft_panel_rows(const float *x, int64_t rows, int64_t in, const float *packed, int64_t p0,
                     int64_t p1, const float *bias, float *y, int64_t out);
// panel_bf16.cpp: the same for bf16 (AVX512_BF16 pairs).
int ttft_panel_bf16_supported();
void ttft_panel_rows_bf16(const uint16_t *x, int64_t rows, int64_t in, const uint16_t *packed,
                          int64_t p0, int64_t p1, const float *bias, uint16_t *y, int64_t out);
// attention.cpp: causal attention rows of one head.
void ttft_attn_rows(const float *q, int64_t d, const float *kt, int64_t stride, const float *v,
                    int64_t v_stride, int64_t past, int64_t i0, int64_t i1, float scale, float *o,
                    int64_t o_stride, float *scratch);
// norm.cpp: RMSNorm rows.
void ttft_rms_rows(const void *x, int bf16, int64_t n, int64_t r0, int64_t r1, const float *w,
                   float eps, int one_plus, void *y);
// act.cpp: silu(gate) · up rows.
void ttft_silu_mul_rows(const void *gu, int bf16, int64_t inter, int64_t r0, int64_t r1, void *y);
// rope.cpp: rotary embedding rows.
void ttft_rope_rows(const void *x, int bf16, int64_t heads, int64_t t, int64_t sb, int64_t sh,
                    int64_t st, int64_t d, const void *cos, const void *sin, int64_t r0,
                    int64_t r1, void *y);
}

namespace ttft {

// The exception's first line into `err` (the Rust side turns it into a TchError).
inline void fail(const std::exception &e, char *err, size_t len) {
  if (len == 0) return;
  std::string msg = e.what();
  auto nl = msg.find('\n');
  if (nl != std::string::npos) msg.resize(nl);
  std::strncpy(err, msg.c_str(), len - 1);
  err[len - 1] = '\0';
}

// Run `f` (which returns a tensor) for the Rust side: a new heap tensor, or null with the
// exception's first line in `err`.
template <typename F>
at::Tensor *guarded(char *err, size_t len, F f) {
  try {
    return new at::Tensor(f());
  } catch (const std::exception &e) {
    fail(e, err, len);
    return nullptr;
  }
}

// Whether x is bf16 (else f32; any other dtype is an error naming `what`): the dtypes ttft's
// layer kernels (norm, activation, RoPE) run.
inline bool layer_bf16(const at::Tensor &x, const char *what) {
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 || x.scalar_type() == at::kFloat, what, ": f32 or bf16 only, not ",
              x.scalar_type());
  return bf16;
}

// Rows [0, rows) of `width` elements each, split across libtorch's threads in chunks of at
// least 16k elements (a smaller tensor runs on the calling thread).
template <typename F>
void for_rows(int64_t rows, int64_t width, F f) {
  at::parallel_for(0, rows, 16384 / (width > 0 ? width : 1) + 1, f);
}

// The row kernels over a whole tensor, split across libtorch's threads; every buffer contiguous
// unless strides say otherwise. RMSNorm of x [rows][n] (w f32 [n]) into y:
inline void rms_into(const void *x, bool bf16, int64_t rows, int64_t n, const float *w,
                     double eps, int one_plus, void *y) {
  for_rows(rows, n, [&](int64_t r0, int64_t r1) {
    ttft_rms_rows(x, bf16 ? 1 : 0, n, r0, r1, w, (float)eps, one_plus, y);
  });
}

// silu(gate) · up of gu [rows][2 · inter] into y [rows][inter]:
inline void silu_mul_into(const void *gu, bool bf16, int64_t rows, int64_t inter, void *y) {
  for_rows(rows, 2 * inter, [&](int64_t r0, int64_t r1) {
    ttft_silu_mul_rows(gu, bf16 ? 1 : 0, inter, r0, r1, y);
  });
}

// RoPE of x [b][heads][t][d] (element strides sb, sh, st; unit along d) with cos, sin [t][d]
// into y [b][heads][t][d]:
inline void rope_into(const void *x, bool bf16, int64_t b, int64_t heads, int64_t t, int64_t sb,
                      int64_t sh, int64_t st, int64_t d, const void *cos, const void *sin,
                      void *y) {
  for_rows(b * heads * t, d, [&](int64_t r0, int64_t r1) {
    ttft_rope_rows(x, bf16 ? 1 : 0, heads, t, sb, sh, st, d, cos, sin, r0, r1, y);
  });
}

// y [rows, out] = x [rows, in] · Wᵀ + b for a panel weight `w` (its layout checked against `in`
// and `out`), y and x contiguous in w's dtype, b f32 [out] or null; the panels split across
// libtorch's threads.
void panels_into(const void *x, int64_t rows, int64_t in, const at::Tensor &w, const float *b,
                 int64_t out, void *y);

// Causal attention of q [heads, t, d] against k, v [kv_heads, s, d] (any strides): [t, heads, d]
// in q's dtype (ttft_attention in onednn.cpp says more).
at::Tensor attend(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v, double scale);

}  // namespace ttft
