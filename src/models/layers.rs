//! The building blocks every architecture file assembles: linear, norms, attention with GQA /
//! sliding window / soft-capping / q-k norm / partial rotary, MLP variants, the residual block and
//! the decoder stack with its KV cache. Each quirk is switched on by the architecture file that
//! needs it, which also names the transformers function it mirrors.

pub use super::dense::{Dense, Linear};
use super::fused_layer;
pub use super::norm::Norm;
use super::rope::{self, Rope};
use tch::{Kind, Tensor};

/// Activation functions by their HF names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Act {
    /// "silu" / "swish".
    Silu,
    /// "gelu": exact erf form.
    Gelu,
    /// "gelu_pytorch_tanh", "gelu_new", "gelu_fast": tanh approximation.
    GeluTanh,
    /// "relu".
    Relu,
}

impl Act {
    /// Parse an HF activation name.
    pub fn parse(name: &str) -> Option<Act> {
        match name {
            "silu" | "swish" => Some(Act::Silu),
            "gelu" => Some(Act::Gelu),
            "gelu_pytorch_tanh" | "gelu_new" | "gelu_fast" => Some(Act::GeluTanh),
            "relu" => Some(Act::Relu),
            _ => None,
        }
    }

    fn forward(self, x: &Tensor) -> Tensor {
        match self {
            Act::Silu => x.silu(),
            Act::Gelu => x.gelu("none"),
            Act::GeluTanh => x.gelu("tanh"),
            Act::Relu => x.relu(),
        }
    }
}

/// Feed-forward variants.
#[derive(Debug)]
pub enum Mlp {
    /// `down(act(gate(x)) * up(x))`; gate and up are fused into one matmul (rows: gate, then up).
    Gated {
        /// [2 * intermediate, hidden] in the checkpoint.
        gate_up: Dense,
        /// [hidden, intermediate] in the checkpoint.
        down: Dense,
        /// Activation on the gate.
        act: Act,
        /// SiLU through ttft's one-pass kernel (`onednn::silu_mul`); set by
        /// [`Decoder::use_kernels`].
        fused: bool,
    },
    /// `proj(act(fc(x)))` (GPT-2, GPT-NeoX).
    Plain {
        /// Up projection.
        fc: Dense,
        /// Down projection.
        proj: Dense,
        /// Activation.
        act: Act,
    },
}

impl Mlp {
    /// Apply to x [..., hidden].
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Mlp::Gated {
                gate_up,
                down,
                fused: true,
                ..
            } => {
                let gu = gate_up.forward(x);
                let h = super::layer_ops::silu_mul(&gu).unwrap_or_else(|e| panic!("silu·up: {e}"));
                down.forward(&h)
            }
            Mlp::Gated {
                gate_up, down, act, ..
            } => {
                let gu = gate_up.forward(x);
                let parts = gu.chunk(2, -1);
                down.forward(&(act.forward(&parts[0]) * &parts[1]))
            }
            Mlp::Plain { fc, proj, act } => proj.forward(&act.forward(&fc.forward(x))),
        }
    }
}

/// Self-attention with every quirk the supported architectures need.
#[derive(Debug)]
pub struct Attention {
    /// Fused projection, outputs [q (heads*head_dim); k (kv*head_dim); v (kv*head_dim)].
    pub qkv: Dense,
    /// Output projection.
    pub o: Dense,
    /// Query heads.
    pub n_heads: i64,
    /// Key/value heads (GQA when fewer than query heads).
    pub n_kv: i64,
    /// Head dimension.
    pub head_dim: i64,
    /// Multiplier of q·k (head_dim^-0.5, or query_pre_attn_scalar^-0.5 for Gemma 2/3).
    pub scale: f64,
    /// Gemma 2: `tanh(scores / cap) * cap` before the mask.
    pub softcap: Option<f64>,
    /// Sliding window: a query attends to keys with `q - k < window` (transformers'
    /// `sliding_window_overlay`: `kv_idx > q_idx - sliding_window`).
    pub window: Option<i64>,
    /// Per-head RMSNorm of q and k before RoPE (Qwen 3, Gemma 3).
    pub q_norm: Option<Norm>,
    /// Per-head RMSNorm of k.
    pub k_norm: Option<Norm>,
    /// Index into the model's RoPE table; None for learned positions (GPT-2).
    pub rope: Option<usize>,
    /// Run causal attention through ttft's CPU kernel (`onednn::attention`) where no
    /// soft-cap or active window asks for more, and a full-width RoPE through
    /// `layer_ops::rope`; set by [`Decoder::use_kernels`].
    pub fused: bool,
}

