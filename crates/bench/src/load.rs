//! The load generator: a fixed number of keep-alive connections, each sending its next request
//! as soon as the previous answer arrived (closed loop), for a warm-up and then timed rounds.
//!
//! ```text
//!   t0 ── warm-up ── round 1 ── round 2 ── ... ── round N ── end
//!         (dropped)   each answer lands in the round in which it completed
//! ```
//!
//! Requests are built by the caller for every send, so each one is signed with a fresh nonce
//! and timestamp. Only answers that [`crate::api::check`] accepts count as completed; every
//! other answer is a failure, counted and kept as an example message.
//!
//! # Limitations
//! The generator shares the machine's cores with the server under test. That is the same for
//! Nimbus, the bare baseline and the peers, which is why only ratios from one run are compared.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::api::{self, Body, Connection, Expect, error_chain};

/// Builds the next request to send.
pub type MakeRequest = Arc<dyn Fn() -> hyper::Request<Body> + Send + Sync>;

/// How long and how wide a load run is.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Concurrent connections.
    pub connections: usize,
    /// Time before the first round whose answers are dropped.
    pub warmup: Duration,
    /// Length of one round.
    pub round: Duration,
    /// Number of rounds.
    pub rounds: usize,
}

/// Failures seen during a run: how many, and the first few distinct messages.
#[derive(Debug, Clone, Default)]
pub struct Failures {
    /// Number of failed requests (including failed connection attempts).
    pub count: u64,
    /// Up to [`Failures::EXAMPLES`] distinct messages.
    pub examples: Vec<String>,
}

impl Failures {
    /// How many distinct messages are kept.
    pub const EXAMPLES: usize = 5;

    /// Records one failure.
    pub fn add(&mut self, message: String) {
        self.count += 1;
        if self.examples.len() < Self::EXAMPLES && !self.examples.contains(&message) {
            self.examples.push(message);
        }
    }

    /// Adds another set of failures.
    pub fn merge(&mut self, other: Failures) {
        self.count += other.count;
        for message in other.examples {
            if self.examples.len() < Self::EXAMPLES && !self.examples.contains(&message) {
                self.examples.push(message);
            }
        }
    }
}

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Latencies in milliseconds of the successful answers, per round.
    pub latencies_ms: Vec<Vec<f64>>,
    /// Successful answers per second, per round.
    pub rates: Vec<Vec<f64>>,
    /// Failed requests.
    pub failures: Failures,
}

/// Runs `plan` against `addr`; every request comes from `make`, every answer is judged by
/// `expect`.
pub async fn run(addr: SocketAddr, make: MakeRequest, expect: Expect, plan: Plan) -> Measured {
    let start = Instant::now();
    let schedule = Schedule {
        measured_from: start + plan.warmup,
        round: plan.round,
        rounds: plan.rounds,
    };
    let tasks: Vec<_> = (0..plan.connections.max(1))
        .map(|_| tokio::spawn(connection_loop(addr, make.clone(), expect, schedule)))
        .collect();

    let mut latencies_ms = vec![Vec::new(); plan.rounds];
    let mut failures = Failures::default();
    for task in tasks {
        match task.await {
            Ok(lane) => {
                for (all, mine) in latencies_ms.iter_mut().zip(lane.latencies_ms) {
                    all.extend(mine);
                }
                failures.merge(lane.failures);
            }
            Err(error) => failures.add(format!("load task failed: {error}")),
        }
    }
    let round_secs = plan.round.as_secs_f64();
    let rates = latencies_ms
        .iter()
        .map(|round| vec![round.len() as f64 / round_secs])
        .collect();
    Measured {
        latencies_ms,
        rates,
        failures,
    }
}

/// When answers count, and in which round.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    measured_from: Instant,
    round: Duration,
    rounds: usize,
}

impl Schedule {
    fn end(&self) -> Instant {
        self.measured_from + self.round * u32::try_from(self.rounds).unwrap_or(u32::MAX)
    }

    /// The round an answer completed at `at` belongs to, if any.
    fn round_of(&self, at: Instant) -> Option<usize> {
        let since = at.checked_duration_since(self.measured_from)?;
        let index = (since.as_nanos() / self.round.as_nanos().max(1)) as usize;
        (index < self.rounds).then_some(index)
    }
}

/// What one connection saw.
struct Lane {
    latencies_ms: Vec<Vec<f64>>,
    failures: Failures,
}

/// The longest a single request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

async fn connection_loop(
    addr: SocketAddr,
    make: MakeRequest,
    expect: Expect,
    schedule: Schedule,
) -> Lane {
    let mut lane = Lane {
        latencies_ms: vec![Vec::new(); schedule.rounds],
        failures: Failures::default(),
    };
    let end = schedule.end();
    let mut connection: Option<Connection> = None;

    while Instant::now() < end {
        // Connect (again) when needed, pausing briefly after a refused attempt.
        let conn = match connection.as_mut() {
            Some(conn) => conn,
            None => match Connection::open(addr).await {
                Ok(conn) => connection.insert(conn),
                Err(error) => {
                    lane.failures.add(error_chain(&error));
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };

        let request = make();
        let sent = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, conn.send(request)).await;
        let done = Instant::now();
        match answer {
            Ok(Ok((status, body))) => match api::check(expect, status, &body) {
                Ok(_) => {
                    if let Some(round) = schedule.round_of(done) {
                        lane.latencies_ms[round].push((done - sent).as_secs_f64() * 1000.0);
                    }
                }
                Err(message) => lane.failures.add(message),
            },
            Ok(Err(error)) => {
                lane.failures.add(error_chain(&error));
                connection = None;
            }
            Err(_) => {
                lane.failures
                    .add(format!("no answer within {REQUEST_TIMEOUT:?}"));
                connection = None;
            }
        }
    }
    lane
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_land_in_the_round_they_completed_in() {
        let t0 = Instant::now();
        let schedule = Schedule {
            measured_from: t0,
            round: Duration::from_secs(1),
            rounds: 3,
        };
        assert_eq!(schedule.round_of(t0), Some(0));
        assert_eq!(schedule.round_of(t0 + Duration::from_millis(1500)), Some(1));
        assert_eq!(schedule.round_of(t0 + Duration::from_secs(3)), None);
        assert_eq!(schedule.end(), t0 + Duration::from_secs(3));
    }

    #[test]
    fn failures_keep_a_few_distinct_examples() {
        let mut failures = Failures::default();
        for i in 0..20 {
            failures.add(format!("error {}", i % 7));
        }
        assert_eq!(failures.count, 20);
        assert_eq!(failures.examples.len(), Failures::EXAMPLES);
        assert_eq!(failures.examples[0], "error 0");
    }
}
