//! oneDNN linears with weights packed once at load (`--hf-kernels`).
//!
//! On the CPU, `matmul`/`linear` go to MKL's sgemm, whose small-M path is what short-prompt
//! prefill spends its time in (5 GB/s of weight streaming on the machine in
//! `shared/notes/ground-truth.md`). libtorch also carries oneDNN's linear with a weight reordered
//! once into its blocked layout — the ops Inductor emits with `freezing=True`
//! (`mkldnn::_reorder_linear_weight`, `mkldnn::_linear_pointwise`). tch's generated API has
//! neither, so `shim/onednn.cpp` (compiled by build.rs against the wheel's headers) calls them
//! through the dispatcher; this module is the safe side of that boundary. The same shim carries
//! ttft's own panel GEMMs for few rows (`shim/panel.cpp`, `shim/panel_bf16.cpp`), threaded by
//! libtorch's pool; the rest of a layer's kernels are in [`super::layer_ops`].

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
    fn ttft_huge_copy(src: *const C_tensor, err: *mut c_char, len: usize) -> *mut C_tensor;
    fn ttft_onednn_linear(
        x: *const C_tensor,
        w: *const C_tensor,
        b: *const C_tensor,
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
            // libtorch refuses to pack bf16/f16 weights for oneDNN on a CPU without the ISA
            // for them (bf16 needs AVX512BW/VL/DQ or AVX-NE-CONVERT: Zen 3 or an AVX2-only Intel
            // CPU has neither), so the flag fails here with the fix, not at load.
            "onednn" if !native(kind) => Err(format!(
                "--hf-kernels onednn: libtorch's oneDNN has no {} kernels on this CPU; use --hf-kernels auto or mkl",
                dtype_name(kind)
            )),
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

/// Whether this CPU has GEMM kernels for `kind` that libtorch or ttft use: f32 always; bf16 and
/// f16 where oneDNN has native kernels for them or ttft's panels run (AVX512_BF16). Elsewhere a
/// bf16 model runs through libtorch's fallback, many times slower than f32 (measured on an AMD
/// Zen 3 with AVX2 only: 1.35 s for a 5–12-token SmolLM2-135M prefill).
pub fn cpu_has_gemm_for(kind: Kind) -> bool {
    kind == Kind::Float || native(kind) || panel_supported_for(kind)
}

/// `kind` as the `--dtype` value that selects it (the dtypes the hf backend loads).
pub fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        _ => "f32",
    }
}

/// Whether oneDNN has native kernels for `kind` on this CPU (f32 always): libtorch's own check,
/// the one its weight packing enforces (bf16: AVX512BW/VL/DQ or AVX-NE-CONVERT; f16:
/// AVX512_FP16 or AMX-FP16).
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

/// Call a shim function that returns a new tensor, or null with its error's first line in the
/// buffer it is given, and turn that into a `Result`.
pub(crate) fn shim_call(
    f: impl FnOnce(*mut c_char, usize) -> *mut C_tensor,
) -> Result<Tensor, TchError> {
    let mut err = [0 as c_char; 512];
    let p = f(err.as_mut_ptr(), err.len());
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
    // SAFETY: `w` outlives the call; the buffer is writable for its length.
    shim_call(|err, len| unsafe { ttft_onednn_pack(w.as_ptr(), batch, err, len) })
}

/// `x [rows, in] · Wᵀ + b` with a weight from [`pack`].
pub fn linear(x: &Tensor, packed: &Tensor, b: Option<&Tensor>) -> Result<Tensor, TchError> {
    let b = b.map_or(std::ptr::null(), |b| b.as_ptr());
    // SAFETY: every tensor outlives the call; a null bias is the shim's "no bias".
    shim_call(|err, len| unsafe { ttft_onednn_linear(x.as_ptr(), packed.as_ptr(), b, err, len) })
}

/// Lay a dense [out, in] weight out for [`panel_linear`], zeros past `out` (and past `in`):
/// f32 as [ceil(out/32), in, 32], each panel 32 output columns with its inputs in order; bf16 as
/// [ceil(out/32), ceil(in/2), 32, 2], input pairs side by side for AVX512_BF16's dot products.
/// The panels are on transparent huge pages where the kernel grants them ([`huge_copy`]).
pub fn pack_panels(w: &Tensor) -> Result<Tensor, TchError> {
    let (out, inp) = w.size2()?;
    let panels = (out + 31) / 32;
    // Zero padding only where a panel or a pair is partial (`constant_pad_nd` copies the whole
    // weight even when every pad is zero).
    let pad = |right: i64, bottom: i64| {
        if right == 0 && bottom == 0 {
            Ok(w.shallow_clone())
        } else {
            w.f_constant_pad_nd([0, right, 0, bottom])
        }
    };
    if w.kind() == Kind::BFloat16 {
        let pairs = (inp + 1) / 2;
        let padded = pad(pairs * 2 - inp, panels * 32 - out)?;
        return huge_copy(
            &padded
                .f_view([panels, 32, pairs, 2])?
                .f_permute([0, 2, 1, 3])?,
        );
    }
    let padded = pad(0, panels * 32 - out)?;
    huge_copy(&padded.f_view([panels, 32, inp])?.f_transpose(1, 2)?)
}

