//! Text pictures of a job for psql: a progress bar and a sparkline of recent step losses, shown by
//! DESCRIBE and the `distill.jobs` view.

use pgrx::prelude::*;
use pgrx::JsonB;

const BAR_WIDTH: usize = 20;
const TICKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// `[#########-----------]  45%` for a fraction in [0, 1] (clamped).
#[pg_extern(immutable, parallel_safe)]
pub fn progress_bar(progress: f64) -> String {
    let p = if progress.is_finite() { progress.clamp(0.0, 1.0) } else { 0.0 };
    let filled = (p * BAR_WIDTH as f64).round() as usize;
    format!("[{}{}] {:>3}%", "#".repeat(filled), "-".repeat(BAR_WIDTH - filled), (p * 100.0).floor() as u32)
}

/// One character per value, from ▁ (lowest) to █ (highest); NULL for no values.
#[pg_extern(immutable, parallel_safe, name = "sparkline")]
fn sparkline_sql(values: JsonB) -> Option<String> {
    sparkline_json(&values.0)
}

/// [`sparkline`] of the numbers in a JSON array (non-numbers are skipped); None for a non-array.
pub fn sparkline_json(values: &serde_json::Value) -> Option<String> {
    let values: Vec<f64> = values.as_array()?.iter().filter_map(|v| v.as_f64()).collect();
    sparkline(&values)
}

pub fn sparkline(values: &[f64]) -> Option<String> {
    let values: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return None;
    }
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let top = (TICKS.len() - 1) as f64;
    Some(
        values
            .iter()
            .map(|v| if hi > lo { TICKS[((v - lo) / (hi - lo) * top).round() as usize] } else { TICKS[3] })
            .collect(),
    )
}
