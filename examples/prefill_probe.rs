//! Times the hf prefill alone (no tokenizer, no CLI) for quick performance experiments, and the
//! same forward's projections alone (what the GEMM kernels cost of it):
//! `cargo run --release --example prefill_probe -- MODEL_DIR TOKENS REPS [KERNELS] [DTYPE]`
//! (KERNELS: auto, mkl, onednn, avx512; DTYPE: f32, bf16, f16; THREADS=n in the environment).

use std::time::Instant;
use tch::{Device, Kind, Tensor};
use ttft::models::layers::{Decoder, Mlp};
use ttft::models::onednn::Kernels;

fn median_ms(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    let mut times = Vec::new();
    for i in 0..reps + 2 {
        let t0 = Instant::now();
        f();
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], times[0])
}

/// Every projection of the forward pass on inputs of the right shapes, the LM head on one row.
fn projections(d: &Decoder, n: i64, kind: Kind) {
    let hidden = d.embed.size()[1];
    let h = Tensor::randn([1, n, hidden], (kind, Device::Cpu));
    for b in &d.blocks {
        let _ = b.attn.qkv.forward(&h);
        let _ = b.attn.o.forward(&h);
        match &b.mlp {
            Mlp::Gated { gate_up, down, .. } => {
                let gu = gate_up.forward(&h);
                let inter = gu.size()[2] / 2;
                let _ = down.forward(&gu.narrow(-1, 0, inter));
            }
            Mlp::Plain { fc, proj, .. } => {
                let _ = proj.forward(&fc.forward(&h));
            }
        }
    }
    let _ = d.lm_head.forward(&h.narrow(1, n - 1, 1));
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let n: i64 = args[2].parse().unwrap();
    let reps: usize = args[3].parse().unwrap();
    let kind = match args.get(5).map(String::as_str) {
        Some("bf16") => Kind::BFloat16,
        Some("f16") => Kind::Half,
        _ => Kind::Float,
    };
    let flag = args.get(4).map_or("auto", String::as_str);
    tch::set_num_interop_threads(1);
    let threads = std::env::var("THREADS").ok().and_then(|t| t.parse().ok());
    tch::set_num_threads(
        threads.unwrap_or(std::thread::available_parallelism().unwrap().get() as i32),
    );
    let _g = tch::no_grad_guard();
    let mut m = ttft::models::load(&dir, Device::Cpu, kind).unwrap();
    let kernels = Kernels::resolve(flag, Device::Cpu, kind).unwrap();
    m.decoder.use_kernels(kernels).unwrap();
    // LAYERS=split: every layer op by op, for comparison with whole-layer calls.
    if std::env::var("LAYERS").is_ok_and(|v| v == "split") {
        m.decoder.whole_layers = false;
    }
    let ids = Tensor::arange_start(100, 100 + n, (Kind::Int64, Device::Cpu));
    let (med, min) = median_ms(reps, || {
        let mut cache = m.decoder.new_cache();
        let logits = m.decoder.forward(&ids, &mut cache, false);
        let _ = logits.argmax(-1, false).int64_value(&[0]);
    });
    let (pmed, pmin) = median_ms(reps, || projections(&m.decoder, n, kind));
    println!(
        "{n} tokens, {} {kind:?}: forward median {med:.2} ms (min {min:.2}); projections alone median {pmed:.2} ms (min {pmin:.2})",
        kernels.name()
    );
}
