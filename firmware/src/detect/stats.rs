//! The statistics every detector is built from: median, MAD, robust z-score,
//! Bowley skewness, the Holt forecast with a Brutlag band, and the Threshold
//! Random Walk log-likelihood steps. Pure functions, tested against
//! hand-computed values.

/// Median of `v` (sorted in place). Empty input gives 0.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    quantile_sorted(v, 0.5)
}

/// Quantile `q` of sorted data with linear interpolation between closest ranks
/// (the "R-7" definition spreadsheets use).
pub fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    match v.len() {
        0 => 0.0,
        1 => v[0],
        n => {
            let pos = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let lo = pos.floor() as usize;
            let hi = pos.ceil() as usize;
            v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
        }
    }
}

/// Median and median absolute deviation (unscaled).
pub fn median_mad(v: &[f64]) -> (f64, f64) {
    let mut a = v.to_vec();
    let m = median(&mut a);
    for x in a.iter_mut() {
        *x = (*x - m).abs();
    }
    (m, median(&mut a))
}

/// MAD scaled to estimate a normal standard deviation.
pub const MAD_TO_SIGMA: f64 = 1.4826;

/// Robust z-score of `x` against a median and MAD; the scale never falls
/// below `min_scale` (a host with a perfectly flat history would otherwise
/// turn any change into an infinite score).
pub fn robust_z(x: f64, median: f64, mad: f64, min_scale: f64) -> f64 {
    let scale = (MAD_TO_SIGMA * mad).max(min_scale).max(f64::MIN_POSITIVE);
    (x - median) / scale
}

/// Bowley (quartile) skewness: (Q1 + Q3 - 2·Q2) / (Q3 - Q1), in [-1, 1];
/// 0 when the quartiles coincide (perfectly regular data).
pub fn bowley_skew(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let q1 = quantile_sorted(&s, 0.25);
    let q2 = quantile_sorted(&s, 0.5);
    let q3 = quantile_sorted(&s, 0.75);
    let iqr = q3 - q1;
    if iqr <= f64::EPSILON * q2.abs().max(1.0) {
        return 0.0;
    }
    ((q1 + q3 - 2.0 * q2) / iqr).clamp(-1.0, 1.0)
}

/// Holt's linear forecast (level + trend) with Brutlag's deviation band.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, Default)]
pub struct Holt {
    pub level: f64,
    pub trend: f64,
    /// Smoothed absolute forecast error.
    pub dev: f64,
    /// Observations seen.
    pub n: u32,
}

impl Holt {
    /// The forecast for the next observation.
    pub fn forecast(&self) -> f64 {
        self.level + self.trend
    }

    /// Upper edge of the band `forecast + k·dev`.
    pub fn upper(&self, k: f64) -> f64 {
        self.forecast() + k * self.dev
    }

    /// Feed one observation: l' = αx + (1-α)(l+b); b' = β(l'-l) + (1-β)b;
    /// dev' = γ|x - (l+b)| + (1-γ)dev. The first observation sets the level.
    pub fn update(&mut self, x: f64, alpha: f64, beta: f64, gamma: f64) {
        if self.n == 0 {
            self.level = x;
            self.trend = 0.0;
            self.dev = 0.0;
        } else {
            let f = self.forecast();
            let level = alpha * x + (1.0 - alpha) * f;
            self.trend = beta * (level - self.level) + (1.0 - beta) * self.trend;
            self.level = level;
            self.dev = gamma * (x - f).abs() + (1.0 - gamma) * self.dev;
        }
        self.n = self.n.saturating_add(1);
    }
}

/// Threshold Random Walk (Jung, Paxson, Berger, Balakrishnan 2004): each first
/// contact moves the log-likelihood ratio of "scanner" vs "benign".
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trw {
    /// ln(θ1/θ0): step on a successful first contact (negative).
    pub success_step: f64,
    /// ln((1-θ1)/(1-θ0)): step on a failed first contact (positive).
    pub failure_step: f64,
    /// ln(η1) = ln(PD/PF): at or above, the source is a scanner.
    pub upper: f64,
    /// ln(η0) = ln((1-PD)/(1-PF)): at or below, the source is benign.
    pub lower: f64,
}

/// What the walk concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrwVerdict {
    Pending,
    Scanner,
    Benign,
}

impl Trw {
    /// θ0: success probability of a benign source's first contact; θ1: of a
    /// scanner's; PD: wanted detection probability; PF: tolerated false positives.
    pub fn new(theta0: f64, theta1: f64, pd: f64, pf: f64) -> Trw {
        Trw {
            success_step: (theta1 / theta0).ln(),
            failure_step: ((1.0 - theta1) / (1.0 - theta0)).ln(),
            upper: (pd / pf).ln(),
            lower: ((1.0 - pd) / (1.0 - pf)).ln(),
        }
    }

