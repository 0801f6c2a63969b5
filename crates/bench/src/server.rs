//! Building and starting the Nimbus server under test.
//!
//! ```text
//!   NIMBUS_BIN, or `cargo build --release --bin nimbus` (the artifact path comes from cargo's
//!   JSON messages) ──► nimbus serve --listen 127.0.0.1:0 --data-dir <tmp>/data
//!                                   --config <tmp>/nimbus.toml
//!   stdout "nimbus listening on http://ADDR" ──► ready; stderr ──► <tmp>/server.log
//! ```
//!
//! Each [`Server`] owns a fresh temporary directory and a config tuned for its scenarios; on
//! drop the server's process group is stopped first, then the directory is removed.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::api::{Credentials, Target};
use crate::process::{self, ProcessGuard};

/// How long a server may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The workspace root (two levels above this crate's manifest).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The `nimbus` binary: `$NIMBUS_BIN`, else built in release mode by cargo.
///
/// # Errors
/// When cargo fails or reports no `nimbus` executable.
pub fn nimbus_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("NIMBUS_BIN") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            bail!("NIMBUS_BIN={} is not a file", path.display());
        }
        return Ok(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building nimbus: cargo build --release --bin nimbus");
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--bin",
            "nimbus",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo")?;
    if !output.status.success() {
        bail!(
            "cargo build --release --bin nimbus failed ({})",
            output.status
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| message["target"]["name"] == "nimbus")
        .find_map(|message| message["executable"].as_str().map(PathBuf::from))
        .context("cargo built no nimbus executable")
}

/// The server settings a group of scenarios needs. `None` leaves a key out of the file, so the
/// server's default applies.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerConfig {
    /// `[engine] keep_alive_secs`.
    pub keep_alive_secs: Option<u64>,
    /// `[engine] concurrency`.
    pub concurrency: Option<u32>,
    /// `[engine] memory_budget_mb`: room for every instance a scenario keeps warm.
    pub memory_budget_mb: Option<u64>,
    /// `[queue] max_pending_per_function` and `max_pending`: room for every event a run
    /// accepts, so the accept rate is measured rather than the back-pressure limit.
    pub queue_max_pending: Option<u64>,
}

impl ServerConfig {
    /// The config file's text.
    fn toml(&self) -> String {
        let mut engine = String::new();
        if let Some(secs) = self.keep_alive_secs {
            engine.push_str(&format!("keep_alive_secs = {secs}\n"));
        }
        if let Some(concurrency) = self.concurrency {
            engine.push_str(&format!("concurrency = {concurrency}\n"));
        }
        if let Some(mb) = self.memory_budget_mb {
            engine.push_str(&format!("memory_budget_mb = {mb}\n"));
        }
        let mut text = String::from("region = \"ap-guangzhou\"\n");
        if !engine.is_empty() {
            text.push_str("\n[engine]\n");
            text.push_str(&engine);
        }
        if let Some(pending) = self.queue_max_pending {
            text.push_str(&format!(
                "\n[queue]\nmax_pending_per_function = {pending}\nmax_pending = {pending}\n"
            ));
        }
        text
    }

    /// A one-line description for progress output: the keys it sets, or "defaults".
    pub fn describe(&self) -> String {
        let text = self.toml();
        let lines: Vec<&str> = text.lines().skip(1).filter(|l| !l.is_empty()).collect();
        if lines.is_empty() {
            "defaults".into()
        } else {
            lines.join(" ")
        }
    }
}

/// A running Nimbus server with its own data directory.
pub struct Server {
    // Field order matters: the process stops before its directory is removed.
    process: ProcessGuard,
    addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts `binary` with a fresh data directory and `config`, and waits until it listens.
    ///
    /// # Errors
    /// When it cannot be started or does not announce its address in time; the message
    /// carries the end of its log.
    pub fn start(
        binary: &Path,
        credentials: &Credentials,
        config: ServerConfig,
    ) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("nimbus-bench-server-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let config_path = dir.path().join("nimbus.toml");
        std::fs::write(&config_path, config.toml()).context("cannot write the server config")?;
        let log = dir.path().join("server.log");
        let log_file = std::fs::File::create(&log).context("cannot create the server log")?;

        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--config")
            .arg(&config_path)
            .env("NIMBUS_SECRET_ID", &credentials.secret_id)
            .env("NIMBUS_SECRET_KEY", &credentials.secret_key)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut process = ProcessGuard::spawn("nimbus", &mut command)?;
        let stdout = process
            .take_stdout()
            .context("nimbus's stdout was not piped")?;

        // Read stdout on a thread until EOF so the pipe never fills; hand over the address.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("nimbus listening on http://") {
                    let _ = tx.send(addr.trim().to_owned());
                }
            }
        });
        let announced = rx.recv_timeout(START_TIMEOUT);
        let addr = match announced {
            Ok(text) => text
                .parse()
                .with_context(|| format!("nimbus announced {text:?}"))?,
            Err(_) => {
                let state = process
                    .exited()
                    .unwrap_or_else(|| "nimbus did not announce its address".into());
                bail!(
                    "{state}; its log ends with:\n{}",
                    process::log_tail(&log, 20)
                );
            }
        };
        Ok(Server {
            process,
            addr,
            log,
            _dir: dir,
        })
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Requests to it, signed with `credentials`.
    pub fn target(&self, credentials: &Credentials) -> Target {
        Target::new(self.addr, credentials.clone())
    }

    /// The end of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        process::log_tail(&self.log, lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_only_the_keys_it_sets() {
        let plain = ServerConfig {
            keep_alive_secs: Some(1),
            ..ServerConfig::default()
        };
        assert_eq!(
            plain.toml(),
            "region = \"ap-guangzhou\"\n\n[engine]\nkeep_alive_secs = 1\n"
        );
        let full = ServerConfig {
            keep_alive_secs: Some(600),
            concurrency: Some(16),
            memory_budget_mb: Some(16384),
            queue_max_pending: Some(1_000_000),
        };
        let parsed: toml::Table = toml::from_str(&full.toml()).expect("valid toml");
        assert_eq!(
            parsed["engine"]["memory_budget_mb"].as_integer(),
            Some(16384)
        );
        assert_eq!(parsed["queue"]["max_pending"].as_integer(), Some(1_000_000));
        assert_eq!(
            full.describe(),
            "[engine] keep_alive_secs = 600 concurrency = 16 memory_budget_mb = 16384 [queue] \
             max_pending_per_function = 1000000 max_pending = 1000000"
        );
    }
}
