//! The crate's error type.

use std::io;
use std::path::PathBuf;

/// A sandbox could not be prepared, inspected or torn down.
///
/// Failures inside the forked child ([`Plan::enter`](crate::Plan::enter)) are `io::Error`s
/// instead: that is what `pre_exec` hooks return, and the spawn reports them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// Isolation was requested but this host cannot provide it.
    #[error("the sandbox is unavailable on this host: {reason}")]
    Unavailable {
        /// What is missing, for the operator.
        reason: String,
    },
    /// The instance's uid or gid is outside the configured range.
    #[error("uid {uid} or gid {gid} is outside the sandbox id range {first}..{end}")]
    IdOutsideRange {
        /// The requested uid.
        uid: u32,
        /// The requested gid.
        gid: u32,
        /// First id of the range.
        first: u32,
        /// One past the last id of the range.
        end: u64,
    },
    /// A path of the instance cannot be mounted where it was asked to be.
    #[error("path {path} cannot be mounted in the sandbox: {reason}")]
    InvalidPath {
        /// The offending host path.
        path: PathBuf,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A host path could not be inspected while building a plan.
    #[error("cannot inspect {path}")]
    InspectPath {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The seccomp filter could not be compiled.
    #[error("cannot compile the seccomp filter")]
    CompileFilter(#[source] seccompiler::BackendError),
    /// A cgroup directory could not be created.
    #[error("cannot create cgroup {path}")]
    CreateCgroup {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A cgroup control file could not be written.
    #[error("cannot write cgroup file {path}")]
    WriteCgroup {
        /// The control file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A cgroup or `/proc` file could not be read or understood.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A cgroup directory could not be removed.
    #[error("cannot remove cgroup {path}")]
    RemoveCgroup {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// [`Plan::adoption`](crate::Plan::adoption) on a plan that starts its own runtime.
    #[error("the sandbox starts its own runtime: nothing can join it")]
    NotAdopting,
    /// The probe child could not be started or waited for.
    #[error("cannot run the sandbox probe")]
    Probe(#[source] io::Error),
}
