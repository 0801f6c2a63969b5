//! Reading `/proc` from the host side: process trees and resident memory.
//!
//! Used to find the runtime's host pid and, without a memory controller, to measure an
//! instance's resident memory for the watchdog. Processes come and go while this reads; one that
//! vanished between listing and reading is skipped, not an error.

use std::fs;
use std::io;
use std::path::PathBuf;

use crate::SandboxError;

/// The direct children of `pid`, over all its threads, oldest first per thread.
pub(crate) fn children(pid: u32) -> Result<Vec<u32>, SandboxError> {
    let tasks_dir = PathBuf::from(format!("/proc/{pid}/task"));
    let tasks = match fs::read_dir(&tasks_dir) {
        Ok(tasks) => tasks,
        Err(err) if gone(&err) => return Ok(Vec::new()),
        Err(source) => {
            return Err(SandboxError::Read {
                path: tasks_dir,
                source,
            });
        }
    };
    let mut found = Vec::new();
    for task in tasks.flatten() {
        let path = task.path().join("children");
        match fs::read_to_string(&path) {
            Ok(text) => found.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            ),
            Err(err) if gone(&err) => {}
            Err(source) => return Err(SandboxError::Read { path, source }),
        }
    }
    Ok(found)
}

/// `pid` and all its descendants.
pub(crate) fn tree(pid: u32) -> Result<Vec<u32>, SandboxError> {
    let mut all = vec![pid];
    let mut next = 0;
    while let Some(&current) = all.get(next) {
        all.extend(children(current)?);
        next += 1;
    }
    Ok(all)
}

/// Those of `pids` whose real uid is `uid`.
pub(crate) fn with_uid(pids: &[u32], uid: u32) -> Result<Vec<u32>, SandboxError> {
    let mut found = Vec::new();
    for &pid in pids {
        let path = PathBuf::from(format!("/proc/{pid}/status"));
        match fs::read_to_string(&path) {
            Ok(status) if real_uid(&status) == Some(uid) => found.push(pid),
            Ok(_) => {}
            Err(err) if gone(&err) => {}
            Err(source) => return Err(SandboxError::Read { path, source }),
        }
    }
    Ok(found)
}

/// The resident memory (`VmRSS`) of those of `pids` whose real uid is `uid`, in bytes.
///
/// Processes of other uids are the sandbox's own waiting processes: they share the server's
/// pages and must not be counted against the function.
pub(crate) fn resident_bytes_of(pids: &[u32], uid: u32) -> Result<u64, SandboxError> {
    let mut total = 0;
    for pid in pids {
        let path = PathBuf::from(format!("/proc/{pid}/status"));
        let status = match fs::read_to_string(&path) {
            Ok(status) => status,
            Err(err) if gone(&err) => continue,
            Err(source) => return Err(SandboxError::Read { path, source }),
        };
        if real_uid(&status) == Some(uid) {
            total += kib_field(&status, "VmRSS:").unwrap_or(0) * 1024;
        }
    }
    Ok(total)
}

fn gone(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::NotFound || err.raw_os_error() == Some(libc::ESRCH)
}

/// The real uid from the `Uid:` line of `/proc/<pid>/status`.
pub(crate) fn real_uid(status: &str) -> Option<u32> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line["Uid:".len()..].split_whitespace().next()?.parse().ok()
}

/// A `kB` field of `/proc/<pid>/status` (such as `VmRSS:`), in KiB. Kernel threads and zombies
/// have no memory fields.
pub(crate) fn kib_field(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let mut words = line[field.len()..].split_whitespace();
    let value = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tpython3\nUmask:\t0022\nState:\tS (sleeping)\n\
                          Uid:\t2000000007\t2000000007\t2000000007\t2000000007\n\
                          Gid:\t2000000007\t2000000007\t2000000007\t2000000007\n\
                          VmPeak:\t   30000 kB\nVmHWM:\t    9000 kB\nVmRSS:\t    8192 kB\n";

    #[test]
    fn parses_status_fields() {
        assert_eq!(real_uid(STATUS), Some(2_000_000_007));
        assert_eq!(kib_field(STATUS, "VmRSS:"), Some(8192));
        assert_eq!(kib_field(STATUS, "VmHWM:"), Some(9000));
        assert_eq!(kib_field("Name:\tkthreadd\n", "VmRSS:"), None);
    }

    #[test]
    fn finds_own_children() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("spawn sleep");
        let found = children(std::process::id()).expect("children");
        let _ = child.kill();
        let _ = child.wait();
        assert!(found.contains(&child.id()));
    }

    #[test]
    fn counts_only_the_given_uid() {
        let me = std::process::id();
        let own_uid = nix::unistd::getuid().as_raw();
        assert!(resident_bytes_of(&[me], own_uid).expect("read") > 0);
        assert_eq!(
            resident_bytes_of(&[me], own_uid.wrapping_add(1)).expect("read"),
            0
        );
        assert_eq!(
            resident_bytes_of(&[u32::MAX - 1], own_uid).expect("read"),
            0
        );
    }
}
