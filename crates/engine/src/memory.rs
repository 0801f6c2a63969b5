//! How much memory an instance may use, how the limit is enforced, and how much one invocation
//! used.
//!
//! # Without a memory controller (what this host has unless cgroup v2 delegates `memory`)
//!
//! A function may use `memory_mb`. Two mechanisms enforce it, because neither suffices alone:
//!
//! - **`RLIMIT_DATA`**, set in the runtime before exec (by the sandbox plan, see
//!   `isolation.rs`), at `memory_mb` plus a per-runtime headroom ([`data_limit_bytes`]). It is
//!   a hard stop the kernel applies at allocation time, so even an allocation far faster than
//!   any sampling fails: Python raises `MemoryError`, Node.js throws `RangeError: Array buffer
//!   allocation failed` or aborts with V8's fatal out-of-memory report. It counts writable
//!   private mappings (heap, thread stacks, V8's committed pages), not resident memory:
//!   runtimes reserve more than they touch, hence the headroom. It is per process, and shared
//!   mappings escape it.
//! - **A watchdog** ([`Watchdog`]) that samples the instance's resident memory while a frame is
//!   awaited (starting and each invocation). Sandboxed, it asks the plan
//!   ([`Plan::check_memory`]), which sums the resident sets of every process of the instance
//!   running as the function's uid (found through the instance's cgroup, or its process
//!   tree), so a daemonised child is counted too; with `Isolation::None` it sums the runtime
//!   process and its descendants itself. When the sum passes `memory_mb` the engine kills the
//!   whole instance: status 434, and the next call gets a fresh instance.
//!
//! ```text
//!                       memory_mb                 memory_mb + headroom
//!   resident ───────────────┼─────────────────────────────┼──────────>
//!                 watchdog kills here (434)     allocation fails here (434 by the rule below)
//! ```
//!
//! Which failures count as "out of memory" (status 434): the watchdog's kill; a Python
//! `MemoryError` and a Node.js `RangeError: Array buffer allocation failed` escaping the
//! handler (the shims report them as 434; the instance is then recycled, because whatever
//! failed to allocate may have left the runtime in a bad state); and an instance that died
//! during an invocation after printing V8's fatal out-of-memory report
//! ([`reports_out_of_memory`]). A `MemoryError` the handler raises itself is indistinguishable
//! and counts too.
//!
//! Headroom, measured on the machine of `notes/measurements.md` (node 20.20, CPython 3.11):
//! `node` needs about 46 MiB of `RLIMIT_DATA` just to start (with 44 MiB it aborts while
//! deserialising its snapshot, with 40 MiB or less it hangs), libuv's four pool threads add
//! 32 MiB of stacks on first use, and V8's data runs about half above its resident heap. A
//! handler growing to 95 % of `memory_mb` (64 to 1024 MB, arrays or buffers) succeeded with
//! 48 MiB of headroom and, for 64 and 128 MB, failed with 32; Node.js gets 128 MiB. CPython's
//! own data is ~6 MiB and grew to 95 % of `memory_mb` with no headroom at all, but every thread
//! stack (8 MiB) counts; Python gets 64 MiB.
//!
//! Per-invocation peak (`memUsage`): an instance lives across invocations, so its lifetime peak
//! says nothing about one call. Writing `5` to `/proc/<pid>/clear_refs` resets the kernel's
//! high-water mark (`VmHWM`) to the current resident set; reading `VmHWM` after the call gives
//! the main process's peak during it (both cost microseconds). The engine reports the larger of
//! that and the watchdog's largest sample of the whole tree.
//!
//! # With a memory controller
//!
//! Where cgroup v2 delegates `memory` and `pids`, each sandboxed instance has `memory.max` =
//! `memory_mb`: the kernel's OOM killer ends the instance, the plan's check reports the
//! `oom_kill` event as exceeded, and the engine answers 434 as above. `RLIMIT_DATA` stays, so
//! that one huge allocation still fails inside the runtime with its own error rather than as a
//! kill. The watchdog's samples are then `memory.current`, which counts pages shared between
//! the instance's processes once.
//!
//! # Limitations
//!
//! - Unsandboxed, descendants are found through `/proc/<pid>/task/*/children`, 100 ms into
//!   starting or into an invocation and every 100 ms after: a process that leaves the tree
//!   (double fork, daemon) is not counted, and shorter-lived ones or shorter invocations are
//!   not watched for their children at all (`RLIMIT_DATA` still bounds each process).
//! - Without a memory controller resident sets are summed, so pages shared between processes
//!   of the instance (after `fork`) count more than once.
//! - Files in an instance's `/tmp` (a tmpfs) use memory that no process's resident set shows;
//!   the `/tmp` size bounds it (see `config.rs`).
//! - Between samples memory may overshoot `memory_mb` by what the runtime can touch in one
//!   interval (2–20 ms, shorter the nearer the limit), up to the `RLIMIT_DATA` headroom.
//! - `RLIMIT_DATA` applies to each process of the tree separately, and a runtime's own thread
//!   stacks eat into it.

