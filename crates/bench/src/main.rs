//! `nimbus-bench`: Nimbus's benchmark suite.
//!
//! `cargo run --release -p nimbus-bench -- all [--peers] [--quick] [--write-docs]` builds the
//! server, runs every scenario against fresh servers, measures the baselines (and the peers)
//! in the same run, prints the table and the targets, writes `target/bench/latest.json` and
//! `latest.svg`, and with `--write-docs` regenerates `docs/benchmarks.md` and
//! `docs/benchmarks.svg`.
//!
//! ```text
//!   main ─► Suite::run ─► baselines · warm · memory · cold · async · peers ─► Outcomes
//!        ─► report::judge(TARGETS) ─► table, JSON, SVG, docs ─► exit code
//! ```
//!
//! Exit codes: 0 when every measured target passed and no scenario failed, 1 when a target
//! was missed or a scenario failed, 2 when the run could not be carried out, 130 on Ctrl-C.
//! Ctrl-C (or SIGTERM) drops the running suite, whose guards stop every server and peer and
//! remove every temporary directory before the process exits.

#![expect(clippy::print_stdout, reason = "the table is this binary's output")]

mod api;
mod baselines;
mod chart;
mod docs;
mod load;
mod packages;
mod peers;
mod process;
mod report;
mod sandbox;
mod server;
mod stats;
mod suite;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::report::{Machine, Report};
use crate::suite::{Settings, Suite};

/// Nimbus's benchmark suite.
#[derive(Debug, Parser)]
#[command(name = "nimbus-bench", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every scenario, baseline and (with --peers) peer, and judge the targets.
    All {
        /// Also install (into ~/.cache/nimbus-bench) and measure the peers.
        #[arg(long)]
        peers: bool,
        /// Fewer and shorter rounds (about two minutes).
        #[arg(long)]
        quick: bool,
        /// Regenerate docs/benchmarks.md and docs/benchmarks.svg from this run.
        #[arg(long)]
        write_docs: bool,
        /// Run only the scenarios whose id contains this text (for development).
        #[arg(long, value_name = "TEXT")]
        only: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // One thread: the load generator takes at most one core and leaves the other to the
    // server under test, the same for Nimbus, the bare baseline and every peer.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async {
        tokio::select! {
            code = run(cli) => code,
            signal = stop_signal() => {
                eprintln!("{signal} received: stopping servers and peers, removing temporary files");
                ExitCode::from(130)
            }
        }
    });
    // The suite's future is dropped by now; its guards have stopped every child. Blocking
    // work still running (a baseline command) is bounded and is not waited for long.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

async fn run(cli: Cli) -> ExitCode {
    let Command::All {
        peers,
        quick,
        write_docs,
        only,
    } = cli.command;
    let settings = Settings { quick, peers, only };
    let started_at = time::OffsetDateTime::now_utc();
    let clock = Instant::now();

    let nimbus = match tokio::task::spawn_blocking(server::nimbus_binary).await {
        Ok(Ok(path)) => path,
        Ok(Err(error)) => return fail(&error),
        Err(error) => return fail(&anyhow::anyhow!("the build task failed: {error}")),
    };
    eprintln!("nimbus: {}", nimbus.display());

    let mut suite = Suite::new(settings, nimbus);
    if let Err(error) = suite.run().await {
        return fail(&error);
    }

    let targets = report::judge(suite::TARGETS, &suite.outcomes);
    let args: Vec<String> = std::env::args().skip(1).collect();
    let report = Report {
        command: format!("cargo run --release -p nimbus-bench -- {}", args.join(" ")),
        started_at: started_at
            .format(time::macros::format_description!(
                "[year]-[month]-[day] [hour]:[minute]:[second]"
            ))
            .unwrap_or_default(),
        duration_secs: clock.elapsed().as_secs_f64(),
        machine: Machine::probe(),
        interpreters: suite.interpreters.clone(),
        outcomes: suite.outcomes,
        targets,
    };
    match write_outputs(&report, write_docs) {
        Ok(()) => {}
        Err(error) => return fail(&error),
    }

    println!();
    println!("{}", report::table(&report.outcomes));
    println!("{}", report::targets_table(&report.targets));
    let count = |verdict: fn(&report::Verdict) -> bool| {
        report
            .targets
            .iter()
            .filter(|t| verdict(&t.verdict))
            .count()
    };
    println!(
        "targets: {} passed, {} missed, {} not measured",
        count(|v| *v == report::Verdict::Pass),
        count(|v| *v == report::Verdict::Miss),
        count(|v| matches!(v, report::Verdict::NotMeasured { .. })),
    );
    let problems = report.problems();
    if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        for problem in &problems {
            println!("{problem}");
        }
        ExitCode::FAILURE
    }
}

fn write_outputs(report: &Report, write_docs: bool) -> anyhow::Result<()> {
    let out = suite::output_dir();
    let json = serde_json::to_string_pretty(report)?;
    suite::write_file(&out.join("latest.json"), &json)?;
    let title = format!("Nimbus latency distributions ({} UTC)", report.started_at);
    let svg = chart::svg(&title, &report.outcomes);
    suite::write_file(&out.join("latest.svg"), &svg)?;
    eprintln!("wrote {}", out.join("latest.json").display());
    if write_docs {
        let docs = server::workspace_root().join("docs");
        suite::write_file(&docs.join("benchmarks.svg"), &svg)?;
        suite::write_file(
            &docs.join("benchmarks.md"),
            &docs::markdown(report, "benchmarks.svg"),
        )?;
        eprintln!("wrote {}", docs.join("benchmarks.md").display());
    }
    Ok(())
}

fn fail(error: &anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::from(2)
}

/// Resolves on the first SIGINT or SIGTERM, naming it.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut terminate) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return "SIGINT";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}
