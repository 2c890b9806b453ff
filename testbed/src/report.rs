//! The result file of one benchmark run, `<out>/<benchmark>.json` (plus its raw samples
//! as `<out>/<benchmark>.csv`): the benchmark binaries write it ([`Report::write`]),
//! `cargo xtask bench` reads it back, checks it for sanity and turns it into
//! BENCHMARKS.md and plots. One set of types for both sides, so they cannot drift apart.
//! Also the benchmarks' command line ([`Options`]) and the medians with 10th and 90th
//! percentiles every figure reports ([`Summary`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail, ensure};
use serde::{Deserialize, Serialize};

/// The command line of a benchmark binary. `cargo bench` adds `--bench`; anything not
/// known here is ignored so that cargo's own flags do no harm.
#[derive(Clone, Debug)]
pub struct Options {
    /// Fewer configurations, rounds and seconds: a smoke run for CI.
    pub quick: bool,
    /// Where the result files go.
    pub out: PathBuf,
}

impl Options {
    pub fn from_args() -> Self {
        let mut quick = std::env::var("ZONEWALL_BENCH_QUICK").is_ok_and(|value| value == "1");
        let mut out = std::env::var_os("ZONEWALL_BENCH_OUT").map(PathBuf::from);
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--quick" => quick = true,
                "--out" => out = args.next().map(PathBuf::from),
                _ => {}
            }
        }
        let out = out.unwrap_or_else(|| PathBuf::from("bench-results"));
        Self { quick, out }
    }

    /// `full` normally, `quick` under `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

// ---------------------------------------------------------------------------------------
// Statistics every figure carries.
// ---------------------------------------------------------------------------------------

/// Median and spread of a set of samples.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub median: f64,
    pub p10: f64,
    pub p90: f64,
    pub count: usize,
}

/// The `fraction` quantile (0..=1) of sorted samples, linearly interpolated.
pub fn quantile(sorted: &[f64], fraction: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        len => {
            let position = fraction.clamp(0.0, 1.0) * (len - 1) as f64;
            let below = position.floor() as usize;
            let above = (below + 1).min(len - 1);
            let weight = position - below as f64;
            sorted[below] * (1.0 - weight) + sorted[above] * weight
        }
    }
}

pub fn summarize(samples: &[f64]) -> Summary {
    let mut sorted: Vec<f64> = samples
        .iter()
        .copied()
        .filter(|value| value.is_finite())
        .collect();
    sorted.sort_by(f64::total_cmp);
    Summary {
        median: quantile(&sorted, 0.5),
        p10: quantile(&sorted, 0.1),
        p90: quantile(&sorted, 0.9),
        count: sorted.len(),
    }
}

// ---------------------------------------------------------------------------------------
// The result file.
// ---------------------------------------------------------------------------------------

/// Everything one benchmark run found: written by the benchmark, read by `cargo xtask
/// bench`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    /// `per-packet`, `throughput`, `flow-log`, `control-plane`.
    pub benchmark: String,
    pub quick: bool,
    /// Seconds since the Unix epoch when the run started.
    pub started_unix: u64,
    pub duration_s: f64,
    /// How the run was made: rounds, repeat counts, seconds per test...
    pub method: Vec<(String, String)>,
    pub tables: Vec<Table>,
    pub plots: Vec<Plot>,
    pub checks: Vec<Check>,
    /// Findings worth a sentence (e.g. a tool that was missing).
    pub notes: Vec<String>,
    /// Named headline numbers (for sanity checks and the summary), unit in the name.
    pub metrics: Vec<(String, f64)>,
    #[serde(skip)]
    samples: Vec<Sample>,
    #[serde(skip)]
    clock: Option<Instant>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// A sentence under the table.
    pub caption: String,
}

