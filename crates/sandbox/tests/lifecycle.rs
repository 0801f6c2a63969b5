//! The life of an instance: probing, killing the whole tree, cgroups, memory limits and
//! accounting, runtimes starting inside, leaving nothing behind, and the cost of a spawn.
//!
//! Tests for a path this host lacks (cgroup memory limits where `memory` is not delegated)
//! print why they are skipped.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nimbus_sandbox::{
    CgroupUse, InstanceSpec, Isolation, MemoryEnforcement, MemoryStatus, Plan, Sandbox,
    SandboxConfig, SandboxError,
};

#[test]
fn probe_reports_what_works_here() {
    let capabilities = nimbus_sandbox::probe(&SandboxConfig::default()).expect("probe");
    eprintln!("capabilities: {capabilities}");
    if nix::unistd::geteuid().is_root() {
        assert!(capabilities.namespaces.is_available(), "{capabilities}");
        assert!(capabilities.seccomp.is_available(), "{capabilities}");
    } else {
        assert!(capabilities.missing().is_some());
    }
}

/// Reads the child's stdout until a line equal to `marker` (or end of file).
fn wait_for_line(reader: &mut impl BufRead, marker: &str) {
    let mut line = String::new();
    while reader.read_line(&mut line).expect("read child stdout") > 0 {
        if line.trim() == marker {
            return;
        }
        line.clear();
    }
    panic!("the child never printed {marker}");
}

fn session_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which ends at the last ')': state ppid pgrp session.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

#[test]
fn killing_the_spawned_process_kills_setsid_double_forks() {
    let Some(sandbox) = sandbox() else { return };
    let code = code_dir(&[]);
    let spec = spec(201, code.path());
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let script = "setsid sh -c '(sleep 1000 &) ; sleep 1000' & \
                  (sh -c 'sleep 1000 &' &) ; \
                  sleep 0.2; echo READY; sleep 1000";
    let mut command = command(&plan, Path::new("/bin/sh"), &["-c", script]);
    command.stderr(Stdio::null());
    let mut child = command.spawn().expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    wait_for_line(&mut stdout, "READY");

    let before = processes_of(spec.uid);
    let sessions: std::collections::BTreeSet<_> =
        before.iter().filter_map(|&p| session_of(p)).collect();
    assert!(before.len() >= 5, "expected the whole tree: {before:?}");
    assert!(
        sessions.len() >= 2,
        "no process escaped into its own session"
    );

    child.kill().expect("kill the spawned process");
    let status = child.wait().expect("reap");
    assert_no_process_of(spec.uid);
    assert!(!status.success());
    drop(plan);
}

#[test]
fn the_instance_exit_code_reaches_the_spawner() {
    let Some(sandbox) = sandbox() else { return };
    let code = code_dir(&[]);
    let out = sh(&sandbox, &spec(202, code.path()), "exit 7");
    assert_eq!(out.status.code(), Some(7));
    let out = sh(&sandbox, &spec(202, code.path()), "kill -9 $$");
    assert_eq!(out.status.code(), Some(128 + 9));
}

#[test]
fn runtime_pid_is_the_function_process() {
    let Some(sandbox) = sandbox() else { return };
    let code = code_dir(&[]);
    let spec = spec(203, code.path());
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let mut command = command(
        &plan,
        Path::new("/bin/sh"),
        &["-c", "echo READY; sleep 100"],
    );
    command.stderr(Stdio::null());
    let mut child = command.spawn().expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    wait_for_line(&mut stdout, "READY");

    let runtime = plan
        .runtime_pid(child.id())
        .expect("read /proc")
        .expect("a runtime process");
    let status = std::fs::read_to_string(format!("/proc/{runtime}/status")).expect("status");
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
    let nspid = status
        .lines()
        .find(|l| l.starts_with("NSpid:"))
        .expect("NSpid");
    child.kill().expect("kill");
    child.wait().expect("reap");
    drop(plan);

    assert!(uid_line.contains(&spec.uid.to_string()), "{uid_line}");
    assert!(
        nspid.ends_with("\t2"),
        "the runtime is not pid 2 inside: {nspid}"
    );
    assert_no_process_of(spec.uid);
}

