//! Peers: other function platforms, installed from the package registries into a cache folder
//! and driven by the same load generator.
//!
//! ```text
//!   ~/.cache/nimbus-bench/
//!     node/node_modules/.bin/{workerd,lambda-local}   npm install --prefix node <package>
//!     python/functions_framework/...                  pip install --target python functions-framework
//!     *.log                                           installer output
//! ```
//!
//! Each peer serves the equivalent no-op handler on a free loopback port, in its own process
//! group (a [`ProcessGuard`]), with its files in a temporary directory. A peer whose install
//! or start fails is reported as skipped with the error.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::api::{Connection, Expect};
use crate::process::{self, ProcessGuard};

/// How long a peer may take to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A peer the suite knows how to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// Google's functions-framework for Python.
    FunctionsFramework,
    /// `lambda-local` in HTTP (watch) mode.
    LambdaLocal,
    /// Cloudflare's `workerd` with a no-op Worker.
    Workerd,
}

impl Peer {
    /// All peers, in table order.
    pub const ALL: [Peer; 3] = [Peer::FunctionsFramework, Peer::LambdaLocal, Peer::Workerd];

    /// A short key for scenario ids.
    pub fn key(self) -> &'static str {
        match self {
            Peer::FunctionsFramework => "functions_framework",
            Peer::LambdaLocal => "lambda_local",
            Peer::Workerd => "workerd",
        }
    }

    /// A label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Peer::FunctionsFramework => "functions-framework (Python)",
            Peer::LambdaLocal => "lambda-local (Node.js)",
            Peer::Workerd => "workerd (no-op Worker)",
        }
    }
}

/// `$XDG_CACHE_HOME/nimbus-bench`, else `~/.cache/nimbus-bench`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("nimbus-bench");
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".cache/nimbus-bench")
}

/// Installs what `peer` needs into the cache unless it is already there.
///
/// # Errors
/// When the installer fails; the message carries the end of its output.
pub fn install(peer: Peer, cache: &Path, python: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(cache).with_context(|| format!("cannot create {}", cache.display()))?;
    match peer {
        Peer::FunctionsFramework => {
            let target = cache.join("python");
            if target.join("functions_framework").is_dir() {
                return Ok(());
            }
            let mut command = Command::new(python);
            command
                .args(["-m", "pip", "install", "--quiet", "--target"])
                .arg(&target)
                .arg("functions-framework");
            run_installer(&mut command, &cache.join("pip-functions-framework.log"))
        }
        Peer::LambdaLocal | Peer::Workerd => {
            let package = if peer == Peer::Workerd {
                "workerd"
            } else {
                "lambda-local"
            };
            if node_bin(cache, package).is_file() {
                return Ok(());
            }
            let mut command = Command::new("npm");
            command
                .args(["install", "--no-audit", "--no-fund", "--prefix"])
                .arg(cache.join("node"))
                .arg(package);
            run_installer(&mut command, &cache.join(format!("npm-{package}.log")))
        }
    }
}

fn node_bin(cache: &Path, package: &str) -> PathBuf {
    cache.join("node/node_modules/.bin").join(package)
}

fn run_installer(command: &mut Command, log: &Path) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let errors = file.try_clone().context("cannot share the installer log")?;
    eprintln!(
        "installing: {:?} {:?}",
        command.get_program(),
        command.get_args().collect::<Vec<_>>()
    );
    let status = command
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(errors)
        .status()
        .with_context(|| format!("cannot run {:?}", command.get_program()))?;
    if !status.success() {
        bail!(
            "{:?} failed ({status}): {}",
            command.get_program(),
            process::log_tail(log, 5)
        );
    }
    Ok(())
}

/// A running peer; stopped (with its process group) and cleaned up on drop.
pub struct RunningPeer {
    // The process stops before its directory is removed.
    _process: ProcessGuard,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl RunningPeer {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener
        .local_addr()
        .context("cannot read the port")?
        .port())
}

