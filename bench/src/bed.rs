//! Rows measured inside a test bed (`scripts/testbed.sh`): the bed runs
//! `jitsu-bench` there, which prints each row as one tagged line with its
//! raw samples; the host reads them back into rows of its own table, marked
//! as emulated (only their ratios mean anything).

use anyhow::{bail, Result};

use crate::stats::{Row, Samples, Unit};

const ROW_TAG: &str = "jitsu-bench-row";

/// Prints a row for the host (inside the bed).
pub fn print_row(name: &str, samples: &[f64], baseline_name: &str, baseline: &[f64]) {
    let join = |v: &[f64]| {
        v.iter()
            .map(|x| x.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "{ROW_TAG}\t{name}\t{baseline_name}\t{}\t{}",
        join(samples),
        join(baseline)
    );
}

/// Prints a row of the host's own sections, measured in the bed; a row of
/// summaries only (no raw samples) cannot travel and is left out.
pub fn print(row: &Row) {
    if let (Samples::Raw(samples), Samples::Raw(baseline)) = (&row.samples, &row.baseline) {
        print_row(&row.name, samples, &row.baseline_name, baseline);
    }
}

/// The rows in a bed's output, their names marked with `suffix`.
pub fn read_rows(output: &str, suffix: &str) -> Result<Vec<Row>> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix(ROW_TAG))
        .map(|l| parse_row(l, suffix))
        .collect()
}

fn parse_row(line: &str, suffix: &str) -> Result<Row> {
    let fields: Vec<&str> = line.trim_start_matches('\t').split('\t').collect();
    let [name, baseline_name, samples, baseline] = fields[..] else {
        bail!("a malformed row from the test bed: {line:?}");
    };
    let parse = |s: &str| -> Result<Samples> {
        let mut samples = Samples::new();
        for v in s.split(',').filter(|v| !v.is_empty()) {
            samples.push_value(v.parse()?);
        }
        Ok(samples)
    };
    Ok(Row {
        name: format!("{name}{suffix}"),
        samples: parse(samples)?,
        baseline_name: baseline_name.to_string(),
        baseline: parse(baseline)?,
        unit: Unit::Time,
    })
}
