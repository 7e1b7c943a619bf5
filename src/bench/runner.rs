//! The protocol every backend goes through, identically, at each settings point:
//!
//! 1. open the backend (model load / server start), timed as load time, never as TTFT;
//! 2. count the prompt tokens of every prompt with the backend's own tokenizer (untimed), so token
//!    disagreements between backends are reported, not hidden;
//! 3. per prompt set: `warmup` untimed runs, then `runs` timed runs of every prompt; with
//!    `--min-time`, more runs, the same number for every prompt of the set; with a cache-busting
//!    prefix every one of them, warm-ups included, starts with a prefix never sent before;
//! 4. every run, success or failure, becomes a [`RunRecord`] handed to the sink as soon as it ends.
//!
//! Backends run one after another, never concurrently, so they do not compete for the cores.

pub use super::backend_report::{
    report, token_disagreements, BackendFacts, BackendReport, ParityRow,
};
use super::cache_bust::CacheBust;
use super::depth::{depth_flags, depth_label, DepthContext};
use super::interrupt;
use super::prompts::PromptSet;
use super::record::{
    cache_bust_flags, ignore_eos_flags, row_flags, PromptId, RunContext, RunRecord,
};
use super::turns::{turns_label, TurnPlan, TurnsCache};
use crate::backend::{Backend, BackendKind};
use indicatif::{ProgressBar, ProgressStyle};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Prompts that do not fit the context: prompt → reason.
pub type TooLong = BTreeMap<PromptId, String>;

/// What to run on one backend at one settings point.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Prompt sets, in order.
    pub sets: Vec<PromptSet>,
    /// Timed repetitions of every prompt.
    pub runs: u32,
    /// Untimed warm-up runs per prompt set (first prompt of the set).
    pub warmup: u32,
    /// Tokens to generate per run.
    pub max_new_tokens: u32,
    /// `--ignore-eos`: every run should generate exactly `max_new_tokens`; one that does not is
    /// flagged `ignore_eos_not_honoured`.
    pub ignore_eos: bool,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
    /// Prompts that do not fit the context (`--skip-too-long`): failed rows, never timed.
    pub too_long: TooLong,
    /// 1: a line per run on stderr.
    pub verbose: u8,
    /// Repeat every prompt beyond `runs` until each has been measured this long.
    pub min_time: Duration,
    /// A unique prefix before every timed run's and warm-up's prompt (`--cache-bust`).
    pub cache_bust: Option<CacheBust>,
    /// `--depth`: the cached contexts, one pass over the sets each, on the same opened backend
    /// (empty: no depth dimension, one cold pass).
    pub contexts: Vec<DepthContext>,
    /// `--turns`: the conversation turns (the plan's only prompt set) and the cache states to
    /// run them in, one pass each.
    pub turns: Option<TurnPlan>,
}

impl Plan {
    /// Whether `--skip-too-long` left no prompt to time. Then every row is a failed row at every
    /// depth, and holding a context (seconds of untimed prefill at a deep one) would serve no run.
    fn times_nothing(&self) -> bool {
        self.sets.iter().all(|set| {
            (0..set.prompts.len()).all(|i| self.too_long.contains_key(&PromptId::new(&set.name, i)))
        })
    }
}

/// `--min-time` never runs a prompt more than this many times `--runs`.
pub const MAX_EXTRA_FACTOR: u32 = 20;

/// Where the rows of one backend at one point (and depth) go.
struct Run<'a> {
    backend: &'a mut dyn Backend,
    plan: &'a Plan,
    point: &'a str,
    sink: &'a mut dyn FnMut(&RunRecord),
    /// The context the prompts follow (None: the cold case without `--depth`).
    context: Option<&'a DepthContext>,
    /// `--turns`: the cases and this pass's cache state (each prompt has its own context).
    turns: Option<(&'a TurnPlan, TurnsCache)>,
}