#[test]
fn code_mounted_into_a_running_instance_appears_read_only_at_var_user() {
    let Some(sandbox) = sandbox() else { return };
    let placeholder = code_dir(&[]);
    let code = code_dir(&[("index.py", "LATE CODE")]);
    let host_var_user = Path::new(nimbus_sandbox::CODE_ROOT).exists();
    let mut spec = spec(214, placeholder.path());
    spec.memory_mb = 512;
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let script = "echo READY; i=0; while [ ! -e /var/user/index.py ] && [ $i -lt 200 ]; do \
                  sleep 0.05; i=$((i+1)); done; cd /var/user; echo CODE $(cat index.py); \
                  touch /var/user/new 2>/dev/null && echo WRITABLE || echo READ_ONLY";
    let mut command = command(&plan, Path::new("/bin/sh"), &["-c", script]);
    command.stderr(Stdio::null());
    let mut child = command.spawn().expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    wait_for_line(&mut stdout, "READY");
    let runtime = plan
        .runtime_pid(child.id())
        .expect("read /proc")
        .expect("a runtime process");
    let namespace = nimbus_sandbox::CodeNamespace::of(runtime).expect("mount namespace");
    nimbus_sandbox::mount_code(&namespace, code.path()).expect("mount the code");
    plan.lower_memory_limit(128).expect("lower the limit");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).expect("read");
    child.wait().expect("reap");
    drop(plan);

    assert!(rest.contains("CODE LATE CODE"), "{rest}");
    assert!(rest.contains("READ_ONLY"), "{rest}");
    assert!(!placeholder.path().join("index.py").exists());
    assert_eq!(Path::new(nimbus_sandbox::CODE_ROOT).exists(), host_var_user);
    // The server's own namespace is refused.
    assert!(nimbus_sandbox::CodeNamespace::of(std::process::id()).is_err());
    assert_no_process_of(spec.uid);
}

#[test]
fn cpu_limit_of_a_running_instance_is_lowered_from_outside() {
    let Some(sandbox) = sandbox() else { return };
    let code = code_dir(&[]);
    let spec = spec(215, code.path());
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let mut command = command(
        &plan,
        Path::new("/bin/sh"),
        &["-c", "echo READY; exec sleep 30"],
    );
    command.stderr(Stdio::null());
    let mut child = command.spawn().expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    wait_for_line(&mut stdout, "READY");
    let runtime = plan
        .runtime_pid(child.id())
        .expect("read /proc")
        .expect("a runtime process");

    // Another uid's process: without CAP_SYS_RESOURCE the change is made as that uid.
    let lowered = nimbus_sandbox::lower_cpu_limit(runtime, 40, 45);
    let limits = std::fs::read_to_string(format!("/proc/{runtime}/limits")).expect("limits");
    child.kill().expect("kill");
    child.wait().expect("reap");
    drop(plan);

    lowered.expect("lower the CPU limit");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max cpu time"))
        .expect("a CPU line");
    let values: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(values[3..5], ["40", "45"], "{line}");
    // Only the short-lived thread changed its ids; the process is still root.
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    assert!(
        status.lines().any(|line| line.starts_with("Uid:\t0\t0\t0")),
        "{status}"
    );
    assert_no_process_of(spec.uid);
}

