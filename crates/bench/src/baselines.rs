//! The physical limits Nimbus is compared with, measured in the same run.
//!
//! - a bare axum server in this process, on its own runtime thread, answering every request
//!   with a fixed API-3.0-shaped JSON (so the load generator judges it like Nimbus);
//! - interpreter start-up: `<real python3> -S -c pass` and `node -e 0`, clean environment;
//! - fork+exec of `/bin/true`;
//! - SQLite's one-flush-per-row insert rate (WAL, `synchronous=FULL`, one transaction per row);
//! - the PSS of a fresh, idle `python3 -S` interpreter (measured by the memory scenario, beside
//!   the server whose instance it is compared with).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::load::Failures;
use crate::process::{self, ProcessGuard};

/// The environment every interpreter baseline runs with: nothing but a plain `PATH` (no
/// `NODE_EXTRA_CA_CERTS`, no `PYTHON*`).
const CLEAN_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The bare hello-world server; stopped and joined on drop.
pub struct BareServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the bare server answers: the shape and size of a Nimbus `Invoke` answer.
const BARE_ANSWER: &str = r#"{"Response":{"Result":{"FunctionRequestId":"00000000-0000-4000-8000-000000000000","RetMsg":"null","ErrMsg":"","Log":"","MemUsage":0,"Duration":0.1,"BillDuration":1,"InvokeResult":0},"RequestId":"00000000-0000-4000-8000-000000000000"}}"#;

