//! The hf backend on the exported default model: the same answer and the same tokens as llama.cpp.

mod helpers;

use helpers::*;
use ttft::backend::hf::{HfBackend, HfSettings};
use ttft::backend::inproc::InprocBackend;
use ttft::backend::Backend;

fn hf_settings() -> HfSettings {
    let dir = root().join("models/SmolLM2-135M-Instruct-hf");
    assert!(
        dir.join("model.safetensors").exists(),
        "run scripts/setup.sh first"
    );
    HfSettings {
        model: dir.display().to_string(),
        revision: None,
        device: "cpu".into(),
        dtype: "f32".into(),
        threads: llama_params().threads,
        chat: false,
    }
}

#[test]
fn exported_smollm2_says_paris_and_uses_the_gguf_token_ids() {
    let mut hf = HfBackend::open(&hf_settings()).expect("open exported checkpoint");
    let m = hf.measure("The capital of France is", 3).unwrap();
    assert_eq!(m.first_token, " Paris");
    assert_eq!(m.prompt_tokens, Some(5));
    let parts = m.tokenize_ms.unwrap()
        + m.prefill_ms.unwrap()
        + m.first_sample_ms.unwrap()
        + m.detokenize_ms.unwrap();
    assert!(
        (parts - m.ttft_ms).abs() < 0.5,
        "parts {parts} vs ttft {}",
        m.ttft_ms
    );
    assert!(m.generated_tokens >= 2 && m.decode_ms_per_token.is_some());
    let info = hf.info();
    assert_eq!(info["dtype"], "f32");
    assert_eq!(info["device"], "cpu");
    assert_eq!(
        info["libtorch_version"].as_str().unwrap().split('+').next(),
        Some("2.13.0")
    );

    let inproc = InprocBackend::open(&llama_params()).unwrap();
    for p in data_prompts("short").iter().chain(&data_prompts("long")) {
        let a = hf.ids(p).unwrap();
        let b = inproc.ids(p).unwrap();
        assert_eq!(a, b, "hf and GGUF token ids differ for {p:?}");
    }
}

#[test]
fn binary_keeps_libtorch_linked_with_rpath() {
    // --as-needed would drop libtorch.so (and with it libtorch_cuda); the rpath makes it load
    // without LD_LIBRARY_PATH.
    let out = std::process::Command::new("readelf")
        .args(["-d", env!("CARGO_BIN_EXE_ttft")])
        .output()
        .expect("readelf");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("[libtorch.so]"), "{text}");
    assert!(text.contains("RUNPATH") || text.contains("RPATH"), "{text}");
}

#[test]
fn a_libtorch_panic_is_a_failed_run_and_the_backend_stays_usable() {
    use ttft::backend::guard::Guarded;
    let dir = tiny_gpt2_checkpoint();
    let settings = HfSettings {
        model: dir.path().display().to_string(),
        threads: 1,
        ..hf_settings()
    };
    let mut hf = Guarded::new(HfBackend::open(&settings).expect("open the tiny GPT-2"));
    // 100 byte tokens > n_positions 64: wpe is sliced past its last row inside libtorch.
    let long = "a".repeat(100);
    assert_eq!(hf.token_ids(&long).unwrap().len(), 100);
    let e = hf.measure(&long, 2).unwrap_err().to_string();
    assert!(
        e.starts_with("libtorch error: ") && e.contains("(64)"),
        "{e}"
    );
    assert!(!e.contains('\n'), "one line, no C++ backtrace: {e}");
    // Every run makes a fresh KV cache: the next prompt runs normally.
    let m = hf
        .measure("hello", 3)
        .expect("a short prompt after the panic");
    assert_eq!(m.prompt_tokens, Some(5));
    assert!(m.generated_tokens >= 1);
    // The model shape for prefill FLOPs: 2 layers, 64 wide, 256 tokens, tied head.
    let shape: ttft::report::flops::ModelShape =
        serde_json::from_value(hf.info()["model_shape"].clone()).unwrap();
    assert_eq!((shape.n_layers, shape.d_model, shape.vocab), (2, 64, 256));
    assert!(shape.tied_lm_head);
    let n_params = hf.info()["n_params"].as_f64().unwrap();
    assert_eq!(
        shape.non_embedding_params,
        n_params - 256.0 * 64.0 - 64.0 * 64.0
    );
}
