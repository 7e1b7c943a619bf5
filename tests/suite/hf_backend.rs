//! The hf backend on the exported default model: the same answer and the same tokens as llama.cpp.

use crate::helpers;

use helpers::*;
use ttft::backend::hf::{HfBackend, HfSettings};
use ttft::backend::inproc::InprocBackend;
use ttft::backend::Backend;

fn hf_settings() -> HfSettings {
    hf_settings_chat(false)
}

fn hf_settings_chat(chat: bool) -> HfSettings {
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
        kernels: "auto".into(),
        threads: llama_params().threads,
        chat,
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

/// Prompts whose answers start with multi-byte characters (byte-level BPE splits them over tokens).
const NON_ASCII: [&str; 2] = ["中国的首都是", "Reply with one emoji: 🙂"];

/// No U+FFFD anywhere: a character cut off by `max_new_tokens` is dropped, not replaced.
fn assert_whole_characters(who: &str, prompt: &str, m: &ttft::backend::Measurement) {
    assert!(
        !m.output.contains('\u{FFFD}'),
        "{who} {prompt:?}: {:?}",
        m.output
    );
}

#[test]
fn non_ascii_output_is_whole_characters_and_the_first_token_is_the_same_on_hf_and_inproc() {
    let _s = serial();
    let mut hf = HfBackend::open(&hf_settings()).unwrap();
    let mut inproc = InprocBackend::open(&llama_params()).unwrap();
    for p in NON_ASCII {
        let a = hf.measure(p, 12).unwrap();
        let b = inproc.measure(p, 12).unwrap();
        for (who, m) in [("hf", &a), ("inproc", &b)] {
            assert_whole_characters(who, p, m);
            assert!(!m.output.is_empty(), "{who} {p:?}");
            assert!(m.first_token_id.is_some() && m.first_token_bytes.is_some());
            if m.first_token.is_empty() {
                // TTFT ended at part of a character; the character came later.
                assert!(m.first_char_ms.unwrap() >= m.ttft_ms, "{who} {p:?}");
            }
        }
        assert_eq!(a.first_token_id, b.first_token_id, "{p:?}");
        assert_eq!(a.first_token_bytes, b.first_token_bytes, "{p:?}");
        assert_eq!(a.first_token, b.first_token, "{p:?}");
        assert_eq!(
            a.output.chars().next(),
            b.output.chars().next(),
            "first visible text differs for {p:?}: hf {:?}, inproc {:?}",
            a.output,
            b.output
        );
    }
}

#[test]
fn a_chat_reply_that_ends_at_eos_counts_the_eos_token_on_hf_and_inproc() {
    let _s = serial();
    // A reply both backends give word for word ("2 + 2 = 4"), then EOS.
    let prompt = "What is 2+2? Answer with a number only.";
    let mut hf = HfBackend::open(&hf_settings_chat(true)).unwrap();
    let a = hf.measure(prompt, 64).unwrap();
    drop(hf);
    let mut inproc = InprocBackend::open_with(&llama_params(), true).unwrap();
    let b = inproc.measure(prompt, 64).unwrap();
    for (who, m) in [("hf", &a), ("inproc", &b)] {
        assert_eq!(m.stop_reason.as_deref(), Some("eos"), "{who}: {m:?}");
        assert!(m.generated_tokens < 64, "{who}");
        assert_eq!(m.itl_ms.len() as u32, m.generated_tokens - 1, "{who}");
        assert_eq!(
            m.tokens_counted_by,
            Some(ttft::backend::TokenCount::Decoder)
        );
    }
    assert_eq!(a.output, b.output);
    assert_eq!(a.generated_tokens, b.generated_tokens, "{:?}", a.output);
}
