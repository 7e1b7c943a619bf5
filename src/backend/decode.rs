//! The clock and the greedy decode loop of the in-process backends (inproc, hf), shared so both
//! count, time and detokenize tokens by the same rules:
//!
//! - TTFT ends when the first generated *token* is on the host and detokenized, even when it
//!   completes no character (part of a UTF-8 character, or EOS); the first complete character's
//!   time is recorded apart (`first_char_ms`).
//! - The end-of-generation token, when generation stops at one, is a generated token: counted in
//!   `generated_tokens`, its step in `itl_ms` and TPOT, its text empty (llama-server's
//!   `predicted_n` and vLLM's `completion_tokens` count it too).

use super::detok::{hex, Detokenizer, TextOf};
use super::{Measurement, RunError, TokenCount};
use std::time::Instant;

/// One greedy step of an in-process backend, plus what the loop must know about its vocabulary.
pub trait Generator: TextOf {
    /// Evaluate `prev` at the next position and return the greedy next token id, on the host.
    fn step(&mut self, prev: u32) -> Result<u32, RunError>;
    /// Whether `id` ends generation (EOS, end-of-turn, ...).
    fn is_eog(&self, id: u32) -> bool;
    /// The raw bytes of one token (for the row; read after the clock stopped).
    fn token_bytes(&self, id: u32) -> Vec<u8>;
}

/// The clock readings of an in-process run (inproc, hf): the four parts of TTFT, in order.
#[derive(Debug, Clone, Copy)]
pub struct InprocClock {
    /// Prompt text handed over.
    pub start: Instant,
    /// Token ids ready.
    pub tokenized: Instant,
    /// Last position's logits readable on the host side.
    pub prefilled: Instant,
    /// Greedy token id on the host.
    pub sampled: Instant,
    /// First token detokenized (its complete characters, maybe none): TTFT ends here.
    pub first_text: Instant,
}

/// The first generated token.
#[derive(Debug, Clone)]
pub struct FirstToken {
    /// Its id.
    pub id: u32,
    /// The complete characters it produced ("" for part of a character or EOS).
    pub text: String,
}