const FF_MAIN: &str = "def main_handler(request):\n    return \"null\"\n";
const LAMBDA_INDEX: &str =
    "exports.main_handler = async (event, context) => ({ statusCode: 200, body: \"null\" });\n";
const WORKER_JS: &str = "export default {\n  async fetch(request) {\n    return new Response(\"null\", { headers: { \"content-type\": \"application/json\" } });\n  },\n};\n";

/// Starts `peer` from the cache and waits until it answers.
///
/// # Errors
/// When it cannot be started or does not answer in time; the message carries its log.
pub async fn start(peer: Peer, cache: &Path, python: &Path) -> anyhow::Result<RunningPeer> {
    let dir = tempfile::Builder::new()
        .prefix("nimbus-bench-peer-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut command = match peer {
        Peer::FunctionsFramework => {
            std::fs::write(dir.path().join("main.py"), FF_MAIN)?;
            let mut command = Command::new(python);
            command
                .args([
                    "-m",
                    "functions_framework",
                    "--target",
                    "main_handler",
                    "--source",
                    "main.py",
                ])
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .env("PYTHONPATH", cache.join("python"));
            command
        }
        Peer::LambdaLocal => {
            std::fs::write(dir.path().join("index.js"), LAMBDA_INDEX)?;
            let mut command = Command::new(node_bin(cache, "lambda-local"));
            command.args([
                "-l",
                "index.js",
                "-h",
                "main_handler",
                "-v",
                "0",
                "--watch",
                &port.to_string(),
            ]);
            command
        }
        Peer::Workerd => {
            std::fs::write(dir.path().join("worker.js"), WORKER_JS)?;
            std::fs::write(dir.path().join("config.capnp"), workerd_config(addr))?;
            let mut command = Command::new(node_bin(cache, "workerd"));
            command.args(["serve", "config.capnp"]);
            command
        }
    };
    let log = dir.path().join("peer.log");
    let out = std::fs::File::create(&log).context("cannot create the peer log")?;
    let err = out.try_clone().context("cannot share the peer log")?;
    command
        .current_dir(dir.path())
        .env_remove("NODE_EXTRA_CA_CERTS")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut process = ProcessGuard::spawn(peer.label(), &mut command)?;

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if answers(addr).await {
            return Ok(RunningPeer {
                _process: process,
                addr,
                _dir: dir,
            });
        }
        if let Some(exit) = process.exited() {
            bail!("{exit}: {}", process::log_tail(&log, 5));
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not answer within {READY_TIMEOUT:?}: {}",
                peer.label(),
                process::log_tail(&log, 5)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a POST to `/` gets a 200.
async fn answers(addr: SocketAddr) -> bool {
    let Ok(mut connection) = Connection::open(addr).await else {
        return false;
    };
    let request = hyper::Request::post("/")
        .header(hyper::header::HOST, addr.to_string())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(hyper::body::Bytes::from_static(
            b"{}",
        )));
    let Ok(request) = request else {
        return false;
    };
    match tokio::time::timeout(Duration::from_secs(5), connection.send(request)).await {
        Ok(Ok((status, body))) => crate::api::check(Expect::Http200, status, &body).is_ok(),
        _ => false,
    }
}

fn workerd_config(addr: SocketAddr) -> String {
    format!(
        "using Workerd = import \"/workerd/workerd.capnp\";\n\n\
         const config :Workerd.Config = (\n  \
           services = [ (name = \"main\", worker = .noop) ],\n  \
           sockets = [ (name = \"http\", address = \"{addr}\", http = (), service = \"main\") ],\n\
         );\n\n\
         const noop :Workerd.Worker = (\n  \
           modules = [ (name = \"worker\", esModule = embed \"worker.js\") ],\n  \
           compatibilityDate = \"2024-01-01\",\n\
         );\n"
    )
}
