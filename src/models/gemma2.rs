//! Gemma 2 (`model_type: gemma2`), mirroring transformers' `modeling_gemma2.py`.

use super::common::{act, base, layer_types, opt_bool, opt_f64, opt_i64, LayerType, LlamaLike};
use super::ModelError;
use serde_json::Value;

/// Resolve a Gemma 2 config.json.
pub fn config(cfg: &Value) -> Result<LlamaLike, ModelError> {
    let mut c = base(cfg)?;
    c.act = act(
        cfg,
        &["hidden_activation", "hidden_act"],
        "gelu_pytorch_tanh",
    )?;
    // Gemma2RMSNorm: `(1 + weight)`, in f32.
    c.norm_one_plus = true;
    // Gemma2Model: embeddings times sqrt(hidden_size) cast to the model dtype.
    c.embed_scale = true;
    c.tie = opt_bool(cfg, "tie_word_embeddings").unwrap_or(true);
    let bias = opt_bool(cfg, "attention_bias").unwrap_or(false);
    c.qkv_bias = bias;
    c.o_bias = bias;
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
