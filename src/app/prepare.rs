//! Everything checked and computed before the first timed run, so a bad file costs nothing
//! measured: files and servers exist, prompts load, every backend's tokenizer sees the same ids
//! (the parity gate), the cache-busting prefix is measured, and prompts that cannot fit a point's
//! context are known. Nothing here sends a prompt for generation: a server's prefix cache must not
//! see a prompt before its timed run (token counts come from tokenizers, never from an untimed
//! request's `usage`).

use super::factory;
use crate::backend::api::{ApiBackend, ApiFlavor};
use crate::backend::BackendKind;
use crate::bench::cache_bust::CacheBust;
use crate::bench::dataset::Dataset;
use crate::bench::depth::{self, DepthContext};
use crate::bench::parity::{self, ParityReport, Tokenizer};
use crate::bench::prompts::{load_prompt_set, PromptSet};
use crate::bench::record::PromptId;
use crate::bench::runner::TooLong;
use crate::bench::turns::{self, TurnPlan, TurnsCache};
use crate::settings::{PromptSource, Settings, SettingsPoint};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use std::time::Duration;

/// What the measurement needs from preparation.
pub struct Prepared {
    /// The prompt sets.
    pub sets: Vec<PromptSet>,
    /// The parity gate's result.
    pub parity: ParityReport,
    /// Prompt token counts by the llama.cpp vocabulary, when inproc or a spawned server runs.
    pub llama_counts: Option<Vec<(PromptId, u32, String)>>,
    /// Prompt token counts by the hf tokenizer, when hf runs and its checkpoints have a
    /// position limit that is checked.
    pub hf_counts: Option<Vec<(PromptId, u32, String)>>,
    /// Per settings point (by index), the hf checkpoint's position limit, if it has one.
    pub hf_limits: Vec<Option<PositionCap>>,
    /// The cache-busting prefix, when it is on.
    pub cache_bust: Option<CacheBust>,
    /// `--depth`: the checked contexts, in the order given (empty without `--depth`).
    pub contexts: Vec<DepthContext>,
    /// `--turns`: the checked conversation turns (their prompt set is in `sets`).
    pub turns: Option<TurnPlan>,
    /// This machine's roofline (cached, or probed now: before anything is timed).
    pub roofline: Result<crate::report::roofline::Roofline, String>,
}

/// A checkpoint's position limit, with where it was read (for the message).
#[derive(Debug, Clone)]
pub struct PositionCap {
    /// Prompt tokens + new tokens must not exceed this.
    pub tokens: u32,
    /// E.g. `n_positions 64 of models/x/config.json`.
    pub source: String,
}

/// What to do about a prompt that does not fit.
const CTX_FIX: &str = "raise --ctx-size, shorten the prompt, or pass --skip-too-long";
const POSITION_FIX: &str = "shorten the prompt, lower --max-new-tokens, pass --skip-too-long (a failed row), or --ignore-position-limit (run it anyway)";

impl Prepared {
    /// Prompts that do not fit `point`'s context with `max_new_tokens`.
    pub fn too_long(&self, s: &Settings, point: &SettingsPoint) -> TooLong {
        self.misfits(s, point)
            .into_iter()
            .map(|(id, reason, _)| (id, reason))
            .collect()
    }

