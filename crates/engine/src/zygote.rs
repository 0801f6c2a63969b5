//! The Python zygote: one interpreter with the shim loaded that forks Python instances into
//! sandboxes the engine has built, so that their memory is its memory until they write to it:
//! the spares (`spare.rs`), and the instances of cold starts that find no spare ready
//! (`Engine::start_forked`). Each is forked with the base environment of a spare and waits for
//! its function's environment on its control socket, so no function's environment (which may
//! hold secrets) ever enters the zygote, whose memory every later fork starts with.
//!
//! ```text
//!  engine                                     zygote (python3 -u -S bootstrap.py, as the
//!    │ Plan::adopting → spawn_shell:          server's user, outside any sandbox, dies with
//!    │   waiter + init build the sandbox       the spawner thread, _NIMBUS_ZYGOTE=1)
//!    │ Plan::adoption: init's namespaces,
//!    │   uid, rlimits, seccomp programs
//!    ├── one SOCK_SEQPACKET message: JSON + [control, log, 6 namespaces, cgroup.procs] ──►
//!    │                                          setns(pid), fork, setns back
//!    │                                           └► spare: cgroup, setns × 5, limits,
//!    ◄── {"pid": host pid of the spare} ──────────     uid, seccomp, then the shim as usual
//!    └ control socket ◄── {"spare": true}
//! ```
//!
//! The fork then goes on as a spare the engine started itself: it is claimed (or, for a cold
//! start, handed its function at once) the same way, and killed the same way (the waiter,
//! whose death takes init's PID namespace with it).
//! Used only where the instance has a cgroup: without one, the sandbox's processes are found by
//! walking the waiter's process tree, of which a joined runtime is not part.
//!
//! # Limitations
//!
//! - Every instance forked from one zygote has its address-space layout and its string hash
//!   secret (`PYTHONHASHSEED`): a function can learn them from its own process, and with them
//!   craft colliding dictionary keys for another function's instance or skip the guessing in
//!   an exploit of it. A zygote started per function would not share them; it would also
//!   share less memory.
//! - The zygote runs with the server's privileges, outside the sandbox: it must, to enter
//!   the sandboxes it forks into. It runs only the shim's code, never a function's. Its
//!   memory, which each fork starts with a copy of, holds what earlier requests left there:
//!   base environments, whose only per-instance value is a log marker token, of no use
//!   outside its own instance's log pipe.
//! - If the zygote fails, Python instances start their own interpreter for the rest of the
//!   engine's life.
//! - The interpreter has started before the function's environment arrives, as with a spare
//!   (see `spare.rs`): variables read only at start-up have no effect.

use std::collections::BTreeMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};

use nimbus_sandbox::{Adoption, JOIN_ORDER, Plan};
use nix::sys::socket::{
    ControlMessage, MsgFlags, SockFlag, SockType, sendmsg, setsockopt, socketpair, sockopt,
};
use nix::sys::time::TimeVal;
use serde::Deserialize;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::EngineError;
use crate::runtime::Launch;
use crate::sandbox::{Spawned, Spawner};

/// How long a fork request may take before the zygote is taken for broken.
const FORK_TIMEOUT_SECS: i64 = 10;
/// The variable that starts the shim as a zygote.
const ZYGOTE_VAR: &str = "_NIMBUS_ZYGOTE";
/// Variables of a spare's launch that are each fork's own, not the zygote's.
const PER_SPARE_VARS: [&str; 2] = ["_NIMBUS_SPARE", "_NIMBUS_LOG_TOKEN"];

/// A running zygote and the engine's end of its request socket.
#[derive(Debug)]
pub(crate) struct Zygote {
    /// Requests are answered in order, one at a time.
    socket: Arc<Mutex<OwnedFd>>,
    /// Killed by [`Zygote::stop`] or when the engine drops the zygote; it also exits at end
    /// of file on its socket.
    child: tokio::sync::Mutex<Child>,
    pid: Option<u32>,
}

#[derive(Deserialize)]
struct Answer {
    pid: Option<u32>,
    error: Option<String>,
}