impl FirstToken {
    /// Detokenize the first token (inside the clock; an end-of-generation token has no text).
    pub fn detokenize(id: u32, detok: &mut Detokenizer, gen: &impl Generator) -> Self {
        let text = if gen.is_eog(id) {
            String::new()
        } else {
            detok.push(id, gen)
        };
        Self { id, text }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Stop {
    /// At an end-of-generation token (counted as generated).
    Eos,
    /// At `max_new_tokens`.
    #[default]
    Length,
}

/// What the greedy decode after the first token produced.
#[derive(Debug, Default)]
pub struct DecodeTail {
    /// All generated text, the first token's included, flushed at the end.
    pub output: String,
    /// Tokens generated, the first (and an end-of-generation token) included.
    pub generated: u32,
    /// Gaps between consecutive tokens, ms.
    pub itl_ms: Vec<f64>,
    /// Why it ended.
    pub stop: Stop,
    /// When the first complete character was on the host, if after the first token.
    pub first_char: Option<Instant>,
}

impl DecodeTail {
    fn add_text(&mut self, text: &str, now: Instant) {
        if self.output.is_empty() && !text.is_empty() {
            self.first_char = Some(now);
        }
        self.output.push_str(text);
    }
}

fn ms_between(a: Instant, b: Instant) -> f64 {
    (b - a).as_secs_f64() * 1e3
}

/// Greedy decoding after the first token, up to `max_new_tokens` in all or an end-of-generation
/// token (which is counted), then the detokenizer's flush.
pub fn decode_tail(
    first: &FirstToken,
    max_new_tokens: u32,
    clock: &InprocClock,
    detok: &mut Detokenizer,
    gen: &mut impl Generator,
) -> Result<DecodeTail, RunError> {
    let mut tail = DecodeTail {
        output: first.text.clone(),
        generated: 1,
        ..DecodeTail::default()
    };
    let mut tok = first.id;
    let mut eos = gen.is_eog(tok);
    let mut prev = clock.first_text;
    while !eos && tail.generated < max_new_tokens {
        let next = gen.step(tok)?;
        eos = gen.is_eog(next);
        let text = if eos {
            String::new()
        } else {
            detok.push(next, gen)
        };
        let now = Instant::now();
        tail.add_text(&text, now);
        tail.generated += 1;
        tail.itl_ms.push(ms_between(prev, now));
        prev = now;
        tok = next;
    }
    let rest = detok.finish(gen);
    tail.add_text(&rest, Instant::now());
    tail.stop = if eos { Stop::Eos } else { Stop::Length };
    Ok(tail)
}

impl InprocClock {
    /// The measurement of an in-process run that ended (decode included) now. The first token's
    /// bytes are read here, after the clock.
    pub fn measurement(
        &self,
        prompt_tokens: usize,
        first: FirstToken,
        tail: DecodeTail,
        gen: &impl Generator,
    ) -> Measurement {
        let end = Instant::now();
        Measurement {
            ttft_ms: ms_between(self.start, self.first_text),
            prompt_tokens: Some(prompt_tokens as u32),
            tokenize_ms: Some(ms_between(self.start, self.tokenized)),
            prefill_ms: Some(ms_between(self.tokenized, self.prefilled)),
            first_sample_ms: Some(ms_between(self.prefilled, self.sampled)),
            detokenize_ms: Some(ms_between(self.sampled, self.first_text)),
            generated_tokens: tail.generated,
            decode_ms_per_token: (tail.generated > 1)
                .then(|| ms_between(self.first_text, end) / f64::from(tail.generated - 1)),
            itl_ms: tail.itl_ms,
            e2e_ms: ms_between(self.start, end),
            first_token_id: Some(first.id),
            first_token_bytes: Some(hex(&gen.token_bytes(first.id))),
            first_char_ms: tail.first_char.map(|t| ms_between(self.start, t)),
            first_token: first.text,
            output: tail.output,
            tokens_counted_by: Some(TokenCount::Decoder),
            stop_reason: Some(
                match tail.stop {
                    Stop::Eos => "eos",
                    Stop::Length => "length",
                }
                .into(),
            ),
            ..Measurement::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scripted model: emits `script` in order; id 0 is EOS; id n has the bytes `pieces[n]`.
    struct Script {
        script: Vec<u32>,
        at: usize,
        pieces: Vec<&'static [u8]>,
    }

    impl TextOf for Script {
        fn text_of(&self, ids: &[u32]) -> Vec<u8> {
            ids.iter()
                .flat_map(|&i| self.pieces[i as usize].to_vec())
                .collect()
        }
    }

    impl Generator for Script {
        fn step(&mut self, _prev: u32) -> Result<u32, RunError> {
            self.at += 1;
            Ok(self.script[self.at])
        }
        fn is_eog(&self, id: u32) -> bool {
            id == 0
        }
        fn token_bytes(&self, id: u32) -> Vec<u8> {
            self.pieces[id as usize].to_vec()
        }
    }

    fn run(script: &[u32], max: u32) -> Measurement {
        let e = "🙂".as_bytes();
        let mut gen = Script {
            script: script.to_vec(),
            at: 0,
            pieces: vec![&b""[..], &b" yes"[..], &e[..2], &e[2..], &b"."[..]],
        };
        let start = Instant::now();
        let mut detok = Detokenizer::new(&[], 0, &gen);
        let first = FirstToken::detokenize(script[0], &mut detok, &gen);
        let clock = InprocClock {
            start,
            tokenized: start,
            prefilled: start,
            sampled: start,
            first_text: Instant::now(),
        };
        let tail = decode_tail(&first, max, &clock, &mut detok, &mut gen).unwrap();
        clock.measurement(3, first, tail, &gen)
    }

    #[test]
    fn the_eos_token_is_counted_and_timed_with_no_text() {
        let m = run(&[1, 4, 0], 64);
        assert_eq!(m.generated_tokens, 3);
        assert_eq!(m.itl_ms.len(), 2);
        assert_eq!(m.output, " yes.");
        assert_eq!(m.stop_reason.as_deref(), Some("eos"));
        assert_eq!(m.tokens_counted_by, Some(TokenCount::Decoder));
        assert_eq!(m.first_char_ms, None, "the first token had text");
        let cut = run(&[1, 4, 0], 2);
        assert_eq!(cut.generated_tokens, 2);
        assert_eq!(cut.stop_reason.as_deref(), Some("length"));
    }

    #[test]
    fn an_eos_first_token_is_one_generated_token() {
        let m = run(&[0], 64);
        assert_eq!(m.generated_tokens, 1);
        assert!(m.itl_ms.is_empty() && m.decode_ms_per_token.is_none());
        assert_eq!(m.stop_reason.as_deref(), Some("eos"));
        assert_eq!(m.first_token, "");
        assert_eq!(m.first_token_id, Some(0));
    }

    #[test]
    fn a_partial_first_character_ends_ttft_at_the_token_and_records_the_character_later() {
        let m = run(&[2, 3, 0], 64);
        assert_eq!(m.first_token, "");
        assert_eq!(m.first_token_id, Some(2));
        assert_eq!(m.first_token_bytes.as_deref(), Some("f09f"));
        assert_eq!(m.output, "🙂");
        let fc = m
            .first_char_ms
            .expect("first character after the first token");
        assert!(fc >= m.ttft_ms && fc <= m.e2e_ms);
        // Cut off inside the character: it is dropped, never shown as U+FFFD.
        let cut = run(&[2, 3, 0], 1);
        assert_eq!(cut.output, "");
        assert_eq!(cut.stop_reason.as_deref(), Some("length"));
    }
}
