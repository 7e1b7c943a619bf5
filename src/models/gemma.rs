//! Gemma (`model_type: gemma`), mirroring transformers' `modeling_gemma.py`.

use super::common::{act, base, opt_bool, LlamaLike};
use super::ModelError;
use serde_json::Value;

/// Resolve a Gemma config.json.
pub fn config(cfg: &Value) -> Result<LlamaLike, ModelError> {
    let mut c = base(cfg)?;
    // GemmaMLP uses `config.hidden_act` (older configs: `hidden_activation`), tanh-approximated GELU.
    c.act = act(
        cfg,
        &["hidden_activation", "hidden_act"],
        "gelu_pytorch_tanh",
    )?;
    // GemmaRMSNorm: `output * (1.0 + self.weight.float())`, computed in f32.
    c.norm_one_plus = true;
    // GemmaModel: `hidden_states * normalizer`, normalizer = sqrt(hidden_size) in the model dtype.
    c.embed_scale = true;
    // GemmaForCausalLM ties lm_head to embed_tokens by default.
    c.tie = opt_bool(cfg, "tie_word_embeddings").unwrap_or(true);
    let bias = opt_bool(cfg, "attention_bias").unwrap_or(false);
    c.qkv_bias = bias;
    c.o_bias = bias;
    Ok(c)
}
