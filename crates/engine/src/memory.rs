//! Peak memory of one invocation, from `/proc`.
//!
//! An instance lives across invocations, so its lifetime peak says nothing about one call.
//! Writing `5` to `/proc/<pid>/clear_refs` resets the kernel's high-water mark (`VmHWM`) to the
//! current resident set; reading `VmHWM` from `/proc/<pid>/status` after the call gives the peak
//! reached during it. Both cost microseconds.
//!
//! # Limitations
//!
//! Only the instance's main process is measured: memory of processes the handler starts is not
//! counted. A cgroup v2 `memory.peak` (reset per invocation by writing to it) would cover the
//! whole tree; that belongs with the sandbox work that gives each instance its own cgroup, and is
//! not done here.

use std::io;

/// Resets the peak resident set of `pid` to its current resident set.
pub(crate) fn reset_peak(pid: u32) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), b"5")
}

/// The peak resident set of `pid` since the last reset, in bytes.
pub(crate) fn read_peak_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_vm_hwm(&status).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmHWM"))
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut words = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_hwm_in_kilobytes() {
        let status = "Name:\tpython3\nVmPeak:\t  20000 kB\nVmHWM:\t    9876 kB\nVmRSS:\t 9000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(9876 * 1024));
    }

    #[test]
    fn missing_vm_hwm_is_none() {
        assert_eq!(parse_vm_hwm("Name:\tzombie\nState:\tZ (zombie)\n"), None);
    }

    #[test]
    fn reads_own_peak() {
        let peak = read_peak_bytes(std::process::id()).expect("own status is readable");
        assert!(peak > 0);
    }
}
