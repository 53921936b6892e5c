//! The benchmark report of `bench/run.sh`.
//!
//! The bench scripts append one measurement per line to a tab-separated file:
//!
//! ```text
//! fact    KEY       VALUE                              machine and run facts
//! note    WORKLOAD  TEXT                               what a workload does
//! m       WORKLOAD  TOOL  METRIC  UNIT  VALUE          one sample (one repetition)
//! ```
//!
//! [`Measurements::parse`] reads it, [`Measurements::summaries`] gives the median and
//! spread of every (workload, metric, tool), and [`markdown`] writes the report with the
//! ratios imagesync / raw limit and imagesync / skopeo. The chart is in [`chart`].
//!
//! Over 600 lines because of its unit tests (about 460 lines of code, the rest tests of the
//! parser and the report).

pub mod chart;
pub mod link;

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The tool whose numbers are compared with the others.
pub const IMAGESYNC: &str = "imagesync";
/// The peer tool.
pub const SKOPEO: &str = "skopeo";
/// The floor: parallel `curl` GET|PUT of the same blobs, or a theoretical minimum.
pub const RAW: &str = "raw";
/// The original Terraform provider (sHesl/terraform-provider-imagesync v0.0.8), compared
/// with imagesync's in the Terraform workloads.
pub const ORIGINAL: &str = "original";

/// An error in the measurements file, with its line number (1-based).
#[derive(Debug, PartialEq)]
pub struct ParseError {
    /// Line number, 1-based.
    pub line: usize,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

impl std::error::Error for ParseError {}

/// One sample of one metric.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub workload: String,
    pub tool: String,
    pub metric: String,
    pub unit: String,
    pub value: f64,
}

/// Everything in a measurements file, in file order.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Measurements {
    /// `fact` lines; a later line with the same key replaces the earlier value.
    pub facts: Vec<(String, String)>,
    /// `note` lines per workload, in file order.
    pub notes: Vec<(String, String)>,
    pub samples: Vec<Sample>,
}

impl Measurements {
    /// Parses the tab-separated measurements; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut out = Measurements::default();
        for (i, line) in text.lines().enumerate() {
            let err = |message: String| ParseError {
                line: i + 1,
                message,
            };
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split('\t').collect();
            match fields.as_slice() {
                ["fact", key, value] => {
                    let value = value.trim().to_string();
                    match out.facts.iter_mut().find(|(k, _)| k == key) {
                        Some(slot) => slot.1 = value,
                        None => out.facts.push((key.to_string(), value)),
                    }
                }
                ["note", workload, text] => out
                    .notes
                    .push((workload.to_string(), text.trim().to_string())),
                ["m", workload, tool, metric, unit, value] => {
                    let value: f64 = value
                        .trim()
                        .parse()
                        .map_err(|_| err(format!("not a number: {value:?}")))?;
                    if !value.is_finite() {
                        return Err(err(format!("not a finite number: {value}")));
                    }
                    out.samples.push(Sample {
                        workload: workload.to_string(),
                        tool: tool.to_string(),
                        metric: metric.to_string(),
                        unit: unit.to_string(),
                        value,
                    });
                }
                [kind, ..] => {
                    return Err(err(format!(
                        "expected `fact KEY VALUE`, `note WORKLOAD TEXT` or \
                         `m WORKLOAD TOOL METRIC UNIT VALUE` (tab-separated), got {} field(s) \
                         starting with {kind:?}",
                        fields.len()
                    )))
                }
                [] => continue,
            }
        }
        Ok(out)
    }

    /// The value of a fact, if present.
    pub fn fact(&self, key: &str) -> Option<&str> {
        self.facts
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Workloads in order of first appearance (samples or notes).
    pub fn workloads(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let names = self
            .samples
            .iter()
            .map(|s| &s.workload)
            .chain(self.notes.iter().map(|(w, _)| w));
        for w in names {
            if !out.contains(w) {
                out.push(w.clone());
            }
        }
        out
    }

    /// Median and spread of every (workload, metric), with one [`Stats`] per tool, in order
    /// of first appearance of the workload and of the metric within it.
    pub fn summaries(&self) -> Vec<Summary> {
        let mut out: Vec<Summary> = Vec::new();
        for s in &self.samples {
            let idx = match out
                .iter()
                .position(|m| m.workload == s.workload && m.metric == s.metric)
            {
                Some(i) => i,
                None => {
                    out.push(Summary {
                        workload: s.workload.clone(),
                        metric: s.metric.clone(),
                        unit: s.unit.clone(),
                        tools: BTreeMap::new(),
                    });
                    out.len() - 1
                }
            };
            out[idx]
                .tools
                .entry(s.tool.clone())
                .or_default()
                .push(s.value);
        }
        // Keep workloads together even when a script interleaves them.
        let order = self.workloads();
        out.sort_by_key(|m| order.iter().position(|w| *w == m.workload));
        out
    }
}

