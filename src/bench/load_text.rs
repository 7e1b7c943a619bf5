//! A load point's summary as text, and a sweep's points side by side.

use super::load::LoadMode;
use super::load_report::{Dist, LoadReport};

fn f2(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
}

fn mode_text(mode: LoadMode) -> String {
    match mode {
        LoadMode::Closed { concurrency } => format!("closed loop, concurrency {concurrency}"),
        LoadMode::Open { rate, burstiness } => {
            format!("open loop, {rate} req/s, burstiness {burstiness}")
        }
    }
}

/// Which point of the run: the settings point, the prompt set and the repetition, as far as
/// they tell points apart ("" for a single set run once).
fn point_name(r: &LoadReport) -> String {
    let mut s = String::new();
    if !r.settings.is_empty() {
        s.push_str(&format!("{} ", r.settings));
    }
    s.push_str(&format!("set {}", r.set));
    if r.repeat > 1 {
        s.push_str(&format!(", repeat {}", r.repeat));
    }
    s + ", "
}

/// The load summary of one point as text.
pub fn render(r: &LoadReport) -> String {
    let row = |name: &str, d: &Dist| {
        format!(
            "  {name:<6} mean {:>9}  p50 {:>9}  p90 {:>9}  p99 {:>9} ms\n",
            f2(d.mean),
            f2(d.p50),
            f2(d.p90),
            f2(d.p99)
        )
    };
    let mut s = format!(
        "load: {}{}; {}/{} requests ok in {:.2} s; max in flight {}{}{}\n",
        point_name(r),
        mode_text(r.mode),
        r.ok,
        r.requests,
        r.duration_s,
        r.max_in_flight,
        r.server_slots
            .map(|n| format!(", server slots {n}"))
            .unwrap_or_default(),
        if r.warmup > 0 {
            format!("; warm-up: {} untimed request(s) before it", r.warmup)
        } else {
            String::new()
        }
    );
    s.push_str(&format!(
        "  throughput {:.2} req/s, {:.1} output tokens/s, goodput {:.2} req/s (SLO {})\n",
        r.request_throughput,
        r.output_tokens_per_s,
        r.goodput,
        serde_json::to_string(&r.slo).unwrap_or_default()
    ));
    if let Some(w) = &r.steady {
        s.push_str(&format!(
            "  steady {:.2}–{:.2} s (until the last send): {:.2} req/s, {:.1} output tokens/s, goodput {:.2} req/s; first answer after {} s, drain {} s\n",
            w.from_s, w.to_s, w.request_throughput, w.output_tokens_per_s, w.goodput,
            f2(r.ramp_up_s), f2(r.drain_s)
        ));
    }
    if let Some(l) = &r.lateness_ms {
        s.push_str(&format!(
            "  send lateness p50 {} p99 {} max {} ms (TTFT and E2E count from the scheduled send)\n",
            f2(l.p50), f2(l.p99), f2(l.max)
        ));
    }
    if let Some(c) = r.client_cpu {
        s.push_str(&format!("  client CPU {:.1}% of one core\n", c * 100.0));
    }
    if let Some(c) = r.context {
        s.push_str(&format!(
            "  context: {}/{} requests proved their cached context (cache_n); each client re-primes its own slot, untimed, before each request (filled before the clock; the duration includes the re-priming)\n",
            c.held, c.requests
        ));
    }
    s.push_str(&row("TTFT", &r.ttft_ms));
    s.push_str(&row("TPOT", &r.tpot_ms));
    s.push_str(&row("ITL", &r.itl_ms));
    s.push_str(&row("E2E", &r.e2e_ms));
    if let Some(m) = metrics_line(&r.server_metrics) {
        s.push_str(&m);
    }
    if !r.server_slots_state.is_null() {
        s.push_str(&crate::backend::api::slots::line(&r.server_slots_state));
    }
    for w in &r.warnings {
        s.push_str(&format!("  warning: {w}\n"));
    }
    s
}

/// The server's counters over the point, in one line (all of them are in the JSON).
fn metrics_line(m: &serde_json::Value) -> Option<String> {
    if let Some(why) = m.as_str() {
        return Some(format!("  server metrics: {why}\n"));
    }
    let delta = m.get("delta")?.as_object()?;
    let parts: Vec<String> = delta
        .iter()
        .filter_map(|(k, v)| Some(format!("{k} +{}", (v.as_f64()? * 1e3).round() / 1e3)))
        .collect();
    Some(format!(
        "  server metrics over the point: {}\n",
        parts.join(", ")
    ))
}

/// A sweep's points side by side, one table per settings point and prompt set (nothing for a
/// single point); repeats are rows of their own (`#k`), their means and CIs are in
/// [`super::load_repeat::render`].
pub fn render_sweep(points: &[LoadReport]) -> String {
    if points.len() < 2 {
        return String::new();
    }
    let mut s = String::new();
    for group in groups(points) {
        let first = group[0];
        s.push_str(&format!(
            "load sweep{}{}: point             ok/sent  req/s  steady req/s  goodput  TTFT p50  TTFT p99  TPOT p50  TPOT p99  late p99 ms\n",
            if first.settings.is_empty() { String::new() } else { format!(" {}", first.settings) },
            format_args!(" (set {})", first.set),
        ));
        let repeated = group.iter().any(|g| g.repeat > 1);
        for r in group {
            let label = if repeated {
                format!("{} #{}", r.label, r.repeat)
            } else {
                r.label.clone()
            };
            s.push_str(&format!(
                "            {:<17} {:>3}/{:<3} {:>6.2} {:>13} {:>8.2} {:>9} {:>9} {:>9} {:>9} {:>11}\n",
                label,
                r.ok,
                r.requests,
                r.request_throughput,
                r.steady.as_ref().map_or("-".into(), |w| format!("{:.2}", w.request_throughput)),
                r.goodput,
                f2(r.ttft_ms.p50),
                f2(r.ttft_ms.p99),
                f2(r.tpot_ms.p50),
                f2(r.tpot_ms.p99),
                f2(r.lateness_ms.as_ref().and_then(|l| l.p99)),
            ));
        }
    }
    s
}

/// The points of each (settings point, prompt set), in the order they first ran.
pub fn groups(points: &[LoadReport]) -> Vec<Vec<&LoadReport>> {
    ordered_groups(points, |r| (r.settings.clone(), r.set.clone()))
}

/// `items` grouped by `key`, groups in the order their first item came, items in order.
pub fn ordered_groups<'a, T, K: PartialEq>(
    items: impl IntoIterator<Item = &'a T>,
    key: impl Fn(&T) -> K,
) -> Vec<Vec<&'a T>> {
    let mut out: Vec<(K, Vec<&'a T>)> = Vec::new();
    for it in items {
        let k = key(it);
        match out.iter_mut().find(|(g, _)| *g == k) {
            Some((_, g)) => g.push(it),
            None => out.push((k, vec![it])),
        }
    }
    out.into_iter().map(|(_, g)| g).collect()
}
