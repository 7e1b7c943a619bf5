use super::*;

fn parse(text: &str) -> Result<Dataset, DatasetError> {
    Dataset::parse(Path::new("d.jsonl"), text)
}

fn line_err(text: &str) -> (usize, String) {
    match parse(text).unwrap_err() {
        DatasetError::Line { line, what, .. } => (line, what),
        e => panic!("expected a line error, got {e}"),
    }
}

#[test]
fn prompt_lines_with_and_without_output_tokens() {
    let d =
        parse("{\"prompt\": \"hello\", \"output_tokens\": 7}\n\n{\"prompt\": \"bye\"}\n").unwrap();
    assert_eq!(d.requests.len(), 2);
    assert_eq!(d.requests[0].prompt, "hello");
    assert_eq!(d.requests[0].output_tokens, Some(7));
    assert_eq!(d.requests[0].line, 1);
    assert_eq!(d.requests[1].output_tokens, None);
    assert_eq!(d.requests[1].line, 3, "blank lines still count");
    assert!(d.requests[1].conversation.is_none());
}

#[test]
fn sharegpt_lines_send_the_first_human_turn_and_keep_the_conversation() {
    let line = r#"{"id": "x", "conversations": [{"from": "system", "value": "be brief"}, {"from": "human", "value": "Q1"}, {"from": "gpt", "value": "A1"}, {"from": "human", "value": "Q2"}]}"#;
    let d = parse(line).unwrap();
    let r = &d.requests[0];
    assert_eq!(r.prompt, "Q1");
    let c = r.conversation.as_ref().unwrap();
    assert_eq!(c.turns().len(), 4);
    assert_eq!(c.user_turns(), 2);
    assert_eq!(c.turns()[2].text, "A1");
}

#[test]
fn malformed_json_is_named_by_line_number() {
    let (line, what) = line_err("{\"prompt\": \"ok\"}\n{\"prompt\": \"unterminated}\n");
    assert_eq!(line, 2);
    assert!(what.starts_with("not valid JSON"), "{what}");
    let e = parse("{\"prompt\": \"ok\"}\n[1, 2]\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("--dataset d.jsonl line 2: expected a JSON object, got an array"),
        "{e}"
    );
}

#[test]
fn a_line_with_neither_format_lists_its_keys() {
    let (line, what) = line_err("{\"text\": \"hi\", \"id\": 3}");
    assert_eq!(line, 1);
    assert!(
        what.contains("neither format") && what.contains("id, text"),
        "{what}"
    );
    let (_, what) = line_err("{\"prompt\": \"a\", \"conversations\": []}");
    assert!(what.contains("both"), "{what}");
}

#[test]
fn wrong_field_types_are_named() {
    assert!(line_err("{\"prompt\": 5}")
        .1
        .contains("\"prompt\" must be a string"));
    assert!(line_err("{\"prompt\": \"  \"}")
        .1
        .contains("\"prompt\" is empty"));
    for bad in ["0", "-3", "2.5", "\"8\""] {
        let (_, what) = line_err(&format!("{{\"prompt\": \"a\", \"output_tokens\": {bad}}}"));
        assert!(
            what.contains("\"output_tokens\" must be a positive integer"),
            "{what}"
        );
    }
    let (_, what) = line_err("{\"conversations\": {\"from\": \"human\"}}");
    assert!(what.contains("must be an array"), "{what}");
    let (_, what) = line_err("{\"conversations\": [{\"from\": \"robot\", \"value\": \"x\"}]}");
    assert!(what.contains("unknown \"from\": \"robot\""), "{what}");
    let (_, what) = line_err("{\"conversations\": [{\"from\": \"human\"}]}");
    assert!(what.contains("turn 1 has no \"value\""), "{what}");
}

#[test]
fn empty_conversations_and_ones_without_a_human_turn_are_refused() {
    let (line, what) = line_err("{\"prompt\": \"ok\"}\n{\"conversations\": []}");
    assert_eq!(line, 2);
    assert_eq!(what, "the conversation is empty");
    let (_, what) = line_err("{\"conversations\": [{\"from\": \"gpt\", \"value\": \"hi\"}]}");
    assert!(what.contains("no human turn"), "{what}");
    let (_, what) = line_err("{\"conversations\": [{\"from\": \"human\", \"value\": \" \"}]}");
    assert!(what.contains("human turn is empty"), "{what}");
}

#[test]
fn missing_empty_and_non_utf8_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.jsonl");
    let e = Dataset::load(&missing).unwrap_err();
    assert!(matches!(e, DatasetError::Read { .. }));
    assert!(e.to_string().contains("nope.jsonl"), "{e}");
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "\n  \n").unwrap();
    let e = Dataset::load(&empty).unwrap_err();
    assert!(matches!(e, DatasetError::Empty { .. }));
    assert!(e.to_string().contains("empty.jsonl has no requests"), "{e}");
    let bin = dir.path().join("bin.jsonl");
    std::fs::write(&bin, b"{\"prompt\": \"a\"}\n{\"prompt\": \"\xff\"}\n").unwrap();
    let e = Dataset::load(&bin).unwrap_err().to_string();
    assert!(e.contains("line 2: not UTF-8"), "{e}");
}

fn five() -> Dataset {
    let text: String = (0..5)
        .map(|i| format!("{{\"prompt\": \"p{i}\"}}\n"))
        .collect();
    parse(&text).unwrap()
}

#[test]
fn sampling_is_seeded_without_replacement_and_in_file_order() {
    let d = five();
    let a = d.sample(Some(3), 7).unwrap();
    assert_eq!(a, d.sample(Some(3), 7).unwrap(), "same seed, same draw");
    let lines: Vec<usize> = a.iter().map(|r| r.line).collect();
    let mut sorted = lines.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(lines, sorted, "distinct, in file order");
    let draws: std::collections::BTreeSet<Vec<usize>> = (0..20)
        .map(|s| {
            d.sample(Some(3), s)
                .unwrap()
                .iter()
                .map(|r| r.line)
                .collect()
        })
        .collect();
    assert!(draws.len() > 1, "the seed changes the draw");
    assert_eq!(d.sample(Some(5), 1).unwrap().len(), 5);
    assert_eq!(d.sample(None, 1).unwrap(), d.requests);
}

#[test]
fn sampling_zero_or_more_than_the_file_has_says_how_many_it_has() {
    let d = five();
    for n in [0, 6] {
        let e = d.sample(Some(n), 0).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("--dataset-sample {n}: d.jsonl has 5 requests (ask for 1 to 5)")
        );
    }
}

#[test]
fn the_prompt_set_carries_lines_and_output_tokens() {
    let d = parse("{\"prompt\": \"a\", \"output_tokens\": 3}\n{\"prompt\": \"b\"}").unwrap();
    let set = d.prompt_set(&set_name(Path::new("data/mine.jsonl")), &d.requests);
    assert_eq!(set.name, "mine");
    assert_eq!(set.prompts, ["a", "b"]);
    assert_eq!(set.max_new_tokens(0, 10), 3);
    assert_eq!(set.max_new_tokens(1, 10), 10);
    assert!(!set.is_one_case(), "every request is its own case");
}

#[test]
fn the_shipped_conversation_sample_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let d = Dataset::load(&root.join("data/conversations.jsonl")).unwrap();
    assert!((8..=12).contains(&d.requests.len()), "{}", d.requests.len());
    for r in &d.requests {
        let c = r.conversation.as_ref().expect("ShareGPT format");
        assert!((3..=5).contains(&c.user_turns()), "line {}", r.line);
    }
}
