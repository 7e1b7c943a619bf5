//! A load run on the api backend: every request becomes a row (the prompt it sent, its request
//! number as run index), plus the load summary. `--depth` and `--turns` give the requests their
//! cached contexts (one depth or one cache state per run, closed loop; see `backend::api::load`),
//! and every such row proves its context as a single run's does (`depth_flags`).

use super::depth::{context_held, depth_flags, depth_label, tagged};
use super::interrupt;
use super::load::{summarise, LoadMode, LoadPlan, LoadReport, LoadSample, RunFacts};
use super::load_search::{self, SearchReport};
use super::record::{ignore_eos_flags, row_flags, PromptId, RunContext, RunRecord};
use super::runner::{self, BackendReport, Plan};
use super::turns::turns_label;
use crate::backend::api::{slots, ApiBackend, LoadDone, LoadRequest, LoadWork};
use crate::backend::BackendKind;
use crate::settings::LoadOptions;
use std::collections::HashMap;
use std::time::Duration;

/// How many requests a load run sends: `--num-requests`, else as many as `--duration` allows at
/// the rate, else every prompt `runs` times.
fn request_count(load: &LoadOptions, mode: LoadMode, prompts: usize, runs: u32) -> usize {
    load.num_requests
        .unwrap_or_else(|| match (mode, load.duration_s) {
            (LoadMode::Open { rate, .. }, Some(d)) => (rate * d).ceil() as usize,
            (_, Some(_)) => usize::MAX,
            _ => prompts * runs as usize,
        })
}

fn sample_of(r: &RunRecord, with_context: bool, sent_s: f64, done_s: f64) -> LoadSample {
    let m = r.measurement.as_ref();
    LoadSample {
        ttft_ms: m.map(|m| m.ttft_ms),
        tpot_ms: m.and_then(|m| m.decode_ms_per_token),
        itl_ms: m.map(|m| m.itl_ms.clone()).unwrap_or_default(),
        e2e_ms: m.map(|m| m.e2e_ms),
        output_tokens: m.map_or(0, |m| m.generated_tokens),
        context_held: with_context.then(|| r.ok && context_held(r)),
        lateness_ms: m.and_then(|m| m.send_lateness_ms),
        sent_s,
        done_s,
    }
}

/// The tag a load point adds to its rows' point label.
pub fn point_tag(mode: LoadMode) -> String {
    match mode {
        LoadMode::Closed { concurrency } => format!("concurrency={concurrency}"),
        LoadMode::Open { rate, .. } => format!("rate={rate}"),
    }
}

/// This process's CPU time so far (user + system), seconds.
fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return None;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    Some(tv(u.ru_utime) + tv(u.ru_stime))
}

/// One request as its row records it.
struct Item {
    id: PromptId,
    /// The workload's tag (`depth=N`, `cache=warm|cold`), last in the row's point label.
    workload: Option<String>,
    /// Tokens of cached context the row must prove (0: none).
    depth: u32,
    turn: Option<u32>,
    /// The prompt tokens the server should evaluate, when known before timing.
    expected: Option<u32>,
    request: LoadRequest,
}

/// One workload of a load run: the requests of one prompt set (or dataset, or the `--turns`
/// conversations), run as load points of their own. Different sets are never mixed into one
/// request stream, so a point's percentiles pool only the requests of one workload.
struct Workload {
    /// The set's name.
    set: String,
    items: Vec<Item>,
    work: LoadWork,
}

impl Workload {
    fn new(set: &str, items: Vec<Item>, jobs: Vec<std::ops::Range<usize>>) -> Self {
        let work = LoadWork {
            requests: items.iter().map(|it| it.request.clone()).collect(),
            jobs,
        };
        Self {
            set: set.to_string(),
            items,
            work,
        }
    }
}

