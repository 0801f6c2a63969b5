//! `nimbus serve`: open the data directory, start the engine, serve the API until a signal.
//!
//! Start-up order matters for the messages a person sees: every check that can fail (data
//! directory, credentials, database, interpreter, port) runs before the "listening" line, and
//! each failure is one clear line and a non-zero exit.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use nimbus_api::{AccountLimits, ApiState, AsyncRunner, Authenticator, Credential, Platform};
use nimbus_control::{CodeStore, Control, RuntimeFamily};
use nimbus_engine::{Engine, EngineConfig, Isolation, MemoryEnforcement};
use nimbus_queue::{Queue, QueueConfig};
use nimbus_store::Store;
use rand::Rng as _;
use rand::distributions::Alphanumeric;
use serde::{Deserialize, Serialize};

use crate::config::ServeConfig;

/// How long in-flight requests may run on after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Name of the generated credentials file inside the data directory.
pub const CREDENTIALS_FILE: &str = "credentials";

/// The generated credentials file's content.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsFile {
    /// Key id.
    pub secret_id: String,
    /// Signing key.
    pub secret_key: String,
}

/// Runs the server until SIGTERM or SIGINT.
///
/// # Errors
/// Any start-up failure, with its cause chain.
pub async fn run(config: ServeConfig) -> anyhow::Result<()> {
    let data_dir = prepare_data_dir(&config.data_dir)?;
    let credentials = credentials(&config, &data_dir)?;
    let store = Store::open(&data_dir.join("nimbus.db")).context("cannot open the database")?;
    let code = CodeStore::open(data_dir.join("code")).context("cannot prepare the code folder")?;

    let python = nimbus_engine::resolve_python(&config.python)
        .await
        .with_context(|| format!("cannot run the Python interpreter {:?}", config.python))?;
    let mut engine_config = EngineConfig::new(python.clone(), data_dir.join("runtimes"));
    engine_config.keep_alive = Duration::from_secs(config.keep_alive_secs);
    engine_config.freeze_after =
        (config.freeze_after_ms > 0).then(|| Duration::from_millis(config.freeze_after_ms));
    engine_config.default_concurrency = config.concurrency;
    engine_config.log_limit_bytes = config.log_limit_bytes;
    engine_config.memory_budget_mb = config.memory_budget_mb;
    engine_config.sandbox.isolation = config.isolation.into();
    engine_config.tmp_bytes = config.tmp_mb.saturating_mul(1024 * 1024);
    engine_config.sandbox.first_id = config.first_uid;
    engine_config.sandbox.id_count = config.uid_count;
    engine_config.python_spares = config.python_spares;
    engine_config.node_spares = config.node_spares;
    engine_config.python_zygote = config.python_zygote;
    let mut runtimes = vec![RuntimeFamily::Python3];
    match nimbus_engine::resolve_node(&config.node).await {
        Ok(node) => {
            tracing::info!(node = %node.display(), "node.js runtime ready");
            engine_config.node = Some(node);
            runtimes.push(RuntimeFamily::Nodejs);
        }
        Err(error) => {
            tracing::warn!(%error, node = %config.node, "node.js not found; Nodejs runtimes are refused")
        }
    }
    let engine = Arc::new(Engine::new(engine_config).context("cannot start the engine")?);
    log_isolation(&engine);
    tracing::info!(python = %python.display(), "python runtime ready");

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;

    let limits = AccountLimits {
        concurrency: config.concurrency,
        memory_budget_mb: config.memory_budget_mb,
    };
    // Sandboxed, instances see their code at the sandbox's code root, and their bytecode names
    // its sources there rather than in the data directory.
    let code_root = match engine.isolation() {
        nimbus_engine::Isolation::Sandbox => Some(nimbus_engine::CODE_ROOT),
        nimbus_engine::Isolation::None => None,
    };
    let control = Control::new(store.clone(), code, &runtimes)
        .with_python_compiler(python.clone(), code_root);
    let runner = AsyncRunner::new(control.clone(), Arc::clone(&engine), config.region.clone());
    let queue_config = QueueConfig {
        // Async attempts may take at most half of a function's instances, so synchronous
        // callers always find room.
        per_function_running: (config.concurrency / 2).max(1),
        workers: config.queue_workers,
        max_pending_per_function: config.queue_max_pending_per_function,
        max_pending: config.queue_max_pending,
        ..QueueConfig::default()
    };
    let queue = Queue::start(store, runner, queue_config)
        .await
        .context("cannot start the async queue")?;
    let platform = Platform::new(control, engine, config.region.clone(), limits, queue);
    let state = Arc::new(ApiState {
        auth: Authenticator::new(credentials),
        platform: platform.clone(),
    });

    tracing::info!(%address, data_dir = %data_dir.display(), "serving");
    println!("nimbus listening on http://{address}");
    std::io::stdout()
        .flush()
        .context("cannot write to stdout")?;

    // On SIGTERM the listener closes and in-flight requests may finish, for at most the grace
    // period; then the instances still running them are stopped regardless.
    let stopping = Arc::new(tokio::sync::Notify::new());
    let signalled = Arc::clone(&stopping);
    let server =
        axum::serve(listener, nimbus_api::router(state)).with_graceful_shutdown(async move {
            shutdown_signal().await;
            signalled.notify_one();
        });
    let grace_over = async {
        stopping.notified().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served.context("the server failed")?,
        () = grace_over => {
            tracing::warn!(grace_secs = SHUTDOWN_GRACE.as_secs(), "requests still running after the grace period; stopping them");
        }
    }
    tracing::info!("stopping instances");
    platform.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}

