//! oneDNN linears with weights packed once at load (`--hf-kernels`).
//!
//! On the CPU, `matmul`/`linear` go to MKL's sgemm, whose small-M path is what short-prompt
//! prefill spends its time in (5 GB/s of weight streaming on the machine in
//! `shared/notes/ground-truth.md`). libtorch also carries oneDNN's linear with a weight reordered
//! once into its blocked layout — the ops Inductor emits with `freezing=True`
//! (`mkldnn::_reorder_linear_weight`, `mkldnn::_linear_pointwise`). tch's generated API has
//! neither, so `shim/onednn.cpp` (compiled by build.rs against the wheel's headers) calls them
//! through the dispatcher; this module is the safe side of that boundary. The same shim carries
//! ttft's own CPU kernels, which need no libtorch inside them: the AVX-512 f32 linear for few rows
//! (`shim/panel.cpp`) and causal attention (`shim/attention.cpp`), threaded by libtorch's pool.

use std::ffi::{c_char, c_int, CStr};
use tch::{Device, Kind, TchError, Tensor};
use torch_sys::C_tensor;

extern "C" {
    fn ttft_onednn_available() -> c_int;
    fn ttft_onednn_native(kind: c_int) -> c_int;
    fn ttft_onednn_pack(
        w: *const C_tensor,
        batch: i64,
        err: *mut c_char,
        len: usize,
    ) -> *mut C_tensor;
    fn ttft_panel_supported() -> c_int;
    fn ttft_panel_bf16_supported() -> c_int;
    fn ttft_panel_linear(
        x: *const C_tensor,
        w: *const C_tensor,
        b: *const C_tensor,
        out: i64,
        err: *mut c_char,
        len: usize,
    ) -> *mut C_tensor;
    fn ttft_onednn_linear(
        x: *const C_tensor,
        w: *const C_tensor,
        b: *const C_tensor,
        err: *mut c_char,
        len: usize,
    ) -> *mut C_tensor;
    fn ttft_rms_norm(
        x: *const C_tensor,
        w: *const C_tensor,
        eps: f64,
        one_plus: c_int,
        err: *mut c_char,
        len: usize,
    ) -> *mut C_tensor;
    fn ttft_silu_mul(gu: *const C_tensor, err: *mut c_char, len: usize) -> *mut C_tensor;
    fn ttft_attention(
        q: *const C_tensor,
        k: *const C_tensor,
        v: *const C_tensor,
        scale: f64,
        err: *mut c_char,
        len: usize,
    ) -> *mut C_tensor;
}

/// Which GEMM library the hf backend's projections use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// `matmul` on an [in, out] weight: MKL on the CPU, cuBLAS on CUDA, MPS on Apple.
    Mkl,
    /// oneDNN's linear on weights packed at load (CPU only).
    Onednn,
    /// ttft's own kernels (`shim/panel.cpp`, `shim/panel_bf16.cpp`) on weights packed into
    /// 32-column panels at load: f32 on CPUs with AVX-512F, bf16 with AVX512_BF16 too.
    Avx512,
}

impl Kernels {
    /// The name reports use.
    pub fn name(self) -> &'static str {
        match self {
            Kernels::Mkl => "mkl",
            Kernels::Onednn => "onednn",
            Kernels::Avx512 => "avx512",
        }
    }

    /// `--hf-kernels auto|mkl|onednn|avx512` for a model in `kind` on `device`. `auto` takes, on
    /// the CPU: ttft's panels where the CPU runs them for the dtype (f32 with AVX-512F, bf16
    /// with AVX512_BF16: short prompts stream the weights about 1.6–2× faster than oneDNN, long
    /// ones run within 10 % of it), else oneDNN where it has native kernels for the dtype (the
    /// CPU's instructions for it); MKL otherwise, and on GPUs, where `mkl` means the device's
    /// own GEMM library.
    pub fn resolve(flag: &str, device: Device, kind: Kind) -> Result<Kernels, String> {
        let on_cpu = device == Device::Cpu;
        match flag {
            "mkl" => Ok(Kernels::Mkl),
            "onednn" if !on_cpu => Err(format!(
                "--hf-kernels onednn: oneDNN runs on the CPU only, not on --device {device:?}; use --hf-kernels mkl or auto"
            )),
            "onednn" if !available() => Err(
                "--hf-kernels onednn: this libtorch was built without oneDNN; use --hf-kernels mkl"
                    .into(),
            ),
            "onednn" => Ok(Kernels::Onednn),
            "avx512" if !on_cpu || !panel_supported_for(kind) => Err(format!(
                "--hf-kernels avx512: ttft's kernel runs f32 on CPUs with AVX-512F and bf16 with \
                 AVX512_BF16 too (here: {}, {kind:?}, AVX-512F {}, AVX512_BF16 {}); use \
                 --hf-kernels onednn or auto",
                if on_cpu { "CPU" } else { "not the CPU" },
                if panel_supported() { "present" } else { "absent" },
                if panel_supported_for(Kind::BFloat16) { "present" } else { "absent" }
            )),
            "avx512" => Ok(Kernels::Avx512),
            "auto" if on_cpu && panel_supported_for(kind) => Ok(Kernels::Avx512),
            "auto" if on_cpu && available() && native(kind) => Ok(Kernels::Onednn),
            "auto" => Ok(Kernels::Mkl),
            other => Err(format!(
                "--hf-kernels {other}: expected auto, mkl, onednn or avx512"
            )),
        }
    }
}

