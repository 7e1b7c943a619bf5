//! The two llama.cpp backends against the real GGUF and the real spawned llama-server.

mod helpers;

use helpers::*;
use ttft::backend::api::{ApiBackend, Endpoint};
use ttft::backend::inproc::InprocBackend;
use ttft::backend::Backend;

const FRANCE: &str = "The capital of France is";

#[test]
fn inproc_and_api_see_the_same_tokens_and_first_token() {
    let params = llama_params();
    let mut inproc = InprocBackend::open(&params).expect("load default GGUF in-process");
    let prompts: Vec<String> = data_prompts("short")
        .into_iter()
        .chain(data_prompts("long"))
        .collect();
    let inproc_counts: Vec<u32> = prompts
        .iter()
        .map(|p| inproc.token_ids(p).unwrap().len() as u32)
        .collect();
    let m = inproc.measure(FRANCE, 3).unwrap();
    assert_eq!(m.first_token, " Paris");
    assert_eq!(m.prompt_tokens, Some(5));
    assert!(m.ttft_ms > 0.0 && m.ttft_ms <= m.e2e_ms);
    let parts = m.tokenize_ms.unwrap()
        + m.prefill_ms.unwrap()
        + m.first_sample_ms.unwrap()
        + m.detokenize_ms.unwrap();
    assert!(
        (parts - m.ttft_ms).abs() < 0.5,
        "parts {parts} vs ttft {}",
        m.ttft_ms
    );
    drop(inproc);

    let dir = tempfile::tempdir().unwrap();
    let mut api = ApiBackend::open(&params, &api_settings(dir.path(), Endpoint::Completion))
        .expect("spawn llama-server");
    assert_eq!(api.info()["commit_matches_linked"], true);
    for (p, &n) in prompts.iter().zip(&inproc_counts) {
        assert_eq!(
            api.token_ids(p).unwrap().len() as u32,
            n,
            "server /tokenize differs for {p:?}"
        );
        // The count the server actually evaluated when timing, not just its tokenizer.
        let m = api.measure(p, 1).unwrap();
        assert_eq!(
            m.prompt_tokens,
            Some(n),
            "evaluated prompt tokens differ for {p:?}"
        );
        assert_eq!(m.cache_n, Some(0));
    }
    let m = api.measure(FRANCE, 3).unwrap();
    assert_eq!(m.first_token, " Paris");
    assert!(m.server_prompt_ms.unwrap() > 0.0);
    assert!(m.api_overhead_ms.is_some());
    assert!(m.ttft_ms > 0.0 && m.ttft_ms <= m.e2e_ms);
    assert_eq!(m.generated_tokens, 3);
}

#[test]
fn openai_endpoint_streams_and_prompt_cache_is_never_used() {
    let params = llama_params();
    let dir = tempfile::tempdir().unwrap();
    let mut api = ApiBackend::open(&params, &api_settings(dir.path(), Endpoint::V1)).unwrap();
    let pid = api.server_pid().unwrap();
    assert!(pid_alive(pid));
    let m = api.measure(FRANCE, 4).unwrap();
    assert_eq!(m.first_token, " Paris");
    assert!(m.generated_tokens >= 2);
    assert!(m.decode_ms_per_token.is_some());

    // The same long prompt three times: with llama-server's default cache_prompt=true the second
    // and third would reuse the KV cache. Every run must be a full, cold prefill.
    let long = &data_prompts("long")[0];
    let mut counts = Vec::new();
    for _ in 0..3 {
        let m = api.measure(long, 1).unwrap();
        assert_eq!(m.cache_n, Some(0), "prompt cache was used");
        counts.push(m.server_prompt_n.unwrap());
    }
    assert!(
        counts.iter().all(|&c| c == counts[0] && c > 300),
        "{counts:?}"
    );

    drop(api);
    assert!(!pid_alive(pid), "llama-server {pid} outlived its backend");
}
