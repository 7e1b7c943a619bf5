//! Exact-length synthetic prompts for `--prompt-tokens`: a text whose token count is exactly N in
//! every selected backend's tokenizer, different for every run (a new seed each time), so no prompt
//! cache can help and the TTFT-vs-length fit sees exactly the lengths it claims.

use super::parity::Tokenizer;
use super::stats::SplitMix64;

/// Everyday words that are single tokens (with their leading space) in common BPE vocabularies.
const WORDS: &[&str] = &[
    "time",
    "year",
    "people",
    "way",
    "day",
    "man",
    "thing",
    "woman",
    "life",
    "child",
    "world",
    "school",
    "state",
    "family",
    "student",
    "group",
    "country",
    "problem",
    "hand",
    "part",
    "place",
    "case",
    "week",
    "company",
    "system",
    "program",
    "question",
    "work",
    "number",
    "night",
    "point",
    "home",
    "water",
    "room",
    "mother",
    "area",
    "money",
    "story",
    "fact",
    "month",
    "lot",
    "right",
    "study",
    "book",
    "eye",
    "job",
    "word",
    "business",
    "issue",
    "side",
    "kind",
    "head",
    "house",
    "service",
    "friend",
    "father",
    "power",
    "hour",
    "game",
    "line",
    "end",
    "member",
    "law",
    "car",
    "city",
    "name",
    "team",
    "minute",
    "idea",
    "body",
    "information",
    "back",
    "parent",
    "face",
    "level",
    "office",
    "door",
    "health",
    "person",
    "art",
    "war",
    "history",
    "party",
    "result",
    "change",
    "morning",
    "reason",
    "research",
    "girl",
    "moment",
    "air",
    "teacher",
    "force",
    "education",
    "light",
    "music",
    "river",
    "table",
    "green",
    "small",
    "large",
    "early",
    "simple",
];

/// Build a prompt of exactly `n` tokens for every tokenizer, from `seed`.
pub fn exact_prompt(n: u32, seed: u64, tokenizers: &mut [Tokenizer]) -> Result<String, String> {
    if tokenizers.is_empty() {
        return Err("no tokenizer to measure the prompt length with".into());
    }
    let n = n as usize;
    let mut rng = SplitMix64::new(seed);
    let mut word = move || WORDS[rng.below(WORDS.len())];
    let count = |t: &mut Tokenizer, s: &str| t.encode(s).map(|v| v.len());
    // Grow a word list to about n tokens with the first tokenizer, then adjust word by word.
    let mut words: Vec<&str> = Vec::new();
    let base = count(&mut tokenizers[0], "")?;
    while words.len() + base < n {
        words.push(word());
    }
    let mut best: Option<(usize, String)> = None;
    for _attempt in 0..400 {
        let text = words.join(" ");
        let counts: Vec<usize> = tokenizers
            .iter_mut()
            .map(|t| count(t, &text))
            .collect::<Result<_, _>>()?;
        if counts.iter().all(|&c| c == n) {
            return Ok(text);
        }
        let c0 = counts[0];
        let miss = counts.iter().map(|&c| c.abs_diff(n)).max().unwrap_or(0);
        if best.as_ref().is_none_or(|(m, _)| miss < *m) {
            best = Some((
                miss,
                counts
                    .iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join("/"),
            ));
        }
        if c0 < n {
            words.push(word());
        } else if c0 > n && words.len() > 1 {
            words.pop();
        } else {
            // The first tokenizer is satisfied but another is not: swap a random word.
            let i = (seed as usize + words.len()) % words.len();
            words[i] = word();
            words.pop();
        }
    }
    let names: Vec<&str> = tokenizers.iter().map(|t| t.backend.name()).collect();
    Err(format!(
        "cannot build a prompt of exactly {n} tokens for {} (closest: {} tokens)",
        names.join(", "),
        best.map(|b| b.1).unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendKind;

    /// A toy tokenizer: a BOS plus one token per word, two for words longer than 6 letters.
    fn toy(bos: bool) -> Tokenizer {
        Tokenizer::new(BackendKind::Inproc, "toy", None, move |s: &str| {
            let mut v = Vec::new();
            if bos {
                v.push(0);
            }
            for w in s.split_whitespace() {
                v.push(1);
                if w.len() > 6 {
                    v.push(2);
                }
            }
            Ok(v)
        })
    }

    #[test]
    fn builds_exact_lengths_that_differ_per_seed() {
        for n in [16, 64, 257] {
            let mut t = vec![toy(true)];
            let a = exact_prompt(n, 1, &mut t).unwrap();
            let b = exact_prompt(n, 2, &mut t).unwrap();
            assert_eq!(t[0].encode(&a).unwrap().len(), n as usize);
            assert_eq!(t[0].encode(&b).unwrap().len(), n as usize);
            assert_ne!(a, b, "runs must get different texts");
        }
    }

    #[test]
    fn satisfies_two_tokenizers_or_says_it_cannot() {
        let mut two = vec![toy(true), toy(true)];
        let p = exact_prompt(40, 7, &mut two).unwrap();
        assert_eq!(two[1].encode(&p).unwrap().len(), 40);
        // One tokenizer always adds 1000 tokens: N is unreachable for it.
        let mut bad = vec![
            toy(false),
            Tokenizer::new(BackendKind::Hf, "huge", None, |_s: &str| Ok(vec![0; 1000])),
        ];
        let e = exact_prompt(20, 1, &mut bad).unwrap_err();
        assert!(
            e.contains("exactly 20 tokens") && e.contains("inproc, hf"),
            "{e}"
        );
    }
}