/// Whether this libtorch has oneDNN.
pub fn available() -> bool {
    // SAFETY: no arguments; the shim catches every C++ exception.
    unsafe { ttft_onednn_available() != 0 }
}

/// Whether this CPU can run ttft's AVX-512 kernel.
pub fn panel_supported() -> bool {
    // SAFETY: no arguments; a CPUID check.
    unsafe { ttft_panel_supported() != 0 }
}

/// Whether ttft's panel kernel runs `kind` on this CPU: f32 with AVX-512F, bf16 with
/// AVX512_BF16 too.
pub fn panel_supported_for(kind: Kind) -> bool {
    match kind {
        Kind::Float => panel_supported(),
        // SAFETY: no arguments; a CPUID check.
        Kind::BFloat16 => unsafe { ttft_panel_bf16_supported() != 0 },
        _ => false,
    }
}

/// Whether oneDNN has native kernels for `kind` on this CPU (f32 always).
pub fn native(kind: Kind) -> bool {
    let code = match kind {
        Kind::Float => return true,
        Kind::Half => 5,
        Kind::BFloat16 => 15,
        _ => return false,
    };
    // SAFETY: a plain integer; the shim catches every C++ exception.
    unsafe { ttft_onednn_native(code) != 0 }
}

/// Turn the shim's result (a new tensor, or null with a message) into a `Result`.
fn owned(p: *mut C_tensor, err: &[c_char]) -> Result<Tensor, TchError> {
    if p.is_null() {
        // SAFETY: the shim always NUL-terminates `err` within its length.
        let msg = unsafe { CStr::from_ptr(err.as_ptr()) };
        return Err(TchError::Torch(msg.to_string_lossy().into_owned()));
    }
    // SAFETY: a non-null result is a heap tensor made for us alone; `Tensor` now owns it.
    Ok(unsafe { Tensor::from_ptr(p) })
}

/// Pack a dense [out, in] weight for [`linear`]; `batch` is oneDNN's hint of the row count
/// (0: none).
pub fn pack(w: &Tensor, batch: i64) -> Result<Tensor, TchError> {
    let mut err = [0 as c_char; 512];
    // SAFETY: `w` outlives the call; `err` is writable for its length.
    let p = unsafe { ttft_onednn_pack(w.as_ptr(), batch, err.as_mut_ptr(), err.len()) };
    owned(p, &err)
}

/// `x [rows, in] · Wᵀ + b` with a weight from [`pack`].
pub fn linear(x: &Tensor, packed: &Tensor, b: Option<&Tensor>) -> Result<Tensor, TchError> {
    let mut err = [0 as c_char; 512];
    let b = b.map_or(std::ptr::null(), |b| b.as_ptr());
    // SAFETY: every tensor outlives the call; a null bias is the shim's "no bias".
    let p =
        unsafe { ttft_onednn_linear(x.as_ptr(), packed.as_ptr(), b, err.as_mut_ptr(), err.len()) };
    owned(p, &err)
}

/// ttft's RMSNorm (`shim/norm.cpp`) over the last axis of x (f32 or bf16), with transformers'
/// roundings: Llama's `w · round(x · r)`, or Gemma's `round(x · r · w1)` when `one_plus` (w1 is
/// then `1 + w` in f32).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64, one_plus: bool) -> Result<Tensor, TchError> {
    let mut err = [0 as c_char; 512];
    // SAFETY: both tensors outlive the call; the shim checks dtypes, shapes and the CPU.
    let p = unsafe {
        ttft_rms_norm(
            x.as_ptr(),
            w.as_ptr(),
            eps,
            c_int::from(one_plus),
            err.as_mut_ptr(),
            err.len(),
        )
    };
    owned(p, &err)
}

