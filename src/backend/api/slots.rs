//! llama-server's `GET /slots`, read before and after each load point: whether every slot was
//! idle when the point started (a request still running from before would share the server with
//! the point's own and slow them) and had drained when it ended, and per slot its last task's
//! figures as llama-server names them: `n_prompt_tokens` (the tokens the slot held after it,
//! prompt and generated), `n_prompt_tokens_processed` (evaluated), `n_prompt_tokens_cache` (taken
//! from the cache) and `n_decoded`.
//! Other servers have no `/slots`: the point then says "unavailable", never zeros.

use super::ApiBackend;
use serde_json::{json, Value};

impl ApiBackend {
    /// The server's slots (the JSON array of `GET /slots`), or None when it has no such endpoint
    /// (vLLM, SGLang, TGI; llama-server started with `--no-slots`) or did not answer.
    pub fn slots_snapshot(&self) -> Option<Value> {
        let url = format!("{}/slots", self.base);
        match self.helper("GET", "/slots", self.authed(self.client.get(&url))) {
            Ok((status, text)) if (200..300).contains(&status) => {
                serde_json::from_str::<Value>(&text)
                    .ok()
                    .filter(Value::is_array)
            }
            _ => None,
        }
    }
}

/// The fields of one slot the report keeps (llama-server's `server_slot::to_json`; the prompt
/// text is left out).
fn slot(s: &Value) -> Value {
    let n = |k: &str| s.get(k).and_then(Value::as_i64);
    json!({
        "id": n("id"),
        "n_ctx": n("n_ctx"),
        "is_processing": s.get("is_processing").and_then(Value::as_bool),
        "n_prompt_tokens": n("n_prompt_tokens"),
        "n_prompt_tokens_cache": n("n_prompt_tokens_cache"),
        "n_prompt_tokens_processed": n("n_prompt_tokens_processed"),
        "n_decoded": s.pointer("/next_token/0/n_decoded").and_then(Value::as_i64)
            .or_else(|| s.pointer("/next_token/n_decoded").and_then(Value::as_i64)),
    })
}

/// One snapshot: how many slots, how many were processing, and each slot.
fn summary(slots: &[Value]) -> Value {
    let busy = slots
        .iter()
        .filter(|s| s.get("is_processing").and_then(Value::as_bool) == Some(true))
        .count();
    json!({
        "slots": slots.len(),
        "processing": busy,
        "per_slot": slots.iter().map(slot).collect::<Vec<_>>(),
    })
}

/// A load point's `/slots` before and after it, or why it is unavailable.
pub fn load_point(before: Option<&Value>, after: Option<&Value>) -> Value {
    let (Some(b), Some(a)) = (
        before.and_then(Value::as_array),
        after.and_then(Value::as_array),
    ) else {
        return json!("unavailable: the server has no /slots");
    };
    json!({
        "source": "/slots, read before and after the load point",
        "before": summary(b),
        "after": summary(a),
    })
}

/// How many slots were processing when the point started (None: no `/slots`).
pub fn busy_before(point: &Value) -> Option<u64> {
    point.pointer("/before/processing").and_then(Value::as_u64)
}

/// The point's slots in one line of text.
pub fn line(point: &Value) -> String {
    if let Some(why) = point.as_str() {
        return format!("  server slots: {why}\n");
    }
    let get = |p: &str| point.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let cached: i64 = point
        .pointer("/after/per_slot")
        .and_then(Value::as_array)
        .map_or(0, |v| {
            v.iter()
                .filter_map(|s| s["n_prompt_tokens_cache"].as_i64())
                .sum()
        });
    format!(
        "  server slots (/slots): {}/{} processing before the point, {}/{} after; the slots' last tasks took {cached} prompt tokens from their caches\n",
        get("/before/processing"),
        get("/before/slots"),
        get("/after/processing"),
        get("/after/slots"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(busy: bool, cached: i64) -> Value {
        json!([
            {"id": 0, "n_ctx": 2048, "speculative": false, "is_processing": busy, "id_task": 7,
             "n_prompt_tokens": 40, "n_prompt_tokens_processed": 40 - cached,
             "n_prompt_tokens_cache": cached, "params": {},
             "next_token": [{"has_next_token": false, "n_remain": 0, "n_decoded": 8}]},
            {"id": 1, "n_ctx": 2048, "speculative": false, "is_processing": false}
        ])
    }

    #[test]
    fn a_point_keeps_each_slot_before_and_after() {
        let p = load_point(Some(&slots(true, 0)), Some(&slots(false, 12)));
        assert_eq!(busy_before(&p), Some(1));
        assert_eq!(p["after"]["processing"], 0);
        assert_eq!(p["after"]["slots"], 2);
        let s0 = &p["after"]["per_slot"][0];
        assert_eq!(
            (
                &s0["n_prompt_tokens_cache"],
                &s0["n_prompt_tokens_processed"],
                &s0["n_decoded"]
            ),
            (&json!(12), &json!(28), &json!(8))
        );
        // A slot that never ran a task has no task fields: null, not zero.
        assert!(p["after"]["per_slot"][1]["n_prompt_tokens"].is_null());
        assert!(line(&p).contains("1/2 processing before the point, 0/2 after"));
        assert!(line(&p).contains("12 prompt tokens from their caches"));
    }

    #[test]
    fn a_server_without_slots_is_unavailable_not_zero() {
        let p = load_point(None, Some(&slots(false, 0)));
        assert_eq!(p, json!("unavailable: the server has no /slots"));
        assert_eq!(busy_before(&p), None);
        assert_eq!(
            line(&p),
            "  server slots: unavailable: the server has no /slots\n"
        );
    }
}
