//! Numerical parity of our libtorch architectures against transformers, the oracle.
//!
//! `scripts/make_parity_fixtures.py` (run by setup in the venv) builds a tiny random checkpoint per
//! architecture with configs that exercise each quirk, and stores transformers' f32 logits for fixed
//! ids at every position plus an 8-token greedy continuation (and the logits of each greedy step,
//! decoded with the KV cache). Our models must match: max |Δlogit| ≤ 1e-4, identical tokens.

use crate::helpers;

use helpers::root;
use tch::{Device, Kind, Tensor};
use ttft::models;
use ttft::models::onednn::{self, Kernels};

const TOL: f64 = 1e-4;

fn fixtures() -> Vec<String> {
    let manifest = root().join("vendor/parity/manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: run scripts/setup.sh --tests first",
            manifest.display()
        )
    });
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["fixtures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

fn reference(dir: &std::path::Path) -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(dir.join("reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn check(name: &str, kernels: Kernels) -> Result<(), String> {
    let _g = tch::no_grad_guard();
    let dir = root().join("vendor/parity").join(name);
    let mut model =
        models::load(&dir, Device::Cpu, Kind::Float).map_err(|e| format!("{name}: load: {e}"))?;
    model
        .decoder
        .use_kernels(kernels)
        .map_err(|e| format!("{name}: {}: {e}", kernels.name()))?;
    // mkl is libtorch's own everything; the other paths use ttft's layer kernels where the CPU
    // has AVX-512F (every fixture has an RMSNorm or a head dim of 16 or 32, which they take).
    let layer = model.decoder.layer_kernels();
    let ttft_layers = kernels != Kernels::Mkl && ttft::models::onednn::panel_supported();
    if layer != if ttft_layers { "ttft" } else { "libtorch" } {
        return Err(format!(
            "{name} ({}): layer kernels {layer}",
            kernels.name()
        ));
    }
    let name = &format!("{name} ({})", kernels.name());
    let r = reference(&dir);
    let ids = &r["input_ids"];
    let want = &r["logits"];

    let mut cache = model.decoder.new_cache();
    let got = model.decoder.forward(ids, &mut cache, true);
    if got.size() != want.size() {
        return Err(format!(
            "{name}: logits shape {:?} vs {:?}",
            got.size(),
            want.size()
        ));
    }
    let d = max_abs_diff(&got, want);
    if d > TOL {
        // Report the first position that diverges, which usually names the broken quirk.
        let per_pos: Vec<String> = (0..got.size()[0])
            .map(|i| format!("{:.1e}", max_abs_diff(&got.get(i), &want.get(i))))
            .collect();
        return Err(format!(
            "{name}: prefill max |Δlogit| {d:.3e} > {TOL:e}; per position [{}]",
            per_pos.join(", ")
        ));
    }

    // Greedy continuation with the KV cache, one token per step, from a fresh cache.
    let greedy: Vec<i64> = Vec::<i64>::try_from(&r["greedy"]).unwrap();
    let step_logits = &r["greedy_logits"];
    let mut cache = model.decoder.new_cache();
    let mut logits = model.decoder.forward(ids, &mut cache, false);
    let mut tokens = Vec::new();
    for (step, &want_tok) in greedy.iter().enumerate() {
        let row = logits.get(0);
        let dl = max_abs_diff(&row, &step_logits.get(step as i64));
        if dl > TOL {
            return Err(format!(
                "{name}: greedy step {step} max |Δlogit| {dl:.3e} > {TOL:e}"
            ));
        }
        let tok = row.argmax(-1, false).int64_value(&[]);
        tokens.push(tok);
        if tok != want_tok {
            return Err(format!(
                "{name}: greedy tokens {tokens:?} diverge from transformers {greedy:?}"
            ));
        }
        logits = model
            .decoder
            .forward(&Tensor::from_slice(&[tok]), &mut cache, false);
    }
    Ok(())
}

#[test]
fn every_architecture_matches_transformers_in_f32() {
    let names = fixtures();
    assert!(names.len() >= 9, "{names:?}");
    let failures: Vec<String> = names
        .iter()
        .filter_map(|n| check(n, Kernels::Mkl).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Logits of a prefill at every position, then of three greedy steps through the KV cache.
fn prefill_and_steps(d: &models::layers::Decoder, ids: &Tensor) -> Vec<Tensor> {
    let mut cache = d.new_cache();
    let mut out = vec![d.forward(ids, &mut cache, true)];
    for _ in 0..3 {
        let tok = out
            .last()
            .unwrap()
            .get(-1)
            .argmax(-1, false)
            .int64_value(&[]);
        out.push(d.forward(&Tensor::from_slice(&[tok]), &mut cache, false));
    }
    out
}

/// A layer run as one call into ttft's kernels (`models::fused_layer`) gives exactly the logits
/// of the same layer run op by op, prefill and decode steps, in every fixture that takes it
/// (and the Llama-shaped ones must take it), f32 and, where the CPU has AVX512_BF16, bf16; the
/// others run op by op.
#[test]
fn whole_layer_calls_match_the_op_by_op_layers_bit_for_bit() {
    if !onednn::panel_supported() {
        eprintln!("this CPU has no AVX-512F: no layer runs whole here");
        return;
    }
    let _g = tch::no_grad_guard();
    let mut whole = Vec::new();
    let kinds = [Kind::Float, Kind::BFloat16];
    let kinds = kinds.iter().filter(|&&k| onednn::panel_supported_for(k));
    for (kind, name) in kinds.flat_map(|&k| fixtures().into_iter().map(move |n| (k, n))) {
        let dir = root().join("vendor/parity").join(&name);
        let name = format!("{name} ({kind:?})");
        let mut model = models::load(&dir, Device::Cpu, kind).unwrap();
        model.decoder.use_kernels(Kernels::Avx512).unwrap();
        assert!(model.decoder.whole_layers, "{name}");
        let blocks = &model.decoder.blocks;
        if blocks.iter().any(models::fused_layer::runs_whole) {
            assert_eq!(model.decoder.whole_layer_count(), blocks.len(), "{name}");
            whole.push(name.clone());
        }
        let ids = &reference(&dir)["input_ids"];
        let a = prefill_and_steps(&model.decoder, ids);
        model.decoder.whole_layers = false;
        let b = prefill_and_steps(&model.decoder, ids);
        for (step, (x, y)) in a.iter().zip(&b).enumerate() {
            assert_eq!(max_abs_diff(x, y), 0.0, "{name}: step {step}");
        }
    }
    for arch in ["llama (Float)", "qwen2 (Float)"] {
        assert!(whole.iter().any(|n| n.contains(arch)), "{arch}: {whole:?}");
    }
    if onednn::panel_supported_for(Kind::BFloat16) {
        assert!(
            whole.iter().any(|n| n.contains("llama (BFloat16)")),
            "{whole:?}"
        );
    }
}

/// The same bound with ttft's AVX-512 kernel (`--hf-kernels avx512`, the f32 default on CPUs
/// that have it). On a CPU without AVX-512F there is nothing to check: `auto` never picks it.
#[test]
fn every_architecture_matches_transformers_in_f32_with_avx512() {
    if !onednn::panel_supported() {
        eprintln!("this CPU has no AVX-512F: the avx512 kernel is not used here");
        return;
    }
    let failures: Vec<String> = fixtures()
        .iter()
        .filter_map(|n| check(n, Kernels::Avx512).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The same bound with oneDNN's packed linears (`--hf-kernels onednn`).
#[test]
fn every_architecture_matches_transformers_in_f32_with_onednn() {
    assert!(onednn::available(), "this libtorch has no oneDNN");
    let failures: Vec<String> = fixtures()
        .iter()
        .filter_map(|n| check(n, Kernels::Onednn).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Our bf16 against transformers' bf16 on the same checkpoint. The unit is the oracle's own
/// bf16 rounding error `e = max |logits_bf16 - logits_f32|` of transformers (stored with the
/// fixture). Two bf16 implementations that are each within `e` of exact arithmetic but round at
/// different points (a fused projection, oneDNN's accumulation order) can differ by up to `2e`
/// (triangle inequality), so both bounds are `2e`: against transformers' bf16 logits, and against
/// the f32 oracle (ours must be about as accurate as transformers' bf16, not just near it; measured
/// worst case 1.5e, gpt_neox with the MKL path). Greedy tokens must agree at every step whose
/// oracle top-2 margin is wider than `2e` (a closer step is a tie within bf16's resolution); the
/// first disagreement ends the comparison only if it is such a tie.
fn check_bf16(name: &str, kernels: Kernels) -> Result<(), String> {
    let _g = tch::no_grad_guard();
    let dir = root().join("vendor/parity").join(name);
    let mut model = models::load(&dir, Device::Cpu, Kind::BFloat16)
        .map_err(|e| format!("{name}: load: {e}"))?;
    model
        .decoder
        .use_kernels(kernels)
        .map_err(|e| format!("{name}: {e}"))?;
    let name = &format!("{name} (bf16, {})", kernels.name());
    let r: std::collections::HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("reference_bf16.safetensors"))
            .map_err(|e| format!("{name}: {e}: rerun scripts/setup.sh --tests"))?
            .into_iter()
            .collect();
    let ids = &reference(&dir)["input_ids"];
    let e = r["bf16_vs_f32"].double_value(&[0]);
    let tol = 2.0 * e;
    let mut cache = model.decoder.new_cache();
    let got = model
        .decoder
        .forward(ids, &mut cache, true)
        .to_kind(Kind::Float);
    let d = max_abs_diff(&got, &r["logits"]);
    if d > tol {
        return Err(format!(
            "{name}: prefill max |Δlogit| vs transformers bf16 {d:.3e} > 2 × {e:.3e} (its own bf16 error)"
        ));
    }
    let d32 = max_abs_diff(&got, &reference(&dir)["logits"]);
    if d32 > tol {
        return Err(format!(
            "{name}: prefill max |Δlogit| vs the f32 oracle {d32:.3e} > 2 × {e:.3e} (transformers bf16's)"
        ));
    }
    let greedy: Vec<i64> = Vec::<i64>::try_from(&r["greedy"]).unwrap();
    let margins: Vec<f64> =
        Vec::<f64>::try_from(&r["greedy_margins"].to_kind(Kind::Double)).unwrap();
    let mut cache = model.decoder.new_cache();
    let mut logits = model.decoder.forward(ids, &mut cache, false);
    for (step, &want) in greedy.iter().enumerate() {
        let tok = logits.get(0).argmax(-1, false).int64_value(&[]);
        if tok != want {
            if margins[step] <= tol {
                return Ok(());
            }
            return Err(format!(
                "{name}: greedy step {step}: {tok} vs transformers' {want} (margin {:.3e} > 2 × {e:.3e})",
                margins[step]
            ));
        }
        logits = model
            .decoder
            .forward(&Tensor::from_slice(&[tok]), &mut cache, false);
    }
    Ok(())
}

#[test]
fn every_architecture_matches_transformers_in_bf16() {
    let failures: Vec<String> = fixtures()
        .iter()
        .flat_map(|n| {
            let mut k = vec![Kernels::Mkl];
            // oneDNN where this CPU has bf16 kernels for it (AVX512BW/VL/DQ; elsewhere the flag
            // is refused, see onednn.rs), ttft's bf16 panels where it has AVX512_BF16 (what
            // `auto` takes there).
            for (flag, kernels) in [("onednn", Kernels::Onednn), ("avx512", Kernels::Avx512)] {
                if Kernels::resolve(flag, Device::Cpu, Kind::BFloat16).is_ok() {
                    k.push(kernels);
                }
            }
            k.into_iter().map(|k| check_bf16(n, k)).collect::<Vec<_>>()
        })
        .filter_map(Result::err)
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn unknown_architecture_is_named_with_the_supported_list() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("config.json"), r#"{"model_type": "mamba"}"#).unwrap();
    let e = models::load(d.path(), Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("mamba") && e.contains("llama") && e.contains("gpt_neox"),
        "{e}"
    );
}

/// Copy a fixture's files into a temp dir so a test can damage them.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    let src = root().join("vendor/parity").join(name);
    let d = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), d.path().join(f)).unwrap();
    }
    d
}

#[test]
fn missing_config_truncated_file_missing_and_misshapen_tensors_are_named() {
    let d = tempfile::tempdir().unwrap();
    let e = models::load(d.path(), Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("config.json"), "{e}");

    let d = copy_fixture("llama");
    let st = d.path().join("model.safetensors");
    let bytes = std::fs::read(&st).unwrap();
    std::fs::write(&st, &bytes[..bytes.len() / 2]).unwrap();
    let e = models::load(d.path(), Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );

    // Drop one tensor / reshape one tensor and save the checkpoint again.
    let d = copy_fixture("llama");
    let st = d.path().join("model.safetensors");
    let tensors = Tensor::read_safetensors(&st).unwrap();
    let kept: Vec<(String, Tensor)> = tensors
        .iter()
        .filter(|(n, _)| n != "model.layers.1.mlp.down_proj.weight")
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    Tensor::write_safetensors(&kept, &st).unwrap();
    let e = models::load(d.path(), Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.layers.1.mlp.down_proj.weight") && e.contains("missing"),
        "{e}"
    );

    let d = copy_fixture("llama");
    let st = d.path().join("model.safetensors");
    let reshaped: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| {
            let t = if n == "model.layers.0.self_attn.o_proj.weight" {
                t.narrow(0, 0, t.size()[0] - 1)
            } else {
                t.shallow_clone()
            };
            (n.clone(), t)
        })
        .collect();
    Tensor::write_safetensors(&reshaped, &st).unwrap();
    let e = models::load(d.path(), Device::Cpu, Kind::Float)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("model.layers.0.self_attn.o_proj.weight")
            && e.contains("[63, 64]")
            && e.contains("[64, 64]"),
        "{e}"
    );
}