#[test]
fn the_cgroup_tracks_and_kills_the_whole_instance() {
    let Some(sandbox) = sandbox() else { return };
    let Some(root) = sandbox.cgroup_dir().map(Path::to_owned) else {
        eprintln!("skipped: no cgroup v2 here: {}", sandbox.capabilities());
        return;
    };
    let code = code_dir(&[]);
    let spec = spec(204, code.path());
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let cgroup_dir = plan.cgroup().expect("an instance cgroup").path().to_owned();
    assert!(cgroup_dir.starts_with(&root));
    let script = "setsid sleep 1000 & sleep 1000 & echo READY; wait";
    let mut command = command(&plan, Path::new("/bin/sh"), &["-c", script]);
    command.stderr(Stdio::null());
    let mut child = command.spawn().expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    wait_for_line(&mut stdout, "READY");

    let cgroup = plan.cgroup().expect("cgroup");
    let members = cgroup.pids().expect("cgroup.procs");
    let function = processes_of(spec.uid);
    assert!(
        function.iter().all(|p| members.contains(p)),
        "{function:?} ⊄ {members:?}"
    );
    let runtime = plan
        .runtime_pid(child.id())
        .expect("/proc")
        .expect("runtime");
    assert!(
        members.contains(&runtime),
        "the runtime is not in the cgroup"
    );
    assert!(
        !members.contains(&child.id()),
        "the waiter should stay outside"
    );

    cgroup.kill().expect("cgroup.kill");
    let status = wait_until(&mut child, Duration::from_secs(5));
    assert!(!status.success());
    assert_no_process_of(spec.uid);

    // The command's pre_exec closure holds a reference to the plan too.
    drop(command);
    drop(plan);
    assert!(!cgroup_dir.exists(), "the instance cgroup was not removed");
    drop(sandbox);
    assert!(!root.exists(), "the server cgroup was not removed");
}

