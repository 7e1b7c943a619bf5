//! hf's side of detokenization: the text of a run of ids as the checkpoint's own decoder renders
//! it (so Metaspace/Strip decoders keep a token's leading space when it follows context), and a
//! token's raw bytes, comparable with llama.cpp's `token_to_piece` for the row's
//! `first_token_bytes`.

use tokenizers::Tokenizer;

/// How a vocabulary spells bytes in its token strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spelling {
    /// GPT-2 byte-level BPE: every byte is one printable character (`Ġ` = space).
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xHH>` a byte fallback, everything else UTF-8.
    SentencePiece,
}

impl Spelling {
    /// The spelling of `tok`'s vocabulary, from its decoder (a ByteLevel decoder anywhere means
    /// byte-level tokens).
    pub fn of(tok: &Tokenizer) -> Self {
        let decoder = serde_json::to_string(&tok.get_decoder()).unwrap_or_default();
        if decoder.contains("\"ByteLevel\"") {
            Spelling::ByteLevel
        } else {
            Spelling::SentencePiece
        }
    }
}

/// The text of `ids` decoded together, special tokens skipped (as llama.cpp renders them with
/// `special = false`). A decode error gives no text rather than a failed run: the ids came from
/// the model's own vocabulary.
pub fn text_of(tok: &Tokenizer, ids: &[u32]) -> Vec<u8> {
    tok.decode(ids, true).unwrap_or_default().into_bytes()
}

/// The raw bytes of one token: what it adds to the byte stream, before any UTF-8 decoding.
/// Special tokens have none.
pub fn token_bytes(tok: &Tokenizer, spelling: Spelling, id: u32) -> Vec<u8> {
    let Some(s) = tok.id_to_token(id) else {
        return Vec::new();
    };
    if tok.get_added_vocabulary().is_special_token(&s) {
        // Skipped by the decoder, as llama.cpp skips control tokens.
        return Vec::new();
    }
    match spelling {
        Spelling::ByteLevel => s
            .chars()
            .map(byte_level_byte)
            .collect::<Option<Vec<u8>>>()
            .unwrap_or_else(|| s.into_bytes()),
        Spelling::SentencePiece => match s.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
            Some(h) if h.len() == 2 => u8::from_str_radix(h, 16)
                .map(|b| vec![b])
                .unwrap_or_else(|_| s.into_bytes()),
            _ => s.replace('▁', " ").into_bytes(),
        },
    }
}

/// The byte a GPT-2 byte-level character stands for: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes (controls, space, DEL, NBSP, soft hyphen) for U+0100 onwards
/// in byte order.
fn byte_level_byte(c: char) -> Option<u8> {
    let printable = |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || b >= 174;
    let code = c as u32;
    if code < 256 {
        return printable(code).then_some(code as u8);
    }
    let nth = (code - 256) as usize;
    (0u32..256)
        .filter(|&b| !printable(b))
        .nth(nth)
        .map(|b| b as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::detok::Detokenizer;

    /// A Llama-2-style SentencePiece tokenizer (Metaspace spelling, the Replace + ByteFallback +
    /// Fuse + Strip decoder of Llama 2, TinyLlama and Mistral v0.1), built in code.
    fn llama_style() -> Tokenizer {
        let json = r#"{
          "version": "1.0", "truncation": null, "padding": null, "added_tokens": [
            {"id": 0, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
             "normalized": false, "special": true}],
          "normalizer": null, "pre_tokenizer": null, "post_processor": null,
          "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
          "model": {"type": "WordLevel", "unk_token": "<s>", "vocab": {
            "<s>": 0, "▁is": 1, "▁Paris": 2, "<0xE4>": 3, "<0xB8>": 4, "<0xAD>": 5, ".": 6}}
        }"#;
        json.parse().expect("fixture tokenizer")
    }

    #[test]
    fn sentencepiece_leading_space_survives_with_the_prompt_as_context() {
        let tok = llama_style();
        let dec = |ids: &[u32]| text_of(&tok, ids);
        // One token alone loses its space: the bug of decoding token by token.
        assert_eq!(dec(&[2]), b"Paris");
        let mut d = Detokenizer::new(&[0, 1], 1, &dec);
        assert_eq!(d.push(2, &dec), " Paris");
        assert_eq!(d.push(6, &dec), ".");
        // Byte-fallback pieces of one character: nothing until it completes.
        assert_eq!(d.push(3, &dec), "");
        assert_eq!(d.push(4, &dec), "");
        assert_eq!(d.push(5, &dec), "中");
        assert_eq!(d.finish(&dec), "");
        assert_eq!(Spelling::of(&tok), Spelling::SentencePiece);
        assert_eq!(token_bytes(&tok, Spelling::SentencePiece, 2), b" Paris");
        assert_eq!(token_bytes(&tok, Spelling::SentencePiece, 3), [0xE4]);
        assert!(token_bytes(&tok, Spelling::SentencePiece, 0).is_empty());
    }

    #[test]
    fn byte_level_characters_map_back_to_bytes() {
        assert_eq!(byte_level_byte('Ġ'), Some(b' '));
        assert_eq!(byte_level_byte('Ċ'), Some(b'\n'));
        assert_eq!(byte_level_byte('A'), Some(b'A'));
        assert_eq!(byte_level_byte('ä'), Some(0xE4));
        assert_eq!(byte_level_byte('中'), None);
        // All 256 bytes have exactly one character.
        let all: std::collections::BTreeSet<u8> = (0u32..400)
            .filter_map(char::from_u32)
            .filter_map(byte_level_byte)
            .collect();
        assert_eq!(all.len(), 256);
    }
}
