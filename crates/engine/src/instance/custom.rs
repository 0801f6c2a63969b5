//! Starting and running a custom runtime's instance: its `bootstrap` answers through the
//! [`RuntimeApi`] rather than control frames, and writes no log markers.
//!
//! ```text
//!  start ── wait for Answer::Ready ──> idle ── deliver event ── wait for the first answer
//!             │ InitError: 445           ^            │ Response / Error / TooLarge
//!             │ control EOF: 445         │            v
//!             │ init timeout: 450        └── read what is already in the log pipe, cut
//! ```
//!
//! The engine keeps the control socket (the child's fd 0) open without writing to it: its end
//! of file says the program has exited, as it does for a shim. Bytes the program writes to it
//! are discarded.
//!
//! How the log is cut, without markers: everything printed from the start until the first
//! event is delivered belongs to the first invocation's log (SCF merges init logs into it);
//! during an invocation, everything read from the pipe until its answer arrives, plus what is
//! already in the pipe at that moment, belongs to it; what the program prints after answering
//! (while it goes back to `next`) is kept for the next invocation's log.
//!
//! # Limitations
//!
//! The cut is by time, so it is only as precise as the program's own buffering: output a
//! program writes before posting its answer is in the pipe when the answer arrives, and lands
//! in the right log; output held in a user-space buffer (C's `stdio` on a pipe) appears
//! whenever it is flushed, possibly in a later invocation's log; output of a thread or child
//! process still running after the answer lands in the next invocation's log.

use tokio::io::AsyncReadExt;
use tokio::time::{Instant, sleep_until};

use super::{Instance, Invocation, Run, RunEnd, Wait};
use crate::log::LogCollector;
use crate::memory::Sample;
use crate::protocol::Reply;
use crate::runtime_api::{Answer, RuntimeApi};
use crate::{EngineError, InvocationResult, scf};

/// What the program did while the engine waited for it to start.
enum Start {
    Ready,
    InitError(String),
}

impl Instance {
    /// Waits until the runtime calls `init/ready` within `init_timeout`. Everything it prints
    /// meanwhile is kept for the first invocation's log (or the failed start's).
    pub(super) async fn await_runtime_ready(
        &mut self,
        init_timeout: std::time::Duration,
        log_limit: usize,
    ) -> Result<(), EngineError> {
        let deadline = Instant::now() + init_timeout;
        let mut boot = LogCollector::new(Vec::new(), log_limit);
        let started = loop {
            match self.next_answer(deadline, &mut boot).await {
                Ok(Some(Answer::Ready)) => break Ok(Some(Start::Ready)),
                Ok(Some(Answer::InitError(message))) => break Ok(Some(Start::InitError(message))),
                // No invocation is open before ready, so no other answer can be accepted.
                Ok(Some(_)) => {}
                Ok(None) => break Ok(None),
                Err(wait) => break Err(wait),
            }
        };
        if !matches!(started, Ok(Some(Start::Ready))) {
            self.kill();
            self.drain_log(&mut boot).await;
        }
        self.boot_output = boot.finish().0;
        let mut output = || std::mem::take(&mut self.boot_output);
        match started {
            Ok(Some(Start::Ready)) => Ok(()),
            Ok(Some(Start::InitError(message))) => Err(EngineError::InstanceInitFailed {
                message,
                output: output(),
            }),
            Ok(None) => Err(EngineError::InstanceExitedAtStart { output: output() }),
            Err(Wait::Deadline) => Err(EngineError::InstanceInitTimedOut {
                timeout: init_timeout,
                output: output(),
            }),
            Err(Wait::MemoryExceeded) => {
                Err(EngineError::InstanceMemoryExceededAtStart { output: output() })
            }
            Err(Wait::Failed(err)) => Err(err),
        }
    }

