//! The cache-busting prefix: for servers whose prefix cache cannot be switched off (vLLM's
//! automatic prefix caching, SGLang's radix cache, llama-cpp-python), every timed run and every
//! warm-up starts with a prefix no earlier request had, so the cache cannot match even its first
//! tokens. Every backend of the invocation gets the same kind of prefix, of the same token length,
//! so they still prefill equal work.
//!
//! The prefix is four common words and a newline (`"river cloud paper stone\n"`). Its words are
//! kept only where every selected backend's tokenizer makes each of them exactly one token (at the
//! start and after a space), and the whole prefix is then measured with each tokenizer before
//! anything is timed: a tokenizer that disagrees refuses the run.
//!
//! Each backend draws the same sequence of prefixes (its k-th request gets the k-th prefix), so
//! the backends evaluate the same text per prompt and run and first-token agreement still
//! compares like with like; one backend never repeats a prefix (a second settings point goes on
//! where the first stopped), and a new invocation starts somewhere else.

use super::parity::Tokenizer;
use crate::backend::BackendKind;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Words the prefix is drawn from: short, common, single tokens in most BPE and SentencePiece
/// vocabularies (the ones that are not, for a given tokenizer, are dropped before timing).
const WORDS: &[&str] = &[
    "apple", "river", "stone", "cloud", "green", "table", "water", "music", "paper", "light",
    "house", "night", "bread", "chair", "glass", "horse", "money", "plant", "sound", "train",
    "world", "field", "heart", "dream", "ocean", "story", "black", "white", "north", "south",
    "happy", "quick", "small", "large", "early", "round", "sweet", "dark", "blue", "red", "book",
    "tree", "fish", "bird", "door", "road", "hand", "ship", "king", "game", "star", "song",
];

/// Words per prefix; with the newline the prefix is a handful of tokens.
const N_WORDS: u32 = 4;

/// Fewer usable words than this and prefixes would repeat too soon: the run is refused.
const MIN_WORDS: usize = 16;

/// The prefix in effect for one invocation.
#[derive(Debug, Clone)]
pub struct CacheBust {
    words: Vec<&'static str>,
    /// Tokens the prefix adds to a prompt in every checked tokenizer.
    pub tokens: u32,
    /// The tokenizers that measured it (empty: nobody could, the length is nominal).
    pub checked_by: Vec<String>,
    base: u64,
    /// Prefixes drawn so far, per backend.
    drawn: Arc<Mutex<BTreeMap<BackendKind, u64>>>,
}

/// Tokens `text` adds to an empty prompt (BOS and chat template cancel out).
fn added(t: &mut Tokenizer, text: &str) -> Result<i64, String> {
    let empty = t.encode("")?.len() as i64;
    Ok(t.encode(text)?.len() as i64 - empty)
}

fn single_token(t: &mut Tokenizer, w: &str) -> Result<bool, String> {
    Ok(added(t, w)? == 1 && added(t, &format!("the {w}"))? == added(t, "the")? + 1)
}

