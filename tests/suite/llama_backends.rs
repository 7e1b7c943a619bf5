//! The two llama.cpp backends against the real GGUF and the real spawned llama-server.

use crate::helpers;

use helpers::*;
use ttft::backend::api::{ApiBackend, Endpoint};
use ttft::backend::inproc::InprocBackend;
use ttft::backend::Backend;

const FRANCE: &str = "The capital of France is";

#[test]
fn inproc_and_api_see_the_same_tokens_and_first_token() {
    let _serial = serial();
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
    let _serial = serial();
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

#[test]
fn non_ascii_first_tokens_agree_between_inproc_and_the_server() {
    let _serial = serial();
    use ttft::report::agreement::{compare, Seen};
    let params = llama_params();
    let prompts = ["中国的首都是", "Reply with one emoji: 🙂"];
    let mut inproc = InprocBackend::open(&params).unwrap();
    let ours: Vec<_> = prompts
        .iter()
        .map(|p| inproc.measure(p, 11).unwrap())
        .collect();
    drop(inproc);
    let dir = tempfile::tempdir().unwrap();
    let mut api =
        ApiBackend::open(&params, &api_settings(dir.path(), Endpoint::Completion)).unwrap();
    for (p, a) in prompts.iter().zip(&ours) {
        let b = api.measure(p, 11).unwrap();
        assert!(
            !a.output.contains('\u{FFFD}'),
            "inproc {p:?}: {:?}",
            a.output
        );
        assert!(!b.output.contains('\u{FFFD}'), "api {p:?}: {:?}", b.output);
        assert_eq!(a.output, b.output, "{p:?}");
        let seen = std::collections::BTreeMap::from([
            (ttft::backend::BackendKind::Inproc, Seen::of(a)),
            (ttft::backend::BackendKind::Api, Seen::of(&b)),
        ]);
        let v = compare(&seen);
        assert!(v.agree, "{p:?}: inproc {a:?} vs api {b:?}");
    }
}

#[test]
fn a_first_token_that_is_part_of_an_emoji_ends_ttft_and_the_emoji_comes_later() {
    let _serial = serial();
    // SmolLM2 answers this chat prompt with 🌟, which byte-level BPE splits over tokens.
    let mut inproc = InprocBackend::open_with(&llama_params(), true).unwrap();
    let m = inproc.measure("Reply with one emoji: 🙂", 6).unwrap();
    assert!(m.output.starts_with('🌟'), "{:?}", m.output);
    assert_eq!(
        m.first_token, "",
        "TTFT ends at the first token, not the first character"
    );
    let star: String = "🌟".bytes().map(|b| format!("{b:02x}")).collect();
    let bytes = m.first_token_bytes.clone().unwrap();
    assert!(
        !bytes.is_empty() && star.starts_with(&bytes) && bytes != star,
        "{bytes}"
    );
    let first_char = m.first_char_ms.expect("first character recorded");
    assert!(m.ttft_ms < first_char && first_char <= m.e2e_ms);
}