/// The plan's workloads: the turns of its conversations (one job per conversation, replayed in
/// order by one client), else one per prompt set, every prompt after the depth's context, if any.
fn workloads(plan: &Plan) -> Vec<Workload> {
    if let Some(t) = &plan.turns {
        let mode = t.modes[0];
        let mut items = Vec::new();
        let mut jobs: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, c) in t.cases.iter().enumerate() {
            match jobs.last_mut() {
                Some(j) if t.cases[j.start].line == c.line => j.end = i + 1,
                _ => jobs.push(i..i + 1),
            }
            let context = c.context(mode).to_vec();
            items.push(Item {
                id: PromptId::new(&t.set, i),
                workload: Some(turns_label("", mode)),
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
        return vec![Workload::new(&t.set, items, jobs)];
    }
    let context = plan.contexts.iter().find(|c| c.depth > 0);
    let set_items = |s: &super::prompts::PromptSet| -> Vec<Item> {
        s.prompts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let id = PromptId::new(&s.name, i);
                Item {
                    workload: context.map(|c| depth_label("", c.depth)),
                    depth: context.map_or(0, |c| c.depth),
                    turn: None,
                    expected: context.and_then(|c| c.prompt_tokens.get(&id).copied()),
                    request: LoadRequest {
                        prompt: p.clone(),
                        max_new_tokens: s.max_new_tokens(i, plan.max_new_tokens),
                        context: context.map_or(Vec::new(), |c| c.ids.clone()),
                    },
                    id,
                }
            })
            .collect()
    };
    plan.sets
        .iter()
        .map(|s| {
            let items = set_items(s);
            let jobs = (0..items.len()).map(|i| i..i + 1).collect();
            Workload::new(&s.name, items, jobs)
        })
        .collect()
}

/// The row of request number `first + d.i` of `item` (`first`: the rows its tag already has,
/// from earlier repeats or search probes at the same load).
fn row(item: &Item, tag: &str, first: usize, d: LoadDone, plan: &Plan) -> RunRecord {
    // The load point's tag, then the workload's: the depth and turns reports read theirs last.
    let point = match &item.workload {
        Some(w) => tagged(tag, w),
        None => tag.to_string(),
    };
    let (i, r) = (first + d.i, d.result.map_err(|e| e.to_string()));
    let ctx = RunContext {
        prompt: &item.id,
        text: &item.request.prompt,
        runner: BackendKind::Api,
        point: &point,
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

/// Run every load point of `load` on `api` (one server, in order) for each workload (prompt set)
/// of the plan: its requests round robin (a `--dataset` set's with their own `output_tokens`;
/// `--turns` conversations turn by turn), each point after `plan.warmup` untimed requests,
/// `--repeat` times (the sweep's points interleaved, or the whole search again), handing each
/// request's row to `sink`. An error (before anything is sent) says why this server cannot run
/// the workload.
pub fn run_load(
    api: &ApiBackend,
    plan: &Plan,
    load: &LoadOptions,
    seed: u64,
    point: &str,
    sink: &mut (dyn FnMut(&RunRecord) + Send),
) -> Result<LoadOutcome, String> {
    let workloads = workloads(plan);
    let clients = load.points.iter().map(|m| match m {
        LoadMode::Closed { concurrency } => *concurrency,
        LoadMode::Open { .. } => 0,
    });
    let clients = clients.max().unwrap_or(0);
    if let Some(why) = workloads
        .iter()
        .find_map(|w| api.load_refusal(&w.work, clients))
    {
        return Err(why);
    }
    let mut out = LoadOutcome {
        backend: runner::report(api, point, Default::default()),
        points: Vec::new(),
        searches: Vec::new(),
    };
    let mut rows_of: HashMap<String, usize> = HashMap::new();
    for w in &workloads {
        let sweep = Sweep {
            api,
            plan,
            load,
            w,
            base: point,
        };
        for repeat in 1..=load.repeat {
            let mut at = Repeat {
                repeat,
                seed: seed.wrapping_add(u64::from(repeat - 1)),
                rows_of: &mut rows_of,
            };
            if interrupt::requested() {
                break;
            }
            let Some(opts) = &load.search else {
                for &mode in &load.points {
                    if interrupt::requested() {
                        break;
                    }
                    out.points.push(sweep.point(mode, &mut at, sink));
                }
                continue;
            };
            let mut sr = load_search::search(load.points[0], opts, &mut |mode| {
                if interrupt::requested() {
                    return None;
                }
                let r = sweep.point(mode, &mut at, sink);
                out.points.push(r.clone());
                Some(r)
            });
            (sr.settings, sr.set, sr.repeat) = (point.to_string(), w.set.clone(), repeat);
            out.searches.push(sr);
        }
    }
    Ok(out)
}

/// Which repetition a load point belongs to, and the rows each row tag already has.
struct Repeat<'a> {
    repeat: u32,
    /// The arrival schedule's seed (each repetition its own).
    seed: u64,
    rows_of: &'a mut HashMap<String, usize>,
}

/// What a load run measured.
pub struct LoadOutcome {
    /// The api backend's report.
    pub backend: BackendReport,
    /// Every load point (sweep values or search probes), in order.
    pub points: Vec<LoadReport>,
    /// `--max-goodput`: the searches, one per prompt set and repetition.
    pub searches: Vec<SearchReport>,
}

/// What every load point of a run shares.
struct Sweep<'a> {
    api: &'a ApiBackend,
    plan: &'a Plan,
    load: &'a LoadOptions,
    w: &'a Workload,
    /// The settings point's label, before the load point's tag.
    base: &'a str,
}

