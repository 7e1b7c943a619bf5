//! Qwen 2 / 2.5 (`model_type: qwen2`), mirroring transformers' `modeling_qwen2.py`.

use super::common::{base, layer_types, opt_bool, opt_i64, LayerType, LlamaLike};
use super::ModelError;
use serde_json::Value;

/// Layer types as Qwen2Config computes them when config.json has none: sliding from
/// `max_window_layers` on, only when `use_sliding_window` is set.
pub fn qwen_layer_types(cfg: &Value, n_layers: i64) -> Result<Vec<LayerType>, ModelError> {
    let use_sliding = opt_bool(cfg, "use_sliding_window").unwrap_or(false);
    let max_window_layers = opt_i64(cfg, "max_window_layers").unwrap_or(n_layers);
    layer_types(cfg, n_layers, |i| {
        if use_sliding && i >= max_window_layers {
            LayerType::Sliding
        } else {
            LayerType::Full
        }
    })
}

/// Resolve a Qwen 2 config.json.
pub fn config(cfg: &Value) -> Result<LlamaLike, ModelError> {
    let mut c = base(cfg)?;
    // Qwen2Attention: q/k/v projections always have a bias, o_proj never.
    c.qkv_bias = true;
    c.o_bias = false;
    c.layer_types = qwen_layer_types(cfg, c.n_layers)?;
    // Only layers of type "sliding_attention" get `config.sliding_window`.
    c.sliding_window = opt_i64(cfg, "sliding_window");
    Ok(c)
}
