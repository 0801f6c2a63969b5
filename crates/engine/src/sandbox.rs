//! Starting and killing instance processes.
//!
//! Every instance is started from one dedicated, long-lived thread (the spawner), in its own
//! process group, with a clean environment, `RLIMIT_DATA` set (see `memory.rs`), the control
//! socket as stdin and one pipe as both stdout and stderr:
//!
//! ```text
//! invoke task --Job{Command}--> spawner thread --fork/exec--> shim (pgid = its pid)
//!             <--Child---------                               fd 0: control socket
//!                                                             fd 1, 2: log pipe
//! ```
//!
//! Children must never outlive the engine:
//! - `kill_on_drop` kills an instance whose handle is dropped;
//! - the child asks the kernel for `SIGKILL` when its parent dies (`PR_SET_PDEATHSIG`). The
//!   kernel takes "parent" to mean the *thread* that forked, and tokio's blocking-pool threads
//!   exit when idle; forking from the spawner thread, which lives as long as the engine, keeps
//!   the signal from firing early;
//! - the shim exits when its control socket reaches end of file, which happens when the engine
//!   drops the instance or the engine process dies, whatever the thread.
//!
//! Killing targets the whole process group, so processes the handler started die with it.
//!
//! # Limitations
//!
//! No isolation yet: instances run as the engine's user, in its namespaces, without cgroup or
//! seccomp, and with no rlimit but `RLIMIT_DATA`. A process that calls `setsid` leaves the
//! group and escapes the kill (a cgroup's `cgroup.kill` would not miss it). Parent-death
//! signals reach the shim only, not the processes it starts.

use std::io::{self, PipeWriter};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::sync::mpsc;

use nix::errno::Errno;
use nix::sys::resource::{Resource, setrlimit};
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

    /// Starts one instance process as `launch` describes.
    pub(crate) async fn spawn(&self, launch: &Launch) -> Result<Spawned, EngineError> {
        let (control, child_control) =
            std::os::unix::net::UnixStream::pair().map_err(EngineError::SpawnInstance)?;
        let (log_reader, log_writer) = std::io::pipe().map_err(EngineError::SpawnInstance)?;
        let command = command(launch, child_control.into(), log_writer)
            .map_err(EngineError::SpawnInstance)?;

        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { command, reply })
            .map_err(|_| EngineError::SpawnerGone)?;
        let child = answer
            .await
            .map_err(|_| EngineError::SpawnerGone)?
            .map_err(EngineError::SpawnInstance)?;

        control
            .set_nonblocking(true)
            .map_err(EngineError::SpawnInstance)?;
        let control = UnixStream::from_std(control).map_err(EngineError::SpawnInstance)?;
        let log = pipe::Receiver::from_owned_fd(OwnedFd::from(log_reader))
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

fn command(launch: &Launch, control: OwnedFd, log: PipeWriter) -> io::Result<Command> {
    let log_for_stderr = log.try_clone()?;
    let mut command = Command::new(&launch.program);
    command
        .args(&launch.args)
        .current_dir(&launch.cwd)
        .env_clear()
        .envs(&launch.env)
        .stdin(Stdio::from(control))
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_for_stderr))
        .process_group(0)
        .kill_on_drop(true);
    prepare_child(&mut command, launch.data_limit_bytes);
    Ok(command)
}

/// Makes the child limit its data segment to `data_limit_bytes`, ask for `SIGKILL` when the
/// spawning thread dies, and refuse to start if the engine already died before it could ask.
#[expect(
    unsafe_code,
    reason = "pre_exec is unsafe; the hook only makes async-signal-safe system calls"
)]
fn prepare_child(command: &mut Command, data_limit_bytes: u64) {
    // Everything the hook needs is computed here, before the fork.
    let parent = nix::unistd::getpid();
    let data_limit: nix::libc::rlim_t = data_limit_bytes;
    let hook = move || -> io::Result<()> {
        setrlimit(Resource::RLIMIT_DATA, data_limit, data_limit)?;
        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
        if nix::unistd::getppid() != parent {
            return Err(io::Error::from(Errno::ESRCH));
        }
        Ok(())
    };
    // SAFETY: the hook runs in the forked child before exec, where only async-signal-safe
    // functions may be called. It makes three raw system calls (`setrlimit` with a limit
    // struct built on the stack from a copied integer, `prctl(PR_SET_PDEATHSIG)` and
    // `getppid`), reads a copied `Pid`, and on failure builds an `io::Error` from a raw errno,
    // which does not allocate. It takes no locks and touches no shared state.
    unsafe {
        command.pre_exec(hook);
    }
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
