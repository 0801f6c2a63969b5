//! Engine configuration, its defaults, and finding the real Python interpreter.

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

/// Settings of one engine. Build it with [`EngineConfig::new`], then adjust fields.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The real Python interpreter (see [`resolve_python`]), not a launcher shim.
    pub python: PathBuf,
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
            runtime_dir: runtime_dir.into(),
            keep_alive: DEFAULT_KEEP_ALIVE,
            log_limit_bytes: DEFAULT_LOG_LIMIT_BYTES,
            default_concurrency: DEFAULT_CONCURRENCY,
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
    let output = tokio::process::Command::new(candidate)
        .args(["-c", "import sys; print(sys.executable)"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| EngineError::RunPython {
            candidate: candidate.to_owned(),
            source,
        })?;
    if !output.status.success() {
        return Err(EngineError::PythonFailed {
            candidate: candidate.to_owned(),
            status: output.status,
        });
    }
    let printed = String::from_utf8_lossy(&output.stdout);
    let path = PathBuf::from(printed.trim());
    if !path.is_absolute() {
        return Err(EngineError::PythonPath {
            candidate: candidate.to_owned(),
        });
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

    #[tokio::test]
    async fn resolve_python_fails_for_missing_candidate() {
        let err = resolve_python("/nonexistent/python-nimbus").await;
        assert!(matches!(err, Err(EngineError::RunPython { .. })));
    }
}