#[test]
fn watchdog_notices_memory_past_the_limit() {
    let Some(sandbox) = sandbox() else { return };
    if sandbox.memory_enforcement() != MemoryEnforcement::Watchdog {
        eprintln!("skipped: memory is limited by the cgroup here, not the watchdog");
        return;
    }
    let Some((python, prefix)) = python() else {
        eprintln!("skipped: no python3");
        return;
    };
    let code = code_dir(&[]);
    let mut spec = spec(205, code.path());
    spec.runtime_paths = vec![prefix];
    spec.memory_mb = 64;
    // Shared anonymous memory escapes RLIMIT_DATA: only the watchdog sees it.
    spec.limits.data_bytes = Some(64 << 20);
    let script = "import mmap, sys, time\n\
                  print('STARTED', flush=True)\n\
                  sys.stdin.readline() if False else time.sleep(0.3)\n\
                  m = mmap.mmap(-1, 160 << 20)\n\
                  for i in range(0, len(m), 4096):\n    m[i] = 1\n\
                  print('TOUCHED', flush=True)\n\
                  time.sleep(100)\n";
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    assert_eq!(plan.memory_enforcement(), MemoryEnforcement::Watchdog);
    let mut command = command(&plan, &python, &["-S", "-c", script]);
    command.stderr(Stdio::null());
    let mut child = command.spawn().expect("spawn");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
    wait_for_line(&mut stdout, "STARTED");
    let early = plan.check_memory(child.id()).expect("measure");

    let deadline = Instant::now() + Duration::from_secs(10);
    let verdict = loop {
        let status = plan.check_memory(child.id()).expect("measure");
        if matches!(status, MemoryStatus::Exceeded { .. }) || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().expect("kill");
    child.wait().expect("reap");
    drop(plan);

    assert!(
        matches!(early, MemoryStatus::Within { used_bytes } if used_bytes > 0),
        "{early:?}"
    );
    assert!(
        matches!(verdict, MemoryStatus::Exceeded { limit_bytes, used_bytes }
            if limit_bytes == 64 << 20 && used_bytes > limit_bytes),
        "{verdict:?}"
    );
    assert_no_process_of(spec.uid);
}

#[test]
fn cgroup_memory_limit_kills_the_instance() {
    let Some(sandbox) = sandbox() else { return };
    if sandbox.memory_enforcement() != MemoryEnforcement::Cgroup {
        eprintln!(
            "skipped: memory and pids are not delegated to this cgroup ({})",
            sandbox.capabilities()
        );
        return;
    }
    let Some((python, prefix)) = python() else {
        eprintln!("skipped: no python3");
        return;
    };
    let code = code_dir(&[]);
    let mut spec = spec(206, code.path());
    spec.runtime_paths = vec![prefix];
    spec.memory_mb = 64;
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let cgroup = plan.cgroup().expect("cgroup");
    let read = |file: &str| {
        std::fs::read_to_string(cgroup.path().join(file)).expect("read a control file")
    };
    assert_eq!(read("memory.max").trim(), (64u64 << 20).to_string());
    assert_eq!(read("pids.max").trim(), (spec.limits.nproc + 2).to_string());

    let script = "import mmap\nm = mmap.mmap(-1, 256 << 20)\n\
                  for i in range(0, len(m), 4096):\n    m[i] = 1\nprint('SURVIVED')\n";
    let out = run(command(&plan, &python, &["-S", "-c", script]));
    let verdict = plan.check_memory(0).expect("measure");
    let peak = cgroup.memory_peak().expect("memory.peak");
    drop(plan);

    assert!(!out.stdout.contains("SURVIVED"), "{out:?}");
    assert!(
        matches!(verdict, MemoryStatus::Exceeded { .. }),
        "{verdict:?}"
    );
    assert!(peak.unwrap_or(0) > 32 << 20, "{peak:?}");
    assert_no_process_of(spec.uid);
}

#[test]
fn python_starts_inside_as_the_function_user() {
    let Some(sandbox) = sandbox() else { return };
    let Some((python, prefix)) = python() else {
        eprintln!("skipped: no python3");
        return;
    };
    let code = code_dir(&[("handler.py", "def main():\n    return 'HANDLED'\n")]);
    let mut spec = spec(207, code.path());
    spec.runtime_paths = vec![prefix];
    let script = "import getpass, json, os, ssl, sys\n\
                  sys.path.insert(0, '/var/user')\n\
                  import handler\n\
                  print('RESULT', handler.main())\n\
                  print('USER', getpass.getuser(), os.getuid())\n\
                  print('ROOT', sorted(os.listdir('/root')))\n\
                  print('CWD', os.getcwd())\n";
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let out = run(command(&plan, &python, &["-u", "-c", script]));
    drop(plan);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(marked(&out.stdout, "RESULT "), ["HANDLED"]);
    assert_eq!(
        marked(&out.stdout, "USER "),
        [format!("function {}", spec.uid)]
    );
    assert_eq!(marked(&out.stdout, "ROOT "), ["['.pyenv']"]);
    assert_eq!(marked(&out.stdout, "CWD "), ["/var/user"]);
    assert_no_process_of(spec.uid);
}

#[test]
fn node_starts_inside() {
    let Some(sandbox) = sandbox() else { return };
    let Some(node) = node() else {
        eprintln!("skipped: no node");
        return;
    };
    let code = code_dir(&[("index.js", "exports.main = () => 'HANDLED';\n")]);
    let spec = spec(208, code.path());
    let script = "const os = require('os');\
                  console.log('RESULT', require('/var/user/index.js').main());\
                  console.log('USER', os.userInfo().username);\
                  require('https'); console.log('TLS loaded');";
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let out = run(command(&plan, &node, &["-e", script]));
    drop(plan);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(marked(&out.stdout, "RESULT "), ["HANDLED"]);
    assert_eq!(marked(&out.stdout, "USER "), ["function"]);
    assert_no_process_of(spec.uid);
}

#[test]
fn isolation_none_only_sets_limits_cgroup_and_directory() {
    let config = SandboxConfig {
        isolation: Isolation::None,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(config).expect("an unsandboxed sandbox always starts");
    let code = code_dir(&[]);
    let mut spec: InstanceSpec = spec(209, code.path());
    spec.limits.nofile = 77;
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    assert_eq!(
        plan.code_root(),
        code.path().canonicalize().expect("canonical")
    );
    let script =
        "echo CWD $(pwd); echo NOFILE $(ulimit -n); echo CGROUP $(grep '^0::' /proc/self/cgroup)";
    let out = run(command(&plan, Path::new("/bin/sh"), &["-c", script]));
    let cgroup = plan.cgroup().map(|c| c.path().to_owned());
    drop(plan);
    assert!(out.status.success(), "{out:?}");
    let canonical = code.path().canonicalize().expect("canonical");
    assert_eq!(
        marked(&out.stdout, "CWD "),
        [canonical.display().to_string()]
    );
    assert_eq!(marked(&out.stdout, "NOFILE "), ["77"]);
    if let Some(cgroup) = cgroup {
        let name = cgroup
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        assert!(
            marked(&out.stdout, "CGROUP ")[0].ends_with(&name),
            "{}",
            out.stdout
        );
    }
}

#[test]
fn ids_outside_the_range_are_refused() {
    let Some(sandbox) = sandbox() else { return };
    let code = code_dir(&[]);
    let mut spec = spec(210, code.path());
    spec.uid = 0;
    assert!(matches!(
        Plan::new(&sandbox, &spec),
        Err(SandboxError::IdOutsideRange { .. })
    ));
    spec.uid = 1000;
    assert!(matches!(
        Plan::new(&sandbox, &spec),
        Err(SandboxError::IdOutsideRange { .. })
    ));
}

#[test]
fn cgroups_can_be_turned_off() {
    let config = SandboxConfig {
        cgroup: CgroupUse::Off,
        ..SandboxConfig::default()
    };
    let sandbox = match Sandbox::new(config) {
        Ok(sandbox) => sandbox,
        Err(SandboxError::Unavailable { reason }) => {
            eprintln!("skipped: {reason}");
            return;
        }
        Err(err) => panic!("{err:?}"),
    };
    assert_eq!(sandbox.cgroup_dir(), None);
    let code = code_dir(&[]);
    let out = sh(&sandbox, &spec(211, code.path()), "echo OK");
    assert_eq!(out.stdout.trim(), "OK", "{out:?}");
}

fn mount_count() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .count()
}

#[test]
fn nothing_is_left_behind_on_the_host() {
    let Some(sandbox) = sandbox() else { return };
    let mounts_before = mount_count();
    let code = code_dir(&[]);
    let spec = spec(212, code.path());
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let cgroup = plan.cgroup().map(|c| c.path().to_owned());
    let out = run(command(
        &plan,
        Path::new("/bin/sh"),
        &["-c", "sleep 1000 & echo X > /tmp/x"],
    ));
    assert!(out.status.success(), "{out:?}");
    drop(plan);
    assert_no_process_of(spec.uid);
    assert_eq!(
        mount_count(),
        mounts_before,
        "mounts leaked into the host namespace"
    );
    if let Some(cgroup) = cgroup {
        assert!(!cgroup.exists(), "{} left behind", cgroup.display());
    }
    let staging = std::fs::read_dir("/tmp").expect("list /tmp");
    assert!(
        staging.flatten().all(|e| e.file_name() != ".oldroot"),
        "the staging directory was written to"
    );
}

/// Median and minimum of `samples`.
fn summary(mut samples: Vec<Duration>) -> String {
    samples.sort();
    format!(
        "median {:?} (min {:?})",
        samples[samples.len() / 2],
        samples[0]
    )
}

#[expect(unsafe_code, reason = "a no-op pre_exec hook, to time std's fork path")]
fn plain_fork_exec() -> std::process::Command {
    let mut command = std::process::Command::new("/bin/true");
    // SAFETY: the hook does nothing, which is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || Ok(()));
    }
    command
}