    /// Every prompt that does not fit a limit at `point`: (prompt, reason, what to do). A limit
    /// of one backend skips the prompt on every backend, so all compare the same prompts.
    fn misfits(
        &self,
        s: &Settings,
        point: &SettingsPoint,
    ) -> Vec<(PromptId, String, &'static str)> {
        let mut out = Vec::new();
        let ctx = point.llama.ctx_size;
        // The deepest context counts against every prompt, so every depth runs the same prompts.
        let deepest = self.contexts.iter().map(|c| c.depth).max().unwrap_or(0);
        let prefix = self.cache_bust.as_ref().map_or(0, |b| b.tokens) + deepest;
        let with = |prefix: u32| {
            if deepest > 0 {
                format!(" (after the --depth {deepest} context)")
            } else if prefix > 0 {
                format!(" (with the {prefix}-token cache-bust prefix)")
            } else {
                String::new()
            }
        };
        for (id, n, head) in self.llama_counts.iter().flatten() {
            let n = n + prefix;
            let new = self.max_new_of(id, s.max_new_tokens);
            if n + new > ctx {
                let reason = format!(
                    "prompt {id} (\"{head}…\" in {}) has {n} tokens{} + {new} new > --ctx-size {ctx}",
                    self.origin_of(id),
                    with(prefix),
                );
                out.push((id.clone(), reason, CTX_FIX));
            }
        }
        let Some(cap) = self.hf_limits.get(point.index).and_then(Option::as_ref) else {
            return out;
        };
        for (id, n, head) in self.hf_counts.iter().flatten() {
            let n = n + prefix;
            let new = self.max_new_of(id, s.max_new_tokens);
            if n + new > cap.tokens && !out.iter().any(|(o, _, _)| o == id) {
                let reason = format!(
                    "prompt {id} (\"{head}…\" in {}) has {n} tokens (hf tokenizer){} + {new} new > hf {}",
                    self.origin_of(id),
                    with(prefix),
                    cap.source,
                );
                out.push((id.clone(), reason, POSITION_FIX));
            }
        }
        out
    }

    /// The prompt's file (and dataset line), for messages.
    fn origin_of(&self, id: &PromptId) -> String {
        self.sets
            .iter()
            .find(|x| x.name == id.set)
            .map_or(String::new(), |x| x.origin(id.idx))
    }

    /// The prompt's max new tokens (a dataset line's `output_tokens`, else `default`).
    fn max_new_of(&self, id: &PromptId, default: u32) -> u32 {
        self.sets
            .iter()
            .find(|x| x.name == id.set)
            .map_or(default, |x| x.max_new_tokens(id.idx, default))
    }
}

/// Each point's hf position limit (none with `--ignore-position-limit`, without hf, or for an
/// architecture without one).
fn hf_limits(s: &Settings) -> Result<Vec<Option<PositionCap>>> {
    #[allow(unused_mut)]
    let mut out = vec![None; s.points.iter().map(|p| p.index + 1).max().unwrap_or(0)];
    #[cfg(feature = "torch")]
    if s.has(BackendKind::Hf) && !s.ignore_position_limit {
        for p in &s.points {
            let (dir, _, _) = crate::backend::hf::preflight(&factory::hf_settings(s, p))?;
            let cfg = crate::models::read_config(&dir)?;
            out[p.index] = crate::models::limits::position_limit(&cfg).map(|l| PositionCap {
                tokens: l.tokens,
                source: format!(
                    "{} {} of {}",
                    l.field,
                    l.tokens,
                    dir.join("config.json").display()
                ),
            });
        }
    }
    Ok(out)
}

/// Check files and servers, load prompts, run the parity gate and count tokens.
pub fn prepare(s: &Settings) -> Result<Prepared> {
    let mut sets = check_inputs(s)?;
    let point = &s.points[0];
    let mut toks = factory::tokenizers(s, point)?;
    if let PromptSource::Synthetic { lengths } = &s.prompts {
        sets = synthetic_sets(lengths, s.runs, s.seed, &mut toks)?;
    }
    let turns = turn_plan(s, point, &mut toks)?;
    if let (Some(t), Some(o)) = (&turns, &s.turns) {
        sets.push(turns::prompt_set(&t.set, &o.path, &t.cases));
    }
    let parity = parity::gate(&mut toks, &sets);
    println!("{}", parity.summary());
    if s.strict_parity && !parity.problems().is_empty() {
        bail!("--strict-parity: the backends would not evaluate the same tokens (see above)");
    }
    let llama_counts = llama_counts(s, &sets, &mut toks)?;
    let hf_limits = hf_limits(s)?;
    let hf_counts = match toks.iter_mut().find(|t| t.backend == BackendKind::Hf) {
        Some(hf) if hf_limits.iter().any(Option::is_some) => Some(counts(&sets, hf)?),
        _ => None,
    };
    let cache_bust = cache_bust(s, point, &mut toks)?;
    let contexts = depth_contexts(s, point, &mut toks, &sets)?;
    let mut prepared = Prepared {
        sets,
        parity,
        llama_counts,
        hf_counts,
        hf_limits,
        cache_bust,
        contexts,
        turns,
        roofline: Err("not measured".into()),
    };
    for p in &s.points {
        if let (Some((_, reason, fix)), false) = (prepared.misfits(s, p).first(), s.skip_too_long) {
            bail!("{reason}: {fix}");
        }
    }
    // Probed after every check that can refuse the run (no second spent on a refused run).
    prepared.roofline =
        super::roofline::cpu(point.llama.threads, false, &|m| eprintln!("ttft: {m}"));
    Ok(prepared)
}

