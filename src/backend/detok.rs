//! Incremental detokenization shared by the in-process backends (inproc, hf), the way llama.cpp's
//! server and transformers' `TextStreamer` stream text: only complete characters are emitted.
//!
//! A token can be part of a UTF-8 character (byte-level BPE splits a CJK character or an emoji
//! over several tokens) or need its neighbours to decode right (a SentencePiece/Metaspace decoder
//! strips the leading space of the *first* token it decodes). Decoding one token at a time turns
//! the first case into U+FFFD and loses the space in the second. So the text of a token is
//! `text(context + pending + token) − text(context)`: the backend supplies `text` (bytes of a
//! run of ids), this module keeps the context and holds back bytes that do not yet form a
//! character. A character cut off by the end of generation is not text: [`Detokenizer::finish`]
//! drops it, as llama-server's stream does (its output never carries a partial character).

/// The replacement character's UTF-8 bytes: a decoder that produces text (hf's tokenizers) marks
/// a character it has only part of with it, so a trailing one may still change.
const REPLACEMENT: &[u8] = "\u{FFFD}".as_bytes();

/// Bytes of a run of token ids, as the backend's own decoder renders them.
pub trait TextOf {
    /// The bytes of `ids` decoded together (special tokens render as nothing).
    fn text_of(&self, ids: &[u32]) -> Vec<u8>;
}

impl<F: Fn(&[u32]) -> Vec<u8>> TextOf for F {
    fn text_of(&self, ids: &[u32]) -> Vec<u8> {
        self(ids)
    }
}

/// Streams token ids to text, complete characters only.
#[derive(Debug, Clone)]
pub struct Detokenizer {
    /// Context tokens followed by the tokens whose text is not all emitted yet.
    window: Vec<u32>,
    /// The window's text as far as it is emitted (or is context).
    done: Vec<u8>,
    /// How many tokens stay as context when everything is emitted.
    keep: usize,
}

impl Detokenizer {
    /// A detokenizer whose first token is decoded after `context` (the prompt's last tokens), so
    /// a decoder that treats the first token of a text specially does not. `keep` is how many
    /// tokens stay as context afterwards: 0 for a backend whose pieces do not depend on their
    /// neighbours (llama.cpp's `token_to_piece`), 1 or more for a text decoder.
    pub fn new(context: &[u32], keep: usize, dec: &impl TextOf) -> Self {
        let done = if context.is_empty() {
            Vec::new()
        } else {
            dec.text_of(context)
        };
        Self {
            window: context.to_vec(),
            done,
            keep,
        }
    }

    /// Add one token; returns the characters it completes (possibly none).
    pub fn push(&mut self, id: u32, dec: &impl TextOf) -> String {
        self.window.push(id);
        let full = dec.text_of(&self.window);
        let start = common_prefix(&self.done, &full);
        let new = &full[start..];
        let (text, used) = complete_chars(new);
        self.done.truncate(start);
        self.done.extend_from_slice(&new[..used]);
        if self.done.len() == full.len() {
            self.slide(dec);
        }
        text
    }

    /// The end of generation: whatever complete text is still held back. An incomplete character
    /// at the very end (and a decoder's trailing U+FFFD for one) is dropped, not turned into
    /// U+FFFD: the bytes that would complete it were never generated.
    pub fn finish(&mut self, dec: &impl TextOf) -> String {
        if self.window.is_empty() {
            return String::new();
        }
        let full = dec.text_of(&self.window);
        let start = common_prefix(&self.done, &full);
        let (text, _) = complete_chars(&full[start..]);
        self.done = full;
        self.slide(dec);
        text
    }

    /// Everything is emitted: keep only the last `keep` tokens as context, so each step decodes a
    /// few tokens, not the whole output.
    fn slide(&mut self, dec: &impl TextOf) {
        if self.window.len() <= self.keep {
            return;
        }
        self.window.drain(..self.window.len() - self.keep);
        self.done = if self.window.is_empty() {
            Vec::new()
        } else {
            dec.text_of(&self.window)
        };
    }
}

/// Length of the longest common prefix of `a` and `b` that ends on a character boundary of `b`
/// (a decoder may re-render the end of the context once more tokens follow it).
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let mut n = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    while n > 0 && n < b.len() && (b[n] & 0xC0) == 0x80 {
        n -= 1;
    }
    n
}

/// The complete characters at the start of `bytes` and how many bytes they used. Invalid bytes
/// (no later byte can make them valid) become U+FFFD now; an incomplete character at the end, and
/// a trailing U+FFFD (a text decoder's mark for a partial character), are held back.
pub fn complete_chars(bytes: &[u8]) -> (String, usize) {
    let mut out = String::new();
    let mut pos = 0;
    while pos < bytes.len() {
        match std::str::from_utf8(&bytes[pos..]) {
            Ok(s) => {
                out.push_str(s);
                pos = bytes.len();
            }
            Err(e) => {
                let valid = e.valid_up_to();
                out.push_str(std::str::from_utf8(&bytes[pos..pos + valid]).unwrap_or_default());
                pos += valid;
                match e.error_len() {
                    Some(n) => {
                        out.push('\u{FFFD}');
                        pos += n;
                    }
                    None => break,
                }
            }
        }
    }
    // Hold back trailing replacement characters that came from the bytes themselves: a text
    // decoder writes one for a character whose remaining bytes are in the next token.
    let mut used = pos;
    while used >= REPLACEMENT.len()
        && &bytes[used - REPLACEMENT.len()..used] == REPLACEMENT
        && out.ends_with('\u{FFFD}')
    {
        used -= REPLACEMENT.len();
        out.truncate(out.len() - REPLACEMENT.len());
    }
    (out, used)
}