/// A chart: one or more panels side by side sharing a y axis label. `bar` panels have
/// categories on x; `line` panels numeric x (log scale when `log_x`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Plot {
    /// File name, `.svg`.
    pub file: String,
    pub title: String,
    pub kind: PlotKind,
    pub y_label: String,
    pub panels: Vec<Panel>,
    /// Horizontal reference lines (value, label), e.g. a target or "no program".
    pub references: Vec<(f64, String)>,
    /// y axis from zero (bars always are).
    pub y_from_zero: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlotKind {
    Line,
    Bar,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub log_x: bool,
    /// Bar charts: the groups along x; a point's `x` is an index into it.
    pub categories: Vec<String>,
    pub series: Vec<Series>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Series {
    pub label: String,
    pub points: Vec<Point>,
}

/// A median with its 10th and 90th percentiles.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Point {
    pub x: f64,
    pub y: f64,
    pub low: f64,
    pub high: f64,
}

impl Point {
    pub fn of(x: f64, summary: &Summary) -> Self {
        Self {
            x,
            y: summary.median,
            low: summary.p10,
            high: summary.p90,
        }
    }
}

/// A target of the issue and whether this run met it (`None`: not measured).
#[derive(Debug, Serialize, Deserialize)]
pub struct Check {
    pub id: String,
    pub what: String,
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

#[derive(Debug)]
struct Sample {
    series: String,
    config: String,
    round: usize,
    value: f64,
    unit: String,
}

impl Report {
    pub fn new(benchmark: &str, options: &Options) -> Self {
        Self {
            benchmark: benchmark.to_owned(),
            quick: options.quick,
            started_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            duration_s: 0.0,
            method: Vec::new(),
            tables: Vec::new(),
            plots: Vec::new(),
            checks: Vec::new(),
            notes: Vec::new(),
            metrics: Vec::new(),
            samples: Vec::new(),
            clock: Some(Instant::now()),
        }
    }

    pub fn method(&mut self, what: &str, how: impl ToString) {
        self.method.push((what.to_owned(), how.to_string()));
    }

    pub fn metric(&mut self, name: &str, value: f64) {
        self.metrics.push((name.to_owned(), value));
    }

    pub fn note(&mut self, text: impl Into<String>) {
        self.notes.push(text.into());
    }

    pub fn check(
        &mut self,
        id: &str,
        what: &str,
        target: &str,
        measured: String,
        met: Option<bool>,
    ) {
        self.checks.push(Check {
            id: id.to_owned(),
            what: what.to_owned(),
            target: target.to_owned(),
            measured,
            met,
        });
    }

    /// Keeps a raw sample for the CSV file.
    pub fn sample(&mut self, series: &str, config: &str, round: usize, value: f64, unit: &str) {
        self.samples.push(Sample {
            series: series.to_owned(),
            config: config.to_owned(),
            round,
            value,
            unit: unit.to_owned(),
        });
    }

    /// Writes `<out>/<benchmark>.json` and `<out>/<benchmark>.csv`.
    pub fn write(mut self, options: &Options) {
        if let Some(clock) = self.clock.take() {
            self.duration_s = clock.elapsed().as_secs_f64();
        }
        std::fs::create_dir_all(&options.out)
            .unwrap_or_else(|error| panic!("creating {}: {error}", options.out.display()));
        let json = options.out.join(format!("{}.json", self.benchmark));
        let text = serde_json::to_string_pretty(&self).expect("a report serialises");
        std::fs::write(&json, text + "\n")
            .unwrap_or_else(|error| panic!("writing {}: {error}", json.display()));
        let mut csv = String::from("series,config,round,value,unit\n");
        for sample in &self.samples {
            let _ = writeln!(
                csv,
                "{},{},{},{},{}",
                csv_field(&sample.series),
                csv_field(&sample.config),
                sample.round,
                sample.value,
                csv_field(&sample.unit)
            );
        }
        let path = options.out.join(format!("{}.csv", self.benchmark));
        std::fs::write(&path, csv)
            .unwrap_or_else(|error| panic!("writing {}: {error}", path.display()));
        eprintln!(
            "{}: results in {} ({:.0} s)",
            self.benchmark,
            json.display(),
            self.duration_s
        );
    }
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_owned()
    }
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
