//! Medians, tails and the table `make bench` prints.

use std::time::Duration;

/// Samples of one measurement, or the summary of samples taken elsewhere
/// (inside a guest, which reports its own median and tail).
#[derive(Clone)]
pub enum Samples {
    Raw(Vec<f64>),
    Summary { n: usize, median: f64, p99: f64 },
}

impl Samples {
    pub fn new() -> Samples {
        Samples::Raw(Vec::new())
    }

    pub fn push(&mut self, d: Duration) {
        self.push_value(d.as_secs_f64());
    }

    pub fn push_value(&mut self, v: f64) {
        if let Samples::Raw(values) = self {
            values.push(v);
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Samples::Raw(v) => v.len(),
            Samples::Summary { n, .. } => *n,
        }
    }

    fn quantile(&self, q: f64) -> f64 {
        let Samples::Raw(values) = self else {
            return f64::NAN;
        };
        let mut v = values.clone();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((v.len() - 1) as f64 * q).round() as usize;
        v[rank]
    }

    pub fn median(&self) -> f64 {
        match self {
            Samples::Summary { median, .. } => *median,
            Samples::Raw(_) => self.quantile(0.5),
        }
    }

    pub fn p99(&self) -> f64 {
        match self {
            Samples::Summary { p99, .. } => *p99,
            Samples::Raw(_) => self.quantile(0.99),
        }
    }
}

/// One row: a measurement against a baseline taken in the same run.
pub struct Row {
    pub name: String,
    pub samples: Samples,
    pub baseline_name: String,
    pub baseline: Samples,
    pub unit: Unit,
}

#[derive(Clone, Copy)]
pub enum Unit {
    /// Samples are seconds.
    Time,
    /// Samples are KiB.
    Memory,
    /// Samples are MiB/s (higher is better: the ratio is a speed-up).
    Rate,
}

impl Unit {
    fn format(self, v: f64) -> String {
        match self {
            Unit::Time => seconds(v),
            Unit::Memory => format!("{v:.0} KiB"),
            Unit::Rate => format!("{v:.0} MiB/s"),
        }
    }
}

pub fn seconds(s: f64) -> String {
    if s.is_nan() {
        "-".into()
    } else if s < 1e-6 {
        format!("{:.0} ns", s * 1e9)
    } else if s < 1e-3 {
        format!("{:.1} µs", s * 1e6)
    } else {
        format!("{:.2} ms", s * 1e3)
    }
}

pub fn print_table(rows: &[Row]) {
    println!(
        "| {:<52} | {:>5} | {:>10} | {:>10} | {:<34} | {:>10} | {:>7} |",
        "benchmark", "N", "median", "p99", "baseline (same run)", "median", "ratio"
    );
    println!(
        "|{:-<54}|{:->7}|{:->12}|{:->12}|{:-<36}|{:->12}|{:->9}|",
        "", "", "", "", "", "", ""
    );
    for row in rows {
        let ratio = row.samples.median() / row.baseline.median();
        println!(
            "| {:<52} | {:>5} | {:>10} | {:>10} | {:<34} | {:>10} | {:>7} |",
            row.name,
            row.samples.len(),
            row.unit.format(row.samples.median()),
            row.unit.format(row.samples.p99()),
            row.baseline_name,
            row.unit.format(row.baseline.median()),
            if ratio < 0.01 {
                format!("{ratio:.4}×")
            } else if ratio < 1.0 {
                format!("{ratio:.2}×")
            } else {
                format!("{ratio:.1}×")
            }
        );
    }
}
