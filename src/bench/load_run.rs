//! A load run on the api backend: every request becomes a row (the prompt it sent, its request
//! number as run index), plus the load summary. `--depth` and `--turns` give the requests their
//! cached contexts (one depth or one cache state per run, closed loop; see `backend::api::load`),
//! and every such row proves its context as a single run's does (`depth_flags`).

use super::depth::{context_held, depth_flags, depth_label};
use super::load::{summarise, LoadMode, LoadPlan, LoadReport, LoadSample};
use super::record::{ignore_eos_flags, row_flags, PromptId, RunContext, RunRecord};
use super::runner::{self, BackendReport, Plan};
use super::turns::turns_label;
use crate::backend::api::{ApiBackend, LoadRequest, LoadWork};
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

fn sample_of(r: &RunRecord, with_context: bool) -> LoadSample {
    let context_held = with_context.then(|| r.ok && context_held(r));
    match &r.measurement {
        Some(m) => LoadSample {
            ttft_ms: Some(m.ttft_ms),
            tpot_ms: m.decode_ms_per_token,
            itl_ms: m.itl_ms.clone(),
            e2e_ms: Some(m.e2e_ms),
            output_tokens: m.generated_tokens,
            context_held,
        },
        None => LoadSample {
            ttft_ms: None,
            tpot_ms: None,
            itl_ms: vec![],
            e2e_ms: None,
            output_tokens: 0,
            context_held,
        },
    }
}

/// One request as its row records it.
struct Item {
    id: PromptId,
    /// The row's point label (with `depth=N` or `cache=warm|cold`).
    point: String,
    /// Tokens of cached context the row must prove (0: none).
    depth: u32,
    turn: Option<u32>,
    /// The prompt tokens the server should evaluate, when known before timing.
    expected: Option<u32>,
    request: LoadRequest,
}

/// The plan's requests: the turns of its conversations (one job per conversation, replayed in
/// order by one client), else every prompt of every set after the depth's context, if any.
fn items(plan: &Plan, point: &str) -> (Vec<Item>, Vec<std::ops::Range<usize>>) {
    let mut items = Vec::new();
    if let Some(t) = &plan.turns {
        let mode = t.modes[0];
        let mut jobs: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, c) in t.cases.iter().enumerate() {
            match jobs.last_mut() {
                Some(j) if t.cases[j.start].line == c.line => j.end = i + 1,
                _ => jobs.push(i..i + 1),
            }
            let context = c.context(mode).to_vec();
            items.push(Item {
                id: PromptId::new(&t.set, i),
                point: turns_label(point, mode),
                depth: context.len() as u32,
                turn: Some(c.turn),
                expected: c.expected_tokens(mode, None),
                request: LoadRequest {
                    prompt: c.text(mode).to_string(),
                    max_new_tokens: plan.max_new_tokens,
                    context,
                },
            });
        }
        return (items, jobs);
    }
    let context = plan.contexts.iter().find(|c| c.depth > 0);
    for s in &plan.sets {
        for (i, p) in s.prompts.iter().enumerate() {
            let id = PromptId::new(&s.name, i);
            items.push(Item {
                point: context.map_or(point.to_string(), |c| depth_label(point, c.depth)),
                depth: context.map_or(0, |c| c.depth),
                turn: None,
                expected: context.and_then(|c| c.prompt_tokens.get(&id).copied()),
                request: LoadRequest {
                    prompt: p.clone(),
                    max_new_tokens: s.max_new_tokens(i, plan.max_new_tokens),
                    context: context.map_or(Vec::new(), |c| c.ids.clone()),
                },
                id,
            });
        }
    }
    let jobs = (0..items.len()).map(|i| i..i + 1).collect();
    (items, jobs)
}

/// The row of request number `i` of `item`.
fn row(
    item: &Item,
    i: usize,
    r: Result<crate::backend::Measurement, String>,
    plan: &Plan,
) -> RunRecord {
    let ctx = RunContext {
        prompt: &item.id,
        text: &item.request.prompt,
        runner: BackendKind::Api,
        point: &item.point,
        max_new_tokens: item.request.max_new_tokens,
        depth: item.depth,
        turn: item.turn,
    };
    match r {
        Ok(m) => {
            let mut flags = row_flags(&m, item.expected);
            flags.extend(ignore_eos_flags(&m, plan.ignore_eos, plan.max_new_tokens));
            if item.depth > 0 || item.turn.is_some() {
                depth_flags(&m, item.depth, &mut flags);
            }
            RunRecord::success(&ctx, i as u32, m, flags)
        }
        Err(e) => RunRecord::failure(&ctx, i as u32, e),
    }
}

/// Run `load` on `api` over the plan's requests (round robin; a `--dataset` set's requests with
/// their own `output_tokens`; `--turns` conversations turn by turn), handing each request's row
/// to `sink`. An error (before anything is sent) says why this server cannot run the workload.
pub fn run_load(
    api: &ApiBackend,
    plan: &Plan,
    load: &LoadOptions,
    seed: u64,
    point: &str,
    sink: &mut dyn FnMut(&RunRecord),
) -> Result<(BackendReport, LoadReport), String> {
    let (items, jobs) = items(plan, point);
    let work = LoadWork {
        requests: items.iter().map(|it| it.request.clone()).collect(),
        jobs,
    };
    let clients = match load.mode {
        LoadMode::Closed { concurrency } => concurrency,
        LoadMode::Open { .. } => 0,
    };
    if let Some(why) = api.load_refusal(&work, clients) {
        return Err(why);
    }
    let load_plan = LoadPlan {
        mode: load.mode,
        requests: request_count(load, work.requests.len(), plan.runs),
        duration: load.duration_s.map(Duration::from_secs_f64),
        seed,
    };
    let mut samples = Vec::new();
    let (secs, max_in_flight) = api.run_load(&work, load_plan, &mut |i, r, result| {
        let rec = row(&items[r], i, result.map_err(|e| e.to_string()), plan);
        samples.push(sample_of(&rec, !items[r].request.context.is_empty()));
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
    Ok((runner::report(api, point, Default::default()), lr))
}
