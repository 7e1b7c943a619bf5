//! The JSON document: settings, environment, every backend's facts, every run, the summaries.

use super::env::Environment;
use super::Report;
use serde_json::{json, Value};

/// Version of the document layout; bump on any incompatible change.
pub const SCHEMA_VERSION: u32 = 3;

/// Render the full report. `settings` is what was asked for (after config and flags).
pub fn render(report: &Report, env: &Environment, settings: &Value, started_at: &str) -> Vec<u8> {
    let mut environment = json!(env);
    environment["roofline"] = match &report.roofline {
        Ok(r) => json!(r),
        Err(why) => json!({ "unavailable": why }),
    };
    let doc = json!({
        "schema_version": SCHEMA_VERSION,
        "tool": "ttft",
        "started_at": started_at,
        "finished_at": chrono::Local::now().to_rfc3339(),
        "settings": settings,
        "environment": environment,
        "sets": report.sets,
        "backends": report.backends,
        "token_disagreements": report.token_disagreements.iter().map(|(set, idx, counts)| json!({
            "prompt_type": set, "prompt_idx": idx, "counts": counts,
        })).collect::<Vec<_>>(),
        "parity": report.parity,
        // One load point: its summary (as before sweeps); a sweep: null, every point below.
        "load": (report.load.len() == 1).then(|| &report.load[0]),
        "load_points": report.load,
        // One search: it (as before sets and repeats); several: null, every search below.
        "load_search": (report.load_searches.len() == 1).then(|| &report.load_searches[0]),
        "load_searches": report.load_searches,
        // --repeat: each point's figures and the saturation load over the repeats, with CIs.
        "load_repeats": crate::bench::load_repeat::repeated(&report.load),
        "load_saturation": crate::bench::load_repeat::saturation(&report.load_searches),
        "first_token_agreement": report.first_token_agreement(),
        "fits": report.fits(),
        "depth_fits": super::depth::fits(report),
        "turns": super::turns::summaries(report),
        "relative": report.relative(),
        "summary": report.summaries(),
        "runs": report.runs,
    });
    let mut bytes = serde_json::to_vec_pretty(&doc).expect("report serialises");
    bytes.push(b'\n');
    bytes
}
