//! `--plot FILE.svg`: the run's per-second samples drawn with plotters' SVG backend (text
//! is written as SVG `<text>`, so no font files or system libraries are needed). Top:
//! deliveries per second (and open connections, which is what moves in idle and storm
//! runs); middle: latency p50 and p99 per second, in milliseconds; and, when the run
//! sampled the gateway's RSS (`--gateway-pid`), a third panel below with it in MiB.

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
    let with_rss = ticks.iter().any(|t| t.gateway_rss_bytes.is_some());
    let height = if with_rss { 1060 } else { 720 };
    let root = SVGBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let (upper, rest) = root.split_vertically(340);
    let (lower, bottom) = if with_rss {
        let (lower, bottom) = rest.split_vertically(340);
        (lower, Some(bottom))
    } else {
        (rest, None)
    };
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

    if let Some(bottom) = bottom {
        // From zero, so that a drift reads at its true size next to the whole footprint.
        let mib = |b: u64| b as f64 / 1048576.0;
        let rss: Vec<(f64, f64)> = ticks
            .iter()
            .filter_map(|t| t.gateway_rss_bytes.map(|b| (t.t_s, mib(b))))
            .collect();
        let rss_max = top(rss.iter().map(|p| p.1));
        let mut chart = ChartBuilder::on(&bottom)
            .margin(12)
            .x_label_area_size(34)
            .y_label_area_size(70)
            .right_y_label_area_size(70)
            .build_cartesian_2d(0.0..t_max, 0.0..rss_max)?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("gateway RSS (MiB)")
            .draw()?;
        chart
            .draw_series(LineSeries::new(rss, MAGENTA.stroke_width(2)))?
            .label("gateway RSS (MiB)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], MAGENTA));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticks(rss: bool) -> Vec<Tick> {
        (1..=5)
            .map(|i| Tick {
                t_s: i as f64,
                open: 100,
                failed: 0,
                deliveries_per_s: 1000.0 * i as f64,
                p50_us: 400 * i,
                p99_us: 900 * i,
                max_us: 2000 * i,
                gateway_rss_bytes: rss.then_some((40 + i) << 20),
            })
            .collect()
    }

    #[test]
    fn draws_an_svg_with_both_panels() {
        let summary = Summary {
            mode: "fanout",
            encoding: "json",
            timeline: ticks(false),
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
        // No RSS samples, no RSS panel.
        assert!(!svg.contains("gateway RSS"));
        // An empty timeline still draws (axes only).
        let empty = Summary::default();
        write(&path, &empty).expect("empty plot");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn draws_the_gateway_rss_panel_when_sampled() {
        let summary = Summary {
            mode: "chat",
            encoding: "json",
            timeline: ticks(true),
            ..Summary::default()
        };
        let path = std::env::temp_dir().join(format!("lt-plot-rss-{}.svg", std::process::id()));
        write(&path, &summary).expect("plot");
        let svg = std::fs::read_to_string(&path).expect("read");
        let _ = std::fs::remove_file(&path);
        for label in [
            "deliveries/s",
            "latency ms",
            "gateway RSS (MiB)",
            "loadtest chat",
        ] {
            assert!(svg.contains(label), "no {label}");
        }
        // deliveries/s, open connections, p50, p99, RSS (each also drawn in its legend).
        assert!(svg.matches("<polyline").count() >= 5);
        // The JSON timeline carries the samples too (and leaves them out when absent).
        let json = serde_json::to_value(&summary.timeline).expect("json");
        assert_eq!(json[0]["gateway_rss_bytes"], 41u64 << 20);
        let plain = serde_json::to_value(ticks(false)).expect("json");
        assert!(plain[0].get("gateway_rss_bytes").is_none());
    }
}
