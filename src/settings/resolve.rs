//! `Settings::resolve`: flag, else config key, else built-in default, for every setting, and every
//! check that needs no file or server (those are in `app::prepare`).

use super::grid::{self, Grid, SettingsPoint};
use super::workload;
use super::{
    is_hub_id, parse_backends, ApiOptions, DatasetOptions, LoadOptions, OutputOptions,
    PromptSource, Settings, SettingsError, DEFAULT_N_GPU_LAYERS,
};
use crate::backend::api::Endpoint;
use crate::backend::{BackendKind, FlashAttn, KV_CACHE_TYPES};
use crate::bench::load::LoadMode;
use crate::bench::load_search::SearchOptions;
use crate::bench::prompts::split_prompt_arg;
use crate::cli::RunArgs;
use crate::config::LoadedConfig;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

pub(super) fn invalid(msg: impl Into<String>) -> SettingsError {
    SettingsError::Invalid(msg.into())
}

/// A list flag, else the config's single value, else the default.
fn list<T: Clone>(flag: &[T], key: Option<T>, default: T) -> Vec<T> {
    if flag.is_empty() {
        vec![key.unwrap_or(default)]
    } else {
        flag.to_vec()
    }
}

impl Settings {
    /// Merge built-in defaults, the config file and the flags, and check them.
    pub fn resolve(args: &RunArgs, cfg: &LoadedConfig) -> Result<Settings, SettingsError> {
        let f = &cfg.file;
        let backends = parse_backends(&if args.backend.is_empty() {
            f.backends.clone().unwrap_or_else(|| vec!["all".into()])
        } else {
            args.backend.clone()
        })?;
        for k in &backends {
            if !k.is_built() {
                return Err(invalid(format!("--backend {k}: {}", k.not_built_reason())));
            }
        }
        let max_new_tokens = args.max_new_tokens.or(f.max_new_tokens).unwrap_or(10);
        if max_new_tokens == 0 {
            return Err(invalid(
                "--max-new-tokens must be at least 1 (the first token ends TTFT)",
            ));
        }
        let runs = args.runs.or(f.runs).unwrap_or(3);
        if runs == 0 {
            return Err(invalid("--runs must be at least 1"));
        }
        let api = api_options(args, cfg)?;
        let grid = grid(args, cfg)?;
        grid.check_scopes(&backends, api.url.is_none())
            .map_err(invalid)?;
        let load = load_options(args)?;
        workload::check_depth(args, load.as_ref())?;
        let turns = workload::turns(args, cfg, load.as_ref())?;
        // --turns: the conversations' turns are the only prompt set (built in prepare).
        let (prompts, dataset) = match turns {
            Some(_) => (PromptSource::Files(Vec::new()), None),
            None => (prompt_source(args, cfg), dataset(args)?),
        };
        let points = grid.points();
        check_combinations(args, &backends, &api, load.is_some(), &points)?;
        Ok(Settings {
            backends,
            points,
            grid,
            hf_revision: args.hf_revision.clone().or_else(|| f.hf_revision.clone()),
            device: args
                .device
                .clone()
                .or_else(|| f.device.clone())
                .unwrap_or_else(|| "cpu".into()),
            prompts,
            dataset,
            turns,
            runs,
            min_time_s: args.min_time.max(0.0),
            warmup: args.warmup.or(f.warmup).unwrap_or(1),
            max_new_tokens,
            ignore_eos: args.ignore_eos,
            seed: args.seed,
            chat: args.chat,
            skip_too_long: args.skip_too_long,
            ignore_position_limit: args.ignore_position_limit,
            strict_parity: args.strict_parity,
            cache_bust: match (args.cache_bust, args.no_cache_bust) {
                (true, _) => Some(true),
                (false, true) => Some(false),
                (false, false) => None,
            },
            depths: args.depth.clone(),
            depth_doc: args
                .depth_doc
                .clone()
                .unwrap_or_else(|| PathBuf::from("data/depth_context.txt")),
            api,
            load,
            output: output_options(args, cfg),
            config: cfg.path.clone(),
            base: cfg.base.clone(),
        })
    }
}

