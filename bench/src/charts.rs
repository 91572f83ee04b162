//! SVG charts of a suite run (plotters' SVG backend only): latency percentile curves per
//! target, and grouped bars (CPU per request, throughput).

use std::path::Path;

use hdrhistogram::Histogram;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// One colour per target, in report order (colour-blind-safe Okabe–Ito palette).
const COLOURS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(0, 0, 0),
];

const SIZE: (u32, u32) = (900, 520);

pub fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

/// The label of position `x` on the percentile axis, where `x = -log10(1 - q)`: 90 % is 1,
/// 99 % is 2, 99.9 % is 3 (only whole positions are labelled).
fn percentile_label(x: f64) -> String {
    if (x - x.round()).abs() > 1e-6 {
        return String::new();
    }
    let q = 100.0 * (1.0 - 10f64.powf(-x.round()));
    let digits = x.round().max(2.0) as usize - 2;
    format!("{q:.digits$} %")
}

/// Latency percentile curves: one line per `(name, histogram in µs)`; the x axis runs to the
/// highest percentile every curve has a few samples beyond.
pub fn latency_percentiles(
    path: &Path,
    title: &str,
    series: &[(String, &Histogram<u64>)],
) -> Result<(), String> {
    let series: Vec<_> = series.iter().filter(|(_, h)| !h.is_empty()).collect();
    if series.is_empty() {
        return Err(format!("{title}: no samples"));
    }
    let fewest = series
        .iter()
        .map(|(_, h)| h.len())
        .min()
        .unwrap_or(1)
        .max(1) as f64;
    let x_max = (fewest / 10.0).log10().floor().clamp(1.0, 4.0);
    let steps = (x_max * 50.0) as usize;
    let curves: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .map(|(name, h)| {
            let points = (0..=steps)
                .map(|i| {
                    let x = x_max * i as f64 / steps as f64;
                    let q = 1.0 - 10f64.powf(-x);
                    (x, h.value_at_quantile(q) as f64 / 1000.0)
                })
                .collect();
            (name.clone(), points)
        })
        .collect();
    let (lo, hi) = curves
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, y)| *y))
        .fold((f64::MAX, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = ((lo / 1.5).max(0.001), (hi * 1.5).max(lo * 2.0));

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, (lo..hi).log_scale())
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_labels(x_max as usize + 1)
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|y| format!("{y}"))
            .x_desc("percentile")
            .y_desc("latency (ms, log scale)")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, (name, points)) in curves.into_iter().enumerate() {
            let c = colour(i);
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))
                .map_err(|e| e.to_string())?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    std::fs::write(path, svg).map_err(|e| format!("write {}: {e}", path.display()))
}

/// Grouped bars: one group per category (x), one bar per series in each group; missing
/// values leave a gap. Values are written above the bars with `decimals` decimals.
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_desc: &str,
    categories: &[String],
    series: &[(String, Vec<Option<f64>>)],
    decimals: usize,
) -> Result<(), String> {
    let max = series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten())
        .fold(0f64, |m, v| m.max(*v));
    if categories.is_empty() {
        return Err(format!("{title}: nothing to draw"));
    }
    // All zero (e.g. below the clock-tick resolution of a short run): an empty chart.
    let max = if max > 0.0 { max } else { 1.0 };
    let n = categories.len() as f64;
    let width = 0.8 / series.len().max(1) as f64;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n, 0f64..max * 1.2)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_label_formatter(&|v| format!("{v:.0}"))
            .y_desc(y_desc)
            .draw()
            .map_err(|e| e.to_string())?;
        for (j, (name, values)) in series.iter().enumerate() {
            let c = colour(j);
            let bars = values.iter().enumerate().filter_map(|(i, v)| {
                let x0 = i as f64 + 0.1 + j as f64 * width;
                v.map(|v| Rectangle::new([(x0, 0.0), (x0 + width * 0.9, v)], c.filled()))
            });
            chart
                .draw_series(bars)
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], c.filled()));
            let labels = values.iter().enumerate().filter_map(|(i, v)| {
                let x = i as f64 + 0.1 + (j as f64 + 0.45) * width;
                v.map(|v| {
                    Text::new(
                        format!("{v:.decimals$}"),
                        (x, v),
                        ("sans-serif", 11)
                            .into_font()
                            .color(&BLACK)
                            .pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )
                })
            });
            chart.draw_series(labels).map_err(|e| e.to_string())?;
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .draw()
                .map_err(|e| e.to_string())?;
        }
        for (i, name) in categories.iter().enumerate() {
            let (px, py) = chart.backend_coord(&(i as f64 + 0.5, 0.0));
            root.draw(&Text::new(
                name.clone(),
                (px, py + 8),
                ("sans-serif", 14)
                    .into_font()
                    .color(&BLACK)
                    .pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(|e| e.to_string())?;
        }
        root.present().map_err(|e| e.to_string())?;
    }
    std::fs::write(path, svg).map_err(|e| format!("write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis() {
        assert_eq!(percentile_label(0.0), "0 %");
        assert_eq!(percentile_label(1.0), "90 %");
        assert_eq!(percentile_label(2.0), "99 %");
        assert_eq!(percentile_label(3.0), "99.9 %");
        assert_eq!(percentile_label(1.5), "");
    }

    #[test]
    fn draws_svg_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = crate::load::histogram();
        for v in 1..=10_000u64 {
            h.record(100 + v % 900).unwrap();
        }
        let lat = dir.path().join("lat.svg");
        latency_percentiles(&lat, "t", &[("a".into(), &h), ("b".into(), &h)]).unwrap();
        let text = std::fs::read_to_string(&lat).unwrap();
        assert!(text.starts_with("<svg") && text.contains("99 %"), "{text}");
        let bars = dir.path().join("bars.svg");
        grouped_bars(
            &bars,
            "t",
            "µs",
            &["x".into(), "y".into()],
            &[
                ("s".into(), vec![Some(1.0), None]),
                ("t".into(), vec![Some(2.0), Some(3.0)]),
            ],
            1,
        )
        .unwrap();
        assert!(std::fs::read_to_string(&bars).unwrap().contains("<rect"));
        let zeros = [("s".to_string(), vec![Some(0.0)])];
        grouped_bars(&bars, "t", "µs", &["x".into()], &zeros, 1).unwrap();
        assert!(latency_percentiles(&lat, "t", &[]).is_err());
    }
}
