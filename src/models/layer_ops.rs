//! ttft's CPU kernels for the rest of a layer (`shim/attention.cpp`, `shim/norm.cpp`,
//! `shim/act.cpp`, `shim/rope.cpp`, reached through `shim/onednn.cpp`): causal attention,
//! RMSNorm, silu(gate)·up and RoPE on AVX-512 CPUs, in f32 or bf16 with transformers'
//! roundings. libtorch runs each of them as a chain of small ops (SDPA's blocks through small
//! GEMM calls, a norm as seven passes, RoPE as five); `Decoder::use_kernels` switches them on
//! for every `--hf-kernels` choice but `mkl`.

use super::onednn::{panel_supported, shim_call};
use std::ffi::{c_char, c_int};
use tch::{TchError, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn ttft_rms_norm(
        x: *const C_tensor,
        w: *const C_tensor,
        eps: f64,
        one_plus: c_int,
        err: *mut c_char,
        len: usize,
    ) -> *mut C_tensor;
    fn ttft_silu_mul(gu: *const C_tensor, err: *mut c_char, len: usize) -> *mut C_tensor;
    fn ttft_rope(
        x: *const C_tensor,
        cos: *const C_tensor,
        sin: *const C_tensor,
        err: *mut c_char,
        len: usize,
    ) -> *mut C_tensor;
    fn ttft_attention(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        scale: f64,
        err: *mut c_char,
        len: usize,
    ) -> *mut C_tensor;
}

/// ttft's RMSNorm (`shim/norm.cpp`) over the last axis of x (f32 or bf16), with transformers'
/// roundings: Llama's `w · round(x · r)`, or Gemma's `round(x · r · w1)` when `one_plus` (w1 is
/// then `1 + w` in f32).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, one_plus: bool) -> Result<Tensor, TchError> {
    let one_plus = c_int::from(one_plus);
    // SAFETY: both tensors outlive the call; the shim checks dtypes, shapes and the CPU.
    shim_call(|err, len| unsafe { ttft_rms_norm(x.as_ptr(), w.as_ptr(), eps, one_plus, err, len) })
}

/// ttft's `silu(gate) · up` (`shim/act.cpp`) of the fused gate/up output [..., 2 · inter]
/// (f32 or bf16), with transformers' roundings; returns [..., inter].
pub fn silu_mul(gu: &Tensor) -> Result<Tensor, TchError> {
    // SAFETY: the tensor outlives the call; the shim checks dtype, shape and the CPU.
    shim_call(|err, len| unsafe { ttft_silu_mul(gu.as_ptr(), err, len) })
}

/// ttft's rotary embedding (`shim/rope.cpp`): `x·cos + rotate_half(x)·sin` of x [b, heads, t,
/// d] (f32 or bf16, any strides but along d) with cos, sin [t, d] in x's dtype, in one pass with
/// transformers' roundings; returns a contiguous [b, heads, t, d].
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor, TchError> {
    // SAFETY: the tensors outlive the call; the shim checks dtypes, shapes and the CPU.
    shim_call(|err, len| unsafe { ttft_rope(x.as_ptr(), cos.as_ptr(), sin.as_ptr(), err, len) })
}

/// Whether [`attention`] runs for a head dimension of `head_dim` on this CPU.
pub fn attention_supported(head_dim: i64) -> bool {
    panel_supported() && head_dim % 16 == 0
}

