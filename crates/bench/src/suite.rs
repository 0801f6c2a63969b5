//! The scenarios and the order they run in.
//!
//! ```text
//!   baselines (no server) ─► warm server ─► memory server ─► cold server ─► async server ─► peers
//!                            keep-alive 600 s  defaults       keep-alive 1 s  queue limits
//!                            concurrency 16                                   raised
//!                            memory budget for
//!                            every warm instance
//! ```
//!
//! Each server is started for its group of scenarios with a fresh data directory and stopped
//! before the next group starts, so one group's leftovers (idle instances, a backlog of async
//! events) never run during another's measurement.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::api::{
    CallError, Client, Connection, Credentials, Dialect, Expect, InvocationType, Target,
};
use crate::baselines::{self, BareServer};
use crate::load::{self, Failures, MakeRequest, Plan};
use crate::packages::Runtime;
use crate::peers::{self, Peer};
use crate::process;
use crate::report::{Bound, Group, Outcome, Stat, TargetSpec};
use crate::server::{Server, ServerConfig};

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Fewer, shorter rounds.
    pub quick: bool,
    /// Install and measure the peers.
    pub peers: bool,
    /// Run only scenarios whose id contains this text.
    pub only: Option<String>,
}

/// How many rounds of what length each kind of scenario gets.
#[derive(Debug, Clone, Copy)]
struct Budget {
    warmup: Duration,
    round: Duration,
    rounds: usize,
    cold_per_round: usize,
    startups_per_round: usize,
    forks_per_round: usize,
    pss_settle: Duration,
}

impl Budget {
    /// About 6 minutes of measurement (plus peers, installs and the build).
    const FULL: Budget = Budget {
        warmup: Duration::from_secs(1),
        round: Duration::from_secs(2),
        rounds: 5,
        cold_per_round: 6,
        startups_per_round: 20,
        forks_per_round: 100,
        pss_settle: Duration::from_millis(500),
    };
    /// About a minute and a half.
    const QUICK: Budget = Budget {
        warmup: Duration::from_millis(500),
        round: Duration::from_millis(500),
        rounds: 3,
        cold_per_round: 3,
        startups_per_round: 10,
        forks_per_round: 50,
        pss_settle: Duration::from_millis(500),
    };

    fn plan(&self, connections: usize) -> Plan {
        Plan {
            connections,
            warmup: self.warmup,
            round: self.round,
            rounds: self.rounds,
        }
    }
}

/// The pause before each fresh function's deployment in the cold-start scenarios.
const COLD_START_SPACING: Duration = Duration::from_millis(250);

/// The targets of issues 4 and 8, each comparing two outcomes of the same run.
pub const TARGETS: &[TargetSpec] = &[
    TargetSpec {
        text: "sandbox: a sandboxed start adds ≤ 5 ms to fork+exec /bin/true (p50)",
        numerator: ("sandbox.spawn_true", Stat::P50),
        denominator: ("baseline.fork_exec_true", Stat::P50),
        bound: Bound::AddsAtMost(5.0),
    },
    TargetSpec {
        text: "warm Python, 16 connections: throughput ≥ 0.4 × bare server",
        numerator: ("warm.python.api3.c16", Stat::Rate),
        denominator: ("baseline.bare.c16", Stat::Rate),
        bound: Bound::AtLeast(0.4),
    },
    TargetSpec {
        text: "warm Python, 16 connections: throughput ≥ 1.0 × workerd",
        numerator: ("warm.python.api3.c16", Stat::Rate),
        denominator: ("peer.workerd.c16", Stat::Rate),
        bound: Bound::AtLeast(1.0),
    },
    TargetSpec {
        text: "warm Python, 1 connection: p50 ≤ 4 × bare server",
        numerator: ("warm.python.api3.c1", Stat::P50),
        denominator: ("baseline.bare.c1", Stat::P50),
        bound: Bound::AtMost(4.0),
    },
    TargetSpec {
        text: "cold Python (fresh function): p50 ≤ 0.5 × python3 -S -c pass",
        numerator: ("cold.python.fresh", Stat::P50),
        denominator: ("baseline.python_startup", Stat::P50),
        bound: Bound::AtMost(0.5),
    },
    TargetSpec {
        text: "cold Python (after reclaim): p50 ≤ 0.5 × python3 -S -c pass",
        numerator: ("cold.python.reclaimed", Stat::P50),
        denominator: ("baseline.python_startup", Stat::P50),
        bound: Bound::AtMost(0.5),
    },
    TargetSpec {
        text: "cold Node.js (fresh function): p50 ≤ 1.2 × node -e 0",
        numerator: ("cold.node.fresh", Stat::P50),
        denominator: ("baseline.node_startup", Stat::P50),
        bound: Bound::AtMost(1.2),
    },
    TargetSpec {
        text: "cold Node.js (after reclaim): p50 ≤ 1.2 × node -e 0",
        numerator: ("cold.node.reclaimed", Stat::P50),
        denominator: ("baseline.node_startup", Stat::P50),
        bound: Bound::AtMost(1.2),
    },
    TargetSpec {
        text: "async: accepted events/s ≥ 20 × one-flush-per-row inserts/s",
        numerator: ("async.python.api3.c16", Stat::Rate),
        denominator: ("baseline.sqlite_flush", Stat::Rate),
        bound: Bound::AtLeast(20.0),
    },
    TargetSpec {
        text: "idle warm Python instance: PSS ≤ 0.5 × fresh interpreter",
        numerator: ("memory.python.idle_pss", Stat::Pss),
        denominator: ("baseline.python_fresh_pss", Stat::Pss),
        bound: Bound::AtMost(0.5),
    },
];