    /// One step from `llr`; returns the new value and the verdict.
    pub fn step(&self, llr: f64, success: bool) -> (f64, TrwVerdict) {
        let v = llr + if success { self.success_step } else { self.failure_step };
        let verdict = if v >= self.upper {
            TrwVerdict::Scanner
        } else if v <= self.lower {
            TrwVerdict::Benign
        } else {
            TrwVerdict::Pending
        };
        (v, verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn median_and_mad_by_hand() {
        // Sorted 1 2 3 4 100: median 3; |x-3| = 2 1 0 1 97 -> sorted 0 1 1 2 97: MAD 1.
        let (m, d) = median_mad(&[100.0, 1.0, 3.0, 2.0, 4.0]);
        assert!(close(m, 3.0) && close(d, 1.0));
        // Even count: 1 2 3 4 -> 2.5; deviations 1.5 .5 .5 1.5 -> 1.0.
        let (m, d) = median_mad(&[4.0, 1.0, 3.0, 2.0]);
        assert!(close(m, 2.5) && close(d, 1.0));
        assert_eq!(median_mad(&[]), (0.0, 0.0));
    }

    #[test]
    fn robust_z_by_hand() {
        // (10 - 4) / (1.4826 * 2) = 2.02347...
        assert!(close(robust_z(10.0, 4.0, 2.0, 0.0), 6.0 / 2.9652));
        // Flat history: the floor scale applies.
        assert!(close(robust_z(10.0, 4.0, 0.0, 3.0), 2.0));
    }

    #[test]
    fn bowley_by_hand() {
        // 1..=9: Q1 3, Q2 5, Q3 7 -> symmetric 0.
        let v: Vec<f64> = (1..=9).map(f64::from).collect();
        assert!(close(bowley_skew(&v), 0.0));
        // 1 2 3 4 20: R-7 quartiles Q1 2, Q2 3, Q3 4 -> (2+4-6)/2 = 0.
        assert!(close(bowley_skew(&[1.0, 2.0, 3.0, 4.0, 20.0]), 0.0));
        // 1 1 1 2 10: Q1 1, Q2 1, Q3 2 -> (1+2-2)/1 = 1.
        assert!(close(bowley_skew(&[1.0, 1.0, 1.0, 2.0, 10.0]), 1.0));
        // 1 9 10 10 10: Q1 9, Q2 10, Q3 10 -> (9+10-20)/1 = -1.
        assert!(close(bowley_skew(&[1.0, 9.0, 10.0, 10.0, 10.0]), -1.0));
        // Identical values: no spread, no skew.
        assert!(close(bowley_skew(&[5.0; 10]), 0.0));
    }

    #[test]
    fn holt_by_hand() {
        let mut h = Holt::default();
        h.update(10.0, 0.5, 0.5, 0.5);
        assert!(close(h.level, 10.0) && close(h.trend, 0.0) && close(h.dev, 0.0));
        // f = 10; l = .5*20 + .5*10 = 15; b = .5*(15-10) + 0 = 2.5; dev = .5*10 = 5.
        h.update(20.0, 0.5, 0.5, 0.5);
        assert!(close(h.level, 15.0) && close(h.trend, 2.5) && close(h.dev, 5.0));
        assert!(close(h.forecast(), 17.5));
        assert!(close(h.upper(2.0), 27.5));
        // f = 17.5; l = .5*20 + .5*17.5 = 18.75; b = .5*3.75 + .5*2.5 = 3.125; dev = .5*2.5 + .5*5 = 3.75.
        h.update(20.0, 0.5, 0.5, 0.5);
        assert!(close(h.level, 18.75) && close(h.trend, 3.125) && close(h.dev, 3.75));
    }

    #[test]
    fn trw_steps_by_hand() {
        let t = Trw::new(0.8, 0.2, 0.99, 0.01);
        assert!(close(t.success_step, (0.25f64).ln()));
        assert!(close(t.failure_step, (4.0f64).ln()));
        assert!(close(t.upper, (99.0f64).ln()));
        assert!(close(t.lower, (0.01f64 / 0.99).ln()));
        // ln 4 = 1.386: three failures (4.159) stay below ln 99 = 4.595, four (5.545) cross it.
        let mut llr = 0.0;
        let mut verdicts = Vec::new();
        for _ in 0..4 {
            let (v, d) = t.step(llr, false);
            llr = v;
            verdicts.push(d);
        }
        assert_eq!(
            verdicts,
            [TrwVerdict::Pending, TrwVerdict::Pending, TrwVerdict::Pending, TrwVerdict::Scanner]
        );
        // Successes walk down: four of them (-5.545) pass ln(0.0101) = -4.595.
        let mut llr = 0.0;
        let mut last = TrwVerdict::Pending;
        for _ in 0..4 {
            let (v, d) = t.step(llr, true);
            llr = v;
            last = d;
        }
        assert_eq!(last, TrwVerdict::Benign);
    }
}
