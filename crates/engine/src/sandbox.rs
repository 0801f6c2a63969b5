//! Starting and killing instance processes.
//!
//! Every instance is started from one dedicated, long-lived thread (the spawner), in its own
//! process group, with a clean environment, the control socket as stdin and one pipe as both
//! stdout and stderr, and inside its sandbox: the child first asks to die with the engine, then
//! enters the instance's [`Plan`] (see `isolation.rs` and `nimbus-sandbox`), which also sets
//! the rlimits and the working directory:
//!
//! ```text
//! invoke task --Job{Command}--> spawner thread --fork--> waiter (pgid = its pid)
//!             <--Child---------                            └ init (pid 1 of a PID namespace)
//!                                                             └ shim, exec'ed as the
//!                                                               function's uid
//!                                                          fd 0: control socket
//!                                                          fd 1, 2: log pipe
//! ```
//!
//! With `Isolation::None` there is no waiter or init: the spawned process is the shim. For a
//! Python instance forked by the zygote (`zygote.rs`), `spawn_shell` starts the waiter and
//! init only, and the zygote's fork joins them from outside.
//!
//! Children must never outlive the engine:
//! - `kill_on_drop` kills an instance whose handle is dropped;
//! - the child asks the kernel for `SIGKILL` when its parent dies (`PR_SET_PDEATHSIG`). The
//!   kernel takes "parent" to mean the *thread* that forked, and tokio's blocking-pool threads
//!   exit when idle; forking from the spawner thread, which lives as long as the engine, keeps
//!   the signal from firing early. Sandboxed, init has the same signal on the waiter, and when
//!   init dies the kernel kills everything in its PID namespace;
//! - the shim exits when its control socket reaches end of file, which happens when the engine
//!   drops the instance or the engine process dies, whatever the thread.
//!
//! Killing targets the whole process group: sandboxed, that is the waiter, whose death takes
//! the whole PID namespace with it, including processes that left the group with `setsid`.
//!
//! # Limitations
//!
//! With `Isolation::None`, a process that calls `setsid` leaves the group and escapes the kill
//! (unless the instance has a cgroup, which the plan empties when it is dropped), and
//! parent-death signals reach the shim only, not the processes it starts.

use std::io::{self, PipeWriter};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::mpsc;

use std::sync::Arc;

use nimbus_sandbox::Plan;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::net::UnixStream;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::EngineError;
use crate::runtime::Launch;

/// A started instance process and the engine's ends of its channels.
#[derive(Debug)]
pub(crate) struct Spawned {
    pub(crate) child: Child,
    pub(crate) control: UnixStream,
    pub(crate) log: pipe::Receiver,
}

struct Job {
    command: Command,
    reply: oneshot::Sender<io::Result<Child>>,
}

/// Handle to the spawner thread; the thread ends when this is dropped.
#[derive(Debug)]
pub(crate) struct Spawner {
    jobs: mpsc::Sender<Job>,
}

impl Spawner {
    /// Starts the spawner thread, which spawns in the context of `runtime`.
    pub(crate) fn start(runtime: Handle) -> Result<Spawner, EngineError> {
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name("nimbus-spawner".to_owned())
            .spawn(move || serve(&runtime, &queue))
            .map_err(EngineError::StartSpawner)?;
        Ok(Spawner { jobs })
    }

    /// Starts one instance process as `launch` describes, inside the sandbox `plan` prepared.
    pub(crate) async fn spawn(
        &self,
        launch: &Launch,
        plan: &Arc<Plan>,
    ) -> Result<Spawned, EngineError> {
        let (control, child_control) =
            std::os::unix::net::UnixStream::pair().map_err(EngineError::SpawnInstance)?;
        let (log_reader, log_writer) = std::io::pipe().map_err(EngineError::SpawnInstance)?;
        let command = command(launch, plan, child_control.into(), log_writer)
            .map_err(EngineError::SpawnInstance)?;
        let child = self.run(command).await?;
        Spawned::new(child, control, log_reader)
    }

    /// Starts the sandbox of an adopting `plan` (`Plan::adopting`): its waiter and init,
    /// which build the sandbox and start no runtime; one joins it from outside (see
    /// `zygote.rs`). Returns once the sandbox is built.
    pub(crate) async fn spawn_shell(&self, plan: &Arc<Plan>) -> Result<Child, EngineError> {
        // Never exec'ed: init of an adopting plan reaps until it is killed.
        let mut command = Command::new("/");
        command
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        Plan::enter_before_exec_tied_to_spawner(plan, command.as_std_mut());
        self.run(command).await
    }

    /// Starts a process outside any sandbox that dies with the spawner thread (the zygote).
    pub(crate) async fn spawn_unsandboxed(
        &self,
        mut command: Command,
    ) -> Result<Child, EngineError> {
        command.kill_on_drop(true);
        Plan::tie_to_spawner(command.as_std_mut());
        self.run(command).await
    }

    async fn run(&self, command: Command) -> Result<Child, EngineError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { command, reply })
            .map_err(|_| EngineError::SpawnerGone)?;
        answer
            .await
            .map_err(|_| EngineError::SpawnerGone)?
            .map_err(EngineError::SpawnInstance)
    }
}

impl Spawned {
    /// An instance process and the engine's ends of its control socket and log pipe.
    pub(crate) fn new(
        child: Child,
        control: std::os::unix::net::UnixStream,
        log: std::io::PipeReader,
    ) -> Result<Spawned, EngineError> {
        control
            .set_nonblocking(true)
            .map_err(EngineError::SpawnInstance)?;
        let control = UnixStream::from_std(control).map_err(EngineError::SpawnInstance)?;
        let log = pipe::Receiver::from_owned_fd(OwnedFd::from(log))
            .map_err(EngineError::SpawnInstance)?;
        Ok(Spawned {
            child,
            control,
            log,
        })
    }
}

fn serve(runtime: &Handle, queue: &mpsc::Receiver<Job>) {
    let _context = runtime.enter();
    while let Ok(Job { mut command, reply }) = queue.recv() {
        let spawned = command.spawn();
        // Dropping the command closes this process's copies of the child's socket and pipe
        // ends, so end of file on them means the instance is gone.
        drop(command);
        // If the requester gave up, the child comes back and `kill_on_drop` ends it.
        let _ = reply.send(spawned);
    }
}

fn command(
    launch: &Launch,
    plan: &Arc<Plan>,
    control: OwnedFd,
    log: PipeWriter,
) -> io::Result<Command> {
    let log_for_stderr = log.try_clone()?;
    // No `current_dir`: std would change directory before the sandbox exists; the plan enters
    // the code directory itself, wherever the function sees it.
    let mut command = Command::new(&launch.program);
    command
        .args(&launch.args)
        .env_clear()
        .envs(&launch.env)
        .stdin(Stdio::from(control))
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_for_stderr))
        .process_group(0)
        .kill_on_drop(true);
    // The child dies with the spawner thread, and enters the sandbox before exec.
    Plan::enter_before_exec_tied_to_spawner(plan, command.as_std_mut());
    Ok(command)
}

/// Sends `SIGKILL` to the process group led by `pid`.
///
/// Call this only while the leader has not been reaped: an unreaped leader keeps its pid (and so
/// the group id) from being reused.
pub(crate) fn kill_group(pid: u32) {
    let Ok(raw) = i32::try_from(pid) else {
        return;
    };
    match killpg(Pid::from_raw(raw), Signal::SIGKILL) {
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(errno) => tracing::warn!(pid, %errno, "cannot kill instance process group"),
    }
}
