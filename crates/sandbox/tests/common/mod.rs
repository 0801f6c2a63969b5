//! Helpers shared by the sandbox's integration tests: a sandbox per test, instance specs,
//! spawning with `pre_exec(plan.enter)`, bounded waits, and checks that nothing is left.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nimbus_sandbox::{
    DEFAULT_FIRST_ID, InstanceSpec, Limits, Network, Plan, Sandbox, SandboxConfig, SandboxError,
};

/// How long any sandboxed command in the tests may run before it is killed.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A uid/gid of the test id range; `n` must be distinct per test.
pub fn test_id(n: u32) -> u32 {
    DEFAULT_FIRST_ID + 900 + n
}

/// A sandbox with the default configuration, or `None` (with the reason printed) where this
/// host cannot provide one (not root, no namespaces): the test is then skipped.
pub fn sandbox() -> Option<Sandbox> {
    match Sandbox::new(SandboxConfig::default()) {
        Ok(sandbox) => Some(sandbox),
        Err(SandboxError::Unavailable { reason }) => {
            eprintln!("skipped: the sandbox is unavailable here: {reason}");
            None
        }
        Err(err) => panic!("cannot create the sandbox: {err:?}"),
    }
}

/// A code directory readable by the function, holding `files`.
pub fn code_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temporary directory");
    set_mode(dir.path(), 0o755);
    for (name, contents) in files {
        std::fs::write(dir.path().join(name), contents).expect("write code file");
    }
    dir
}

pub fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A spec for function id `n` with small limits.
pub fn spec(n: u32, code: &Path) -> InstanceSpec {
    InstanceSpec {
        uid: test_id(n),
        gid: test_id(n),
        code_dir: code.to_owned(),
        runtime_paths: Vec::new(),
        tmp_bytes: 8 << 20,
        network: Network::Off,
        memory_mb: 256,
        limits: Limits {
            nproc: 64,
            ..Limits::default()
        },
    }
}

/// The real Python interpreter (not the pyenv shim) and its prefix, to bind read-only.
pub fn python() -> Option<(PathBuf, PathBuf)> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import sys; print(sys.executable); print(sys.base_prefix)",
        ])
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    let mut lines = text.lines();
    let executable = PathBuf::from(lines.next()?);
    let prefix = PathBuf::from(lines.next()?);
    executable.is_file().then_some((executable, prefix))
}

/// Node.js, if installed.
pub fn node() -> Option<PathBuf> {
    ["/usr/bin/node", "/usr/local/bin/node"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// A command that enters `plan` before exec, with a clean environment and piped output.
pub fn command(plan: &Arc<Plan>, program: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", "/tmp")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    enter_before_exec(&mut command, plan);
    command
}

pub fn enter_before_exec(command: &mut Command, plan: &Arc<Plan>) {
    Plan::enter_before_exec(plan, command);
}

/// What a finished command left.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to completion (killing it at [`DEADLINE`]).
pub fn run(mut command: Command) -> Finished {
    let child = command.spawn().expect("spawn sandboxed command");
    finish(child)
}

/// Waits for `child` (killing it at [`DEADLINE`]) and collects its output.
pub fn finish(mut child: Child) -> Finished {
    let mut stdout_pipe = child.stdout.take().expect("piped stdout");
    let mut stderr_pipe = child.stderr.take().expect("piped stderr");
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout_pipe.read_to_string(&mut text);
        text
    });
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let status = wait_until(&mut child, DEADLINE);
    Finished {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Waits for `child`, killing it once `limit` has passed.
pub fn wait_until(child: &mut Child, limit: Duration) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("wait after kill");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs a shell script in a fresh instance of `spec`.
pub fn sh(sandbox: &Sandbox, spec: &InstanceSpec, script: &str) -> Finished {
    let plan = Arc::new(Plan::new(sandbox, spec).expect("plan"));
    let finished = run(command(&plan, Path::new("/bin/sh"), &["-c", script]));
    drop(plan);
    assert_no_process_of(spec.uid);
    finished
}

/// Host pids of the processes running as `uid`.
pub fn processes_of(uid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with("Uid:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(uid)
            })
        })
        .collect()
}

/// Waits (up to two seconds) for every process of `uid` to be gone, and fails if one stays.
pub fn assert_no_process_of(uid: u32) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let left = processes_of(uid);
        if left.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes of uid {uid} survived: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Lines of `text` that start with `marker`, without the marker.
pub fn marked<'a>(text: &'a str, marker: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix(marker))
        .collect()
}
