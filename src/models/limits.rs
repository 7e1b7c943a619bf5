//! What a checkpoint's config.json says about the longest sequence the architecture can run, read
//! before anything is timed so a prompt that cannot fit is named (or skipped) instead of failing
//! inside libtorch.

use serde_json::Value;

/// A hard limit on positions: prompt tokens + new tokens must not exceed `tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PositionLimit {
    /// The most positions the model can run.
    pub tokens: u32,
    /// The config.json field it comes from (for the message).
    pub field: &'static str,
}

/// The position limit of `cfg`'s architecture, where it has one:
/// - GPT-2: learned absolute positions, a table of `n_positions` rows (`n_ctx` in old configs);
///   a position past it indexes outside the table and libtorch fails.
/// - GPT-NeoX: `max_position_embeddings` (2048 by default, as transformers' config), the length
///   it was trained for; its rotary table is computed on the fly here, but past that the model
///   is off its training distribution, so the number would not be a measurement of that model.
///
/// The other architectures compute RoPE per position (with the config's scaling: linear,
/// dynamic NTK, YaRN, LongRoPE, Llama 3) and have no table to run off; like transformers, they
/// are not refused.
pub fn position_limit(cfg: &Value) -> Option<PositionLimit> {
    let int = |k: &'static str| {
        cfg.get(k).and_then(Value::as_u64).map(|n| PositionLimit {
            tokens: u32::try_from(n).unwrap_or(u32::MAX),
            field: k,
        })
    };
    match cfg.get("model_type").and_then(Value::as_str)? {
        "gpt2" => int("n_positions").or_else(|| int("n_ctx")),
        "gpt_neox" => int("max_position_embeddings").or(Some(PositionLimit {
            tokens: 2048,
            field: "max_position_embeddings",
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn learned_and_trained_limits_are_read_and_rope_models_have_none() {
        let gpt2 = json!({"model_type": "gpt2", "n_positions": 64});
        assert_eq!(
            position_limit(&gpt2),
            Some(PositionLimit {
                tokens: 64,
                field: "n_positions"
            })
        );
        let old = json!({"model_type": "gpt2", "n_ctx": 1024});
        assert_eq!(position_limit(&old).map(|l| l.field), Some("n_ctx"));
        let neox = json!({"model_type": "gpt_neox"});
        assert_eq!(position_limit(&neox).map(|l| l.tokens), Some(2048));
        let llama = json!({"model_type": "llama", "max_position_embeddings": 8192});
        assert_eq!(position_limit(&llama), None);
    }
}
