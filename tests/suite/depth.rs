//! `--depth` on the real model: every backend prefills the prompt on top of a cached context,
//! proves per row that the context was in its cache, answers as if the context had been sent
//! cold, and is faster than that cold run. And the CLI's one-line refusals of a depth that does
//! not fit.

use crate::helpers;

use helpers::*;
use std::path::Path;
use ttft::backend::api::{ApiBackend, Endpoint};
use ttft::backend::hf::{HfBackend, HfSettings};
use ttft::backend::inproc::{InprocBackend, VocabOnly};
use ttft::backend::{Backend, Measurement};
use ttft::bench::depth::{self, DepthContext};
use ttft::bench::parity::Tokenizer;
use ttft::bench::prompts::PromptSet;
use ttft::bench::record::PromptId;

const PROMPT: &str = "Who paid for the first lighthouse on the point?";
const DEPTH: u32 = 256;

/// The 256-token context, built and checked as `ttft run --depth 256` does.
fn context() -> DepthContext {
    let doc_path = root().join("data/depth_context.txt");
    let doc = depth::read_document(&doc_path).unwrap();
    let vocab = VocabOnly::open(&gguf()).unwrap();
    let bos = Some(vocab.bos());
    let tok = Tokenizer::new(
        ttft::backend::BackendKind::Inproc,
        "gguf",
        bos,
        move |s: &str| vocab.token_ids(s).map_err(|e| e.to_string()),
    );
    let set = PromptSet {
        name: "q".into(),
        path: "q.txt".into(),
        prompts: vec![PROMPT.into()],
        repeat: None,
        warmup: None,
        dataset: None,
    };
    let mut c = depth::contexts(&doc, &doc_path, &[DEPTH], &mut [tok], &[set]).unwrap();
    c.remove(0)
}

fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// Three warm runs on the context, then three cold runs of context text + prompt: the warm
/// rows prove the context in the cache and evaluate only the prompt; the answer is the same.
fn warm_vs_cold(b: &mut dyn Backend, c: &DepthContext) -> (Vec<Measurement>, Vec<Measurement>) {
    b.set_context(&c.ids).unwrap();
    let _ = b.measure(PROMPT, 2).unwrap(); // warm-up
    let warm: Vec<Measurement> = (0..3).map(|_| b.measure(PROMPT, 2).unwrap()).collect();
    b.set_context(&[]).unwrap();
    let cold_text = format!("{}{PROMPT}", c.text);
    let _ = b.measure(&cold_text, 2).unwrap();
    let cold: Vec<Measurement> = (0..3).map(|_| b.measure(&cold_text, 2).unwrap()).collect();
    let own = c.prompt_tokens[&PromptId::new("q", 0)];
    for m in &warm {
        assert_eq!(m.cached_tokens, Some(DEPTH), "{:?}: {m:?}", b.kind());
        assert_eq!(m.prompt_tokens, Some(own), "{:?}", b.kind());
        assert_eq!(m.first_token_id, cold[0].first_token_id, "{:?}", b.kind());
    }
    for m in &cold {
        assert_eq!(m.prompt_tokens, Some(DEPTH + own), "{:?}", b.kind());
    }
    let w = median(&mut warm.iter().map(|m| m.ttft_ms).collect::<Vec<_>>());
    let k = median(&mut cold.iter().map(|m| m.ttft_ms).collect::<Vec<_>>());
    eprintln!(
        "{:?}: depth {DEPTH} warm median {w:.1} ms, cold {k:.1} ms",
        b.kind()
    );
    assert!(w < k, "{:?}: warm {w} ms not under cold {k} ms", b.kind());
    (warm, cold)
}

#[test]
fn inproc_keeps_the_context_in_its_kv_cache_and_is_faster_than_cold() {
    let _serial = serial();
    let c = context();
    assert_eq!(c.ids.len(), DEPTH as usize);
    let mut b = InprocBackend::open(&llama_params()).unwrap();
    warm_vs_cold(&mut b, &c);
}

#[test]
fn hf_reuses_the_prefilled_cache_and_is_faster_than_cold() {
    let _serial = serial();
    let c = context();
    let dir = root().join("models/SmolLM2-135M-Instruct-hf");
    let mut b = HfBackend::open(&HfSettings {
        model: dir.display().to_string(),
        revision: None,
        device: "cpu".into(),
        dtype: "f32".into(),
        kernels: "auto".into(),
        threads: llama_params().threads,
        chat: false,
    })
    .unwrap();
    warm_vs_cold(&mut b, &c);
}

#[test]
fn api_rows_on_a_primed_slot_have_cache_n_equal_to_the_depth() {
    let _serial = serial();
    let c = context();
    let dir = tempfile::tempdir().unwrap();
    let mut b = ApiBackend::open(
        &llama_params(),
        &api_settings(dir.path(), Endpoint::Completion),
    )
    .unwrap();
    let (warm, cold) = warm_vs_cold(&mut b, &c);
    for m in &warm {
        assert_eq!(m.cache_n, Some(DEPTH), "{m:?}");
    }
    for m in &cold {
        assert_eq!(m.cache_n, Some(0), "{m:?}");
    }
}

fn run(out: &Path, extra: &[&str]) -> std::process::Output {
    let o = out.display().to_string();
    let mut args = vec![
        "--backend",
        "inproc",
        "--prompts",
        "data/short_prompts.txt",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--max-new-tokens",
        "2",
        "--out",
        &o,
    ];
    args.extend_from_slice(extra);
    ttft(&args)
}

#[test]
fn a_depth_that_does_not_fit_is_one_line_and_exit_2_before_timing() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let o = run(d.path(), &["--depth", "99999", "--ctx-size", "200000"]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(l.contains("--depth 99999") && l.contains("has only"), "{l}");

    let o = run(d.path(), &["--depth", "0,2044"]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(
        l.contains("after the --depth 2044 context") && l.contains("--ctx-size 2048"),
        "{l}"
    );

    let o = run(d.path(), &["--depth", "64", "--chat"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(one_error_line(&o).contains("--depth with --chat"));
    assert!(files_with(d.path(), "json").is_empty(), "nothing timed");

    // --skip-too-long: the prompts past the deepest context become failed rows.
    let o = run(d.path(), &["--depth", "0,2044", "--skip-too-long"]);
    let json = json_of(d.path());
    assert_schema_valid(&json);
    let runs = json["runs"].as_array().unwrap();
    assert!(!runs.is_empty(), "{}", stderr(&o));
    assert!(
        runs.iter().all(|r| r["ok"] == false),
        "every short prompt is too long at 2044"
    );
    assert!(runs.iter().any(|r| r["depth"] == 2044));
}

#[test]
fn the_cli_reports_cached_context_per_row_and_fits_ttft_against_depth() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let o = run(d.path(), &["--depth", "0,128,256"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let json = json_of(d.path());
    assert_schema_valid(&json);
    for r in json["runs"].as_array().unwrap() {
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["cached_tokens"], r["depth"], "{r}");
        assert!(r["point"].as_str().unwrap().contains("depth="), "{r}");
    }
    let fits = json["depth_fits"].as_array().unwrap();
    assert_eq!(fits.len(), 1, "{fits:?}");
    assert_eq!(fits[0]["medians"].as_array().unwrap().len(), 3);
    assert!(
        stdout(&o).contains("depth fit short inproc"),
        "{}",
        stdout(&o)
    );
    assert!(!files_with(d.path(), "svg").is_empty());
}
