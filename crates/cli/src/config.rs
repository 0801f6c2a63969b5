//! Server configuration: flags, then environment, then a TOML file, then defaults.
//!
//! Every default lives in [`Defaults`]; the file may not name keys this tree does not know.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use nimbus_engine::Isolation;
use serde::Deserialize;

/// The defaults, in one place (pinned by a test).
pub struct Defaults;

impl Defaults {
    /// Loopback only unless told otherwise.
    pub const LISTEN: &'static str = "127.0.0.1:9000";
    /// Region reported to functions.
    pub const REGION: &'static str = "ap-guangzhou";
    /// Interpreter looked up on PATH and resolved to its real binary once.
    pub const PYTHON: &'static str = "python3";
    /// Node.js looked up on PATH once; without it, Nodejs runtimes are refused.
    pub const NODE: &'static str = "node";
    /// Memory of all live instances together, MB.
    pub const MEMORY_BUDGET_MB: u64 = 4096;
    /// Idle instances live this long.
    pub const KEEP_ALIVE_SECS: u64 = 600;
    /// Idle instances are frozen after this long (the engine's default); 0 never.
    pub const FREEZE_AFTER_MS: u64 = nimbus_engine::DEFAULT_FREEZE_AFTER.as_millis() as u64;
    /// Live instances per function.
    pub const CONCURRENCY: u32 = 8;
    /// Per-invocation log cap.
    pub const LOG_LIMIT_BYTES: usize = 1024 * 1024;
    /// Async attempts running at once on the node.
    pub const QUEUE_WORKERS: u32 = 16;
    /// Pending async events per function.
    pub const QUEUE_MAX_PENDING_PER_FUNCTION: u64 = 10_000;
    /// Pending async events in all.
    pub const QUEUE_MAX_PENDING: u64 = 100_000;
    /// Every instance in the Linux sandbox; `none` only where namespaces are unavailable.
    pub const ISOLATION: IsolationMode = IsolationMode::Sandbox;
    /// Size of each instance's private `/tmp` (and its largest file), MiB.
    pub const TMP_MB: u64 = 64;
    /// Python interpreters kept started ahead of need (the engine's default).
    pub const PYTHON_SPARES: u32 = nimbus_engine::DEFAULT_PYTHON_SPARES;
    /// Node.js interpreters kept started ahead of need (the engine's default).
    pub const NODE_SPARES: u32 = nimbus_engine::DEFAULT_NODE_SPARES;

    /// `$NIMBUS_DATA_DIR`, else `$XDG_DATA_HOME/nimbus`, else `~/.local/share/nimbus`.
    pub fn data_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("NIMBUS_DATA_DIR") {
            return PathBuf::from(dir);
        }
        if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
            return PathBuf::from(dir).join("nimbus");
        }
        let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
        home.join(".local/share/nimbus")
    }
}

/// How function instances are isolated: `--isolation`, `[engine] isolation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum IsolationMode {
    /// Each instance in its own namespaces, read-only root, uid, rlimits and seccomp filter.
    Sandbox,
    /// No sandbox: functions run as the server's user and see what it sees. Only for hosts
    /// without namespaces; the server warns at start-up.
    None,
}

impl From<IsolationMode> for Isolation {
    fn from(mode: IsolationMode) -> Isolation {
        match mode {
            IsolationMode::Sandbox => Isolation::Sandbox,
            IsolationMode::None => Isolation::None,
        }
    }
}

/// The TOML file's shape. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on.
    pub listen: Option<String>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Region name.
    pub region: Option<String>,
    /// API credentials.
    #[serde(default)]
    pub credentials: Vec<FileCredential>,
    /// Engine settings.
    #[serde(default)]
    pub engine: FileEngine,
    /// Async queue settings.
    #[serde(default)]
    pub queue: FileQueue,
}

