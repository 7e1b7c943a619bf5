use super::*;
use crate::backend::BackendKind;
use crate::bench::conversation::Turn;

const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\\nBe kind.<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// One id per character: boundaries are trivially clean.
fn chars(kind: BackendKind) -> Tokenizer {
    Tokenizer::new(kind, "chars", None, |s: &str| {
        Ok(s.chars().map(|c| c as u32).collect())
    })
}

fn conv(turns: &[(Role, &str)]) -> Conversation {
    Conversation::new(
        turns
            .iter()
            .map(|(role, text)| Turn {
                role: *role,
                text: text.to_string(),
            })
            .collect(),
    )
    .unwrap()
}

fn three_turns() -> Conversation {
    conv(&[
        (Role::User, "one"),
        (Role::Assistant, "A1"),
        (Role::User, "two"),
        (Role::Assistant, "A2"),
        (Role::User, "three"),
        (Role::Assistant, "A3"),
    ])
}

/// `three_turns()` at line `line`, up to `k` turns, through `t` alone.
fn replay(
    t: &ChatTemplate,
    line: usize,
    k: u32,
    toks: &mut [Tokenizer],
) -> Result<Vec<TurnCase>, TurnsError> {
    let c = three_turns();
    cases(
        Path::new("c.jsonl"),
        &[(line, &c)],
        k,
        &[("gguf".into(), t)],
        toks,
    )
}

#[test]
fn each_turn_holds_the_earlier_turns_and_answers_as_context() {
    let t = ChatTemplate::new(CHATML, "", "").unwrap();
    let mut toks = [chars(BackendKind::Inproc), chars(BackendKind::Hf)];
    let got = replay(&t, 7, 2, &mut toks).unwrap();
    assert_eq!(got.len(), 2, "--turns 2 stops at the second user turn");
    // Turn 1: nothing before it, the warm run is the cold run.
    assert!(got[0].context_ids.is_empty());
    assert_eq!(got[0].increment, got[0].full);
    assert_eq!(got[0].increment_tokens, got[0].full_tokens);
    // Turn 2: turn 1 and its answer are the context; the increment is the new user turn.
    let ctx = "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\none<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n";
    assert_eq!(got[1].context_ids.len(), ctx.chars().count());
    assert_eq!(
        got[1].increment,
        "<|im_start|>user\ntwo<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(got[1].full, format!("{ctx}{}", got[1].increment));
    assert_eq!(
        got[1].increment_tokens as usize,
        got[1].increment.chars().count()
    );
    assert_eq!(got[1].line, 7);
    assert_eq!(got[1].turn, 2);
    assert_eq!(got[1].text(TurnsCache::Cold), got[1].full);
    assert!(got[1].context(TurnsCache::Cold).is_empty());
    assert_eq!(
        got[1].expected_tokens(TurnsCache::Warm, Some(99)),
        Some(got[1].increment_tokens)
    );
    assert_eq!(got[1].expected_tokens(TurnsCache::Cold, Some(99)), Some(99));
}

#[test]
fn a_conversation_with_fewer_turns_gives_what_it_has() {
    let t = ChatTemplate::new(CHATML, "", "").unwrap();
    let got = replay(&t, 1, 9, &mut [chars(BackendKind::Inproc)]).unwrap();
    assert_eq!(got.iter().map(|c| c.turn).collect::<Vec<_>>(), [1, 2, 3]);
    let set = prompt_set("conversations", Path::new("c.jsonl"), &got);
    assert_eq!(set.prompts[2], got[2].full);
    assert_eq!(set.origin(2), "c.jsonl line 1");
}

#[test]
fn a_template_that_rewrites_history_is_refused_for_warm_runs() {
    // Earlier assistant answers are dropped once a new user turn follows (as reasoning
    // templates drop old thinking): the earlier render is not a prefix of the later one.
    let src = "{% for m in messages %}{% if m['role'] == 'user' or loop.last %}[{{ m['role'] }}:{{ m['content'] }}]{% endif %}{% endfor %}";
    let t = ChatTemplate::new(src, "", "").unwrap();
    let e = replay(&t, 3, 2, &mut [chars(BackendKind::Inproc)]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("c.jsonl line 3 turn 2: the gguf chat template does not render"),
        "{e}"
    );
}

#[test]
fn templates_that_render_differently_are_refused() {
    let a = ChatTemplate::new(CHATML, "", "").unwrap();
    let b = ChatTemplate::new(&CHATML.replace("Be kind.", "Be brief."), "", "").unwrap();
    let c = three_turns();
    let e = cases(
        Path::new("c.jsonl"),
        &[(1, &c)],
        1,
        &[("gguf".into(), &a), ("checkpoint".into(), &b)],
        &mut [chars(BackendKind::Inproc)],
    )
    .unwrap_err();
    assert!(
        matches!(e, TurnsError::TemplatesDiffer { at: 22, .. }),
        "{e}"
    );
}

#[test]
fn a_tokenizer_that_merges_across_the_turn_boundary_is_refused() {
    // Merges the context's last newline with the next turn's first character.
    let merging = Tokenizer::new(BackendKind::Hf, "merging", None, |s: &str| {
        Ok(s.replace("\n<", "\u{1}")
            .chars()
            .map(|c| c as u32)
            .collect())
    });
    let t = ChatTemplate::new(CHATML, "", "").unwrap();
    let e = replay(&t, 1, 2, &mut [chars(BackendKind::Inproc), merging]).unwrap_err();
    assert!(
        e.to_string().contains("the hf tokenizer does not split"),
        "{e}"
    );
}

#[test]
fn labels_and_names() {
    assert_eq!(turns_label("", TurnsCache::Warm), "cache=warm");
    assert_eq!(
        turns_label("threads=2", TurnsCache::Cold),
        "threads=2 cache=cold"
    );
    assert_eq!(TurnsCache::parse("cold"), Some(TurnsCache::Cold));
    assert_eq!(TurnsCache::parse("hot"), None);
}

#[test]
fn a_turn_that_starts_with_the_bos_token_keeps_it() {
    // SmolLM2: BOS is `<|im_start|>`, which every turn starts with, and none is added.
    let bos_is_lt = Tokenizer::new(
        BackendKind::Inproc,
        "lt",
        Some(u32::from('<')),
        |s: &str| Ok(s.chars().map(|c| c as u32).collect()),
    );
    let t = ChatTemplate::new(CHATML, "", "").unwrap();
    let got = replay(&t, 1, 2, &mut [bos_is_lt]).unwrap();
    assert_eq!(
        got[1].increment_tokens as usize,
        got[1].increment.chars().count()
    );
}
