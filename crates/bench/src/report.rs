//! What a run found: one [`Outcome`] per scenario, the targets judged from them, and the text
//! forms of both (the terminal/Markdown table and the JSON file).
//!
//! A target is a ratio of two outcomes of the same run. It passes or misses only when both
//! inputs were measured; otherwise it is "not measured", which is neither.

use serde::Serialize;

use crate::load::{Failures, Measured};
use crate::stats::{self, Summary};

/// Which side of the comparison a scenario is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    /// Nimbus itself.
    Nimbus,
    /// A physical limit measured in the same run.
    Baseline,
    /// Another platform measured in the same run.
    Peer,
}

/// Whether a scenario produced numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    /// It produced numbers.
    Measured,
    /// It did not run, for a reason outside Nimbus's control or not yet built.
    Skipped {
        /// Why.
        reason: String,
    },
    /// It ran and produced no usable number.
    Failed {
        /// Why.
        reason: String,
    },
}

/// The result of one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Stable id, e.g. `warm.python.api3.c16`.
    pub id: String,
    /// Human title.
    pub title: String,
    /// Nimbus, baseline or peer.
    pub group: Group,
    /// Measured, skipped or failed.
    pub status: Status,
    /// Rate per second over rounds (median of rounds, spread over rounds).
    pub rate: Option<Summary>,
    /// What the rate counts, e.g. `req/s`.
    pub rate_unit: Option<String>,
    /// Latency in milliseconds.
    pub latency_ms: Option<Summary>,
    /// Proportional set size in MiB.
    pub pss_mib: Option<Summary>,
    /// 101 latency quantiles (0th to 100th percentile) in milliseconds, for the chart.
    pub latency_quantiles_ms: Vec<f64>,
    /// Requests or attempts that failed.
    pub failures: u64,
    /// A few distinct failure messages.
    pub failure_examples: Vec<String>,
    /// Remarks on how the numbers were obtained.
    pub notes: Vec<String>,
}

impl Outcome {
    /// An outcome with nothing measured yet.
    pub fn new(id: impl Into<String>, title: impl Into<String>, group: Group) -> Outcome {
        Outcome {
            id: id.into(),
            title: title.into(),
            group,
            status: Status::Measured,
            rate: None,
            rate_unit: None,
            latency_ms: None,
            pss_mib: None,
            latency_quantiles_ms: Vec::new(),
            failures: 0,
            failure_examples: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// A skipped outcome.
    pub fn skipped(
        id: impl Into<String>,
        title: impl Into<String>,
        group: Group,
        reason: impl Into<String>,
    ) -> Outcome {
        let mut outcome = Outcome::new(id, title, group);
        outcome.status = Status::Skipped {
            reason: reason.into(),
        };
        outcome
    }

    /// A failed outcome.
    pub fn failed(
        id: impl Into<String>,
        title: impl Into<String>,
        group: Group,
        reason: impl Into<String>,
    ) -> Outcome {
        let mut outcome = Outcome::new(id, title, group);
        outcome.status = Status::Failed {
            reason: reason.into(),
        };
        outcome
    }

    /// Sets latency samples (ms, per round).
    pub fn with_latencies(mut self, rounds: &[Vec<f64>]) -> Outcome {
        self.latency_ms = stats::summarize(rounds);
        self.latency_quantiles_ms = stats::quantiles(rounds, 101);
        self
    }

    /// Sets rate samples (per second, per round).
    pub fn with_rates(mut self, rounds: &[Vec<f64>], unit: &str) -> Outcome {
        self.rate = stats::summarize(rounds);
        self.rate_unit = Some(unit.to_owned());
        self
    }

    /// Sets PSS samples (MiB, per round).
    pub fn with_pss(mut self, rounds: &[Vec<f64>]) -> Outcome {
        self.pss_mib = stats::summarize(rounds);
        self
    }

    /// Records failures; an outcome with no number left at all becomes failed.
    pub fn with_failures(mut self, failures: Failures) -> Outcome {
        self.failures = failures.count;
        self.failure_examples = failures.examples;
        let nothing = self.latency_ms.is_none()
            && self.pss_mib.is_none()
            && self.rate.is_none_or(|r| r.median == 0.0);
        if self.status == Status::Measured && nothing {
            let reason = self
                .failure_examples
                .first()
                .cloned()
                .unwrap_or_else(|| "no sample".into());
            self.status = Status::Failed { reason };
        }
        self
    }

    /// An outcome from a load run.
    pub fn from_load(
        id: &str,
        title: &str,
        group: Group,
        measured: Measured,
        unit: &str,
    ) -> Outcome {
        Outcome::new(id, title, group)
            .with_latencies(&measured.latencies_ms)
            .with_rates(&measured.rates, unit)
            .with_failures(measured.failures)
    }

    /// Whether it produced numbers.
    pub fn is_measured(&self) -> bool {
        self.status == Status::Measured
    }
}

/// Which number of an outcome a target uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stat {
    /// Median rate over rounds.
    Rate,
    /// Median latency.
    P50,
    /// Median PSS.
    Pss,
}

impl Stat {
    fn of(self, outcome: &Outcome) -> Option<f64> {
        let summary = match self {
            Stat::Rate => outcome.rate,
            Stat::P50 => outcome.latency_ms,
            Stat::Pss => outcome.pss_mib,
        }?;
        (summary.median > 0.0).then_some(summary.median)
    }
}

/// Which way a ratio must stay of its limit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// Ratio ≥ limit.
    AtLeast(f64),
    /// Ratio ≤ limit.
    AtMost(f64),
    /// Numerator − denominator ≤ limit, in the numbers' unit (milliseconds for latencies):
    /// for costs that add to a baseline rather than scale it.
    AddsAtMost(f64),
}

