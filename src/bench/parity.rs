//! The parity gate: before anything is timed, every prompt is tokenized by each selected backend's
//! own tokenizer (the HF tokenizer.json, the GGUF vocabulary in llama.cpp, an external server's
//! `/tokenize`), and the id sequences are compared. Different ids mean the backends would not do
//! the same work, so the difference is reported (and is an error with `--strict-parity`).

use super::prompts::PromptSet;
use crate::backend::BackendKind;
use serde::Serialize;
use std::collections::BTreeMap;

/// A function from text to token ids.
pub type EncodeFn = Box<dyn FnMut(&str) -> Result<Vec<u32>, String>>;

/// Tokenizes like one backend.
pub struct Tokenizer {
    /// The backend whose tokenization this is.
    pub backend: BackendKind,
    /// Where the vocabulary comes from (for the report).
    pub source: String,
    /// The BOS id, when the vocabulary has one (doubled-BOS detection).
    pub bos: Option<u32>,
    encode: EncodeFn,
}

impl Tokenizer {
    /// Wrap an encode function.
    pub fn new(
        backend: BackendKind,
        source: impl Into<String>,
        bos: Option<u32>,
        encode: impl FnMut(&str) -> Result<Vec<u32>, String> + 'static,
    ) -> Self {
        Self {
            backend,
            source: source.into(),
            bos,
            encode: Box::new(encode),
        }
    }

    /// Token ids for `text`.
    pub fn encode(&mut self, text: &str) -> Result<Vec<u32>, String> {
        (self.encode)(text)
    }
}

/// Whether `ids` starts with two BOS tokens (a template that already has BOS plus a tokenizer that
/// adds one).
pub fn doubled_bos(ids: &[u32], bos: Option<u32>) -> bool {
    matches!(bos, Some(b) if ids.len() >= 2 && ids[0] == b && ids[1] == b)
}

/// The gate's verdict for one prompt.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PromptParity {
    /// Prompt set.
    pub prompt_type: String,
    /// Index in the set.
    pub prompt_idx: usize,
    /// Token count per backend.
    pub counts: BTreeMap<BackendKind, usize>,
    /// Every backend produced the same ids.
    pub equal: bool,
    /// First position where two backends differ.
    pub first_difference: Option<usize>,
    /// Backends whose ids start with a doubled BOS.
    pub doubled_bos: Vec<BackendKind>,
    /// Tokenizer errors.
    pub errors: BTreeMap<BackendKind, String>,
}

/// The gate over all prompts.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ParityReport {
    /// Tokenizer per backend, with its source.
    pub tokenizers: BTreeMap<BackendKind, String>,
    /// One entry per prompt.
    pub prompts: Vec<PromptParity>,
}

impl ParityReport {
    /// Prompts that are not identical everywhere (or doubled a BOS).
    pub fn problems(&self) -> Vec<&PromptParity> {
        self.prompts
            .iter()
            .filter(|p| !p.equal || !p.doubled_bos.is_empty() || !p.errors.is_empty())
            .collect()
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let names: Vec<&str> = self.tokenizers.keys().map(|k| k.name()).collect();
        if names.is_empty() {
            return "parity: not checked (no tokenizer is available for the selected backends)"
                .into();
        }
        let bad = self.problems();
        if bad.is_empty() {
            format!(
                "parity: all {} prompts tokenize to identical ids in {}",
                self.prompts.len(),
                names.join(", ")
            )
        } else {
            let list: Vec<String> = bad.iter().map(|p| describe(p)).collect();
            format!(
                "parity: {} of {} prompts differ between {}: {}",
                bad.len(),
                self.prompts.len(),
                names.join(", "),
                list.join("; ")
            )
        }
    }
}

fn describe(p: &PromptParity) -> String {
    let counts: Vec<String> = p.counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
    let mut s = format!("{}#{} ({})", p.prompt_type, p.prompt_idx, counts.join(" "));
    if let Some(i) = p.first_difference {
        s.push_str(&format!(", first difference at token {i}"));
    }
    if !p.doubled_bos.is_empty() {
        let d: Vec<&str> = p.doubled_bos.iter().map(|k| k.name()).collect();
        s.push_str(&format!(", doubled BOS in {}", d.join(" ")));
    }
    for (k, e) in &p.errors {
        s.push_str(&format!(", {k}: {e}"));
    }
    s
}

