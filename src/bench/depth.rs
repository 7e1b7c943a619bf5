//! `--depth N`: the timed prompt follows N tokens of context already in the backend's cache, as
//! llama-bench's `-d`. The context is the start of a fixed document (data/depth_context.txt),
//! cut at a word so that it ends in a newline token: `text(N) = document[..c] + "\n"` with
//! `tokens(text(N))` exactly N ids. The newline makes the boundary clean: BPE never merges a
//! newline with the letter that follows it, so `tokens(context ++ prompt)` is the context's ids
//! followed by the prompt's own ids (tokenized without BOS). That is checked, per prompt and per
//! tokenizer, before anything is timed; so is that every tokenizer gives the same context ids.
//!
//! The backends get the context as ids (untimed, [`crate::backend::Backend::set_context`]) and
//! the prompt as text (timed): TTFT still starts at the prompt text.

use super::parity::Tokenizer;
use super::prompts::PromptSet;
use super::record::PromptId;
use std::collections::BTreeMap;
use std::path::Path;
use thiserror::Error;

/// The context of one depth, as every backend holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct DepthContext {
    /// Tokens of context (0: the cold case, no context).
    pub depth: u32,
    /// Its token ids (BOS first when the vocabulary adds one); empty at depth 0.
    pub ids: Vec<u32>,
    /// Its text (the document's first words and a newline): what a cold run would have to
    /// prefill before the prompt to see the same tokens.
    pub text: String,
    /// Per prompt: the ids the prompt adds after the context (its own tokens, no BOS).
    pub prompt_tokens: BTreeMap<PromptId, u32>,
}

/// Why a depth cannot be used (a one-line error before timing).
#[derive(Debug, Error, PartialEq)]
pub enum DepthError {
    /// The document cannot be read or is empty.
    #[error("--depth-doc {0}")]
    Doc(String),
    /// The depth is longer than the document.
    #[error("--depth {depth}: the context document {doc} has only {max} tokens ({tok}); use a smaller depth or a longer --depth-doc")]
    TooDeep {
        /// The depth asked for.
        depth: u32,
        /// The document.
        doc: String,
        /// Its token count.
        max: u32,
        /// The tokenizer that counted.
        tok: String,
    },
    /// No cut of the document gives exactly N tokens ending in a newline.
    #[error("--depth {0}: no word boundary of the context document gives exactly {0} tokens ending in a newline; try {0}±1")]
    NoCut(u32),
    /// Tokenizers disagree about the context, or a prompt does not join it cleanly.
    #[error("--depth {depth}: {what}")]
    Boundary {
        /// The depth.
        depth: u32,
        /// What differs.
        what: String,
    },
    /// A tokenizer failed.
    #[error("--depth {depth}: {tok} tokenizer: {err}")]
    Tokenize {
        /// The depth.
        depth: u32,
        /// The tokenizer.
        tok: String,
        /// Its error.
        err: String,
    },
}

/// The document as one line: paragraphs joined by single spaces (no newline inside it, so the
/// context's final newline never merges with another).
pub fn read_document(path: &Path) -> Result<String, DepthError> {
    let raw = std::fs::read_to_string(path)
        .map_err(|e| DepthError::Doc(format!("{}: {e}", path.display())))?;
    let text = raw.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return Err(DepthError::Doc(format!("{}: empty file", path.display())));
    }
    Ok(text)
}

/// The contexts of `depths` (in order, duplicates kept once), checked against every tokenizer
/// and every prompt. `tokenizers[0]` chooses the cut; the others must agree with it.
pub fn contexts(
    doc: &str,
    doc_path: &Path,
    depths: &[u32],
    tokenizers: &mut [Tokenizer],
    sets: &[PromptSet],
) -> Result<Vec<DepthContext>, DepthError> {
    let mut out: Vec<DepthContext> = Vec::new();
    for &depth in depths {
        if out.iter().any(|c| c.depth == depth) {
            continue;
        }
        out.push(if depth == 0 {
            DepthContext {
                depth,
                ids: Vec::new(),
                text: String::new(),
                prompt_tokens: BTreeMap::new(),
            }
        } else {
            one(doc, doc_path, depth, tokenizers, sets)?
        });
    }
    Ok(out)
}

