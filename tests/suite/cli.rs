//! The real binary: the main job end to end, and one clear line for every bad input.

use crate::helpers;

use helpers::*;
use std::path::Path;

fn out_arg(dir: &Path) -> String {
    dir.display().to_string()
}

#[test]
fn missing_gguf_is_one_line_naming_the_file() {
    let d = tempfile::tempdir().unwrap();
    let o = ttft(&[
        "--backend",
        "inproc",
        "--gguf",
        "/nonexistent/model.gguf",
        "--out",
        &out_arg(d.path()),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(
        l.contains("/nonexistent/model.gguf") && l.contains("--gguf"),
        "{l}"
    );
}

#[test]
fn a_file_that_is_not_gguf_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let fake = d.path().join("notes.gguf");
    std::fs::write(&fake, "just text, not a model").unwrap();
    let o = ttft(&[
        "--backend",
        "inproc",
        "--gguf",
        fake.to_str().unwrap(),
        "--out",
        &out_arg(d.path()),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(l.contains("notes.gguf") && l.contains("not a GGUF"), "{l}");
}

#[test]
fn missing_and_empty_prompt_files_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let o = ttft(&[
        "--backend",
        "api",
        "--prompts",
        "/nonexistent/p.txt",
        "--out",
        &out_arg(d.path()),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(l.contains("/nonexistent/p.txt"), "{l}");
    // The cause is in the line once (not repeated by the error chain).
    assert_eq!(l.matches("No such file").count(), 1, "{l}");

    let empty = d.path().join("empty.txt");
    std::fs::write(&empty, "\n\n  \n").unwrap();
    let o = ttft(&[
        "--backend",
        "api",
        "--prompts",
        empty.to_str().unwrap(),
        "--out",
        &out_arg(d.path()),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(l.contains("empty.txt") && l.contains("no prompts"), "{l}");
}

#[test]
fn unreachable_api_url_is_refused_before_timing() {
    let d = tempfile::tempdir().unwrap();
    // Port 1 on loopback: nothing listens there.
    let o = ttft(&[
        "--backend",
        "api",
        "--api-url",
        "http://127.0.0.1:1",
        "--out",
        &out_arg(d.path()),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(
        l.contains("--api-url http://127.0.0.1:1") && l.contains("unreachable"),
        "{l}"
    );
}

#[test]
fn missing_server_binary_says_run_setup() {
    let d = tempfile::tempdir().unwrap();
    let o = ttft(&[
        "--backend",
        "api",
        "--server-bin",
        "/nonexistent/llama-server",
        "--out",
        &out_arg(d.path()),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(
        l.contains("/nonexistent/llama-server") && l.contains("scripts/setup.sh"),
        "{l}"
    );
}

#[test]
fn unknown_backend_is_a_usage_error() {
    let o = ttft(&["--backend", "vllm"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(one_error_line(&o).contains("--backend vllm"));
}

fn hf_dir_with(files: &[(&str, &Path)]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for (name, src) in files {
        std::fs::copy(src, d.path().join(name)).unwrap();
    }
    d
}

#[test]
fn hf_bad_checkpoints_are_one_line_and_exit_2() {
    let fixture = root().join("vendor/parity/llama");
    let tokenizer = root().join("models/SmolLM2-135M-Instruct-hf/tokenizer.json");
    let out = tempfile::tempdir().unwrap();
    // As on a fresh machine: no roofline cached, so the first run probes it (silently: it takes
    // about a second) before the checkpoint is opened and refused.
    let cache = tempfile::tempdir().unwrap();
    let run = |dir: &Path, extra: &[&str]| {
        let mut args = vec![
            "--backend",
            "hf",
            "--prompts",
            "data/short_prompts.txt",
            "--runs",
            "1",
            "--warmup",
            "0",
        ];
        let d = dir.display().to_string();
        let o = out.path().display().to_string();
        args.extend(["--hf-model", &d, "--out", &o]);
        args.extend(extra);
        ttft_env(&args, &[("TTFT_CACHE_DIR", cache.path().as_os_str())])
    };

    let no_config = hf_dir_with(&[("tokenizer.json", &tokenizer)]);
    let o = run(no_config.path(), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(one_error_line(&o).contains("config.json"));

    let no_tok = hf_dir_with(&[
        ("config.json", &fixture.join("config.json")),
        ("model.safetensors", &fixture.join("model.safetensors")),
    ]);
    let o = run(no_tok.path(), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(one_error_line(&o).contains("tokenizer.json"));

    let unknown = hf_dir_with(&[("tokenizer.json", &tokenizer)]);
    std::fs::write(
        unknown.path().join("config.json"),
        r#"{"model_type": "rwkv"}"#,
    )
    .unwrap();
    let o = run(unknown.path(), &[]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(l.contains("rwkv") && l.contains("supported"), "{l}");

    // Truncated weights fail at load: one line naming the file, rows kept, exit 2.
    let trunc = hf_dir_with(&[
        ("tokenizer.json", &tokenizer),
        ("config.json", &fixture.join("config.json")),
    ]);
    let bytes = std::fs::read(fixture.join("model.safetensors")).unwrap();
    std::fs::write(
        trunc.path().join("model.safetensors"),
        &bytes[..bytes.len() / 3],
    )
    .unwrap();
    let o = run(trunc.path(), &["--no-progress"]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(
        l.contains("model.safetensors") && l.contains("truncated"),
        "{l}"
    );

    if !tch::Cuda::is_available() {
        let o = run(
            &root().join("models/SmolLM2-135M-Instruct-hf"),
            &["--device", "cuda"],
        );
        assert_eq!(o.status.code(), Some(2));
        let l = one_error_line(&o);
        assert!(
            l.contains("--device cuda") && l.contains("no CUDA device"),
            "{l}"
        );
    }
}

#[test]
fn main_job_writes_table_csv_json_and_leaves_no_server() {
    let _serial = serial();
    let _ = (gguf(), server_bin());
    let d = tempfile::tempdir().unwrap();
    let prompts = d.path().join("p.txt");
    std::fs::write(
        &prompts,
        "The capital of France is\nName a primary colour, \"quoted\", please.\n",
    )
    .unwrap();
    let o = ttft(&[
        "--backend",
        "all",
        "--prompts",
        &format!("mini={}", prompts.display()),
        "--runs",
        "2",
        "--warmup",
        "1",
        "--max-new-tokens",
        "3",
        "--out",
        &out_arg(d.path()),
    ]);
    let out = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(0),
        "stdout: {out}\nstderr: {}",
        stderr(&o)
    );
    for want in [
        "Prompt Type",
        "Avg TTFT (s)",
        "Success Rate",
        "inproc",
        "api",
        "100% (4/4)",
    ] {
        assert!(out.contains(want), "{want} missing from table:\n{out}");
    }

    let csv = std::fs::read_to_string(only_file(d.path(), "csv")).unwrap();
    assert!(csv.starts_with("prompt_type,prompt_idx,prompt_text,runner,output_preview,ttft,"));
    let rows = csv
        .lines()
        .skip(1)
        .filter(|l| l.starts_with("mini,"))
        .count();
    assert_eq!(rows, 12, "{csv}");
    assert!(csv.contains("\"Name a primary colour, \"\"quoted\"\", please.\""));

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(only_file(d.path(), "json")).unwrap())
            .unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 12);
    assert!(runs
        .iter()
        .all(|r| r["ok"] == true && r["ttft_ms"].as_f64().unwrap() > 0.0));
    for r in runs.iter().filter(|r| r["prompt_idx"] == 0) {
        assert_eq!(r["first_token"], " Paris", "{r}");
    }
    assert!(runs
        .iter()
        .filter(|r| r["runner"] == "api")
        .all(|r| r["cache_n"] == 0));
    assert_eq!(json["token_disagreements"].as_array().unwrap().len(), 0);
    let env = &json["environment"];
    assert_eq!(
        env["llama_cpp_commit"],
        "9e3b928fd8c9d14dbf15a8768b9fdd7e5c721d66"
    );
    assert!(env["server_build"]["cmake_flags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "-DGGML_NATIVE=OFF"));
    // CPU build: no layers offloaded (the same on both llama.cpp sides), no CUDA toolkit; on a
    // machine without a GPU also no driver CUDA version and no GPU memory.
    assert_eq!(backend_of(&json, "inproc")["info"]["n_gpu_layers"], 0);
    assert_eq!(backend_of(&json, "api")["info"]["n_gpu_layers"], 0);
    assert!(env["cuda"]["llama_cpp_toolkit"].is_null());
    if env["gpus"].as_array().unwrap().is_empty() {
        assert!(env["cuda"]["driver"].is_null());
        for b in json["backends"].as_array().unwrap() {
            assert!(b["gpu_memory_mib"].is_null(), "{b}");
        }
    }
    let api = backend_of(&json, "api");
    let pid = api["info"]["server_pid"].as_u64().unwrap() as u32;
    assert!(
        !pid_alive(pid),
        "llama-server {pid} still running after ttft exited"
    );
    // No fairness warning (token or first-token mismatch, cache hit, different ggml flags);
    // ones about the machine (outliers on a busy machine, a shared host's slow memory) may.
    let warnings = json["settings"]["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().all(|w| {
            let w = w.as_str().unwrap();
            w.contains("outlier") || w.contains("first timed run") || w.starts_with("memory read")
        }),
        "{warnings:?}"
    );
    assert_token_parity(&json);
    assert_first_tokens_agree(&json);
    assert_schema_valid(&json);
}

/// A copy of the default GGUF whose `general.architecture` value is replaced by a same-length
/// name llama.cpp does not know (offsets stay valid).
fn gguf_with_unknown_architecture(dir: &Path) -> std::path::PathBuf {
    let mut bytes = std::fs::read(gguf()).unwrap();
    let key = b"general.architecture";
    let pos = bytes.windows(key.len()).position(|w| w == key).unwrap() + key.len();
    // value type (u32) + string length (u64) + the string "llama"
    let value = pos + 4 + 8;
    assert_eq!(&bytes[value..value + 5], b"llama");
    bytes[value..value + 5].copy_from_slice(b"zzzzz");
    let p = dir.join("unknown-arch.gguf");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn bad_files_and_settings_exit_2_before_timing() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("out");
    let o_arg = out.display().to_string();

    let unknown = gguf_with_unknown_architecture(d.path());
    let o = ttft(&[
        "--backend",
        "inproc",
        "--gguf",
        unknown.to_str().unwrap(),
        "--out",
        &o_arg,
    ]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(
        l.contains("unknown-arch.gguf") && l.contains("zzzzz"),
        "{l}"
    );

    let trunc = d.path().join("trunc.gguf");
    let bytes = std::fs::read(gguf()).unwrap();
    std::fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
    let o = ttft(&[
        "--backend",
        "api",
        "--gguf",
        trunc.to_str().unwrap(),
        "--out",
        &o_arg,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(one_error_line(&o).contains("truncated"));

    let latin1 = d.path().join("latin1.txt");
    std::fs::write(&latin1, b"caf\xe9 au lait\n").unwrap();
    let o = ttft(&[
        "--backend",
        "inproc",
        "--prompts",
        latin1.to_str().unwrap(),
        "--out",
        &o_arg,
    ]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(l.contains("latin1.txt") && l.contains("not UTF-8"), "{l}");

    let cfg = d.path().join("bad.toml");
    std::fs::write(&cfg, "runs = 3\nmax_new_tokns = 5\n").unwrap();
    let o = ttft(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(
        l.contains("bad.toml") && l.contains("line 2") && l.contains("max_new_tokns"),
        "{l}"
    );
    std::fs::write(&cfg, "runs = \"three\"\n").unwrap();
    let o = ttft(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(one_error_line(&o).contains("line 1"));

    // A path below a regular file cannot be created, even by root.
    let o = ttft(&[
        "--backend",
        "inproc",
        "--prompts",
        "data/short_prompts.txt",
        "--out",
        "/etc/hostname/results",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(one_error_line(&o).contains("--out /etc/hostname/results"));

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let o = ttft(&["--backend", "api", "--server-port", &port, "--out", &o_arg]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    assert!(
        l.contains(&format!("--server-port {port}")) && l.contains("in use"),
        "{l}"
    );
    assert!(
        !out.exists()
            || std::fs::read_dir(&out).unwrap().all(|e| e
                .unwrap()
                .path()
                .extension()
                .is_none_or(|x| x != "csv")),
        "nothing may be timed or written when the input is bad"
    );
}

#[test]
fn a_prompt_longer_than_the_context_is_named_or_skipped() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let o_arg = d.path().display().to_string();
    let args = [
        "--backend",
        "inproc,api",
        "--prompts",
        "data/long_prompts.txt",
        "--ctx-size",
        "400",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--max-new-tokens",
        "2",
        "--out",
        &o_arg,
    ];
    // As on a fresh machine (no roofline cached: the probe runs first), the refusal is still the
    // only line.
    let cache = tempfile::tempdir().unwrap();
    let o = ttft_env(&args, &[("TTFT_CACHE_DIR", cache.path().as_os_str())]);
    assert_eq!(o.status.code(), Some(2));
    let l = one_error_line(&o);
    // long#1 has 498 tokens (long#0, 374 tokens, fits).
    assert!(
        l.contains("long#1") && l.contains("498 tokens") && l.contains("--ctx-size 400"),
        "{l}"
    );

    let mut skip = args.to_vec();
    skip.push("--skip-too-long");
    let o = ttft(&skip);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(only_file(d.path(), "json")).unwrap())
            .unwrap();
    for r in json["runs"].as_array().unwrap() {
        if r["prompt_idx"] == 0 {
            assert_eq!(r["ok"], true, "{r}");
        } else {
            assert!(
                r["error"].as_str().unwrap().contains("> --ctx-size 400"),
                "{r}"
            );
        }
    }
}

#[test]
fn two_runs_in_the_same_second_into_one_folder_keep_both_sets_of_files() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let prompts = d.path().join("one.txt");
    std::fs::write(&prompts, "The capital of France is\n").unwrap();
    let args = [
        "--backend",
        "inproc",
        "--prompts",
        prompts.to_str().unwrap(),
        "--runs",
        "1",
        "--warmup",
        "0",
        "--max-new-tokens",
        "1",
        "--out",
        d.path().to_str().unwrap(),
    ];
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_ttft"))
            .args(args)
            .current_dir(root())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    for ext in ["json", "csv", "jsonl"] {
        let f = files_with(d.path(), ext);
        assert_eq!(f.len(), 2, "{ext}: {f:?}");
    }
    for json in files_with(d.path(), "json") {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(v["runs"].as_array().unwrap().len(), 1, "{}", json.display());
    }
    for csv in files_with(d.path(), "csv") {
        assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 2);
    }
}

#[test]
fn a_threads_grid_runs_each_point_on_both_llama_sides_with_the_same_settings() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let prompts = d.path().join("one.txt");
    std::fs::write(&prompts, "The capital of France is\n").unwrap();
    let o = ttft(&[
        "--backend",
        "inproc,api",
        "--threads",
        "1,2",
        "--prompts",
        prompts.to_str().unwrap(),
        "--runs",
        "3",
        "--warmup",
        "1",
        "--max-new-tokens",
        "2",
        "--out",
        d.path().to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), stderr(&o));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(only_file(d.path(), "json")).unwrap())
            .unwrap();
    assert_eq!(json["settings"]["points"].as_array().unwrap().len(), 2);
    let backends = json["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 4, "two points × two backends");
    for threads in ["1", "2"] {
        let point = format!("threads={threads}");
        let at: Vec<&serde_json::Value> = backends.iter().filter(|b| b["point"] == point).collect();
        assert_eq!(at.len(), 2, "{point}");
        let inproc = at.iter().find(|b| b["name"] == "inproc").unwrap();
        assert_eq!(inproc["info"]["threads"].to_string(), threads);
        let api = at.iter().find(|b| b["name"] == "api").unwrap();
        let args: Vec<&str> = api["info"]["server_args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        for flag in ["--threads", "--threads-batch"] {
            let i = args.iter().position(|a| *a == flag).unwrap();
            assert_eq!(args[i + 1], threads, "{flag} in {args:?}");
        }
        for (flag, key) in [
            ("--ctx-size", "n_ctx"),
            ("--batch-size", "n_batch"),
            ("--ubatch-size", "n_ubatch"),
        ] {
            let i = args.iter().position(|a| *a == flag).unwrap();
            assert_eq!(args[i + 1], inproc["info"][key].to_string(), "{flag}");
        }
        let rows = json["runs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["point"] == point && r["ok"] == true)
            .count();
        assert_eq!(rows, 6, "{point}: 3 runs on each backend");
    }
    let out = stdout(&o);
    assert!(
        out.contains("inproc [threads=1]") && out.contains("api [threads=2]"),
        "{out}"
    );
    assert_schema_valid(&json);
}

#[test]
fn an_hf_panic_inside_libtorch_is_a_failed_row_beside_the_other_backends() {
    let _serial = serial();
    let _ = gguf();
    let model = tiny_gpt2_checkpoint();
    let d = tempfile::tempdir().unwrap();
    let prompts = d.path().join("p.txt");
    // 100 byte tokens on the tiny GPT-2 (n_positions 64), then a prompt that fits.
    std::fs::write(&prompts, format!("{}\nhello\n", "a".repeat(100))).unwrap();
    let out = d.path().join("out");
    let (p, m, o) = (
        format!("edge={}", prompts.display()),
        model.path().display().to_string(),
        out.display().to_string(),
    );
    let args = [
        "--backend",
        "hf,inproc",
        "--hf-model",
        &m,
        "--prompts",
        &p,
        "--runs",
        "1",
        "--warmup",
        "0",
        "--max-new-tokens",
        "2",
        "--no-progress",
        "--out",
        &o,
    ];
    // Checked before timing with the hf tokenizer's count.
    let r = ttft(&args);
    assert_eq!(r.status.code(), Some(2), "{}", stderr(&r));
    let l = one_error_line(&r);
    assert!(
        l.contains("edge#0")
            && l.contains("100 tokens (hf tokenizer)")
            && l.contains("n_positions 64")
            && l.contains("--ignore-position-limit"),
        "{l}"
    );

    // --skip-too-long: edge#0 is a failed row on every backend (never timed), edge#1 runs.
    let skip_out = d.path().join("skip");
    let so = skip_out.display().to_string();
    let mut skip = args[..args.len() - 1].to_vec();
    skip.extend([so.as_str(), "--skip-too-long"]);
    let r = ttft(&skip);
    assert_eq!(r.status.code(), Some(1), "{}", stderr(&r));
    for r in json_of(&skip_out)["runs"].as_array().unwrap() {
        let fits = r["prompt_idx"] == 1;
        assert_eq!(r["ok"], fits, "{r}");
        if !fits {
            assert!(
                r["error"].as_str().unwrap().contains("n_positions 64"),
                "{r}"
            );
        }
    }

    // Run anyway: libtorch fails on hf edge#0; that is a row, and everything else is measured.
    let mut anyway = args.to_vec();
    anyway.push("--ignore-position-limit");
    let r = ttft(&anyway);
    let err = stderr(&r);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert_eq!(
        err.matches("caught a panic in hf measure").count(),
        1,
        "{err}"
    );
    assert!(
        !err.contains("stack backtrace") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
    let json = json_of(&out);
    let runs = json["runs"].as_array().unwrap();
    let row = |runner: &str, idx: u64| {
        runs.iter()
            .find(|r| r["runner"] == runner && r["prompt_idx"] == idx)
            .unwrap_or_else(|| panic!("no {runner} edge#{idx} row in {json}"))
    };
    let failed = row("hf", 0);
    assert_eq!(failed["ok"], false);
    let e = failed["error"].as_str().unwrap();
    assert!(e.starts_with("libtorch error: "), "{e}");
    assert_eq!(row("hf", 1)["ok"], true, "hf keeps running after the panic");
    for idx in [0, 1] {
        assert_eq!(row("inproc", idx)["ok"], true, "{}", row("inproc", idx));
    }
    // Prefill FLOPs come from the GGUF header's shape: SmolLM2-135M, embeddings tied.
    let shape = &backend_of(&json, "inproc")["info"]["model_shape"];
    assert_eq!(shape["n_layers"], 30, "{shape}");
    assert_eq!(
        (shape["d_model"].clone(), shape["d_attn"].clone()),
        (576.into(), 576.into())
    );
    assert_eq!(
        (shape["vocab"].clone(), shape["tied_lm_head"].clone()),
        (49152.into(), true.into())
    );
}