impl CacheBust {
    /// Choose the words and measure the prefix with every tokenizer in `toks` (those of the
    /// selected backends); an error names the tokenizer that disagrees.
    pub fn prepare(toks: &mut [Tokenizer]) -> Result<Self, String> {
        let mut words = Vec::new();
        for w in WORDS {
            let mut ok = true;
            for t in toks.iter_mut() {
                ok &= single_token(t, w).map_err(|e| format!("{}: {e}", t.source))?;
            }
            if ok {
                words.push(*w);
            }
        }
        if words.len() < MIN_WORDS {
            return Err(format!(
                "only {} of {} prefix words are single tokens in every backend's tokenizer",
                words.len(),
                WORDS.len()
            ));
        }
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id()).rotate_left(32);
        let mut me = Self {
            words,
            tokens: N_WORDS + 1,
            checked_by: toks.iter().map(|t| t.source.clone()).collect(),
            base,
            drawn: Arc::default(),
        };
        me.measure(toks)?;
        Ok(me)
    }

    /// The prefix's length in every tokenizer, on a few samples: all must agree.
    fn measure(&mut self, toks: &mut [Tokenizer]) -> Result<(), String> {
        let samples: Vec<String> = (0..8u64).map(|i| self.prefix_at(i * 7919)).collect();
        let mut seen: Option<(i64, String)> = None;
        for t in toks.iter_mut() {
            for s in &samples {
                let n = added(t, s).map_err(|e| format!("{}: {e}", t.source))?;
                match &seen {
                    None => seen = Some((n, t.source.clone())),
                    Some((m, who)) if *m != n => {
                        return Err(format!(
                            "the prefix {s:?} is {n} tokens in {} but {m} in {who}",
                            t.source
                        ))
                    }
                    Some(_) => {}
                }
            }
        }
        if let Some((n, _)) = seen {
            self.tokens = u32::try_from(n).map_err(|_| format!("prefix of {n} tokens"))?;
        }
        Ok(())
    }

    /// The `k`-th prefix after the base: its first word changes from one prefix to the next, so
    /// consecutive requests differ at their very first token.
    fn prefix_at(&self, k: u64) -> String {
        let n = self.words.len() as u64;
        let mut x = self.base.wrapping_add(k) % n.pow(N_WORDS);
        let mut out = Vec::new();
        for _ in 0..N_WORDS {
            out.push(self.words[(x % n) as usize]);
            x /= n;
        }
        format!("{}\n", out.join(" "))
    }

    /// The next prefix for `backend`: one it has not sent before in this invocation.
    pub fn next_prefix(&self, backend: BackendKind) -> String {
        let mut drawn = self.drawn.lock().unwrap_or_else(|e| e.into_inner());
        let k = drawn.entry(backend).or_insert(0);
        *k += 1;
        self.prefix_at(*k - 1)
    }

    /// Whether a tokenizer measured the prefix (else its length is the nominal word count + 1).
    pub fn verified(&self) -> bool {
        !self.checked_by.is_empty()
    }

    /// The prefix's length for a row: None when no tokenizer could measure it (the row is then
    /// flagged instead of given the nominal count).
    pub fn measured_tokens(&self) -> Option<u32> {
        self.verified().then_some(self.tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whitespace() -> Tokenizer {
        Tokenizer::new(BackendKind::Api, "words", Some(0), |s: &str| {
            let mut v = vec![0];
            v.extend(s.split_whitespace().map(|w| w.len() as u32));
            Ok(v)
        })
    }

    #[test]
    fn prefixes_are_unique_with_a_changing_first_word_and_a_measured_length() {
        let b = CacheBust::prepare(&mut [whitespace()]).unwrap();
        assert_eq!(b.tokens, 4, "four words; the newline is no token here");
        let p: Vec<String> = (0..200).map(|_| b.next_prefix(BackendKind::Api)).collect();
        let unique: std::collections::BTreeSet<&String> = p.iter().collect();
        assert_eq!(unique.len(), p.len());
        for w in p.windows(2) {
            assert_ne!(w[0].split(' ').next(), w[1].split(' ').next());
        }
        assert!(p
            .iter()
            .all(|s| s.ends_with('\n') && s.split(' ').count() == 4));
    }

    #[test]
    fn a_tokenizer_that_splits_words_differently_refuses() {
        // Counts characters: no word is one token.
        let chars = Tokenizer::new(BackendKind::Hf, "chars", None, |s: &str| {
            Ok(s.chars().map(|c| c as u32).collect())
        });
        let e = CacheBust::prepare(&mut [whitespace(), chars]).unwrap_err();
        assert!(e.contains("single tokens"), "{e}");
        // Words are single tokens, but the newline is one more token in one of them.
        let newline = Tokenizer::new(BackendKind::Inproc, "nl", None, |s: &str| {
            let n = s.split_whitespace().count() + s.matches('\n').count();
            Ok(vec![7; n])
        });
        let e = CacheBust::prepare(&mut [whitespace(), newline]).unwrap_err();
        assert!(e.contains("tokens in") && e.contains("words"), "{e}");
    }
}
