//! What the sandbox adds to a process start: `/bin/true` spawned through a fresh sandbox plan,
//! exactly as the engine starts an instance (plan, spawn into new namespaces with a private
//! root, wait, tear the plan down), to set beside the plain fork+exec baseline.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use nimbus_sandbox::{
    DEFAULT_FIRST_ID, DEFAULT_ID_COUNT, InstanceSpec, Limits, Network, Plan, Sandbox,
    SandboxConfig, SandboxError,
};

use crate::load::Failures;

/// The id the measured instances run as: the last of the default range, which the engine
/// hands out last.
const BENCH_ID: u32 = DEFAULT_FIRST_ID + DEFAULT_ID_COUNT - 1;

/// Times `per_round` sandboxed starts of `/bin/true` in each of `rounds` rounds, in
/// milliseconds from the plan's creation to its teardown.
///
/// # Errors
/// When this host cannot sandbox (not root, no namespaces: the reason says which) or the
/// code directory cannot be made.
pub fn spawn_true(rounds: usize, per_round: usize) -> anyhow::Result<(Vec<Vec<f64>>, Failures)> {
    let sandbox = match Sandbox::new(SandboxConfig::default()) {
        Ok(sandbox) => sandbox,
        Err(SandboxError::Unavailable { reason }) => {
            anyhow::bail!("the sandbox is unavailable here: {reason}")
        }
        Err(error) => return Err(error.into()),
    };
    let code = tempfile::Builder::new()
        .prefix("nimbus-bench-sandbox-")
        .tempdir()?;
    std::fs::set_permissions(
        code.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let spec = InstanceSpec {
        uid: BENCH_ID,
        gid: BENCH_ID,
        code_dir: code.path().to_owned(),
        runtime_paths: Vec::new(),
        tmp_bytes: nimbus_sandbox::DEFAULT_TMP_BYTES,
        network: Network::Off,
        memory_mb: 128,
        limits: Limits::default(),
    };
    let mut samples = vec![Vec::with_capacity(per_round); rounds];
    let mut failures = Failures::default();
    for round in &mut samples {
        for _ in 0..per_round {
            let started = Instant::now();
            match start_once(&sandbox, &spec) {
                Ok(()) => round.push(started.elapsed().as_secs_f64() * 1000.0),
                Err(error) => failures.add(format!("{error:#}")),
            }
        }
    }
    Ok((samples, failures))
}

fn start_once(sandbox: &Sandbox, spec: &InstanceSpec) -> anyhow::Result<()> {
    let plan = Arc::new(Plan::new(sandbox, spec)?);
    let mut command = Command::new(Path::new("/bin/true"));
    command
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    Plan::enter_before_exec(&plan, &mut command);
    let status = command.status()?;
    drop(command);
    // The plan's teardown (the instance cgroup, where there is one) is part of the cost.
    drop(plan);
    anyhow::ensure!(status.success(), "sandboxed /bin/true exited with {status}");
    Ok(())
}