fn one(
    doc: &str,
    doc_path: &Path,
    depth: u32,
    toks: &mut [Tokenizer],
    sets: &[PromptSet],
) -> Result<DepthContext, DepthError> {
    let Some(first) = toks.first_mut() else {
        return Err(DepthError::Boundary {
            depth,
            what: "no tokenizer is available to build the context".into(),
        });
    };
    let enc = |t: &mut Tokenizer, s: &str| {
        t.encode(s).map_err(|err| DepthError::Tokenize {
            depth,
            tok: t.backend.to_string(),
            err,
        })
    };
    let max = enc(first, doc)?.len() as u32;
    if depth > max {
        return Err(DepthError::TooDeep {
            depth,
            doc: doc_path.display().to_string(),
            max,
            tok: first.backend.to_string(),
        });
    }
    let text = cut(doc, depth, |s| enc(first, s).map(|v| v.len()))?;
    let ids = enc(first, &text)?;
    let cutter = first.backend;
    let mut prompt_tokens = BTreeMap::new();
    for t in toks.iter_mut() {
        let mine = enc(t, &text)?;
        if mine != ids {
            return Err(DepthError::Boundary {
                depth,
                what: format!(
                    "the {} tokenizer gives the context {} ids, the {} tokenizer {} (first difference at id {}): the backends would not hold the same context",
                    t.backend,
                    mine.len(),
                    cutter,
                    ids.len(),
                    first_diff(&mine, &ids)
                ),
            });
        }
        for set in sets {
            for (i, p) in set.prompts.iter().enumerate() {
                let alone = enc(t, p)?;
                let joined = enc(t, &format!("{text}{p}"))?;
                let own = own_after(&ids, &alone, &joined, t.bos).map_err(|at| {
                    DepthError::Boundary {
                        depth,
                        what: format!(
                            "prompt {}#{i} of {} does not join the context cleanly ({} tokenizer: tokens(context+prompt) differ from context ids + prompt ids at id {}); start the prompt with a letter, not a space or newline",
                            set.name,
                            set.path.display(),
                            t.backend,
                            at
                        ),
                    }
                })?;
                prompt_tokens.insert(PromptId::new(&set.name, i), own.len() as u32);
            }
        }
    }
    Ok(DepthContext {
        depth,
        ids,
        text,
        prompt_tokens,
    })
}

/// A text's own ids after a context: `joined` = tokens(context + text) split after the
/// context's ids, when the split is clean: `joined` starts with them and the rest is `alone` =
/// tokens(text), with or without the BOS a tokenizer adds to a text on its own (a backend
/// holding a context adds none). Compared, not stripped: an id equal to BOS can be the text's
/// own first token (SmolLM2's BOS is `<|im_start|>`, which every chat turn starts with).
/// Err: the first index where `joined` differs from context ids + the text's ids.
pub(crate) fn own_after(
    context: &[u32],
    alone: &[u32],
    joined: &[u32],
    bos: Option<u32>,
) -> Result<Vec<u32>, usize> {
    let own = joined.get(context.len()..).unwrap_or_default();
    let added_bos = bos.is_some() && alone.first() == bos.as_ref();
    if joined.starts_with(context) && (alone == own || (added_bos && alone[1..] == *own)) {
        return Ok(own.to_vec());
    }
    let text = if added_bos { &alone[1..] } else { alone };
    let want: Vec<u32> = context.iter().chain(text).copied().collect();
    Err(first_diff(joined, &want))
}

/// The first index where `a` and `b` differ (the shorter length when one is a prefix).
pub(crate) fn first_diff<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

