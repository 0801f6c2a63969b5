//! Hostile functions try each escape from inside a real sandbox; every attempt must fail inside
//! the function, and nothing of the instance may be left afterwards.
//!
//! Skipped (with the reason printed) where the host cannot provide a sandbox.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use nimbus_sandbox::{NetNamespace, Network, Plan};

#[test]
fn host_files_outside_the_code_dir_are_invisible() {
    let Some(sandbox) = sandbox() else { return };
    // World-readable on purpose: only the mount namespace keeps them out of reach.
    let platform = code_dir(&[("nimbus.db", "DATABASE"), ("credentials", "SECRET")]);
    let other_function = code_dir(&[("index.py", "OTHER FUNCTION")]);
    let code = code_dir(&[("index.py", "MY CODE")]);
    let targets = [
        platform.path().join("nimbus.db"),
        platform.path().join("credentials"),
        other_function.path().join("index.py"),
        "/etc/shadow".into(),
        "/root/.bashrc".into(),
        "/root/.profile".into(),
        "/proc/1/environ".into(),
    ];
    let mut script = String::new();
    for target in &targets {
        let target = target.display();
        script.push_str(&format!(
            "if cat {target} >/dev/null 2>&1; then echo LEAK {target}; else echo DENIED {target}; fi\n"
        ));
    }
    script.push_str("echo ROOT_DIR $(ls -A /root 2>&1 | wc -l)\n");
    script.push_str("echo HOME_DIR $(ls -A /home 2>/dev/null | wc -l)\n");
    script.push_str("echo CODE $(cat /var/user/index.py)\n");

    let out = sh(&sandbox, &spec(101, code.path()), &script);
    assert!(out.status.success(), "{out:?}");
    assert!(marked(&out.stdout, "LEAK ").is_empty(), "{}", out.stdout);
    assert_eq!(marked(&out.stdout, "DENIED ").len(), targets.len());
    // `ls /root` fails: one line of error, no entries.
    assert_eq!(marked(&out.stdout, "ROOT_DIR "), ["1"], "{}", out.stdout);
    assert_eq!(marked(&out.stdout, "HOME_DIR "), ["0"], "{}", out.stdout);
    assert_eq!(marked(&out.stdout, "CODE "), ["MY CODE"]);
}

#[test]
fn only_the_instance_processes_are_visible() {
    let Some(sandbox) = sandbox() else { return };
    let code = code_dir(&[]);
    let script = "echo SELF $$; for p in /proc/[0-9]*; do echo PID ${p#/proc/}; done";
    let out = sh(&sandbox, &spec(102, code.path()), script);
    assert!(out.status.success(), "{out:?}");
    let pids: Vec<u32> = marked(&out.stdout, "PID ")
        .iter()
        .map(|p| p.parse().expect("numeric pid"))
        .collect();
    // The shell is pid 2 (init, pid 1, runs as root and is hidden by hidepid=2).
    assert_eq!(marked(&out.stdout, "SELF "), ["2"]);
    assert!(pids.contains(&2), "{pids:?}");
    assert!(!pids.contains(&1), "init is visible: {pids:?}");
    assert!(
        pids.iter().all(|&p| p < 10),
        "foreign pids visible: {pids:?}"
    );
}

