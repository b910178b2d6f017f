//! The PNG: CNI ADD p50 (with the p90 as a thin line) against N, log-log, one colour per
//! system. Drawn with plotters' bitmap backend and the DejaVu font bundled by the `dejavu`
//! crate, so it needs no system fonts.

use std::path::Path;

use plotters::prelude::*;

use crate::stats::Summary;
use crate::systems::Kind;
use crate::{Opts, SysResult};

fn colour(k: Kind) -> RGBColor {
    match k {
        Kind::Netd => RGBColor(0, 114, 178),
        Kind::Cni => RGBColor(213, 94, 0),
        Kind::Netavark => RGBColor(0, 158, 115),
        Kind::Netavark2 => RGBColor(204, 121, 167),
    }
}

pub fn add_latency(
    path: &Path,
    o: &Opts,
    kinds: &[Kind],
    res: &[SysResult],
) -> Result<(), Box<dyn std::error::Error>> {
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| "cannot load the bundled font")?;
    let mut lo = f64::INFINITY;
    let mut hi: f64 = 0.0;
    for r in res {
        for v in r.add.values().flatten() {
            lo = lo.min(*v);
            hi = hi.max(*v);
        }
    }
    if !lo.is_finite() {
        return Err("no ADD samples".into());
    }
    let nmin = *o.sizes.first().unwrap_or(&1) as f64;
    let nmax = *o.sizes.last().unwrap_or(&1) as f64;
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "CNI ADD latency vs attached endpoints (runtime side)",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (nmin / 1.5..nmax * 1.5).log_scale(),
            (lo / 1.5..hi * 1.5).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(10)
        .x_label_formatter(&|v| format!("{v:.0}"))
        .y_label_formatter(&|v| {
            if *v >= 10.0 {
                format!("{v:.0}")
            } else {
                format!("{v:.1}")
            }
        })
        .light_line_style(WHITE.mix(0.0))
        .x_desc("N endpoints attached (one published port each)")
        .y_desc("ADD wall time, ms (log)")
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    for (k, r) in kinds.iter().zip(res) {
        let c = colour(*k);
        let pts = |f: fn(&Summary) -> f64| -> Vec<(f64, f64)> {
            o.sizes
                .iter()
                .filter_map(|n| {
                    let s = Summary::of(r.add.get(n)?);
                    (s.n > 0).then(|| (*n as f64, f(&s)))
                })
                .collect()
        };
        let p50 = pts(|s| s.p50);
        chart
            .draw_series(LineSeries::new(p50.clone(), c.stroke_width(3)))?
            .label(format!("{} p50", k.name()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3)));
        chart.draw_series(p50.iter().map(|p| Circle::new(*p, 5, c.filled())))?;
        chart
            .draw_series(LineSeries::new(pts(|s| s.p90), c.stroke_width(1)))?
            .label(format!("{} p90", k.name()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(1)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    root.present()?;
    Ok(())
}
