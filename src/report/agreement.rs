//! First-token agreement compares the same token, by id: two backends that pick the same token
//! agree even when one renders it as "" (part of a UTF-8 character) and the other, a server that
//! waits for the character to complete, as "中". Only a backend that gives no id (an
//! OpenAI-compatible server) is compared by text, and the record says so.

use crate::backend::{BackendKind, Measurement};
use std::collections::BTreeMap;

/// What one backend's first token was, as far as it is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen {
    /// The token id, when the backend reports one.
    pub id: Option<u32>,
    /// The first token's complete characters (may be "").
    pub text: String,
    /// The start of the whole output (to compare a "" first token with a server's first text).
    pub head: String,
}

impl Seen {
    /// The facts of a successful run.
    pub fn of(m: &Measurement) -> Self {
        Self {
            id: m.first_token_id,
            text: m.first_token.clone(),
            head: m.output.chars().take(32).collect(),
        }
    }
}

/// How a group of backends was compared.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// All the same token.
    pub agree: bool,
    /// "id" (every backend gave an id), "text" (none did) or "id+text" (some did not: those were
    /// compared by text with the others).
    pub compared_by: &'static str,
    /// Backends compared by text for want of an id.
    pub by_text: Vec<BackendKind>,
}

/// Compare the backends' first tokens: ids where both sides have one, else visible text.
pub fn compare(seen: &BTreeMap<BackendKind, Seen>) -> Verdict {
    let ids: Vec<u32> = seen.values().filter_map(|s| s.id).collect();
    let by_text: Vec<BackendKind> = seen
        .iter()
        .filter(|(_, s)| s.id.is_none())
        .map(|(k, _)| *k)
        .collect();
    let ids_agree = ids.windows(2).all(|w| w[0] == w[1]);
    // Those without an id are compared with the first backend that has one (or with each other).
    let reference = seen
        .values()
        .find(|s| s.id.is_some())
        .or_else(|| seen.values().next());
    let text_agree = by_text.iter().all(|k| match reference {
        Some(r) => same_text(&seen[k], r),
        None => true,
    });
    let compared_by = match (ids.is_empty(), by_text.is_empty()) {
        (_, true) => "id",
        (true, false) => "text",
        (false, false) => "id+text",
    };
    Verdict {
        agree: ids_agree && text_agree,
        compared_by,
        by_text,
    }
}

/// Whether two first tokens read the same when there is no id to compare: each one's text is
/// where the other's output starts. That covers equal texts, a "" first token (part of a
/// character) beside the server's first text, and a server that held a partial token back and sent
/// it with the next one (" 😀" beside the in-process " " of the token " \xf0\x9f\x98").
fn same_text(a: &Seen, b: &Seen) -> bool {
    if a.text.is_empty() && b.text.is_empty() {
        return a.head.chars().next() == b.head.chars().next();
    }
    b.head.starts_with(&a.text) && a.head.starts_with(&b.text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use BackendKind::*;

    fn seen(id: Option<u32>, text: &str, head: &str) -> Seen {
        Seen {
            id,
            text: text.into(),
            head: head.into(),
        }
    }

    #[test]
    fn ids_decide_even_when_texts_differ() {
        // inproc saw part of 中 (""), hf the same id: they agree.
        let m = BTreeMap::from([
            (Hf, seen(Some(7), "", "中国")),
            (Inproc, seen(Some(7), "", "中国")),
        ]);
        assert_eq!(
            compare(&m),
            Verdict {
                agree: true,
                compared_by: "id",
                by_text: vec![]
            }
        );
        // Same text, different ids: a real disagreement.
        let m = BTreeMap::from([
            (Hf, seen(Some(1), " Paris", " Paris")),
            (Inproc, seen(Some(2), " Paris", " Paris")),
        ]);
        assert!(!compare(&m).agree);
    }

    #[test]
    fn a_backend_without_ids_is_compared_by_text_and_named() {
        let m = BTreeMap::from([
            (Inproc, seen(Some(7), "", "中国")),
            (Api, seen(None, "中", "中国")),
        ]);
        let v = compare(&m);
        assert!(v.agree);
        assert_eq!((v.compared_by, v.by_text), ("id+text", vec![Api]));
        let m = BTreeMap::from([
            (Inproc, seen(Some(7), " Paris", " Paris")),
            (Api, seen(None, " London", " London")),
        ]);
        assert!(!compare(&m).agree);
        let m = BTreeMap::from([
            (Api, seen(None, " a", " a")),
            (Hf, seen(None, " a", " a b")),
        ]);
        assert_eq!(compare(&m).compared_by, "text");
        assert!(compare(&m).agree);
        // llama-server sends no event for a token that ends inside a character: its first text
        // is two tokens' worth, the in-process first token only the space before the emoji.
        let m = BTreeMap::from([
            (Inproc, seen(Some(40303), " ", " 😀👍")),
            (Api, seen(None, " 😀", " 😀👍")),
        ]);
        assert!(compare(&m).agree);
    }
}
