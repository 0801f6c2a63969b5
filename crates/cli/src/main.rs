//! `nimbus`: the platform (`nimbus serve`) and a client for people (`deploy`, `invoke`, `logs`,
//! `functions`) in one binary.

mod client;
mod config;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

/// A self-hosted serverless function platform that speaks Tencent Cloud SCF's API.
#[derive(Parser)]
#[command(name = "nimbus", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    connection: Connection,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform.
    Serve {
        /// Address to listen on [default: 127.0.0.1:9000].
        #[arg(long)]
        listen: Option<String>,
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
        /// How function instances are isolated: `sandbox` (namespaces, a read-only root, a uid
        /// per function, rlimits, seccomp; needs root) or `none` (functions run as the server's
        /// user and can read its files; only for hosts without namespaces) [default: sandbox].
        #[arg(long, value_enum, env = "NIMBUS_ISOLATION")]
        isolation: Option<config::IsolationMode>,
    },
    /// Package a folder and create or update a function from it.
    Deploy {
        /// Folder holding the function's code (the handler file at its root).
        dir: PathBuf,
        /// Function name.
        #[arg(long)]
        name: String,
        /// SCF runtime name, e.g. Python3.9.
        #[arg(long)]
        runtime: Option<String>,
        /// Handler, file.function.
        #[arg(long, default_value = "index.main_handler")]
        handler: String,
        /// Memory size in MB.
        #[arg(long)]
        memory: Option<u32>,
        /// Timeout in seconds.
        #[arg(long)]
        timeout: Option<u32>,
        /// Environment variable KEY=VALUE (repeatable).
        #[arg(long = "env")]
        env: Vec<String>,
    },
    /// Invoke a function and print its return value.
    Invoke {
        /// Function name.
        name: String,
        /// The event, JSON.
        #[arg(long, default_value = "{}")]
        event: String,
        /// Queue the event and print its request id instead of waiting.
        #[arg(long = "async")]
        is_async: bool,
        /// Print the invocation's log (last 4 KB) to stderr.
        #[arg(long)]
        log: bool,
    },
    /// Print a function's latest invocations and their logs.
    Logs {
        /// Function name.
        name: String,
        /// How many invocations.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// List functions.
    Functions,
    /// Print an async invocation's status and attempts.
    Status {
        /// The request id `invoke --async` printed.
        request_id: String,
    },
    /// List a function's dead letters (async events that failed for good).
    DeadLetters {
        /// Function name.
        name: String,
    },
    /// Queue a dead letter's event again; prints the new request id.
    Replay {
        /// Function name.
        name: String,
        /// The dead letter's request id.
        request_id: String,
    },
}

/// Where the client connects and with which credentials.
#[derive(Args)]
struct Connection {
    /// Nimbus endpoint (client commands).
    #[arg(
        long,
        global = true,
        env = "NIMBUS_ENDPOINT",
        default_value = "http://127.0.0.1:9000"
    )]
    endpoint: String,
    /// SecretId (client commands) [default: from the data directory's credentials file].
    #[arg(long, global = true, env = "NIMBUS_SECRET_ID")]
    secret_id: Option<String>,
    /// SecretKey (client commands) [default: from the data directory's credentials file].
    #[arg(long, global = true, env = "NIMBUS_SECRET_KEY", hide_env_values = true)]
    secret_key: Option<String>,
    /// Data directory: where `serve` keeps its state, and whose credentials file the client
    /// commands use when none are given [default: $NIMBUS_DATA_DIR, else
    /// $XDG_DATA_HOME/nimbus, else ~/.local/share/nimbus].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
}

impl Connection {
    fn client(&self) -> anyhow::Result<client::Client> {
        let data_dir = self
            .data_dir
            .clone()
            .unwrap_or_else(config::Defaults::data_dir);
        client::Client::new(
            &self.endpoint,
            self.secret_id.clone(),
            self.secret_key.clone(),
            &data_dir,
        )
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command, &cli.connection) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        // The reader of the output has gone (`nimbus functions | head -1`): nothing is wrong.
        Err(error) if error.is::<client::StdoutClosed>() => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("nimbus: {error:#}");
            ExitCode::from(1)
        }
    }
}

fn run(command: Command, connection: &Connection) -> anyhow::Result<bool> {
    match command {
        Command::Serve {
            listen,
            config,
            isolation,
        } => {
            let data_dir = connection.data_dir.clone();
            init_logging();
            let file = match config {
                Some(path) => config::read_file(&path)?,
                None => config::FileConfig::default(),
            };
            let env_credential = (
                std::env::var("NIMBUS_SECRET_ID").ok(),
                std::env::var("NIMBUS_SECRET_KEY").ok(),
            );
            let config = config::resolve(listen, data_dir, isolation, file, env_credential)?;
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))?;
            runtime.block_on(serve::run(config))?;
            Ok(true)
        }
        Command::Deploy {
            dir,
            name,
            runtime,
            handler,
            memory,
            timeout,
            env,
        } => {
            let options = client::DeployOptions {
                dir,
                name,
                runtime,
                handler,
                memory,
                timeout,
                env,
            };
            client::deploy(&connection.client()?, options)?;
            Ok(true)
        }
        Command::Invoke {
            name,
            event,
            is_async,
            log,
        } => client::invoke(&connection.client()?, &name, &event, is_async, log),
        Command::Logs { name, limit } => {
            client::logs(&connection.client()?, &name, limit)?;
            Ok(true)
        }
        Command::Status { request_id } => {
            client::status(&connection.client()?, &request_id)?;
            Ok(true)
        }
        Command::DeadLetters { name } => {
            client::dead_letters(&connection.client()?, &name)?;
            Ok(true)
        }
        Command::Replay { name, request_id } => {
            client::replay(&connection.client()?, &name, &request_id)?;
            Ok(true)
        }
        Command::Functions => {
            client::functions(&connection.client()?)?;
            Ok(true)
        }
    }
}

/// Logs go to stderr (stdout carries the "listening" line); `RUST_LOG` filters them.
fn init_logging() {
    use std::io::IsTerminal as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
