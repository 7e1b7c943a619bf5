//! The measurement loop: settings points in grid order, and at each point every backend that has a
//! setting the point changes, one after another. A backend lives only inside its block: the model
//! is unloaded / the server stopped before the next one starts, so they never compete for cores
//! or memory. Every finished run goes to disk at once (CSV and JSON lines, flushed).

use super::factory;
use super::prepare::Prepared;
use crate::backend::api::ApiBackend;
use crate::backend::BackendKind;
use crate::bench::interrupt;
use crate::bench::load::LoadReport;
use crate::bench::record::RunRecord;
use crate::bench::runner::{self, BackendReport, Plan};
use crate::report::csv::CsvSink;
use crate::report::jsonl::JsonlSink;
use crate::report::outputs::OutputNames;
use crate::settings::grid::points_for;
use crate::settings::{Settings, SettingsPoint};
use std::time::Duration;

/// What the loop measured.
#[derive(Default)]
pub struct Measured {
    /// Every timed run, in order.
    pub runs: Vec<RunRecord>,
    /// Every backend opened (or not), per point.
    pub backends: Vec<BackendReport>,
    /// The load points' summaries.
    pub load: Vec<LoadReport>,
    /// `--max-goodput`: the searches over them (one per prompt set and repetition).
    pub load_searches: Vec<crate::bench::load_search::SearchReport>,
    /// A backend could not start (exit 2, its rows are still written).
    pub open_failed: bool,
    /// Writing a row failed (reported, the run goes on: the JSON still gets every row).
    pub sink_error: Option<std::io::Error>,
}

/// The CSV and JSON-lines files, written row by row.
pub struct RowSinks {
    csv: CsvSink,
    jsonl: JsonlSink,
}

impl RowSinks {
    /// Open the run's CSV next to its claimed JSON-lines file.
    pub fn open(names: &OutputNames, jsonl: std::fs::File) -> std::io::Result<Self> {
        Ok(Self {
            csv: CsvSink::create(&names.file("csv"))?,
            jsonl: JsonlSink::new(jsonl),
        })
    }
}

/// The plan of one point: the prompts and schedule, with the point's too-long prompts.
fn plan(s: &Settings, prepared: &Prepared, point: &SettingsPoint) -> Plan {
    Plan {
        sets: prepared.sets.clone(),
        runs: s.runs,
        warmup: s.warmup,
        max_new_tokens: s.max_new_tokens,
        ignore_eos: s.ignore_eos,
        progress: s.output.progress,
        too_long: prepared.too_long(s, point),
        verbose: s.output.verbose,
        min_time: Duration::from_secs_f64(s.min_time_s),
        cache_bust: prepared.cache_bust.clone(),
        contexts: prepared.contexts.clone(),
        turns: prepared.turns.clone(),
    }
}

/// Run every point on every backend that has it.
pub fn measure(
    s: &Settings,
    prepared: &Prepared,
    names: &OutputNames,
    mut sinks: RowSinks,
) -> Measured {
    let mut out = Measured::default();
    let spawned = s.spawns_server();
    let runs_at: Vec<(BackendKind, Vec<usize>)> = s
        .backends
        .iter()
        .map(|&k| (k, points_for(&s.points, k, spawned)))
        .collect();
    for point in &s.points {
        for (kind, at) in &runs_at {
            let kind = *kind;
            if interrupt::requested() {
                return out;
            }
            if !at.contains(&point.index) {
                continue;
            }
            let label = point.label(kind, spawned);
            let log = if s.points.len() > 1 {
                names.part(&format!("llama-server-p{}", point.index), "log")
            } else {
                names.part("llama-server", "log")
            };
            let plan = plan(s, prepared, point);
            crate::report::env::reset_peak_rss();
            crate::report::gpu::mark_baseline();
            let mut sink = |r: &RunRecord| {
                if let Err(e) = sinks.csv.append(r).and_then(|_| sinks.jsonl.append(r)) {
                    out.sink_error.get_or_insert(e);
                }
                out.runs.push(r.clone());
            };
            let rep = match &s.load {
                Some(load) => match ApiBackend::open(&point.llama, &factory::api_settings(s, &log))
                {
                    Ok(b) => {
                        crate::bench::load_run::run_load(&b, &plan, load, s.seed, &label, &mut sink)
                            .map(|o| {
                                out.load.extend(o.points);
                                out.load_searches.extend(o.searches);
                                o.backend
                            })
                    }
                    Err(e) => Err(e.to_string()),
                },
                None => factory::open_backend(kind, s, point, &log)
                    .map(|mut b| runner::run_backend(b.as_mut(), &plan, &label, &mut sink))
                    .map_err(|e| e.to_string()),
            };
            let rep = rep.unwrap_or_else(|e| {
                // A backend that cannot start is a setup error (exit 2), but its rows are still
                // written and the other backends' measurements are kept.
                eprintln!("ttft: error: {kind}: {e}");
                out.open_failed = true;
                runner::run_unopened(kind, &label, &e, &plan, &mut sink)
            });
            out.backends.push(rep);
        }
    }
    out
}