/// Compare the ids of every prompt across `tokenizers`.
pub fn gate(tokenizers: &mut [Tokenizer], sets: &[PromptSet]) -> ParityReport {
    let mut report = ParityReport {
        tokenizers: tokenizers
            .iter()
            .map(|t| (t.backend, t.source.clone()))
            .collect(),
        prompts: Vec::new(),
    };
    for set in sets {
        for (idx, prompt) in set.prompts.iter().enumerate() {
            let mut ids: BTreeMap<BackendKind, Vec<u32>> = BTreeMap::new();
            let mut errors = BTreeMap::new();
            let mut doubled = Vec::new();
            for t in tokenizers.iter_mut() {
                match t.encode(prompt) {
                    Ok(v) => {
                        if doubled_bos(&v, t.bos) {
                            doubled.push(t.backend);
                        }
                        ids.insert(t.backend, v);
                    }
                    Err(e) => {
                        errors.insert(t.backend, e);
                    }
                }
            }
            let first = ids.values().next();
            let first_difference = first.and_then(|a| {
                ids.values()
                    .filter(|b| a != *b)
                    .map(|b| {
                        a.iter()
                            .zip(b)
                            .position(|(x, y)| x != y)
                            .unwrap_or(a.len().min(b.len()))
                    })
                    .min()
            });
            report.prompts.push(PromptParity {
                prompt_type: set.name.clone(),
                prompt_idx: idx,
                counts: ids.iter().map(|(k, v)| (*k, v.len())).collect(),
                equal: first_difference.is_none() && errors.is_empty(),
                first_difference,
                doubled_bos: doubled,
                errors,
            });
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn set(prompts: &[&str]) -> Vec<PromptSet> {
        vec![PromptSet {
            name: "s".into(),
            path: PathBuf::from("x"),
            prompts: prompts.iter().map(|p| p.to_string()).collect(),
            repeat: None,
            warmup: None,
            dataset: None,
        }]
    }

    fn words(bos: Option<u32>) -> impl FnMut(&str) -> Result<Vec<u32>, String> {
        move |t: &str| {
            let mut v: Vec<u32> = bos.into_iter().collect();
            v.extend(t.split(' ').map(|w| w.len() as u32));
            Ok(v)
        }
    }

    #[test]
    fn identical_tokenizers_pass_and_a_different_one_is_located() {
        let mut same = vec![
            Tokenizer::new(BackendKind::Inproc, "a", None, words(None)),
            Tokenizer::new(BackendKind::Hf, "b", None, words(None)),
        ];
        let r = gate(&mut same, &set(&["one two", "three"]));
        assert!(r.problems().is_empty());
        assert!(r.summary().contains("all 2 prompts"));

        let mut diff = vec![
            Tokenizer::new(BackendKind::Inproc, "a", Some(1), words(None)),
            Tokenizer::new(BackendKind::Hf, "b", Some(1), words(Some(1))),
        ];
        let r = gate(&mut diff, &set(&["one two"]));
        let p = &r.prompts[0];
        assert!(!p.equal);
        assert_eq!(p.first_difference, Some(0));
        assert_eq!(p.counts[&BackendKind::Hf], 3);
        assert!(
            r.summary().contains("first difference at token 0"),
            "{}",
            r.summary()
        );
    }

    #[test]
    fn doubled_bos_is_detected() {
        assert!(doubled_bos(&[1, 1, 5], Some(1)));
        assert!(!doubled_bos(&[1, 5, 1], Some(1)));
        assert!(!doubled_bos(&[1, 1], None));
        // A prompt that already starts with "<s>" (id 1) plus a tokenizer that adds BOS.
        let mut t = vec![Tokenizer::new(BackendKind::Hf, "b", Some(1), |s: &str| {
            let mut v = vec![1];
            if s.starts_with("<s>") {
                v.push(1);
            }
            Ok(v)
        })];
        let r = gate(&mut t, &set(&["<s>hello"]));
        assert_eq!(r.prompts[0].doubled_bos, [BackendKind::Hf]);
        assert!(r.summary().contains("doubled BOS in hf"));
    }
}
