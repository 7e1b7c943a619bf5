//! Llama 2/3, SmolLM, TinyLlama (`model_type: llama`) and Mistral (`mistral`), mirroring
//! transformers' `modeling_llama.py` and `modeling_mistral.py`.

use super::common::{base, opt_bool, opt_i64, LayerType, LlamaLike};
use super::ModelError;
use serde_json::Value;

/// Resolve a Llama or Mistral config.json.
pub fn config(cfg: &Value) -> Result<LlamaLike, ModelError> {
    let mut c = base(cfg)?;
    // LlamaAttention: q/k/v/o projections all take `bias=config.attention_bias`.
    let bias = opt_bool(cfg, "attention_bias").unwrap_or(false);
    c.qkv_bias = bias;
    c.o_bias = bias;
    // LlamaMLP: gate/up/down take `bias=config.mlp_bias`.
    c.mlp_bias = opt_bool(cfg, "mlp_bias").unwrap_or(false);
    // MistralAttention passes `sliding_window=config.sliding_window` to every layer (null: none).
    if let Some(w) = opt_i64(cfg, "sliding_window") {
        c.sliding_window = Some(w);
        c.layer_types = vec![LayerType::Sliding; c.n_layers as usize];
    }
    Ok(c)
}
