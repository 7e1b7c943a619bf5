//! `--dataset FILE`: JSONL, one request per line, in either of two formats:
//!
//! - `{"prompt": "...", "output_tokens": N}` (`output_tokens` optional: that request's max new
//!   tokens, else `--max-new-tokens`);
//! - ShareGPT, `{"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", …}, …]}`:
//!   the request is the first human turn; the whole conversation is kept ([`Conversation`]) for
//!   replaying it turn by turn. `output_tokens` is accepted on these lines too.
//!
//! Every line is checked before anything is timed, and a bad one is named by file and line
//! number with what is wrong. `--dataset-sample N` draws N requests with `--seed`, without
//! replacement, the same N for the same seed. The requests become one prompt set named after
//! the file's stem, so statistics stay per request (each is a case).

use super::conversation::{Conversation, Role, Turn};
use super::prompts::{DatasetMeta, PromptSet};
use super::stats::SplitMix64;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// What the two line formats look like, for messages.
const FORMATS: &str = r#"{"prompt": "...", "output_tokens": N} or {"conversations": [{"from": "human", "value": "..."}, ...]}"#;

/// One request of a dataset.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRequest {
    /// Line number in the file, from 1.
    pub line: usize,
    /// The text sent: the prompt, or the conversation's first human turn.
    pub prompt: String,
    /// The line's `output_tokens`: this request's max new tokens.
    pub output_tokens: Option<u32>,
    /// The whole conversation, for ShareGPT lines.
    pub conversation: Option<Conversation>,
}

/// A parsed dataset file.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// The file.
    pub path: PathBuf,
    /// Every request, in file order.
    pub requests: Vec<DatasetRequest>,
}

/// Why a dataset cannot be used; every message names the file (and the line).
#[derive(Debug, Error)]
pub enum DatasetError {
    /// The file does not exist or cannot be read.
    #[error("--dataset {path}: {source} (pass a JSONL file, one request per line)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// No requests (only blank lines).
    #[error("--dataset {path} has no requests (one JSON object per line: {FORMATS})")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A line that is not a usable request.
    #[error("--dataset {path} line {line}: {what}")]
    Line {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// What is wrong with it.
        what: String,
    },
    /// `--dataset-sample` of 0 or more than the file holds.
    #[error("--dataset-sample {asked}: {path} has {has} request{s} (ask for 1 to {has})", s = if *has == 1 { "" } else { "s" })]
    Sample {
        /// The file.
        path: PathBuf,
        /// What was asked for.
        asked: usize,
        /// Requests in the file.
        has: usize,
    },
}

impl Dataset {
    /// Read and check every line of `path`.
    pub fn load(path: &Path) -> Result<Self, DatasetError> {
        let bytes = std::fs::read(path).map_err(|source| DatasetError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let line = e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count() + 1;
                return Err(line_error(
                    path,
                    line,
                    "not UTF-8 text: save the file as UTF-8",
                ));
            }
        };
        Self::parse(path, &text)
    }

    /// Parse the text of `path` (blank lines are skipped, line numbers still count them).
    pub fn parse(path: &Path, text: &str) -> Result<Self, DatasetError> {
        let mut requests = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            let req = parse_line(raw, i + 1).map_err(|what| line_error(path, i + 1, &what))?;
            requests.push(req);
        }
        if requests.is_empty() {
            return Err(DatasetError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(Self {
            path: path.to_path_buf(),
            requests,
        })
    }

    /// `n` requests drawn with `seed` without replacement (in file order), or all of them.
    pub fn sample(&self, n: Option<usize>, seed: u64) -> Result<Vec<DatasetRequest>, DatasetError> {
        let has = self.requests.len();
        let Some(n) = n else {
            return Ok(self.requests.clone());
        };
        if n == 0 || n > has {
            return Err(DatasetError::Sample {
                path: self.path.clone(),
                asked: n,
                has,
            });
        }
        // Partial Fisher-Yates: the first n slots of a seeded shuffle.
        let mut idx: Vec<usize> = (0..has).collect();
        let mut rng = SplitMix64::new(seed ^ 0xDA7A_5E7D_DA7A_5E7D);
        for i in 0..n {
            let j = i + rng.below(has - i);
            idx.swap(i, j);
        }
        let mut picked = idx[..n].to_vec();
        picked.sort_unstable();
        Ok(picked
            .into_iter()
            .map(|i| self.requests[i].clone())
            .collect())
    }

    /// The prompt set of `requests`, named `name` (statistics stay per request).
    pub fn prompt_set(&self, name: &str, requests: &[DatasetRequest]) -> PromptSet {
        PromptSet {
            name: name.to_string(),
            path: self.path.clone(),
            prompts: requests.iter().map(|r| r.prompt.clone()).collect(),
            repeat: None,
            warmup: None,
            dataset: Some(DatasetMeta {
                lines: requests.iter().map(|r| r.line).collect(),
                output_tokens: requests.iter().map(|r| r.output_tokens).collect(),
            }),
        }
    }
}

