// A whole Llama-style decoder layer in one call from Rust, for the CPU in f32 or bf16: RMSNorm,
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

// The calling thread's scratch of at least `bytes`, kept from call to call: a fresh buffer per
// layer (14.6 MB at 500 tokens in f32) came from mmap every time, above glibc's threshold, and
// its page faults made a 500-token SmolLM2 forward take 440 ms instead of 290.
char *scratch(int64_t bytes) {
  struct Buf {
    char *p = nullptr;
    int64_t n = 0;
    ~Buf() { std::free(p); }
  };
  thread_local Buf buf;
  if (buf.n < bytes) {
    std::free(buf.p);
    buf.n = (bytes + 63) / 64 * 64;
    buf.p = (char *)std::aligned_alloc(64, (size_t)buf.n);
    TORCH_CHECK(buf.p != nullptr, "dense layer: no memory for ", buf.n, " bytes of scratch");
  }
  return buf.p;
}

const float *bias(const at::Tensor *b) { return b != nullptr ? b->data_ptr<float>() : nullptr; }

// The residual add y[i] = a[i] + b[i] as libtorch's add does it: in f32, and for bf16 widened,
// added in f32 and rounded to nearest even (NaN stays a quiet NaN, as c10::BFloat16 makes it).
void add(const void *a, const void *b, int64_t n, bool bf16, void *y) {
  if (!bf16) {
    const float *fa = (const float *)a, *fb = (const float *)b;
    float *fy = (float *)y;
    for (int64_t i = 0; i < n; i++) fy[i] = fa[i] + fb[i];
    return;
  }
  const uint16_t *ha = (const uint16_t *)a, *hb = (const uint16_t *)b;
  uint16_t *hy = (uint16_t *)y;
  for (int64_t i = 0; i < n; i++) {
    uint32_t ua = (uint32_t)ha[i] << 16, ub = (uint32_t)hb[i] << 16, u;
    float fa, fb;
    std::memcpy(&fa, &ua, 4);
    std::memcpy(&fb, &ub, 4);
    const float r = fa + fb;
    std::memcpy(&u, &r, 4);
    hy[i] = r != r ? (uint16_t)0x7FC0 : (uint16_t)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
  }
}

}  // namespace

