//! `--dataset`: the shipped conversation sample on every backend and in load mode, per-request
//! `output_tokens`, the too-long rule, and one clear line (exit 2, nothing timed) for every bad
//! dataset.

use crate::helpers;

use helpers::*;
use serde_json::Value;
use std::path::Path;

/// Run with `args` into `out`; exit code 0 and the report's JSON.
fn run_ok(out: &Path, args: &[&str]) -> Value {
    let mut v: Vec<&str> = args.to_vec();
    v.extend(["--no-progress", "--out", out.to_str().unwrap()]);
    let o = ttft(&v);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let json = json_of(out);
    assert_schema_valid(&json);
    json
}

fn runs_of<'a>(json: &'a Value, runner: &str) -> Vec<&'a Value> {
    json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["runner"] == runner)
        .collect()
}

#[test]
fn a_conversation_sample_of_8_runs_on_every_backend_with_its_tokens_counted_by_each() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let json = run_ok(
        d.path(),
        &[
            "--backend",
            "all",
            "--dataset",
            "data/conversations.jsonl",
            "--dataset-sample",
            "8",
            // Seed 81 draws the 8 requests without the two longest first turns (340 and 429
            // tokens), which keeps hf's share of the test short.
            "--seed",
            "81",
            "--runs",
            "1",
            "--warmup",
            "0",
            "--max-new-tokens",
            "2",
        ],
    );
    eprintln!(
        "all backends, 8 requests: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let sets = json["sets"].as_array().unwrap();
    assert_eq!(
        sets.len(),
        1,
        "a dataset alone replaces the config's prompt files"
    );
    assert_eq!(sets[0]["name"], "conversations");
    let lines = sets[0]["dataset_lines"].as_array().unwrap();
    assert_eq!(lines.len(), 8);
    // Each request's input length, by each backend's own tokenizer, is in the parity gate.
    let parity = json["parity"]["prompts"].as_array().unwrap();
    assert_eq!(parity.len(), 8);
    for p in parity {
        assert_eq!(p["prompt_type"], "conversations");
        for b in ["hf", "inproc", "api"] {
            assert!(p["counts"][b].as_u64().unwrap() > 0, "{b}: {p}");
        }
        assert_eq!(p["equal"], true, "{p}");
    }
    for b in ["hf", "inproc", "api"] {
        let runs = runs_of(&json, b);
        assert_eq!(runs.len(), 8, "{b}");
        let mut idx: Vec<u64> = runs
            .iter()
            .map(|r| r["prompt_idx"].as_u64().unwrap())
            .collect();
        idx.sort_unstable();
        assert_eq!(
            idx,
            (0..8).collect::<Vec<u64>>(),
            "{b}: one case per request"
        );
        for r in &runs {
            assert_eq!(r["ok"], true, "{b}: {r}");
            assert_eq!(r["max_new_tokens"], 2, "{b}");
            let n = r["prompt_tokens"].as_u64().unwrap();
            let idx = r["prompt_idx"].as_u64().unwrap() as usize;
            assert_eq!(n, parity[idx]["counts"][b].as_u64().unwrap(), "{b}#{idx}");
        }
    }
}