/// Run every prompt of `plan` on an opened backend, handing each record to `sink` as it ends.
pub fn run_backend(
    backend: &mut dyn Backend,
    plan: &Plan,
    point: &str,
    sink: &mut dyn FnMut(&RunRecord),
) -> BackendReport {
    let token_counts = count_tokens(backend, plan);
    if let Some(turns) = &plan.turns {
        for &mode in &turns.modes {
            let label = turns_label(point, mode);
            let mut run = Run {
                backend,
                plan,
                point: &label,
                sink,
                context: None,
                turns: Some((turns, mode)),
            };
            if !run.sets(&token_counts) {
                break;
            }
        }
        let _ = backend.set_context(&[]);
        return report(backend, point, token_counts);
    }
    if plan.contexts.is_empty() {
        let mut run = Run {
            backend,
            plan,
            point,
            sink,
            context: None,
            turns: None,
        };
        run.sets(&token_counts);
        return report(run.backend, point, token_counts);
    }
    for c in &plan.contexts {
        let label = depth_label(point, c.depth);
        let held = if plan.times_nothing() {
            Ok(())
        } else {
            backend.set_context(&c.ids)
        };
        if let Err(e) = held {
            // The context could not be held: every run of this depth is a failed row.
            let msg = format!("depth {}: {e}", c.depth);
            rows_failed(backend.kind(), &label, c.depth, &msg, plan, sink);
            continue;
        }
        let mut run = Run {
            backend,
            plan,
            point: &label,
            sink,
            context: Some(c),
            turns: None,
        };
        if !run.sets(&token_counts) {
            break;
        }
    }
    let _ = backend.set_context(&[]);
    report(backend, point, token_counts)
}

fn count_tokens(backend: &mut dyn Backend, plan: &Plan) -> BTreeMap<String, Vec<Option<u32>>> {
    let mut token_counts = BTreeMap::new();
    for set in &plan.sets {
        let counts = set
            .prompts
            .iter()
            .map(|p| {
                if interrupt::requested() {
                    None
                } else {
                    backend.prompt_token_count(p).ok()
                }
            })
            .collect::<Vec<_>>();
        token_counts.insert(set.name.clone(), counts);
    }
    token_counts
}

