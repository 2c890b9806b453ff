//! The result file one benchmark binary writes (`<name>.json`, see
//! `tests/benches/common/mod.rs`, whose `Report` these types mirror), and its sanity check.

use std::path::Path;

use anyhow::{Context as _, Result, bail, ensure};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
pub struct Report {
    pub benchmark: String,
    pub quick: bool,
    pub started_unix: u64,
    pub duration_s: f64,
    pub method: Vec<(String, String)>,
    pub tables: Vec<Table>,
    pub plots: Vec<Plot>,
    pub checks: Vec<Check>,
    pub notes: Vec<String>,
    pub metrics: Vec<(String, f64)>,
}

#[derive(Debug, Deserialize)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    pub caption: String,
}

#[derive(Debug, Deserialize)]
pub struct Plot {
    pub file: String,
    pub title: String,
    pub kind: PlotKind,
    pub y_label: String,
    pub panels: Vec<Panel>,
    pub references: Vec<(f64, String)>,
    pub y_from_zero: bool,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PlotKind {
    Line,
    Bar,
}

#[derive(Debug, Deserialize)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub log_x: bool,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
}

#[derive(Debug, Deserialize)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
}

#[derive(Clone, Copy, Debug, Deserialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub low: f64,
    pub high: f64,
}

#[derive(Debug, Deserialize)]
pub struct Check {
    pub id: String,
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// An empty cell, or one with a word like `NaN`, `inf` or `n/a` in it.
fn is_not_a_number(cell: &str) -> bool {
    cell.trim().is_empty()
        || cell
            .split(|c: char| c.is_whitespace() || "()–,;".contains(c))
            .map(|word| word.trim_start_matches(['-', '+']).to_ascii_lowercase())
            .any(|word| matches!(word.as_str(), "nan" | "inf" | "infinity" | "n/a"))
}

impl Report {
    pub fn read(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a benchmark result", path.display()))
    }

    /// Fails unless the run produced something a reader can trust: tables with rows,
    /// finite numbers, plots with points, every target checked.
    pub fn sanity_check(&self, expected: &str) -> Result<()> {
        let name = &self.benchmark;
        ensure!(
            name == expected,
            "result file of {expected} says it is {name}"
        );
        ensure!(!self.tables.is_empty(), "{name}: no tables");
        for table in &self.tables {
            ensure!(
                !table.rows.is_empty(),
                "{name}: table {:?} has no rows",
                table.title
            );
            for row in &table.rows {
                ensure!(
                    row.len() == table.columns.len(),
                    "{name}: a row of {:?} has {} cells for {} columns",
                    table.title,
                    row.len(),
                    table.columns.len()
                );
                if let Some(cell) = row.iter().find(|cell| is_not_a_number(cell)) {
                    bail!("{name}: table {:?} holds the cell {cell:?}", table.title);
                }
            }
        }
        ensure!(!self.plots.is_empty(), "{name}: no plots");
        for plot in &self.plots {
            let points: Vec<&Point> = plot
                .panels
                .iter()
                .flat_map(|panel| &panel.series)
                .flat_map(|series| &series.points)
                .collect();
            ensure!(
                !points.is_empty(),
                "{name}: plot {} has no points",
                plot.file
            );
            for point in points {
                ensure!(
                    [point.x, point.y, point.low, point.high]
                        .iter()
                        .all(|value| value.is_finite()),
                    "{name}: plot {} has a point that is not a number: {point:?}",
                    plot.file
                );
                ensure!(
                    point.low <= point.y + 1e-9 && point.y <= point.high + 1e-9,
                    "{name}: plot {} has a median outside its p10–p90: {point:?}",
                    plot.file
                );
            }
        }
        for (metric, value) in &self.metrics {
            ensure!(value.is_finite(), "{name}: metric {metric} is {value}");
        }
        ensure!(!self.checks.is_empty(), "{name}: no targets checked");
        for check in &self.checks {
            ensure!(
                check.met.is_some(),
                "{name}: target {} was not measured",
                check.id
            );
        }
        Ok(())
    }
}
