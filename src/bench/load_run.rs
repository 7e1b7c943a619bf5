//! A load run on the api backend: every request becomes a row (the prompt it sent, its request
//! number as run index), plus the load summary.

use super::load::{summarise, LoadMode, LoadPlan, LoadReport, LoadSample};
use super::record::{ignore_eos_flags, row_flags, PromptId, RunContext, RunRecord};
use super::runner::{self, BackendReport, Plan};
use crate::backend::api::ApiBackend;
use crate::backend::BackendKind;
use crate::settings::LoadOptions;
use std::time::Duration;

/// How many requests a load run sends: `--num-requests`, else as many as `--duration` allows at
/// the rate, else every prompt `runs` times.
fn request_count(load: &LoadOptions, prompts: usize, runs: u32) -> usize {
    load.num_requests
        .unwrap_or_else(|| match (load.mode, load.duration_s) {
            (LoadMode::Open { rate, .. }, Some(d)) => (rate * d).ceil() as usize,
            (_, Some(_)) => usize::MAX,
            _ => prompts * runs as usize,
        })
}

fn sample_of(r: &RunRecord) -> LoadSample {
    match &r.measurement {
        Some(m) => LoadSample {
            ttft_ms: Some(m.ttft_ms),
            tpot_ms: m.decode_ms_per_token,
            itl_ms: m.itl_ms.clone(),
            e2e_ms: Some(m.e2e_ms),
            output_tokens: m.generated_tokens,
        },
        None => LoadSample {
            ttft_ms: None,
            tpot_ms: None,
            itl_ms: vec![],
            e2e_ms: None,
            output_tokens: 0,
        },
    }
}

/// Run `load` on `api` over the plan's prompts (round robin, a `--dataset` set's requests with
/// their own `output_tokens`), handing each request's row to `sink`.
pub fn run_load(
    api: &ApiBackend,
    plan: &Plan,
    load: &LoadOptions,
    seed: u64,
    point: &str,
    sink: &mut dyn FnMut(&RunRecord),
) -> (BackendReport, LoadReport) {
    // Every prompt with its own max new tokens (a dataset line's `output_tokens`).
    let prompts: Vec<(PromptId, String, u32)> = plan
        .sets
        .iter()
        .flat_map(|s| {
            s.prompts.iter().enumerate().map(|(i, p)| {
                let n = s.max_new_tokens(i, plan.max_new_tokens);
                (PromptId::new(&s.name, i), p.clone(), n)
            })
        })
        .collect();
    let texts: Vec<(String, u32)> = prompts.iter().map(|p| (p.1.clone(), p.2)).collect();
    let load_plan = LoadPlan {
        mode: load.mode,
        requests: request_count(load, texts.len(), plan.runs),
        duration: load.duration_s.map(Duration::from_secs_f64),
        seed,
    };
    let mut samples = Vec::new();
    let (secs, max_in_flight) = api.run_load(&texts, load_plan, &mut |i, r| {
        let (id, text, max_new_tokens) = &prompts[i % prompts.len()];
        let ctx = RunContext {
            prompt: id,
            text,
            runner: BackendKind::Api,
            point,
            max_new_tokens: *max_new_tokens,
            depth: 0,
            turn: None,
        };
        let rec = match r {
            Ok(m) => {
                let mut flags = row_flags(&m, None);
                flags.extend(ignore_eos_flags(&m, plan.ignore_eos, plan.max_new_tokens));
                RunRecord::success(&ctx, i as u32, m, flags)
            }
            Err(e) => RunRecord::failure(&ctx, i as u32, e.to_string()),
        };
        samples.push(sample_of(&rec));
        sink(&rec);
    });
    let lr = summarise(
        load.mode,
        &samples,
        secs,
        max_in_flight,
        api.server_slots(),
        load.slo,
    );
    (runner::report(api, point, Default::default()), lr)
}
