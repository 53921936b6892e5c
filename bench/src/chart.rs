//! The PNG chart: a grouped bar chart of each workload's wall time divided by its raw
//! limit, one bar per tool (imagesync, skopeo, raw = 1×), on a logarithmic axis.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

use crate::{format_number, Summary, IMAGESYNC, RAW, SKOPEO};

/// The metric charted.
pub const WALL: &str = "wall time";

/// One group of bars: a workload and each tool's median wall time / raw median.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub workload: String,
    pub bars: Vec<(&'static str, f64)>,
}

/// The groups to draw: every [`WALL`] metric with a raw limit.
pub fn groups(summaries: &[Summary]) -> Vec<Group> {
    summaries
        .iter()
        .filter(|s| s.metric == WALL)
        .filter_map(|s| {
            s.ratio(RAW, RAW)?;
            let bars = [IMAGESYNC, SKOPEO, RAW]
                .into_iter()
                .filter_map(|t| s.ratio(t, RAW).map(|r| (t, r)))
                .collect();
            Some(Group {
                workload: s.workload.clone(),
                bars,
            })
        })
        .collect()
}

/// Registers a TrueType font as "sans-serif" for the chart text.
pub fn load_font(path: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("cannot read font {}: {e}", path.display()))?;
    // plotters keeps fonts for the life of the process and wants a 'static slice.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("{} is not a usable TrueType font", path.display()))
}

fn color(tool: &str) -> RGBColor {
    match tool {
        IMAGESYNC => RGBColor(31, 119, 180),
        SKOPEO => RGBColor(255, 127, 14),
        _ => RGBColor(120, 120, 120),
    }
}

/// Draws the chart into an RGB buffer of `width` x `height` and returns it PNG-encoded.
/// `subtitle` goes under the title (machine facts).
pub fn render_png(
    groups: &[Group],
    subtitle: &str,
    width: u32,
    height: u32,
) -> anyhow::Result<Vec<u8>> {
    let mut rgb = vec![255u8; width as usize * height as usize * 3];
    draw(&mut rgb, groups, subtitle, width, height)?;
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&rgb)?;
        w.finish()?;
    }
    Ok(out)
}

fn draw(
    rgb: &mut [u8],
    groups: &[Group],
    subtitle: &str,
    width: u32,
    height: u32,
) -> anyhow::Result<()> {
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing the chart: {e}");
    let root = BitMapBackend::with_buffer(rgb, (width, height)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (top, body) = root.split_vertically(70);
    top.draw(&Text::new(
        "imagesync vs skopeo vs raw limit: wall time / raw limit (median, lower is better)",
        (20, 12),
        ("sans-serif", 22).into_font(),
    ))
    .map_err(|e| err(&e))?;
    top.draw(&Text::new(
        subtitle.to_string(),
        (20, 42),
        ("sans-serif", 15).into_font().color(&RGBColor(80, 80, 80)),
    ))
    .map_err(|e| err(&e))?;

    let n = groups.len().max(1);
    let values = || groups.iter().flat_map(|g| g.bars.iter().map(|b| b.1));
    let max = values().fold(1.0f64, f64::max);
    let min = values().filter(|v| *v > 0.0).fold(1.0f64, f64::min);
    let (lo, hi) = ((min * 0.5).min(0.5), (max * 1.6).max(2.0));
    let mut chart = ChartBuilder::on(&body)
        .margin_left(20)
        .margin_right(30)
        .margin_bottom(10)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..n as f64, (lo..hi).log_scale())
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .disable_x_axis()
        .x_labels(0)
        .y_labels(8)
        .light_line_style(WHITE)
        .y_desc("time / raw limit (log scale)")
        .y_label_formatter(&|v| format!("{}×", format_number(*v)))
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(|e| err(&e))?;
    // The raw limit.
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(0.0, 1.0), (n as f64, 1.0)],
            BLACK.stroke_width(1),
        )))
        .map_err(|e| err(&e))?;

    let slot = 0.8 / 3.0;
    for (i, g) in groups.iter().enumerate() {
        for (j, (tool, v)) in g.bars.iter().enumerate() {
            let x0 = i as f64 + 0.1 + slot * j as f64;
            let x1 = x0 + slot * 0.9;
            let top_v = v.clamp(lo, hi);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, lo), (x1, top_v)],
                    color(tool).filled(),
                )))
                .map_err(|e| err(&e))?;
            // backend_coord is in root pixels, so labels are drawn on the root area.
            let (px, py) = chart.backend_coord(&((x0 + x1) / 2.0, top_v));
            root.draw(&Text::new(
                format!("{}×", format_number(*v)),
                (px, py - 4),
                TextStyle::from(("sans-serif", 14).into_font())
                    .pos(Pos::new(HPos::Center, VPos::Bottom)),
            ))
            .map_err(|e| err(&e))?;
        }
        let (px, py) = chart.backend_coord(&(i as f64 + 0.5, lo));
        root.draw(&Text::new(
            g.workload.clone(),
            (px, py + 12),
            TextStyle::from(("sans-serif", 16).into_font()).pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(|e| err(&e))?;
    }

    // Legend, top left of the plotting area.
    let (lx, ly) = chart.backend_coord(&(0.0, hi));
    for (k, (tool, label)) in [
        (IMAGESYNC, "imagesync"),
        (SKOPEO, "skopeo copy --all"),
        (RAW, "raw limit (parallel curl GET|PUT)"),
    ]
    .into_iter()
    .enumerate()
    {
        let y = ly + 10 + 22 * k as i32;
        root.draw(&Rectangle::new(
            [(lx + 12, y), (lx + 28, y + 14)],
            color(tool).filled(),
        ))
        .map_err(|e| err(&e))?;
        root.draw(&Text::new(
            label,
            (lx + 36, y),
            ("sans-serif", 15).into_font(),
        ))
        .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Measurements;

    #[test]
    fn groups_only_wall_times_with_a_raw_limit_normalised_to_it() {
        let m = Measurements::parse(
            "m\tcold\timagesync\twall time\ts\t3\n\
             m\tcold\tskopeo\twall time\ts\t6\n\
             m\tcold\traw\twall time\ts\t2\n\
             m\tcold\timagesync\tpeak RSS\tMiB\t40\n\
             m\tctl\timagesync\twall time\ts\t1\n",
        )
        .unwrap();
        let g = groups(&m.summaries());
        assert_eq!(
            g,
            vec![Group {
                workload: "cold".into(),
                bars: vec![(IMAGESYNC, 1.5), (SKOPEO, 3.0), (RAW, 1.0)]
            }]
        );
    }

    #[test]
    fn renders_a_png_of_the_requested_size() {
        let font = std::path::Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf");
        if !font.exists() {
            eprintln!("skipping: no DejaVu font");
            return;
        }
        load_font(font).unwrap();
        let g = vec![Group {
            workload: "cold copy".into(),
            bars: vec![(IMAGESYNC, 1.2), (SKOPEO, 2.5), (RAW, 1.0)],
        }];
        let png = render_png(&g, "2 CPUs", 400, 300).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        // IHDR: width and height, big-endian, right after the signature and chunk header.
        assert_eq!(
            u32::from_be_bytes([png[16], png[17], png[18], png[19]]),
            400
        );
        assert_eq!(
            u32::from_be_bytes([png[20], png[21], png[22], png[23]]),
            300
        );
    }
}