/// Where and how reports are written.
fn output_options(args: &RunArgs, cfg: &LoadedConfig) -> OutputOptions {
    OutputOptions {
        out: path_setting(&args.out, &cfg.file.out, "results", cfg),
        export_markdown: args.export_markdown.clone(),
        breakdown: args.breakdown,
        per_prompt: args.per_prompt,
        progress: !args.no_progress && args.verbose == 0 && std::io::stderr().is_terminal(),
        verbose: args.verbose,
    }
}

/// Flags that are each valid but not together (load runs, the cache-bust prefix, RPC with an
/// external server, a grid in a load run): one line each, before anything starts.
fn check_combinations(
    args: &RunArgs,
    backends: &[BackendKind],
    api: &ApiOptions,
    load: bool,
    points: &[SettingsPoint],
) -> Result<(), SettingsError> {
    if load && backends != [BackendKind::Api] {
        return Err(invalid(
            "--concurrency / --request-rate load the api backend only: add --backend api",
        ));
    }
    if load && args.cache_bust {
        return Err(invalid(
            "--cache-bust applies to single runs; a load run (--concurrency / --request-rate) sends the prompts as they are: drop one of them",
        ));
    }
    if (!api.rpc.is_empty() || api.spawn_rpc > 0) && api.url.is_some() {
        return Err(invalid(
            "--rpc / --spawn-rpc configure the spawned llama-server; drop them with --api-url",
        ));
    }
    let api_points = grid::points_for(points, BackendKind::Api, api.url.is_none()).len();
    if load && api_points > 1 {
        return Err(invalid(format!(
            "--concurrency / --request-rate measure one settings point, and these lists give {api_points}: pass single values"
        )));
    }
    Ok(())
}

pub(super) fn path_setting(
    flag: &Option<PathBuf>,
    key: &Option<PathBuf>,
    default: &str,
    cfg: &LoadedConfig,
) -> PathBuf {
    match (flag, key) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => cfg.resolve(p),
        (None, None) => cfg.resolve(Path::new(default)),
    }
}

fn prompt_source(args: &RunArgs, cfg: &LoadedConfig) -> PromptSource {
    if !args.prompt_tokens.is_empty() {
        return PromptSource::Synthetic {
            lengths: args.prompt_tokens.clone(),
        };
    }
    if !args.prompts.is_empty() || args.dataset.is_some() {
        // A dataset replaces the config's prompt files, as --prompts does.
        return PromptSource::Files(args.prompts.iter().map(|a| split_prompt_arg(a)).collect());
    }
    let f = &cfg.file;
    PromptSource::Files(vec![
        (
            "short".into(),
            path_setting(&None, &f.short_prompts, "data/short_prompts.txt", cfg),
        ),
        (
            "long".into(),
            path_setting(&None, &f.long_prompts, "data/long_prompts.txt", cfg),
        ),
    ])
}

/// `--dataset` (its file is read in prepare, so a bad line is reported before timing).
fn dataset(args: &RunArgs) -> Result<Option<DatasetOptions>, SettingsError> {
    let Some(path) = &args.dataset else {
        return Ok(None);
    };
    if !args.prompt_tokens.is_empty() {
        return Err(invalid(
            "--dataset and --prompt-tokens exclude each other (synthetic prompts replace every prompt set): drop one",
        ));
    }
    let name = crate::bench::dataset::set_name(path);
    if let Some(p) = args.prompts.iter().find(|a| split_prompt_arg(a).0 == name) {
        return Err(invalid(format!(
            "--dataset {}: its set name \"{name}\" is also --prompts {p}: name the prompt set (--prompts OTHER=FILE)",
            path.display()
        )));
    }
    Ok(Some(DatasetOptions {
        path: path.clone(),
        name,
        sample: args.dataset_sample,
    }))
}

/// The hf checkpoint: a flag as given; a config value relative to the config's folder unless it
/// is a hub id.
fn hf_models(args: &RunArgs, cfg: &LoadedConfig) -> Vec<String> {
    if !args.hf_model.is_empty() {
        return args.hf_model.clone();
    }
    let m = cfg
        .file
        .hf_model
        .clone()
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct-hf".into());
    let local = cfg.resolve(Path::new(&m));
    if local.exists() || !is_hub_id(&m, &cfg.base) {
        vec![local.display().to_string()]
    } else {
        vec![m]
    }
}

