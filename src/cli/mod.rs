//! The command line as clap structs, nothing else: `Settings::resolve` turns them into what a run
//! reads. Exit codes: 0 every run succeeded, 1 some runs failed (they are rows in the reports),
//! 2 usage or setup error (nothing was timed).

mod run_args;

pub use run_args::RunArgs;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const AFTER_HELP: &str = "\
TTFT (time to first token), the same for every backend: the clock starts when the prompt text is \
handed to the backend and stops when the first generated token's text is on the host.
  inproc: tokenize + prefill + greedy sample + detokenize, KV cache cleared before each run.
  api:    request built and sent -> first SSE event with non-empty token text parsed;
          cache_prompt=false on every request, proven by the server's timings.cache_n == 0.
  hf:     tokenize + prefill (CUDA: synchronised) + argmax + id to host + detokenize.
Parts reported: tokenize, prefill, first sample, detokenize (inproc, hf); server prompt_ms and
overhead = TTFT - prompt_ms (api).
Decode metrics (vLLM's definitions), with max_new_tokens > 1:
  TPOT = (end of request - first token) / (generated - 1), per request;
  ITL  = each gap between two consecutive tokens arriving on the host, pooled over requests.
A case is (prompt set, prompt, backend, settings point). Statistics are per case, never over
different prompts: mean, median with a bootstrap 95% CI (10,000 resamples, fixed seed), p90,
p99, stddev, min, max; outliers by median/MAD (modified z > 3.5, MAD at least 1% of the median,
from 5 runs of a case). A set's row combines its
prompts: the mean of per-prompt medians, its CI by a bootstrap within each prompt. Relative
speed: the geometric mean of per-prompt median ratios. --prompt-tokens fits TTFT = a + b*n per
backend (least squares, R^2); each synthetic length is one case (a fresh text per run).
Every list-valued setting (--threads 1,2 --ctx-size 2048,4096 ...) is a grid axis.
Warm-up runs are never recorded; model load / server start is reported apart from TTFT.

Exit codes: 0 all runs succeeded, 1 some runs failed (kept as rows with their error),
2 usage or setup error (nothing was timed).";

/// ttft: time-to-first-token of one model, measured in-process, over HTTP and on libtorch.
#[derive(Debug, Parser)]
#[command(name = "ttft", version, about, after_long_help = AFTER_HELP, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// A subcommand; none runs the benchmark.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The benchmark's flags.
    #[command(flatten)]
    pub run: RunArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the benchmark (the default when no subcommand is given).
    Run(Box<RunArgs>),
    /// Compare JSON reports case by case (prompt set, prompt, backend, settings point), each
    /// against the first: the change of the median TTFT with a bootstrap 95% CI and a
    /// Mann-Whitney rank test. Exits 1 when a case got slower beyond the threshold (p < alpha)
    /// or its success rate fell.
    Compare(CompareArgs),
    /// Print this machine's roofline: memory read bandwidth and f32/bf16/f16 GEMM peaks with the
    /// kernels the hf backend uses, measured in about a second and cached per machine, threads
    /// and libtorch (every report shows it and each backend's prefill as a fraction of it).
    Roofline(RooflineArgs),
}

/// Flags of `ttft roofline`.
#[derive(Debug, Args, Clone)]
pub struct RooflineArgs {
    /// Threads (default: every core; match the benchmark's --threads).
    #[arg(long)]
    pub threads: Option<u32>,
    /// Measure again instead of reading the cache.
    #[arg(long)]
    pub refresh: bool,
    /// Print the measurement as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `ttft compare`.
#[derive(Debug, Args, Clone)]
pub struct CompareArgs {
    /// The baseline report, then one or more newer ones.
    #[arg(required = true, num_args = 2.., value_name = "REPORT.json")]
    pub reports: Vec<PathBuf>,
    /// Smallest change of the median, percent, that counts as a regression.
    #[arg(long, default_value_t = 5.0)]
    pub threshold: f64,
    /// Significance level of the Mann–Whitney rank test on the case's runs.
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Also write the comparison as Markdown to FILE.
    #[arg(long, value_name = "FILE")]
    pub export_markdown: Option<PathBuf>,
    /// Also draw the per-case medians of every report side by side (SVG, plus a PNG next to it).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}
