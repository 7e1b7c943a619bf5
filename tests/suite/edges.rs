//! Truth at the edges, end to end on the three real backends: non-ASCII output (a token can be part
//! of a UTF-8 character), and the end-of-generation rule (the EOS token is a generated token).

use crate::helpers;

use helpers::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;

/// Run `ttft --backend all` on `prompts` (one per line) and return the JSON report.
fn run_all(dir: &Path, prompts: &[&str], extra: &[&str]) -> Value {
    let file = dir.join("prompts.txt");
    std::fs::write(&file, prompts.join("\n") + "\n").unwrap();
    let set = format!("edge={}", file.display());
    let out = dir.join("out");
    let mut args = vec![
        "--backend",
        "all",
        "--prompts",
        &set,
        "--runs",
        "1",
        "--warmup",
        "0",
        "--no-progress",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let o = ttft(&args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    json_of(&out)
}

/// The successful rows of a report, keyed by (prompt index, backend).
fn rows(json: &Value) -> BTreeMap<(u64, String), Value> {
    let runs = json["runs"].as_array().unwrap();
    assert!(
        runs.iter().all(|r| r["ok"] == true),
        "a run failed: {}",
        json["runs"]
    );
    runs.iter()
        .map(|r| {
            let key = (
                r["prompt_idx"].as_u64().unwrap(),
                r["runner"].as_str().unwrap().to_string(),
            );
            (key, r.clone())
        })
        .collect()
}

/// The first character of a row's generated text.
fn first_char(r: &Value) -> Option<char> {
    r["output"].as_str().unwrap().chars().next()
}

#[test]
fn chinese_and_emoji_output_is_whole_characters_and_the_same_first_token_everywhere() {
    let _s = serial();
    let d = tempfile::tempdir().unwrap();
    let json = run_all(
        d.path(),
        // The model answers the emoji line with emoji whose first token is a space and the first byte
        // of a 4-byte character: TTFT ends at a token with no complete character.
        &[
            "中国的首都是",
            "Emojis: 🙂 😀 🎉 👍 🙂 😀 🎉 👍 🙂",
            "Reply with one emoji: 🙂",
        ],
        &["--max-new-tokens", "12"],
    );
    let rows = rows(&json);
    assert_eq!(rows.len(), 9, "3 prompts x 3 backends");
    for ((idx, backend), r) in &rows {
        let out = r["output"].as_str().unwrap();
        assert!(!out.contains('\u{FFFD}'), "{backend} prompt {idx}: {out:?}");
        if backend != "api" {
            assert!(r["first_token_id"].is_u64(), "{backend} prompt {idx}: {r}");
        }
    }
    for idx in 0..3u64 {
        let of = |b: &str| &rows[&(idx, b.to_string())];
        let (hf, inproc, api) = (of("hf"), of("inproc"), of("api"));
        assert_eq!(
            hf["first_token_id"], inproc["first_token_id"],
            "prompt {idx}"
        );
        assert_eq!(hf["first_token_bytes"], inproc["first_token_bytes"]);
        if api["first_token_id"].is_u64() {
            assert_eq!(
                api["first_token_id"], inproc["first_token_id"],
                "prompt {idx}"
            );
        } else {
            // llama-server sends no event for a token that ends inside a character: its first
            // event is a later token, and the row says so.
            let n = api["first_event_tokens"].as_u64().unwrap();
            assert!(n > 1, "{api}");
            let flag = format!("first_event_after_tokens:{n}");
            assert!(
                api["flags"].as_array().unwrap().iter().any(|f| f == &flag),
                "{api}"
            );
        }
        assert_eq!(first_char(hf), first_char(inproc), "prompt {idx}");
        assert_eq!(first_char(api), first_char(inproc), "prompt {idx}");
    }
    assert_first_tokens_agree(&json);
}

#[test]
fn a_reply_that_ends_at_eos_counts_the_same_tokens_on_every_backend() {
    let _s = serial();
    let d = tempfile::tempdir().unwrap();
    let json = run_all(
        d.path(),
        // A reply hf (f32) and inproc (Q4_1) give word for word before the EOS.
        &["What is 2+2? Answer with a number only."],
        &["--chat", "--max-new-tokens", "64"],
    );
    let rows = rows(&json);
    let counts: BTreeMap<&str, u64> = rows
        .iter()
        .map(|((_, b), r)| (b.as_str(), r["generated_tokens"].as_u64().unwrap()))
        .collect();
    for ((_, backend), r) in &rows {
        // llama-server's chat endpoint says "stop" for an EOS and a stop word alike.
        let stop = if backend == "api" { "stop" } else { "eos" };
        assert_eq!(r["stop_reason"], stop, "{backend}: {r}");
        assert!(
            r["generated_tokens"].as_u64().unwrap() < 64,
            "{backend}: {r}"
        );
    }
    assert_eq!(counts["hf"], counts["inproc"], "{counts:?}");
    assert_eq!(counts["api"], counts["inproc"], "{counts:?}");
}