impl Run<'_> {
    /// Every prompt set; false when interrupted.
    fn sets(&mut self, token_counts: &BTreeMap<String, Vec<Option<u32>>>) -> bool {
        for set in &self.plan.sets {
            if !self.set(set, &token_counts[&set.name]) {
                return false;
            }
        }
        true
    }

    /// One prompt set: warm-ups, `runs` of every prompt, then the `--min-time` extra runs.
    /// False when interrupted.
    fn set(&mut self, set: &PromptSet, counts: &[Option<u32>]) -> bool {
        let bar = progress_bar(self.plan, self.backend.kind(), set);
        self.warm_up(set);
        let min_runs = set.repeat.unwrap_or(self.plan.runs);
        let mut spent = Vec::new();
        for idx in 0..set.prompts.len() {
            match self.prompt(set, idx, 0..min_runs, counts, &bar) {
                Some(d) => spent.push(d),
                None => return false,
            }
        }
        let target = if set.repeat.is_some() {
            min_runs
        } else {
            runs_for_min_time(&spent, min_runs, self.plan.min_time)
        };
        if target > min_runs {
            bar.inc_length(u64::from(target - min_runs) * set.prompts.len() as u64);
            for idx in 0..set.prompts.len() {
                if self
                    .prompt(set, idx, min_runs..target, counts, &bar)
                    .is_none()
                {
                    return false;
                }
            }
        }
        bar.finish();
        true
    }

    fn warm_up(&mut self, set: &PromptSet) {
        let fits = |i: &usize| {
            !self
                .plan
                .too_long
                .contains_key(&PromptId::new(&set.name, *i))
        };
        let first_fit = (0..set.prompts.len()).find(fits);
        let Some(first) = set.warmup.as_ref().or(first_fit.map(|i| &set.prompts[i])) else {
            return;
        };
        let max_new = set.max_new_tokens(first_fit.unwrap_or(0), self.plan.max_new_tokens);
        if self.turns.is_some() {
            // `--turns`: the warm-up is the set's first conversation text with nothing cached
            // (each timed prompt sets its own context after it).
            let _ = self.backend.set_context(&[]);
        }
        for _ in 0..self.plan.warmup {
            if interrupt::requested() {
                break;
            }
            // Warm-ups are never recorded; a failing warm-up shows up in the timed runs anyway.
            // With a cache-busting prefix a warm-up shares no prefix with any timed run.
            let text = self.busted(first);
            let _ = self.backend.measure(&text, max_new);
        }
    }

    /// Runs `runs` of prompt `idx`; the time they took, or None when interrupted.
    fn prompt(
        &mut self,
        set: &PromptSet,
        idx: usize,
        runs: std::ops::Range<u32>,
        counts: &[Option<u32>],
        bar: &ProgressBar,
    ) -> Option<Duration> {
        let id = PromptId::new(&set.name, idx);
        let turn = self.turns.map(|(t, mode)| (&t.cases[idx], mode));
        let ctx = RunContext {
            prompt: &id,
            text: turn.map_or(&set.prompts[idx], |(c, mode)| c.text(mode)),
            runner: self.backend.kind(),
            point: self.point,
            max_new_tokens: set.max_new_tokens(idx, self.plan.max_new_tokens),
            depth: match turn {
                Some((c, mode)) => c.context(mode).len() as u32,
                None => self.context.map_or(0, |c| c.depth),
            },
            turn: turn.map(|(c, _)| c.turn),
        };
        // `--turns`: this turn's earlier turns become the cached context (untimed).
        let held = match turn {
            Some((c, mode)) if !self.plan.too_long.contains_key(&id) => self
                .backend
                .set_context(c.context(mode))
                .map_err(|e| format!("turn {}: {e}", c.turn)),
            _ => Ok(()),
        };
        let started = Instant::now();
        for run_idx in runs {
            if interrupt::requested() {
                bar.abandon();
                return None;
            }
            let rec = match (self.plan.too_long.get(&id), &held) {
                (Some(reason), _) => RunRecord::failure(&ctx, run_idx, reason.clone()),
                (None, Err(e)) => RunRecord::failure(&ctx, run_idx, e.clone()),
                (None, Ok(())) => self.timed(&ctx, run_idx, self.expected_count(&id, counts[idx])),
            };
            if self.plan.verbose >= 1 {
                eprintln!("{}", verbose_line(&rec));
            }
            (self.sink)(&rec);
            bar.inc(1);
        }
        Some(started.elapsed())
    }

    /// The prompt tokens a run should evaluate: the tokenizer's count, or after a context the
    /// prompt's own ids (no BOS) as the depth check measured them.
    fn expected_count(&self, id: &PromptId, count: Option<u32>) -> Option<u32> {
        if let Some((t, mode)) = self.turns {
            return t.cases[id.idx].expected_tokens(mode, count);
        }
        match self.context {
            Some(c) if c.depth > 0 => c.prompt_tokens.get(id).copied(),
            _ => count,
        }
    }

    /// The text a run sends: the prompt, after a fresh cache-busting prefix when there is one
    /// (built here, before the clock starts).
    fn busted(&self, prompt: &str) -> String {
        match &self.plan.cache_bust {
            Some(b) => format!("{}{prompt}", b.next_prefix(self.backend.kind())),
            None => prompt.to_string(),
        }
    }

    fn timed(&mut self, ctx: &RunContext, run_idx: u32, count: Option<u32>) -> RunRecord {
        let text = self.busted(ctx.text);
        let bust = self.plan.cache_bust.as_ref();
        // What the backend should evaluate: the prompt's own count plus the prefix's (unknown
        // when either is).
        let prefix = bust.map_or(Some(0), CacheBust::measured_tokens);
        let expected = count.zip(prefix).map(|(c, p)| c + p);
        match self.backend.measure(&text, ctx.max_new_tokens) {
            Ok(mut m) => {
                let mut flags = row_flags(&m, expected);
                flags.extend(ignore_eos_flags(
                    &m,
                    self.plan.ignore_eos,
                    self.plan.max_new_tokens,
                ));
                if self.context.is_some() || self.turns.is_some() {
                    depth_flags(&m, ctx.depth, &mut flags);
                }
                if let Some(b) = bust {
                    m.cache_bust_tokens = b.measured_tokens();
                    flags.extend(cache_bust_flags(&m, expected, b.verified()));
                }
                if m.prompt_tokens.is_none() && expected.is_some() {
                    // The stream carried no count (a server that streams no usage): the
                    // tokenizer's count before timing (no generation) stands in.
                    m.prompt_tokens = expected;
                    flags.push("prompt_tokens_from_tokenizer".into());
                }
                RunRecord::success(ctx, run_idx, m, flags)
            }
            Err(e) => RunRecord::failure(ctx, run_idx, e.to_string()),
        }
    }
}