impl Sweep<'_> {
    /// One load point: the warm-up, then the timed requests.
    /// Rows are written by a thread of their own, fed through a channel: the event loop that
    /// stamps every stream's tokens never waits on a file.
    fn point(
        &self,
        mode: LoadMode,
        at: &mut Repeat<'_>,
        sink: &mut (dyn FnMut(&RunRecord) + Send),
    ) -> LoadReport {
        let Sweep {
            api, plan, load, w, ..
        } = *self;
        let (items, work) = (&w.items, &w.work);
        api.warm_up(work, plan.warmup);
        let load_plan = LoadPlan {
            mode,
            requests: request_count(load, mode, work.requests.len(), plan.runs),
            duration: load.duration_s.map(Duration::from_secs_f64),
            seed: at.seed,
        };
        let label = point_tag(mode);
        let tag = tagged(self.base, &label);
        let first = at
            .rows_of
            .get(&format!("{}\n{tag}", w.set))
            .copied()
            .unwrap_or(0);
        let (metrics_before, slots_before) = (api.metrics_snapshot(), api.slots_snapshot());
        let mut samples = Vec::new();
        let cpu0 = cpu_seconds();
        let (secs, max_in_flight) = std::thread::scope(|scope| {
            let (tx, rx) = std::sync::mpsc::channel::<RunRecord>();
            let writer = scope.spawn(move || rx.iter().for_each(|rec| sink(&rec)));
            let ran = api.run_load(work, load_plan, &mut |d| {
                let item = &items[d.r];
                let with_context = !item.request.context.is_empty();
                let (sent_s, done_s) = (d.sent_s, d.done_s);
                let rec = row(item, &tag, first, d, plan);
                samples.push(sample_of(&rec, with_context, sent_s, done_s));
                // The writer outlives the run; a send fails only if it panicked.
                let _ = tx.send(rec);
            });
            drop(tx);
            if writer.join().is_err() {
                eprintln!("ttft: warning: the row writer of {tag} failed: some of its rows may be missing from the CSV and JSON lines");
            }
            ran
        });
        at.rows_of
            .insert(format!("{}\n{tag}", w.set), first + samples.len());
        let client_cpu = cpu0
            .zip(cpu_seconds())
            .map(|(a, b)| (b - a) / secs.max(1e-9));
        let mut report = summarise(
            &samples,
            &RunFacts {
                settings: self.base.to_string(),
                set: w.set.clone(),
                repeat: at.repeat,
                mode,
                label,
                duration_s: secs,
                max_in_flight,
                server_slots: api.server_slots(),
                slo: load.slo,
                client_cpu,
                warmup: plan.warmup,
            },
        );
        report.server_metrics = crate::backend::api::metrics::load_point(
            metrics_before.as_ref(),
            api.metrics_snapshot().as_ref(),
        );
        report.server_slots_state =
            slots::load_point(slots_before.as_ref(), api.slots_snapshot().as_ref());
        if let Some(n) = slots::busy_before(&report.server_slots_state).filter(|&n| n > 0) {
            report.warnings.push(format!("{n} server slot(s) were still processing when the point started: its first requests shared the server with work from before"));
        }
        report
    }
}