impl BareServer {
    /// Starts it on `127.0.0.1:0` with a multi-threaded runtime of its own.
    ///
    /// # Errors
    /// When the runtime or the listener cannot be created.
    pub fn start() -> anyhow::Result<BareServer> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("bare-server")
            .build()
            .context("cannot build the bare server's runtime")?;
        // Bound synchronously: this may be called from inside another runtime.
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind the bare server")?;
        listener
            .set_nonblocking(true)
            .context("cannot make the bare server's socket non-blocking")?;
        let addr = listener
            .local_addr()
            .context("cannot read the bare server's address")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                let app = axum::Router::new().fallback(|_body: axum::body::Bytes| async {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        BARE_ANSWER,
                    )
                });
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
            runtime.shutdown_timeout(Duration::from_secs(1));
        });
        Ok(BareServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for BareServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Finds `program` on `PATH`.
pub fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// The interpreter `python3` really runs (`sys.executable`), past any launcher shim.
///
/// # Errors
/// When `python3` cannot be run or prints no absolute path.
pub fn real_python() -> anyhow::Result<PathBuf> {
    let output = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .output()
        .context("cannot run python3")?;
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !output.status.success() || !path.is_absolute() {
        bail!(
            "python3 did not print its sys.executable ({})",
            output.status
        );
    }
    Ok(path)
}

/// The first line of `<program> --version`, for the docs.
pub fn version_of(program: &Path) -> Option<String> {
    let output = Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let text = if output.stdout.is_empty() {
        output.stderr
    } else {
        output.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
}

/// Times `per_round` runs of a command in each of `rounds` rounds (milliseconds from spawn to
/// exit, output discarded, clean environment).
pub fn time_command(
    program: &Path,
    args: &[&str],
    rounds: usize,
    per_round: usize,
) -> (Vec<Vec<f64>>, Failures) {
    let mut samples = vec![Vec::with_capacity(per_round); rounds];
    let mut failures = Failures::default();
    for round in &mut samples {
        for _ in 0..per_round {
            let mut command = Command::new(program);
            command
                .args(args)
                .env_clear()
                .env("PATH", CLEAN_PATH)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let started = Instant::now();
            match command.status() {
                Ok(status) if status.success() => {
                    round.push(started.elapsed().as_secs_f64() * 1000.0)
                }
                Ok(status) => failures.add(format!("{} exited with {status}", program.display())),
                Err(error) => failures.add(format!("cannot run {}: {error}", program.display())),
            }
        }
    }
    (samples, failures)
}

/// What the one-flush-per-row baseline measured.
pub struct FlushRate {
    /// Latency of each insert in milliseconds, per round.
    pub latencies_ms: Vec<Vec<f64>>,
    /// Rows per second, one value per round.
    pub rates: Vec<Vec<f64>>,
}

/// SQLite's raw one-flush-per-row insert rate in a temporary file.
///
/// # Errors
/// When the database cannot be created or written.
pub fn sqlite_flush(rounds: usize, round: Duration) -> anyhow::Result<FlushRate> {
    let dir = tempfile::Builder::new()
        .prefix("nimbus-bench-sqlite-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let mut db = rusqlite::Connection::open(dir.path().join("flush.db"))
        .context("cannot open the database")?;
    db.pragma_update(None, "journal_mode", "WAL")
        .context("cannot select WAL")?;
    db.pragma_update(None, "synchronous", "FULL")
        .context("cannot select synchronous=FULL")?;
    db.execute_batch(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, request_id TEXT NOT NULL, \
         function_name TEXT NOT NULL, event TEXT NOT NULL, accepted_at INTEGER NOT NULL)",
    )
    .context("cannot create the table")?;

    let mut latencies = Vec::with_capacity(rounds);
    let mut rates = Vec::with_capacity(rounds);
    let mut row: i64 = 0;
    for _ in 0..rounds {
        let mut samples = Vec::new();
        let round_start = Instant::now();
        while round_start.elapsed() < round {
            let started = Instant::now();
            let tx = db.transaction().context("cannot begin")?;
            tx.execute(
                "INSERT INTO events (request_id, function_name, event, accepted_at) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![format!("00000000-0000-4000-8000-{row:012}"), "noop-python", "{}", row],
            )
            .context("cannot insert")?;
            tx.commit().context("cannot commit")?;
            samples.push(started.elapsed().as_secs_f64() * 1000.0);
            row += 1;
        }
        rates.push(vec![
            samples.len() as f64 / round_start.elapsed().as_secs_f64(),
        ]);
        latencies.push(samples);
    }
    Ok(FlushRate {
        latencies_ms: latencies,
        rates,
    })
}

/// The PSS (MiB) of a fresh `python -S` sleeping interpreter, `settle` after it started, once
/// per round.
pub fn fresh_python_pss(
    python: &Path,
    rounds: usize,
    settle: Duration,
) -> (Vec<Vec<f64>>, Failures) {
    let mut samples = vec![Vec::new(); rounds];
    let mut failures = Failures::default();
    for round in &mut samples {
        let mut command = Command::new(python);
        command
            .args(["-S", "-c", "import time; time.sleep(5)"])
            .env_clear()
            .env("PATH", CLEAN_PATH)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut guard = match ProcessGuard::spawn("python3", &mut command) {
            Ok(guard) => guard,
            Err(error) => {
                failures.add(format!("{error:#}"));
                continue;
            }
        };
        std::thread::sleep(settle);
        match process::pss_kib(guard.pid()) {
            Some(kib) => round.push(kib as f64 / 1024.0),
            None => failures.add("cannot read the interpreter's smaps_rollup".into()),
        }
        guard.stop();
    }
    (samples, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_server_answers_and_stops() {
        let server = BareServer::start().expect("starts");
        let mut stream = std::net::TcpStream::connect(server.addr()).expect("connects");
        use std::io::{Read as _, Write as _};
        stream
            .write_all(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
            )
            .expect("writes");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("reads");
        assert!(answer.starts_with("HTTP/1.1 200"));
        assert!(answer.ends_with(BARE_ANSWER));
        drop(server);
    }

    #[test]
    fn times_true_and_reports_failures() {
        let (samples, failures) = time_command(Path::new("/bin/true"), &[], 2, 3);
        assert_eq!(samples.iter().map(Vec::len).sum::<usize>(), 6);
        assert_eq!(failures.count, 0);
        let (samples, failures) = time_command(Path::new("/bin/false"), &[], 1, 2);
        assert!(samples[0].is_empty());
        assert_eq!(failures.count, 2);
    }

    #[test]
    fn sqlite_flush_counts_rows_per_round() {
        let flush = sqlite_flush(2, Duration::from_millis(50)).expect("runs");
        assert_eq!(flush.latencies_ms.len(), 2);
        assert!(flush.rates.iter().all(|r| r[0] > 0.0));
    }
}
