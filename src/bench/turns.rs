//! `--turns K`: conversations replayed turn by turn. Turn k of a conversation is its first k
//! user turns, with the turns between them (the file's own assistant answers, so every backend
//! holds the same tokens; a model's own greedy answers would differ between an f32 checkpoint and
//! a quantized GGUF), put through one chat template by ttft itself, the same text for every
//! backend.
//!
//! Warm (`--turns-cache warm`): the backend holds turns 1..k-1 in its cache as token ids (untimed,
//! [`crate::backend::Backend::set_context`], the `--depth` machinery) and is handed the rest of
//! the conversation's text, from turn k's start to the assistant's generation prompt, as the
//! prompt. That needs the template to render the earlier turns as a text prefix of the later
//! ones and the tokens to split cleanly there (checked per turn and tokenizer before timing).
//! Cold (`--turns-cache cold`): the whole conversation text, nothing cached, as a client without
//! a prefix cache sends it.

use super::chat::ChatTemplate;
use super::conversation::{Conversation, Role};
use super::depth::{first_diff, own_after, tagged};
use super::parity::Tokenizer;
use super::prompts::{DatasetMeta, PromptSet};
use serde::Serialize;
use std::path::Path;
use thiserror::Error;

/// The cache state a pass over the turns runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TurnsCache {
    /// Earlier turns cached; the prompt is the new turn.
    Warm,
    /// Nothing cached; the prompt is the whole conversation so far.
    Cold,
}

impl TurnsCache {
    /// `warm` or `cold`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "warm" => Some(Self::Warm),
            "cold" => Some(Self::Cold),
            _ => None,
        }
    }

    /// The name in point labels and reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Warm => "warm",
            Self::Cold => "cold",
        }
    }
}

/// One turn of one conversation, as every backend runs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnCase {
    /// The conversation's line in the file, from 1.
    pub line: usize,
    /// The user turn, from 1.
    pub turn: u32,
    /// The earlier turns and answers rendered (no generation prompt) as token ids, BOS first
    /// when the vocabulary adds one: what a warm run holds in cache (empty at a first turn with
    /// nothing before it).
    pub context_ids: Vec<u32>,
    /// What a warm run is handed: the rendered conversation after the context.
    pub increment: String,
    /// What a cold run is handed: the whole rendered conversation up to the generation prompt.
    pub full: String,
    /// Tokens a warm run must prefill: the increment's own ids (all of `full`'s without context).
    pub increment_tokens: u32,
    /// Tokens a cold run must prefill (by the first tokenizer; each backend's cold rows are
    /// checked against its own count).
    pub full_tokens: u32,
    /// Tokenizers that split the earlier turns differently from the first (printed before
    /// timing; see [`cases`]).
    pub notes: Vec<String>,
}

impl TurnCase {
    /// The prompt text a run in `cache` state is handed.
    pub fn text(&self, cache: TurnsCache) -> &str {
        match cache {
            TurnsCache::Warm => &self.increment,
            TurnsCache::Cold => &self.full,
        }
    }

    /// The context a run in `cache` state holds.
    pub fn context(&self, cache: TurnsCache) -> &[u32] {
        match cache {
            TurnsCache::Warm => &self.context_ids,
            TurnsCache::Cold => &[],
        }
    }

    /// The prompt tokens a warm run must prefill; a cold one, the backend's own count of the
    /// whole text (`own`, from its tokenizer before timing).
    pub fn expected_tokens(&self, cache: TurnsCache, own: Option<u32>) -> Option<u32> {
        match cache {
            TurnsCache::Warm => Some(self.increment_tokens),
            TurnsCache::Cold => own,
        }
    }
}

/// What the runner needs for `--turns`: the cases (prompt `i` of the set is case `i`) and the
/// cache states to run them in, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnPlan {
    /// The prompt set's name (the conversation file's stem).
    pub set: String,
    /// The cases, conversation by conversation, turn by turn.
    pub cases: Vec<TurnCase>,
    /// The passes.
    pub modes: Vec<TurnsCache>,
}

/// A point's label with the cache state appended (`threads=2 cache=warm`), so warm and cold
/// runs of a turn are different cases.
pub fn turns_label(point: &str, cache: TurnsCache) -> String {
    tagged(point, &format!("cache={}", cache.name()))
}