/// hyperfine's `--min-time` for a set: the run count that gives *every* prompt at least
/// `min_time` (the fastest prompt decides), the same for all so that no prompt weighs more in
/// the set's summary; at least `min_runs`, at most `MAX_EXTRA_FACTOR × min_runs`.
pub fn runs_for_min_time(spent: &[Duration], min_runs: u32, min_time: Duration) -> u32 {
    if min_time.is_zero() || min_runs == 0 {
        return min_runs;
    }
    let need = spent
        .iter()
        .map(|d| {
            let per_run = d.as_secs_f64() / f64::from(min_runs);
            if per_run <= 0.0 {
                u32::MAX
            } else {
                (min_time.as_secs_f64() / per_run)
                    .ceil()
                    .min(f64::from(u32::MAX)) as u32
            }
        })
        .max()
        .unwrap_or(min_runs);
    need.clamp(min_runs, min_runs.saturating_mul(MAX_EXTRA_FACTOR))
}

fn verbose_line(rec: &RunRecord) -> String {
    let head = format!("ttft: {} {} run {}", rec.runner, rec.prompt, rec.run_idx);
    match (&rec.measurement, &rec.error) {
        (Some(m), _) => format!(
            "{head}: ttft {:.2} ms, {} prompt tokens",
            m.ttft_ms,
            m.prompt_tokens.map_or("?".into(), |n| n.to_string())
        ),
        (None, e) => format!("{head}: failed: {}", e.as_deref().unwrap_or("?")),
    }
}

/// A backend that could not be opened: every run it would have made is a failed row with the reason.
pub fn run_unopened(
    kind: BackendKind,
    point: &str,
    reason: &str,
    plan: &Plan,
    sink: &mut dyn FnMut(&RunRecord),
) -> BackendReport {
    if let Some(turns) = &plan.turns {
        for &mode in &turns.modes {
            rows_failed(kind, &turns_label(point, mode), 0, reason, plan, sink);
        }
    } else if plan.contexts.is_empty() {
        rows_failed(kind, point, 0, reason, plan, sink);
    }
    for c in &plan.contexts {
        rows_failed(
            kind,
            &depth_label(point, c.depth),
            c.depth,
            reason,
            plan,
            sink,
        );
    }
    BackendReport {
        name: kind,
        point: point.to_string(),
        load_ms: None,
        peak_rss_mib: None,
        gpu_memory_mib: None,
        open_error: Some(reason.to_string()),
        info: serde_json::Value::Null,
        facts: BackendFacts::default(),
        token_counts: BTreeMap::new(),
    }
}

/// Every run of `plan` at one depth as a failed row with `reason`.
fn rows_failed(
    kind: BackendKind,
    point: &str,
    depth: u32,
    reason: &str,
    plan: &Plan,
    sink: &mut dyn FnMut(&RunRecord),
) {
    for set in &plan.sets {
        for (idx, text) in set.prompts.iter().enumerate() {
            let id = PromptId::new(&set.name, idx);
            let ctx = RunContext {
                prompt: &id,
                text,
                runner: kind,
                point,
                max_new_tokens: set.max_new_tokens(idx, plan.max_new_tokens),
                depth,
                turn: plan.turns.as_ref().map(|t| t.cases[idx].turn),
            };
            for run_idx in 0..set.repeat.unwrap_or(plan.runs) {
                sink(&RunRecord::failure(&ctx, run_idx, reason));
            }
        }
    }
}

fn progress_bar(plan: &Plan, kind: BackendKind, set: &PromptSet) -> ProgressBar {
    let total = (set.prompts.len() as u64) * u64::from(set.repeat.unwrap_or(plan.runs));
    if !plan.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {elapsed_precise}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{kind} {}", set.name));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn min_time_gives_every_prompt_the_slowest_prompts_count() {
        let ms = Duration::from_millis;
        // 3 runs each: 30 ms (10 ms/run) and 300 ms (100 ms/run); 1 s needs 100 and 10 runs.
        assert_eq!(runs_for_min_time(&[ms(30), ms(300)], 3, ms(1000)), 60);
        assert_eq!(runs_for_min_time(&[ms(300)], 3, ms(1000)), 10);
        assert_eq!(runs_for_min_time(&[ms(3000)], 3, ms(1000)), 3);
        assert_eq!(runs_for_min_time(&[ms(30)], 3, Duration::ZERO), 3);
    }
}
