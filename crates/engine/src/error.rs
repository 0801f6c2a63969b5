//! The engine's error type.
//!
//! Only [`crate::Engine::new`], [`crate::resolve_python`] and [`crate::resolve_node`] return
//! these to a caller. Everything
//! that goes wrong during an invocation ends as an [`crate::InvocationResult::Failed`]; the
//! variants below that describe instance failures exist so that the one place which handles such
//! a failure can log it with its cause.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;

/// Everything that can fail inside the engine, named after the step that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The Python candidate could not be started at all.
    #[error("cannot run python candidate `{candidate}`")]
    RunPython {
        /// The command that was tried, e.g. `python3`.
        candidate: String,
        /// Why it could not be run.
        source: io::Error,
    },
    /// The Python candidate ran but did not succeed.
    #[error("python candidate `{candidate}` exited with {status}")]
    PythonFailed {
        /// The command that was tried.
        candidate: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// The Python candidate did not print an absolute interpreter path.
    #[error("python candidate `{candidate}` printed no absolute interpreter path")]
    PythonPath {
        /// The command that was tried.
        candidate: String,
    },
    /// The Node.js candidate could not be started at all.
    #[error("cannot run node candidate `{candidate}`")]
    RunNode {
        /// The command that was tried, e.g. `node`.
        candidate: String,
        /// Why it could not be run.
        source: io::Error,
    },
    /// The Node.js candidate ran but did not succeed.
    #[error("node candidate `{candidate}` exited with {status}")]
    NodeFailed {
        /// The command that was tried.
        candidate: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// The Node.js candidate did not print an absolute binary path.
    #[error("node candidate `{candidate}` printed no absolute binary path")]
    NodePath {
        /// The command that was tried.
        candidate: String,
    },
    /// A configuration value is out of range.
    #[error("invalid engine configuration: {reason}")]
    InvalidConfig {
        /// What is wrong.
        reason: &'static str,
    },
    /// The engine was created outside a tokio runtime.
    #[error("the engine must be created inside a tokio runtime")]
    NoRuntime,
    /// The sandbox could not be set up (with `Isolation::Sandbox`: the host lacks namespaces
    /// or seccomp, or the server is not root; the source names what is missing).
    #[error("cannot set up the function sandbox")]
    SetUpSandbox(#[source] nimbus_sandbox::SandboxError),
    /// One instance's sandbox could not be prepared (its paths, ids or cgroup).
    #[error("cannot prepare the sandbox of an instance")]
    PrepareSandbox(#[source] nimbus_sandbox::SandboxError),
    /// Every uid of the sandbox's range belongs to a function with live instances.
    #[error("no free uid left in the sandbox's range of {count} ids")]
    NoFreeUid {
        /// Size of the range.
        count: u32,
    },
    /// A function's code directory cannot be read by the uid the function runs as.
    #[error("code directory {path} is not readable and searchable by others (mode {mode:o})")]
    CodeNotReadable {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The runtime directory could not be created.
    #[error("cannot create runtime directory {path}")]
    CreateRuntimeDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A runtime shim could not be written.
    #[error("cannot write runtime shim {path}")]
    WriteShim {
        /// The shim's path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The thread that starts instances could not be started.
    #[error("cannot start the spawner thread")]
    StartSpawner(#[source] io::Error),
    /// The thread that starts instances is gone.
    #[error("the spawner thread is gone")]
    SpawnerGone,
    /// An instance process could not be started.
    #[error("cannot start an instance process")]
    SpawnInstance(#[source] io::Error),
    /// An instance exited before it said it was ready.
    #[error("instance exited before it was ready")]
    InstanceExitedAtStart {
        /// What the instance printed before it exited (for the invocation's log).
        output: String,
    },
    /// An instance did not say it was ready in time.
    #[error("instance was not ready within {timeout:?}")]
    InstanceInitTimedOut {
        /// The init timeout that passed.
        timeout: std::time::Duration,
        /// What the instance printed meanwhile (for the invocation's log).
        output: String,
    },
    /// An instance used more memory than its function may while starting.
    #[error("instance exceeded its memory limit while starting")]
    InstanceMemoryExceededAtStart {
        /// What the instance printed meanwhile (for the invocation's log).
        output: String,
    },
    /// A custom runtime's program reported through `/runtime/init/error` that it cannot start.
    #[error("the runtime reported an initialization error")]
    InstanceInitFailed {
        /// The error text it posted.
        message: String,
        /// What the instance printed meanwhile (for the invocation's log).
        output: String,
    },
    /// A custom runtime's code package has no executable `bootstrap` at its root.
    #[error("no executable bootstrap at {path}")]
    BootstrapMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The listener of a custom runtime's runtime API could not be opened.
    #[error("cannot open the runtime API listener")]
    OpenRuntimeApi(#[source] io::Error),
    /// The function's runtime cannot be served by this engine (e.g. no Node.js binary is
    /// configured).
    #[error("runtime {runtime} is not available on this node")]
    RuntimeUnavailable {
        /// The runtime's SCF family name.
        runtime: &'static str,
    },
    /// Reading from or writing to an instance's control channel failed.
    #[error("control channel to the instance failed")]
    Control(#[source] io::Error),
    /// An instance sent a frame larger than the engine accepts.
    #[error("instance sent a frame of {0} bytes")]
    FrameTooLarge(usize),
    /// An instance sent a frame that is not the expected JSON.
    #[error("instance sent a malformed frame")]
    MalformedFrame(#[source] serde_json::Error),
    /// An invocation arrived after [`crate::Engine::shutdown`].
    #[error("the engine is shut down")]
    ShutDown,
}
