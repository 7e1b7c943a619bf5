//! The saturation search's steps, driven by made-up load points (no server).
use super::*;
use crate::bench::load::Slo;
use crate::bench::load_report::{summarise, LoadSample, RunFacts};

/// A load point whose TTFT is 100 ms per unit of load (and `failed` failures).
fn point(mode: LoadMode, failed: usize) -> LoadReport {
    let t = mode.offered() * 100.0;
    let mut samples = vec![
        LoadSample {
            ttft_ms: Some(t),
            e2e_ms: Some(t),
            done_s: 1.0,
            ..Default::default()
        };
        4
    ];
    samples.extend(vec![LoadSample::default(); failed]);
    summarise(&samples, &facts(mode))
}

fn facts(mode: LoadMode) -> RunFacts {
    RunFacts {
        settings: String::new(),
        set: "short".into(),
        repeat: 1,
        mode,
        label: String::new(),
        duration_s: 1.0,
        max_in_flight: 1,
        server_slots: None,
        slo: Slo::default(),
        client_cpu: None,
        warmup: 0,
    }
}

fn opts(s: &str) -> SearchOptions {
    SearchOptions {
        objectives: parse_objectives(s).unwrap(),
        tolerance: 0.1,
        max_probes: 12,
    }
}

fn loads(r: &SearchReport) -> Vec<(&str, f64, bool)> {
    r.probes
        .iter()
        .map(|p| (p.phase, p.load, p.holds))
        .collect()
}

#[test]
fn the_rate_doubles_to_a_bracket_then_bisects_to_the_tolerance() {
    let start = LoadMode::Open {
        rate: 1.0,
        burstiness: 1.0,
    };
    let r = search(start, &opts("ttft_p99=330"), &mut |m| Some(point(m, 0)));
    assert_eq!(
        loads(&r),
        [
            ("grow", 1.0, true),
            ("grow", 2.0, true),
            ("grow", 4.0, false),
            ("bisect", 3.0, true),
            ("bisect", 3.5, false),
            ("bisect", 3.25, true),
        ]
    );
    assert_eq!((r.low, r.high), (Some(3.25), Some(3.5)));
    let text = render(&r);
    assert!(
        text.contains("saturation: 3.250 req/s (holds at 3.250, fails at 3.500"),
        "{text}"
    );
}

#[test]
fn a_start_that_fails_halves_until_one_holds() {
    let start = LoadMode::Open {
        rate: 8.0,
        burstiness: 1.0,
    };
    let r = search(start, &opts("ttft_p50=150"), &mut |m| Some(point(m, 0)));
    assert_eq!(
        &loads(&r)[..3],
        [
            ("grow", 8.0, false),
            ("shrink", 4.0, false),
            ("shrink", 2.0, false)
        ]
    );
    assert_eq!(loads(&r)[3], ("shrink", 1.0, true));
    let (lo, hi) = (r.low.unwrap(), r.high.unwrap());
    assert!(lo <= 1.5 && hi > 1.5 && (hi - lo) / lo <= 0.1, "{lo} {hi}");
}

#[test]
fn an_objective_that_fails_unloaded_stops_the_halving() {
    // TTFT that does not depend on the load: 500 ms whatever the rate.
    let flat = |m: LoadMode| {
        let mut r = point(
            LoadMode::Open {
                rate: 5.0,
                burstiness: 1.0,
            },
            0,
        );
        r.mode = m;
        r
    };
    let start = LoadMode::Open {
        rate: 8.0,
        burstiness: 1.0,
    };
    let r = search(start, &opts("ttft_p99=100"), &mut |m| Some(flat(m)));
    assert_eq!(
        r.probes.len(),
        2,
        "one halving shows the load is not the cause"
    );
    assert!(
        r.note.as_deref().unwrap().contains("fail unloaded"),
        "{r:?}"
    );
    assert!(render(&r).contains("did not lower ttft_p99"));
}

