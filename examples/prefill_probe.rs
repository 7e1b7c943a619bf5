//! Times the hf prefill alone (no tokenizer, no CLI) for quick performance experiments:
//! `cargo run --release --example prefill_probe -- MODEL_DIR TOKENS REPS`.

use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = std::path::PathBuf::from(&args[1]);
    let n: i64 = args[2].parse().unwrap();
    let reps: usize = args[3].parse().unwrap();
    tch::set_num_interop_threads(1);
    tch::set_num_threads(std::thread::available_parallelism().unwrap().get() as i32);
    let _g = tch::no_grad_guard();
    let m = ttft::models::load(&dir, Device::Cpu, Kind::Float).unwrap();
    let ids = Tensor::arange_start(100, 100 + n, (Kind::Int64, Device::Cpu));
    let mut times = Vec::new();
    for i in 0..reps + 2 {
        let mut cache = m.decoder.new_cache();
        let t0 = Instant::now();
        let logits = m.decoder.forward(&ids, &mut cache, false);
        let _ = logits.argmax(-1, false).int64_value(&[0]);
        if i >= 2 {
            times.push(t0.elapsed().as_secs_f64() * 1e3);
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "{n} tokens: median {:.2} ms, min {:.2} ms",
        times[times.len() / 2],
        times[0]
    );
}
