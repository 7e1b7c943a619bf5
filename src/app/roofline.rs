//! The machine's roofline for reports and `ttft roofline`: measured by the probe in
//! `crate::models::probe` once per (device, threads, libtorch) and cached in
//! `$TTFT_CACHE_DIR` (default `$XDG_CACHE_HOME/ttft`, else `~/.cache/ttft`) as `roofline.json`.
//! Without the torch feature there is nothing to probe with, and reports say so.

use crate::report::roofline::Roofline;
use std::path::PathBuf;

/// The cache file.
pub fn cache_path() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    let dir = env("TTFT_CACHE_DIR")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("ttft")))
        .or_else(|| env("HOME").map(|h| h.join(".cache/ttft")))?;
    Some(dir.join("roofline.json"))
}

fn cached() -> Vec<Roofline> {
    cache_path()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Keep `r` in the cache (replacing an entry for the same device, threads and libtorch);
/// written to a temporary file and renamed, so a concurrent reader never sees half a file.
fn store(r: &Roofline) -> std::io::Result<PathBuf> {
    let path = cache_path().ok_or_else(|| std::io::Error::other("no HOME for the cache"))?;
    let mut all = cached();
    all.retain(|c| !same_key(c, r));
    // A run's own end reading describes that run, not the machine.
    all.push(Roofline {
        read_at_end_gbs: None,
        ..r.clone()
    });
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("json.{}", std::process::id()));
    std::fs::write(&tmp, serde_json::to_string_pretty(&all)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

fn same_key(a: &Roofline, b: &Roofline) -> bool {
    a.device == b.device && a.threads == b.threads && a.libtorch == b.libtorch
}

/// The CPU's roofline at `threads`: from the cache, else measured now (`refresh`: always, and
/// each figure the new probe beats is raised in the cache; none is lowered).
/// `say` is told when a probe runs, since it takes about a second. Err says why there is none.
pub fn cpu(threads: u32, refresh: bool, say: &dyn Fn(&str)) -> Result<Roofline, String> {
    imp::cpu(threads, refresh, say)
}

/// `r` with what this machine reads now as its `read_at_end_gbs`, and its memory read rate
/// raised to that if it is higher (and the cache raised with it). Called after every timed run, so a run that meets a faster spell
/// of a shared host than its probe did lifts the ceiling its own fractions are measured
/// against; about 40 ms, outside every clock.
pub fn read_rechecked(r: Roofline) -> Roofline {
    imp::read_rechecked(r)
}

#[cfg(feature = "torch")]
mod imp {
    use super::*;

    pub fn read_rechecked(r: Roofline) -> Roofline {
        if !r.device.starts_with("cpu") {
            return r;
        }
        tch::set_num_threads(r.threads as i32);
        let Ok(now) = crate::models::probe::read_gbs(tch::Device::Cpu) else {
            return r;
        };
        let mut best = r.clone();
        if now > r.read_gbs {
            let mut newer = r.clone();
            newer.read_gbs = now;
            newer.measured_at = crate::report::roofline::measured_now();
            best = r.raised_by(&newer);
            if best.steady {
                let _ = store(&best);
            }
        }
        best.read_at_end_gbs = Some(now);
        best
    }

    pub fn cpu(threads: u32, refresh: bool, say: &dyn Fn(&str)) -> Result<Roofline, String> {
        let device = format!("cpu: {}", crate::report::env::cpu_model());
        let libtorch = crate::backend::hf::libtorch_version().unwrap_or_else(|| "unknown".into());
        let hit = cached().into_iter().find(|c| {
            c.device == device
                && c.threads == threads
                && c.libtorch == libtorch
                && c.version == crate::report::roofline::PROBE_VERSION
        });
        if let (Some(hit), false) = (&hit, refresh) {
            return Ok(hit.clone());
        }
        // About a second: said only if it takes longer than two (the rule for every wait before
        // timing), so a bad input found after it is still the run's only line on stderr.
        let r = crate::backend::waiting::announced(
            &format!("this machine's roofline probe ({threads} threads)"),
            "prepare",
            "about a second, then cached for later runs",
            || crate::models::probe::measure(tch::Device::Cpu, threads, &device),
        )
        .map_err(|e| format!("roofline probe: {e}"))?;
        // The cache keeps each figure's best (`Roofline::raised_by`): a refresh in a slow spell
        // cannot lower the ceiling. A probe with nothing cached is kept only if steady.
        let best = match &hit {
            Some(h) => h.raised_by(&r),
            None => r,
        };
        if best.steady && hit.as_ref() != Some(&best) {
            if let Err(e) = store(&best) {
                say(&format!("roofline: not cached ({e})"));
            }
        }
        Ok(best)
    }
}

#[cfg(not(feature = "torch"))]
mod imp {
    use super::*;

    pub fn cpu(_threads: u32, _refresh: bool, _say: &dyn Fn(&str)) -> Result<Roofline, String> {
        Err("not measured: this build has no libtorch (the torch feature) to probe with".into())
    }

    pub fn read_rechecked(r: Roofline) -> Roofline {
        r
    }
}

/// `ttft roofline`: print the CPU's roofline (measured now with `--refresh`).
pub fn run(a: &crate::cli::RooflineArgs) -> anyhow::Result<i32> {
    let threads = a
        .threads
        .filter(|&t| t > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let r = cpu(threads, a.refresh, &|m| eprintln!("ttft: {m}")).map_err(anyhow::Error::msg)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        for l in r.lines() {
            println!("{l}");
        }
        if let Some(p) = cache_path() {
            let state = if r.steady {
                ""
            } else {
                " (this unsteady probe was not cached)"
            };
            println!("  cache: {}{state}", p.display());
        }
    }
    Ok(0)
}
