//! The roofline probe: this machine's memory read bandwidth and GEMM peaks, measured with the
//! kernels the hf backend runs (libtorch's MKL `matmul` and oneDNN's packed linear), in about a
//! second. `crate::app::roofline` caches the result per machine, threads and libtorch.

use super::onednn;
use crate::report::roofline::Roofline;
use std::collections::BTreeMap;
use std::time::Instant;
use tch::{Device, Kind, TchError, Tensor};

/// f32 elements of the bandwidth buffer: 256 MB, far beyond any CPU cache.
const READ_ELEMENTS: i64 = 64 << 20;

/// Best of `reps` timings of `f` (after one untimed call), seconds; `sync` waits for the device.
fn best_s(reps: usize, device: Device, mut f: impl FnMut() -> Tensor) -> f64 {
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    let _ = f();
    sync();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            let _out = f();
            sync();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Memory read bandwidth on `device`, GB/s: the best of 5 sums over a buffer far larger than
/// any cache (on the CPU with libtorch's current intra-op threads), about 30 ms at 80 GB/s.
pub fn read_gbs(device: Device) -> Result<f64, TchError> {
    let _g = tch::no_grad_guard();
    // On the CPU in the memory the panel weights live in (`onednn::huge_copy`: huge pages where
    // the kernel grants them), which reads faster than 4 KiB pages (on a 2-core Zen 5: 3-4 %
    // in fast spells, up to 12 % in slow ones): the ceiling is what those weights could do.
    let ones = Tensor::f_ones([1], (Kind::Float, device))?.f_expand([READ_ELEMENTS], false)?;
    let buf = if device == Device::Cpu {
        onednn::huge_copy(&ones)?
    } else {
        ones.f_contiguous()?
    };
    let bytes = (READ_ELEMENTS * 4) as f64;
    Ok(bytes / best_s(5, device, || buf.sum(Kind::Float)) / 1e9)
}

/// GFLOP/s of `x · W` in `kind` with `kernels` (None when the dtype cannot run here).
fn gemm_gflops(
    device: Device,
    kind: Kind,
    kernels: onednn::Kernels,
    shape: [i64; 3],
) -> Option<f64> {
    let [m, k, n] = shape;
    let x = Tensor::randn([m, k], (Kind::Float, device)).to_kind(kind);
    let w = Tensor::randn([n, k], (Kind::Float, device)).to_kind(kind);
    let flops = 2.0 * (m * k * n) as f64;
    let secs = match kernels {
        onednn::Kernels::Mkl => {
            let wt = w.tr().contiguous();
            best_s(3, device, || x.matmul(&wt))
        }
        onednn::Kernels::Onednn => {
            let p = onednn::pack(&w, m).ok()?;
            let _ = onednn::linear(&x, &p, None).ok()?;
            best_s(3, device, || {
                onednn::linear(&x, &p, None).expect("ran once")
            })
        }
        onednn::Kernels::Avx512 => {
            let p = onednn::pack_panels(&w).ok()?;
            let _ = onednn::panel_linear(&x, &p, None, n).ok()?;
            best_s(3, device, || {
                onednn::panel_linear(&x, &p, None, n).expect("ran once")
            })
        }
    };
    Some(flops / secs / 1e9)
}

/// Agreement two rounds must show to count as steady (a busy machine shows less).
const STEADY: f64 = 0.15;

/// Measure on `device` with `threads` intra-op threads (CPU): two rounds, the better of each
/// number kept; `steady` says whether the rounds agreed (only a steady probe is cached).
pub fn measure(device: Device, threads: u32, device_name: &str) -> Result<Roofline, TchError> {
    let t0 = Instant::now();
    let a = round(device, threads, device_name)?;
    let b = round(device, threads, device_name)?;
    let close = |x: f64, y: f64| (x - y).abs() <= STEADY * x.max(y);
    let mut r = a.raised_by(&b);
    r.steady = close(a.read_gbs, b.read_gbs) && close(a.f32_gflops, b.f32_gflops);
    r.probe_ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok(r)
}

/// The f32 kernels this build can run on this CPU, which a probe measures (a new one raises
/// `PROBE_VERSION`, so older caches are measured again).
fn cpu_kernels() -> Vec<onednn::Kernels> {
    let mut k = vec![onednn::Kernels::Mkl];
    if onednn::available() {
        k.push(onednn::Kernels::Onednn);
    }
    if onednn::panel_supported() {
        k.push(onednn::Kernels::Avx512);
    }
    k
}

/// One round of every measurement.
fn round(device: Device, threads: u32, device_name: &str) -> Result<Roofline, TchError> {
    let _g = tch::no_grad_guard();
    let t0 = Instant::now();
    if device == Device::Cpu {
        tch::set_num_threads(threads as i32);
    }
    let read_gbs = read_gbs(device)?;
    // Large enough to be compute-bound on a CPU; a GPU needs a bigger product to reach its peak.
    let shape = if device == Device::Cpu {
        [512, 2048, 2048]
    } else {
        [4096, 4096, 4096]
    };
    let mut f32_by_kernel = BTreeMap::new();
    let cpu_onednn = device == Device::Cpu && onednn::available();
    let kernels = if device == Device::Cpu {
        cpu_kernels()
    } else {
        vec![onednn::Kernels::Mkl]
    };
    for k in kernels {
        if let Some(g) = gemm_gflops(device, Kind::Float, k, shape) {
            f32_by_kernel.insert(k.name().to_string(), g);
        }
    }
    // A 16-bit peak only where the kernels are native: emulated bf16/f16 is not a roofline.
    // On the CPU the best of oneDNN's native kernels and ttft's panels for the dtype.
    let half = |kind: Kind| {
        if device != Device::Cpu {
            return gemm_gflops(device, kind, onednn::Kernels::Mkl, shape);
        }
        let one = (cpu_onednn && onednn::native(kind))
            .then(|| gemm_gflops(device, kind, onednn::Kernels::Onednn, shape))
            .flatten();
        let own = onednn::panel_supported_for(kind)
            .then(|| gemm_gflops(device, kind, onednn::Kernels::Avx512, shape))
            .flatten();
        [one, own].into_iter().flatten().reduce(f64::max)
    };
    let (bf16_gflops, f16_gflops) = (half(Kind::BFloat16), half(Kind::Half));
    Ok(Roofline {
        device: device_name.to_string(),
        threads,
        libtorch: crate::backend::hf::libtorch_version().unwrap_or_else(|| "unknown".into()),
        read_gbs,
        f32_gflops: f32_by_kernel.values().copied().fold(0.0, f64::max),
        f32_by_kernel,
        bf16_gflops,
        f16_gflops,
        gemm_shape: shape,
        probe_ms: t0.elapsed().as_secs_f64() * 1e3,
        steady: true,
        version: crate::report::roofline::PROBE_VERSION,
        measured_at: crate::report::roofline::measured_now(),
        read_at_end_gbs: None,
    })
}