/// Key/value tensors of one layer, [1, kv_heads, seq, head_dim].
pub type LayerCache = Option<(Tensor, Tensor)>;

/// Which keys each query may see: `allowed[q][k]` for queries at `past..past+t`.
fn mask(past: i64, t: i64, window: Option<i64>, device: tch::Device) -> Tensor {
    let q = Tensor::arange_start(past, past + t, (Kind::Int64, device)).unsqueeze(1);
    let k = Tensor::arange(past + t, (Kind::Int64, device)).unsqueeze(0);
    let causal = k.le_tensor(&q);
    match window {
        Some(w) => causal.logical_and(&(&q - &k).lt(w)),
        None => causal,
    }
}

fn repeat_kv(x: &Tensor, rep: i64) -> Tensor {
    if rep == 1 {
        return x.shallow_clone();
    }
    let s = x.size();
    x.unsqueeze(2)
        .expand([s[0], s[1], rep, s[2], s[3]], false)
        .reshape([s[0], s[1] * rep, s[2], s[3]])
}

impl Attention {
    /// RoPE on q and k [b, heads, t, d] (none for learned positions): ttft's one-pass kernel
    /// where the layer's kernels are ttft's and the rotation is full-width, else the op chain.
    fn rotate(&self, q: Tensor, k: Tensor, cos_sin: Option<&(Tensor, Tensor)>) -> (Tensor, Tensor) {
        let Some((cos, sin)) = cos_sin else {
            return (q, k);
        };
        if self.fused && cos.size()[1] == self.head_dim {
            let rope = |x: &Tensor| {
                super::layer_ops::rope(x, cos, sin).unwrap_or_else(|e| panic!("rope: {e}"))
            };
            return (rope(&q), rope(&k));
        }
        (rope::apply(&q, cos, sin), rope::apply(&k, cos, sin))
    }

    /// x [1, t, hidden] → [1, t, hidden], appending this step's keys and values to `cache`.
    pub fn forward(
        &self,
        x: &Tensor,
        cos_sin: Option<&(Tensor, Tensor)>,
        cache: &mut LayerCache,
        past: i64,
    ) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        let (h, kv, d) = (self.n_heads, self.n_kv, self.head_dim);
        let qkv = self.qkv.forward(x);
        let parts = qkv.split_with_sizes([h * d, kv * d, kv * d], -1);
        let mut q = parts[0].view([b, t, h, d]);
        let mut k = parts[1].view([b, t, kv, d]);
        let v = parts[2].view([b, t, kv, d]).transpose(1, 2);
        if let Some(n) = &self.q_norm {
            q = n.forward(&q);
        }
        if let Some(n) = &self.k_norm {
            k = n.forward(&k);
        }
        let (q, k) = self.rotate(q.transpose(1, 2), k.transpose(1, 2), cos_sin);
        let (k, v) = match cache.take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2), Tensor::cat(&[&pv, &v], 2)),
            None => (k, v),
        };
        *cache = Some((k.shallow_clone(), v.shallow_clone()));
        let s = past + t;
        let window_matters = self.window.is_some_and(|w| s > w);
        if self.fused && b == 1 && self.softcap.is_none() && !window_matters {
            let out = super::layer_ops::attention(
                &q.squeeze_dim(0),
                &k.squeeze_dim(0),
                &v.squeeze_dim(0),
                self.scale,
            )
            .unwrap_or_else(|e| panic!("attention: {e}"));
            return self.o.forward(&out.reshape([b, t, h * d]));
        }
        let k = repeat_kv(&k, h / kv);
        let v = repeat_kv(&v, h / kv);

        let out = if let Some(cap) = self.softcap {
            // Gemma 2 eager attention: scores * scale, soft-cap, mask, softmax in f32.
            let scores = q.matmul(&k.transpose(2, 3)) * self.scale;
            let scores = (scores / cap).tanh() * cap;
            let allowed = mask(past, t, self.window, x.device());
            let scores = scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
            scores.softmax(-1, Kind::Float).to_kind(q.kind()).matmul(&v)
        } else if !window_matters && (past == 0 || t == 1) {
            // Plain causal (or a single new token that may see everything): the fused kernel.
            Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                None::<Tensor>,
                0.0,
                past == 0 && t > 1,
                self.scale,
                false,
            )
        } else {
            let allowed = mask(past, t, self.window, x.device());
            Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(allowed),
                0.0,
                false,
                self.scale,
                false,
            )
        };
        self.o.forward(&out.transpose(1, 2).reshape([b, t, h * d]))
    }
}

