// A whole Llama-style decoder layer in one call from Rust, for the CPU in f32: RMSNorm,
// the fused q/k/v projection, RoPE, causal attention, the output projection and its residual
// add, RMSNorm, the fused gate/up projection, silu(gate)·up, the down projection and its
// residual add, each through the same kernel the layer-by-layer path calls (norm.cpp,
// panel.cpp, rope.cpp, attention.cpp, act.cpp), so the result is bit-identical to it.
//
// Why: with few tokens every step but the four projections is microseconds of arithmetic, and
// running them as separate libtorch ops from Rust (views, splits, transposes, allocations, about
// 25 dispatches a layer) kept the calling thread busy while the other one waited. On the 2-core
// Zen 5 of shared/notes/ground-truth.md, alternating runs of an 8-token SmolLM2 f32 forward with
// plain reads above 80 GB/s: 9.11 ms op by op, 8.83 ms in whole layers. Here the activations
// live in one scratch buffer and only the layer's output and its keys and values are tensors.
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <cstdlib>

#include "shim.h"

// The weights and shapes of one layer, as the Rust side (`models::fused_layer`) lays them
// out: norms' weights f32 [hidden] (Gemma's already 1 + w when one_plus), projections in
// panel.cpp's layout, biases f32 or null.
struct TtftLayer {
  const at::Tensor *attn_norm, *qkv, *qkv_bias, *o, *o_bias, *mlp_norm, *gate_up, *gate_up_bias,
      *down, *down_bias;
  double attn_eps, mlp_eps, scale;
  int64_t heads, kv_heads, head_dim, inter;
  int32_t one_plus;
};

