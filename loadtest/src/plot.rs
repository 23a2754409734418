//! `--plot FILE.svg`: the run's per-second samples drawn with plotters' SVG backend (text
//! is written as SVG `<text>`, so no font files or system libraries are needed). Top:
//! deliveries per second (and open connections, which is what moves in idle and storm
//! runs); bottom: latency p50 and p99 per second, in milliseconds.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::collect::Tick;
use crate::report::Summary;

/// Draws `summary`'s timeline into `path`.
pub fn write(path: &Path, summary: &Summary) -> anyhow::Result<()> {
    let title = format!("loadtest {} ({})", summary.mode, summary.encoding);
    draw(path, &title, &summary.timeline).map_err(|e| anyhow!("plotting {}: {e}", path.display()))
}

/// The upper end of an axis holding `values` (never an empty range).
fn top(values: impl Iterator<Item = f64>) -> f64 {
    let max = values.fold(0.0_f64, f64::max);
    if max > 0.0 {
        max * 1.1
    } else {
        1.0
    }
}

fn draw(path: &Path, title: &str, ticks: &[Tick]) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (upper, lower) = root.split_vertically(340);
    let t_max = top(ticks.iter().map(|t| t.t_s));

    let rate_max = top(ticks.iter().map(|t| t.deliveries_per_s));
    let open_max = top(ticks.iter().map(|t| t.open as f64));
    let mut chart = ChartBuilder::on(&upper)
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..rate_max)?
        .set_secondary_coord(0.0..t_max, 0.0..open_max);
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("deliveries/s")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("open connections")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            ticks.iter().map(|t| (t.t_s, t.deliveries_per_s)),
            BLUE.stroke_width(2),
        ))?
        .label("deliveries/s")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    chart
        .draw_secondary_series(LineSeries::new(
            ticks.iter().map(|t| (t.t_s, t.open as f64)),
            BLACK.mix(0.5),
        ))?
        .label("open connections")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK.mix(0.5)));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;

    let ms = |us: u64| us as f64 / 1000.0;
    let lat_max = top(ticks.iter().map(|t| ms(t.p99_us)));
    let mut chart = ChartBuilder::on(&lower)
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..t_max, 0.0..lat_max)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("latency ms")
        .draw()?;
    // Seconds without deliveries have no latency: leave them out rather than draw zeros.
    let with = |f: fn(&Tick) -> u64| {
        ticks
            .iter()
            .filter(|t| t.deliveries_per_s > 0.0)
            .map(move |t| (t.t_s, ms(f(t))))
            .collect::<Vec<_>>()
    };
    chart
        .draw_series(LineSeries::new(with(|t| t.p50_us), GREEN.stroke_width(2)))?
        .label("p50")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], GREEN));
    chart
        .draw_series(LineSeries::new(with(|t| t.p99_us), RED.stroke_width(2)))?
        .label("p99")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_an_svg_with_both_panels() {
        let ticks: Vec<Tick> = (1..=5)
            .map(|i| Tick {
                t_s: i as f64,
                open: 100,
                failed: 0,
                deliveries_per_s: 1000.0 * i as f64,
                p50_us: 400 * i,
                p99_us: 900 * i,
                max_us: 2000 * i,
            })
            .collect();
        let summary = Summary {
            mode: "fanout",
            encoding: "json",
            timeline: ticks,
            ..Summary::default()
        };
        let path = std::env::temp_dir().join(format!("lt-plot-{}.svg", std::process::id()));
        write(&path, &summary).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        for label in [
            "deliveries/s",
            "latency ms",
            "p50",
            "p99",
            "loadtest fanout",
        ] {
            assert!(svg.contains(label), "no {label}");
        }
        assert!(svg.matches("<polyline").count() >= 4);
        // An empty timeline still draws (axes only).
        let empty = Summary::default();
        write(&path, &empty).expect("empty plot");
        let _ = std::fs::remove_file(&path);
    }
}