/// One decoder layer.
#[derive(Debug)]
pub struct Block {
    /// Norm before attention (`input_layernorm`, `ln_1`).
    pub attn_norm: Norm,
    /// Self-attention.
    pub attn: Attention,
    /// Gemma 2/3: norm of the attention output before the residual add.
    pub post_attn_norm: Option<Norm>,
    /// Norm before the MLP (`post_attention_layernorm` in Llama, `pre_feedforward_layernorm` in Gemma 2/3).
    pub mlp_norm: Norm,
    /// Feed-forward.
    pub mlp: Mlp,
    /// Gemma 2/3: norm of the MLP output before the residual add.
    pub post_mlp_norm: Option<Norm>,
    /// GPT-NeoX `use_parallel_residual`: `x + attn(ln1(x)) + mlp(ln2(x))`.
    pub parallel: bool,
}

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        cos_sin: Option<&(Tensor, Tensor)>,
        cache: &mut LayerCache,
        past: i64,
    ) -> Tensor {
        let a = self
            .attn
            .forward(&self.attn_norm.forward(x), cos_sin, cache, past);
        if self.parallel {
            let m = self.mlp.forward(&self.mlp_norm.forward(x));
            return m + a + x;
        }
        let a = match &self.post_attn_norm {
            Some(n) => n.forward(&a),
            None => a,
        };
        let h = x + a;
        let m = self.mlp.forward(&self.mlp_norm.forward(&h));
        let m = match &self.post_mlp_norm {
            Some(n) => n.forward(&m),
            None => m,
        };
        h + m
    }
}

/// KV cache of a whole model; a fresh one per timed run.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    len: i64,
}

impl KvCache {
    /// Tokens already in the cache.
    pub fn len(&self) -> i64 {
        self.len
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A cache holding the same keys and values, sharing their tensors. Safe because a forward
    /// pass never writes into cached tensors: it concatenates into new ones (`Attention::forward`),
    /// so runs on the copy leave this cache as it was (`--depth`'s context, reused per run).
    pub fn share(&self) -> KvCache {
        KvCache {
            layers: self
                .layers
                .iter()
                .map(|l| {
                    l.as_ref()
                        .map(|(k, v)| (k.shallow_clone(), v.shallow_clone()))
                })
                .collect(),
            len: self.len,
        }
    }
}

/// A decoder-only transformer assembled by an architecture file.
#[derive(Debug)]
pub struct Decoder {
    /// Token embedding [vocab, hidden].
    pub embed: Tensor,
    /// Gemma: embeddings times sqrt(hidden), the scalar cast to the model dtype first
    /// (GemmaModel's `normalizer` / Gemma3TextScaledWordEmbedding).
    pub embed_scale: Option<f64>,
    /// GPT-2 learned absolute positions [n_positions, hidden].
    pub pos_embed: Option<Tensor>,
    /// The layers.
    pub blocks: Vec<Block>,
    /// Final norm.
    pub final_norm: Norm,
    /// LM head [vocab, hidden] (the embedding itself when tied).
    pub lm_head: Dense,
    /// Gemma 2: `tanh(logits / cap) * cap`.
    pub final_softcap: Option<f64>,
    /// RoPE variants referenced by the attention layers.
    pub ropes: Vec<Rope>,
    /// Compute dtype.
    pub kind: Kind,
    /// Run each layer that allows it as one call into ttft's kernels ([`super::fused_layer`]);
    /// set by [`Decoder::use_kernels`] wherever ttft's layer kernels run.
    pub whole_layers: bool,
}

impl Decoder {
    /// Lay every projection and the LM head out for `kernels`, once, at load.
    pub fn use_kernels(&mut self, kernels: super::onednn::Kernels) -> Result<(), tch::TchError> {
        // ttft's attention and RMS norms go with ttft's kernel choices; `mkl` stays libtorch's
        // own everything (SDPA, the norms as ops), the reference path.
        let fused = kernels != super::onednn::Kernels::Mkl
            && self.embed.device() == tch::Device::Cpu
            && matches!(self.kind, Kind::Float | Kind::BFloat16);
        let norms = fused && super::onednn::panel_supported();
        self.whole_layers = norms;
        self.final_norm.use_fused(norms);
        for b in &mut self.blocks {
            b.attn.fused = fused && super::layer_ops::attention_supported(b.attn.head_dim);
            let extra = [&mut b.post_attn_norm, &mut b.post_mlp_norm];
            let qk = [&mut b.attn.q_norm, &mut b.attn.k_norm];
            for n in extra.into_iter().chain(qk).flatten() {
                n.use_fused(norms);
            }
            b.attn_norm.use_fused(norms);
            b.mlp_norm.use_fused(norms);
            b.attn.qkv.use_kernels(kernels, 0)?;
            b.attn.o.use_kernels(kernels, 0)?;
            match &mut b.mlp {
                Mlp::Gated {
                    gate_up,
                    down,
                    act,
                    fused: on,
                } => {
                    *on = norms && *act == Act::Silu;
                    gate_up.use_kernels(kernels, 0)?;
                    down.use_kernels(kernels, 0)?;
                }
                Mlp::Plain { fc, proj, .. } => {
                    fc.use_kernels(kernels, 0)?;
                    proj.use_kernels(kernels, 0)?;
                }
            }
        }
        // The LM head sees one row: prefill keeps the last position's logits, decode has one.
        // Packed for one row, SmolLM2's 49152x576 f32 head took 5.0 ms instead of 6.2 here.
        self.lm_head.use_kernels(kernels, 1)
    }