namespace {

// The calling thread's scratch of at least n floats, kept from call to call: a fresh buffer per
// layer (14.6 MB at 500 tokens) came from mmap every time, above glibc's threshold, and its page
// faults made a 500-token SmolLM2 forward take 440 ms instead of 290.
float *scratch(int64_t n) {
  struct Buf {
    float *p = nullptr;
    int64_t n = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf buf;
  if (buf.n < n) {
    std::free(buf.p);
    buf.n = (n + 15) / 16 * 16;
    buf.p = (float *)std::aligned_alloc(64, (size_t)buf.n * sizeof(float));
    TORCH_CHECK(buf.p != nullptr, "dense layer: no memory for ", buf.n, " floats of scratch");
  }
  return buf.p;
}

const float *bias(const at::Tensor *b) { return b != nullptr ? b->data_ptr<float>() : nullptr; }

void rms(const float *x, int64_t t, int64_t n, const at::Tensor &w, double eps, int one_plus,
         float *y) {
  const float *wp = w.data_ptr<float>();
  ttft::for_rows(t, n, [&](int64_t r0, int64_t r1) {
    ttft_rms_rows(x, 0, n, r0, r1, wp, (float)eps, one_plus, y);
  });
}

// Rows [0, heads · t) of the q/k/v projection's columns [col, col + heads · d), rotated into
// y [heads][t][d].
void rope(const float *qkv, int64_t width, int64_t col, int64_t heads, int64_t t, int64_t d,
          const at::Tensor &cos, const at::Tensor &sin, float *y) {
  ttft::for_rows(heads * t, d, [&](int64_t r0, int64_t r1) {
    ttft_rope_rows(qkv + col, 0, heads, t, 0, d, width, d, cos.data_ptr(), sin.data_ptr(), r0,
                   r1, y);
  });
}

}  // namespace

extern "C" {

// x [1, t, hidden] f32 through one layer; cos, sin [t, head_dim] f32 for the new positions;
// past_k, past_v [1, kv, past, d] or null (no cache yet). Returns the layer's output, and in
// k_out, v_out the whole cache after it [1, kv, past + t, d] (new tensors: cached ones are never
// written, `KvCache::share` relies on it).
at::Tensor *ttft_dense_layer(const TtftLayer *l, const at::Tensor *x, const at::Tensor *cos,
                             const at::Tensor *sin, const at::Tensor *past_k,
                             const at::Tensor *past_v, at::Tensor **k_out, at::Tensor **v_out,
                             char *err, size_t len) {
  return ttft::guarded(err, len, [&]() -> at::Tensor {
    TORCH_CHECK(ttft_panel_supported(), "this CPU has no AVX-512F");
    TORCH_CHECK(x->dim() == 3 && x->size(0) == 1 && x->scalar_type() == at::kFloat &&
                    x->is_contiguous(),
                "dense layer: x must be a contiguous f32 [1, t, hidden], not ", x->sizes());
    const int64_t t = x->size(1), hidden = x->size(2), h = l->heads, kv = l->kv_heads;
    const int64_t d = l->head_dim, inter = l->inter, width = (h + 2 * kv) * d;
    TORCH_CHECK(cos->scalar_type() == at::kFloat && cos->is_contiguous() && sin->is_contiguous() &&
                    cos->dim() == 2 && cos->size(0) == t && cos->size(1) == d &&
                    sin->sizes() == cos->sizes(),
                "dense layer: cos, sin must be contiguous f32 [", t, ", ", d, "]");
    TORCH_CHECK((past_k == nullptr) == (past_v == nullptr), "dense layer: k without v cache");
    const float *xp = x->data_ptr<float>();
    // Scratch: the normed input (reused for the second norm), q/k/v, the rotated q, the
    // attention output's projection, the gate/up output and silu·up.
    const int64_t n_qkv = t * width, n_act = t * 2 * inter;
    float *normed = scratch(t * hidden * 2 + n_qkv + t * h * d + n_act + t * inter);
    float *h1 = normed + t * hidden, *qkv = h1 + t * hidden;
    float *q = qkv + n_qkv, *gu = q + t * h * d, *act = gu + n_act;

    rms(xp, t, hidden, *l->attn_norm, l->attn_eps, l->one_plus, normed);
    ttft::panels_into(normed, t, hidden, *l->qkv, bias(l->qkv_bias), width, qkv);
    rope(qkv, width, 0, h, t, d, *cos, *sin, q);
    at::Tensor k = at::empty({1, kv, t, d}, x->options());
    rope(qkv, width, h * d, kv, t, d, *cos, *sin, k.data_ptr<float>());
    at::Tensor v = at::empty({1, kv, t, d}, x->options());
    float *vp = v.data_ptr<float>();
    for (int64_t g = 0; g < kv; g++)
      for (int64_t i = 0; i < t; i++)
        std::memcpy(vp + (g * t + i) * d, qkv + i * width + (h + kv + g) * d, d * sizeof(float));
    if (past_k != nullptr) {
      k = at::cat({*past_k, k}, 2);
      v = at::cat({*past_v, v}, 2);
    }
    const at::Tensor qt = at::from_blob(q, {h, t, d}, x->options());
    const at::Tensor att = ttft::attend(qt, k[0], v[0], l->scale);

    // h1 = x + o(att), the residual stream after attention.
    ttft::panels_into(att.data_ptr<float>(), t, h * d, *l->o, bias(l->o_bias), hidden, h1);
    for (int64_t i = 0; i < t * hidden; i++) h1[i] = xp[i] + h1[i];
    rms(h1, t, hidden, *l->mlp_norm, l->mlp_eps, l->one_plus, normed);
    ttft::panels_into(normed, t, hidden, *l->gate_up, bias(l->gate_up_bias), 2 * inter, gu);
    ttft::for_rows(t, 2 * inter, [&](int64_t r0, int64_t r1) {
      ttft_silu_mul_rows(gu, 0, inter, r0, r1, act);
    });
    at::Tensor y = at::empty({1, t, hidden}, x->options());
    float *yp = y.data_ptr<float>();
    ttft::panels_into(act, t, inter, *l->down, bias(l->down_bias), hidden, yp);
    for (int64_t i = 0; i < t * hidden; i++) yp[i] = h1[i] + yp[i];
    *k_out = new at::Tensor(k);
    *v_out = new at::Tensor(v);
    return y;
  });
}

}  // extern "C"
