//! Engine configuration, its defaults, and finding the real Python and Node.js interpreters.
//!
//! # Instance limits
//!
//! Every limit an instance gets, in one place (the sandbox applies them; see `isolation.rs`):
//!
//! | limit | default | how |
//! |---|---|---|
//! | memory | the function's `memory_mb` | cgroup `memory.max` where delegated, else `RLIMIT_DATA` (`memory_mb` + runtime headroom, see `memory.rs`) and a watchdog on resident memory |
//! | processes and threads | [`DEFAULT_MAX_PROCESSES`] per instance | `RLIMIT_NPROC` = that × [`EngineConfig::default_concurrency`], since all instances of a function share its uid (unsandboxed: the server's own limit); an instance found above its share after an invocation is reported in the log and stopped |
//! | open files | [`DEFAULT_MAX_OPEN_FILES`] per process | `RLIMIT_NOFILE` |
//! | `/tmp` | [`DEFAULT_TMP_BYTES`] per instance | size of its private tmpfs |
//! | file size | the `/tmp` size | `RLIMIT_FSIZE` |
//! | CPU time | init timeout + timeout + [`CPU_BACKSTOP_MARGIN`] per process | `RLIMIT_CPU`, a backstop behind the engine's own timeout; an instance whose runtime gets near it is recycled after its invocation |
//! | core dumps | none | `RLIMIT_CORE` = 0 |
//! | network | off (loopback only) | a network namespace of its own; [`crate::FunctionSpec::network`] turns host network on |

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use nimbus_sandbox::SandboxConfig;

use crate::EngineError;

/// Python instances started ahead of need ([`EngineConfig::python_spares`]).
pub const DEFAULT_PYTHON_SPARES: u32 = 2;
/// Node.js instances started ahead of need ([`EngineConfig::node_spares`]).
pub const DEFAULT_NODE_SPARES: u32 = 1;

/// How long an idle instance is kept: 10 minutes.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10 * 60);
/// How long an instance stays idle before it is frozen ([`EngineConfig::freeze_after`]).
pub const DEFAULT_FREEZE_AFTER: Duration = Duration::from_millis(50);
/// Per-invocation log cap: 1 MiB.
pub const DEFAULT_LOG_LIMIT_BYTES: usize = 1024 * 1024;
/// Instances per function: 8.
pub const DEFAULT_CONCURRENCY: u32 = 8;
/// Node-wide memory budget, the sum of `memory_mb` of live instances: 4096 MB.
pub const DEFAULT_MEMORY_BUDGET_MB: u64 = 4096;
/// How long a new instance may take to start and load its code: 65 s, SCF's default
/// `InitTimeout`. The engine does not use it itself; it is the value callers put into
/// [`crate::FunctionSpec::init_timeout`] when a function has none of its own.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(65);
/// Size of each instance's private `/tmp`: 64 MiB.
pub const DEFAULT_TMP_BYTES: u64 = 64 * 1024 * 1024;
/// Processes and threads one instance may run: 64 (see the table in the module header).
pub const DEFAULT_MAX_PROCESSES: u64 = 64;
/// Open files per process: 1024.
pub const DEFAULT_MAX_OPEN_FILES: u64 = 1024;
/// What the CPU-time backstop allows beyond a function's init timeout and timeout: 10 minutes.
/// `RLIMIT_CPU` counts a process's whole life, so a warm instance uses it up over many
/// invocations; the engine recycles it before it gets there.
pub const CPU_BACKSTOP_MARGIN: Duration = Duration::from_secs(10 * 60);