extern "C" {

// x [1, t, hidden] (f32 or bf16, as the weights) through one layer; cos, sin [t, head_dim] in
// x's dtype for the new positions; past_k, past_v [1, kv, past, d] or null (no cache yet).
// Returns the layer's output, and in k_out, v_out the whole cache after it [1, kv, past + t, d]
// (new tensors: cached ones are never written, `KvCache::share` relies on it).
at::Tensor *ttft_dense_layer(const TtftLayer *l, const at::Tensor *x, const at::Tensor *cos,
                             const at::Tensor *sin, const at::Tensor *past_k,
                             const at::Tensor *past_v, at::Tensor **k_out, at::Tensor **v_out,
                             char *err, size_t len) {
  return ttft::guarded(err, len, [&]() -> at::Tensor {
    TORCH_CHECK(ttft_panel_supported(), "this CPU has no AVX-512F");
    const bool bf16 = ttft::layer_bf16(*x, "dense layer");
    TORCH_CHECK(x->dim() == 3 && x->size(0) == 1 && x->is_contiguous(),
                "dense layer: x must be a contiguous [1, t, hidden], not ", x->sizes());
    const int64_t t = x->size(1), hidden = x->size(2), h = l->heads, kv = l->kv_heads;
    const int64_t d = l->head_dim, inter = l->inter, width = (h + 2 * kv) * d;
    const int64_t es = bf16 ? 2 : 4;
    TORCH_CHECK(cos->scalar_type() == x->scalar_type() && sin->scalar_type() == x->scalar_type() &&
                    cos->is_contiguous() && sin->is_contiguous() && cos->dim() == 2 &&
                    cos->size(0) == t && cos->size(1) == d && sin->sizes() == cos->sizes(),
                "dense layer: cos, sin must be contiguous [", t, ", ", d, "] in x's dtype");
    TORCH_CHECK((past_k == nullptr) == (past_v == nullptr), "dense layer: k without v cache");
    // The weights' shapes (panels_into checks the projections' own, and their dtype).
    auto fits = [](const at::Tensor *w, int64_t n) {
      return w == nullptr || (w->scalar_type() == at::kFloat && w->is_contiguous() &&
                              w->numel() == n);
    };
    TORCH_CHECK(l->attn_norm != nullptr && l->mlp_norm != nullptr &&
                    fits(l->attn_norm, hidden) && fits(l->mlp_norm, hidden),
                "dense layer: norm weights must be f32 [", hidden, "]");
    TORCH_CHECK(fits(l->qkv_bias, width) && fits(l->o_bias, hidden) &&
                    fits(l->gate_up_bias, 2 * inter) && fits(l->down_bias, hidden),
                "dense layer: a bias does not fit its projection");
    TORCH_CHECK(l->qkv->scalar_type() == x->scalar_type(), "dense layer: x is not in the weights' dtype");
    const char *xp = (const char *)x->data_ptr();
    // Scratch: the normed input (reused for the second norm), the residual stream after
    // attention, q/k/v, the rotated q, the gate/up output and silu·up.
    const int64_t n_qkv = t * width, n_act = t * 2 * inter;
    char *normed = scratch((t * hidden * 2 + n_qkv + t * h * d + n_act + t * inter) * es);
    char *h1 = normed + t * hidden * es, *qkv = h1 + t * hidden * es;
    char *q = qkv + n_qkv * es, *gu = q + t * h * d * es, *act = gu + n_act * es;

    const float *norm1 = l->attn_norm->data_ptr<float>(), *norm2 = l->mlp_norm->data_ptr<float>();
    ttft::rms_into(xp, bf16, t, hidden, norm1, l->attn_eps, l->one_plus, normed);
    ttft::panels_into(normed, t, hidden, *l->qkv, bias(l->qkv_bias), width, qkv);
    // q and k rotated out of the projection's columns ([t][width], heads d apart) into
    // [heads][t][d].
    const void *cp = cos->data_ptr(), *sp = sin->data_ptr();
    ttft::rope_into(qkv, bf16, 1, h, t, 0, d, width, d, cp, sp, q);
    at::Tensor k = at::empty({1, kv, t, d}, x->options());
    ttft::rope_into(qkv + h * d * es, bf16, 1, kv, t, 0, d, width, d, cp, sp, k.data_ptr());
    at::Tensor v = at::empty({1, kv, t, d}, x->options());
    char *vp = (char *)v.data_ptr();
    for (int64_t g = 0; g < kv; g++)
      for (int64_t i = 0; i < t; i++)
        std::memcpy(vp + (g * t + i) * d * es, qkv + (i * width + (h + kv + g) * d) * es, d * es);
    if (past_k != nullptr) {
      k = at::cat({*past_k, k}, 2);
      v = at::cat({*past_v, v}, 2);
    }
    const at::Tensor qt = at::from_blob(q, {h, t, d}, x->options());
    const at::Tensor att = ttft::attend(qt, k[0], v[0], l->scale);

    // h1 = x + o(att), the residual stream after attention.
    ttft::panels_into(att.data_ptr(), t, h * d, *l->o, bias(l->o_bias), hidden, h1);
    add(xp, h1, t * hidden, bf16, h1);
    ttft::rms_into(h1, bf16, t, hidden, norm2, l->mlp_eps, l->one_plus, normed);
    ttft::panels_into(normed, t, hidden, *l->gate_up, bias(l->gate_up_bias), 2 * inter, gu);
    ttft::silu_mul_into(gu, bf16, t, inter, act);
    at::Tensor y = at::empty({1, t, hidden}, x->options());
    ttft::panels_into(act, t, inter, *l->down, bias(l->down_bias), hidden, y.data_ptr());
    add(h1, y.data_ptr(), t * hidden, bf16, y.data_ptr());
    *k_out = new at::Tensor(k);
    *v_out = new at::Tensor(v);
    return y;
  });
}

}  // extern "C"
