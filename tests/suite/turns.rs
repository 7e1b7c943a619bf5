//! `--turns` on the real model and the shipped conversations: every backend replays the same
//! turns, holds the earlier ones in its cache (proven per row) and prefills only the new turn,
//! with the same prompt tokens on every backend; cold rows prefill the whole conversation with
//! nothing cached. And the one-line refusals of conversations that cannot be replayed.

use crate::helpers;

use helpers::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// `extra` after one run per prompt, no warm-up and 4 new tokens (a Chinese answer's first
/// character can take 3 byte tokens, and llama-server streams no event before a character is
/// complete).
fn run(out: &Path, extra: &[&str]) -> std::process::Output {
    let o = out.display().to_string();
    let mut args = vec![
        "--runs",
        "1",
        "--warmup",
        "0",
        "--max-new-tokens",
        "4",
        "--no-progress",
        "--out",
        &o,
    ];
    args.extend_from_slice(extra);
    ttft(&args)
}

/// A row's (turn, depth, prompt tokens, cached tokens).
type Row = (u64, u64, u64, u64);

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

#[test]
fn every_backend_holds_the_earlier_turns_and_prefills_the_same_new_tokens() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let o = run(
        d.path(),
        &["--backend", "all", "--turns", "2", "--dataset-sample", "2"],
    );
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let json = json_of(d.path());
    assert_schema_valid(&json);
    let runs = json["runs"].as_array().unwrap();
    // (cache, prompt) → backend → row
    let mut seen: BTreeMap<(String, u64), BTreeMap<String, Row>> = BTreeMap::new();
    for r in runs {
        assert_eq!(r["ok"], true, "{r}");
        let flags = r["flags"].as_array().unwrap();
        assert!(
            !flags
                .iter()
                .any(|f| f.as_str().unwrap().starts_with("context_")),
            "{r}"
        );
        let cache = r["point"].as_str().unwrap().to_string();
        let row = (
            num(&r["turn"]),
            num(&r["depth"]),
            num(&r["prompt_tokens"]),
            num(&r["cached_tokens"]),
        );
        assert_eq!(
            row.1, row.3,
            "the cache holds exactly the earlier turns: {r}"
        );
        if cache == "cache=cold" {
            assert_eq!(row.3, 0, "a cold row has nothing cached: {r}");
        }
        seen.entry((cache, num(&r["prompt_idx"])))
            .or_default()
            .insert(r["runner"].as_str().unwrap().to_string(), row);
    }
    let cases = seen.len() / 2;
    assert!(cases >= 4, "two conversations of 2 turns: {seen:?}");
    // Cold prompts the hf tokenizer splits differently from llama.cpp's vocabulary (transformers
    // splits "\n\n" before a digit, llama.cpp does not): the parity gate lists them.
    let disagree: Vec<u64> = json["token_disagreements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| num(&d["prompt_idx"]))
        .collect();
    for ((cache, idx), per) in &seen {
        assert_eq!(per.len(), 3, "every backend ran {cache} #{idx}: {per:?}");
        let (inproc, api, hf) = (&per["inproc"], &per["api"], &per["hf"]);
        assert_eq!(inproc, api, "{cache} #{idx}");
        if cache == "cache=warm" || !disagree.contains(idx) {
            // Warm: every backend holds the same context ids and prefills the same turn.
            assert_eq!(
                inproc, hf,
                "same turn, context and prompt tokens: {cache} #{idx}"
            );
        }
        let cold = &seen[&("cache=cold".to_string(), *idx)]["inproc"];
        let warm = &seen[&("cache=warm".to_string(), *idx)]["inproc"];
        // Cold prefills context and turn; warm only the turn, on top of the cached context.
        assert_eq!(cold.2, warm.1 + warm.2, "{cold:?} {warm:?}");
        if warm.0 > 1 {
            assert!(warm.1 > 0, "turn {} follows cached turns: {warm:?}", warm.0);
            let before = &seen[&("cache=warm".to_string(), idx - 1)]["inproc"];
            assert!(
                warm.1 > before.1 + before.2,
                "the context grows by the last turn and its answer"
            );
        }
    }
    let lines = json["turns"].as_array().unwrap();
    assert_eq!(lines.len(), 3 * 2 * 2, "backend × cache × turn: {lines:?}");
    assert!(stdout(&o).contains("turns: per turn"), "{}", stdout(&o));
}

#[test]
fn conversations_that_cannot_be_replayed_are_one_line_and_exit_2_before_timing() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let inproc = ["--backend", "inproc"];
    let refused = |extra: &[&str], want: &str| {
        let mut args = inproc.to_vec();
        args.extend_from_slice(extra);
        let o = run(d.path(), &args);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {}", stderr(&o));
        let l = one_error_line(&o);
        assert!(l.contains(want), "{extra:?}: {l}");
    };
    refused(&["--turns", "0"], "--turns must be at least 1");
    refused(&["--turns", "2", "--chat"], "drop --chat");
    refused(
        &["--turns", "2", "--turns-cache", "hot"],
        "--turns-cache hot",
    );
    refused(&["--turns-cache", "warm"], "needs --turns");
    // The whole conversation must fit the context at its last turn.
    refused(
        &["--turns", "4", "--ctx-size", "256"],
        "data/conversations.jsonl line",
    );
    let bad = d.path().join("bad.jsonl");
    let conv = r#"{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}"#;
    std::fs::write(&bad, format!("{conv}\n{{\"prompt\": \"just one\"}}\n")).unwrap();
    let bad_arg = bad.display().to_string();
    refused(
        &["--turns", "2", "--dataset", &bad_arg],
        "line 2: --turns needs a conversation",
    );
    std::fs::write(&bad, format!("{conv}\n{{\"conversations\": []}}\n")).unwrap();
    refused(&["--turns", "2", "--dataset", &bad_arg], "line 2");
    std::fs::write(&bad, format!("{conv}\n{{\"conversations\": [\n")).unwrap();
    refused(&["--turns", "2", "--dataset", &bad_arg], "line 2");
    assert!(files_with(d.path(), "json").is_empty(), "nothing timed");
}
