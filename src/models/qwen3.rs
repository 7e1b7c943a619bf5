//! Qwen 3 (`model_type: qwen3`), mirroring transformers' `modeling_qwen3.py`.

use super::common::{base, opt_bool, opt_i64, LlamaLike};
use super::qwen2::qwen_layer_types;
use super::ModelError;
use serde_json::Value;

/// Resolve a Qwen 3 config.json.
pub fn config(cfg: &Value) -> Result<LlamaLike, ModelError> {
    let mut c = base(cfg)?;
    // Qwen3Attention: q/k/v/o projections take `bias=config.attention_bias`.
    let bias = opt_bool(cfg, "attention_bias").unwrap_or(false);
    c.qkv_bias = bias;
    c.o_bias = bias;
    // Qwen3Attention: `q_norm` / `k_norm` (Qwen3RMSNorm over head_dim) before RoPE.
    c.qk_norm = true;
    c.layer_types = qwen_layer_types(cfg, c.n_layers)?;
    c.sliding_window = opt_i64(cfg, "sliding_window");
    Ok(c)
}
