//! Gemma 2 (`model_type: gemma2`), mirroring transformers' `modeling_gemma2.py`.

use super::common::{layer_types, opt_f64, opt_i64, LayerType, LlamaLike};
use super::ModelError;
use serde_json::Value;

/// Resolve a Gemma 2 config.json.
pub fn config(cfg: &Value) -> Result<LlamaLike, ModelError> {
    // Gemma's quirks ((1 + weight) norms, sqrt(hidden) embedding scale, tied head) carry over.
    let mut c = super::gemma::config(cfg)?;
    // Gemma2DecoderLayer: post_attention_layernorm and pre/post_feedforward_layernorm around the MLP.
    c.sandwich = true;
    // Gemma2Attention: `self.scaling = config.query_pre_attn_scalar**-0.5`.
    let qpas = opt_f64(cfg, "query_pre_attn_scalar").unwrap_or(c.head_dim as f64);
    c.scale = qpas.powf(-0.5);
    // eager_attention_forward: scores soft-capped by `attn_logit_softcapping` before the mask.
    c.attn_softcap = opt_f64(cfg, "attn_logit_softcapping");
    // Gemma2ForCausalLM: `logits = tanh(logits / cap) * cap` with `final_logit_softcapping`.
    c.final_softcap = opt_f64(cfg, "final_logit_softcapping");
    // Gemma2Config: layer i is sliding when `(i + 1) % 2` (even layers), unless layer_types says otherwise.
    c.layer_types = layer_types(cfg, c.n_layers, |i| {
        if (i + 1) % 2 != 0 {
            LayerType::Sliding
        } else {
            LayerType::Full
        }
    })?;
    c.sliding_window = opt_i64(cfg, "sliding_window");
    Ok(c)
}
