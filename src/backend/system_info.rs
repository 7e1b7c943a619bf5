//! The `system_info` of the two llama.cpp sides: llama-server logs its line at startup, the
//! in-process build answers `llama_print_system_info()`. Both must show the same ggml backend
//! sections (CPU features, CUDA, Metal, RPC, ...), so the report compares them section by section.

use std::collections::BTreeMap;

/// What follows `system_info:` in the line llama-server logs at startup: its thread counts, then
/// every ggml backend section (`CUDA : ARCHS = 890 | ... | CPU : SSE3 = 1 | ...`), all of it, so a
/// GPU or RPC section is compared with `llama_print_system_info()` of the in-process build too.
pub fn system_info_from_log(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("system_info:"))?;
    let start = line.find("system_info:")? + "system_info:".len();
    let rest = line[start..].trim();
    rest.contains(" : ").then(|| rest.to_string())
}

/// The ggml backend sections of a system-info string, each with its feature flags sorted
/// ("AVX2 = 1", ...): `NAME : k = v | k = v | NAME2 : ...`. Pieces before the first section (the
/// server's thread counts, which differ from the in-process line by design) are left out.
pub fn system_sections(system_info: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut section: Option<String> = None;
    for piece in system_info.split('|').map(str::trim) {
        let feature = match piece.split_once(" : ") {
            Some((name, first)) => {
                let name = name.trim().to_string();
                out.entry(name.clone()).or_default();
                section = Some(name);
                first.trim()
            }
            None => piece,
        };
        if let (Some(s), true) = (&section, feature.contains('=')) {
            out.entry(s.clone()).or_default().push(feature.to_string());
        }
    }
    out.values_mut().for_each(|v| v.sort());
    out
}

/// One line per ggml backend section that differs between the in-process build and the
/// server (features, or a section only one side has), naming the section.
pub fn system_info_differences(inproc: &str, server: &str) -> Vec<String> {
    let (a, b) = (system_sections(inproc), system_sections(server));
    let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    names
        .into_iter()
        .filter_map(|name| match (a.get(name), b.get(name)) {
            (Some(x), Some(y)) if x == y => None,
            (Some(x), Some(y)) => Some(format!(
                "ggml {name} features differ between inproc ({}) and llama-server ({}): build both from the same flags (scripts/setup.sh)",
                x.join(" "),
                y.join(" ")
            )),
            (x, y) => {
                let (side, f) = if x.is_some() { ("inproc", x) } else { ("llama-server", y) };
                Some(format!(
                    "ggml {name} backend only in {side}'s build ({}): inproc and llama-server do not run on the same backends",
                    f.map(|f| f.join(" ")).unwrap_or_default()
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_info_is_found_in_server_log() {
        let log = "main: loading\nsystem_info: n_threads = 2 (n_threads_batch = 2) / 2 | CPU : SSE3 = 1 | AVX2 = 1 | \nmore";
        let si = system_info_from_log(log).unwrap();
        assert_eq!(
            si,
            "n_threads = 2 (n_threads_batch = 2) / 2 | CPU : SSE3 = 1 | AVX2 = 1 |"
        );
        let cpu = |s: &str| system_sections(s).remove("CPU").unwrap();
        assert_eq!(cpu(&si), ["AVX2 = 1", "SSE3 = 1"]);
        assert_eq!(cpu("CPU : AVX2 = 1 | SSE3 = 1 | "), cpu(&si));
        assert_eq!(
            system_sections(&si).len(),
            1,
            "the thread counts are no section"
        );
        assert!(system_info_differences("CPU : AVX2 = 1 | SSE3 = 1 | ", &si).is_empty());
        assert_eq!(system_info_from_log("nothing here"), None);
    }

    #[test]
    fn every_backend_section_is_compared_and_named() {
        let log = "system_info: n_threads = 8 / 16 | CUDA : ARCHS = 890 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | CPU : SSE3 = 1 | AVX2 = 1 | OPENMP = 1 | ";
        let server = system_info_from_log(log).unwrap();
        let s = system_sections(&server);
        assert_eq!(
            s["CUDA"],
            ["ARCHS = 890", "PEER_MAX_BATCH_SIZE = 128", "USE_GRAPHS = 1"]
        );
        assert_eq!(s["CPU"], ["AVX2 = 1", "OPENMP = 1", "SSE3 = 1"]);
        let same = "CUDA : USE_GRAPHS = 1 | ARCHS = 890 | PEER_MAX_BATCH_SIZE = 128 | CPU : AVX2 = 1 | SSE3 = 1 | OPENMP = 1 | ";
        assert!(system_info_differences(same, &server).is_empty());
        let other_arch = same.replace("ARCHS = 890", "ARCHS = 800");
        let d = system_info_differences(&other_arch, &server);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].starts_with("ggml CUDA features differ") && d[0].contains("ARCHS = 800"),
            "{d:?}"
        );
        let cpu_only = "CPU : AVX2 = 1 | SSE3 = 1 | OPENMP = 1 | ";
        let d = system_info_differences(cpu_only, &server);
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(
            d[0].starts_with("ggml CUDA backend only in llama-server's build"),
            "{d:?}"
        );
    }
}