/// Settings of one engine. Build it with [`EngineConfig::new`], then adjust fields.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The real Python interpreter (see [`resolve_python`]), not a launcher shim.
    pub python: PathBuf,
    /// The real Node.js binary (see [`resolve_node`]). Default `None`: Node.js functions then
    /// fail to start (status 445) with a message saying the runtime is not available.
    pub node: Option<PathBuf>,
    /// A directory the engine writes its runtime shims into.
    pub runtime_dir: PathBuf,
    /// Idle instance lifetime. Default [`DEFAULT_KEEP_ALIVE`].
    pub keep_alive: Duration,
    /// How long an instance stays idle before every process of it is frozen (cgroup v2
    /// freezer) until its next invocation, so that what an invocation left running uses no
    /// CPU in between, as on SCF. `None` never freezes; hosts without cgroup v2 cannot.
    /// Default [`DEFAULT_FREEZE_AFTER`].
    pub freeze_after: Option<Duration>,
    /// Per-invocation log cap in bytes, framing lines included. Default
    /// [`DEFAULT_LOG_LIMIT_BYTES`].
    pub log_limit_bytes: usize,
    /// Most instances one function may have at a time, node-wide. Default
    /// [`DEFAULT_CONCURRENCY`].
    pub default_concurrency: u32,
    /// Most memory, in MB, that live instances (idle or running) may add up to, counting each
    /// at its function's `memory_mb`. A cold start that would exceed it first stops the least
    /// recently used idle instances of any function; if that is not enough, the invocation is
    /// refused with status 432. Default [`DEFAULT_MEMORY_BUDGET_MB`].
    pub memory_budget_mb: u64,
    /// `tencentcloud_appid` shown to handlers (context and `TENCENTCLOUD_APPID`). Default empty.
    pub app_id: String,
    /// `tencentcloud_uin` shown to handlers (context and `TENCENTCLOUD_UIN`). Default empty.
    pub uin: String,
    /// How instances are isolated: `sandbox.isolation` is [`nimbus_sandbox::Isolation::Sandbox`]
    /// by default (namespaces, a private root, a uid per function, seccomp, rlimits), or
    /// [`nimbus_sandbox::Isolation::None`] for hosts without namespaces. Also the uid range
    /// functions run as and whether cgroups are used. Default [`SandboxConfig::default`].
    pub sandbox: SandboxConfig,
    /// Size of each instance's private `/tmp` in bytes, also its largest file. Default
    /// [`DEFAULT_TMP_BYTES`].
    pub tmp_bytes: u64,
    /// Processes and threads one instance may run. Default [`DEFAULT_MAX_PROCESSES`].
    pub max_processes: u64,
    /// Open files per process. Default [`DEFAULT_MAX_OPEN_FILES`].
    pub max_open_files: u64,
    /// Python instances kept started ahead of need, sandboxed only: a Python cold start
    /// takes one instead of starting an interpreter (see the engine's `spare.rs`). 0 turns
    /// them off. Default [`DEFAULT_PYTHON_SPARES`].
    pub python_spares: u32,
    /// Node.js instances kept started ahead of need, sandboxed only, for functions of 128 MB
    /// (V8's heap limit is fixed when it starts). 0 turns them off. Default
    /// [`DEFAULT_NODE_SPARES`].
    pub node_spares: u32,
    /// Python instances (spares, and cold starts that find none ready) are forked from one
    /// pre-initialised interpreter (a zygote, see the engine's `zygote.rs`) where instances
    /// have a cgroup, so that they share its memory. Default true.
    pub python_zygote: bool,
}

impl EngineConfig {
    /// A configuration with every default filled in.
    pub fn new(python: impl Into<PathBuf>, runtime_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            python: python.into(),
            node: None,
            runtime_dir: runtime_dir.into(),
            keep_alive: DEFAULT_KEEP_ALIVE,
            freeze_after: Some(DEFAULT_FREEZE_AFTER),
            log_limit_bytes: DEFAULT_LOG_LIMIT_BYTES,
            default_concurrency: DEFAULT_CONCURRENCY,
            memory_budget_mb: DEFAULT_MEMORY_BUDGET_MB,
            app_id: String::new(),
            uin: String::new(),
            sandbox: SandboxConfig::default(),
            tmp_bytes: DEFAULT_TMP_BYTES,
            max_processes: DEFAULT_MAX_PROCESSES,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            python_spares: DEFAULT_PYTHON_SPARES,
            node_spares: DEFAULT_NODE_SPARES,
            python_zygote: true,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), EngineError> {
        if self.default_concurrency == 0 {
            return Err(EngineError::InvalidConfig {
                reason: "default_concurrency must be at least 1",
            });
        }
        if self.memory_budget_mb == 0 {
            return Err(EngineError::InvalidConfig {
                reason: "memory_budget_mb must be at least 1",
            });
        }
        if self.tmp_bytes < 1024 * 1024 {
            return Err(EngineError::InvalidConfig {
                reason: "tmp_bytes must be at least 1 MiB",
            });
        }
        let ids = &self.sandbox;
        if ids.first_id < 1000
            || ids.id_count == 0
            || ids.first_id.checked_add(ids.id_count).is_none()
        {
            return Err(EngineError::InvalidConfig {
                reason: "the uid range (sandbox first_id and id_count; [engine] first_uid and \
                         uid_count of nimbus serve) must start at 1000 or above, clear of \
                         system users, hold at least one uid and end within 32 bits",
            });
        }
        if self.max_processes == 0 || self.max_open_files < 16 {
            return Err(EngineError::InvalidConfig {
                reason: "max_processes must be at least 1 and max_open_files at least 16",
            });
        }
        Ok(())
    }
}

/// Finds the interpreter that `candidate` really runs.
///
/// Runs `<candidate> -c "import sys; print(sys.executable)"` once. Launchers such as pyenv's
/// shims cost more than 100 ms per start; starting the binary they resolve to avoids that on
/// every cold start.
///
/// # Errors
///
/// [`EngineError::RunPython`] if the candidate cannot be started, [`EngineError::PythonFailed`]
/// if it exits unsuccessfully, [`EngineError::PythonPath`] if it prints no absolute path.
pub async fn resolve_python(candidate: &str) -> Result<PathBuf, EngineError> {
    let args = ["-c", "import sys; print(sys.executable)"];
    probe(candidate, &args)
        .await
        .map_err(|failure| match failure {
            ProbeFailure::Run(source) => EngineError::RunPython {
                candidate: candidate.to_owned(),
                source,
            },
            ProbeFailure::Exit(status) => EngineError::PythonFailed {
                candidate: candidate.to_owned(),
                status,
            },
            ProbeFailure::NoPath => EngineError::PythonPath {
                candidate: candidate.to_owned(),
            },
        })
}