    /// Runs one invocation through the runtime API; see [`Instance::run`].
    pub(super) async fn run_custom(&mut self, invocation: &Invocation<'_>) -> Run {
        let mut log = LogCollector::new(Vec::new(), invocation.log_limit);
        log.push(std::mem::take(&mut self.boot_output).as_bytes());
        // Printed since the last answer (or since ready): this invocation's, by the rule above.
        self.read_pending_output(&mut log);
        if self.control_closed() {
            let now = std::time::Instant::now();
            return self.killed(RunEnd::Stale, log, now, 0).await;
        }
        self.start_measuring();

        let started = std::time::Instant::now();
        let deadline = Instant::from_std(started) + invocation.timeout;
        if let Some(api) = &self.api {
            api.deliver(invocation.request_id, invocation.event, invocation.timeout);
        }
        let waited = loop {
            match self.next_answer(deadline, &mut log).await {
                // Ready and init errors were settled at start; later ones are not answers.
                Ok(Some(Answer::Ready | Answer::InitError(_))) => {}
                other => break other,
            }
        };
        if let Some(api) = &self.api {
            api.withdraw();
        }

        match waited {
            Ok(Some(answer)) => self.answered(answer, invocation.request_id, log, started),
            Ok(None) => self.killed(RunEnd::Exited, log, started, 0).await,
            Err(Wait::Deadline) => self.stopped_at_peak(RunEnd::TimedOut, log, started).await,
            Err(Wait::MemoryExceeded) => {
                self.stopped_at_peak(RunEnd::MemoryExceeded, log, started)
                    .await
            }
            Err(Wait::Failed(err)) => self.killed(RunEnd::Broken(err), log, started, 0).await,
        }
    }

    fn answered(
        &mut self,
        answer: Answer,
        request_id: &str,
        mut log: LogCollector,
        started: std::time::Instant,
    ) -> Run {
        let duration = started.elapsed();
        let mem_usage_bytes = self.peak_memory();
        self.read_pending_output(&mut log);
        log.end_here();
        Run {
            end: RunEnd::Replied(reply(answer, request_id)),
            log,
            duration,
            mem_usage_bytes,
        }
    }

    /// Waits for the runtime's next answer while feeding the log pipe into `log` and watching
    /// memory; `None` once the program has exited (its control socket reached end of file).
    async fn next_answer(
        &mut self,
        deadline: Instant,
        log: &mut LogCollector,
    ) -> Result<Option<Answer>, Wait> {
        let mut sample_at = Instant::from_std(self.watchdog.first_sample_at());
        let mut discard = [0u8; 256];
        loop {
            tokio::select! {
                biased;
                answer = answer_of(self.api.as_mut()) => return Ok(Some(answer)),
                read = self.control.read(&mut discard) => {
                    if matches!(read, Ok(0) | Err(_)) {
                        return Ok(None);
                    }
                }
                read = self.log.read(&mut self.scratch), if self.log_open => {
                    self.take_log_read(read, log);
                }
                () = sleep_until(sample_at) => match self.watchdog.sample() {
                    Sample::Within(pause) => sample_at = Instant::now() + pause,
                    Sample::Exceeded { resident_bytes } => {
                        tracing::debug!(pid = self.pid, resident_bytes, "memory limit exceeded");
                        return Err(Wait::MemoryExceeded);
                    }
                },
                () = sleep_until(deadline) => return Err(Wait::Deadline),
            }
        }
    }

    /// Whether the program is gone: the spawned process has exited, or its control socket
    /// reads end of file without waiting. The exit is checked first: a process the program
    /// started (a subshell still blocked on `/next`, say) can keep the socket open after the
    /// program itself died.
    fn control_closed(&mut self) -> bool {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return true;
        }
        let mut discard = [0u8; 256];
        loop {
            match self.control.try_read(&mut discard) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(_) => return true,
            }
        }
    }
}

async fn answer_of(api: Option<&mut RuntimeApi>) -> Answer {
    match api {
        Some(api) => api.answer().await,
        None => std::future::pending().await,
    }
}

/// The runtime's answer as a shim's reply, so that the engine concludes both alike.
fn reply(answer: Answer, request_id: &str) -> Reply {
    let failed = |result: InvocationResult| match result {
        InvocationResult::Failed {
            status_code,
            err_msg,
        } => Reply {
            ok: false,
            ret_msg: None,
            status_code: Some(status_code),
            err_msg: Some(err_msg),
        },
        InvocationResult::Success { ret_msg } => Reply {
            ok: true,
            ret_msg: Some(ret_msg),
            status_code: None,
            err_msg: None,
        },
    };
    match answer {
        Answer::Response(body) => Reply {
            ok: true,
            ret_msg: Some(String::from_utf8_lossy(&body).into_owned()),
            status_code: None,
            err_msg: None,
        },
        Answer::Error {
            message,
            stack_trace,
        } => failed(scf::failure_with_trace(
            scf::USER_CODE_EXCEPTION,
            request_id,
            &message,
            stack_trace.as_deref(),
        )),
        Answer::TooLarge => failed(scf::failure(
            scf::RESPONSE_TOO_LARGE,
            request_id,
            "The size of response exceeds the upper limit (6MB)",
        )),
        // Filtered out by the caller; kept total rather than panicking.
        Answer::Ready | Answer::InitError(_) => failed(scf::failure(
            scf::INTERNAL_ERROR,
            request_id,
            "internal error",
        )),
    }
}