/// States how functions are isolated and how their memory is bounded; warns loudly without a
/// sandbox.
fn log_isolation(engine: &Engine) {
    let memory = match engine.memory_enforcement() {
        MemoryEnforcement::Cgroup => "cgroup v2 memory.max",
        MemoryEnforcement::Watchdog => "RLIMIT_DATA and a resident-memory watchdog",
    };
    let capabilities = engine.capabilities();
    match engine.isolation() {
        Isolation::Sandbox => tracing::info!(
            isolation = "sandbox",
            memory,
            %capabilities,
            "functions run sandboxed: own namespaces, read-only root with the code at \
             /var/user, a uid per function, no network unless enabled, rlimits, seccomp"
        ),
        Isolation::None => tracing::warn!(
            isolation = "none",
            memory,
            %capabilities,
            "FUNCTIONS ARE NOT ISOLATED (--isolation none): they run as the server's own user \
             in its namespaces and can read the database, the credentials file and every \
             function's code, signal the server and use its network; use this only on hosts \
             without namespaces"
        ),
    }
}

/// Creates the data directory and checks that it is writable.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"")
        .with_context(|| format!("data directory {} is not writable", dir.display()))?;
    std::fs::remove_file(&probe)
        .with_context(|| format!("data directory {} is not writable", dir.display()))?;
    dir.canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))
}

/// The configured credentials, else the data directory's credentials file, else a newly
/// generated pair written to that file (owner-only) and announced by SecretId and path.
fn credentials(config: &ServeConfig, data_dir: &Path) -> anyhow::Result<Vec<Credential>> {
    let to_credential = |(secret_id, secret_key): &(String, String)| Credential {
        secret_id: secret_id.clone(),
        secret_key: secret_key.clone(),
    };
    if !config.credentials.is_empty() {
        return Ok(config.credentials.iter().map(to_credential).collect());
    }
    let path = data_dir.join(CREDENTIALS_FILE);
    if path.exists() {
        let file = read_credentials_file(&path)?;
        tracing::info!(secret_id = %file.secret_id, path = %path.display(), "using stored credentials");
        return Ok(vec![to_credential(&(file.secret_id, file.secret_key))]);
    }
    let generated = CredentialsFile {
        secret_id: format!("AKID{}", random_text(32)),
        secret_key: random_text(32),
    };
    write_credentials_file(&path, &generated)?;
    println!(
        "generated credentials: SecretId {} (the SecretKey is in {}, readable only by you)",
        generated.secret_id,
        path.display()
    );
    Ok(vec![to_credential(&(
        generated.secret_id,
        generated.secret_key,
    ))])
}

/// Reads a credentials file.
///
/// # Errors
/// When it cannot be read or parsed.
pub fn read_credentials_file(path: &Path) -> anyhow::Result<CredentialsFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read credentials file {}", path.display()))?;
    let file: CredentialsFile = toml::from_str(&text)
        .with_context(|| format!("invalid credentials file {}", path.display()))?;
    if file.secret_id.is_empty() || file.secret_key.is_empty() {
        bail!(
            "credentials file {} has an empty secret_id or secret_key",
            path.display()
        );
    }
    Ok(file)
}

fn write_credentials_file(path: &Path, credentials: &CredentialsFile) -> anyhow::Result<()> {
    let text = toml::to_string(credentials).context("cannot encode credentials")?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create credentials file {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write credentials file {}", path.display()))?;
    Ok(())
}

fn random_text(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::error!(%error, "cannot listen for SIGTERM; stop with Ctrl-C");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