/// One target: two outcomes of the same run and how they must compare.
#[derive(Debug, Clone, Copy)]
pub struct TargetSpec {
    /// What it says, in words.
    pub text: &'static str,
    /// Outcome id and number above the line.
    pub numerator: (&'static str, Stat),
    /// Outcome id and number below the line.
    pub denominator: (&'static str, Stat),
    /// The limit.
    pub bound: Bound,
}

/// The judgement of one target.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Within the limit.
    Pass,
    /// Outside the limit.
    Miss,
    /// An input was skipped or failed.
    NotMeasured {
        /// Which input and why.
        reason: String,
    },
}

/// A target with its measured ratio.
#[derive(Debug, Clone, Serialize)]
pub struct TargetResult {
    /// What it says.
    pub text: String,
    /// Numerator outcome id.
    pub numerator: String,
    /// Denominator outcome id.
    pub denominator: String,
    /// The limit.
    pub bound: Bound,
    /// The ratio (for [`Bound::AddsAtMost`], the difference), when both sides were measured.
    pub value: Option<f64>,
    /// Pass, miss or not measured.
    pub verdict: Verdict,
}

/// Judges every target against the outcomes.
pub fn judge(specs: &[TargetSpec], outcomes: &[Outcome]) -> Vec<TargetResult> {
    specs.iter().map(|spec| judge_one(spec, outcomes)).collect()
}

fn judge_one(spec: &TargetSpec, outcomes: &[Outcome]) -> TargetResult {
    let value = |(id, stat): (&str, Stat)| -> Result<f64, String> {
        let outcome = outcomes
            .iter()
            .find(|o| o.id == id)
            .ok_or_else(|| format!("{id} did not run"))?;
        match &outcome.status {
            Status::Skipped { reason } => return Err(format!("{id} skipped: {reason}")),
            Status::Failed { reason } => return Err(format!("{id} failed: {reason}")),
            Status::Measured => {}
        }
        stat.of(outcome)
            .ok_or_else(|| format!("{id} has no such number"))
    };
    let (compared, verdict) = match (value(spec.numerator), value(spec.denominator)) {
        (Ok(top), Ok(bottom)) => {
            let (compared, pass) = match spec.bound {
                Bound::AtLeast(limit) => (top / bottom, top / bottom >= limit),
                Bound::AtMost(limit) => (top / bottom, top / bottom <= limit),
                Bound::AddsAtMost(limit) => (top - bottom, top - bottom <= limit),
            };
            (
                Some(compared),
                if pass { Verdict::Pass } else { Verdict::Miss },
            )
        }
        (Err(reason), _) | (_, Err(reason)) => (None, Verdict::NotMeasured { reason }),
    };
    TargetResult {
        text: spec.text.to_owned(),
        numerator: spec.numerator.0.to_owned(),
        denominator: spec.denominator.0.to_owned(),
        bound: spec.bound,
        value: compared,
        verdict,
    }
}

/// The machine a run happened on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Online CPUs.
    pub nproc: usize,
    /// `MemTotal` in GiB.
    pub memory_gib: f64,
    /// Kernel release.
    pub kernel: String,
    /// CPU model name.
    pub cpu: String,
}

impl Machine {
    /// Reads `/proc`.
    pub fn probe() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let meminfo = read("/proc/meminfo");
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            memory_gib: mem_kib / 1024.0 / 1024.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpu,
        }
    }

    /// One line for the docs.
    pub fn describe(&self) -> String {
        format!(
            "{} CPUs ({}), {:.1} GiB memory, Linux {}",
            self.nproc, self.cpu, self.memory_gib, self.kernel
        )
    }
}