/// One run of the suite.
pub struct Suite {
    settings: Settings,
    budget: Budget,
    credentials: Credentials,
    nimbus: PathBuf,
    python: Option<PathBuf>,
    /// Every outcome so far, in run order.
    pub outcomes: Vec<Outcome>,
    /// Interpreter versions, for the docs.
    pub interpreters: Vec<String>,
}

/// The name of the no-op Python function on the warm server.
const PYTHON_NOOP: &str = "noop-python";
/// The name of the no-op Node.js function on the warm server.
const NODE_NOOP: &str = "noop-node";
/// How long the unmeasured scale-up before a multi-connection warm run lasts.
const SCALE_UP: Duration = Duration::from_secs(2);
/// How many functions the mixed run spreads over.
const MIXED_FUNCTIONS: usize = 100;
/// The warm scenarios' server: instances never expire during the run, 16 of them may serve
/// one function, and the memory budget holds every instance the group keeps warm (128 MB
/// each: the mixed run's functions and 16 per no-op function).
const WARM_SERVER: ServerConfig = ServerConfig {
    keep_alive_secs: Some(600),
    concurrency: Some(16),
    memory_budget_mb: Some((MIXED_FUNCTIONS as u64 + 2 * 16) * 128),
    queue_max_pending: None,
};
/// Room in the async queue for every event the async run can accept.
const ASYNC_MAX_PENDING: u64 = 1_000_000;

impl Suite {
    /// A suite that will start `nimbus`.
    pub fn new(settings: Settings, nimbus: PathBuf) -> Suite {
        let budget = if settings.quick {
            Budget::QUICK
        } else {
            Budget::FULL
        };
        Suite {
            settings,
            budget,
            credentials: Credentials::generate(),
            nimbus,
            python: None,
            outcomes: Vec::new(),
            interpreters: Vec::new(),
        }
    }

    /// Runs every selected scenario. Failures of single scenarios become outcomes; an `Err`
    /// means the run as a whole could not go on.
    ///
    /// # Errors
    /// When a server cannot be started.
    pub async fn run(&mut self) -> anyhow::Result<()> {
        match baselines::real_python() {
            Ok(python) => {
                if let Some(version) = baselines::version_of(&python) {
                    self.interpreters
                        .push(format!("{version} ({})", python.display()));
                }
                self.python = Some(python);
            }
            Err(error) => eprintln!("no python3: {error:#}"),
        }
        if let Some(node) = baselines::find_in_path("node")
            && let Some(version) = baselines::version_of(&node)
        {
            self.interpreters
                .push(format!("Node.js {version} ({})", node.display()));
        }

        self.baselines().await?;
        self.warm_group().await?;
        self.memory_group().await?;
        self.cold_group().await?;
        self.async_group().await?;
        if self.settings.peers {
            self.peer_group().await;
        }
        Ok(())
    }

    fn wants(&self, id: &str) -> bool {
        self.settings
            .only
            .as_deref()
            .is_none_or(|only| id.contains(only))
    }

    fn wants_any(&self, ids: &[&str]) -> bool {
        ids.iter().any(|id| self.wants(id))
    }

    fn push(&mut self, outcome: Outcome) {
        eprintln!("  {}", progress_line(&outcome));
        self.outcomes.push(outcome);
    }

    fn start_server(&self, group: &str, config: ServerConfig) -> anyhow::Result<Server> {
        eprintln!("{group} server: {}", config.describe());
        Server::start(&self.nimbus, &self.credentials, config)
    }

