//! `ttft.toml`: the seed's settings in one file, every key overridable by the flag of the same name.
//!
//! Unknown keys and wrong types are errors naming the key and line, so a typo cannot silently fall
//! back to a default and change what is measured.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// The file's keys. All optional: a missing key keeps the built-in default.
#[derive(Debug, Default, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Backends to run: any of "hf", "inproc", "api", or "all".
    pub backends: Option<Vec<String>>,
    /// Hugging Face checkpoint for the `hf` baseline (folder or hub id).
    pub hf_model: Option<String>,
    /// Hub revision for a hub id.
    pub hf_revision: Option<String>,
    /// Device for hf: cpu, cuda, cuda:N, mps.
    pub device: Option<String>,
    /// dtype for hf: f32, f16, bf16.
    pub dtype: Option<String>,
    /// GEMM kernels for hf: auto, mkl, onednn, avx512.
    pub hf_kernels: Option<String>,
    /// GGUF model for `inproc` and the spawned server.
    pub gguf: Option<PathBuf>,
    /// An already running server; empty = spawn the vendored llama-server.
    pub api_url: Option<String>,
    /// Streaming endpoint: "completion" (native) or "v1" (OpenAI /v1/completions).
    pub api_endpoint: Option<crate::backend::api::Endpoint>,
    /// Model name for OpenAI requests and the spawned server's `--alias`.
    pub model_alias: Option<String>,
    /// The short prompt set.
    pub short_prompts: Option<PathBuf>,
    /// The long prompt set.
    pub long_prompts: Option<PathBuf>,
    /// Tokens generated per run (the first is the TTFT token).
    pub max_new_tokens: Option<u32>,
    /// Timed repetitions of each prompt.
    pub runs: Option<u32>,
    /// Untimed warm-up runs per backend and prompt set.
    pub warmup: Option<u32>,
    /// Threads for llama.cpp (both sides); 0 = all available cores.
    pub threads: Option<u32>,
    /// Context size in tokens (both sides).
    pub ctx_size: Option<u32>,
    /// Output folder for CSV, JSON and server logs.
    pub out: Option<PathBuf>,
    /// llama-server binary to spawn.
    pub server_bin: Option<PathBuf>,
    /// Layers to offload to a GPU (both sides).
    pub n_gpu_layers: Option<u32>,
}

/// A config file that cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// Cannot read the file.
    #[error("config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Bad TOML, unknown key or wrong type.
    #[error("config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message with the line and the key.
        message: String,
    },
}

/// A loaded config and the folder its relative paths are relative to.
#[derive(Debug, Clone, Default)]
pub struct LoadedConfig {
    /// The keys.
    pub file: FileConfig,
    /// The file, when one was read.
    pub path: Option<PathBuf>,
    /// Base for relative paths: the file's folder, or the current directory.
    pub base: PathBuf,
}

impl LoadedConfig {
    /// Resolve a path from the file relative to the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

/// Parse config text; errors carry toml's line/column and the offending key.
pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        let msg = e.message().trim().to_string();
        ConfigError::Parse {
            path: path.to_path_buf(),
            message: match line {
                Some(l) => format!("line {l}: {msg}"),
                None => msg,
            },
        }
    })
}

/// Load `explicit` if given, else `./ttft.toml` if it exists, else built-in defaults.
pub fn load(explicit: Option<&Path>) -> Result<LoadedConfig, ConfigError> {
    let path = match explicit {
        Some(p) => Some(p.to_path_buf()),
        None => {
            let p = PathBuf::from("ttft.toml");
            p.exists().then_some(p)
        }
    };
    let Some(path) = path else {
        return Ok(LoadedConfig {
            file: FileConfig::default(),
            path: None,
            base: PathBuf::from("."),
        });
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let file = parse(&text, &path)?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    Ok(LoadedConfig {
        file,
        path: Some(path),
        base,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_config_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("ttft.toml");
        let c = load(Some(&p)).unwrap();
        assert_eq!(c.file.max_new_tokens, Some(10));
        assert!(c
            .resolve(c.file.gguf.as_ref().unwrap())
            .ends_with("models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse("runs = 3\nrnus = 4\n", Path::new("t.toml")).unwrap_err();
        let s = e.to_string();
        assert!(s.contains("line 2"), "{s}");
        assert!(s.contains("rnus"), "{s}");
    }

    #[test]
    fn wrong_type_is_an_error() {
        let e = parse("runs = \"three\"\n", Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("line 1"), "{e}");
    }
}