/// Median, minimum and maximum of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stats {
    /// `None` for no samples. The median of an even count is the mean of the middle two.
    pub fn of(values: &[f64]) -> Option<Stats> {
        if values.is_empty() {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stats {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }
}

/// One metric of one workload, with the samples of each tool.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub workload: String,
    pub metric: String,
    pub unit: String,
    /// Samples per tool.
    pub tools: BTreeMap<String, Vec<f64>>,
}

impl Summary {
    /// The table cell of `tool`: median and spread, or a dash without samples.
    pub fn cell(&self, tool: &str) -> String {
        match self.stats(tool) {
            Some(st) => format_stats(&st, &self.unit),
            None => "–".to_string(),
        }
    }

    /// The statistics of one tool.
    pub fn stats(&self, tool: &str) -> Option<Stats> {
        self.tools.get(tool).and_then(|v| Stats::of(v))
    }

    /// Median of `tool` divided by the median of `base`; `None` if either is missing or the
    /// base is zero.
    pub fn ratio(&self, tool: &str, base: &str) -> Option<f64> {
        let a = self.stats(tool)?.median;
        let b = self.stats(base)?.median;
        if b == 0.0 {
            None
        } else {
            Some(a / b)
        }
    }

    /// Tools in display order: imagesync, skopeo, raw, then any others by name.
    pub fn tool_order(&self) -> Vec<&str> {
        let mut out: Vec<&str> = [IMAGESYNC, SKOPEO, RAW]
            .into_iter()
            .filter(|t| self.tools.contains_key(*t))
            .collect();
        out.extend(
            self.tools
                .keys()
                .map(String::as_str)
                .filter(|t| ![IMAGESYNC, SKOPEO, RAW].contains(t)),
        );
        out
    }
}

