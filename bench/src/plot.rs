//! `shoal-bench run --plot FILE.png`: one bar chart per metric, a bar per target, each bar
//! labelled with its figure and its ratio to the first target.

use std::path::Path;

use anyhow::{bail, Context};
use plotters::prelude::*;

use crate::run::Metric;

/// TrueType fonts looked for, in order (Debian's fonts-dejavu-core first).
const FONTS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// The font the labels are drawn with, registered once under "sans-serif".
fn register_font() -> anyhow::Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let r = DONE.get_or_init(|| {
        let Some(bytes) = FONTS.iter().find_map(|p| std::fs::read(p).ok()) else {
            return Err(format!(
                "--plot needs a TrueType font; none of {FONTS:?} exists (apt-get install fonts-dejavu-core)"
            ));
        };
        // Registered fonts live as long as the process.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| "the font file is not a usable TrueType font".to_string())
    });
    r.clone().map_err(anyhow::Error::msg)
}

const COLUMNS: usize = 4;
const PANEL: (u32, u32) = (420, 300);
const PALETTE: [RGBColor; 6] = [
    RGBColor(90, 90, 90),
    RGBColor(70, 130, 180),
    RGBColor(220, 120, 40),
    RGBColor(60, 160, 90),
    RGBColor(170, 70, 160),
    RGBColor(200, 60, 60),
];

/// Draws `results` (one list of metrics per target, in the same order) into `out` (PNG).
pub fn plot(out: &Path, labels: &[String], results: &[Vec<Metric>]) -> anyhow::Result<()> {
    register_font()?;
    let metrics = crate::run::rows(results);
    if metrics.is_empty() {
        bail!("nothing to plot");
    }
    let rows = metrics.len().div_ceil(COLUMNS).max(1);
    let size = (PANEL.0 * COLUMNS as u32, PANEL.1 * rows as u32 + 40);
    let root = BitMapBackend::new(out, size).into_drawing_area();
    root.fill(&WHITE)?;
    let (title, body) = root.split_vertically(40);
    let legend = labels
        .iter()
        .enumerate()
        .map(|(i, l)| format!("{} = {l}", i + 1))
        .collect::<Vec<_>>()
        .join("   ");
    title.draw_text(
        &format!("shoal-bench run: {legend} (ratios to 1, higher is better)"),
        &("sans-serif", 18).into_font().color(&BLACK),
        (10, 12),
    )?;
    let panels = body.split_evenly((rows, COLUMNS));
    for (i, (m, figures)) in metrics.iter().enumerate() {
        // A target that did not measure this metric gets no bar.
        let values: Vec<f64> = figures.iter().map(|v| v.unwrap_or(0.0)).collect();
        let top = values.iter().cloned().fold(0.0, f64::max).max(1e-9) * 1.25;
        let mut chart = ChartBuilder::on(&panels[i])
            .caption(
                format!("{} ({})", m.name, m.unit),
                ("sans-serif", 16).into_font(),
            )
            .margin(8)
            .x_label_area_size(22)
            .y_label_area_size(50)
            .build_cartesian_2d((0..values.len() - 1).into_segmented(), 0.0..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(values.len())
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(t) => format!("{}", t + 1),
                _ => String::new(),
            })
            .label_style(("sans-serif", 12).into_font())
            .draw()?;
        chart.draw_series(values.iter().enumerate().map(|(t, v)| {
            let color = PALETTE[t % PALETTE.len()];
            let mut bar = Rectangle::new(
                [
                    (SegmentValue::Exact(t), 0.0),
                    (SegmentValue::Exact(t + 1), *v),
                ],
                color.filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            bar
        }))?;
        chart.draw_series(values.iter().enumerate().map(|(t, v)| {
            let ratio = match (t, figures[0], figures[t]) {
                (0, ..) => String::new(),
                (_, Some(base), Some(v)) => format!(" ×{:.2}", crate::run::ratio(m, base, v)),
                _ => String::new(),
            };
            let figure = figures[t].map_or_else(|| "—".to_string(), short);
            Text::new(
                format!("{figure}{ratio}"),
                (SegmentValue::Exact(t), *v + top * 0.02),
                ("sans-serif", 12).into_font(),
            )
        }))?;
    }
    root.present()
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

/// A figure in a few characters.
fn short(v: f64) -> String {
    match v {
        v if v >= 100_000.0 => format!("{:.0}k", v / 1000.0),
        v if v >= 100.0 => format!("{v:.0}"),
        v if v >= 1.0 => format!("{v:.1}"),
        v => format!("{v:.3}"),
    }
}