/// ttft's `silu(gate) · up` (`shim/act.cpp`) of the fused gate/up output [..., 2 · inter]
/// (f32 or bf16), with transformers' roundings; returns [..., inter].
pub fn silu_mul(gu: &Tensor) -> Result<Tensor, TchError> {
    let mut err = [0 as c_char; 512];
    // SAFETY: the tensor outlives the call; the shim checks dtype, shape and the CPU.
    let p = unsafe { ttft_silu_mul(gu.as_ptr(), err.as_mut_ptr(), err.len()) };
    owned(p, &err)
}

/// Whether [`attention`] runs for a head dimension of `head_dim` on this CPU.
pub fn attention_supported(head_dim: i64) -> bool {
    panel_supported() && head_dim % 16 == 0
}

/// ttft's causal attention (`shim/attention.cpp`): q [heads, t, d] against the whole cache
/// k, v [kv_heads, s, d] (the last t keys are the queries' own), in f32; returns [t, heads, d]
/// in q's dtype.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor, TchError> {
    let mut err = [0 as c_char; 512];
    // SAFETY: every tensor outlives the call; the shim checks shapes and the CPU.
    let p = unsafe {
        ttft_attention(
            q.as_ptr(),
            k.as_ptr(),
            v.as_ptr(),
            scale,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    owned(p, &err)
}

/// Lay a dense [out, in] weight out for [`panel_linear`], zeros past `out` (and past `in`):
/// f32 as [ceil(out/32), in, 32], each panel 32 output columns with its inputs in order; bf16 as
/// [ceil(out/32), ceil(in/2), 32, 2], input pairs side by side for AVX512_BF16's dot products.
pub fn pack_panels(w: &Tensor) -> Result<Tensor, TchError> {
    let (out, inp) = w.size2()?;
    let panels = (out + 31) / 32;
    if w.kind() == Kind::BFloat16 {
        let pairs = (inp + 1) / 2;
        let padded = w.f_constant_pad_nd([0, pairs * 2 - inp, 0, panels * 32 - out])?;
        return padded
            .f_view([panels, 32, pairs, 2])?
            .f_permute([0, 2, 1, 3])?
            .f_contiguous();
    }
    let padded = w.f_constant_pad_nd([0, 0, 0, panels * 32 - out])?;
    padded
        .f_view([panels, 32, inp])?
        .f_transpose(1, 2)?
        .f_contiguous()
}

/// `x [rows, in] · Wᵀ + b` with a weight from [`pack_panels`]; x contiguous, in W's dtype.
pub fn panel_linear(
    x: &Tensor,
    panels: &Tensor,
    b: Option<&Tensor>,
    out: i64,
) -> Result<Tensor, TchError> {
    let mut err = [0 as c_char; 512];
    let b = b.map_or(std::ptr::null(), |b| b.as_ptr());
    // SAFETY: every tensor outlives the call; the shim checks shapes, dtypes and the CPU.
    let p = unsafe {
        ttft_panel_linear(
            x.as_ptr(),
            panels.as_ptr(),
            b,
            out,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    owned(p, &err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed path computes the same product as libtorch's own `linear`, with and without
    /// a bias, for the shapes of a short prompt and a decode step.
    #[test]
    fn packed_linear_matches_linear() {
        if !available() {
            return;
        }
        tch::manual_seed(0);
        let w = Tensor::randn([96, 64], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([96], (Kind::Float, Device::Cpu));
        let p = pack(&w, 0).unwrap();
        for rows in [1, 5, 37] {
            let x = Tensor::randn([rows, 64], (Kind::Float, Device::Cpu));
            let want = x.linear(&w, Some(&b));
            let got = linear(&x, &p, Some(&b)).unwrap();
            assert_eq!(got.size(), vec![rows, 96]);
            let diff = (got - &want).abs().max().double_value(&[]);
            assert!(diff < 1e-4, "rows {rows}: max |diff| {diff}");
            let no_bias = linear(&x, &p, None).unwrap();
            let diff = (no_bias - x.linear::<Tensor>(&w, None))
                .abs()
                .max()
                .double_value(&[]);
            assert!(diff < 1e-4, "rows {rows} without bias: {diff}");
        }
    }

    /// ttft's kernel against libtorch's `linear` for every tile height (1–12 rows, and 12 + 1,
    /// 25 rows as several tiles), an output count that leaves a partial last panel, with and
    /// without a bias.
    #[test]
    fn panel_linear_matches_linear() {
        if !panel_supported() {
            return;
        }
        tch::manual_seed(0);
        let w = Tensor::randn([70, 48], (Kind::Float, Device::Cpu));
        let b = Tensor::randn([70], (Kind::Float, Device::Cpu));
        let p = pack_panels(&w).unwrap();
        assert_eq!(p.size(), vec![3, 48, 32]);
        for rows in (1..=13).chain([25]) {
            let x = Tensor::randn([rows, 48], (Kind::Float, Device::Cpu));
            for bias in [Some(&b), None] {
                let want = x.linear(&w, bias);
                let got = panel_linear(&x, &p, bias, 70).unwrap();
                assert_eq!(got.size(), vec![rows, 70]);
                let diff = (got - &want).abs().max().double_value(&[]);
                assert!(diff < 1e-4, "rows {rows}, bias {}: {diff}", bias.is_some());
            }
        }
        let wrong = Tensor::randn([2, 47], (Kind::Float, Device::Cpu));
        assert!(panel_linear(&wrong, &p, None, 70).is_err());
    }

    /// The bf16 panels against libtorch's bf16 `linear` (f32 sums, one rounding): every tile
    /// height, a partial last panel, an odd input count (the last pair half zero), with and
    /// without a bias; at most one bf16 step apart, nearly always identical.
    #[test]
    fn bf16_panel_linear_matches_linear() {
        if !panel_supported_for(Kind::BFloat16) {
            return;
        }
        tch::manual_seed(0);
        let bf = (Kind::BFloat16, Device::Cpu);
        for inp in [48, 47] {
            let w = Tensor::randn([70, inp], bf);
            let b = Tensor::randn([70], bf);
            let p = pack_panels(&w).unwrap();
            assert_eq!(p.size(), vec![3, 24, 32, 2]);
            for rows in (1..=13).chain([25]) {
                let x = Tensor::randn([rows, inp], bf);
                for bias in [Some(&b), None] {
                    let want = x.to_kind(Kind::Float).linear(
                        &w.to_kind(Kind::Float),
                        bias.map(|b| b.to_kind(Kind::Float)),
                    );
                    let got = panel_linear(&x, &p, bias, 70).unwrap();
                    assert_eq!((got.kind(), got.size()), (Kind::BFloat16, vec![rows, 70]));
                    let g = got.to_kind(Kind::Float);
                    let rel = ((&g - &want).abs() / (want.abs() + 0.05)).max();
                    assert!(rel.double_value(&[]) <= 1.0 / 128.0, "in {inp} rows {rows}");
                }
            }
        }
    }

    /// ttft's attention against softmax(q·kᵀ·scale + causal mask)·v in f64, with GQA, a cache
    /// before the queries (past > 0), head dims that leave a partial 64-column chunk, query
    /// counts that leave partial 4-row tiles and 16-row blocks, and bf16 inputs.
    #[test]
    fn attention_matches_masked_softmax() {
        if !attention_supported(16) {
            return;
        }
        tch::manual_seed(0);
        for (h, kv, d, t, past) in [(6, 2, 64, 37, 0), (4, 4, 80, 5, 11), (3, 1, 16, 1, 40)] {
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

    /// A libtorch error comes back as an error naming the problem, not a crash.
    #[test]
    fn a_shape_mismatch_is_an_error() {
        if !available() {
            return;
        }
        let w = Tensor::randn([8, 4], (Kind::Float, Device::Cpu));
        let p = pack(&w, 0).unwrap();
        let x = Tensor::randn([3, 5], (Kind::Float, Device::Cpu));
        let e = linear(&x, &p, None).unwrap_err().to_string();
        assert!(!e.is_empty(), "{e}");
    }

    #[test]
    fn flag_values_resolve() {
        assert_eq!(
            Kernels::resolve("mkl", Device::Cpu, Kind::Float),
            Ok(Kernels::Mkl)
        );
        assert!(Kernels::resolve("fast", Device::Cpu, Kind::Float)
            .unwrap_err()
            .contains("expected auto, mkl, onednn or avx512"));
        assert!(Kernels::resolve("avx512", Device::Cpu, Kind::Half)
            .unwrap_err()
            .contains("f32 on CPUs with AVX-512F and bf16"));
        assert!(Kernels::resolve("onednn", Device::Cuda(0), Kind::Float)
            .unwrap_err()
            .contains("CPU only"));
        assert_eq!(
            Kernels::resolve("auto", Device::Cuda(0), Kind::Float),
            Ok(Kernels::Mkl)
        );
    }
}