/// A number with about three significant digits, without trailing noise.
pub fn format_number(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".to_string()
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A value with its unit (`s`, `MiB`, ...; unit `count` or empty shows none).
pub fn format_value(v: f64, unit: &str) -> String {
    match unit {
        "" | "count" | "x" => format_number(v),
        _ => format!("{} {unit}", format_number(v)),
    }
}

/// `median (min–max)`, or only the median when there is one sample or no spread.
pub fn format_stats(s: &Stats, unit: &str) -> String {
    if s.n < 2 || s.min == s.max {
        format_value(s.median, unit)
    } else {
        format!(
            "{} ({}–{})",
            format_value(s.median, unit),
            format_number(s.min),
            format_number(s.max)
        )
    }
}

/// A ratio as `1.23×`, or `–` when it cannot be computed.
pub fn format_ratio(r: Option<f64>) -> String {
    match r {
        Some(r) => format!("{}×", format_number(r)),
        None => "–".to_string(),
    }
}

/// The Markdown report: machine facts, one table of every metric with the median and
/// spread of each tool and the ratios of imagesync to the raw limit and to skopeo, and the
/// workload notes.
pub fn markdown(m: &Measurements, png_name: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# imagesync benchmark results\n");
    let _ = writeln!(
        out,
        "Written by `bash bench/run.sh` (do not edit by hand). Every workload ran in the \
         same run, tools interleaved per repetition; each cell is the median with the \
         min–max spread in brackets. Ratios divide the imagesync median by the raw-limit \
         median and by the skopeo median (below 1× means imagesync is faster or smaller). \
         For the controller and Terraform workloads the raw limit is the theoretical \
         minimum. The raw `curl` limit starts a process pair per blob and pipes every byte \
         through them, so a tool can beat it on many small blobs. CPU times come from GNU \
         time (10 ms resolution, children included).\n"
    );
    if !m.facts.is_empty() {
        let _ = writeln!(out, "## Machine and run\n");
        let _ = writeln!(out, "| fact | value |\n|---|---|");
        for (k, v) in &m.facts {
            let _ = writeln!(out, "| {} | {} |", escape(k), escape(v));
        }
        out.push('\n');
    }
    let _ = writeln!(out, "## Results\n");
    let _ = writeln!(
        out,
        "| workload | metric | imagesync | skopeo | raw limit | imagesync / raw | imagesync / skopeo |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    let (wan, local): (Vec<Summary>, Vec<Summary>) =
        m.summaries().into_iter().partition(|s| is_wan(&s.workload));
    write_rows(&mut out, &local);
    out.push('\n');
    if !wan.is_empty() {
        let _ = writeln!(out, "## Over a far, slow link (WAN)\n");
        let _ = writeln!(
            out,
            "The same tools through `bench-link`, a user-space link model on loopback \
             (bench/src/link.rs): a delay per direction (half the RTT each way, plus one RTT \
             for each new connection's handshake) and a rate cap per connection and \
             direction. It models neither loss nor slow start. Here the raw limit is a \
             computed lower bound (see each workload's note).\n"
        );
        let _ = writeln!(
            out,
            "| workload | metric | imagesync | skopeo | lower bound | imagesync / bound | imagesync / skopeo |"
        );
        let _ = writeln!(out, "|---|---|---|---|---|---|---|");
        write_rows(&mut out, &wan);
    }
    original_section(&mut out, m);
    out.push('\n');
    if let Some(png) = png_name {
        let _ = writeln!(out, "![wall time relative to the raw limit]({png})\n");
    }
    if !m.notes.is_empty() {
        let _ = writeln!(out, "## Workloads\n");
        for w in m.workloads() {
            let notes: Vec<&str> = m
                .notes
                .iter()
                .filter(|(nw, _)| *nw == w)
                .map(|(_, t)| t.as_str())
                .collect();
            if !notes.is_empty() {
                let _ = writeln!(out, "- **{}**: {}", escape(&w), notes.join(" "));
            }
        }
    }
    out
}

/// Workloads over the modelled WAN link: their own table, where the raw limit is a bound.
pub fn is_wan(workload: &str) -> bool {
    workload.starts_with("WAN ")
}

fn write_rows(out: &mut String, rows: &[Summary]) {
    for s in rows {
        let cell = |tool: &str| s.cell(tool);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            escape(&s.workload),
            escape(&s.metric),
            cell(IMAGESYNC),
            cell(SKOPEO),
            cell(RAW),
            format_ratio(s.ratio(IMAGESYNC, RAW)),
            format_ratio(s.ratio(IMAGESYNC, SKOPEO)),
        );
        for other in s.tool_order().into_iter().skip(3) {
            if let Some(st) = s.stats(other) {
                let _ = writeln!(
                    out,
                    "| {} | {} ({}) | {} | | | | |",
                    escape(&s.workload),
                    escape(&s.metric),
                    escape(other),
                    format_stats(&st, &s.unit)
                );
            }
        }
    }
}

/// The Terraform workloads against the original provider: one row per metric both have,
/// with the ratio imagesync / original (nothing when no original samples were taken).
fn original_section(out: &mut String, m: &Measurements) {
    let rows: Vec<Summary> = m
        .summaries()
        .into_iter()
        .filter(|s| s.stats(ORIGINAL).is_some() && s.stats(IMAGESYNC).is_some())
        .collect();
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Terraform: imagesync against the original provider\n"
    );
    let _ = writeln!(
        out,
        "The original provider is sHesl/terraform-provider-imagesync v0.0.8, built from its \
         vendored source in the same run (below 1× means imagesync is faster or sends fewer \
         requests).\n"
    );
    let _ = writeln!(
        out,
        "| workload | metric | imagesync | original | imagesync / original |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|");
    for s in rows {
        let cell = |tool: &str| s.cell(tool);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            escape(&s.workload),
            escape(&s.metric),
            cell(IMAGESYNC),
            cell(ORIGINAL),
            format_ratio(s.ratio(IMAGESYNC, ORIGINAL)),
        );
    }
    out.push('\n');
}