use std::io;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use nimbus_sandbox::{MemoryStatus, Plan};

use crate::Runtime;

const MIB: u64 = 1024 * 1024;

/// What the Python runtime may map beyond `memory_mb` (see the module header).
pub(crate) const PYTHON_DATA_HEADROOM_MB: u64 = 64;
/// What the Node.js runtime may map beyond `memory_mb` (see the module header).
pub(crate) const NODE_DATA_HEADROOM_MB: u64 = 128;
/// What a custom runtime's `bootstrap` may map beyond `memory_mb`: its language is unknown,
/// so it gets the larger headroom, that of Node.js.
pub(crate) const CUSTOM_DATA_HEADROOM_MB: u64 = NODE_DATA_HEADROOM_MB;

/// Shortest pause between two samples, for a tree just below its limit.
const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(2);
/// Longest pause between two samples, for a tree far below its limit.
const MAX_SAMPLE_INTERVAL: Duration = Duration::from_millis(20);
/// Growth of the resident set assumed possible per millisecond when spacing samples.
const ASSUMED_GROWTH_PER_MS: u64 = MIB;
/// How often the watchdog looks for new descendants.
const DISCOVERY_INTERVAL: Duration = Duration::from_millis(100);
/// Most descendants watched; beyond this a tree is summed incompletely.
const MAX_DESCENDANTS: usize = 256;

/// `RLIMIT_DATA` for an instance of `runtime` whose function may use `memory_mb`.
pub(crate) fn data_limit_bytes(runtime: Runtime, memory_mb: u32) -> u64 {
    let headroom_mb = match runtime {
        Runtime::Python3 => PYTHON_DATA_HEADROOM_MB,
        Runtime::Nodejs => NODE_DATA_HEADROOM_MB,
        Runtime::Custom => CUSTOM_DATA_HEADROOM_MB,
    };
    (u64::from(memory_mb) + headroom_mb) * MIB
}

/// Whether `output`, the log of an instance that died, ends with a runtime's fatal
/// out-of-memory report (V8 prints one before it aborts).
pub(crate) fn reports_out_of_memory(output: &str) -> bool {
    const REPORTS: [&str; 3] = [
        "JavaScript heap out of memory",
        "Fatal javascript OOM",
        "Fatal process out of memory",
    ];
    let tail = &output[output.floor_char_boundary(output.len().saturating_sub(8192))..];
    REPORTS.iter().any(|report| tail.contains(report))
}

/// The peak resident set of one process, reset per invocation: `VmHWM` of its
/// `/proc/<pid>/status`, reset by writing `5` to its `clear_refs`.
///
/// Both files stay open for the instance's life and are read and written at offset 0: a path
/// lookup under `/proc` costs more than the read itself, twice per invocation. An open file
/// also keeps naming the same process: once it is gone, reads fail rather than reach a
/// process that reused its pid.
#[derive(Debug)]
pub(crate) struct PeakMeter {
    status: std::fs::File,
    clear_refs: std::fs::File,
    buffer: Vec<u8>,
}

