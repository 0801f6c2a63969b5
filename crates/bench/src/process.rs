//! Child processes the suite starts (servers, peers, probes) and what `/proc` says about them.
//!
//! Every long-lived child runs in its own process group and is owned by a [`ProcessGuard`].
//! Dropping the guard (normal end, error, or the Ctrl-C path that drops the whole run) asks the
//! group to stop with `SIGTERM`, waits a moment, then sends `SIGKILL` to whatever is left of the
//! group and reaps the leader. Nimbus stops its own function instances on `SIGTERM`, and they
//! carry a parent-death signal besides.
//!
//! # Limitations
//! If the suite itself is killed with `SIGKILL`, no guard runs and the children it started
//! keep running until killed by hand.

use std::collections::HashMap;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// How long a stopped group gets between `SIGTERM` and `SIGKILL`.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// A child process leading its own process group, stopped with the group on drop.
pub struct ProcessGuard {
    name: String,
    child: Option<Child>,
}

impl ProcessGuard {
    /// Spawns `command` as the leader of a new process group.
    ///
    /// # Errors
    /// When the program cannot be started.
    pub fn spawn(name: &str, command: &mut Command) -> anyhow::Result<ProcessGuard> {
        let child = command
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {name} ({:?})", command.get_program()))?;
        Ok(ProcessGuard {
            name: name.to_owned(),
            child: Some(child),
        })
    }

    /// The leader's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Takes the leader's piped stdout, once.
    pub fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut()?.stdout.take()
    }

    /// `Some(description)` once the leader has exited.
    pub fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status})", self.name)),
            Ok(None) => None,
            Err(error) => Some(format!("{} cannot be waited for: {error}", self.name)),
        }
    }

    /// Stops the group: `SIGTERM`, up to [`STOP_GRACE`] for the leader to exit, then `SIGKILL`
    /// for every member left, and reaps the leader. Idempotent.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let group = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // Stragglers of the group (workers of a peer) die with it; ESRCH means none are left.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `ppid` of every process, read from `/proc/<pid>/stat`.
fn parent_map() -> HashMap<u32, u32> {
    let mut parents = HashMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return parents;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name may contain spaces and parentheses: fields resume after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|f| f.parse().ok()) {
            parents.insert(pid, ppid);
        }
    }
    parents
}

/// Every live descendant of `pid` (children, their children, ...), sorted.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents = parent_map();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (child, parent) in parents {
        children.entry(parent).or_default().push(child);
    }
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(next) = todo.pop() {
        if let Some(kids) = children.get(&next) {
            found.extend(kids);
            todo.extend(kids);
        }
    }
    found.sort_unstable();
    found
}

/// The processes of the instance whose function runs as `uid`, under the server `server`:
/// every descendant of the server running as `uid`, the other processes of their PID
/// namespace (the sandbox's init), and the parent of that init (the sandbox's waiter), sorted.
/// Not a zygote the runtime was forked from: it is the node's, as the server is.
pub fn instance_processes(server: u32, uid: u32) -> Vec<u32> {
    let parents = parent_map();
    let under_server = descendants(server);
    let pid_namespace = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok();
    let host = pid_namespace(server);
    let mut found = std::collections::BTreeSet::new();
    let mut namespaces = std::collections::BTreeSet::new();
    for &pid in &under_server {
        if uid_of(pid) == Some(uid) {
            found.insert(pid);
            namespaces.extend(pid_namespace(pid).filter(|ns| Some(ns) != host.as_ref()));
        }
    }
    for &pid in &under_server {
        if pid_namespace(pid).is_some_and(|ns| namespaces.contains(&ns)) {
            found.insert(pid);
            if is_namespace_init(pid)
                && let Some(&waiter) = parents.get(&pid).filter(|&&p| p != server)
            {
                found.insert(waiter);
            }
        }
    }
    found.into_iter().collect()
}

/// The process outside `instance` (as [`instance_processes`] found it), other than the
/// server, that one of its processes is a child of: the zygote its runtime was forked from,
/// if there is one.
pub fn zygote_of(server: u32, instance: &[u32]) -> Option<u32> {
    let parents = parent_map();
    instance
        .iter()
        .filter_map(|pid| parents.get(pid).copied())
        .find(|parent| *parent != server && !instance.contains(parent))
}

/// Whether `pid` is pid 1 of its PID namespace (the last number of `NSpid`).
fn is_namespace_init(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("NSpid:"))
            .and_then(|ids| ids.split_whitespace().last())
            == Some("1")
    })
}

/// The real uid of `pid`.
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The proportional set size of `pid` in KiB, from `/proc/<pid>/smaps_rollup`.
pub fn pss_kib(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_pss_kib(&text)
}

fn parse_pss_kib(smaps_rollup: &str) -> Option<u64> {
    smaps_rollup.lines().find_map(|line| {
        let value = line.strip_prefix("Pss:")?;
        value.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// The CPU time `pid` has used so far (user and system, all its threads), in seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = parse_cpu_ticks(&stat)?;
    let per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    Some(ticks as f64 / per_second as f64)
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line, in clock ticks.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after the command name, which may hold spaces and parentheses: state is field 3.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some(user + system)
}

/// Whether `pid` is still alive (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_ticks_after_a_command_name_with_spaces() {
        let stat = "42 (tokio (rt) 1) S 1 42 42 0 -1 4194560 900 0 0 0 250 37 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
        assert!(cpu_seconds(std::process::id()).is_some());
    }

    #[test]
    fn reads_pss_from_smaps_rollup() {
        let text = "55d0-7ffc ---p 00000000 00:00 0 [rollup]\nRss:  9000 kB\nPss:  7890 kB\nPss_Dirty: 10 kB\n";
        assert_eq!(parse_pss_kib(text), Some(7890));
        assert_eq!(parse_pss_kib("Rss: 1 kB\n"), None);
    }

    #[test]
    fn finds_its_own_children_and_stops_their_group() {
        let mut guard =
            ProcessGuard::spawn("sleep", Command::new("sleep").arg("30")).expect("sleep starts");
        let pid = guard.pid();
        assert!(descendants(std::process::id()).contains(&pid));
        assert!(pss_kib(pid).is_some());
        guard.stop();
        assert!(!alive(pid));
        assert!(guard.exited().is_none());
    }
}
