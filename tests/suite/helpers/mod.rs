//! Shared by the integration tests: where the real model and the real llama-server are, and how to
//! run the real binary. Nothing here fakes a component, except `fault_server`, which exists only
//! to inject faults no real server produces on demand. A missing piece fails with the fix.
#![allow(dead_code)]

pub mod fault_server;
pub mod instant_server;
pub mod openai_server;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The integration tests are one binary (tests/suite) whose tests run on parallel threads;
/// those that run a real model take this lock, so that no two of them compete for the cores and
/// none measures another's work.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn require(p: PathBuf) -> PathBuf {
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh first (the README's test command does)",
        p.display()
    );
    p
}

/// The bundled default GGUF (SmolLM2-135M-Instruct Q4_1), installed by setup.
pub fn gguf() -> PathBuf {
    require(root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// The vendored llama-server, built by setup from the same llama.cpp commit.
pub fn server_bin() -> PathBuf {
    require(root().join("vendor/bin/llama-server"))
}

/// Prompts of a data file.
pub fn data_prompts(name: &str) -> Vec<String> {
    ttft::bench::prompts::load_prompt_set(name, &root().join(format!("data/{name}_prompts.txt")))
        .unwrap()
        .prompts
}

/// llama.cpp parameters for tests: the default model, a context large enough for the long
/// prompts, both cores.
pub fn llama_params() -> ttft::backend::LlamaParams {
    ttft::backend::LlamaParams {
        gguf: gguf(),
        ctx_size: 2048,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()) as u32,
        batch: 2048,
        ubatch: 512,
        n_gpu_layers: 0,
        flash_attn: ttft::backend::FlashAttn::Auto,
        cache_type_k: "f16".into(),
        cache_type_v: "f16".into(),
    }
}

/// api settings that spawn the vendored server, logging into `dir`.
pub fn api_settings(
    dir: &Path,
    endpoint: ttft::backend::api::Endpoint,
) -> ttft::backend::api::ApiSettings {
    use std::time::Duration;
    ttft::backend::api::ApiSettings {
        url: None,
        endpoint,
        flavor: None,
        api_model: None,
        model_alias: "smollm2-test".into(),
        server_bin: server_bin(),
        server_log: dir.join("server.log"),
        allow_commit_mismatch: false,
        connect_timeout: Duration::from_secs(5),
        fresh_connection: false,
        ca_cert: None,
        first_token_timeout: Duration::from_secs(120),
        total_timeout: Duration::from_secs(300),
        prepare_timeout: Duration::from_secs(30),
        server_port: None,
        server_slots: 1,
        rpc: Vec::new(),
        spawn_rpc: 0,
        api_key: None,
        verbose: 0,
        ignore_eos: false,
    }
}

/// Run the real `ttft` binary in the repository root with `args`.
pub fn ttft(args: &[&str]) -> Output {
    ttft_env(args, &[])
}

/// [`ttft`] with these environment variables set.
pub fn ttft_env(args: &[&str], envs: &[(&str, &std::ffi::OsStr)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ttft"))
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root())
        .output()
        .expect("run ttft")
}

/// The one line a refused run prints (`ttft: error: …`), asserting there is exactly one. A
/// "waiting for" notice of a step before it (a probe or a server start that took longer than two
/// seconds, which depends on the machine's load) is progress, not part of the error.
pub fn one_error_line(o: &Output) -> String {
    let err = stderr(o);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("ttft: waiting for "))
        .collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {err}");
    assert!(lines[0].starts_with("ttft: error: "), "{err}");
    lines[0].to_string()
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// stdout as text.
pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Whether a process id is alive (a zombie counts as gone).
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .split(") ")
            .nth(1)
            .is_some_and(|rest| rest.starts_with('Z')),
        Err(_) => false,
    }
}

/// The files in `dir` with extension `ext`, sorted.
pub fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

/// The single file in `dir` with extension `ext`.
pub fn only_file(dir: &Path, ext: &str) -> PathBuf {
    let files = files_with(dir, ext);
    assert_eq!(
        files.len(),
        1,
        "expected one .{ext} in {}: {files:?}",
        dir.display()
    );
    files[0].clone()
}

/// The committed JSON schema accepts what ttft wrote.
pub fn assert_schema_valid(doc: &serde_json::Value) {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("schemas/ttft-report.schema.json")).unwrap(),
    )
    .unwrap();
    let v = jsonschema::validator_for(&schema).expect("schema compiles");
    let errors: Vec<String> = v
        .iter_errors(doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "report does not match the schema:\n{}",
        errors.join("\n")
    );
}

/// The JSON report ttft wrote into `dir`.
pub fn json_of(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(only_file(dir, "json")).unwrap()).unwrap()
}

/// The entry of backend `name` in a report's `backends`.
pub fn backend_of<'a>(json: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    json["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name} in the report"))
}

/// Every prompt of a report tokenized to the same ids in every backend (the parity gate).
pub fn assert_token_parity(json: &serde_json::Value) {
    let prompts = json["parity"]["prompts"].as_array().unwrap();
    assert!(
        prompts.iter().all(|p| p["equal"] == true),
        "{}",
        json["parity"]
    );
}

/// Every backend of a report produced the same greedy first token for every prompt.
pub fn assert_first_tokens_agree(json: &serde_json::Value) {
    let agreement = json["first_token_agreement"].as_array().unwrap();
    assert!(
        agreement.iter().all(|a| a["agree"] == true),
        "{}",
        json["first_token_agreement"]
    );
}

/// A GPT-2 checkpoint from the parity fixtures (2 layers, `n_positions` 64, a 256-entry
/// vocabulary) with a byte-level tokenizer.json made for it: every byte of a prompt is one
/// token, so a prompt of more than 64 bytes runs past its position table.
#[cfg(feature = "torch")]
pub fn tiny_gpt2_checkpoint() -> tempfile::TempDir {
    let fixture = require(root().join("vendor/parity/gpt2"));
    let d = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors", "generation_config.json"] {
        std::fs::copy(fixture.join(f), d.path().join(f)).unwrap();
    }
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    alphabet.sort_unstable();
    let vocab: serde_json::Map<String, serde_json::Value> = alphabet
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), serde_json::json!(i)))
        .collect();
    let byte_level = serde_json::json!({
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
    });
    let tok = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
                  "continuing_subword_prefix": null, "end_of_word_suffix": null,
                  "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    });
    std::fs::write(d.path().join("tokenizer.json"), tok.to_string()).unwrap();
    d
}
