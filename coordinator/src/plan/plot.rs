//! The SVG plot of makespan (and its lower bound) against fleet size, drawn with `plotters`'
//! SVG backend into a string.

use plotters::prelude::*;

use super::{CurvePoint, PlanError};

fn err(e: impl std::fmt::Display) -> PlanError {
    PlanError::Plot(e.to_string())
}

/// The curve as an SVG document.
pub fn svg(curve: &[CurvePoint], title: &str) -> Result<String, PlanError> {
    let points: Vec<&CurvePoint> =
        curve.iter().filter(|p| p.expected_s.is_finite() && p.lower_bound_s.is_finite()).collect();
    if points.is_empty() {
        return Err(PlanError::Plot("no finite point to draw".into()));
    }
    let max_x = points.iter().map(|p| p.nodes).max().unwrap_or(1) as f64;
    let max_y = points.iter().map(|p| p.expected_s.max(p.lower_bound_s)).fold(0.0, f64::max);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0.0..max_x * 1.05, 0.0..max_y * 1.1)
            .map_err(err)?;
        chart.configure_mesh().x_desc("nodes").y_desc("makespan, s").draw().map_err(err)?;
        let expected: Vec<(f64, f64)> =
            points.iter().map(|p| (p.nodes as f64, p.expected_s)).collect();
        let bound: Vec<(f64, f64)> =
            points.iter().map(|p| (p.nodes as f64, p.lower_bound_s)).collect();
        chart
            .draw_series(LineSeries::new(expected.clone(), &BLUE))
            .map_err(err)?
            .label("expected (simulated)")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(expected.iter().map(|&(x, y)| Circle::new((x, y), 3, BLUE.filled())))
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(bound, &RED))
            .map_err(err)?
            .label("lower bound")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}
