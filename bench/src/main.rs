//! `bench-report`: reads the measurements `bench/run.sh` collected and writes the Markdown
//! report and the PNG chart.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use imagesync_bench::{chart, markdown, Measurements};

/// Writes bench/results.md and bench/results.png from the raw measurements.
#[derive(Parser, Debug)]
#[command(name = "bench-report", version)]
struct Args {
    /// Tab-separated measurements (`fact`, `note` and `m` lines).
    #[arg(long, default_value = "bench/results.tsv")]
    input: PathBuf,
    /// Markdown report to write.
    #[arg(long, default_value = "bench/results.md")]
    markdown: PathBuf,
    /// PNG chart to write.
    #[arg(long, default_value = "bench/results.png")]
    png: PathBuf,
    /// TrueType font for the chart text.
    #[arg(
        long,
        env = "BENCH_FONT",
        default_value = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
    )]
    font: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let Args {
        input,
        markdown: md_path,
        png,
        font,
    } = Args::parse();
    let text =
        std::fs::read_to_string(&input).with_context(|| format!("reading {}", input.display()))?;
    let m = Measurements::parse(&text).with_context(|| format!("parsing {}", input.display()))?;

    let png_name = png.file_name().and_then(|n| n.to_str());
    std::fs::write(&md_path, markdown(&m, png_name))
        .with_context(|| format!("writing {}", md_path.display()))?;

    chart::load_font(&font)?;
    let subtitle = [
        "date",
        "cpus",
        "load average (start)",
        "load average (end)",
        "commit",
    ]
    .iter()
    .filter_map(|k| m.fact(k).map(|v| format!("{k}: {v}")))
    .collect::<Vec<_>>()
    .join("   ");
    let bytes = chart::render_png(&chart::groups(&m.summaries()), &subtitle, 1200, 620)?;
    std::fs::write(&png, bytes).with_context(|| format!("writing {}", png.display()))?;
    eprintln!("wrote {} and {}", md_path.display(), png.display());
    Ok(())
}