/// ttft's causal attention (`shim/attention.cpp`): q [heads, t, d] against the whole cache
/// k, v [kv_heads, s, d] (the last t keys are the queries' own), in f32; returns [t, heads, d]
/// in q's dtype.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor, TchError> {
    let (q, k, v) = (q.as_ptr(), k.as_ptr(), v.as_ptr());
    // SAFETY: every tensor outlives the call; the shim checks shapes and the CPU.
    shim_call(|err, len| unsafe { ttft_attention(q, k, v, scale, err, len) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// ttft's attention against softmax(q·kᵀ·scale + causal mask)·v in f64, with GQA, a cache
    /// before the queries (past > 0), head dims that leave a partial 64-column chunk, query
    /// counts that leave partial 4-row tiles and 16-row blocks, strided k and v, bf16 inputs,
    /// and both the serial (small) and the threaded (100 queries × 6 heads) paths.
    #[test]
    fn attention_matches_masked_softmax() {
        if !attention_supported(16) {
            return;
        }
        tch::manual_seed(0);
        let cases = [
            (6, 2, 64, 37, 0),
            (6, 2, 64, 100, 0),
            (4, 4, 80, 5, 11),
            (3, 1, 16, 1, 40),
        ];
        for (h, kv, d, t, past) in cases {
            let s = past + t;
            let q = Tensor::randn([h, t, d], (Kind::Float, Device::Cpu));
            let k = Tensor::randn([kv, s, d], (Kind::Float, Device::Cpu));
            let v = Tensor::randn([kv, s, d], (Kind::Float, Device::Cpu));
            let scale = 1.0 / (d as f64).sqrt();
            let rep = |x: &Tensor| x.repeat_interleave_self_int(h / kv, 0, None);
            let (q64, k64, v64) = (
                q.to_kind(Kind::Double),
                rep(&k).to_kind(Kind::Double),
                rep(&v).to_kind(Kind::Double),
            );
            let qpos = Tensor::arange_start(past, s, (Kind::Int64, Device::Cpu)).unsqueeze(1);
            let kpos = Tensor::arange(s, (Kind::Int64, Device::Cpu)).unsqueeze(0);
            let hidden = kpos.gt_tensor(&qpos);
            let scores =
                (q64.matmul(&k64.transpose(1, 2)) * scale).masked_fill(&hidden, f64::NEG_INFINITY);
            let want = scores
                .softmax(-1, Kind::Double)
                .matmul(&v64)
                .transpose(0, 1);
            let got = attention(&q, &k, &v, scale).unwrap();
            assert_eq!(got.size(), vec![t, h, d]);
            let diff = (got.to_kind(Kind::Double) - &want)
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-5, "h {h} kv {kv} d {d} t {t} past {past}: {diff}");
            // k and v as the q/k/v projection leaves them: strided views, keys `kv · d` apart.
            let view = |x: &Tensor| x.transpose(0, 1).contiguous().transpose(0, 1);
            let strided = attention(&q, &view(&k), &view(&v), scale).unwrap();
            assert!(kv == 1 || !view(&k).is_contiguous());
            assert_eq!(strided, got, "strided k, v: same bits as contiguous ones");
            let bf = |x: &Tensor| x.to_kind(Kind::BFloat16);
            let got16 = attention(&bf(&q), &bf(&k), &bf(&v), scale).unwrap();
            assert_eq!(got16.kind(), Kind::BFloat16);
            let diff = (got16.to_kind(Kind::Double) - &want)
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 0.05, "bf16, d {d}: {diff}");
        }
        let q = Tensor::randn([2, 3, 24], (Kind::Float, Device::Cpu));
        assert!(
            attention(&q, &q, &q, 1.0).is_err(),
            "d = 24 is not a multiple of 16"
        );
    }

    /// ttft's RMSNorm against the op chain transformers runs (widen, mean of squares, rsqrt,
    /// round to the dtype, weight), Llama's and Gemma's forms, f32 and bf16, widths with a
    /// partial 16-lane tail, and a non-contiguous input.
    #[test]
    fn rms_norm_matches_the_op_chain() {
        if !panel_supported() {
            return;
        }
        tch::manual_seed(0);
        for (kind, n) in [
            (Kind::Float, 576),
            (Kind::BFloat16, 576),
            (Kind::BFloat16, 40),
        ] {
            let x = (Tensor::randn([3, 7, n], (Kind::Float, Device::Cpu)) * 3.0).to_kind(kind);
            let w = Tensor::randn([n], (Kind::Float, Device::Cpu)).to_kind(kind);
            let xf = x.to_kind(Kind::Float);
            let normed = &xf * (xf.square().mean_dim(-1, true, Kind::Float) + 1e-5).rsqrt();
            let llama = &w * normed.to_kind(kind);
            let w1 = w.to_kind(Kind::Float) + 1.0;
            let gemma = (&normed * &w1).to_kind(kind);
            for (got, want) in [
                (rms_norm(&x, &w, 1e-5, false).unwrap(), llama),
                (rms_norm(&x, &w1, 1e-5, true).unwrap(), gemma),
            ] {
                assert_eq!(got.kind(), kind);
                let (g, w) = (got.to_kind(Kind::Double), want.to_kind(Kind::Double));
                let rel = ((&g - &w).abs() / (w.abs() + 1e-3)).max().double_value(&[]);
                // f32: summation order only; bf16: at most one rounding step apart.
                let bound = if kind == Kind::Float {
                    1e-5
                } else {
                    1.0 / 128.0
                };
                assert!(rel <= bound, "{kind:?} n {n}: {rel}");
                if kind == Kind::BFloat16 {
                    let same = g.eq_tensor(&w).to_kind(Kind::Float).mean(Kind::Float);
                    assert!(
                        same.double_value(&[]) > 0.99,
                        "n {n}: bf16 mostly identical"
                    );
                }
            }
        }
        let x = Tensor::randn([4, 64], (Kind::Float, Device::Cpu));
        let t = x.tr();
        let w = Tensor::ones([4], (Kind::Float, Device::Cpu));
        let want = rms_norm(&t.contiguous(), &w, 1e-6, false).unwrap();
        let got = rms_norm(&t, &w, 1e-6, false).unwrap();
        assert!(got.allclose(&want, 0.0, 0.0, false));
        assert!(
            rms_norm(&x, &w, 1e-6, false).is_err(),
            "weight [4] for rows of 64"
        );
    }

    /// ttft's silu·up against `silu(gate) * up` as libtorch computes it, f32 and bf16, with a
    /// width that leaves a partial 16-lane tail and gates far out on both sides.
    #[test]
    fn silu_mul_matches_libtorch() {
        if !panel_supported() {
            return;
        }
        tch::manual_seed(0);
        for (kind, inter) in [
            (Kind::Float, 1536),
            (Kind::BFloat16, 1536),
            (Kind::BFloat16, 40),
        ] {
            let gu =
                (Tensor::randn([2, 5, 2 * inter], (Kind::Float, Device::Cpu)) * 6.0).to_kind(kind);
            let parts = gu.chunk(2, -1);
            let want = (parts[0].silu() * &parts[1]).to_kind(Kind::Double);
            let got = silu_mul(&gu).unwrap();
            assert_eq!((got.kind(), got.size()), (kind, vec![2, 5, inter]));
            let g = got.to_kind(Kind::Double);
            let rel = ((&g - &want).abs() / (want.abs() + 1e-3))
                .max()
                .double_value(&[]);
            // bf16: silu's rounding and the product's may each land one step (2^-7) away.
            let bound = if kind == Kind::Float {
                1e-5
            } else {
                1.0 / 64.0
            };
            assert!(rel <= bound, "{kind:?} {inter}: {rel}");
            if kind == Kind::BFloat16 {
                let same = g.eq_tensor(&want).to_kind(Kind::Float).mean(Kind::Float);
                assert!(
                    same.double_value(&[]) > 0.99,
                    "bf16 {inter}: mostly identical"
                );
            }
        }
        let odd = Tensor::randn([3, 7], (Kind::Float, Device::Cpu));
        assert!(silu_mul(&odd).is_err());
    }

    /// ttft's RoPE against the op chain (`rope::apply`, transformers' `q * cos +
    /// rotate_half(q) * sin`): bit-identical in f32 and bf16, on the transposed view the
    /// projection gives, with a half width that leaves a partial 16-lane tail, two batches.
    #[test]
    fn rope_matches_the_op_chain_exactly() {
        if !panel_supported() {
            return;
        }
        tch::manual_seed(0);
        for (b, t, h, d) in [(1, 7, 3, 64), (2, 5, 2, 40), (1, 1, 4, 2)] {
            for kind in [Kind::Float, Kind::BFloat16] {
                let x = (Tensor::randn([b, t, h, d], (Kind::Float, Device::Cpu)) * 3.0)
                    .to_kind(kind)
                    .transpose(1, 2);
                let ang = Tensor::randn([t, d], (Kind::Float, Device::Cpu)) * 4.0;
                let (cos, sin) = (ang.cos().to_kind(kind), ang.sin().to_kind(kind));
                let want = super::super::rope::apply(&x, &cos, &sin);
                let got = rope(&x, &cos, &sin).unwrap();
                assert_eq!((got.kind(), got.size()), (kind, vec![b, h, t, d]));
                assert!(got.is_contiguous());
                let diff = (&got - &want).abs().max().double_value(&[]);
                assert!(got.equal(&want), "{kind:?} b {b} t {t} h {h} d {d}: {diff}");
            }
        }
        let x = Tensor::randn([1, 2, 3, 8], (Kind::Float, Device::Cpu));
        let short = Tensor::ones([3, 6], (Kind::Float, Device::Cpu));
        assert!(rope(&x, &short, &short).is_err(), "cos narrower than x");
    }
}