/// Prints (no assertion: speed goals belong to the benchmark suite) what a sandbox adds to
/// starting `/bin/true`, against both ways std starts a plain process: `posix_spawn`, and
/// `fork` + `exec` as any `pre_exec` hook (the engine's included) forces.
#[test]
fn spawn_cost_of_true_sandboxed_vs_plain() {
    let Some(sandbox) = sandbox() else { return };
    let code = code_dir(&[]);
    const RUNS: usize = 25;
    let mut posix_spawn = Vec::new();
    let mut fork_exec = Vec::new();
    let mut planning = Vec::new();
    let mut sandboxed = Vec::new();
    let mut with_network = Vec::new();
    let mut until_exec = Vec::new();
    for _ in 0..RUNS {
        let started = Instant::now();
        let status = std::process::Command::new("/bin/true")
            .status()
            .expect("plain");
        posix_spawn.push(started.elapsed());
        assert!(status.success());

        let mut plain = plain_fork_exec();
        let started = Instant::now();
        let status = plain.status().expect("plain with pre_exec");
        fork_exec.push(started.elapsed());
        assert!(status.success());

        for (network, samples) in [
            (nimbus_sandbox::Network::Off, &mut sandboxed),
            (nimbus_sandbox::Network::Host, &mut with_network),
        ] {
            let mut spec = spec(213, code.path());
            spec.network = network;
            let started = Instant::now();
            let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
            planning.push(started.elapsed());
            let mut sandboxed_true = command(&plan, Path::new("/bin/true"), &[]);
            sandboxed_true.stdout(Stdio::null()).stderr(Stdio::null());
            let started = Instant::now();
            let mut child = sandboxed_true.spawn().expect("sandboxed");
            until_exec.push(started.elapsed());
            let status = child.wait().expect("reap");
            samples.push(started.elapsed());
            assert!(status.success());
        }
    }
    eprintln!(
        "spawn-to-exit of /bin/true over {RUNS} runs:\n  plain posix_spawn   {}\n  \
         plain fork+exec     {}\n  sandboxed           {}\n  sandboxed, host net {}\n  \
         Plan::new           {}\n  spawn() returning (the runtime has exec'ed) {}",
        summary(posix_spawn),
        summary(fork_exec),
        summary(sandboxed),
        summary(with_network),
        summary(planning),
        summary(until_exec),
    );
    assert_no_process_of(test_id(213));
}