/// The set name of a dataset file: its stem.
pub fn set_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "dataset".into())
}

fn line_error(path: &Path, line: usize, what: &str) -> DatasetError {
    DatasetError::Line {
        path: path.to_path_buf(),
        line,
        what: what.to_string(),
    }
}

/// One non-blank line as a request, or what is wrong with it.
fn parse_line(raw: &str, line: usize) -> Result<DatasetRequest, String> {
    let v: Value = serde_json::from_str(raw)
        .map_err(|e| format!("not valid JSON ({e}); expected {FORMATS}"))?;
    let Value::Object(obj) = v else {
        return Err(format!(
            "expected a JSON object, got {}; expected {FORMATS}",
            kind(&v)
        ));
    };
    let output_tokens = output_tokens(&obj)?;
    match (obj.get("prompt"), obj.get("conversations")) {
        (Some(_), Some(_)) => Err(r#"has both "prompt" and "conversations": keep one"#.into()),
        (Some(p), None) => {
            let prompt = p
                .as_str()
                .ok_or_else(|| format!(r#""prompt" must be a string, got {}"#, kind(p)))?;
            if prompt.trim().is_empty() {
                return Err(r#""prompt" is empty"#.into());
            }
            Ok(DatasetRequest {
                line,
                prompt: prompt.to_string(),
                output_tokens,
                conversation: None,
            })
        }
        (None, Some(c)) => {
            let conversation = conversation(c)?;
            Ok(DatasetRequest {
                line,
                prompt: conversation.first_user_turn().to_string(),
                output_tokens,
                conversation: Some(conversation),
            })
        }
        (None, None) => {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            Err(format!(
                "neither format (keys: {}); expected {FORMATS}",
                if keys.is_empty() {
                    "none".to_string()
                } else {
                    keys.join(", ")
                }
            ))
        }
    }
}

/// `output_tokens`, when present: a positive integer.
fn output_tokens(obj: &Map<String, Value>) -> Result<Option<u32>, String> {
    let Some(v) = obj.get("output_tokens") else {
        return Ok(None);
    };
    match v.as_u64() {
        Some(n) if n >= 1 && n <= u64::from(u32::MAX) => Ok(Some(n as u32)),
        _ => Err(format!(
            r#""output_tokens" must be a positive integer, got {v}"#
        )),
    }
}

/// ShareGPT's `conversations` array as a [`Conversation`].
fn conversation(c: &Value) -> Result<Conversation, String> {
    let Value::Array(items) = c else {
        return Err(format!(
            r#""conversations" must be an array of {{"from", "value"}} turns, got {}"#,
            kind(c)
        ));
    };
    let mut turns = Vec::with_capacity(items.len());
    for (i, t) in items.iter().enumerate() {
        let n = i + 1;
        let from = t
            .get("from")
            .or_else(|| t.get("role"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!(r#"turn {n} has no "from" string"#))?;
        let role = Role::parse(from).ok_or_else(|| {
            format!(r#"turn {n}: unknown "from": "{from}" (human, gpt or system)"#)
        })?;
        let text = t
            .get("value")
            .or_else(|| t.get("content"))
            .and_then(Value::as_str)
            .ok_or_else(|| format!(r#"turn {n} has no "value" string"#))?;
        if role == Role::User && text.trim().is_empty() {
            return Err(format!("turn {n}: the human turn is empty"));
        }
        turns.push(Turn {
            role,
            text: text.to_string(),
        });
    }
    Conversation::new(turns).map_err(|e| e.to_string())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
#[path = "dataset_tests.rs"]
mod tests;