impl PeakMeter {
    /// Opens the files of `pid`.
    pub(crate) fn open(pid: u32) -> io::Result<PeakMeter> {
        Ok(PeakMeter {
            status: std::fs::File::open(format!("/proc/{pid}/status"))?,
            clear_refs: std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/{pid}/clear_refs"))?,
            buffer: Vec::with_capacity(4096),
        })
    }

    /// Resets the peak to the current resident set.
    pub(crate) fn reset(&self) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.clear_refs.write_at(b"5", 0).map(drop)
    }

    /// The peak since the last reset, in bytes.
    ///
    /// Reads only as far as the `VmHWM` line: it comes early, so one read usually ends it
    /// without the second that would find the end of the file.
    pub(crate) fn peak_bytes(&mut self) -> io::Result<u64> {
        use std::os::unix::fs::FileExt;
        self.buffer.clear();
        let mut chunk = [0_u8; 4096];
        loop {
            let offset = self.buffer.len() as u64;
            match self.status.read_at(&mut chunk, offset)? {
                0 => break,
                n => self.buffer.extend_from_slice(&chunk[..n]),
            }
            if let Some(bytes) = parse_vm_hwm(&self.buffer) {
                return Ok(bytes);
            }
        }
        parse_vm_hwm(&self.buffer)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmHWM"))
    }
}

/// `VmHWM` in bytes, once its whole line is in `status`. Only a line that starts with it
/// counts: the `Name:` line shows a name the function chooses.
fn parse_vm_hwm(status: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\nVmHWM:";
    let start = status.windows(KEY.len()).position(|w| w == KEY)? + 1;
    let rest = &status[start..];
    let line = std::str::from_utf8(&rest[..rest.iter().position(|&b| b == b'\n')?]).ok()?;
    let mut words = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") => Some(value * 1024),
        _ => None,
    }
}

/// One look at an instance's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sample {
    /// Within the limit; look again after this long.
    Within(Duration),
    /// The tree's resident set passed the limit.
    Exceeded {
        /// What was measured.
        resident_bytes: u64,
    },
}

/// Watches the resident memory of an instance against its limit.
#[derive(Debug)]
pub(crate) struct Watchdog {
    pid: u32,
    limit_bytes: u64,
    descendants: Vec<u32>,
    discovered_at: Instant,
    peak_bytes: u64,
    /// The pause the last sample asked for: the first sample of an invocation waits that
    /// long too, so an invocation shorter than it reads nothing from `/proc` (its memory was
    /// just measured, and the main process's peak is read when it ends).
    pause: Duration,
    /// Set for a sandboxed instance: the plan measures it instead of the process tree.
    plan: Option<Arc<Plan>>,
}

impl Watchdog {
    /// A watchdog for the tree rooted at `pid`, which may use `limit_bytes`.
    pub(crate) fn new(pid: u32, limit_bytes: u64) -> Watchdog {
        Watchdog {
            pid,
            limit_bytes,
            descendants: Vec::new(),
            discovered_at: Instant::now(),
            peak_bytes: 0,
            pause: MIN_SAMPLE_INTERVAL,
            plan: None,
        }
    }

    /// A watchdog for a sandboxed instance whose spawned process (the sandbox's waiter) is
    /// `spawned`: [`Plan::check_memory`] measures it (`memory.current` with a memory
    /// controller, else the resident sets of the function's processes) against the plan's
    /// limit, `limit_bytes`. Its tree walk would count the sandbox's own processes, which
    /// share the server's pages.
    pub(crate) fn for_sandbox(plan: Arc<Plan>, spawned: u32, limit_bytes: u64) -> Watchdog {
        Watchdog {
            plan: Some(plan),
            ..Watchdog::new(spawned, limit_bytes)
        }
    }