/// A contiguous copy of `x` (CPU, 2 MiB or more, Linux) in memory advised onto transparent
/// huge pages (`shim/onednn.cpp`), else `x.contiguous()`. Why: a short prompt's prefill
/// streams every weight once, and on 4 KiB pages it takes a TLB miss every 4 KiB while the
/// hardware prefetchers stop at each page. Measured on a 2-core Zen 5 (SmolLM2-135M f32, 8
/// tokens, alternating runs, plain reads above 70 GB/s before and after): forward median 9.42
/// ms on huge pages, 10.14 without (libtorch's THP_MEM_ALLOC_ENABLE for everything: 9.38); in
/// the host's slow spells (40-55 GB/s) 12.68 vs 13.21. The price is at load: the kernel
/// zeroes each 2 MiB page on first touch, and SmolLM2's load took 1.2-1.8 s instead of
/// 0.7-0.8 there (peak RSS unchanged). hf's `weights_on_huge_pages_mib` says what was granted.
pub fn huge_copy(x: &Tensor) -> Result<Tensor, TchError> {
    // SAFETY: the tensor outlives the call; the shim copies it and owns the new memory.
    shim_call(|err, len| unsafe { ttft_huge_copy(x.as_ptr(), err, len) })
}

/// `x [rows, in] · Wᵀ + b` with a weight from [`pack_panels`]; x contiguous, in W's dtype; b f32
/// (widened at load, so no forward pass converts it).
pub fn panel_linear(
    x: &Tensor,
    panels: &Tensor,
    b: Option<&Tensor>,
    out: i64,
) -> Result<Tensor, TchError> {
    let b = b.map_or(std::ptr::null(), |b| b.as_ptr());
    // SAFETY: every tensor outlives the call; the shim checks shapes, dtypes and the CPU.
    shim_call(|err, len| unsafe {
        ttft_panel_linear(x.as_ptr(), panels.as_ptr(), b, out, err, len)
    })
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

    /// Weights of 2 MiB and more are copied onto huge-page memory ([`huge_copy`]) with the
    /// same layout and values as the plain contiguous copy; with no partial panel (no padding
    /// copy first), in f32 and bf16; a small tensor takes the plain path.
    #[test]
    fn large_weights_pack_onto_huge_pages_with_the_same_layout() {
        tch::manual_seed(0);
        for kind in [Kind::Float, Kind::BFloat16] {
            let w = Tensor::randn([1024, 576], (kind, Device::Cpu));
            let p = pack_panels(&w).unwrap();
            let want = if kind == Kind::Float {
                w.view([32, 32, 576]).transpose(1, 2).contiguous()
            } else {
                w.view([32, 32, 288, 2]).permute([0, 2, 1, 3]).contiguous()
            };
            assert!(p.is_contiguous());
            assert_eq!(p, want, "{kind:?}");
        }
        let small = Tensor::randn([8, 4], (Kind::Float, Device::Cpu)).tr();
        assert_eq!(huge_copy(&small).unwrap(), small.contiguous());
    }

    /// The bf16 panels against the f32 product of the same bf16 values (f32 sums, one rounding):
    /// every tile height, a partial last panel, an odd input count (the last pair half zero),
    /// with and without a bias; at most one bf16 step apart. A bias not widened is refused.
    #[test]
    fn bf16_panel_linear_matches_linear() {
        if !panel_supported_for(Kind::BFloat16) {
            return;
        }
        tch::manual_seed(0);
        let bf = (Kind::BFloat16, Device::Cpu);
        for inp in [48, 47] {
            let w = Tensor::randn([70, inp], bf);
            // A bf16 bias, widened to f32 as Dense does at load.
            let b = Tensor::randn([70], bf).to_kind(Kind::Float);
            let p = pack_panels(&w).unwrap();
            assert_eq!(p.size(), vec![3, 24, 32, 2]);
            for rows in (1..=13).chain([25]) {
                let x = Tensor::randn([rows, inp], bf);
                for bias in [Some(&b), None] {
                    let want = x.to_kind(Kind::Float).linear(&w.to_kind(Kind::Float), bias);
                    let got = panel_linear(&x, &p, bias, 70).unwrap();
                    assert_eq!((got.kind(), got.size()), (Kind::BFloat16, vec![rows, 70]));
                    let g = got.to_kind(Kind::Float);
                    let rel = ((&g - &want).abs() / (want.abs() + 0.05)).max();
                    assert!(rel.double_value(&[]) <= 1.0 / 128.0, "in {inp} rows {rows}");
                }
            }
            let x = Tensor::randn([2, inp], bf);
            assert!(panel_linear(&x, &p, Some(&b.to_kind(Kind::BFloat16)), 70).is_err());
        }
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

    /// On a CPU whose oneDNN cannot run bf16 (no AVX512BW/VL/DQ, e.g. AMD Zen 3), `onednn` is a
    /// one-line error naming the fix and `auto` falls back to MKL; where it can, both work.
    #[test]
    fn onednn_bf16_is_refused_where_this_cpu_has_no_kernels_for_it() {
        if !available() {
            return;
        }
        let r = Kernels::resolve("onednn", Device::Cpu, Kind::BFloat16);
        if native(Kind::BFloat16) {
            assert_eq!(r, Ok(Kernels::Onednn));
        } else {
            let e = r.unwrap_err();
            assert!(
                e.contains("no bf16 kernels on this CPU") && e.contains("auto or mkl"),
                "{e}"
            );
            let auto = Kernels::resolve("auto", Device::Cpu, Kind::BFloat16).unwrap();
            assert_ne!(auto, Kernels::Onednn);
        }
    }
}