    /// Which kernels run attention, norms and activations after [`Decoder::use_kernels`]:
    /// "ttft" (its CPU kernels, in every layer that allows them) or "libtorch".
    pub fn layer_kernels(&self) -> &'static str {
        let norm = self.final_norm.fused_rms().is_some();
        if norm || self.blocks.iter().any(|b| b.attn.fused) {
            "ttft"
        } else {
            "libtorch"
        }
    }

    /// How many layers run as one call into ttft's kernels ([`fused_layer::runs_whole`]) on a
    /// short prompt.
    pub fn whole_layer_count(&self) -> usize {
        match self.whole_layers {
            true => self
                .blocks
                .iter()
                .filter(|b| fused_layer::runs_whole(b))
                .count(),
            false => 0,
        }
    }

    /// Bytes a prefill must read at least once: every projection and the LM head (the
    /// embedding lookup reads only the prompt's rows; norms are negligible and left out).
    pub fn weight_bytes(&self) -> f64 {
        let blocks: f64 = self
            .blocks
            .iter()
            .map(|b| {
                let mlp = match &b.mlp {
                    Mlp::Gated { gate_up, down, .. } => gate_up.bytes() + down.bytes(),
                    Mlp::Plain { fc, proj, .. } => fc.bytes() + proj.bytes(),
                };
                b.attn.qkv.bytes() + b.attn.o.bytes() + mlp
            })
            .sum();
        blocks + self.lm_head.bytes()
    }

    /// A fresh, empty cache.
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: (0..self.blocks.len()).map(|_| None).collect(),
            len: 0,
        }
    }

    /// Run `ids` (positions continuing `cache`). Returns logits [n, vocab] for the last position
    /// only (prefill for generation) or for every position (`all_logits`, parity tests).
    pub fn forward(&self, ids: &Tensor, cache: &mut KvCache, all_logits: bool) -> Tensor {
        let past = cache.len;
        let t = ids.size()[0];
        let mut x = self.embed.index_select(0, ids).unsqueeze(0);
        if let Some(s) = self.embed_scale {
            let s = Tensor::from(s).to_kind(self.kind).to_device(x.device());
            x *= s;
        }
        if let Some(p) = &self.pos_embed {
            x += p.narrow(0, past, t).unsqueeze(0);
        }
        let cs: Vec<(Tensor, Tensor)> = self
            .ropes
            .iter()
            .map(|r| r.cos_sin(past, t, self.kind))
            .collect();
        for (i, block) in self.blocks.iter().enumerate() {
            let c = block.attn.rope.map(|r| &cs[r]);
            let layer = &mut cache.layers[i];
            let whole = self
                .whole_layers
                .then(|| fused_layer::forward(block, &x, c, layer, past));
            x = match whole.flatten() {
                Some(y) => y,
                None => block.forward(&x, c, layer, past),
            };
        }
        cache.len += t;
        let x = if all_logits { x } else { x.narrow(1, t - 1, 1) };
        let x = self.final_norm.forward(&x);
        let logits = self.lm_head.forward(&x).squeeze_dim(0);
        match self.final_softcap {
            Some(cap) => (logits / cap).tanh() * cap,
            None => logits,
        }
    }
}
