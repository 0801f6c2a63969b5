//! Engine configuration, its defaults, and finding the real Python and Node.js interpreters.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use crate::EngineError;

/// How long an idle instance is kept: 10 minutes.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(10 * 60);
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
}

impl EngineConfig {
    /// A configuration with every default filled in.
    pub fn new(python: impl Into<PathBuf>, runtime_dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            python: python.into(),
            node: None,
            runtime_dir: runtime_dir.into(),
            keep_alive: DEFAULT_KEEP_ALIVE,
            log_limit_bytes: DEFAULT_LOG_LIMIT_BYTES,
            default_concurrency: DEFAULT_CONCURRENCY,
            memory_budget_mb: DEFAULT_MEMORY_BUDGET_MB,
            app_id: String::new(),
            uin: String::new(),
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