/// A whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The command that produced it.
    pub command: String,
    /// When it started (UTC, `YYYY-MM-DD HH:MM:SS`).
    pub started_at: String,
    /// How long it took, in seconds.
    pub duration_secs: f64,
    /// Where it ran.
    pub machine: Machine,
    /// Versions of the interpreters used.
    pub interpreters: Vec<String>,
    /// Every scenario.
    pub outcomes: Vec<Outcome>,
    /// Every target.
    pub targets: Vec<TargetResult>,
}

impl Report {
    /// Whether any target missed or any scenario had failures.
    pub fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self
            .targets
            .iter()
            .filter(|t| t.verdict == Verdict::Miss)
            .map(|t| {
                format!(
                    "target missed: {} ({} against {})",
                    t.text,
                    fmt_value(t),
                    fmt_bound(t.bound)
                )
            })
            .collect();
        for outcome in &self.outcomes {
            if let Status::Failed { reason } = &outcome.status {
                problems.push(format!("scenario failed: {}: {reason}", outcome.id));
            } else if outcome.failures > 0 {
                problems.push(format!(
                    "{} failed requests in {}",
                    outcome.failures, outcome.id
                ));
            }
        }
        problems
    }
}

/// Formats a number with three significant digits and thousands separators.
pub fn fmt_num(value: f64) -> String {
    if !value.is_finite() {
        return "–".into();
    }
    let magnitude = value.abs();
    let decimals = if magnitude >= 100.0 {
        0
    } else if magnitude >= 10.0 {
        1
    } else if magnitude >= 1.0 {
        2
    } else if magnitude >= 0.1 {
        3
    } else {
        4
    };
    let text = format!("{value:.decimals$}");
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    match frac {
        Some(f) => format!("{sign}{grouped}.{f}"),
        None => format!("{sign}{grouped}"),
    }
}

fn fmt_value(target: &TargetResult) -> String {
    match (target.value, target.bound) {
        (None, _) => "–".into(),
        (Some(difference), Bound::AddsAtMost(_)) => format!("{difference:+.3}"),
        (Some(ratio), _) => format!("{ratio:.3}"),
    }
}

fn fmt_bound(bound: Bound) -> String {
    match bound {
        Bound::AtLeast(limit) => format!("≥ {limit}"),
        Bound::AtMost(limit) => format!("≤ {limit}"),
        Bound::AddsAtMost(limit) => format!("+ ≤ {limit}"),
    }
}

/// Escapes `|` so text fits in a Markdown table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// The results table, in Markdown (also what the terminal shows).
pub fn table(outcomes: &[Outcome]) -> String {
    let mut out = String::from(
        "| Scenario | Throughput (median of rounds, min–max) | p50 | p99 | p50 spread (min–max of round medians) | Samples | Note |\n\
         |---|---|---|---|---|---|---|\n",
    );
    for outcome in outcomes {
        let rate = match (&outcome.rate, &outcome.rate_unit) {
            (Some(r), Some(unit)) => format!(
                "{} {unit} ({}–{})",
                fmt_num(r.median),
                fmt_num(r.spread_min),
                fmt_num(r.spread_max)
            ),
            _ => String::new(),
        };
        let (p50, p99, spread, samples) = if let Some(l) = outcome.latency_ms {
            (
                format!("{} ms", fmt_num(l.median)),
                format!("{} ms", fmt_num(l.p99)),
                format!("{}–{} ms", fmt_num(l.spread_min), fmt_num(l.spread_max)),
                format!("{} in {} rounds", l.samples, l.rounds),
            )
        } else if let Some(m) = outcome.pss_mib {
            (
                format!("{} MiB", fmt_num(m.median)),
                format!("{} MiB", fmt_num(m.p99)),
                format!("{}–{} MiB", fmt_num(m.spread_min), fmt_num(m.spread_max)),
                format!("{} in {} rounds", m.samples, m.rounds),
            )
        } else {
            Default::default()
        };
        let mut note = match &outcome.status {
            Status::Measured => String::new(),
            Status::Skipped { reason } => format!("skipped: {reason}"),
            Status::Failed { reason } => format!("FAILED: {reason}"),
        };
        if outcome.failures > 0 && outcome.is_measured() {
            note = format!("{} failed requests", outcome.failures);
        }
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            cell(&outcome.title),
            rate,
            p50,
            p99,
            spread,
            samples,
            cell(&note)
        ));
    }
    out
}

