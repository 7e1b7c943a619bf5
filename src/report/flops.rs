//! The FLOPs of one prefill, for the achieved prefill TFLOP/s in the summaries.
//!
//! A forward pass over `n` prompt tokens that keeps only the last position's logits costs
//!
//! `2 · P_ne · n  +  2 · d_model · vocab  +  n_layers · 2 · n² · d_attn`
//!
//! - `P_ne`: the non-embedding parameters (all parameters less the token embedding table, a
//!   learned position table, and an untied LM head): every one is a multiply-add per token.
//!   An embedding lookup is a copy, not arithmetic, so counting the table (as `2 · P · n` does)
//!   inflates small-vocabulary-heavy models (≈ 25 % for SmolLM2-135M);
//! - the LM head for one position (`2 · d_model · vocab`): ttft's backends compute logits for
//!   the last position only, not for every prompt token;
//! - causal attention: `Q·Kᵀ` and `A·V` are `2 · n² · d_attn` each for full attention, half that
//!   with the causal mask, per layer (`d_attn` = query heads × head dim). Sliding-window layers
//!   are counted as full: an upper bound for prompts longer than the window.

use serde::{Deserialize, Serialize};

/// What the FLOPs formula needs to know about a model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ModelShape {
    /// Transformer layers.
    pub n_layers: u32,
    /// Hidden size (the LM head's input width).
    pub d_model: u32,
    /// Query heads × head dim (the attention width; equals `d_model` in most models).
    pub d_attn: u32,
    /// Vocabulary size (the LM head's output width).
    pub vocab: u32,
    /// Whether the LM head is the embedding table (counted once in the parameters).
    pub tied_lm_head: bool,
    /// Parameters excluding the embedding tables and the LM head.
    pub non_embedding_params: f64,
}

impl ModelShape {
    /// From the total parameter count: `embedding_params` are the lookup tables (token
    /// embeddings, plus learned positions where the model has them); an untied LM head
    /// (`vocab × d_model`) is taken out too, since it is counted for one position only.
    pub fn from_counts(
        n_params: f64,
        n_layers: u32,
        d_model: u32,
        d_attn: u32,
        vocab: u32,
        embedding_params: f64,
        tied_lm_head: bool,
    ) -> Self {
        let head = if tied_lm_head {
            0.0
        } else {
            f64::from(d_model) * f64::from(vocab)
        };
        Self {
            n_layers,
            d_model,
            d_attn,
            vocab,
            tied_lm_head,
            non_embedding_params: (n_params - embedding_params - head).max(0.0),
        }
    }

    /// FLOPs of a prefill over `n` tokens (see the module docs).
    pub fn prefill_flops(&self, n: f64) -> f64 {
        let dense = 2.0 * self.non_embedding_params * n;
        let lm_head = 2.0 * f64::from(self.d_model) * f64::from(self.vocab);
        let attention = f64::from(self.n_layers) * 2.0 * n * n * f64::from(self.d_attn);
        dense + lm_head + attention
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SmolLM2-135M(-Instruct): 134,515,008 parameters, 30 layers, hidden 576 = 9 heads × 64,
    /// vocabulary 49,152, LM head tied to the embeddings.
    fn smollm2() -> ModelShape {
        ModelShape::from_counts(134_515_008.0, 30, 576, 576, 49_152, 49_152.0 * 576.0, true)
    }

    #[test]
    fn smollm2_prefill_counts_no_embedding_one_lm_head_row_and_causal_attention() {
        let s = smollm2();
        assert_eq!(s.non_embedding_params, 106_203_456.0);
        let n = 512.0;
        let want = 2.0 * 106_203_456.0 * n + 2.0 * 576.0 * 49_152.0 + 30.0 * 2.0 * n * n * 576.0;
        assert_eq!(s.prefill_flops(n), want);
        // The old count, 2 × all parameters × tokens, is about a quarter too high at 5 tokens.
        let old = 2.0 * 134_515_008.0 * 5.0;
        let ratio = old / s.prefill_flops(5.0);
        assert!((1.19..1.21).contains(&ratio), "{ratio}");
        // At 4096 tokens attention's n² term is 40 % of the work.
        let n = 4096.0;
        let attn = 30.0 * 2.0 * n * n * 576.0;
        assert!((0.39..0.41).contains(&(attn / s.prefill_flops(n))));
    }

    #[test]
    fn an_untied_head_is_not_counted_per_token() {
        let tied = smollm2();
        let untied = ModelShape::from_counts(
            134_515_008.0 + 49_152.0 * 576.0,
            30,
            576,
            576,
            49_152,
            49_152.0 * 576.0,
            false,
        );
        assert_eq!(untied.non_embedding_params, tied.non_embedding_params);
        assert_eq!(untied.prefill_flops(64.0), tied.prefill_flops(64.0));
    }
}