    async fn load(
        &mut self,
        (id, title, group): (&str, &str, Group),
        // Where the load goes, and the process whose CPU time it is charged (a Nimbus server).
        (addr, cpu_of): (std::net::SocketAddr, Option<u32>),
        make: MakeRequest,
        expect: Expect,
        connections: usize,
        unit: &str,
    ) {
        if !self.wants(id) {
            return;
        }
        let plan = self.budget.plan(connections);
        let Some(server) = cpu_of else {
            let measured = load::run(addr, make, expect, plan).await;
            self.push(Outcome::from_load(id, title, group, measured, unit));
            return;
        };
        // The server's own CPU time over the measured rounds (its instances are processes of
        // their own): a cost per answer that the machine's noise moves far less than a rate.
        let cpu = async {
            tokio::time::sleep(plan.warmup).await;
            let before = process::cpu_seconds(server);
            tokio::time::sleep(plan.round * u32::try_from(plan.rounds).unwrap_or(1)).await;
            before.zip(process::cpu_seconds(server))
        };
        let (measured, cpu) = tokio::join!(load::run(addr, make, expect, plan), cpu);
        let answers: usize = measured.latencies_ms.iter().map(Vec::len).sum();
        let mut outcome = Outcome::from_load(id, title, group, measured, unit);
        if let Some((before, after)) = cpu.filter(|_| answers > 0) {
            outcome.notes.push(format!(
                "server process CPU: {:.0} µs per answer",
                (after - before) * 1e6 / answers as f64
            ));
        }
        self.push(outcome);
    }

    // -----------------------------------------------------------------------------------------
    // Baselines
    // -----------------------------------------------------------------------------------------