/// Finds the binary that the Node.js `candidate` (e.g. `node`, looked up on `PATH`) really
/// runs.
///
/// Runs `<candidate> -p process.execPath` once, so that version managers' launchers are not
/// started again at every cold start.
///
/// # Errors
///
/// [`EngineError::RunNode`] if the candidate cannot be started, [`EngineError::NodeFailed`]
/// if it exits unsuccessfully, [`EngineError::NodePath`] if it prints no absolute path.
pub async fn resolve_node(candidate: &str) -> Result<PathBuf, EngineError> {
    let args = ["-p", "process.execPath"];
    probe(candidate, &args)
        .await
        .map_err(|failure| match failure {
            ProbeFailure::Run(source) => EngineError::RunNode {
                candidate: candidate.to_owned(),
                source,
            },
            ProbeFailure::Exit(status) => EngineError::NodeFailed {
                candidate: candidate.to_owned(),
                status,
            },
            ProbeFailure::NoPath => EngineError::NodePath {
                candidate: candidate.to_owned(),
            },
        })
}

enum ProbeFailure {
    Run(std::io::Error),
    Exit(std::process::ExitStatus),
    NoPath,
}

/// Runs `candidate args...` and reads the absolute path it prints. The engine's environment is
/// passed on: launchers such as pyenv's shims need it to find their interpreter.
async fn probe(candidate: &str, args: &[&str]) -> Result<PathBuf, ProbeFailure> {
    let output = tokio::process::Command::new(candidate)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(ProbeFailure::Run)?;
    if !output.status.success() {
        return Err(ProbeFailure::Exit(output.status));
    }
    let printed = String::from_utf8_lossy(&output.stdout);
    let path = PathBuf::from(printed.trim());
    if !path.is_absolute() {
        return Err(ProbeFailure::NoPath);
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_fills_documented_defaults() {
        let config = EngineConfig::new("/usr/bin/python3", "/tmp/rt");
        assert_eq!(config.keep_alive, Duration::from_secs(600));
        assert_eq!(config.log_limit_bytes, 1024 * 1024);
        assert_eq!(config.default_concurrency, 8);
        assert_eq!(config.memory_budget_mb, 4096);
        assert_eq!(config.node, None);
        assert_eq!(DEFAULT_INIT_TIMEOUT, Duration::from_secs(65));
        assert!(config.app_id.is_empty() && config.uin.is_empty());
        assert_eq!(config.sandbox, SandboxConfig::default());
        assert_eq!(config.sandbox.isolation, nimbus_sandbox::Isolation::Sandbox);
        assert_eq!(config.tmp_bytes, 64 << 20);
        assert_eq!((config.max_processes, config.max_open_files), (64, 1024));
        assert_eq!(CPU_BACKSTOP_MARGIN, Duration::from_secs(600));
    }

    #[test]
    fn rejects_tiny_tmp_and_process_limits() {
        let mut config = EngineConfig::new("/usr/bin/python3", "/tmp/rt");
        config.tmp_bytes = 4096;
        assert!(config.validate().is_err());
        let mut config = EngineConfig::new("/usr/bin/python3", "/tmp/rt");
        config.max_processes = 0;
        assert!(config.validate().is_err());
    }

    #[test]
    fn rejects_a_uid_range_among_system_users_or_past_32_bits() {
        for (first_id, id_count) in [
            (0, 100),
            (999, 100),
            (2_000_000_000, 0),
            (u32::MAX - 10, 20),
        ] {
            let mut config = EngineConfig::new("/usr/bin/python3", "/tmp/rt");
            (config.sandbox.first_id, config.sandbox.id_count) = (first_id, id_count);
            assert!(
                matches!(config.validate(), Err(EngineError::InvalidConfig { .. })),
                "{first_id} + {id_count}"
            );
        }
        let mut config = EngineConfig::new("/usr/bin/python3", "/tmp/rt");
        (config.sandbox.first_id, config.sandbox.id_count) = (3_000_000_000, 500);
        assert!(config.validate().is_ok());
    }

    #[test]
    fn rejects_zero_concurrency() {
        let mut config = EngineConfig::new("/usr/bin/python3", "/tmp/rt");
        config.default_concurrency = 0;
        assert!(matches!(
            config.validate(),
            Err(EngineError::InvalidConfig { .. })
        ));
    }

    #[test]
    fn rejects_zero_memory_budget() {
        let mut config = EngineConfig::new("/usr/bin/python3", "/tmp/rt");
        config.memory_budget_mb = 0;
        assert!(matches!(
            config.validate(),
            Err(EngineError::InvalidConfig { .. })
        ));
    }

    #[tokio::test]
    async fn resolve_node_fails_for_missing_candidate() {
        let err = resolve_node("/nonexistent/node-nimbus").await;
        assert!(matches!(err, Err(EngineError::RunNode { .. })));
    }

    #[tokio::test]
    async fn resolve_python_fails_for_missing_candidate() {
        let err = resolve_python("/nonexistent/python-nimbus").await;
        assert!(matches!(err, Err(EngineError::RunPython { .. })));
    }
}
