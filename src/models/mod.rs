//! Transformer architectures written in this project, run on libtorch through tch: one file per
//! architecture, shared layers in `layers`, RoPE variants in `rope`, checkpoint loading in
//! `weights`. transformers is the numerical oracle (tests/suite/hf_parity.rs).

pub mod common;
pub mod dense;
pub mod fused_layer;
pub mod gemma;
pub mod gemma2;
pub mod gemma3;
pub mod gpt2;
pub mod gpt_neox;
pub mod layer_ops;
pub mod layers;
pub mod limits;
pub mod llama;
pub mod norm;
pub mod onednn;
pub mod phi3;
pub mod probe;
pub mod qwen2;
pub mod qwen3;
pub mod rope;
pub mod weights;

use layers::Decoder;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};
use thiserror::Error;
use weights::Weights;

/// `model_type` values this project implements.
pub const SUPPORTED: &[&str] = &[
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma",
    "gemma2",
    "gemma3_text",
    "gpt2",
    "gpt_neox",
    "phi3",
];

/// Why a checkpoint cannot be loaded. Every message names the file or tensor.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A file is missing or unreadable.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A tensor the architecture needs is absent.
    #[error("tensor `{name}` is missing from the checkpoint ({files})")]
    MissingTensor {
        /// HF tensor name.
        name: String,
        /// The safetensors files searched.
        files: String,
    },
    /// A tensor has the wrong shape for config.json.
    #[error("tensor `{name}` has shape {got:?} but config.json implies {want:?}")]
    Shape {
        /// HF tensor name.
        name: String,
        /// Shape in the file.
        got: Vec<i64>,
        /// Shape expected.
        want: Vec<i64>,
    },
    /// config.json names an architecture this project does not implement.
    #[error("config.json: model_type `{0}` is not supported (supported: {supported})", supported = SUPPORTED.join(", "))]
    UnknownArchitecture(String),
    /// config.json is missing a field or has a bad value.
    #[error("config.json: {0}")]
    Config(String),
    /// libtorch failed.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

impl ModelError {
    /// A file-level error.
    pub fn file(path: &Path, msg: impl ToString) -> Self {
        ModelError::File {
            path: path.to_path_buf(),
            msg: msg.to_string(),
        }
    }
}

/// A loaded model and what it is.
pub struct LoadedModel {
    /// The network.
    pub decoder: Decoder,
    /// config.json's model_type.
    pub model_type: String,
    /// Parameters in the checkpoint.
    pub n_params: i64,
    /// What the prefill-FLOPs formula needs.
    pub shape: crate::report::flops::ModelShape,
}

/// Read config.json (a JSON object).
pub fn read_config(dir: &Path) -> Result<serde_json::Value, ModelError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| ModelError::file(&path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::file(&path, format!("not valid JSON: {e}")))?;
    if !v.is_object() {
        return Err(ModelError::file(&path, "not a JSON object"));
    }
    Ok(v)
}

/// Load the checkpoint in `dir` on `device` in `kind`.
pub fn load(dir: &Path, device: Device, kind: Kind) -> Result<LoadedModel, ModelError> {
    let cfg = read_config(dir)?;
    let model_type = cfg
        .get("model_type")
        .and_then(|v| v.as_str())
        .ok_or_else(|| ModelError::Config("no `model_type`".into()))?
        .to_string();
    if !SUPPORTED.contains(&model_type.as_str()) {
        return Err(ModelError::UnknownArchitecture(model_type));
    }
    let w = Weights::load(dir, device, kind)?;
    let n_params = w.numel();
    let decoder = match model_type.as_str() {
        "llama" | "mistral" => common::build(&cfg, &llama::config(&cfg)?, &w)?,
        "qwen2" => common::build(&cfg, &qwen2::config(&cfg)?, &w)?,
        "qwen3" => common::build(&cfg, &qwen3::config(&cfg)?, &w)?,
        "gemma" => common::build(&cfg, &gemma::config(&cfg)?, &w)?,
        "gemma2" => common::build(&cfg, &gemma2::config(&cfg)?, &w)?,
        "gemma3_text" => common::build(&cfg, &gemma3::config(&cfg)?, &w)?,
        "phi3" => common::build(&cfg, &phi3::config(&cfg)?, &w)?,
        "gpt2" => gpt2::build(&cfg, &w)?,
        "gpt_neox" => gpt_neox::build(&cfg, &w)?,
        other => return Err(ModelError::UnknownArchitecture(other.to_string())),
    };
    let shape = shape_of(&decoder, n_params, w.contains("lm_head.weight"));
    Ok(LoadedModel {
        decoder,
        model_type,
        n_params,
        shape,
    })
}

/// The model's shape from the built network: the embedding table (and GPT-2's position table)
/// are lookups; the LM head is left out of the per-token parameters when the checkpoint stores
/// it (`head_in_file`), since it is the embedding table itself otherwise.
fn shape_of(d: &Decoder, n_params: i64, head_in_file: bool) -> crate::report::flops::ModelShape {
    let size = |t: &tch::Tensor| t.size().iter().product::<i64>() as f64;
    let dims = d.embed.size();
    let (vocab, d_model) = (
        dims.first().copied().unwrap_or(0),
        dims.get(1).copied().unwrap_or(0),
    );
    let d_attn = d
        .blocks
        .first()
        .map_or(d_model, |b| b.attn.n_heads * b.attn.head_dim);
    let embedding = size(&d.embed) + d.pos_embed.as_ref().map_or(0.0, size);
    let u = |x: i64| u32::try_from(x).unwrap_or(u32::MAX);
    crate::report::flops::ModelShape::from_counts(
        n_params as f64,
        u(d.blocks.len() as i64),
        u(d_model),
        u(d_attn),
        u(vocab),
        embedding,
        !head_in_file,
    )
}