#[test]
fn an_adopting_sandbox_starts_no_runtime_and_hands_out_its_namespaces() {
    let Some(sandbox) = sandbox() else { return };
    let code = code_dir(&[]);
    let spec = spec(216, code.path());
    let own = Plan::new(&sandbox, &spec).expect("plan");
    assert!(!own.adopts());
    assert!(matches!(own.adoption(1), Err(SandboxError::NotAdopting)));
    drop(own);

    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan").adopting());
    assert!(plan.adopts());
    let mut command = command(&plan, Path::new("/nonexistent"), &[]);
    command.stdout(Stdio::null()).stderr(Stdio::null());
    // Returns once the sandbox is built, without exec'ing the program.
    let mut child = command.spawn().expect("spawn");
    let waiter = child.id();
    let adoption = plan.adoption(waiter).expect("adoption");
    let names: Vec<_> = adoption.namespaces.iter().map(|(name, _)| *name).collect();
    assert_eq!(names, nimbus_sandbox::JOIN_ORDER);
    let init = std::fs::read_to_string(format!("/proc/{waiter}/task/{waiter}/children"))
        .expect("children")
        .trim()
        .parse::<u32>()
        .expect("one child: init");
    for (name, fd) in &adoption.namespaces {
        use std::os::fd::AsRawFd;
        let ours = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let init_ns = std::fs::read_link(format!("/proc/{init}/ns/{name}"));
        assert_eq!(ours.expect("fd link"), init_ns.expect("ns link"), "{name}");
        let host_ns = std::fs::read_link(format!("/proc/self/ns/{name}")).expect("ns link");
        if *name != "cgroup" || plan.cgroup().is_some() {
            assert_ne!(
                std::fs::read_link(format!("/proc/{init}/ns/{name}")).expect("ns"),
                host_ns,
                "{name} is the sandbox's own"
            );
        }
    }
    assert_eq!((adoption.uid, adoption.gid), (spec.uid, spec.gid));
    assert_eq!(adoption.workdir, Path::new(nimbus_sandbox::CODE_ROOT));
    assert!(!adoption.filters.is_empty());
    assert!(
        adoption
            .filters
            .iter()
            .all(|f| !f.is_empty() && f.len() % 8 == 0)
    );
    assert_eq!(adoption.cgroup_procs.is_some(), plan.cgroup().is_some());
    // Nothing runs as the function's uid, and init waits until it is killed.
    assert!(processes_of(spec.uid).is_empty());
    std::thread::sleep(Duration::from_millis(100));
    assert!(child.try_wait().expect("try_wait").is_none(), "init ended");
    child.kill().expect("kill the waiter");
    child.wait().expect("reap");
    let init_gone = || {
        std::fs::read_to_string(format!("/proc/{init}/stat"))
            .map_or(true, |stat| stat.contains(") Z"))
    };
    let started = Instant::now();
    while !init_gone() && started.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(init_gone(), "init outlived its waiter");
    drop(adoption);
    drop(plan);
}