impl Zygote {
    /// Starts the zygote as `launch` (a spare's) describes: its program, arguments and
    /// environment, but for the variables each fork gets of its own.
    pub(crate) async fn start(spawner: &Spawner, launch: &Launch) -> Result<Zygote, EngineError> {
        let (ours, theirs) = socketpair(
            nix::sys::socket::AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|errno| EngineError::SpawnInstance(errno.into()))?;
        setsockopt(
            &ours,
            sockopt::ReceiveTimeout,
            &TimeVal::new(FORK_TIMEOUT_SECS, 0),
        )
        .map_err(|errno| EngineError::SpawnInstance(errno.into()))?;
        let mut command = Command::new(&launch.program);
        command
            .args(&launch.args)
            .env_clear()
            .envs(
                launch
                    .env
                    .iter()
                    .filter(|(name, _)| !PER_SPARE_VARS.contains(&name.as_str())),
            )
            .env(ZYGOTE_VAR, "1")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            // What the zygote itself says (a failed request is answered, not printed) goes to
            // the server's standard error.
            .stderr(Stdio::inherit())
            .process_group(0);
        let child = spawner.spawn_unsandboxed(command).await?;
        Ok(Zygote {
            socket: Arc::new(Mutex::new(ours)),
            pid: child.id(),
            child: tokio::sync::Mutex::new(child),
        })
    }

    /// The zygote's pid, as it was started.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Kills the zygote and waits for it (the instances it forked live on in their sandboxes).
    pub(crate) async fn stop(&self) {
        let mut child = self.child.lock().await;
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Err(err) = child.kill().await {
            tracing::warn!(
                error = &err as &dyn std::error::Error,
                "cannot stop the Python zygote"
            );
        }
    }

    /// Builds the sandbox of the adopting `plan` and forks an instance into it, with
    /// `launch`'s environment (a spare's: see the module's documentation): the instance's
    /// process and channels, and the host pid of its runtime.
    pub(crate) async fn spawn(
        &self,
        spawner: &Spawner,
        launch: &Launch,
        plan: &Arc<Plan>,
    ) -> Result<(Spawned, u32), EngineError> {
        let shell = spawner.spawn_shell(plan).await?;
        let waiter = shell.id().ok_or(EngineError::InstanceExitedAtStart {
            output: String::new(),
        })?;
        let adoption = plan.adoption(waiter).map_err(EngineError::PrepareSandbox)?;
        let (control, child_control) =
            std::os::unix::net::UnixStream::pair().map_err(EngineError::SpawnInstance)?;
        let (log_reader, log_writer) = std::io::pipe().map_err(EngineError::SpawnInstance)?;
        let request = request(&adoption, &launch.env)?;
        let socket = Arc::clone(&self.socket);
        let pid = tokio::task::spawn_blocking(move || {
            let mut fds: Vec<OwnedFd> = vec![child_control.into(), log_writer.into()];
            fds.extend(adoption.namespaces.into_iter().map(|(_, fd)| fd));
            fds.extend(adoption.cgroup_procs);
            let socket = socket.lock().unwrap_or_else(PoisonError::into_inner);
            ask(socket.as_raw_fd(), &request, &fds)
        })
        .await
        .map_err(|err| EngineError::SpawnInstance(io::Error::other(err)))?
        .map_err(EngineError::SpawnInstance)?;
        Ok((Spawned::new(shell, control, log_reader)?, pid))
    }
}

/// The JSON half of a fork request (the shim's `_zygote` reads it).
fn request(adoption: &Adoption, env: &BTreeMap<String, String>) -> Result<Vec<u8>, EngineError> {
    debug_assert!(
        adoption
            .namespaces
            .iter()
            .map(|(name, _)| *name)
            .eq(JOIN_ORDER)
    );
    let filters: Vec<String> = adoption
        .filters
        .iter()
        .map(|program| hex(program))
        .collect();
    serde_json::to_vec(&json!({
        "env": env,
        "uid": adoption.uid,
        "gid": adoption.gid,
        "workdir": adoption.workdir,
        "rlimits": adoption.rlimits,
        "filters": filters,
        "cgroup": adoption.cgroup_procs.is_some(),
    }))
    .map_err(|err| EngineError::SpawnInstance(io::Error::other(err)))
}

/// Sends one request with its descriptors and reads the answer: the fork's host pid.
fn ask(socket: RawFd, request: &[u8], fds: &[OwnedFd]) -> io::Result<u32> {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let rights = [ControlMessage::ScmRights(&raw)];
    sendmsg::<()>(
        socket,
        &[IoSlice::new(request)],
        &rights,
        MsgFlags::empty(),
        None,
    )?;
    let mut buffer = [0u8; 4096];
    let read = nix::sys::socket::recv(socket, &mut buffer, MsgFlags::empty())?;
    if read == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the zygote exited",
        ));
    }
    let answer: Answer = serde_json::from_slice(&buffer[..read]).map_err(io::Error::other)?;
    match (answer.pid, answer.error) {
        (Some(pid), _) => Ok(pid),
        (None, error) => Err(io::Error::other(format!(
            "the zygote could not fork an instance: {}",
            error.unwrap_or_default()
        ))),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut text, byte| {
            let _ = write!(text, "{byte:02x}");
            text
        })
}