fn escape(s: &str) -> String {
    s.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# comment
fact\tcpus\t2
fact\tload average\t1.0 1.0 1.0
note\tcold copy\t200 MiB image.
m\tcold copy\timagesync\twall\ts\t2.0
m\tcold copy\tskopeo\twall\ts\t4.0
m\tcold copy\traw\twall\ts\t1.0
m\tcold copy\timagesync\twall\ts\t3.0
m\tcold copy\timagesync\twall\ts\t1.0
m\tcold copy\timagesync\tpeak RSS\tMiB\t30
m\tno-op\timagesync\twall\ts\t0.02
fact\tload average\t2.0 2.0 2.0
";

    #[test]
    fn parses_facts_notes_and_samples_in_order() {
        let m = Measurements::parse(SAMPLE).unwrap();
        assert_eq!(m.fact("cpus"), Some("2"));
        assert_eq!(
            m.fact("load average"),
            Some("2.0 2.0 2.0"),
            "later fact wins"
        );
        assert_eq!(m.facts.len(), 2);
        assert_eq!(m.notes, vec![("cold copy".into(), "200 MiB image.".into())]);
        assert_eq!(m.samples.len(), 7);
        assert_eq!(m.samples[1].tool, "skopeo");
        assert_eq!(m.samples[1].value, 4.0);
        assert_eq!(m.workloads(), vec!["cold copy", "no-op"]);
    }

    #[test]
    fn rejects_bad_lines_with_their_number() {
        let e = Measurements::parse("fact\ta\tb\nm\tw\tt\twall\ts\tfast\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("not a number"), "{e}");
        let e = Measurements::parse("m\tw\tt\twall\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(e.message.contains("4 field(s)"), "{e}");
        assert!(Measurements::parse("m\tw\tt\twall\ts\tNaN\n").is_err());
    }

    #[test]
    fn median_of_odd_and_even_counts_and_spread() {
        let s = Stats::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        let s = Stats::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert_eq!(Stats::of(&[7.5]).unwrap().median, 7.5);
        assert!(Stats::of(&[]).is_none());
    }

    #[test]
    fn summaries_group_by_workload_and_metric_and_compute_ratios() {
        let m = Measurements::parse(SAMPLE).unwrap();
        let s = m.summaries();
        let names: Vec<(&str, &str)> = s
            .iter()
            .map(|s| (s.workload.as_str(), s.metric.as_str()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("cold copy", "wall"),
                ("cold copy", "peak RSS"),
                ("no-op", "wall")
            ]
        );
        let cold = &s[0];
        assert_eq!(cold.stats(IMAGESYNC).unwrap().median, 2.0);
        assert_eq!(cold.ratio(IMAGESYNC, RAW), Some(2.0));
        assert_eq!(cold.ratio(IMAGESYNC, SKOPEO), Some(0.5));
        assert_eq!(s[2].ratio(IMAGESYNC, RAW), None, "no raw sample");
        assert_eq!(cold.tool_order(), vec![IMAGESYNC, SKOPEO, RAW]);
    }

    #[test]
    fn ratio_to_a_zero_base_is_not_a_number() {
        let m =
            Measurements::parse("m\tw\timagesync\tx\tcount\t3\nm\tw\traw\tx\tcount\t0\n").unwrap();
        assert_eq!(m.summaries()[0].ratio(IMAGESYNC, RAW), None);
    }

    #[test]
    fn formats_numbers_stats_and_ratios() {
        assert_eq!(format_number(1234.4), "1234");
        assert_eq!(format_number(12.34), "12.3");
        assert_eq!(format_number(1.234), "1.23");
        assert_eq!(format_number(0.01234), "0.012");
        assert_eq!(format_value(2.0, "count"), "2.00");
        let st = Stats::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(format_stats(&st, "s"), "2.00 s (1.00–3.00)");
        assert_eq!(format_stats(&Stats::of(&[5.0]).unwrap(), "MiB"), "5.00 MiB");
        assert_eq!(format_ratio(Some(0.5)), "0.50×");
        assert_eq!(format_ratio(None), "–");
    }

    #[test]
    fn markdown_has_facts_a_row_per_metric_with_ratios_and_notes() {
        let m = Measurements::parse(SAMPLE).unwrap();
        let md = markdown(&m, Some("results.png"));
        assert!(md.contains("| cpus | 2 |"), "{md}");
        assert!(
            md.contains(
                "| cold copy | wall | 2.00 s (1.00–3.00) | 4.00 s | 1.00 s | 2.00× | 0.50× |"
            ),
            "{md}"
        );
        assert!(
            md.contains("| no-op | wall | 0.020 s | – | – | – | – |"),
            "{md}"
        );
        assert!(md.contains("![wall time relative to the raw limit](results.png)"));
        assert!(md.contains("- **cold copy**: 200 MiB image."), "{md}");
        assert!(!md.contains("original provider"), "{md}");
    }

    #[test]
    fn markdown_compares_terraform_workloads_with_the_original_provider() {
        let m = Measurements::parse(
            "m\tplan\timagesync\twall time\ts\t0.5\n\
             m\tplan\toriginal\twall time\ts\t1.0\n\
             m\tplan\timagesync\tGET per resource\tcount\t0\n\
             m\tplan\toriginal\tGET per resource\tcount\t3\n\
             m\tplan\traw\tGET per resource\tcount\t0\n\
             m\tcold\timagesync\twall time\ts\t2\n",
        )
        .unwrap();
        let md = markdown(&m, None);
        assert!(
            md.contains("## Terraform: imagesync against the original provider"),
            "{md}"
        );
        assert!(
            md.contains("| plan | wall time | 0.50 s | 1.00 s | 0.50× |"),
            "{md}"
        );
        assert!(
            md.contains("| plan | GET per resource | 0 | 3.00 | 0× |"),
            "{md}"
        );
        // Workloads without original samples stay out of that section.
        assert_eq!(md.matches("| cold |").count(), 1, "{md}");
    }

    #[test]
    fn wan_workloads_get_their_own_table_with_a_lower_bound() {
        let text = format!(
            "{SAMPLE}m\tWAN 40 ms, 100 Mbit/s: cold copy\timagesync\twall\ts\t6.0\n\
             m\tWAN 40 ms, 100 Mbit/s: cold copy\traw\twall\ts\t5.0\n"
        );
        let md = markdown(&Measurements::parse(&text).unwrap(), None);
        let wan = md
            .find("## Over a far, slow link (WAN)")
            .expect("WAN section");
        let row = md
            .find("| WAN 40 ms, 100 Mbit/s: cold copy | wall | 6.00 s | – | 5.00 s | 1.20× | – |")
            .expect("WAN row");
        assert!(row > wan, "the WAN row is in the WAN table: {md}");
        assert!(
            md.find("| cold copy | wall |").expect("local row") < wan,
            "{md}"
        );
        assert!(md[wan..].contains("| lower bound |"), "{md}");
    }
}