/// Hex of raw token bytes, for the row's `first_token_bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A byte-level vocabulary: every id has fixed bytes, independent of its neighbours (like
    /// llama.cpp's `token_to_piece`).
    fn pieces(v: &[(u32, &[u8])]) -> impl Fn(&[u32]) -> Vec<u8> {
        let map: HashMap<u32, Vec<u8>> = v.iter().map(|(i, b)| (*i, b.to_vec())).collect();
        move |ids: &[u32]| ids.iter().flat_map(|i| map[i].clone()).collect()
    }

    fn stream(dec: &impl TextOf, ids: &[u32]) -> (Vec<String>, String) {
        let mut d = Detokenizer::new(&[], 0, dec);
        let steps = ids.iter().map(|&i| d.push(i, dec)).collect();
        (steps, d.finish(dec))
    }

    #[test]
    fn a_character_split_over_two_tokens_appears_when_it_completes() {
        // 中 = e4 b8 ad, 国 = e5 9b bd; token 3 holds the end of 中 and the start of 国.
        let dec = pieces(&[
            (1, b"\xe4"),
            (2, b"\xb8"),
            (3, b"\xad\xe5\x9b"),
            (4, b"\xbd!"),
        ]);
        let (steps, end) = stream(&dec, &[1, 2, 3, 4]);
        assert_eq!(steps, ["", "", "中", "国!"]);
        assert_eq!(end, "");
    }

    #[test]
    fn a_four_byte_emoji_over_four_tokens() {
        let e = "🙂".as_bytes();
        let dec = pieces(&[(1, &e[..1]), (2, &e[1..2]), (3, &e[2..3]), (4, &e[3..])]);
        let (steps, end) = stream(&dec, &[1, 2, 3, 4]);
        assert_eq!(steps, ["", "", "", "🙂"]);
        assert_eq!(end, "");
    }

    #[test]
    fn invalid_bytes_become_one_replacement_each_at_once() {
        // A lone continuation byte can never become valid; a lead byte followed by ASCII neither.
        let dec = pieces(&[(1, b"a\x80"), (2, b"\xe4"), (3, b"b")]);
        let (steps, end) = stream(&dec, &[1, 2, 3]);
        assert_eq!(steps, ["a\u{FFFD}", "", "\u{FFFD}b"]);
        assert_eq!(end, "");
    }

    #[test]
    fn an_incomplete_tail_is_dropped_at_the_end() {
        let dec = pieces(&[(1, b" x"), (2, b"\xf0\x9f")]);
        let (steps, end) = stream(&dec, &[1, 2]);
        assert_eq!(steps, [" x", ""]);
        assert_eq!(end, "");
    }

    /// A text decoder in the style of hf tokenizers' Metaspace + ByteFallback: `▁` is a space
    /// except at the very start of the decoded text, `<0xHH>` tokens are bytes that render as
    /// U+FFFD until they form a character.
    fn sentencepiece(ids: &[u32]) -> Vec<u8> {
        let vocab = ["▁Paris", "▁is", "<0xE4>", "<0xB8>", "<0xAD>", "."];
        let mut bytes = Vec::new();
        for &i in ids {
            let t = vocab[i as usize];
            match t.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
                Some(h) => bytes.push(u8::from_str_radix(h, 16).unwrap()),
                None => bytes.extend(t.replace('▁', " ").into_bytes()),
            }
        }
        let text = String::from_utf8_lossy(&bytes).into_owned();
        text.strip_prefix(' ').unwrap_or(&text).as_bytes().to_vec()
    }

    #[test]
    fn context_keeps_the_leading_space_of_a_sentencepiece_token() {
        // Alone, "▁Paris" decodes to "Paris"; after the prompt's "▁is" it is " Paris".
        assert_eq!(sentencepiece(&[0]), b"Paris");
        let mut d = Detokenizer::new(&[1], 1, &sentencepiece);
        assert_eq!(d.push(0, &sentencepiece), " Paris");
        assert_eq!(d.push(5, &sentencepiece), ".");
        assert_eq!(d.push(1, &sentencepiece), " is");
        assert_eq!(d.finish(&sentencepiece), "");
    }

    #[test]
    fn a_text_decoders_replacement_mark_is_held_until_the_character_completes() {
        let mut d = Detokenizer::new(&[1], 1, &sentencepiece);
        assert_eq!(d.push(2, &sentencepiece), "");
        assert_eq!(d.push(3, &sentencepiece), "");
        assert_eq!(d.push(4, &sentencepiece), "中");
        assert_eq!(d.push(0, &sentencepiece), " Paris");
        // Cut off inside a character: the decoder's U+FFFD for the partial bytes is dropped.
        assert_eq!(d.push(2, &sentencepiece), "");
        assert_eq!(d.finish(&sentencepiece), "");
    }

    #[test]
    fn hex_of_bytes() {
        assert_eq!(hex(b"\xe4\xb8 A"), "e4b82041");
        assert_eq!(hex(b""), "");
    }
}