/// The `[queue]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileQueue {
    /// Async attempts running at once on the node.
    pub workers: Option<u32>,
    /// Pending async events per function.
    pub max_pending_per_function: Option<u64>,
    /// Pending async events in all.
    pub max_pending: Option<u64>,
}

/// One `[[credentials]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCredential {
    /// Key id.
    pub secret_id: String,
    /// Signing key.
    pub secret_key: String,
}

/// The `[engine]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEngine {
    /// Python interpreter (name on PATH or path).
    pub python: Option<String>,
    /// Node.js binary (name on PATH or path).
    pub node: Option<String>,
    /// Memory of all live instances together, MB.
    pub memory_budget_mb: Option<u64>,
    /// Idle keep-alive in seconds.
    pub keep_alive_secs: Option<u64>,
    /// Idle time before an instance is frozen, ms; 0 never freezes.
    pub freeze_after_ms: Option<u64>,
    /// Live instances per function.
    pub concurrency: Option<u32>,
    /// Per-invocation log cap in bytes.
    pub log_limit_bytes: Option<usize>,
    /// `sandbox` or `none`.
    pub isolation: Option<IsolationMode>,
    /// Size of each instance's `/tmp`, MiB.
    pub tmp_mb: Option<u64>,
    /// Python interpreters kept started ahead of need; 0 turns them off.
    pub python_spares: Option<u32>,
    /// Node.js interpreters (for 128 MB functions) kept started ahead of need; 0: off.
    pub node_spares: Option<u32>,
    /// Python instances forked from one pre-initialised interpreter (a zygote).
    pub python_zygote: Option<bool>,
    /// First uid (and gid) functions run as; servers sharing a host need ranges of their own.
    pub first_uid: Option<u32>,
    /// How many uids from `first_uid` on functions may run as.
    pub uid_count: Option<u32>,
}

/// The resolved configuration of `nimbus serve`.
#[derive(Debug)]
pub struct ServeConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Region name.
    pub region: String,
    /// Credentials from the environment or the file (empty: use or generate the data
    /// directory's credentials file).
    pub credentials: Vec<(String, String)>,
    /// Python interpreter to resolve.
    pub python: String,
    /// Node.js binary to resolve.
    pub node: String,
    /// Memory of all live instances together, MB.
    pub memory_budget_mb: u64,
    /// Idle keep-alive in seconds.
    pub keep_alive_secs: u64,
    /// Idle time before an instance is frozen, ms; 0 never freezes.
    pub freeze_after_ms: u64,
    /// Live instances per function.
    pub concurrency: u32,
    /// Per-invocation log cap in bytes.
    pub log_limit_bytes: usize,
    /// Async attempts running at once.
    pub queue_workers: u32,
    /// Pending async events per function.
    pub queue_max_pending_per_function: u64,
    /// Pending async events in all.
    pub queue_max_pending: u64,
    /// How function instances are isolated.
    pub isolation: IsolationMode,
    /// Size of each instance's `/tmp`, MiB.
    pub tmp_mb: u64,
    /// Python interpreters kept started ahead of need.
    pub python_spares: u32,
    /// Node.js interpreters kept started ahead of need.
    pub node_spares: u32,
    /// Python instances forked from a zygote.
    pub python_zygote: bool,
    /// First uid functions run as.
    pub first_uid: u32,
    /// Uids from `first_uid` on that functions may run as.
    pub uid_count: u32,
}

