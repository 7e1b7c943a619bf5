//! StreamState on scripted events: which event ends TTFT, how tokens are counted, why the
//! stream stopped, and the last event without its blank line.

use super::*;
use std::time::Duration;

fn state(endpoint: Endpoint, flavor: ApiFlavor) -> StreamState {
    StreamState::new(Instant::now(), endpoint, flavor)
}

/// Feed `body` (raw SSE bytes) through a parser into `st`, as `read_stream` does.
fn feed(st: &mut StreamState, body: &str) -> Result<(), RunError> {
    let mut parser = SseParser::default();
    for ev in parser.push(body.as_bytes()).unwrap() {
        if st.event(&ev)? {
            return Ok(());
        }
    }
    st.flush(&mut parser)
}

fn run(endpoint: Endpoint, flavor: ApiFlavor, body: &str) -> Result<Measurement, RunError> {
    let mut st = state(endpoint, flavor);
    feed(&mut st, body)?;
    st.into_measurement()
}

const NATIVE_FINAL: &str = r#"{"content":"","tokens":[],"stop":true,"stop_type":"eos","timings":{"cache_n":0,"prompt_n":3,"prompt_ms":1.5,"predicted_n":3}}"#;

#[test]
fn a_final_event_without_the_blank_line_is_still_used() {
    let body = format!(
        "data: {{\"content\":\" a\",\"tokens\":[7],\"stop\":false,\"tokens_predicted\":1}}\n\n\
         data: {{\"content\":\"\",\"tokens\":[2],\"stop\":false,\"tokens_predicted\":2}}\n\n\
         data: {NATIVE_FINAL}"
    );
    let m = run(Endpoint::Completion, ApiFlavor::Llama, &body).unwrap();
    assert_eq!(m.stop_reason.as_deref(), Some("eos"));
    assert_eq!(m.server_prompt_ms, Some(1.5));
    assert_eq!(m.generated_tokens, 3);
    assert_eq!(m.tokens_counted_by, Some(TokenCount::ServerPredicted));
    assert_eq!(
        (m.first_token_id, m.first_token_bytes.as_deref()),
        (Some(7), Some("2061"))
    );
    // Without it the run has no end marker: a failed row, as before.
    let cut = body.rsplit_once("data: ").unwrap().0;
    let e = run(Endpoint::Completion, ApiFlavor::Llama, cut).unwrap_err();
    assert!(e.0.contains("without its end marker"), "{}", e.0);
    // A final event cut off inside its JSON is a broken stream, not malformed data.
    let half = &body[..body.len() - 20];
    let e = run(Endpoint::Completion, ApiFlavor::Llama, half).unwrap_err();
    assert!(e.0.contains("stream closed inside an event"), "{}", e.0);
}

#[test]
fn tokens_arrays_count_when_there_are_no_timings() {
    let body = "data: {\"content\":\"\",\"tokens\":[5,6],\"stop\":false,\"tokens_predicted\":2}\n\n\
                data: {\"content\":\"中\",\"tokens\":[8],\"stop\":false}\n\n\
                data: {\"content\":\"\",\"tokens\":[1,5,6,8],\"stop\":true,\"stop_type\":\"limit\"}\n\n";
    let m = run(Endpoint::Completion, ApiFlavor::Openai, body).unwrap();
    assert_eq!(
        m.generated_tokens, 3,
        "the final event's array is not per token"
    );
    assert_eq!(m.tokens_counted_by, Some(TokenCount::TokensArrays));
    assert_eq!(m.stop_reason.as_deref(), Some("length"));
    // Two ids in the first event: it is not the first token alone, so no id is claimed.
    assert_eq!(m.first_token_id, None);
    assert!(m.first_char_ms.is_some_and(|c| c >= m.ttft_ms));
}

#[test]
fn usage_counts_several_tokens_per_chunk_and_tpot_divides_by_them() {
    let mut st = state(Endpoint::V1, ApiFlavor::Openai);
    let chunk = |t: &str| {
        format!("data: {{\"choices\":[{{\"text\":\"{t}\",\"finish_reason\":null}}]}}\n\n")
    };
    feed(&mut st, &chunk(" a b")).unwrap();
    std::thread::sleep(Duration::from_millis(30));
    feed(&mut st, &chunk(" c d")).unwrap();
    feed(
        &mut st,
        "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"stop\",\"stop_reason\":null}]}\n\n\
         data: {\"choices\":[],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":5}}\n\ndata: [DONE]\n\n",
    )
    .unwrap();
    let m = st.into_measurement().unwrap();
    assert_eq!(
        m.generated_tokens, 5,
        "the EOS step counts, the finish chunk adds none"
    );
    assert_eq!(m.tokens_counted_by, Some(TokenCount::Usage));
    assert_eq!(m.itl_ms.len(), 1, "one gap per arriving chunk");
    let span = m.itl_ms[0];
    let tpot = m.decode_ms_per_token.unwrap();
    assert!((tpot - span / 4.0).abs() < 1e-9, "{tpot} vs {span}");
    assert_eq!(
        m.stop_reason.as_deref(),
        Some("eos"),
        "vLLM's stop_reason null"
    );
    assert_eq!(m.prompt_tokens, Some(4));
    assert_eq!(m.output, " a b c d");
}

#[test]
fn without_any_count_each_token_chunk_is_one() {
    let body = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n\
                data: {\"choices\":[{\"delta\":{\"content\":null,\"reasoning\":\"Hm\"}}]}\n\n\
                data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
                data: {\"choices\":[{\"delta\":{\"content\":\"\"}}]}\n\n\
                data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    let m = run(Endpoint::Chat, ApiFlavor::Openai, body).unwrap();
    assert_eq!(m.generated_tokens, 2);
    assert_eq!(m.tokens_counted_by, Some(TokenCount::Chunks));
    assert_eq!(m.first_token, "Hm");
    assert!(m.first_visible_ms.unwrap() >= m.ttft_ms);
    assert_eq!(
        m.stop_reason.as_deref(),
        Some("stop"),
        "cannot tell EOS from a stop string"
    );
    assert_eq!((m.first_char_ms, m.first_tool_call_ms), (None, None));
}

#[test]
fn a_tool_call_first_ends_ttft_and_an_eos_first_is_a_token() {
    let body = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":null}}]}\n\n\
                data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]}}]}\n\n\
                data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{}\"}}]}}]}\n\n\
                data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\ndata: [DONE]\n\n";
    let m = run(Endpoint::Chat, ApiFlavor::Openai, body).unwrap();
    assert_eq!(m.first_tool_call_ms, Some(m.ttft_ms));
    assert_eq!((m.first_visible_ms, m.generated_tokens), (None, 2));
    assert_eq!(m.stop_reason.as_deref(), Some("tool_calls"));

    let eos =
        "data: {\"choices\":[{\"text\":\"\",\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    let m = run(Endpoint::V1, ApiFlavor::Llama, eos).unwrap();
    assert_eq!((m.generated_tokens, m.first_token.as_str()), (1, ""));
    assert_eq!(
        m.stop_reason.as_deref(),
        Some("eos"),
        "llama-server /v1/completions"
    );
    let m = run(
        Endpoint::Chat,
        ApiFlavor::Llama,
        &eos.replace("\"text\":\"\"", "\"delta\":{}"),
    )
    .unwrap();
    assert_eq!(m.stop_reason.as_deref(), Some("stop"));
}
