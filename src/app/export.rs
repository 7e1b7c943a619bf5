//! After the measurement: the JSON document, the table on stdout, warnings, plots and Markdown.
//! Nothing here is timed; every file name comes from [`OutputNames`], and none overwrites.

use crate::report::outputs::{
    export as write_export, Document, Exporter, JsonExporter, MarkdownExporter, OutputNames,
};
use crate::report::{self, Report};
use crate::settings::Settings;
use anyhow::{Context, Result};
use std::path::Path;

/// Write and print everything the run produced.
pub fn export(
    s: &Settings,
    report: &Report,
    names: &OutputNames,
    started: &chrono::DateTime<chrono::Local>,
    sink_error: Option<std::io::Error>,
) -> Result<()> {
    let warnings = report::warnings::warnings(report);
    let env = report::env::collect(
        s.points[0].llama.threads,
        Some(&s.base.join("vendor/llama-build.json")),
    );
    let mut settings_json = serde_json::to_value(s)?;
    settings_json["warnings"] = serde_json::json!(warnings);
    let doc = Document {
        report,
        env: &env,
        settings: &settings_json,
        started_at: &started.to_rfc3339(),
        breakdown: s.output.breakdown,
        per_prompt: s.output.per_prompt,
    };
    let json_path = names.file("json");
    write_export(&JsonExporter, &doc, &json_path).map_err(anyhow::Error::msg)?;

    print!(
        "{}",
        report::table::render(report, s.output.breakdown, s.output.per_prompt)
    );
    match &report.roofline {
        Ok(r) => println!("{}", r.lines().join("\n")),
        Err(why) => println!("roofline: {why}"),
    }
    // The fit means something for a length sweep; for a few prompt files it is noise.
    if matches!(s.prompts, crate::settings::PromptSource::Synthetic { .. }) {
        print!("{}", report::table::render_fits(report));
    }
    print!("{}", report::depth::render(report));
    print!("{}", report::turns::render(report));
    for l in &report.load {
        print!("{}", crate::bench::load::render(l));
    }
    print!("{}", crate::bench::load::render_sweep(&report.load));
    for sr in &report.load_searches {
        print!("{}", crate::bench::load_search::render(sr));
    }
    print!(
        "{}",
        crate::bench::load_repeat::render(&report.load, &report.load_searches)
    );
    for w in &warnings {
        eprintln!("ttft: warning: {w}");
    }
    if let Some(e) = sink_error {
        eprintln!(
            "ttft: warning: writing {} failed: {e}",
            names.file("csv").display()
        );
    }
    println!("CSV:  {}", names.file("csv").display());
    println!("JSON: {}", json_path.display());
    plots(report, names)?;
    // The user named this file: writing over it is what they asked for.
    if let Some(md) = &s.output.export_markdown {
        std::fs::write(md, MarkdownExporter.render(&doc))
            .with_context(|| format!("--export-markdown {}: cannot write", md.display()))?;
        println!("Markdown: {}", md.display());
    }
    Ok(())
}

/// The plots: TTFT against prompt tokens, and bars per prompt set, as SVG plus PNG.
fn plots(report: &Report, names: &OutputNames) -> Result<()> {
    let mut plots = Vec::new();
    if let Some(svg) = report::plot::ttft_vs_tokens(report) {
        plots.push(("vs-tokens".to_string(), svg));
    }
    for (set, svg) in report::plot::bars_per_set(report) {
        plots.push((format!("bars-{set}"), svg));
    }
    for (set, svg) in report::depth::plots(report) {
        plots.push((format!("depth-{set}"), svg));
    }
    plots.extend(report::plot_load::plots(&report.load));
    for (part, svg) in plots {
        let svg_path = names.part(&part, "svg");
        write_plot(&svg_path, &svg)?;
        println!("Plot: {} (+ .png)", svg_path.display());
    }
    Ok(())
}

/// Write an SVG and, next to it, its PNG (a PNG that cannot be drawn is a warning).
pub fn write_plot(svg_path: &Path, svg: &str) -> Result<()> {
    report::outputs::write_new(svg_path, svg.as_bytes())
        .with_context(|| format!("cannot write {}", svg_path.display()))?;
    let png_path = svg_path.with_extension("png");
    match report::plot::svg_to_png(svg) {
        Ok(png) => report::outputs::write_new(&png_path, &png)
            .with_context(|| format!("cannot write {}", png_path.display()))?,
        Err(e) => eprintln!(
            "ttft: warning: PNG of {} not written: {e}",
            svg_path.display()
        ),
    }
    Ok(())
}