    /// Measures the instance once.
    pub(crate) fn sample(&mut self) -> Sample {
        if let Some(plan) = &self.plan {
            let (used_bytes, exceeded) = match plan.check_memory(self.pid) {
                Ok(MemoryStatus::Within { used_bytes }) => (used_bytes, false),
                Ok(MemoryStatus::Exceeded { used_bytes, .. }) => (used_bytes, true),
                Err(err) => {
                    tracing::debug!(error = &err as &dyn std::error::Error, "cannot measure");
                    return Sample::Within(MAX_SAMPLE_INTERVAL);
                }
            };
            self.peak_bytes = self.peak_bytes.max(used_bytes);
            return if exceeded {
                Sample::Exceeded {
                    resident_bytes: used_bytes,
                }
            } else {
                self.pause = sample_interval(used_bytes, self.limit_bytes);
                Sample::Within(self.pause)
            };
        }
        if self.discovered_at.elapsed() >= DISCOVERY_INTERVAL {
            self.descendants = descendants(self.pid);
            self.discovered_at = Instant::now();
        }
        let Ok(own) = resident_bytes(self.pid) else {
            // The main process is gone; the control channel reports that.
            return Sample::Within(MAX_SAMPLE_INTERVAL);
        };
        let others: u64 = self
            .descendants
            .iter()
            .filter_map(|&pid| resident_bytes(pid).ok())
            .sum();
        let total = own + others;
        self.peak_bytes = self.peak_bytes.max(total);
        if total > self.limit_bytes {
            Sample::Exceeded {
                resident_bytes: total,
            }
        } else {
            self.pause = sample_interval(total, self.limit_bytes);
            Sample::Within(self.pause)
        }
    }

    /// Lowers (never raises) the limit: a spare's, once a function claims it.
    pub(crate) fn set_limit(&mut self, limit_bytes: u64) {
        self.limit_bytes = self.limit_bytes.min(limit_bytes);
    }

    /// When an invocation starting now should be sampled first.
    pub(crate) fn first_sample_at(&self) -> Instant {
        Instant::now() + self.pause
    }

    /// The largest total seen since the last [`Watchdog::start_invocation`].
    pub(crate) fn peak_bytes(&self) -> u64 {
        self.peak_bytes
    }

    /// Starts a new peak. Descendants are looked for again one discovery period from now:
    /// invocations shorter than that (most) pay for no search, and processes a former
    /// invocation left behind are counted from then on. Pids found earlier are dropped
    /// rather than trusted, as they may have been reused since.
    pub(crate) fn start_invocation(&mut self) {
        self.peak_bytes = 0;
        self.descendants.clear();
        self.discovered_at = Instant::now();
    }
}

/// The pause before the next sample: the time the assumed growth needs to cover the room left.
fn sample_interval(resident_bytes: u64, limit_bytes: u64) -> Duration {
    let room = limit_bytes.saturating_sub(resident_bytes);
    Duration::from_millis(room / ASSUMED_GROWTH_PER_MS)
        .clamp(MIN_SAMPLE_INTERVAL, MAX_SAMPLE_INTERVAL)
}

fn resident_bytes(pid: u32) -> io::Result<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))?;
    let pages = parse_statm_resident(&statm)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed statm"))?;
    Ok(pages * page_size())
}

fn parse_statm_resident(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

fn page_size() -> u64 {
    static PAGE_SIZE: OnceLock<u64> = OnceLock::new();
    *PAGE_SIZE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .and_then(|size| u64::try_from(size).ok())
            .unwrap_or(4096)
    })
}