#[test]
fn host_processes_cannot_be_signalled() {
    let Some(sandbox) = sandbox() else { return };
    let code = code_dir(&[]);
    let spec = spec(103, code.path());
    // A host process of the very uid the function runs as: the same uid is not enough.
    let mut same_uid = Command::new("/bin/sleep")
        .arg("30")
        .uid(spec.uid)
        .gid(spec.gid)
        .spawn()
        .expect("spawn sleep");
    let server = std::process::id();
    let victim = same_uid.id();
    let script = format!(
        "kill -9 {server} 2>/dev/null; echo SERVER $?\n\
         kill -9 {victim} 2>/dev/null; echo SAME_UID $?\n\
         kill -9 1 2>/dev/null; echo INIT $?\n"
    );
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let out = run(command(&plan, Path::new("/bin/sh"), &["-c", &script]));
    let survived = same_uid.try_wait().expect("try_wait").is_none();
    let _ = same_uid.kill();
    let _ = same_uid.wait();
    drop(plan);

    assert!(out.status.success(), "{out:?}");
    assert_ne!(marked(&out.stdout, "SERVER "), ["0"], "{}", out.stdout);
    assert_ne!(marked(&out.stdout, "SAME_UID "), ["0"], "{}", out.stdout);
    assert_ne!(marked(&out.stdout, "INIT "), ["0"], "{}", out.stdout);
    assert!(survived, "the host process of the same uid was killed");
    assert_no_process_of(spec.uid);
}

#[test]
fn writes_outside_tmp_fail() {
    let Some(sandbox) = sandbox() else { return };
    let code = code_dir(&[("index.py", "print(1)")]);
    let spec = spec(104, code.path());
    // The function owns its code: only the read-only mount stops the writes.
    chown(code.path(), Some(spec.uid), Some(spec.gid)).expect("chown code dir");
    chown(code.path().join("index.py"), Some(spec.uid), Some(spec.gid)).expect("chown file");
    let script = "for p in /x /usr/x /etc/x /etc/passwd /var/x /var/user/x /var/user/index.py \
                  /dev/x /proc/x; do \
                    if (echo data > $p) 2>/dev/null; then echo WROTE $p; else echo REFUSED $p; fi; \
                  done; \
                  mkdir /var/user/d 2>&1; \
                  echo data > /tmp/ok && echo TMP $(cat /tmp/ok); \
                  echo data > /dev/null && echo DEVICES $(head -c 4 /dev/urandom | wc -c)";
    let out = sh(&sandbox, &spec, script);
    assert!(out.status.success(), "{out:?}");
    assert!(marked(&out.stdout, "WROTE ").is_empty(), "{}", out.stdout);
    assert_eq!(marked(&out.stdout, "REFUSED ").len(), 9);
    assert!(
        out.stdout.contains("Read-only file system"),
        "{}",
        out.stdout
    );
    assert_eq!(marked(&out.stdout, "TMP "), ["data"]);
    assert_eq!(marked(&out.stdout, "DEVICES "), ["4"], "{out:?}");
    let host_file = std::fs::read_to_string(code.path().join("index.py")).expect("read");
    assert_eq!(host_file, "print(1)");
}

#[test]
fn tmp_fills_up_at_its_bound() {
    let Some(sandbox) = sandbox() else { return };
    let code = code_dir(&[]);
    let mut spec = spec(105, code.path());
    spec.tmp_bytes = 1 << 20;
    let script = "dd if=/dev/zero of=/tmp/fill bs=4096 count=1024 2>&1; echo RC $?; \
                  echo SIZE $(wc -c < /tmp/fill)";
    let out = sh(&sandbox, &spec, script);
    assert!(
        out.stdout.contains("No space left on device"),
        "{}",
        out.stdout
    );
    assert_ne!(marked(&out.stdout, "RC "), ["0"]);
    let size: u64 = marked(&out.stdout, "SIZE ")[0].parse().expect("size");
    assert!(size <= 1 << 20, "wrote {size} bytes into a 1 MiB /tmp");
}