fn grid(args: &RunArgs, cfg: &LoadedConfig) -> Result<Grid, SettingsError> {
    let f = &cfg.file;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let gguf = if args.gguf.is_empty() {
        vec![path_setting(
            &None,
            &f.gguf,
            "models/SmolLM2-135M-Instruct.Q4_1.gguf",
            cfg,
        )]
    } else {
        args.gguf.clone()
    };
    let kv = |flag: &[String], name: &str| -> Result<Vec<String>, SettingsError> {
        let v = list(flag, None, "f16".to_string());
        match v.iter().find(|t| !KV_CACHE_TYPES.contains(&t.as_str())) {
            Some(bad) => Err(invalid(format!(
                "--{name} {bad}: not a KV cache type (choose from {})",
                KV_CACHE_TYPES.join(", ")
            ))),
            None => Ok(v),
        }
    };
    let positive = |v: Vec<u32>, flag: &str| -> Result<Vec<u32>, SettingsError> {
        match v.contains(&0) {
            true => Err(invalid(format!("--{flag} must be at least 1"))),
            false => Ok(v),
        }
    };
    Ok(Grid {
        gguf,
        hf_model: hf_models(args, cfg),
        threads: list(&args.threads, f.threads, 0)
            .into_iter()
            .map(|n| if n == 0 { cores } else { n })
            .collect(),
        ctx_size: positive(list(&args.ctx_size, f.ctx_size, 2048), "ctx-size")?,
        batch_size: match args.batch_size.as_slice() {
            [] => vec![None],
            v => positive(v.to_vec(), "batch-size")?
                .into_iter()
                .map(Some)
                .collect(),
        },
        ubatch_size: match args.ubatch_size.as_slice() {
            [] => vec![None],
            v => positive(v.to_vec(), "ubatch-size")?
                .into_iter()
                .map(Some)
                .collect(),
        },
        n_gpu_layers: list(&args.n_gpu_layers, f.n_gpu_layers, DEFAULT_N_GPU_LAYERS),
        flash_attn: list(&args.flash_attn, None, FlashAttn::Auto),
        cache_type_k: kv(&args.cache_type_k, "cache-type-k")?,
        cache_type_v: kv(&args.cache_type_v, "cache-type-v")?,
        dtype: list(&args.dtype, f.dtype.clone(), "f32".to_string()),
        hf_kernels: list(&args.hf_kernels, f.hf_kernels.clone(), "auto".to_string()),
    })
}

fn api_options(args: &RunArgs, cfg: &LoadedConfig) -> Result<ApiOptions, SettingsError> {
    let f = &cfg.file;
    let key =
        crate::secret::api_key(args.api_key_file.as_deref()).map_err(SettingsError::ApiKey)?;
    let (api_key, api_key_source) = match key {
        Some((k, s)) => (Some(k), Some(s)),
        None => (None, None),
    };
    for (flag, v) in [
        ("--connect-timeout", args.connect_timeout),
        ("--first-token-timeout", args.first_token_timeout),
        ("--request-timeout", args.request_timeout),
        ("--prepare-timeout", args.prepare_timeout),
    ] {
        if !(v > 0.0 && v.is_finite()) {
            return Err(invalid(format!(
                "{flag} must be a positive number of seconds"
            )));
        }
    }
    Ok(ApiOptions {
        url: args
            .api_url
            .clone()
            .or_else(|| f.api_url.clone())
            .filter(|u| !u.trim().is_empty()),
        endpoint: if args.chat {
            Endpoint::Chat
        } else {
            args.api_endpoint
                .or(f.api_endpoint)
                .unwrap_or(Endpoint::Completion)
        },
        flavor: args.api_flavor,
        api_model: args.api_model.clone(),
        model_alias: args
            .model_alias
            .clone()
            .or_else(|| f.model_alias.clone())
            .unwrap_or_else(|| "default".into()),
        server_bin: path_setting(
            &args.server_bin,
            &f.server_bin,
            "vendor/bin/llama-server",
            cfg,
        ),
        allow_commit_mismatch: args.allow_commit_mismatch,
        connect_timeout_s: args.connect_timeout,
        fresh_connection: args.fresh_connection,
        ca_cert: ca_cert(args)?,
        first_token_timeout_s: args.first_token_timeout,
        request_timeout_s: args.request_timeout,
        prepare_timeout_s: args.prepare_timeout,
        server_port: args.server_port,
        server_slots: match (args.concurrency.iter().max(), args.request_rate.is_empty()) {
            (Some(&n), _) => n.max(1),
            (None, false) => args.server_slots.unwrap_or(4).max(1),
            (None, true) => 1,
        },
        rpc: args.rpc.clone(),
        spawn_rpc: args.spawn_rpc,
        api_key,
        api_key_source,
    })
}