/// Reads the TOML file.
///
/// # Errors
/// When the file cannot be read or parsed.
pub fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// Merges flags, environment (`NIMBUS_SECRET_ID`/`NIMBUS_SECRET_KEY`; `NIMBUS_ISOLATION`
/// arrives with the flag), file and defaults.
///
/// # Errors
/// When a value is invalid (an address that does not parse, half a credential pair, a zero
/// concurrency).
pub fn resolve(
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    isolation: Option<IsolationMode>,
    file: FileConfig,
    env_credential: (Option<String>, Option<String>),
) -> anyhow::Result<ServeConfig> {
    let listen_text = listen
        .or(file.listen)
        .unwrap_or_else(|| Defaults::LISTEN.to_owned());
    let listen: SocketAddr = listen_text
        .parse()
        .with_context(|| format!("invalid listen address {listen_text:?} (use IP:PORT)"))?;
    let credentials = match env_credential {
        (Some(id), Some(key)) if !id.is_empty() && !key.is_empty() => vec![(id, key)],
        (None, None) => file
            .credentials
            .into_iter()
            .map(|c| (c.secret_id, c.secret_key))
            .collect(),
        _ => bail!("set both NIMBUS_SECRET_ID and NIMBUS_SECRET_KEY, or neither"),
    };
    if credentials
        .iter()
        .any(|(id, key)| id.is_empty() || key.is_empty())
    {
        bail!("a configured credential has an empty secret_id or secret_key");
    }
    let concurrency = file.engine.concurrency.unwrap_or(Defaults::CONCURRENCY);
    if concurrency == 0 {
        bail!("engine.concurrency must be at least 1");
    }
    let memory_budget_mb = file
        .engine
        .memory_budget_mb
        .unwrap_or(Defaults::MEMORY_BUDGET_MB);
    if memory_budget_mb == 0 {
        bail!("engine.memory_budget_mb must be at least 1");
    }
    let queue_workers = file.queue.workers.unwrap_or(Defaults::QUEUE_WORKERS);
    let queue_max_pending_per_function = file
        .queue
        .max_pending_per_function
        .unwrap_or(Defaults::QUEUE_MAX_PENDING_PER_FUNCTION);
    let queue_max_pending = file
        .queue
        .max_pending
        .unwrap_or(Defaults::QUEUE_MAX_PENDING);
    let tmp_mb = file.engine.tmp_mb.unwrap_or(Defaults::TMP_MB);
    if tmp_mb == 0 {
        bail!("engine.tmp_mb must be at least 1");
    }
    let first_uid = file
        .engine
        .first_uid
        .unwrap_or(nimbus_engine::DEFAULT_FIRST_ID);
    let uid_count = file
        .engine
        .uid_count
        .unwrap_or(nimbus_engine::DEFAULT_ID_COUNT);
    if queue_workers == 0 || queue_max_pending_per_function == 0 || queue_max_pending == 0 {
        bail!(
            "queue.workers, queue.max_pending_per_function and queue.max_pending must be at least 1"
        );
    }
    Ok(ServeConfig {
        listen,
        data_dir: data_dir
            .or(file.data_dir)
            .unwrap_or_else(Defaults::data_dir),
        region: file.region.unwrap_or_else(|| Defaults::REGION.to_owned()),
        credentials,
        python: file
            .engine
            .python
            .unwrap_or_else(|| Defaults::PYTHON.to_owned()),
        keep_alive_secs: file
            .engine
            .keep_alive_secs
            .unwrap_or(Defaults::KEEP_ALIVE_SECS),
        freeze_after_ms: file
            .engine
            .freeze_after_ms
            .unwrap_or(Defaults::FREEZE_AFTER_MS),
        concurrency,
        node: file
            .engine
            .node
            .unwrap_or_else(|| Defaults::NODE.to_owned()),
        memory_budget_mb,
        log_limit_bytes: file
            .engine
            .log_limit_bytes
            .unwrap_or(Defaults::LOG_LIMIT_BYTES),
        queue_workers,
        queue_max_pending_per_function,
        queue_max_pending,
        isolation: isolation
            .or(file.engine.isolation)
            .unwrap_or(Defaults::ISOLATION),
        tmp_mb,
        python_spares: file.engine.python_spares.unwrap_or(Defaults::PYTHON_SPARES),
        node_spares: file.engine.node_spares.unwrap_or(Defaults::NODE_SPARES),
        python_zygote: file.engine.python_zygote.unwrap_or(true),
        first_uid,
        uid_count,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_the_defaults() {
        let config = resolve(
            None,
            Some("/d".into()),
            None,
            FileConfig::default(),
            (None, None),
        )
        .expect("defaults are valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(config.region, "ap-guangzhou");
        assert_eq!(config.python, "python3");
        assert_eq!(
            (config.node.as_str(), config.memory_budget_mb),
            ("node", 4096)
        );
        assert_eq!((config.keep_alive_secs, config.concurrency), (600, 8));
        assert_eq!(config.log_limit_bytes, 1 << 20);
        assert_eq!(config.queue_workers, 16);
        assert_eq!(
            (
                config.queue_max_pending_per_function,
                config.queue_max_pending
            ),
            (10_000, 100_000)
        );
        assert!(config.credentials.is_empty());
        assert_eq!(
            (config.isolation, config.tmp_mb),
            (IsolationMode::Sandbox, 64)
        );
        assert_eq!((config.python_spares, config.node_spares), (2, 1));
        assert_eq!(
            (config.first_uid, config.uid_count),
            (
                nimbus_engine::DEFAULT_FIRST_ID,
                nimbus_engine::DEFAULT_ID_COUNT
            )
        );
    }

    #[test]
    fn a_uid_range_of_its_own_reaches_the_config() {
        let file: FileConfig =
            toml::from_str("[engine]\nfirst_uid = 3000000000\nuid_count = 500\n")
                .expect("valid toml");
        let config = resolve(None, None, None, file, (None, None)).expect("valid");
        // The engine checks the range (EngineConfig::validate).
        assert_eq!((config.first_uid, config.uid_count), (3_000_000_000, 500));
    }

    #[test]
    fn isolation_comes_from_flag_then_file() {
        let file: FileConfig =
            toml::from_str("[engine]\nisolation = \"none\"\ntmp_mb = 16\n").expect("valid toml");
        let config = resolve(None, None, None, file, (None, None)).expect("valid");
        assert_eq!((config.isolation, config.tmp_mb), (IsolationMode::None, 16));
        let file: FileConfig =
            toml::from_str("[engine]\nisolation = \"none\"\n").expect("valid toml");
        let flag = Some(IsolationMode::Sandbox);
        let config = resolve(None, None, flag, file, (None, None)).expect("valid");
        assert_eq!(config.isolation, IsolationMode::Sandbox);
        assert!(toml::from_str::<FileConfig>("[engine]\nisolation = \"off\"").is_err());
        let zero: FileConfig = toml::from_str("[engine]\ntmp_mb = 0").expect("valid toml");
        assert!(resolve(None, None, None, zero, (None, None)).is_err());
    }

    #[test]
    fn flags_beat_file_and_env_beats_file_credentials() {
        let file: FileConfig = toml::from_str(
            "listen = \"127.0.0.1:1\"\n[[credentials]]\nsecret_id = \"a\"\nsecret_key = \"b\"\n",
        )
        .expect("valid toml");
        let config = resolve(
            Some("127.0.0.1:2".into()),
            None,
            None,
            file,
            (Some("env-id".into()), Some("env-key".into())),
        )
        .expect("valid");
        assert_eq!(config.listen.port(), 2);
        assert_eq!(
            config.credentials,
            vec![("env-id".to_owned(), "env-key".to_owned())]
        );
    }

    #[test]
    fn refuses_unknown_keys_and_half_credentials() {
        assert!(toml::from_str::<FileConfig>("lisen = \"x\"").is_err());
        assert!(toml::from_str::<FileConfig>("[engine]\npyton = \"x\"").is_err());
        let half = resolve(
            None,
            None,
            None,
            FileConfig::default(),
            (Some("id".into()), None),
        );
        assert!(half.is_err());
        let bad = resolve(
            Some("nowhere".into()),
            None,
            None,
            FileConfig::default(),
            (None, None),
        );
        assert!(bad.is_err());
    }
}