/// Every process below `root`, breadth first, as `/proc/<pid>/task/*/children` lists them.
fn descendants(root: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut next = 0;
    let mut parent = root;
    loop {
        for child in children(parent) {
            if found.len() == MAX_DESCENDANTS {
                return found;
            }
            found.push(child);
        }
        let Some(&pid) = found.get(next) else {
            return found;
        };
        parent = pid;
        next += 1;
    }
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|word| word.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_hwm_in_kilobytes() {
        let status =
            b"Name:\tpython3\nVmPeak:\t  20000 kB\nVmHWM:\t    9876 kB\nVmRSS:\t 9000 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(9876 * 1024));
    }

    #[test]
    fn missing_or_cut_vm_hwm_is_none() {
        assert_eq!(parse_vm_hwm(b"Name:\tzombie\nState:\tZ (zombie)\n"), None);
        // Not yet the whole line: the caller reads on.
        assert_eq!(parse_vm_hwm(b"Name:\tpython3\nVmHWM:\t    98"), None);
    }

    #[test]
    fn a_process_name_cannot_pose_as_vm_hwm() {
        let status = b"Name:\tVmHWM:\t1 kB\nVmHWM:\t    9876 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(9876 * 1024));
    }

    #[test]
    fn measures_a_peak_and_resets_it() {
        let mut child = std::process::Command::new("python3")
            .args([
                "-c",
                "import sys\nb = bytearray(64 << 20)\nfor i in range(0, len(b), 4096): b[i] = 1\n\
                 del b\nprint('freed', flush=True)\nsys.stdin.read()",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 starts");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("read");
        assert_eq!(line.trim(), "freed");
        let mut meter = PeakMeter::open(child.id()).expect("open");
        // Read twice through the same open file: each read starts at the top.
        let before = meter.peak_bytes().expect("peak");
        assert_eq!(meter.peak_bytes().expect("peak again"), before);
        assert!(before > 64 << 20, "peak {before}");
        meter.reset().expect("reset");
        let after = meter.peak_bytes().expect("peak after reset");
        assert!(after < 64 << 20, "peak after reset {after}");
        drop(child.stdin.take());
        child.wait().expect("reap");
        assert!(meter.peak_bytes().is_err(), "a gone process has no peak");
    }

    #[test]
    fn parses_resident_pages_from_statm() {
        assert_eq!(
            parse_statm_resident("5000 1234 300 10 0 800 0\n"),
            Some(1234)
        );
        assert_eq!(parse_statm_resident("5000"), None);
    }

    #[test]
    fn data_limit_adds_runtime_headroom() {
        assert_eq!(data_limit_bytes(Runtime::Python3, 128), (128 + 64) * MIB);
        assert_eq!(data_limit_bytes(Runtime::Nodejs, 128), (128 + 128) * MIB);
    }

    #[test]
    fn samples_more_often_near_the_limit() {
        let limit = 128 * MIB;
        assert_eq!(sample_interval(0, limit), MAX_SAMPLE_INTERVAL);
        assert_eq!(
            sample_interval(limit - 5 * MIB, limit),
            Duration::from_millis(5)
        );
        assert_eq!(sample_interval(limit, limit), MIN_SAMPLE_INTERVAL);
    }

    #[test]
    fn recognises_v8_out_of_memory_report() {
        let report = "<--- Last few GCs --->\nFATAL ERROR: Reached heap limit Allocation failed - \
                      JavaScript heap out of memory\n";
        assert!(reports_out_of_memory(report));
        assert!(reports_out_of_memory(
            "# Fatal javascript OOM in MemoryChunk allocation"
        ));
        assert!(!reports_out_of_memory("Error: boom\n"));
    }

    #[test]
    fn watchdog_measures_own_process() {
        let mut watchdog = Watchdog::new(std::process::id(), u64::MAX);
        assert!(matches!(watchdog.sample(), Sample::Within(_)));
        assert!(watchdog.peak_bytes() > 0);
        let mut strict = Watchdog::new(std::process::id(), 1);
        assert!(matches!(strict.sample(), Sample::Exceeded { .. }));
    }

    #[test]
    fn watchdog_peak_restarts_with_each_invocation() {
        let mut watchdog = Watchdog::new(std::process::id(), u64::MAX);
        watchdog.sample();
        assert!(watchdog.peak_bytes() > 0);
        watchdog.start_invocation();
        assert_eq!(watchdog.peak_bytes(), 0);
    }

    #[test]
    fn finds_child_processes() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("sleep starts");
        let found = descendants(std::process::id());
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert!(found.contains(&child.id()), "{found:?}");
    }
}
