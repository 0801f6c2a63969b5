//! The Nimbus execution engine: turns "invoke function F with event E" into an outcome (return
//! value or SCF error, the invocation's log, its duration and peak memory), and owns the pools
//! of instances that run functions.
//!
//! It knows nothing about HTTP or the database: the API layer hands it a [`FunctionSpec`] and an
//! [`InvocationRequest`] and gets an [`InvocationOutcome`] back.
//!
//! ```text
//! Engine ── pools (per namespace/function) ── Instance ── sandbox waiter ── init ── shim
//!                                                │   (nimbus-sandbox: namespaces, /var/user,
//!                                                │    uid per function, rlimits, seccomp)
//!                                                │  control: socketpair on the shim's stdin,
//!                                                │           length-prefixed JSON frames
//!                                                ├─ log: one pipe as the shim's stdout+stderr
//!                                                └─ memory: cgroup memory.max, or RLIMIT_DATA
//!                                                   + a watchdog on resident memory
//!
//!  custom runtime: Instance ── the package's own bootstrap process
//!                     └─ RuntimeApi: HTTP on a loopback port (init/ready, invocation/next, ...)
//! ```
//!
//! Module map: `engine` (admission, leases, outcomes, reaper), `pool` (bookkeeping, the memory
//! budget), `instance` (one process, one invocation at a time), `protocol` (frames), `log`
//! (cutting and framing logs), `memory` (limits, watchdog, per-invocation peak), `runtime`
//! (shims, environment, context), `runtime_api` (a custom runtime's HTTP API), `isolation`
//! (uids, runtime paths and limits of each instance's sandbox), `sandbox` (spawning and
//! killing; no `unsafe`: the sandbox crate holds all of it), `spare` (instances started ahead
//! of need), `zygote` (the interpreter Python instances are forked from), `scf` (status codes and
//! error objects).
//!
//! Isolation: by default ([`Isolation::Sandbox`], see [`EngineConfig::sandbox`]) every instance
//! runs in the sandbox of `nimbus-sandbox`: its own mount, PID, IPC, UTS and network
//! namespaces, a read-only root with the code at `/var/user` and a private `/tmp`, a uid of its
//! function's own, rlimits and a seccomp filter. [`Engine::new`] fails if the host cannot
//! provide it. [`Isolation::None`] runs instances as the engine's user in its namespaces, for
//! hosts without namespaces; the caller must warn about it.
//!
//! # Limitations
//!
//! - Python 3, Node.js (CommonJS handlers) and SCF's custom runtime exist; other languages run
//!   as custom runtimes. A custom runtime's API listens on the host's loopback, which an
//!   instance in a network namespace of its own cannot reach (see `runtime_api.rs`).
//! - The sandbox needs root (see `nimbus-sandbox`); custom runtimes get the host's network
//!   in it (see `isolation.rs`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod engine;
mod error;
mod function;
mod instance;
mod isolation;
mod log;
mod memory;
mod pool;
mod protocol;
mod runtime;
mod runtime_api;
mod sandbox;
mod scf;
mod spare;
mod zygote;

pub use config::{
    CPU_BACKSTOP_MARGIN, DEFAULT_CONCURRENCY, DEFAULT_FREEZE_AFTER, DEFAULT_INIT_TIMEOUT,
    DEFAULT_KEEP_ALIVE, DEFAULT_LOG_LIMIT_BYTES, DEFAULT_MAX_OPEN_FILES, DEFAULT_MAX_PROCESSES,
    DEFAULT_MEMORY_BUDGET_MB, DEFAULT_NODE_SPARES, DEFAULT_PYTHON_SPARES, DEFAULT_TMP_BYTES,
    EngineConfig, resolve_node, resolve_python,
};
pub use engine::Engine;
pub use error::EngineError;
pub use function::{FunctionSpec, InvocationOutcome, InvocationRequest, InvocationResult, Runtime};
pub use nimbus_sandbox::{
    CODE_ROOT, Capabilities, CgroupUse, DEFAULT_FIRST_ID, DEFAULT_ID_COUNT, Isolation,
    MemoryEnforcement, SandboxConfig, SandboxError,
};
