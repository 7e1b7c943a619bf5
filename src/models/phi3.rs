//! Phi-3 / Phi-3.5 / Phi-4-mini (`model_type: phi3`), mirroring transformers' `modeling_phi3.py`.

use super::common::{base, opt_i64, LayerType, LlamaLike};
use super::ModelError;
use serde_json::Value;

/// Resolve a Phi-3 config.json.
pub fn config(cfg: &Value) -> Result<LlamaLike, ModelError> {
    let mut c = base(cfg)?;
    // Phi3Attention: one `qkv_proj` (rows q, k, v) and Phi3MLP one `gate_up_proj` (gate, then up).
    c.fused_projections = true;
    // Phi3Attention passes `sliding_window=config.sliding_window` to every layer.
    if let Some(w) = opt_i64(cfg, "sliding_window") {
        c.sliding_window = Some(w);
        c.layer_types = vec![LayerType::Sliding; c.n_layers as usize];
    }
    // Partial rotary (`partial_rotary_factor`) and longrope (short/long factors chosen by sequence
    // length, cos/sin scaled by the attention factor) are handled by the RoPE module.
    Ok(c)
}