/// `--api-ca-cert`: a readable file (its PEM is parsed when the api backend opens).
fn ca_cert(args: &RunArgs) -> Result<Option<PathBuf>, SettingsError> {
    let Some(f) = &args.api_ca_cert else {
        return Ok(None);
    };
    if let Err(e) = std::fs::metadata(f) {
        return Err(invalid(format!(
            "--api-ca-cert {}: {e} (give a PEM file with the server's certificate or CA)",
            f.display()
        )));
    }
    Ok(Some(f.clone()))
}

fn load_options(args: &RunArgs) -> Result<Option<LoadOptions>, SettingsError> {
    let search = match &args.max_goodput {
        Some(s) => Some(search_options(s, args)?),
        None => None,
    };
    let points: Vec<LoadMode> = match (&args.concurrency[..], &args.request_rate[..]) {
        ([], []) if search.is_some() => vec![LoadMode::Open {
            rate: 1.0,
            burstiness: args.burstiness,
        }],
        ([], []) if args.repeat != 1 => {
            return Err(invalid("--repeat repeats load points: give --concurrency, --request-rate or --max-goodput (single runs repeat with --runs)"))
        }
        ([], []) => return Ok(None),
        ([_, ..], [_, ..]) => {
            return Err(invalid(
                "--concurrency and --request-rate exclude each other",
            ))
        }
        (ns, []) if ns.contains(&0) => return Err(invalid("--concurrency must be at least 1")),
        (ns, []) => ns
            .iter()
            .map(|&n| LoadMode::Closed { concurrency: n })
            .collect(),
        (_, rs) if rs.iter().any(|&r| !(r > 0.0 && r.is_finite())) || args.burstiness <= 0.0 => {
            return Err(invalid("--request-rate and --burstiness must be positive"))
        }
        (_, rs) => rs
            .iter()
            .map(|&rate| LoadMode::Open {
                rate,
                burstiness: args.burstiness,
            })
            .collect(),
    };
    let slo = match &args.slo {
        Some(s) => crate::bench::load::parse_slo(s).map_err(invalid)?,
        None => Default::default(),
    };
    if search.is_some() && points.len() > 1 {
        return Err(invalid("--max-goodput searches from one start: give one --request-rate or --concurrency value (or none: from 1 req/s)"));
    }
    if args.repeat == 0 {
        return Err(invalid("--repeat must be at least 1"));
    }
    Ok(Some(LoadOptions {
        search,
        points,
        repeat: args.repeat,
        num_requests: args.num_requests,
        duration_s: args.duration,
        slo,
    }))
}

