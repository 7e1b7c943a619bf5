//! Numbers you can defend: exact-length sweeps with fits and plots, the parity gate, the JSON schema
//! and `ttft compare`.

use crate::helpers;

use helpers::*;

#[test]
fn compare_flags_a_regression_between_two_committed_reports() {
    let o = ttft(&[
        "compare",
        "tests/data/compare_old.json",
        "tests/data/compare_new.json",
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let line = |set: &str, runner: &str| {
        out.lines()
            .find(|l| l.starts_with(set) && l.split_whitespace().nth(1) == Some(runner))
            .unwrap_or_else(|| panic!("no {set} {runner} line in {out}"))
            .to_string()
    };
    assert!(line("short", "inproc").ends_with("slower"), "{out}");
    assert!(
        line("short", "api").ends_with("no significant change"),
        "{out}"
    );
    assert!(line("long", "inproc").ends_with("faster"), "{out}");
    // The other way round the long prompts regressed; a report against itself has no change.
    let o = ttft(&[
        "compare",
        "tests/data/compare_new.json",
        "tests/data/compare_old.json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(stdout(&o)
        .lines()
        .any(|l| l.starts_with("long") && l.ends_with("slower")));
    let o = ttft(&[
        "compare",
        "tests/data/compare_old.json",
        "tests/data/compare_old.json",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert!(stdout(&o)
        .lines()
        .skip(1)
        .all(|l| l.ends_with("no significant change")));
    // One api run of the newer report failed: a regression, though its median did not move.
    let o = ttft(&[
        "compare",
        "tests/data/compare_old.json",
        "tests/data/compare_failed.json",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        line_of(&stdout(&o), "short#0 api").ends_with("fewer successes"),
        "{}",
        stdout(&o)
    );
}

fn line_of(out: &str, start: &str) -> String {
    out.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no {start} line in {out}"))
        .to_string()
}

#[test]
fn exact_length_prompts_with_the_real_tokenizers() {
    let _serial = serial();
    use ttft::backend::BackendKind;
    use ttft::bench::parity::Tokenizer;
    let vocab = std::rc::Rc::new(ttft::backend::inproc::VocabOnly::open(&gguf()).unwrap());
    let tok = tokenizers::Tokenizer::from_file(
        root().join("models/SmolLM2-135M-Instruct-hf/tokenizer.json"),
    )
    .unwrap();
    let v = vocab.clone();
    let mut toks = vec![
        Tokenizer::new(BackendKind::Inproc, "gguf", None, move |t| {
            v.token_ids(t).map_err(|e| e.to_string())
        }),
        Tokenizer::new(BackendKind::Hf, "hf", None, move |t| {
            tok.encode(t, true)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| e.to_string())
        }),
    ];
    for n in [16u32, 64, 256, 1024] {
        let a = ttft::bench::synthetic::exact_prompt(n, 1, &mut toks).unwrap();
        let b = ttft::bench::synthetic::exact_prompt(n, 2, &mut toks).unwrap();
        assert_ne!(a, b);
        for t in toks.iter_mut() {
            assert_eq!(
                t.encode(&a).unwrap().len(),
                n as usize,
                "{} for n={n}",
                t.source
            );
            assert_eq!(
                t.encode(&b).unwrap().len(),
                n as usize,
                "{} for n={n}",
                t.source
            );
        }
    }
}

#[test]
fn sweep_fits_every_backend_and_draws_the_plot() {
    let _serial = serial();
    let d = tempfile::tempdir().unwrap();
    let o = ttft(&[
        "--prompt-tokens",
        "16,64,256",
        "--backend",
        "all",
        "--runs",
        "2",
        "--warmup",
        "1",
        "--max-new-tokens",
        "3",
        "--out",
        d.path().to_str().unwrap(),
    ]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    for b in ["hf", "inproc", "api"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("fit {b}:")))
            .unwrap_or_else(|| panic!("no fit for {b}: {out}"));
        let r2: f64 = line
            .split("R² ")
            .nth(1)
            .unwrap()
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(r2 >= 0.95, "{line}");
    }
    let json = json_of(d.path());
    assert_schema_valid(&json);
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3 * 2 * 3);
    for r in runs {
        let n: u64 = r["prompt_type"].as_str().unwrap()[1..].parse().unwrap();
        assert_eq!(r["prompt_tokens"].as_u64(), Some(n), "{r}");
    }
    // A different text for every run of a length, the same texts for every backend.
    let texts = |b: &str| -> Vec<String> {
        runs.iter()
            .filter(|r| r["runner"] == b)
            .map(|r| r["prompt_text"].as_str().unwrap().to_string())
            .collect()
    };
    let mut uniq = texts("inproc");
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), 6);
    assert_eq!(texts("inproc"), texts("hf"));
    assert_eq!(texts("inproc"), texts("api"));
    assert_token_parity(&json);
    assert_first_tokens_agree(&json);
    let svg = std::fs::read_to_string(
        std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with("-vs-tokens.svg"))
            .unwrap(),
    )
    .unwrap();
    for label in [
        ">hf (R²",
        ">inproc (R²",
        ">api (R²",
        "<polyline",
        "<polygon",
    ] {
        assert!(svg.contains(label), "{label} missing in the plot");
    }
    let png = std::fs::read(
        std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.to_string_lossy().ends_with("-vs-tokens.png"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn a_different_tokenizer_is_flagged_and_strict_parity_fails() {
    let _serial = serial();
    // The exported checkpoint, but its tokenizer now prepends <|endoftext|> (id 0) as a BOS.
    let src = root().join("models/SmolLM2-135M-Instruct-hf");
    let d = tempfile::tempdir().unwrap();
    let hf = d.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer_config.json",
    ] {
        std::os::unix::fs::symlink(src.join(f), hf.join(f)).unwrap();
    }
    let mut tok: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap())
            .unwrap();
    tok["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}}
    });
    std::fs::write(hf.join("tokenizer.json"), tok.to_string()).unwrap();
    let out = d.path().join("out");
    let base = [
        "--backend",
        "hf,inproc",
        "--prompts",
        "data/short_prompts.txt",
        "--runs",
        "1",
        "--warmup",
        "0",
        "--max-new-tokens",
        "1",
    ];
    let mut args: Vec<&str> = base.to_vec();
    let (h, o_) = (hf.display().to_string(), out.display().to_string());
    args.extend(["--hf-model", &h, "--out", &o_]);
    let o = ttft(&args);
    let (out_text, err) = (stdout(&o), stderr(&o));
    assert!(
        out_text.contains("parity: 5 of 5 prompts differ")
            && out_text.contains("first difference at token 0"),
        "{out_text}"
    );
    assert!(err.contains("token ids differ between backends"), "{err}");
    let json = json_of(&out);
    assert!(json["parity"]["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["equal"] == false));
    // Every hf row used one token more than inproc: flagged through the prompt token counts too.
    assert!(!json["token_disagreements"].as_array().unwrap().is_empty());

    args.push("--strict-parity");
    let o = ttft(&args);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o)
            .lines()
            .any(|l| l.starts_with("ttft: error: --strict-parity")),
        "{}",
        stderr(&o)
    );
}