/// Why the conversations cannot be replayed (a one-line error before timing).
#[derive(Debug, Error, PartialEq)]
pub enum TurnsError {
    /// The template fails on a turn.
    #[error("{origin} turn {turn}: {err}")]
    Template {
        /// File and line.
        origin: String,
        /// The user turn.
        turn: u32,
        /// The template's error.
        err: String,
    },
    /// The template does not render the earlier turns as a prefix of the later ones.
    #[error("{origin} turn {turn}: the {by} chat template does not render the earlier turns as the start of this one (it rewrites history), so they cannot be a cached context; use --turns-cache cold")]
    NotPrefix {
        /// File and line.
        origin: String,
        /// The user turn.
        turn: u32,
        /// Whose template.
        by: String,
    },
    /// Two backends' templates render a turn differently.
    #[error("{origin} turn {turn}: the {a} and {b} chat templates render it differently (from byte {at}): the backends would not see the same conversation")]
    TemplatesDiffer {
        /// File and line.
        origin: String,
        /// The user turn.
        turn: u32,
        /// One template's source.
        a: String,
        /// The other's.
        b: String,
        /// First differing byte.
        at: usize,
    },
    /// A tokenizer failed, or the tokens do not split cleanly between context and turn.
    #[error("{origin} turn {turn}: {what}")]
    Tokens {
        /// File and line.
        origin: String,
        /// The user turn.
        turn: u32,
        /// What went wrong, naming the tokenizer.
        what: String,
    },
}

/// A conversation to replay: its line in the file and the conversation.
pub type Source<'a> = (usize, &'a Conversation);

/// Every case of `convs` (at most `k` turns each), rendered with `templates[0]` and checked
/// against the other templates and every tokenizer (`toks[0]` gives the context ids).
pub fn cases(
    path: &Path,
    convs: &[Source],
    k: u32,
    templates: &[(String, &ChatTemplate)],
    toks: &mut [Tokenizer],
) -> Result<Vec<TurnCase>, TurnsError> {
    let mut out = Vec::new();
    for &(line, conv) in convs {
        let origin = format!("{} line {line}", path.display());
        let users: Vec<usize> = conv
            .turns()
            .iter()
            .enumerate()
            .filter(|(_, t)| t.role == Role::User)
            .map(|(i, _)| i)
            .take(k as usize)
            .collect();
        for (n, &at) in users.iter().enumerate() {
            let turn = n as u32 + 1;
            let (context, full) = render(conv, at, turn, &origin, templates)?;
            out.push(split(line, turn, &origin, &context, full, toks)?);
        }
    }
    Ok(out)
}

/// The texts of the turns before the user turn at index `at` (no generation prompt) and of the
/// conversation up to it (with one), the same from every template.
fn render(
    conv: &Conversation,
    at: usize,
    turn: u32,
    origin: &str,
    templates: &[(String, &ChatTemplate)],
) -> Result<(String, String), TurnsError> {
    let messages: Vec<(&str, &str)> = conv.turns()[..=at]
        .iter()
        .map(|t| (t.role.name(), t.text.as_str()))
        .collect();
    let mut first: Option<(String, String, &str)> = None;
    for (by, t) in templates {
        let err = |err| TurnsError::Template {
            origin: origin.to_string(),
            turn,
            err,
        };
        let context = t.render(&messages[..at], false).map_err(err)?;
        let full = t.render(&messages, true).map_err(err)?;
        if !full.starts_with(&context) {
            return Err(TurnsError::NotPrefix {
                origin: origin.to_string(),
                turn,
                by: by.clone(),
            });
        }
        match &first {
            None => first = Some((context, full, by)),
            Some((_, f, a)) if *f != full => {
                return Err(TurnsError::TemplatesDiffer {
                    origin: origin.to_string(),
                    turn,
                    a: a.to_string(),
                    b: by.clone(),
                    at: first_diff(f.as_bytes(), full.as_bytes()),
                })
            }
            Some(_) => {}
        }
    }
    first
        .map(|(c, f, _)| (c, f))
        .ok_or_else(|| TurnsError::Template {
            origin: origin.to_string(),
            turn,
            err: "no chat template to render it with".into(),
        })
}