/// The document's first words plus "\n", exactly `depth` tokens long. The token count of a
/// prefix grows with the number of words, so a binary search over word ends finds the cut.
fn cut(
    doc: &str,
    depth: u32,
    mut count: impl FnMut(&str) -> Result<usize, DepthError>,
) -> Result<String, DepthError> {
    let ends: Vec<usize> = doc
        .char_indices()
        .filter(|&(_, c)| c == ' ')
        .map(|(i, _)| i)
        .chain(std::iter::once(doc.len()))
        .collect();
    let text = |k: usize| format!("{}\n", &doc[..ends[k]]);
    let want = depth as usize;
    let (mut lo, mut hi) = (0usize, ends.len() - 1);
    // Smallest k whose text has at least `depth` tokens.
    while lo < hi {
        let mid = (lo + hi) / 2;
        if count(&text(mid))? >= want {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    if count(&text(lo))? == want {
        return Ok(text(lo));
    }
    // A word of several tokens jumps over `depth`: shorten the last word by characters.
    let start = if lo == 0 { 0 } else { ends[lo - 1] };
    let word_end = ends[lo];
    let mut best = None;
    // Skip the word's leading space: the cut never leaves a space before the newline.
    for (i, _) in doc[start..word_end].char_indices().skip(2) {
        let t = format!("{}\n", &doc[..start + i]);
        if count(&t)? == want {
            best = Some(t);
            break;
        }
    }
    best.ok_or(DepthError::NoCut(depth))
}

/// A point's label with the depth appended (`threads=2 depth=1024`), so statistics, tables and
/// fits keep every depth its own case.
pub fn depth_label(point: &str, depth: u32) -> String {
    tagged(point, &format!("depth={depth}"))
}

/// `point` with a workload tag appended (`threads=2 depth=1024`, `cache=warm` without a grid).
pub fn tagged(point: &str, tag: &str) -> String {
    if point.is_empty() {
        tag.to_string()
    } else {
        format!("{point} {tag}")
    }
}

/// Whether a row's cache held what it claims: not flagged by [`depth_flags`] (the depth fit and
/// the `--turns` report leave such rows out).
pub fn context_held(r: &super::record::RunRecord) -> bool {
    !r.flags
        .iter()
        .any(|f| f.starts_with("context_not_cached") || f.starts_with("context_unproven"))
}

/// Under `--depth`: the context reused is what the row must show (`cache_hit:N` for exactly the
/// depth is the point, not a fault); a row whose cache did not hold exactly the depth is flagged
/// `context_not_cached:C_of_N` and is not counted as warm by the depth fit.
pub fn depth_flags(m: &crate::backend::Measurement, depth: u32, flags: &mut Vec<String>) {
    if depth > 0 {
        flags.retain(|f| *f != format!("cache_hit:{depth}"));
    }
    match m.cached_tokens {
        Some(c) if c == depth => {}
        Some(c) => flags.push(format!("context_not_cached:{c}_of_{depth}")),
        // Depth 0 is the cold case, proven as without --depth (cache_n 0, a cleared cache).
        None if depth == 0 => {}
        None => flags.push(format!("context_unproven_of_{depth}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;

    /// One id per character: a tokenizer whose boundaries are trivially clean.
    fn chars() -> Tokenizer {
        Tokenizer::new(BackendKind::Inproc, "chars", None, |s: &str| {
            Ok(s.chars().map(|c| c as u32).collect())
        })
    }

    #[test]
    fn the_context_has_exactly_n_ids_and_ends_in_a_newline() {
        let doc = "one two three four five six";
        let mut t = [chars()];
        let c = contexts(doc, Path::new("d"), &[0, 8, 8], &mut t, &[]).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c[0].ids.is_empty());
        assert_eq!(c[1].ids.len(), 8);
        assert_eq!(*c[1].ids.last().unwrap(), u32::from('\n'));
    }

    #[test]
    fn own_ids_are_compared_with_and_without_an_added_bos_never_stripped() {
        // The tokenizer added BOS 9 to the text alone: the text's own ids are [3, 4].
        assert_eq!(
            own_after(&[1, 2], &[9, 3, 4], &[1, 2, 3, 4], Some(9)),
            Ok(vec![3, 4])
        );
        // The text starts with the BOS token itself (none added): it stays.
        assert_eq!(
            own_after(&[1, 2], &[9, 3], &[1, 2, 9, 3], Some(9)),
            Ok(vec![9, 3])
        );
        // The context's last id merged with the text's first: not clean, at index 1.
        assert_eq!(own_after(&[1, 2], &[3], &[1, 5], None), Err(1));
    }

    #[test]
    fn a_depth_longer_than_the_document_is_refused() {
        let mut t = [chars()];
        let e = contexts("a b", Path::new("doc.txt"), &[50], &mut t, &[]).unwrap_err();
        assert!(e.to_string().contains("has only 3 tokens"), "{e}");
    }

    #[test]
    fn a_prompt_that_merges_with_the_context_is_refused() {
        // A tokenizer that merges "\n " into one id: a prompt starting with a space is unclean.
        let merging = Tokenizer::new(BackendKind::Hf, "merging", None, |s: &str| {
            Ok(s.replace("\n ", "\u{1}")
                .chars()
                .map(|c| c as u32)
                .collect())
        });
        let set = PromptSet {
            name: "s".into(),
            path: "p.txt".into(),
            prompts: vec![" hi".into()],
            repeat: None,
            warmup: None,
            dataset: None,
        };
        let e = contexts(
            "one two three",
            Path::new("d"),
            &[4],
            &mut [merging],
            &[set],
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("does not join the context cleanly"),
            "{e}"
        );
    }
}
