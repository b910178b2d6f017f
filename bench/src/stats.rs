//! Percentiles of a sample.

#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

/// Nearest-rank percentile of sorted `v` (`q` in 0..=1).
fn pct(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = (q * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

impl Summary {
    pub fn of(sample: &[f64]) -> Summary {
        let mut v: Vec<f64> = sample.iter().copied().filter(|x| x.is_finite()).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        Summary {
            n: v.len(),
            p50: pct(&v, 0.5),
            p90: pct(&v, 0.9),
            p99: pct(&v, 0.99),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}