/// The case of one turn. The context ids are `toks[0]`'s, and every backend holds exactly those
/// ids. Each tokenizer must split the conversation cleanly where the turn starts and give the
/// turn the same own ids; one that tokenizes the earlier turns differently (llama.cpp and
/// transformers disagree on some whitespace runs) only gets a note: warm runs still hold the
/// same ids everywhere, and the cold runs' differing prompts are the parity gate's to report.
fn split(
    line: usize,
    turn: u32,
    origin: &str,
    context: &str,
    full: String,
    toks: &mut [Tokenizer],
) -> Result<TurnCase, TurnsError> {
    let fail = |what: String| TurnsError::Tokens {
        origin: origin.to_string(),
        turn,
        what,
    };
    let increment = full[context.len()..].to_string();
    let mut case = TurnCase {
        line,
        turn,
        context_ids: Vec::new(),
        increment: full.clone(),
        full,
        increment_tokens: 0,
        full_tokens: 0,
        notes: Vec::new(),
    };
    let mut first_own: Option<Vec<u32>> = None;
    for t in toks.iter_mut() {
        let by = t.backend;
        let all = t
            .encode(&case.full)
            .map_err(|e| fail(format!("{by} tokenizer: {e}")))?;
        if first_own.is_none() {
            case.full_tokens = all.len() as u32;
        }
        if context.is_empty() {
            first_own.get_or_insert_with(Vec::new);
            continue;
        }
        let (ids, own) = own_ids(t, context, &increment, &all).map_err(fail)?;
        match &first_own {
            None => {
                case.context_ids = ids;
                case.increment_tokens = own.len() as u32;
                first_own = Some(own);
            }
            Some(o) if *o != own => {
                return Err(fail(format!(
                    "the {by} tokenizer gives the turn {} ids, the first tokenizer {} (first difference at id {}): the backends would not prefill the same tokens",
                    own.len(),
                    o.len(),
                    first_diff(&own, o)
                )))
            }
            Some(_) if ids != case.context_ids => case.notes.push(format!(
                "{origin} turn {turn}: the {by} tokenizer splits the earlier turns into {} ids, the first tokenizer into {} (from id {}); warm runs hold the same {} ids on every backend, cold runs prefill each backend's own tokens",
                ids.len(),
                case.context_ids.len(),
                first_diff(&ids, &case.context_ids),
                case.context_ids.len()
            )),
            Some(_) => {}
        }
    }
    if context.is_empty() {
        case.increment_tokens = case.full_tokens;
    } else {
        case.increment = increment;
    }
    Ok(case)
}

/// One tokenizer's ids of the earlier turns and the turn's own ids (see
/// [`own_after`]), `all` being its tokens(context + increment).
fn own_ids(
    t: &mut Tokenizer,
    context: &str,
    increment: &str,
    all: &[u32],
) -> Result<(Vec<u32>, Vec<u32>), String> {
    let (by, bos) = (t.backend, t.bos);
    let mut enc = |s: &str| t.encode(s).map_err(|e| format!("{by} tokenizer: {e}"));
    let ids = enc(context)?;
    let alone = enc(increment)?;
    match own_after(&ids, &alone, all, bos) {
        Ok(own) => Ok((ids, own)),
        Err(at) => Err(format!("the {by} tokenizer does not split the conversation cleanly where the turn starts (tokens(all) differ from tokens(earlier turns) + tokens(turn) at id {at}); use --turns-cache cold")),
    }
}

/// The prompt set of `cases`: prompt `i` is case `i`'s whole conversation text (what the parity
/// gate and the context-size check look at), its origin the conversation's line.
pub fn prompt_set(name: &str, path: &Path, cases: &[TurnCase]) -> PromptSet {
    PromptSet {
        name: name.to_string(),
        path: path.to_path_buf(),
        prompts: cases.iter().map(|c| c.full.clone()).collect(),
        repeat: None,
        warmup: None,
        dataset: Some(DatasetMeta {
            lines: cases.iter().map(|c| c.line).collect(),
            output_tokens: vec![None; cases.len()],
        }),
    }
}

#[cfg(test)]
#[path = "turns_tests.rs"]
mod tests;