#[test]
fn fork_bomb_is_contained_and_dies_with_the_instance() {
    let Some(sandbox) = sandbox() else { return };
    let code = code_dir(&[]);
    let mut spec = spec(106, code.path());
    spec.limits.nproc = 32;
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    // An inner shell forks as fast as it can, never waiting: without a limit this would take
    // the host's process table; with RLIMIT_NPROC the forks start failing at the limit. A
    // non-interactive shell exits on its first failed fork, and the outer shell then becomes
    // a plain `sleep` without forking: if it exited instead, the instance (and with it every
    // process of the bomb) would end before anyone could count them.
    let mut bomb = command(
        &plan,
        Path::new("/bin/sh"),
        &[
            "-c",
            "sh -c 'i=0; while [ $i -lt 500 ]; do sleep 100 & i=$((i+1)); done'; exec sleep 100",
        ],
    );
    bomb.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = bomb.spawn().expect("spawn the bomb");

    let started = Instant::now();
    let mut most = 0;
    let mut seen_by_plan = 0;
    // Watch for at least a second, and on a loaded machine until the bomb has clearly taken
    // off (bounded at ten seconds).
    while started.elapsed() < Duration::from_secs(1)
        || (started.elapsed() < Duration::from_secs(10) && (most <= 4 || seen_by_plan <= 4))
    {
        most = most.max(processes_of(spec.uid).len());
        let pids = plan
            .function_pids(child.id())
            .expect("the function's processes");
        seen_by_plan = seen_by_plan.max(pids.len());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The host still forks.
    let host = Command::new("/bin/true")
        .status()
        .expect("host can still fork");
    child.kill().expect("kill the instance");
    child.wait().expect("reap the instance");
    drop(plan);

    assert!(host.success());
    assert!(most > 4, "the bomb never took off ({most} processes)");
    assert!(
        seen_by_plan > 4,
        "the plan saw only {seen_by_plan} processes"
    );
    assert!(most <= 32, "{most} processes despite RLIMIT_NPROC = 32");
    assert_no_process_of(spec.uid);
}

#[test]
fn python_gets_memory_error_past_rlimit_data() {
    let Some(sandbox) = sandbox() else { return };
    let Some((python, prefix)) = python() else {
        eprintln!("skipped: no python3");
        return;
    };
    let code = code_dir(&[]);
    let mut spec = spec(107, code.path());
    spec.runtime_paths = vec![prefix];
    spec.limits.data_bytes = Some(256 << 20);
    let script = "try:\n    b = bytearray(1 << 30)\n    print('ALLOCATED')\n\
                  except MemoryError:\n    print('MEMORY_ERROR')\n";
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let out = run(command(&plan, &python, &["-S", "-c", script]));
    drop(plan);
    assert_eq!(out.stdout.trim(), "MEMORY_ERROR", "{out:?}");
    assert_no_process_of(spec.uid);
}

#[test]
fn node_cannot_allocate_past_rlimit_data() {
    let Some(sandbox) = sandbox() else { return };
    let Some(node) = node() else {
        eprintln!("skipped: no node");
        return;
    };
    let code = code_dir(&[]);
    let mut spec = spec(108, code.path());
    spec.limits.data_bytes = Some(1 << 30);
    let script = "try { const b = Buffer.alloc(2 * 1024 * 1024 * 1024 - 1); \
                  console.log('ALLOCATED', b.length) } \
                  catch (e) { console.log('REFUSED', e.name) }";
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let out = run(command(&plan, &node, &["-e", script]));
    drop(plan);
    // V8 either throws a RangeError or aborts (exit code 128 + SIGABRT through the waiter).
    let refused = out.stdout.contains("REFUSED") || out.status.code() == Some(134);
    assert!(refused, "{out:?}");
    assert!(!out.stdout.contains("ALLOCATED"), "{out:?}");
    assert_no_process_of(spec.uid);
}

/// Python that connects to `port` on the host's loopback and checks its own loopback.
fn connect_script(port: u16) -> String {
    format!(
        "import socket\n\
         s = socket.socket()\n\
         s.settimeout(5)\n\
         try:\n    s.connect(('127.0.0.1', {port}))\n    print('CONNECTED')\n\
         except ConnectionRefusedError:\n    print('REFUSED')\n\
         except OSError as e:\n    print('FAILED', e)\n\
         srv = socket.socket()\n\
         srv.bind(('127.0.0.1', 0))\n\
         srv.listen()\n\
         socket.create_connection(srv.getsockname(), timeout=5)\n\
         print('LOOPBACK_UP')\n"
    )
}

/// Runs the connect script in a sandbox with `network`: its output and whether the host's
/// listener saw a connection; `None` where the test is skipped.
fn connect_from_sandbox(n: u32, network: Network) -> Option<(Finished, bool)> {
    let sandbox = sandbox()?;
    let Some((python, prefix)) = python() else {
        eprintln!("skipped: no python3");
        return None;
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    listener.set_nonblocking(true).expect("non-blocking");
    let port = listener.local_addr().expect("address").port();
    let code = code_dir(&[]);
    let mut spec = spec(n, code.path());
    spec.runtime_paths = vec![prefix];
    spec.network = network;
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let out = run(command(
        &plan,
        &python,
        &["-S", "-c", &connect_script(port)],
    ));
    drop(plan);
    let accepted = listener.accept().is_ok();
    assert_no_process_of(spec.uid);
    Some((out, accepted))
}

#[test]
fn host_loopback_is_unreachable_with_network_off() {
    let Some((out, accepted)) = connect_from_sandbox(109, Network::Off) else {
        return;
    };
    assert_eq!(marked(&out.stdout, "REFUSED").len(), 1, "{out:?}");
    assert_eq!(marked(&out.stdout, "LOOPBACK_UP").len(), 1, "{out:?}");
    assert!(!accepted, "the host listener saw a connection");
}

#[test]
fn host_loopback_is_reachable_with_network_on() {
    let Some((out, accepted)) = connect_from_sandbox(110, Network::Host) else {
        return;
    };
    assert_eq!(marked(&out.stdout, "CONNECTED").len(), 1, "{out:?}");
    assert!(accepted, "the host listener saw no connection");
}

#[test]
fn a_joined_namespace_reaches_its_own_listener_and_not_the_host() {
    let Some(sandbox) = sandbox() else { return };
    let Some((python, prefix)) = python() else {
        eprintln!("skipped: no python3");
        return;
    };
    let namespace = NetNamespace::new().expect("network namespace");
    // The same port on the host's loopback and inside: each side sees its own.
    let host = TcpListener::bind("127.0.0.1:0").expect("listen on the host");
    host.set_nonblocking(true).expect("non-blocking");
    let port = host.local_addr().expect("address").port();
    let inside = namespace
        .bind_tcp(([127, 0, 0, 1], port).into())
        .expect("listen inside the namespace");
    inside.set_nonblocking(true).expect("non-blocking");
    let code = code_dir(&[]);
    let mut spec = spec(114, code.path());
    spec.runtime_paths = vec![prefix];
    spec.network = Network::Joined(namespace.clone());
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let out = run(command(
        &plan,
        &python,
        &["-S", "-c", &connect_script(port)],
    ));
    drop(plan);
    assert_eq!(marked(&out.stdout, "CONNECTED").len(), 1, "{out:?}");
    assert_eq!(marked(&out.stdout, "LOOPBACK_UP").len(), 1, "{out:?}");
    assert!(
        inside.accept().is_ok(),
        "the listener inside saw no connection"
    );
    assert!(host.accept().is_err(), "the host listener saw a connection");
    assert_no_process_of(spec.uid);
}

#[test]
fn refused_system_calls_fail_with_eperm_inside() {
    let Some(sandbox) = sandbox() else { return };
    let Some((python, prefix)) = python() else {
        eprintln!("skipped: no python3");
        return;
    };
    let code = code_dir(&[]);
    let mut spec = spec(111, code.path());
    spec.runtime_paths = vec![prefix];
    let clone_newuser = libc::CLONE_NEWUSER | libc::SIGCHLD;
    let script = format!(
        "import ctypes, errno, subprocess, threading\n\
         libc = ctypes.CDLL(None, use_errno=True)\n\
         def check(name, rc):\n    \
             print('CALL', name, rc, errno.errorcode.get(ctypes.get_errno(), '0'))\n\
         check('unshare', libc.unshare({newns}))\n\
         check('mount', libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))\n\
         check('keyctl', libc.syscall({keyctl}, 0, -3, 0))\n\
         check('bpf', libc.syscall({bpf}, 0, 0, 0))\n\
         check('ptrace', libc.syscall({ptrace}, 16, 2, 0, 0))\n\
         check('setns', libc.syscall({setns}, 0, 0))\n\
         check('perf_event_open', libc.syscall({perf}, 0, 0, -1, -1, 0))\n\
         check('init_module', libc.syscall({init_module}, 0, 0, b''))\n\
         check('clone_newuser', libc.syscall({clone}, {clone_newuser}, 0, 0, 0, 0))\n\
         t = threading.Thread(target=lambda: print('THREAD_RAN'))\n\
         t.start(); t.join()\n\
         p = subprocess.run(['/usr/bin/unshare', '--user', 'true'], capture_output=True)\n\
         print('UNSHARE_BINARY', p.returncode, p.stderr.decode().strip())\n\
         print('CLONE3', libc.syscall({clone3}, 0, 0), errno.errorcode.get(ctypes.get_errno()))\n",
        newns = libc::CLONE_NEWNS,
        keyctl = libc::SYS_keyctl,
        bpf = libc::SYS_bpf,
        ptrace = libc::SYS_ptrace,
        setns = libc::SYS_setns,
        perf = libc::SYS_perf_event_open,
        init_module = libc::SYS_init_module,
        clone = libc::SYS_clone,
        clone3 = libc::SYS_clone3,
    );
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let out = run(command(&plan, &python, &["-S", "-c", &script]));
    drop(plan);
    assert!(out.status.success(), "{out:?}");
    let calls = marked(&out.stdout, "CALL ");
    assert_eq!(calls.len(), 9, "{}", out.stdout);
    for call in calls {
        assert!(
            call.ends_with(" -1 EPERM"),
            "not refused with EPERM: {call}"
        );
    }
    assert_eq!(marked(&out.stdout, "THREAD_RAN").len(), 1, "{}", out.stdout);
    let unshare = marked(&out.stdout, "UNSHARE_BINARY ");
    assert!(
        unshare[0].contains("Operation not permitted"),
        "{unshare:?}"
    );
    assert_eq!(marked(&out.stdout, "CLONE3 "), ["-1 ENOSYS"]);
    assert_no_process_of(spec.uid);
}

#[test]
fn host_programs_outside_the_view_cannot_be_started() {
    let Some(sandbox) = sandbox() else { return };
    let elsewhere = code_dir(&[]);
    let program = elsewhere.path().join("true");
    std::fs::copy("/bin/true", &program).expect("copy /bin/true");
    set_mode(&program, 0o755);
    let code = code_dir(&[]);
    let spec = spec(112, code.path());
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let started = Instant::now();
    let err = command(&plan, &program, &[])
        .spawn()
        .expect_err("a host program outside the sandbox's view");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(plan);
    assert_no_process_of(spec.uid);
}

#[test]
fn a_setup_failure_is_reported_by_spawn() {
    let Some(sandbox) = sandbox() else { return };
    let code = code_dir(&[]);
    let mut spec = spec(113, code.path());
    // More open files than the hard limit allows a process to raise to fails in the child.
    spec.limits.nofile = u64::MAX - 1;
    let plan = Arc::new(Plan::new(&sandbox, &spec).expect("plan"));
    let mut command = command(&plan, Path::new("/bin/true"), &[]);
    let err = command.spawn().expect_err("setrlimit must fail");
    assert!(err.raw_os_error().is_some(), "{err:?}");
    drop(plan);
    assert_no_process_of(spec.uid);
}
