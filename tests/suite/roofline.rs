//! The roofline: `ttft roofline` measures and caches this machine's bandwidth and GEMM peaks, and
//! a benchmark run reports every local backend's prefill as a fraction of the bound they imply.

use crate::helpers;

use helpers::{root, serial};
use std::process::{Command, Output};

fn ttft_with_cache(cache: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ttft"))
        .args(args)
        .env("TTFT_CACHE_DIR", cache)
        .current_dir(root())
        .output()
        .expect("run ttft")
}

/// A benchmark run of `backends` on the short prompts, `runs` each, into `out`.
fn short_run(cache: &std::path::Path, backends: &str, runs: &str, out: &std::path::Path) -> Output {
    let out = out.to_str().unwrap();
    let args = [
        "--backend",
        backends,
        "--prompts",
        "short=data/short_prompts.txt",
    ];
    let more = ["--runs", runs, "--no-progress", "--out", out];
    ttft_with_cache(cache, &[&args[..], &more[..]].concat())
}

fn json_of(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("roofline --json prints JSON")
}

#[test]
fn roofline_measures_every_kernel_and_a_steady_probe_is_cached() {
    let _s = serial();
    let cache = tempfile::tempdir().unwrap();
    let first = json_of(&ttft_with_cache(
        cache.path(),
        &["roofline", "--threads", "2", "--json", "--refresh"],
    ));
    assert!(first["read_gbs"].as_f64().unwrap() > 0.5, "{first}");
    let by_kernel = first["f32_by_kernel"].as_object().unwrap();
    assert!(
        by_kernel.contains_key("mkl") && by_kernel.contains_key("onednn"),
        "{first}"
    );
    let best = by_kernel
        .values()
        .filter_map(|v| v.as_f64())
        .fold(0.0, f64::max);
    assert_eq!(first["f32_gflops"].as_f64().unwrap(), best);
    assert_eq!(first["threads"], 2);
    let file = cache.path().join("roofline.json");
    if first["steady"].as_bool().unwrap() {
        // The second call reads the cache: the same measurement, not a new one.
        let again = json_of(&ttft_with_cache(
            cache.path(),
            &["roofline", "--threads", "2", "--json"],
        ));
        assert_eq!(again, first);
        assert!(file.exists());
        // An entry made by an older ttft (no probe version, a kernel it did not have yet) is
        // measured again, not reused.
        let mut old: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let name = by_kernel.keys().next_back().unwrap().clone();
        let entry = old[0].as_object_mut().unwrap();
        entry.remove("version");
        entry["f32_by_kernel"]
            .as_object_mut()
            .unwrap()
            .remove(&name);
        std::fs::write(&file, old.to_string()).unwrap();
        let fresh = json_of(&ttft_with_cache(
            cache.path(),
            &["roofline", "--threads", "2", "--json"],
        ));
        assert!(fresh["f32_by_kernel"].get(&name).is_some(), "{fresh}");
        assert_eq!(fresh["version"], first["version"], "{fresh}");
        // A refresh raises the figures it beats and keeps the others: the cache is a ceiling.
        let mut entry = fresh.clone();
        entry["read_gbs"] = 1e6.into();
        entry["f32_by_kernel"]["mkl"] = 0.001.into();
        std::fs::write(&file, serde_json::json!([entry]).to_string()).unwrap();
        let raised = json_of(&ttft_with_cache(
            cache.path(),
            &["roofline", "--threads", "2", "--json", "--refresh"],
        ));
        assert_eq!(raised["read_gbs"].as_f64(), Some(1e6), "{raised}");
        assert!(
            raised["f32_by_kernel"]["mkl"].as_f64().unwrap() > 0.5,
            "{raised}"
        );
    } else {
        assert!(!file.exists(), "an unsteady probe must not be cached");
    }
    // A different thread count is a different entry.
    let one = json_of(&ttft_with_cache(
        cache.path(),
        &["roofline", "--threads", "1", "--json"],
    ));
    assert_eq!(one["threads"], 1);
}

#[test]
fn a_run_reports_the_roofline_and_each_local_backends_fraction() {
    let _s = serial();
    let cache = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = short_run(cache.path(), "hf,inproc,api", "2", out.path());
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("roofline (cpu: "), "{stdout}");
    assert!(stdout.contains("Roofline"), "{stdout}");
    let json = std::fs::read_dir(out.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(json).unwrap()).unwrap();
    let roof = &doc["environment"]["roofline"];
    assert!(roof["read_gbs"].as_f64().unwrap() > 0.5, "{roof}");
    // The run's own read after its timed runs is reported beside the ceiling, never cached.
    assert!(roof["read_at_end_gbs"].as_f64().unwrap() > 0.5, "{roof}");
    assert!(stdout.contains("(this run's end: "), "{stdout}");
    for b in doc["backends"].as_array().unwrap() {
        assert!(b["facts"]["weight_bytes"].as_f64().unwrap() > 1e7, "{b}");
    }
    for runner in ["hf", "inproc", "api"] {
        let s = doc["summary"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["runner"] == runner && s["prompt_idx"].is_null())
            .unwrap_or_else(|| panic!("no {runner} set row"));
        let f = s["roofline_fraction"].as_f64().unwrap_or(-1.0);
        // The bound is a least time: a fraction above 1 would mean the bound is wrong.
        assert!(f > 0.0 && f <= 1.2, "{runner}: roofline fraction {f}");
    }
    // A cached read rate far below this machine's (a probe from a slow spell) is raised by the
    // read measured after the timed runs, in the report and in the cache.
    let file = cache.path().join("roofline.json");
    if let Ok(text) = std::fs::read_to_string(&file) {
        let mut cached: serde_json::Value = serde_json::from_str(&text).unwrap();
        cached[0]["read_gbs"] = 0.01.into();
        std::fs::write(&file, cached.to_string()).unwrap();
        let again = tempfile::tempdir().unwrap();
        let o = short_run(cache.path(), "hf", "1", again.path());
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{stdout}");
        assert!(!stdout.contains("memory read 0.0 GB/s"), "{stdout}");
        let raised: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert!(raised[0]["read_gbs"].as_f64().unwrap() > 0.5, "{raised}");
        assert!(raised[0].get("read_at_end_gbs").is_none(), "{raised}");
    }
}
