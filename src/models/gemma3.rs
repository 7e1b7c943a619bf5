//! Gemma 3 text models (`model_type: gemma3_text`), mirroring transformers' `modeling_gemma3.py`
//! (`Gemma3ForCausalLM`).

use super::common::{layer_types, opt_f64, opt_i64, LayerType, LlamaLike};
use super::ModelError;
use serde_json::Value;

/// Resolve a Gemma 3 text config.json.
pub fn config(cfg: &Value) -> Result<LlamaLike, ModelError> {
    // Gemma's quirks carry over; Gemma3RMSNorm's `(1 + weight)` also applies to q_norm/k_norm.
    let mut c = super::gemma::config(cfg)?;
    // Gemma3DecoderLayer: same four norms per layer as Gemma 2.
    c.sandwich = true;
    // Gemma3Attention: q_norm / k_norm over head_dim before RoPE.
    c.qk_norm = true;
    c.scale = opt_f64(cfg, "query_pre_attn_scalar")
        .unwrap_or(c.head_dim as f64)
        .powf(-0.5);
    // Gemma3Attention stores `attn_logit_softcapping` but never passes it to the attention
    // function: no attention soft-cap, whatever the config says.
    c.attn_softcap = None;
    // Gemma3ForCausalLM does apply `final_logit_softcapping` when set.
    c.final_softcap = opt_f64(cfg, "final_logit_softcapping");
    // Gemma3TextConfig: sliding unless `(i + 1) % sliding_window_pattern == 0` (default pattern 6).
    let pattern = opt_i64(cfg, "sliding_window_pattern").unwrap_or(6).max(1);
    c.layer_types = layer_types(cfg, c.n_layers, |i| {
        if (i + 1) % pattern != 0 {
            LayerType::Sliding
        } else {
            LayerType::Full
        }
    })?;
    c.sliding_window = opt_i64(cfg, "sliding_window");
    // Gemma3RotaryEmbedding: one frequency table per layer type (local base on sliding layers,
    // global base and scaling on full layers).
    c.rope_per_layer_type = true;
    Ok(c)
}
