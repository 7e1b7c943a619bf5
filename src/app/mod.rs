//! The run, as a table of contents: resolve the settings, prepare (every check before timing),
//! measure, assemble the report, export it, and pick the exit code. Exit codes: 0 every run
//! succeeded, 1 some runs failed (they are rows in the reports), 2 usage or setup error.

mod compare;
mod export;
pub mod factory;
mod measure;
mod prepare;
pub mod roofline;

use crate::bench::interrupt;
use crate::cli::{Cli, Command};
use crate::report::outputs::OutputNames;
use crate::report::{Report, SetInfo};
use crate::settings::Settings;
use anyhow::{Context, Result};
use clap::Parser;

/// Parse the command line and run; returns the process exit code.
pub fn run() -> Result<i32> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Compare(c)) => return compare::run(&c),
        Some(Command::Roofline(r)) => return roofline::run(&r),
        Some(Command::Run(a)) => *a,
        None => cli.run,
    };
    let cfg = crate::config::load(args.config.as_deref())?;
    let settings = Settings::resolve(&args, &cfg)?;
    let prepared = prepare::prepare(&settings)?;
    interrupt::install();

    let started = chrono::Local::now();
    let stamp = started.format("%Y%m%d-%H%M%S").to_string();
    let out = &settings.output.out;
    let (names, jsonl) = OutputNames::claim(out, &stamp)
        .with_context(|| format!("--out {}: cannot create the run's files", out.display()))?;
    let sinks = measure::RowSinks::open(&names, jsonl)
        .with_context(|| format!("cannot write {}", names.file("csv").display()))?;
    let measured = measure::measure(&settings, &prepared, &names, sinks);

    let report = assemble(&settings, prepared, &measured);
    let strict_mismatch =
        settings.strict_parity && report.first_token_agreement().iter().any(|a| !a.agree);
    export::export(&settings, &report, &names, &started, measured.sink_error)?;
    Ok(exit_code(&report, measured.open_failed, strict_mismatch))
}

/// The report from what was prepared and measured.
fn assemble(s: &Settings, prepared: prepare::Prepared, m: &measure::Measured) -> Report {
    Report {
        sets: prepared.sets.iter().map(SetInfo::of).collect(),
        token_disagreements: crate::bench::runner::token_disagreements(&m.backends),
        backends: m.backends.clone(),
        runs: m.runs.clone(),
        parity: prepared.parity,
        load: m.load.clone(),
        load_searches: m.load_searches.clone(),
        peak_tflops: crate::report::gpu::backend_peaks(s),
        // After every timed run: the read rate measured again, raising the ceiling if higher.
        roofline: prepared.roofline.map(roofline::read_rechecked),
    }
}

/// 130 interrupted; 2 a backend did not start or `--strict-parity` failed; 1 a run failed.
pub fn exit_code(report: &Report, open_failed: bool, strict_mismatch: bool) -> i32 {
    if interrupt::requested() {
        eprintln!(
            "ttft: interrupted: {} runs measured and written; the rest were not run",
            report.runs.len()
        );
        return interrupt::EXIT_INTERRUPTED;
    }
    if strict_mismatch {
        eprintln!("ttft: error: --strict-parity: the backends' greedy first tokens differ (see the warnings)");
        return 2;
    }
    if open_failed {
        2
    } else if report.failures() > 0 {
        1
    } else {
        0
    }
}
