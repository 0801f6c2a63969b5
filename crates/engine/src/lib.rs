//! The Nimbus execution engine: turns "invoke function F with event E" into an outcome (return
//! value or SCF error, the invocation's log, its duration and peak memory), and owns the pools
//! of instances that run functions.
//!
//! It knows nothing about HTTP or the database: the API layer hands it a [`FunctionSpec`] and an
//! [`InvocationRequest`] and gets an [`InvocationOutcome`] back.
//!
//! ```text
//! Engine ── pools (per namespace/function) ── Instance ── shim process (runtimes/python/...,
//!                                                │        runtimes/nodejs/...)
//!                                                │  control: socketpair on the shim's stdin,
//!                                                │           length-prefixed JSON frames
//!                                                ├─ log: one pipe as the shim's stdout+stderr
//!                                                └─ memory: RLIMIT_DATA + a watchdog on /proc
//! ```
//!
//! Module map: `engine` (admission, leases, outcomes, reaper), `pool` (bookkeeping, the memory
//! budget), `instance` (one process, one invocation at a time), `protocol` (frames), `log`
//! (cutting and framing logs), `memory` (limits, watchdog, per-invocation peak), `runtime`
//! (shims, environment, context), `sandbox` (spawning and killing; the only `unsafe`), `scf`
//! (status codes and error objects).
//!
//! # Limitations
//!
//! - Python 3 and Node.js (CommonJS handlers) exist; custom runtimes are to be added as new
//!   [`Runtime`] variants with their own shim and launch plan in `runtime.rs`.
//! - Instances are plain child processes: no namespaces, cgroups or seccomp yet (see
//!   `sandbox.rs`); memory is limited by `RLIMIT_DATA` and a watchdog, not a cgroup (see
//!   `memory.rs`).

#![warn(missing_docs)]

mod config;
mod engine;
mod error;
mod function;
mod instance;
mod log;
mod memory;
mod pool;
mod protocol;
mod runtime;
mod sandbox;
mod scf;

pub use config::{
    DEFAULT_CONCURRENCY, DEFAULT_INIT_TIMEOUT, DEFAULT_KEEP_ALIVE, DEFAULT_LOG_LIMIT_BYTES,
    DEFAULT_MEMORY_BUDGET_MB, EngineConfig, resolve_node, resolve_python,
};
pub use engine::Engine;
pub use error::EngineError;
pub use function::{FunctionSpec, InvocationOutcome, InvocationRequest, InvocationResult, Runtime};
