//! SCF's retry policy for async events, as a pure function of an attempt's outcome.
//!
//! - A function error (user code, runtime, timeout, memory, crash) is retried `retry_num`
//!   times (2 by default): the first retry one minute after the first attempt, the second two
//!   minutes after the second, further ones doubling up to an hour.
//! - A platform or concurrency error is retried with exponential back-off (starting at one
//!   second, capped at an hour between attempts) until the event's time-to-live runs out.
//! - A caller error (the function is gone, the event is invalid) is never retried.
//!
//! Whatever cannot be retried any more, and has not succeeded, becomes a dead letter.

use std::time::Duration;

use nimbus_store::AttemptFate;

/// How an attempt ended, as the retry policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The function returned.
    Success,
    /// The function failed: user code, runtime, timeout, memory limit, crash.
    RunError,
    /// The platform could not run it now: concurrency or memory limits, internal errors.
    Throttled,
    /// The request cannot succeed: the function does not exist, the event is invalid.
    CallerError,
}

/// Delay before the first retry of a function error.
pub const FIRST_RUN_RETRY: Duration = Duration::from_secs(60);
/// First back-off of a throttled event.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// What to do after an attempt that ended as `class` at `now_ms`, for an event that had
/// `attempts` earlier attempts of which `run_errors` were function errors.
pub fn decide(
    class: ErrorClass,
    attempts: u32,
    run_errors: u32,
    retry_num: u32,
    deadline_ms: i64,
    now_ms: i64,
    last_error: (i32, &str),
) -> AttemptFate {
    let dead = || AttemptFate::DeadLetter {
        error_code: last_error.0,
        error_message: last_error.1.to_owned(),
    };
    let (delay, run_error) = match class {
        ErrorClass::Success => return AttemptFate::Finish,
        ErrorClass::CallerError => return dead(),
        ErrorClass::RunError if run_errors >= retry_num => return dead(),
        ErrorClass::RunError => (doubling(FIRST_RUN_RETRY, run_errors), true),
        ErrorClass::Throttled => (doubling(FIRST_BACKOFF, attempts), false),
    };
    let mut next_run_at =
        now_ms.saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
    if next_run_at > deadline_ms {
        // A throttled event keeps trying for its whole time-to-live: its last attempt is at
        // the deadline, not one back-off step before it.
        if run_error || now_ms >= deadline_ms {
            return dead();
        }
        next_run_at = deadline_ms;
    }
    AttemptFate::Retry {
        next_run_at,
        run_error,
    }
}

/// `first`, doubled `n` times, at most [`MAX_BACKOFF`].
fn doubling(first: Duration, n: u32) -> Duration {
    first
        .saturating_mul(1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAR: i64 = i64::MAX / 2;

    fn decide_at(class: ErrorClass, attempts: u32, run_errors: u32, deadline: i64) -> AttemptFate {
        decide(
            class,
            attempts,
            run_errors,
            2,
            deadline,
            1_000,
            (430, "boom"),
        )
    }

    #[test]
    fn success_finishes_and_caller_errors_are_never_retried() {
        assert_eq!(
            decide_at(ErrorClass::Success, 5, 2, FAR),
            AttemptFate::Finish
        );
        assert!(matches!(
            decide_at(ErrorClass::CallerError, 0, 0, FAR),
            AttemptFate::DeadLetter {
                error_code: 430,
                ..
            }
        ));
    }

    #[test]
    fn function_errors_retry_after_one_then_two_minutes_then_give_up() {
        assert_eq!(
            decide_at(ErrorClass::RunError, 0, 0, FAR),
            AttemptFate::Retry {
                next_run_at: 61_000,
                run_error: true
            }
        );
        assert_eq!(
            decide_at(ErrorClass::RunError, 1, 1, FAR),
            AttemptFate::Retry {
                next_run_at: 121_000,
                run_error: true
            }
        );
        assert!(matches!(
            decide_at(ErrorClass::RunError, 2, 2, FAR),
            AttemptFate::DeadLetter { .. }
        ));
        // Throttled attempts in between do not use up function retries.
        assert!(matches!(
            decide_at(ErrorClass::RunError, 7, 1, FAR),
            AttemptFate::Retry {
                run_error: true,
                ..
            }
        ));
    }

    #[test]
    fn throttled_events_back_off_exponentially_until_their_deadline() {
        let delays: Vec<i64> = (0..14)
            .map(
                |attempts| match decide_at(ErrorClass::Throttled, attempts, 0, FAR) {
                    AttemptFate::Retry {
                        next_run_at,
                        run_error: false,
                    } => next_run_at - 1_000,
                    other => panic!("unexpected {other:?}"),
                },
            )
            .collect();
        assert_eq!(&delays[..4], [1_000, 2_000, 4_000, 8_000]);
        assert_eq!(delays[13], 3_600_000, "capped at an hour");
        // The back-off step would pass the deadline: the last attempt is at the deadline.
        assert_eq!(
            decide_at(ErrorClass::Throttled, 3, 0, 5_000),
            AttemptFate::Retry {
                next_run_at: 5_000,
                run_error: false
            }
        );
        // At (or past) the deadline, it gives up.
        assert!(matches!(
            decide_at(ErrorClass::Throttled, 4, 0, 1_000),
            AttemptFate::DeadLetter { .. }
        ));
    }

    #[test]
    fn zero_retries_gives_up_at_the_first_function_error() {
        let fate = decide(ErrorClass::RunError, 0, 0, 0, FAR, 0, (433, "timeout"));
        assert!(matches!(
            fate,
            AttemptFate::DeadLetter {
                error_code: 433,
                ..
            }
        ));
    }
}