/// The cache-busting prefix when `--cache-bust` asks for it or the api backend talks to an
/// OpenAI-compatible server (unless `--no-cache-bust`), measured with every backend's tokenizer.
fn cache_bust(
    s: &Settings,
    point: &SettingsPoint,
    toks: &mut [Tokenizer],
) -> Result<Option<CacheBust>> {
    let on = match s.cache_bust {
        Some(on) => on,
        None => s.has(BackendKind::Api) && s.load.is_none() && api_is_openai(s, point),
    };
    if !on {
        return Ok(None);
    }
    let bust = CacheBust::prepare(toks).map_err(|e| {
        anyhow::anyhow!("--cache-bust: {e}: pass --no-cache-bust to run without the prefix")
    })?;
    let by = if bust.verified() {
        format!("measured with {}", bust.checked_by.join(", "))
    } else {
        "not measurable before timing (no tokenizer): rows check it against usage".into()
    };
    println!(
        "cache-bust: every run and warm-up starts with its own {}-token prefix ({by}; --no-cache-bust turns it off)",
        bust.tokens
    );
    Ok(Some(bust))
}

/// `--turns`: the conversations' turns, rendered with the backends' chat templates (which must
/// agree) and split into cached context and new turn with every tokenizer (see [`turns`]).
fn turn_plan(
    s: &Settings,
    point: &SettingsPoint,
    toks: &mut [Tokenizer],
) -> Result<Option<TurnPlan>> {
    let Some(t) = &s.turns else {
        return Ok(None);
    };
    if t.modes.contains(&TurnsCache::Warm) && s.has(BackendKind::Api) && api_is_openai(s, point) {
        bail!("--turns warm needs llama-server (the llama flavor): an OpenAI-compatible server's prompt cache cannot be primed or proven; pass --turns-cache cold or drop the api backend");
    }
    let dataset = Dataset::load(&t.path)?;
    let requests = dataset.sample(t.sample, s.seed)?;
    let convs = requests
        .iter()
        .map(|r| match &r.conversation {
            Some(c) => Ok((r.line, c)),
            None => Err(anyhow::anyhow!(
                "{} line {}: --turns needs a conversation ({{\"conversations\": [{{\"from\": \"human\", \"value\": …}}, …]}}), not a single prompt",
                t.path.display(),
                r.line
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    let templates = factory::chat_templates(s, point)?;
    if templates.is_empty() {
        bail!("--turns needs the model's chat template before timing: run inproc, hf or a spawned llama-server beside an --api-url server");
    }
    let refs: Vec<_> = templates.iter().map(|(by, t)| (by.clone(), t)).collect();
    // The llama.cpp vocabulary gives the context ids when a llama side runs (as for --depth).
    toks.sort_by_key(|t| t.backend == BackendKind::Hf);
    let cases = turns::cases(&t.path, &convs, t.turns, &refs, toks)?;
    println!(
        "turns: {} turns of {} conversations in {} (up to {} each; {} template{}; the same ids and a clean turn boundary on {})",
        cases.len(),
        convs.len(),
        t.path.display(),
        t.turns,
        templates.iter().map(|(by, _)| by.as_str()).collect::<Vec<_>>().join(" = "),
        if templates.len() > 1 { "s agree" } else { "" },
        toks.iter().map(|t| t.backend.name()).collect::<Vec<_>>().join(", ")
    );
    for note in cases.iter().flat_map(|c| &c.notes) {
        println!("turns: note: {note}");
    }
    Ok(Some(TurnPlan {
        set: t.name.clone(),
        cases,
        modes: t.modes.clone(),
    }))
}

/// `--depth`'s contexts, cut with the llama.cpp vocabulary when a llama side runs (else the first
/// tokenizer) and checked against every tokenizer and prompt (see [`depth`]).
fn depth_contexts(
    s: &Settings,
    point: &SettingsPoint,
    toks: &mut [Tokenizer],
    sets: &[PromptSet],
) -> Result<Vec<DepthContext>> {
    if s.depths.is_empty() {
        return Ok(Vec::new());
    }
    let deep = s.depths.iter().any(|&d| d > 0);
    if deep && s.has(BackendKind::Api) && api_is_openai(s, point) {
        bail!("--depth > 0 needs llama-server (the llama flavor): an OpenAI-compatible server's prompt cache cannot be primed or proven; drop --depth or the api backend");
    }
    if deep && toks.is_empty() {
        bail!("--depth > 0: no tokenizer of the selected backends can build the context before timing");
    }
    let doc = if deep {
        depth::read_document(&s.depth_doc)?
    } else {
        String::new()
    };
    toks.sort_by_key(|t| t.backend == BackendKind::Hf);
    let contexts = depth::contexts(&doc, &s.depth_doc, &s.depths, toks, sets)?;
    for c in contexts.iter().filter(|c| c.depth > 0) {
        println!(
            "depth {}: a {}-token context from {} (ends in a newline; the same ids and a clean prompt boundary on {})",
            c.depth,
            c.ids.len(),
            s.depth_doc.display(),
            toks.iter().map(|t| t.backend.name()).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(contexts)
}

/// Whether the api backend will run in the openai flavor: `--api-flavor`, else what the server at
/// `--api-url` says it is (a spawned server is llama-server).
fn api_is_openai(s: &Settings, point: &SettingsPoint) -> bool {
    match (s.api.flavor, &s.api.url) {
        (Some(f), _) => f == ApiFlavor::Openai,
        (None, None) => false,
        (None, Some(_)) => {
            let api = factory::api_settings(s, std::path::Path::new("/dev/null"));
            ApiBackend::open(&point.llama, &api).is_ok_and(|b| b.flavor() == ApiFlavor::Openai)
        }
    }
}

/// Token counts by the llama.cpp tokenizer (inproc's, or the spawned server's: the same GGUF
/// through the same llama.cpp), with the prompt's head for messages.
fn llama_counts(
    s: &Settings,
    sets: &[PromptSet],
    toks: &mut [Tokenizer],
) -> Result<Option<Vec<(PromptId, u32, String)>>> {
    let spawned = s.spawns_server();
    let Some(vocab) = toks
        .iter_mut()
        .find(|t| t.backend == BackendKind::Inproc || (t.backend == BackendKind::Api && spawned))
    else {
        return Ok(None);
    };
    counts(sets, vocab).map(Some)
}

/// Every prompt's token count by `tok`, with the prompt's head for messages.
fn counts(sets: &[PromptSet], tok: &mut Tokenizer) -> Result<Vec<(PromptId, u32, String)>> {
    let mut out = Vec::new();
    for set in sets {
        for (i, p) in set.prompts.iter().enumerate() {
            let n = tok.encode(p).map_err(anyhow::Error::msg)?.len() as u32;
            // Control characters escaped, so the message stays one line (chat-rendered turns).
            let head: String = p.chars().take(40).collect();
            out.push((
                PromptId::new(&set.name, i),
                n,
                head.escape_debug().to_string(),
            ));
        }
    }
    Ok(out)
}

/// Synthetic prompt sets for `--prompt-tokens`: per length N, `runs` different texts of exactly N
/// tokens (each timed once) plus one more for the warm-up.
fn synthetic_sets(
    lengths: &[u32],
    runs: u32,
    seed: u64,
    toks: &mut [Tokenizer],
) -> Result<Vec<PromptSet>> {
    let mut sets = Vec::new();
    for &n in lengths {
        let mut prompts = Vec::new();
        for r in 0..=runs {
            let s = seed ^ (u64::from(n) << 32) ^ u64::from(r);
            prompts.push(
                crate::bench::synthetic::exact_prompt(n, s, toks)
                    .map_err(|e| anyhow::anyhow!("--prompt-tokens {n}: {e}"))?,
            );
        }
        let warmup = prompts.pop();
        sets.push(PromptSet {
            name: format!("n{n}"),
            path: PathBuf::from(format!("(synthetic, exactly {n} tokens, seed {seed})")),
            prompts,
            repeat: Some(1),
            warmup,
            dataset: None,
        });
    }
    Ok(sets)
}

/// Files, binaries, ports and servers the run will use exist and work.
fn check_inputs(s: &Settings) -> Result<Vec<PromptSet>> {
    let mut sets = Vec::new();
    if let PromptSource::Files(files) = &s.prompts {
        for (name, path) in files {
            sets.push(load_prompt_set(name, path)?);
        }
    }
    if let Some(d) = &s.dataset {
        let dataset = Dataset::load(&d.path)?;
        let requests = dataset.sample(d.sample, s.seed)?;
        sets.push(dataset.prompt_set(&d.name, &requests));
    }
    let spawn_server = s.spawns_server();
    if s.has(BackendKind::Inproc) || spawn_server {
        for g in &s.grid.gguf {
            crate::backend::check_gguf(g)?;
        }
    }
    if let (true, Some(port)) = (spawn_server, s.api.server_port) {
        if !crate::backend::server::port_is_free(port) {
            bail!(
                "--server-port {port} is already in use on 127.0.0.1: pick another or leave it out"
            );
        }
    }
    if spawn_server && !s.api.server_bin.exists() {
        bail!(
            "llama-server not found at {}: run scripts/setup.sh (or pass --server-bin)",
            s.api.server_bin.display()
        );
    }
    #[cfg(feature = "torch")]
    if s.has(BackendKind::Hf) {
        for p in &s.points {
            crate::backend::hf::preflight(&factory::hf_settings(s, p))?;
        }
    }
    if let (true, Some(url)) = (s.has(BackendKind::Api), &s.api.url) {
        check_api_url(url, Duration::from_secs(5))?;
    }
    check_out_dir(&s.output.out)?;
    Ok(sets)
}

fn check_out_dir(out: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(out)
        .with_context(|| format!("--out {}: cannot create the output folder", out.display()))?;
    let probe = out.join(format!(".ttft-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("--out {}: output folder is not writable", out.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Quick reachability check of `--api-url` before anything is timed.
fn check_api_url(url: &str, timeout: Duration) -> Result<()> {
    let parsed =
        reqwest::Url::parse(url).with_context(|| format!("--api-url {url}: not a valid URL"))?;
    let host = parsed
        .host_str()
        .with_context(|| format!("--api-url {url}: no host"))?;
    let port = parsed.port_or_known_default().unwrap_or(80);
    let addrs: Vec<_> = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
        .with_context(|| format!("--api-url {url}: cannot resolve {host}"))?
        .collect();
    let mut last = None;
    for a in &addrs {
        match std::net::TcpStream::connect_timeout(a, timeout) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    bail!(
        "--api-url {url} is unreachable ({}): start the server or fix the flag",
        last.map(|e| e.to_string())
            .unwrap_or_else(|| "no address".into())
    )
}