/// The targets table, in Markdown.
pub fn targets_table(targets: &[TargetResult]) -> String {
    let mut out =
        String::from("| Target | Ratio (or + difference) | Limit | Verdict |\n|---|---|---|---|\n");
    for target in targets {
        let verdict = match &target.verdict {
            Verdict::Pass => "pass".to_owned(),
            Verdict::Miss => "**MISS**".to_owned(),
            Verdict::NotMeasured { reason } => format!("not measured ({reason})"),
        };
        out.push_str(&format!(
            "| {} | {} | {} | {} |\n",
            cell(&target.text),
            fmt_value(target),
            fmt_bound(target.bound),
            cell(&verdict)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(id: &str, rate: f64, p50: f64) -> Outcome {
        Outcome::new(id, id, Group::Nimbus)
            .with_rates(&[vec![rate]], "req/s")
            .with_latencies(&[vec![p50]])
    }

    #[test]
    fn targets_pass_miss_or_are_not_measured() {
        let outcomes = vec![
            measured("a", 400.0, 2.0),
            measured("b", 1000.0, 1.0),
            Outcome::skipped("c", "c", Group::Peer, "install failed"),
        ];
        let specs = [
            TargetSpec {
                text: "a ≥ 0.4 b",
                numerator: ("a", Stat::Rate),
                denominator: ("b", Stat::Rate),
                bound: Bound::AtLeast(0.4),
            },
            TargetSpec {
                text: "a p50 ≤ 1.5 b",
                numerator: ("a", Stat::P50),
                denominator: ("b", Stat::P50),
                bound: Bound::AtMost(1.5),
            },
            TargetSpec {
                text: "a ≥ c",
                numerator: ("a", Stat::Rate),
                denominator: ("c", Stat::Rate),
                bound: Bound::AtLeast(1.0),
            },
            TargetSpec {
                text: "a p50 adds ≤ 1.5 to b",
                numerator: ("a", Stat::P50),
                denominator: ("b", Stat::P50),
                bound: Bound::AddsAtMost(1.5),
            },
            TargetSpec {
                text: "a p50 adds ≤ 0.5 to b",
                numerator: ("a", Stat::P50),
                denominator: ("b", Stat::P50),
                bound: Bound::AddsAtMost(0.5),
            },
        ];
        let results = judge(&specs, &outcomes);
        assert_eq!(results[0].verdict, Verdict::Pass);
        assert_eq!(results[0].value, Some(0.4));
        assert_eq!(results[1].verdict, Verdict::Miss);
        assert!(
            matches!(&results[2].verdict, Verdict::NotMeasured { reason } if reason.contains("skipped"))
        );
        assert_eq!(results[3].value, Some(1.0));
        assert_eq!(results[3].verdict, Verdict::Pass);
        assert_eq!(results[4].verdict, Verdict::Miss);
    }

    #[test]
    fn an_outcome_without_samples_but_with_failures_is_failed() {
        let mut failures = Failures::default();
        failures.add("AuthFailure.SignatureFailure: bad".into());
        let outcome = Outcome::from_load(
            "x",
            "x",
            Group::Nimbus,
            Measured {
                latencies_ms: vec![vec![]],
                rates: vec![vec![0.0]],
                failures,
            },
            "req/s",
        );
        assert!(
            matches!(&outcome.status, Status::Failed { reason } if reason.starts_with("AuthFailure"))
        );
    }

    #[test]
    fn numbers_have_three_significant_digits_and_separators() {
        assert_eq!(fmt_num(12345.6), "12,346");
        assert_eq!(fmt_num(41.23), "41.2");
        assert_eq!(fmt_num(4.123), "4.12");
        assert_eq!(fmt_num(0.4123), "0.412");
        assert_eq!(fmt_num(0.04123), "0.0412");
        assert_eq!(fmt_num(-1234.0), "-1,234");
    }

    #[test]
    fn table_has_a_row_per_outcome_with_units_and_notes() {
        let outcomes = vec![
            measured("warm", 1234.0, 0.5),
            Outcome::skipped(
                "node",
                "cold Node.js | fresh",
                Group::Nimbus,
                "runtime not available (x)",
            ),
            Outcome::new("pss", "idle PSS", Group::Nimbus).with_pss(&[vec![7.5], vec![8.5]]),
        ];
        let text = table(&outcomes);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5);
        assert!(lines[2].contains("1,234 req/s") && lines[2].contains("0.500 ms"));
        assert!(
            lines[3].contains("cold Node.js \\| fresh")
                && lines[3].contains("skipped: runtime not available")
        );
        assert!(lines[4].contains("8.00 MiB") && lines[4].contains("7.50–8.50 MiB"));
    }
}
