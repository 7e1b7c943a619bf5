//! Repeats summarised without a server: made-up load points and searches.
use super::*;
use crate::bench::load::Slo;
use crate::bench::load_report::{summarise, LoadSample, RunFacts};
use crate::bench::load_search::{search, SearchOptions};

/// A point of `set` at `rate`, repeat `repeat`, whose every request took `ttft` ms.
fn point(set: &str, rate: f64, repeat: u32, ttft: f64) -> LoadReport {
    let samples = vec![
        LoadSample {
            ttft_ms: Some(ttft),
            e2e_ms: Some(ttft),
            done_s: 1.0,
            ..Default::default()
        };
        4
    ];
    let facts = RunFacts {
        settings: String::new(),
        set: set.into(),
        repeat,
        mode: LoadMode::Open {
            rate,
            burstiness: 1.0,
        },
        label: format!("rate={rate}"),
        duration_s: 2.0,
        max_in_flight: 1,
        server_slots: None,
        slo: Slo::default(),
        client_cpu: None,
        warmup: 0,
    };
    summarise(&samples, &facts)
}

#[test]
fn the_interval_is_students_t_over_the_repeats() {
    let e = Estimate::of(vec![10.0, 12.0, 14.0]).unwrap();
    // mean 12, s = 2, t(0.975, 2) = 4.303: 12 ± 4.303 · 2 / √3.
    let half = 4.303 * 2.0 / 3f64.sqrt();
    assert!((e.mean - 12.0).abs() < 1e-12);
    assert!((e.ci_low - (12.0 - half)).abs() < 1e-9);
    assert!((e.ci_high - (12.0 + half)).abs() < 1e-9);
    assert_eq!(e.values, [10.0, 12.0, 14.0]);
    assert!(
        Estimate::of(vec![5.0]).is_none(),
        "one repeat has no spread"
    );
    // Many repeats: close to the normal quantile.
    assert!((t95(1000) - 1.962).abs() < 1e-3);
}

#[test]
fn points_are_grouped_by_set_and_load_never_pooled_across_them() {
    let points = [
        point("short", 1.0, 1, 100.0),
        point("short", 2.0, 1, 200.0),
        point("short", 1.0, 2, 110.0),
        point("short", 2.0, 2, 230.0),
        point("long", 1.0, 1, 3000.0),
        point("long", 1.0, 2, 3300.0),
        point("long", 2.0, 1, 5000.0),
    ];
    let r = repeated(&points);
    let key: Vec<(&str, &str, usize)> = r
        .iter()
        .map(|p| (p.set.as_str(), p.label.as_str(), p.repeats))
        .collect();
    // long rate=2 ran once: no interval.
    assert_eq!(
        key,
        [
            ("short", "rate=1", 2),
            ("short", "rate=2", 2),
            ("long", "rate=1", 2)
        ]
    );
    let ttft = |i: usize| r[i].ttft_p99_ms.as_ref().unwrap().values.clone();
    assert_eq!(ttft(0), [100.0, 110.0]);
    assert_eq!(ttft(2), [3000.0, 3300.0]);
    let tput = r[0].request_throughput.as_ref().unwrap();
    assert_eq!(tput.values, [2.0, 2.0], "4 requests in 2 s each time");
    assert_eq!((tput.ci_low, tput.ci_high), (2.0, 2.0));
    let text = render(&points, &[]);
    assert!(text.contains("load repeats: mean [95% CI]"), "{text}");
    assert!(text.contains("short rate=1"), "{text}");
}

#[test]
fn repeated_searches_give_the_saturation_load_with_an_interval() {
    let opts = SearchOptions {
        objectives: crate::bench::load_search::parse_objectives("ttft_p99=330").unwrap(),
        tolerance: 0.1,
        max_probes: 12,
    };
    let start = LoadMode::Open {
        rate: 1.0,
        burstiness: 1.0,
    };
    // Three searches on a server whose TTFT is 100, 90 and 110 ms per req/s.
    let searches: Vec<SearchReport> = [100.0, 90.0, 110.0]
        .iter()
        .enumerate()
        .map(|(i, per)| {
            let mut s = search(start, &opts, &mut |m| {
                Some(point("short", m.offered(), 1, per * m.offered()))
            });
            (s.set, s.repeat) = ("short".into(), i as u32 + 1);
            s
        })
        .collect();
    let sat = saturation(&searches);
    assert_eq!(sat.len(), 1);
    let lows: Vec<f64> = searches.iter().map(|s| s.low.unwrap()).collect();
    let e = sat[0].load.as_ref().unwrap();
    assert_eq!((sat[0].searches, sat[0].resolved), (3, 3));
    assert_eq!(e.values, lows);
    assert!(e.ci_low < e.mean && e.mean < e.ci_high);
    let text = render(&[], &searches);
    assert!(
        text.contains("saturation (set short): 3 of 3 searches bracketed it"),
        "{text}"
    );
    // A search that never bracketed is counted, not averaged in.
    let mut open = searches.clone();
    open[2].high = None;
    assert_eq!(saturation(&open)[0].resolved, 2);
    assert_eq!(
        saturation(&open)[0].load.as_ref().unwrap().values,
        lows[..2]
    );
}