    async fn baselines(&mut self) -> anyhow::Result<()> {
        eprintln!("baselines");
        if self.wants_any(&["baseline.bare.c1", "baseline.bare.c16"]) {
            let bare = BareServer::start()?;
            let target = Target::new(bare.addr(), self.credentials.clone());
            for connections in [1, 16] {
                let target = target.clone();
                let make: MakeRequest = Arc::new(move || {
                    target.invoke(Dialect::Api3, PYTHON_NOOP, InvocationType::RequestResponse)
                });
                let id = format!("baseline.bare.c{connections}");
                let title = format!("bare axum hello-world, {connections} conn");
                self.load(
                    (&id, &title, Group::Baseline),
                    (bare.addr(), None),
                    make,
                    Expect::Api3,
                    connections,
                    "req/s",
                )
                .await;
            }
        }

        let budget = self.budget;
        if let Some(python) = self.python.clone() {
            if self.wants("baseline.python_startup") {
                let (samples, failures) = blocking(move || {
                    baselines::time_command(
                        &python,
                        &["-S", "-c", "pass"],
                        budget.rounds,
                        budget.startups_per_round,
                    )
                })
                .await;
                self.push(
                    Outcome::new(
                        "baseline.python_startup",
                        "python3 -S -c pass (real binary)",
                        Group::Baseline,
                    )
                    .with_latencies(&samples)
                    .with_failures(failures),
                );
            }
        } else {
            self.push(Outcome::skipped(
                "baseline.python_startup",
                "python3 -S -c pass (real binary)",
                Group::Baseline,
                "python3 not found",
            ));
        }

        if self.wants("baseline.node_startup") {
            let title = "node -e 0 (clean environment)";
            match baselines::find_in_path("node") {
                Some(node) => {
                    let (samples, failures) = blocking(move || {
                        baselines::time_command(
                            &node,
                            &["-e", "0"],
                            budget.rounds,
                            budget.startups_per_round,
                        )
                    })
                    .await;
                    self.push(
                        Outcome::new("baseline.node_startup", title, Group::Baseline)
                            .with_latencies(&samples)
                            .with_failures(failures),
                    );
                }
                None => self.push(Outcome::skipped(
                    "baseline.node_startup",
                    title,
                    Group::Baseline,
                    "node not found on PATH",
                )),
            }
        }

        if self.wants("baseline.fork_exec_true") {
            let (samples, failures) = blocking(move || {
                baselines::time_command(
                    Path::new("/bin/true"),
                    &[],
                    budget.rounds,
                    budget.forks_per_round,
                )
            })
            .await;
            self.push(
                Outcome::new(
                    "baseline.fork_exec_true",
                    "fork+exec /bin/true",
                    Group::Baseline,
                )
                .with_latencies(&samples)
                .with_failures(failures),
            );
        }

        if self.wants("sandbox.spawn_true") {
            let title = "sandboxed /bin/true (plan, spawn, wait, teardown)";
            match blocking(move || {
                crate::sandbox::spawn_true(budget.rounds, budget.forks_per_round)
            })
            .await
            {
                Ok((samples, failures)) => self.push(
                    Outcome::new("sandbox.spawn_true", title, Group::Nimbus)
                        .with_latencies(&samples)
                        .with_failures(failures),
                ),
                Err(error) => self.push(Outcome::skipped(
                    "sandbox.spawn_true",
                    title,
                    Group::Nimbus,
                    format!("{error:#}"),
                )),
            }
        }

        if self.wants("baseline.sqlite_flush") {
            let title = "SQLite, one flush per row (WAL, synchronous=FULL)";
            match blocking(move || baselines::sqlite_flush(budget.rounds, budget.round)).await {
                Ok(flush) => self.push(
                    Outcome::new("baseline.sqlite_flush", title, Group::Baseline)
                        .with_latencies(&flush.latencies_ms)
                        .with_rates(&flush.rates, "rows/s"),
                ),
                Err(error) => self.push(Outcome::failed(
                    "baseline.sqlite_flush",
                    title,
                    Group::Baseline,
                    format!("{error:#}"),
                )),
            }
        }

        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Warm invocations and the mixed run
    // -----------------------------------------------------------------------------------------

    async fn warm_group(&mut self) -> anyhow::Result<()> {
        let mut ids = Vec::new();
        for runtime in ["python", "node"] {
            for dialect in ["legacy", "api3"] {
                for connections in [1, 16] {
                    ids.push(format!("warm.{runtime}.{dialect}.c{connections}"));
                }
            }
        }
        ids.push("mixed.python100.api3.c16".into());
        if !ids.iter().any(|id| self.wants(id)) {
            return Ok(());
        }
        let server = self.start_server("warm", WARM_SERVER)?;
        let target = server.target(&self.credentials);
        let mut client = Client::new(target.clone());

        for (runtime, name) in [(Runtime::Python, PYTHON_NOOP), (Runtime::Node, NODE_NOOP)] {
            let wanted: Vec<&String> = ids
                .iter()
                .filter(|id| id.starts_with(&format!("warm.{}.", runtime.key())))
                .collect();
            if !wanted.iter().any(|id| self.wants(id)) {
                continue;
            }
            let ready = match deploy(&mut client, name, runtime).await {
                Ok(()) => invoke_once(&mut client, name)
                    .await
                    .map_err(|e| format!("first invocation failed: {}", e.reason())),
                Err(error) => Err(unavailable(runtime, &error)),
            };
            for connections in [1, 16] {
                if connections > 1 && ready.is_ok() {
                    self.scale_up(&target, name, connections).await;
                }
                for dialect in [Dialect::Legacy, Dialect::Api3] {
                    let key = if dialect == Dialect::Legacy {
                        "legacy"
                    } else {
                        "api3"
                    };
                    let id = format!("warm.{}.{key}.c{connections}", runtime.key());
                    let title = format!(
                        "warm {} no-op, {}, {connections} conn",
                        runtime.label(),
                        dialect.label()
                    );
                    if !self.wants(&id) {
                        continue;
                    }
                    if let Err(reason) = &ready {
                        let outcome = if runtime == Runtime::Python
                            || !reason.starts_with("runtime not available")
                        {
                            Outcome::failed(&id, &title, Group::Nimbus, reason.clone())
                        } else {
                            Outcome::skipped(&id, &title, Group::Nimbus, reason.clone())
                        };
                        self.push(outcome);
                        continue;
                    }
                    let target = target.clone();
                    let make: MakeRequest = Arc::new(move || {
                        target.invoke(dialect, name, InvocationType::RequestResponse)
                    });
                    self.load(
                        (&id, &title, Group::Nimbus),
                        (server.addr(), Some(server.pid())),
                        make,
                        dialect.into(),
                        connections,
                        "req/s",
                    )
                    .await;
                }
            }
        }

        if self.wants("mixed.python100.api3.c16") {
            self.mixed(&server, &mut client).await;
        }
        check_alive(&server);
        Ok(())
    }

    /// Drives `connections` concurrent invocations, unmeasured, until the function has as
    /// many instances as the load needs: the warm scenarios measure warm instances, not the
    /// pool growing.
    async fn scale_up(&self, target: &Target, name: &'static str, connections: usize) {
        let target_for_requests = target.clone();
        let make: MakeRequest = Arc::new(move || {
            target_for_requests.invoke(Dialect::Api3, name, InvocationType::RequestResponse)
        });
        let plan = Plan {
            connections,
            warmup: Duration::ZERO,
            round: SCALE_UP,
            rounds: 1,
        };
        let _ = load::run(target.addr, make, Expect::Api3, plan).await;
    }

    async fn mixed(&mut self, server: &Server, client: &mut Client) {
        let id = "mixed.python100.api3.c16";
        let title =
            format!("mixed: {MIXED_FUNCTIONS} Python functions round-robin, API 3.0, 16 conn");
        let names: Vec<String> = (0..MIXED_FUNCTIONS)
            .map(|i| format!("mixed-{i:03}"))
            .collect();
        for name in &names {
            let ready = match deploy(client, name, Runtime::Python).await {
                Ok(()) => invoke_once(client, name).await,
                Err(error) => Err(error),
            };
            if let Err(error) = ready {
                self.push(Outcome::failed(
                    id,
                    &title,
                    Group::Nimbus,
                    format!("preparing {name}: {}", error.reason()),
                ));
                return;
            }
        }
        let target = client.target().clone();
        let names = Arc::new(names);
        let next = Arc::new(AtomicUsize::new(0));
        let make: MakeRequest = Arc::new(move || {
            let i = next.fetch_add(1, Ordering::Relaxed) % names.len();
            target.invoke(Dialect::Api3, &names[i], InvocationType::RequestResponse)
        });
        self.load(
            (id, &title, Group::Nimbus),
            (server.addr(), Some(server.pid())),
            make,
            Expect::Api3,
            16,
            "req/s",
        )
        .await;
    }

    // -----------------------------------------------------------------------------------------
    // Memory of an idle warm instance
    // -----------------------------------------------------------------------------------------

    /// The idle instance and its baseline, a fresh interpreter, are measured in the same
    /// rounds while the same server runs: both then share the interpreter's file-backed
    /// pages with the same neighbours (the server's spares), which PSS divides among them.
    /// A baseline measured alone would own all of those pages and look larger.
    async fn memory_group(&mut self) -> anyhow::Result<()> {
        let id = "memory.python.idle_pss";
        let baseline_id = "baseline.python_fresh_pss";
        if !self.wants_any(&[id, baseline_id]) {
            return Ok(());
        }
        let title = "PSS of an idle warm Python instance";
        let baseline_title = "PSS of a fresh python3 -S (sleeping), beside the server";
        let server = self.start_server("memory", ServerConfig::default())?;
        let mut client = Client::new(server.target(&self.credentials));
        let mut samples = vec![Vec::new(); self.budget.rounds];
        let mut fresh = vec![Vec::new(); self.budget.rounds];
        let mut failures = Failures::default();
        let mut fresh_failures = Failures::default();
        let mut zygote_kib = None;
        for round in 0..self.budget.rounds {
            let name = format!("memory-python-{round}");
            let uid = match deploy_uid_reporter(&mut client, &name).await {
                Ok(()) => uid_of(&mut client, &name).await,
                Err(error) => Err(error),
            };
            match uid {
                Ok(uid) => {
                    tokio::time::sleep(self.budget.pss_settle).await;
                    let instance = process::instance_processes(server.pid(), uid);
                    if let Some(zygote) = process::zygote_of(server.pid(), &instance) {
                        zygote_kib = process::pss_kib(zygote);
                    }
                    let kib: u64 = instance
                        .iter()
                        .filter_map(|pid| process::pss_kib(*pid))
                        .sum();
                    if instance.is_empty() || kib == 0 {
                        failures
                            .add("no process appeared under the server for the instance".into());
                    } else {
                        samples[round].push(kib as f64 / 1024.0);
                    }
                }
                Err(error) => failures.add(error.reason()),
            }
            if let Some(python) = self.python.clone() {
                let settle = self.budget.pss_settle;
                let (mut one, more) =
                    blocking(move || baselines::fresh_python_pss(&python, 1, settle)).await;
                fresh[round].append(&mut one[0]);
                fresh_failures.merge(more);
            }
        }
        if self.python.is_some() {
            self.push(
                Outcome::new(baseline_id, baseline_title, Group::Baseline)
                    .with_pss(&fresh)
                    .with_failures(fresh_failures),
            );
        } else {
            self.push(Outcome::skipped(
                baseline_id,
                baseline_title,
                Group::Baseline,
                "python3 not found",
            ));
        }
        let mut outcome = Outcome::new(id, title, Group::Nimbus)
            .with_pss(&samples)
            .with_failures(failures);
        outcome.notes.push(format!(
            "sum of the PSS of one fresh function's instance, {} ms after its first invocation: the processes of its uid and the sandbox's init and waiter",
            self.budget.pss_settle.as_millis()
        ));
        if let Some(kib) = zygote_kib {
            outcome.notes.push(format!(
                "not counted: the zygote the instance was forked from, {:.2} MiB of PSS in the last round, shared by every Python spare and instance of the node",
                kib as f64 / 1024.0
            ));
        }
        self.push(outcome);
        check_alive(&server);
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Cold starts
    // -----------------------------------------------------------------------------------------

    async fn cold_group(&mut self) -> anyhow::Result<()> {
        let runtimes: Vec<Runtime> = [Runtime::Python, Runtime::Node, Runtime::Custom]
            .into_iter()
            .filter(|r| {
                self.wants_any(&[
                    &format!("cold.{}.fresh", r.key()),
                    &format!("cold.{}.reclaimed", r.key()),
                ])
            })
            .collect();
        if runtimes.is_empty() {
            return Ok(());
        }
        let keep_alive_secs = 1;
        let config = ServerConfig {
            keep_alive_secs: Some(keep_alive_secs),
            ..ServerConfig::default()
        };
        let server = self.start_server("cold", config)?;
        for runtime in runtimes {
            let (fresh, reclaimed) = self
                .cold_starts(&server, runtime, Duration::from_secs(keep_alive_secs))
                .await;
            self.push(fresh);
            self.push(reclaimed);
        }
        check_alive(&server);
        Ok(())
    }

    async fn cold_starts(
        &self,
        server: &Server,
        runtime: Runtime,
        keep_alive: Duration,
    ) -> (Outcome, Outcome) {
        let fresh_id = format!("cold.{}.fresh", runtime.key());
        let fresh_title = format!("cold start {}, fresh function", runtime.label());
        let reclaimed_id = format!("cold.{}.reclaimed", runtime.key());
        let reclaimed_title = format!("cold start {}, after keep-alive reclaim", runtime.label());
        let target = server.target(&self.credentials);
        let mut client = Client::new(target.clone());
        let rounds = self.budget.rounds;
        let mut fresh = vec![Vec::new(); rounds];
        let mut reclaimed = vec![Vec::new(); rounds];
        let (mut fresh_failures, mut reclaimed_failures) =
            (Failures::default(), Failures::default());
        let mut notes = Vec::new();

        for round in 0..rounds {
            let before: HashSet<u32> = process::descendants(server.pid()).into_iter().collect();
            let mut names = Vec::new();
            let mut uids = Vec::new();
            for i in 0..self.budget.cold_per_round {
                let name = format!("cold-{}-{round}-{i}", runtime.key());
                // One cold start at a time, not a burst: each finds the server idle.
                tokio::time::sleep(COLD_START_SPACING).await;
                let deployed = match runtime {
                    // Python answers with its uid, by which its instance is found below.
                    Runtime::Python => deploy_uid_reporter(&mut client, &name).await,
                    _ => deploy(&mut client, &name, runtime).await,
                };
                if let Err(error) = deployed {
                    let reason = unavailable(runtime, &error);
                    if names.is_empty()
                        && round == 0
                        && runtime != Runtime::Python
                        && reason.starts_with("runtime not available")
                    {
                        return (
                            Outcome::skipped(fresh_id, fresh_title, Group::Nimbus, reason.clone()),
                            Outcome::skipped(reclaimed_id, reclaimed_title, Group::Nimbus, reason),
                        );
                    }
                    fresh_failures.add(reason);
                    continue;
                }
                match timed_invoke(&target, &name).await {
                    Ok((ms, answer)) => {
                        fresh[round].push(ms);
                        uids.extend(answer.as_u64().and_then(|uid| u32::try_from(uid).ok()));
                    }
                    Err(message) => fresh_failures.add(message),
                }
                names.push(name);
            }

            // Wait until the instances started above are gone: keep-alive expiry reclaimed them.
            // Python's are found by uid (the spares started meanwhile stay); the others' are
            // the processes that appeared.
            let instances: Vec<u32> = match runtime {
                Runtime::Python => uids
                    .iter()
                    .flat_map(|&uid| process::instance_processes(server.pid(), uid))
                    .collect(),
                _ => process::descendants(server.pid())
                    .into_iter()
                    .filter(|pid| !before.contains(pid))
                    .collect(),
            };
            let limit = keep_alive * 3 + Duration::from_secs(5);
            let waited_from = Instant::now();
            while instances.iter().any(|pid| process::alive(*pid)) && waited_from.elapsed() < limit
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if instances.iter().any(|pid| process::alive(*pid)) {
                notes.push(format!(
                    "round {round}: instance processes still alive {limit:?} after their last use"
                ));
            }
            for name in &names {
                tokio::time::sleep(COLD_START_SPACING).await;
                match timed_invoke(&target, name).await {
                    Ok((ms, _)) => reclaimed[round].push(ms),
                    Err(message) => reclaimed_failures.add(message),
                }
            }
        }
        let fresh = Outcome::new(fresh_id, fresh_title, Group::Nimbus)
            .with_latencies(&fresh)
            .with_failures(fresh_failures);
        let mut reclaimed = Outcome::new(reclaimed_id, reclaimed_title, Group::Nimbus)
            .with_latencies(&reclaimed)
            .with_failures(reclaimed_failures);
        reclaimed.notes = notes;
        (fresh, reclaimed)
    }

    // -----------------------------------------------------------------------------------------
    // Async events
    // -----------------------------------------------------------------------------------------

    async fn async_group(&mut self) -> anyhow::Result<()> {
        let id = "async.python.api3.c16";
        if !self.wants(id) {
            return Ok(());
        }
        let title = "async Invoke (Event) accepted, API 3.0, 16 conn";
        let config = ServerConfig {
            queue_max_pending: Some(ASYNC_MAX_PENDING),
            ..ServerConfig::default()
        };
        let server = self.start_server("async", config)?;
        let target = server.target(&self.credentials);
        let mut client = Client::new(target.clone());
        let ready = match deploy(&mut client, PYTHON_NOOP, Runtime::Python).await {
            Ok(()) => invoke_once(&mut client, PYTHON_NOOP).await,
            Err(error) => Err(error),
        };
        if let Err(error) = ready {
            self.push(Outcome::failed(id, title, Group::Nimbus, error.reason()));
            return Ok(());
        }
        let make: MakeRequest =
            Arc::new(move || target.invoke(Dialect::Api3, PYTHON_NOOP, InvocationType::Event));
        self.load(
            (id, title, Group::Nimbus),
            (server.addr(), None),
            make,
            Expect::Api3,
            16,
            "events/s",
        )
        .await;
        check_alive(&server);
        // The backlog of accepted events dies with the server and its data directory.
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Peers
    // -----------------------------------------------------------------------------------------

    async fn peer_group(&mut self) {
        let cache = peers::cache_dir();
        let python = self
            .python
            .clone()
            .unwrap_or_else(|| PathBuf::from("python3"));
        for peer in Peer::ALL {
            let ids: Vec<String> = [1, 16]
                .iter()
                .map(|c| format!("peer.{}.c{c}", peer.key()))
                .collect();
            if !ids.iter().any(|id| self.wants(id)) {
                continue;
            }
            eprintln!("peer: {}", peer.label());
            let title = |c: usize| format!("{}, {c} conn", peer.label());
            let installed = {
                let (cache, python) = (cache.clone(), python.clone());
                blocking(move || peers::install(peer, &cache, &python)).await
            };
            let running = match installed {
                Ok(()) => peers::start(peer, &cache, &python).await,
                Err(error) => Err(error.context("install failed")),
            };
            let running = match running {
                Ok(running) => running,
                Err(error) => {
                    for (id, c) in ids.iter().zip([1, 16]) {
                        self.push(Outcome::skipped(
                            id,
                            title(c),
                            Group::Peer,
                            format!("{error:#}"),
                        ));
                    }
                    continue;
                }
            };
            let target = Target::new(running.addr(), self.credentials.clone());
            for (id, connections) in ids.iter().zip([1, 16]) {
                let target = target.clone();
                let make: MakeRequest = Arc::new(move || {
                    target.invoke(Dialect::Api3, PYTHON_NOOP, InvocationType::RequestResponse)
                });
                self.load(
                    (id, &title(connections), Group::Peer),
                    (running.addr(), None),
                    make,
                    Expect::Http200,
                    connections,
                    "req/s",
                )
                .await;
            }
        }
    }
}

/// Creates a no-op function and waits until it is `Active`.
async fn deploy(client: &mut Client, name: &str, runtime: Runtime) -> Result<(), CallError> {
    deploy_code(client, name, runtime, runtime.package_base64()).await
}

/// Deploys the function that answers with its uid (Python).
async fn deploy_uid_reporter(client: &mut Client, name: &str) -> Result<(), CallError> {
    let code = crate::packages::python_uid_package_base64();
    deploy_code(client, name, Runtime::Python, code).await
}

async fn deploy_code(
    client: &mut Client,
    name: &str,
    runtime: Runtime,
    code: anyhow::Result<String>,
) -> Result<(), CallError> {
    let code = code.map_err(|error| CallError::Refused {
        action: "CreateFunction".into(),
        reason: format!("{error:#}"),
    })?;
    client
        .call(
            "CreateFunction",
            &json!({
                "FunctionName": name,
                "Runtime": runtime.scf_name(),
                "Handler": "index.main_handler",
                "MemorySize": 128,
                "Timeout": 10,
                "Code": { "ZipFile": code },
            }),
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = client
            .call("GetFunction", &json!({ "FunctionName": name }))
            .await?;
        let status = answer["Response"]["Status"]
            .as_str()
            .unwrap_or("Active")
            .to_owned();
        match status.as_str() {
            "Active" => return Ok(()),
            "CreateFailed" | "UpdateFailed" => {
                return Err(CallError::Refused {
                    action: "CreateFunction".into(),
                    reason: format!(
                        "status {status}: {}",
                        answer["Response"]["StatusDesc"].as_str().unwrap_or("")
                    ),
                });
            }
            _ if Instant::now() > deadline => {
                return Err(CallError::Refused {
                    action: "CreateFunction".into(),
                    reason: format!("still {status} after 60 s"),
                });
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The skip reason for a runtime whose function could not be created.
fn unavailable(runtime: Runtime, error: &CallError) -> String {
    match error {
        CallError::Refused { action, reason }
            if action == "CreateFunction" && runtime != Runtime::Python =>
        {
            format!("runtime not available ({reason})")
        }
        other => other.reason(),
    }
}

/// One synchronous invocation, untimed (to warm an instance).
async fn invoke_once(client: &mut Client, name: &str) -> Result<(), CallError> {
    invoke_for_result(client, name).await.map(drop)
}

/// Invokes `name` once and returns its `RetMsg`, parsed.
async fn invoke_for_result(client: &mut Client, name: &str) -> Result<Value, CallError> {
    let request = client
        .target()
        .invoke(Dialect::Api3, name, InvocationType::RequestResponse);
    let answer = client.send("Invoke", Expect::Api3, request).await?;
    let ret_msg = answer["Response"]["Result"]["RetMsg"]
        .as_str()
        .unwrap_or("null");
    Ok(serde_json::from_str(ret_msg).unwrap_or(Value::Null))
}

/// The uid a uid-reporting function answered with.
async fn uid_of(client: &mut Client, name: &str) -> Result<u32, CallError> {
    let value = invoke_for_result(client, name).await?;
    value
        .as_u64()
        .and_then(|uid| u32::try_from(uid).ok())
        .ok_or_else(|| CallError::Refused {
            action: "Invoke".into(),
            reason: format!("expected a uid, got {value}"),
        })
}

/// The latency (ms) of one synchronous invocation, timed once a fresh connection is open, and
/// its `RetMsg`.
async fn timed_invoke(target: &Target, name: &str) -> Result<(f64, Value), String> {
    let mut connection = Connection::open(target.addr)
        .await
        .map_err(|e| crate::api::error_chain(&e))?;
    let request = target.invoke(Dialect::Api3, name, InvocationType::RequestResponse);
    let started = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(60), connection.send(request)).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let (status, body) = answer
        .map_err(|_| "no answer within 60 s".to_owned())?
        .map_err(|e| crate::api::error_chain(&e))?;
    let answer = crate::api::check(Expect::Api3, status, &body)?;
    let ret_msg = answer["Response"]["Result"]["RetMsg"]
        .as_str()
        .unwrap_or("null");
    Ok((ms, serde_json::from_str(ret_msg).unwrap_or(Value::Null)))
}

/// Warns when the server died during its group (its scenarios then show the failures).
fn check_alive(server: &Server) {
    if !process::alive(server.pid()) {
        eprintln!(
            "the server exited during the run; its log ends with:\n{}",
            server.log_tail(20)
        );
    }
}

/// Runs blocking work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// One line per outcome while the suite runs.
fn progress_line(outcome: &Outcome) -> String {
    use crate::report::{Status, fmt_num};
    let mut parts = vec![outcome.id.clone()];
    match &outcome.status {
        Status::Skipped { reason } => parts.push(format!("skipped: {reason}")),
        Status::Failed { reason } => parts.push(format!("FAILED: {reason}")),
        Status::Measured => {
            if let (Some(rate), Some(unit)) = (&outcome.rate, &outcome.rate_unit) {
                parts.push(format!("{} {unit}", fmt_num(rate.median)));
            }
            if let Some(l) = &outcome.latency_ms {
                parts.push(format!(
                    "p50 {} ms, p99 {} ms",
                    fmt_num(l.median),
                    fmt_num(l.p99)
                ));
            }
            if let Some(m) = &outcome.pss_mib {
                parts.push(format!("{} MiB", fmt_num(m.median)));
            }
            if outcome.failures > 0 {
                parts.push(format!(
                    "{} failed: {}",
                    outcome.failures,
                    outcome.failure_examples.join(" / ")
                ));
            }
        }
    }
    parts.join(": ")
}

/// Where the suite writes its JSON and SVG: `<workspace>/target/bench`.
pub fn output_dir() -> PathBuf {
    crate::server::workspace_root().join("target/bench")
}

/// Writes `text` to `path`, creating its folder.
///
/// # Errors
/// When the folder or file cannot be written.
pub fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
