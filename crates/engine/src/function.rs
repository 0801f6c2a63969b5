//! What a caller hands the engine (a function and an invocation request) and what it gets back.

use std::path::PathBuf;
use std::time::Duration;

/// The language runtime that hosts a function's handler.
///
/// Each runtime has a shim (see `runtime.rs`) that the engine writes into its runtime directory
/// and starts as the instance's first process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Runtime {
    /// CPython 3, through `runtimes/python/bootstrap.py`.
    Python3,
    /// Node.js, through `runtimes/nodejs/bootstrap.js`; needs [`crate::EngineConfig::node`].
    Nodejs,
    /// SCF's custom runtime (`CustomRuntime`): the code package's own executable `bootstrap`,
    /// started as is, which talks to a per-instance HTTP runtime API instead of a shim.
    Custom,
}

impl Runtime {
    /// The runtime's family name as SCF spells it; the shims refine it to the exact minor
    /// version (`Python3.11`, `Nodejs20.20`) inside the instance.
    pub fn scf_name(self) -> &'static str {
        match self {
            Runtime::Python3 => "Python3",
            Runtime::Nodejs => "Nodejs",
            Runtime::Custom => "CustomRuntime",
        }
    }

    /// The runtime that serves an SCF runtime name such as `Python3.9` or `Nodejs18.15`: any
    /// `Python3.<minor>` or `Nodejs<major>.<minor>` maps to the host's interpreter of that
    /// family; `CustomRuntime` maps to [`Runtime::Custom`]. `None` for every other name
    /// (`Python2.7`, `Go1`, ...).
    pub fn from_scf_name(name: &str) -> Option<Runtime> {
        if name == "CustomRuntime" {
            return Some(Runtime::Custom);
        }
        let version_of = |prefix: &str| {
            let version = name.strip_prefix(prefix)?;
            let (major, minor) = version.split_once('.')?;
            let numeric = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
            (numeric(major) && numeric(minor)).then_some(major.to_owned())
        };
        if version_of("Python").is_some_and(|major| major == "3") {
            return Some(Runtime::Python3);
        }
        version_of("Nodejs").map(|_| Runtime::Nodejs)
    }
}

/// One deployed function, as far as the engine needs to know it.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// SCF namespace, e.g. `default`.
    pub namespace: String,
    /// Function name.
    pub name: String,
    /// Qualifier being run: `$LATEST` or a published version number.
    pub version: String,
    /// Bumps on every code or configuration change; idle instances of another revision of the
    /// same version are stopped, never reused.
    pub revision: u64,
    /// Language runtime.
    pub runtime: Runtime,
    /// SCF's name of the runtime the function was created with (`Python3.10`), which
    /// `SCF_RUNTIME` reports; empty: the shim reports the host interpreter's version.
    pub runtime_name: String,
    /// Entry point, `file.function` (e.g. `index.main_handler`); free-form for
    /// [`Runtime::Custom`], whose `bootstrap` reads it from `_HANDLER`.
    pub handler: String,
    /// Unpacked code; the handler's file sits at its root. Sandboxed, it is mounted read-only
    /// at `/var/user`, which becomes the instance's working directory; it must be readable and
    /// searchable by others (mode `o+rX`), since the function runs as a uid of its own.
    pub code_dir: PathBuf,
    /// Configured memory: the most one instance may use (see `memory.rs`), reported to the
    /// handler and in the log's `Report` line, and what the instance counts against the node's
    /// memory budget.
    pub memory_mb: u32,
    /// Execution time limit of one invocation.
    pub timeout: Duration,
    /// How long a new instance may take to start and load the handler's code (SCF's
    /// `InitTimeout`, default [`crate::DEFAULT_INIT_TIMEOUT`]).
    pub init_timeout: Duration,
    /// The user's environment variables.
    pub environment: Vec<(String, String)>,
    /// Region name, e.g. `ap-guangzhou`.
    pub region: String,
    /// Whether the function's instances share the host's network (egress, and the host's
    /// loopback with it). `false`, the default callers should use, gives each instance a
    /// network namespace of its own with only a loopback interface. Ignored with
    /// `Isolation::None`.
    pub network: bool,
    /// SCF's `ReservedConcurrencyMem`, MB: at most `reserved / memory_mb` live instances, 0
    /// refusing every invocation. `None`: the node-wide
    /// [`crate::EngineConfig::default_concurrency`]. It caps; it does not hold memory back from
    /// other functions.
    pub reserved_concurrency_mb: Option<u32>,
}

/// One invocation to run.
#[derive(Debug, Clone)]
pub struct InvocationRequest {
    /// SCF request id; appears in the log and the handler's context.
    pub request_id: String,
    /// The event as JSON text, already validated by the caller.
    pub event: String,
}

/// Everything the engine knows about one finished invocation.
#[derive(Debug, Clone)]
pub struct InvocationOutcome {
    /// The request id it ran under.
    pub request_id: String,
    /// Return value or SCF error.
    pub result: InvocationResult,
    /// Complete log of this invocation, framed by `START`/`END`/`Report` lines and capped at
    /// [`crate::EngineConfig::log_limit_bytes`].
    pub log: String,
    /// From handing the event over to receiving the result (zero if the invocation never
    /// reached an instance).
    pub duration: Duration,
    /// Peak resident memory during this invocation: the instance's main process's high-water
    /// mark, or the watchdog's largest sample of its whole process tree if that is larger.
    pub mem_usage_bytes: u64,
    /// Whether a new instance was started for it.
    pub cold_start: bool,
}

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvocationResult {
    /// The handler returned.
    Success {
        /// JSON text of the return value.
        ret_msg: String,
    },
    /// The invocation failed, by the user's code or the platform.
    Failed {
        /// SCF function status code (430 user exception, 432 concurrency or memory budget,
        /// 433 timeout, 434 memory limit, ...).
        status_code: u16,
        /// SCF's JSON error object as text.
        err_msg: String,
    },
}

impl InvocationResult {
    /// The SCF function status code: 200 on success.
    pub fn status_code(&self) -> u16 {
        match self {
            InvocationResult::Success { .. } => 200,
            InvocationResult::Failed { status_code, .. } => *status_code,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_scf_runtime_names_to_families() {
        for name in ["Python3.6", "Python3.9", "Python3.10", "Python3.12"] {
            assert_eq!(
                Runtime::from_scf_name(name),
                Some(Runtime::Python3),
                "{name}"
            );
        }
        for name in ["Nodejs6.10", "Nodejs16.13", "Nodejs18.15", "Nodejs20.20"] {
            assert_eq!(
                Runtime::from_scf_name(name),
                Some(Runtime::Nodejs),
                "{name}"
            );
        }
        assert_eq!(
            Runtime::from_scf_name("CustomRuntime"),
            Some(Runtime::Custom)
        );
        assert_eq!(Runtime::Custom.scf_name(), "CustomRuntime");
        for name in [
            "customruntime",
            "Python2.7",
            "Python3",
            "Nodejs",
            "Nodejs18.",
            "Go1",
            "Php7",
            "",
        ] {
            assert_eq!(Runtime::from_scf_name(name), None, "{name}");
        }
    }
}
