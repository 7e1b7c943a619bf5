//! The settings grid, llama-bench style: every list-valued setting is an axis, every combination a
//! settings point. Both llama.cpp sides get the identical point (inproc builds its context from
//! it, the spawned server gets it as flags), so a row's point says exactly what ran.
//!
//! A backend runs the points that differ in a setting it has: `--dtype f32,bf16` gives hf two
//! points and inproc one, never two identical inproc runs under different labels.

use crate::backend::{BackendKind, FlashAttn, LlamaParams};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One axis value per list-valued setting: what a settings point fixes.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SettingsPoint {
    /// Position in the grid, from 0.
    pub index: usize,
    /// llama.cpp parameters of this point (inproc and the spawned server).
    pub llama: LlamaParams,
    /// hf: checkpoint folder or hub id.
    pub hf_model: String,
    /// hf: dtype.
    pub dtype: String,
    /// hf: GEMM kernels (auto, mkl, onednn, avx512).
    pub hf_kernels: String,
    /// Values of the axes that have more than one value (`threads=1`, `dtype=bf16`, …).
    pub varying: BTreeMap<String, String>,
}

/// Which backends an axis applies to.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scope {
    /// Every backend (threads: llama.cpp threads and libtorch's intra-op threads).
    All,
    /// The llama.cpp sides: inproc and a spawned llama-server.
    Llama,
    /// The libtorch baseline.
    Hf,
}

/// An axis name, its scope and the flag that sets it.
const AXES: &[(&str, Scope, &str)] = &[
    ("gguf", Scope::Llama, "--gguf"),
    ("hf_model", Scope::Hf, "--hf-model"),
    ("threads", Scope::All, "--threads"),
    ("ctx_size", Scope::Llama, "--ctx-size"),
    ("batch_size", Scope::Llama, "--batch-size"),
    ("ubatch_size", Scope::Llama, "--ubatch-size"),
    ("n_gpu_layers", Scope::Llama, "--n-gpu-layers"),
    ("flash_attn", Scope::Llama, "--flash-attn"),
    ("cache_type_k", Scope::Llama, "--cache-type-k"),
    ("cache_type_v", Scope::Llama, "--cache-type-v"),
    ("dtype", Scope::Hf, "--dtype"),
    ("hf_kernels", Scope::Hf, "--hf-kernels"),
];

/// How many axes there are (every list in [`Grid`]).
const AXIS_COUNT: usize = AXES.len();

fn scope(axis: &str) -> Scope {
    AXES.iter()
        .find(|a| a.0 == axis)
        .map_or(Scope::All, |a| a.1)
}

/// Whether `kind` (with or without a spawned server) has the setting `axis`.
pub fn applies(axis: &str, kind: BackendKind, spawned_server: bool) -> bool {
    match (scope(axis), kind) {
        (Scope::All, BackendKind::Api) | (Scope::Llama, BackendKind::Api) => spawned_server,
        (Scope::All, _) => true,
        (Scope::Llama, k) => k == BackendKind::Inproc,
        (Scope::Hf, k) => k == BackendKind::Hf,
    }
}

/// The value lists of every axis, already resolved (defaults, config, flags).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Grid {
    /// GGUF models.
    pub gguf: Vec<PathBuf>,
    /// hf checkpoints.
    pub hf_model: Vec<String>,
    /// Threads (0 already replaced by the core count).
    pub threads: Vec<u32>,
    /// Context sizes.
    pub ctx_size: Vec<u32>,
    /// Logical batch sizes; `None` = min(2048, ctx_size) as llama-server's default.
    pub batch_size: Vec<Option<u32>>,
    /// Physical batch sizes; `None` = min(512, ctx_size).
    pub ubatch_size: Vec<Option<u32>>,
    /// GPU layers.
    pub n_gpu_layers: Vec<u32>,
    /// Flash attention.
    pub flash_attn: Vec<FlashAttn>,
    /// KV cache type of K.
    pub cache_type_k: Vec<String>,
    /// KV cache type of V.
    pub cache_type_v: Vec<String>,
    /// hf dtypes.
    pub dtype: Vec<String>,
    /// hf GEMM kernels.
    pub hf_kernels: Vec<String>,
}