#[test]
fn output_tokens_set_each_requests_max_new_tokens_and_a_dataset_combines_with_prompts() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("mixed.jsonl");
    std::fs::write(
        &data,
        concat!(
            "{\"prompt\": \"The capital of France is\", \"output_tokens\": 3}\n",
            "\n",
            "{\"conversations\": [{\"from\": \"human\", \"value\": \"Name a color.\"}, {\"from\": \"gpt\", \"value\": \"Blue.\"}]}\n",
        ),
    )
    .unwrap();
    let out = d.path().join("out");
    let json = run_ok(
        &out,
        &[
            "--backend",
            "inproc,api",
            "--prompts",
            "data/short_prompts.txt",
            "--dataset",
            data.to_str().unwrap(),
            "--runs",
            "1",
            "--warmup",
            "0",
            "--max-new-tokens",
            "5",
        ],
    );
    let names: Vec<&str> = json["sets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["short", "mixed"]);
    assert_eq!(json["sets"][1]["dataset_lines"], serde_json::json!([1, 3]));
    for b in ["inproc", "api"] {
        for r in runs_of(&json, b) {
            let want = if r["prompt_type"] == "mixed" && r["prompt_idx"] == 0 {
                3
            } else {
                5
            };
            assert_eq!(r["max_new_tokens"], want, "{b}: {r}");
            let g = r["generated_tokens"].as_u64().unwrap();
            assert!(g >= 1 && g <= want, "{b}: {g} generated, max {want}");
            if r["stop_reason"] == "length" {
                assert_eq!(g, want, "{b}: stopped at the length it was given");
            }
        }
    }
    let mixed0 = runs_of(&json, "inproc")
        .into_iter()
        .find(|r| r["prompt_type"] == "mixed" && r["prompt_idx"] == 0)
        .unwrap();
    assert_eq!(mixed0["generated_tokens"], 3, "{mixed0}");
    let csv = std::fs::read_to_string(only_file(&out, "csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert!(header.contains(&"max_new_tokens"), "{header:?}");
}

#[test]
fn a_request_whose_output_tokens_do_not_fit_the_context_follows_skip_too_long() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("big.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"Hello\"}\n{\"prompt\": \"Write a long story.\", \"output_tokens\": 4000}\n",
    )
    .unwrap();
    let common = [
        "--backend",
        "inproc",
        "--dataset",
        data.to_str().unwrap(),
        "--runs",
        "1",
        "--warmup",
        "0",
        "--max-new-tokens",
        "2",
        "--no-progress",
    ];
    let out = d.path().join("a");
    let mut args = common.to_vec();
    args.extend(["--out", out.to_str().unwrap()]);
    let o = ttft(&args);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(
        l.contains("big#1")
            && l.contains("big.jsonl line 2")
            && l.contains("+ 4000 new > --ctx-size 2048"),
        "{l}"
    );
    let out = d.path().join("b");
    let mut args = common.to_vec();
    args.extend(["--skip-too-long", "--out", out.to_str().unwrap()]);
    let o = ttft(&args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let json = json_of(&out);
    let runs = runs_of(&json, "inproc");
    assert_eq!(runs[0]["ok"], true);
    assert_eq!(runs[1]["ok"], false);
    assert_eq!(runs[1]["max_new_tokens"], 4000);
}

#[test]
fn load_mode_draws_its_requests_from_the_dataset() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let json = run_ok(
        d.path(),
        &[
            "--backend",
            "api",
            "--dataset",
            "data/conversations.jsonl",
            "--dataset-sample",
            "8",
            "--concurrency",
            "2",
            "--num-requests",
            "8",
            "--max-new-tokens",
            "4",
        ],
    );
    assert_eq!(json["load"]["ok"], 8);
    assert_eq!(json["load"]["max_in_flight"], 2);
    let runs = runs_of(&json, "api");
    assert_eq!(runs.len(), 8);
    let mut idx: Vec<u64> = runs
        .iter()
        .map(|r| r["prompt_idx"].as_u64().unwrap())
        .collect();
    idx.sort_unstable();
    assert_eq!(idx, (0..8).collect::<Vec<u64>>(), "each drawn request once");
    let dataset = std::fs::read_to_string(root().join("data/conversations.jsonl")).unwrap();
    for r in runs {
        assert_eq!(r["prompt_type"], "conversations");
        assert_eq!(r["max_new_tokens"], 4);
        let text = r["prompt_text"].as_str().unwrap();
        let escaped = serde_json::to_string(text).unwrap();
        assert!(
            dataset.contains(&escaped),
            "a first human turn of the file: {text}"
        );
        assert_eq!(r["cache_n"], 0, "{r}");
    }
}

/// A bad dataset: exit 2 with one line containing every `needle`, before anything is timed.
fn refused(dir: &Path, file: Option<(&str, &[u8])>, extra: &[&str], needles: &[&str]) {
    let path = dir.join(file.map_or("missing.jsonl", |f| f.0));
    if let Some((_, bytes)) = file {
        std::fs::write(&path, bytes).unwrap();
    }
    let out = dir.join("out");
    let mut args = vec![
        "--backend",
        "api",
        "--dataset",
        path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let o = ttft(&args);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    let l = one_error_line(&o);
    for n in needles {
        assert!(l.contains(n), "{n:?} not in: {l}");
    }
    assert!(
        !out.exists() || files_with(&out, "csv").is_empty(),
        "nothing timed"
    );
}

#[test]
fn every_bad_dataset_is_one_line_before_timing() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let good: &[u8] = b"{\"prompt\": \"a\"}\n{\"prompt\": \"b\"}\n";
    refused(
        dir,
        None,
        &[],
        &["--dataset", "missing.jsonl", "No such file"],
    );
    refused(
        dir,
        Some(("empty.jsonl", b"\n \n")),
        &[],
        &["empty.jsonl has no requests"],
    );
    refused(
        dir,
        Some(("bad.jsonl", b"{\"prompt\": \"a\"}\n{\"prompt\": \"a\",}\n")),
        &[],
        &["bad.jsonl line 2: not valid JSON"],
    );
    refused(
        dir,
        Some(("neither.jsonl", b"{\"text\": \"a\"}\n")),
        &[],
        &["neither.jsonl line 1: neither format (keys: text)"],
    );
    refused(
        dir,
        Some((
            "emptyconv.jsonl",
            b"{\"prompt\": \"a\"}\n\n{\"conversations\": []}\n",
        )),
        &[],
        &["emptyconv.jsonl line 3: the conversation is empty"],
    );
    refused(
        dir,
        Some((
            "nohuman.jsonl",
            b"{\"conversations\": [{\"from\": \"gpt\", \"value\": \"hi\"}]}\n",
        )),
        &[],
        &["nohuman.jsonl line 1: the conversation has no human turn"],
    );
    for n in ["0", "3"] {
        refused(
            dir,
            Some(("two.jsonl", good)),
            &["--dataset-sample", n],
            &[
                &format!("--dataset-sample {n}:"),
                "two.jsonl has 2 requests",
            ],
        );
    }
}