/// `--max-goodput` and `--goodput-tolerance`.
fn search_options(s: &str, args: &RunArgs) -> Result<SearchOptions, SettingsError> {
    let objectives = crate::bench::load_search::parse_objectives(s).map_err(invalid)?;
    let tolerance = args.goodput_tolerance;
    if !(tolerance > 0.0 && tolerance < 1.0) {
        return Err(invalid(
            "--goodput-tolerance must be between 0 and 1 (a fraction of the rate, e.g. 0.1)",
        ));
    }
    Ok(SearchOptions {
        objectives,
        tolerance,
        max_probes: 12,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Flags as clap parses them (with clap's defaults, which `RunArgs::default()` lacks).
    fn args(backend: &str) -> RunArgs {
        use clap::Parser;
        crate::cli::Cli::parse_from(["ttft", "--backend", backend]).run
    }

    #[test]
    fn a_load_run_measures_one_point() {
        let cfg = LoadedConfig::default();
        let mut a = args("api");
        a.concurrency = vec![2];
        a.threads = vec![1, 2];
        let e = Settings::resolve(&a, &cfg).unwrap_err().to_string();
        assert!(e.contains("one settings point") && e.contains("2"), "{e}");
        a.threads = vec![2];
        assert_eq!(Settings::resolve(&a, &cfg).unwrap().points.len(), 1);
    }

    #[test]
    fn repeat_needs_a_load_run_and_at_least_one() {
        let cfg = LoadedConfig::default();
        let mut a = args("api");
        a.repeat = 3;
        let e = Settings::resolve(&a, &cfg).unwrap_err().to_string();
        assert!(
            e.contains("--repeat repeats load points") && e.contains("--runs"),
            "{e}"
        );
        a.request_rate = vec![1.0, 2.0];
        let load = Settings::resolve(&a, &cfg).unwrap().load.unwrap();
        assert_eq!((load.repeat, load.points.len()), (3, 2));
        a.repeat = 0;
        let e = Settings::resolve(&a, &cfg).unwrap_err().to_string();
        assert!(e.contains("--repeat must be at least 1"), "{e}");
    }

    #[test]
    fn the_cache_bust_flags_force_it_either_way_and_exclude_each_other() {
        use clap::Parser;
        let cfg = LoadedConfig::default();
        let parse = |extra: &[&str]| {
            let mut v = vec!["ttft", "--backend", "api"];
            v.extend(extra);
            crate::cli::Cli::try_parse_from(v).map(|c| c.run)
        };
        let bust = |extra: &[&str]| {
            Settings::resolve(&parse(extra).unwrap(), &cfg)
                .unwrap()
                .cache_bust
        };
        assert_eq!(bust(&[]), None, "decided by the flavor in prepare");
        assert_eq!(bust(&["--cache-bust"]), Some(true));
        assert_eq!(bust(&["--no-cache-bust"]), Some(false));
        assert!(parse(&["--cache-bust", "--no-cache-bust"]).is_err());
        let load = parse(&["--cache-bust", "--concurrency", "2"]).unwrap();
        let e = Settings::resolve(&load, &cfg).unwrap_err().to_string();
        assert!(e.starts_with("--cache-bust applies to single runs"), "{e}");
    }

    #[test]
    fn a_dataset_replaces_the_config_prompts_and_refuses_clashes() {
        use clap::Parser;
        let cfg = LoadedConfig::default();
        let parse = |extra: &[&str]| {
            let mut v = vec!["ttft", "--backend", "api"];
            v.extend(extra);
            crate::cli::Cli::try_parse_from(v).map(|c| c.run)
        };
        let e = Settings::resolve(&parse(&["--dataset-sample", "3"]).unwrap(), &cfg).unwrap_err();
        assert!(e.to_string().contains("needs --dataset"), "{e}");
        let s = Settings::resolve(
            &parse(&["--dataset", "data/chats.jsonl", "--dataset-sample", "3"]).unwrap(),
            &cfg,
        )
        .unwrap();
        assert_eq!(s.prompts, PromptSource::Files(vec![]));
        let d = s.dataset.unwrap();
        assert_eq!((d.name.as_str(), d.sample), ("chats", Some(3)));
        let e = Settings::resolve(
            &parse(&["--dataset", "x.jsonl", "--prompt-tokens", "16"]).unwrap(),
            &cfg,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("exclude each other"), "{e}");
        let e = Settings::resolve(
            &parse(&[
                "--dataset",
                "d/long.jsonl",
                "--prompts",
                "data/long_prompts.txt",
            ])
            .unwrap(),
            &cfg,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"long\" is also --prompts"), "{e}");
    }

    #[test]
    fn lists_become_points_and_bad_values_name_their_flag() {
        let cfg = LoadedConfig::default();
        let mut a = args("api");
        a.threads = vec![1, 2];
        a.ctx_size = vec![1024, 2048];
        let s = Settings::resolve(&a, &cfg).unwrap();
        assert_eq!(s.points.len(), 4);
        assert_eq!(s.points[1].llama.ctx_size, 2048);
        assert_eq!(s.points[1].llama.batch, 2048);
        assert_eq!(
            s.points[0].llama.batch, 1024,
            "batch defaults to min(2048, ctx)"
        );
        a.cache_type_k = vec!["q9".into()];
        let e = Settings::resolve(&a, &cfg).unwrap_err().to_string();
        assert!(e.starts_with("--cache-type-k q9"), "{e}");
    }
}