impl Grid {
    /// (axis, number of values) for every axis, in the order `points` varies them.
    fn lengths(&self) -> [(&'static str, usize); AXIS_COUNT] {
        [
            ("gguf", self.gguf.len()),
            ("hf_model", self.hf_model.len()),
            ("threads", self.threads.len()),
            ("ctx_size", self.ctx_size.len()),
            ("batch_size", self.batch_size.len()),
            ("ubatch_size", self.ubatch_size.len()),
            ("n_gpu_layers", self.n_gpu_layers.len()),
            ("flash_attn", self.flash_attn.len()),
            ("cache_type_k", self.cache_type_k.len()),
            ("cache_type_v", self.cache_type_v.len()),
            ("dtype", self.dtype.len()),
            ("hf_kernels", self.hf_kernels.len()),
        ]
    }

    /// Axes with more than one value.
    pub fn varying_axes(&self) -> Vec<&'static str> {
        self.lengths()
            .into_iter()
            .filter(|(_, n)| *n > 1)
            .map(|(a, _)| a)
            .collect()
    }

    /// A list-valued setting that none of the selected backends has: one line naming both.
    pub fn check_scopes(&self, backends: &[BackendKind], spawned: bool) -> Result<(), String> {
        for axis in self.varying_axes() {
            if !backends.iter().any(|&k| applies(axis, k, spawned)) {
                let flag = AXES.iter().find(|a| a.0 == axis).map_or(axis, |a| a.2);
                let names: Vec<String> = backends.iter().map(|k| k.to_string()).collect();
                let owner = match scope(axis) {
                    Scope::Hf => "the hf backend",
                    Scope::Llama => "inproc and a spawned llama-server",
                    Scope::All => "a backend ttft starts itself",
                };
                return Err(format!(
                    "{flag} with several values: --backend {} does not have this setting (it belongs to {owner})",
                    names.join(",")
                ));
            }
        }
        Ok(())
    }

    /// Every combination, the first axis slowest (as llama-bench orders its rows).
    pub fn points(&self) -> Vec<SettingsPoint> {
        let varying = self.varying_axes();
        let mut out = Vec::new();
        let dims: Vec<usize> = self.lengths().iter().map(|(_, n)| (*n).max(1)).collect();
        let total: usize = dims.iter().product();
        for index in 0..total {
            let mut rest = index;
            let mut pick = [0usize; AXIS_COUNT];
            for (d, n) in dims.iter().enumerate().rev() {
                pick[d] = rest % n;
                rest /= n;
            }
            out.push(self.point(index, &pick, &varying));
        }
        out
    }

    fn point(&self, index: usize, pick: &[usize; AXIS_COUNT], varying: &[&str]) -> SettingsPoint {
        let ctx_size = self.ctx_size[pick[3]];
        let llama = LlamaParams {
            gguf: self.gguf[pick[0]].clone(),
            threads: self.threads[pick[2]],
            ctx_size,
            batch: self.batch_size[pick[4]].unwrap_or(2048.min(ctx_size.max(1))),
            ubatch: self.ubatch_size[pick[5]].unwrap_or(512.min(ctx_size.max(1))),
            n_gpu_layers: self.n_gpu_layers[pick[6]],
            flash_attn: self.flash_attn[pick[7]],
            cache_type_k: self.cache_type_k[pick[8]].clone(),
            cache_type_v: self.cache_type_v[pick[9]].clone(),
        };
        let values: [String; AXIS_COUNT] = [
            self.gguf[pick[0]].display().to_string(),
            self.hf_model[pick[1]].clone(),
            llama.threads.to_string(),
            llama.ctx_size.to_string(),
            llama.batch.to_string(),
            llama.ubatch.to_string(),
            llama.n_gpu_layers.to_string(),
            llama.flash_attn.to_string(),
            llama.cache_type_k.clone(),
            llama.cache_type_v.clone(),
            self.dtype[pick[10]].clone(),
            self.hf_kernels[pick[11]].clone(),
        ];
        let names = self.lengths().map(|(a, _)| a);
        let varying = names
            .iter()
            .zip(values)
            .filter(|(a, _)| varying.contains(a))
            .map(|(a, v)| (a.to_string(), v))
            .collect();
        SettingsPoint {
            index,
            llama,
            hf_model: self.hf_model[pick[1]].clone(),
            dtype: self.dtype[pick[10]].clone(),
            hf_kernels: self.hf_kernels[pick[11]].clone(),
            varying,
        }
    }
}

