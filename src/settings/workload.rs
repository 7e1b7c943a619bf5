//! The workload flags that change what a prompt is (`--depth`, `--turns`): what they cannot be
//! combined with, one line each, before anything starts.

use super::resolve::{invalid, path_setting};
use super::{LoadOptions, SettingsError, TurnsOptions};
use crate::bench::load::LoadMode;
use crate::bench::turns::TurnsCache;
use crate::cli::RunArgs;
use crate::config::LoadedConfig;

/// `--depth` with what it cannot be combined with (one line each, before timing).
pub(super) fn check_depth(args: &RunArgs, load: Option<&LoadOptions>) -> Result<(), SettingsError> {
    if !args.depth.iter().any(|&d| d > 0) {
        return Ok(());
    }
    if let Some(load) = load {
        closed_loop(load, "--depth")?;
        let mut depths = args.depth.clone();
        depths.sort_unstable();
        depths.dedup();
        if depths.len() > 1 {
            return Err(invalid(
                "a load run takes one --depth (one workload per run): run once per depth",
            ));
        }
    }
    if args.chat {
        return Err(invalid(
            "--depth with --chat is not supported: the context is raw document tokens, not a chat turn; drop one of them",
        ));
    }
    if args.cache_bust {
        return Err(invalid(
            "--depth with --cache-bust: the prefix would sit between the cached context and the prompt; drop one of them",
        ));
    }
    Ok(())
}

/// In a load run, a cached context needs the closed loop: each client primes its own server slot
/// (untimed) before each of its requests, which a scheduled open-loop arrival cannot wait for.
fn closed_loop(load: &LoadOptions, flag: &str) -> Result<(), SettingsError> {
    match load.points[0] {
        LoadMode::Closed { .. } => Ok(()),
        LoadMode::Open { .. } => Err(invalid(format!(
            "{flag} in a load run needs --concurrency N (closed loop: each client primes its own server slot before each request, which a scheduled --request-rate arrival cannot wait for)"
        ))),
    }
}

/// `--turns K` / `--turns-cache`: the conversation file (`--dataset`, else the shipped
/// data/conversations.jsonl) replayed turn by turn; None without `--turns`.
pub(super) fn turns(
    args: &RunArgs,
    cfg: &LoadedConfig,
    load: Option<&LoadOptions>,
) -> Result<Option<TurnsOptions>, SettingsError> {
    let Some(turns) = args.turns else {
        if !args.turns_cache.is_empty() {
            return Err(invalid("--turns-cache needs --turns K"));
        }
        if args.dataset_sample.is_some() && args.dataset.is_none() {
            return Err(invalid(
                "--dataset-sample needs --dataset FILE (or --turns K)",
            ));
        }
        return Ok(None);
    };
    let refuse = |msg: &str| Err(invalid(msg));
    if turns == 0 {
        return refuse("--turns must be at least 1 (the number of user turns to replay)");
    }
    if let Some(load) = load {
        closed_loop(load, "--turns")?;
    }
    if args.depth.iter().any(|&d| d > 0) {
        return refuse(
            "--turns with --depth: the earlier turns are the cached context; drop one of them",
        );
    }
    if args.chat {
        return refuse("--turns applies the model's chat template itself, the same text for every backend; drop --chat");
    }
    if args.cache_bust {
        return refuse("--turns with --cache-bust: the prefix would sit between the cached turns and the new one; drop --cache-bust");
    }
    if !args.prompts.is_empty() || !args.prompt_tokens.is_empty() {
        return refuse("--turns replaces the prompt sets (the conversations' turns are the prompts): drop --prompts / --prompt-tokens");
    }
    let mut modes = Vec::new();
    for m in &args.turns_cache {
        let Some(mode) = TurnsCache::parse(m) else {
            return Err(invalid(format!(
                "--turns-cache {m}: use warm, cold or warm,cold"
            )));
        };
        if !modes.contains(&mode) {
            modes.push(mode);
        }
    }
    if modes.is_empty() {
        // A load run replays one cache state (its summary is over one workload): warm, as a
        // chat server sees it, unless --turns-cache says cold.
        modes = match load {
            Some(_) => vec![TurnsCache::Warm],
            None => vec![TurnsCache::Warm, TurnsCache::Cold],
        };
    }
    if load.is_some() && modes.len() > 1 {
        return refuse("a load run replays one cache state (one workload per run): --turns-cache warm or cold, and run again for the other");
    }
    let path = path_setting(&args.dataset, &None, "data/conversations.jsonl", cfg);
    Ok(Some(TurnsOptions {
        turns,
        modes,
        name: crate::bench::dataset::set_name(&path),
        path,
        sample: args.dataset_sample,
    }))
}