#[test]
fn a_start_that_never_holds_gives_up_after_six_halvings() {
    let start = LoadMode::Open {
        rate: 64.0,
        burstiness: 1.0,
    };
    let r = search(start, &opts("ttft_p99=0.001"), &mut |m| Some(point(m, 0)));
    assert_eq!(r.probes.len(), 1 + MAX_HALVINGS);
    assert_eq!((r.low, r.high), (None, Some(1.0)));
    assert!(
        render(&r).contains("fails even at 1.000 req/s"),
        "{}",
        render(&r)
    );
}

#[test]
fn concurrency_is_searched_in_whole_clients() {
    let start = LoadMode::Closed { concurrency: 1 };
    let r = search(start, &opts("ttft_p99=550"), &mut |m| Some(point(m, 0)));
    assert_eq!(
        loads(&r),
        [
            ("grow", 1.0, true),
            ("grow", 2.0, true),
            ("grow", 4.0, true),
            ("grow", 8.0, false),
            ("bisect", 6.0, false),
            ("bisect", 5.0, true),
        ]
    );
    assert_eq!(
        (r.low, r.high, r.searched),
        (Some(5.0), Some(6.0), "concurrency")
    );
}

#[test]
fn failed_requests_fail_a_probe_and_an_interrupt_ends_the_search() {
    let start = LoadMode::Open {
        rate: 1.0,
        burstiness: 1.0,
    };
    let r = search(start, &opts("ttft_p99=10000"), &mut |m| Some(point(m, 1)));
    assert_eq!(loads(&r)[0], ("grow", 1.0, false));
    assert_eq!(r.probes[0].failed, 1);
    let mut n = 0;
    let r = search(start, &opts("ttft_p99=10000"), &mut |m| {
        n += 1;
        (n <= 2).then(|| point(m, 0))
    });
    assert_eq!((r.probes.len(), r.low, r.high), (2, Some(2.0), None));
    assert!(render(&r).contains("holds up to 2.000 req/s"));
}

#[test]
fn objectives_parse_or_name_what_is_wrong() {
    let o = parse_objectives("ttft_p99=500, tpot_p50=40ms").unwrap();
    assert_eq!(
        o[1],
        Objective {
            metric: Metric::Tpot,
            percentile: 50,
            ms: 40.0
        }
    );
    for (bad, why) in [
        ("ttft=500", "names no percentile"),
        ("lat_p99=5", "unknown latency"),
        ("ttft_p95=5", "unknown percentile"),
        ("ttft_p99=-1", "not a positive number"),
        ("", "no objective"),
    ] {
        let e = parse_objectives(bad).unwrap_err();
        assert!(
            e.contains(why) && e.starts_with("--max-goodput"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn requests_alone_that_miss_end_the_shrinking() {
    // At 4 req/s the requests queue (TTFT 400 ms); at 2 req/s three of them run alone, at 300 ms,
    // and still miss 250 ms: a lower rate cannot help (though the p99 came down by 25 %).
    let at = |ttft: f64, sent_s: f64| LoadSample {
        ttft_ms: Some(ttft),
        e2e_ms: Some(ttft),
        sent_s,
        done_s: sent_s + 1.0,
        ..Default::default()
    };
    let probe = |m: LoadMode| {
        let samples = if m.offered() < 3.0 {
            vec![
                at(300.0, 0.0),
                at(300.0, 2.0),
                at(200.0, 10.0),
                at(300.0, 4.0),
                at(200.0, 10.5),
            ]
        } else {
            vec![at(400.0, 0.0); 4]
        };
        summarise(&samples, &facts(m))
    };
    let start = LoadMode::Open {
        rate: 4.0,
        burstiness: 1.0,
    };
    let r = search(start, &opts("ttft_p99=250"), &mut |m| Some(probe(m)));
    assert_eq!(r.probes.len(), 2, "{r:?}");
    assert_eq!(r.probes[0].unloaded_miss, None);
    let miss = r.probes[1].unloaded_miss.as_deref().unwrap();
    assert_eq!(miss, "ttft_p99 300.0 ms over 3 requests alone");
    assert_eq!((r.low, r.high), (None, Some(2.0)));
    assert!(
        render(&r).contains("had the server to themselves"),
        "{}",
        render(&r)
    );
}