impl SettingsPoint {
    /// The varying settings that `kind` has, as `threads=1 dtype=bf16` (empty without a grid).
    pub fn label(&self, kind: BackendKind, spawned_server: bool) -> String {
        self.varying
            .iter()
            .filter(|(a, _)| applies(a, kind, spawned_server))
            .map(|(a, v)| format!("{a}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Points `kind` runs: the first point of every distinct label (the others would repeat it).
pub fn points_for(points: &[SettingsPoint], kind: BackendKind, spawned: bool) -> Vec<usize> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for p in points {
        let l = p.label(kind, spawned);
        if !seen.contains(&l) {
            seen.push(l);
            out.push(p.index);
        }
    }
    out
}

/// Whether two point labels can be compared: every setting named in both has the same value.
pub fn compatible(a: &str, b: &str) -> bool {
    let parse = |s: &str| -> BTreeMap<String, String> {
        s.split(' ')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let (a, b) = (parse(a), parse(b));
    a.iter().all(|(k, v)| b.get(k).is_none_or(|w| w == v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Grid {
        Grid {
            gguf: vec!["m.gguf".into()],
            hf_model: vec!["hf".into()],
            threads: vec![1, 2],
            ctx_size: vec![2048],
            batch_size: vec![None],
            ubatch_size: vec![None],
            n_gpu_layers: vec![0],
            flash_attn: vec![FlashAttn::Auto],
            cache_type_k: vec!["f16".into()],
            cache_type_v: vec!["f16".into()],
            dtype: vec!["f32".into(), "bf16".into()],
            hf_kernels: vec!["auto".into()],
        }
    }

    #[test]
    fn points_are_the_product_and_labels_keep_what_a_backend_has() {
        let p = grid().points();
        assert_eq!(p.len(), 4);
        assert_eq!(p[0].llama.threads, 1);
        assert_eq!(p[1].dtype, "bf16");
        assert_eq!(p[1].llama.threads, 1);
        assert_eq!(p[2].llama.threads, 2);
        assert_eq!(p[0].llama.batch, 2048);
        assert_eq!(p[1].label(BackendKind::Hf, true), "dtype=bf16 threads=1");
        assert_eq!(p[1].label(BackendKind::Inproc, true), "threads=1");
        // inproc has no dtype: two points, not four.
        assert_eq!(points_for(&p, BackendKind::Inproc, true), [0, 2]);
        assert_eq!(points_for(&p, BackendKind::Hf, true), [0, 1, 2, 3]);
        // An external server has none of these settings.
        assert_eq!(points_for(&p, BackendKind::Api, false), [0]);
        assert!(compatible("threads=1", "dtype=bf16 threads=1"));
        assert!(!compatible("threads=1", "dtype=bf16 threads=2"));
    }

    #[test]
    fn a_list_no_selected_backend_has_is_an_error_naming_both() {
        let e = grid()
            .check_scopes(&[BackendKind::Inproc, BackendKind::Api], true)
            .unwrap_err();
        assert!(e.contains("--dtype") && e.contains("inproc,api"), "{e}");
        assert!(grid().check_scopes(&[BackendKind::Hf], true).is_ok());
    }
}
