//! Queue behaviour with a real store and a scripted executor, on tokio's paused clock.

use std::sync::Mutex;

use nimbus_store::{InvocationStatus, InvokeType};

use super::*;

/// Answers each attempt from a script (per request id) and notes when it ran.
#[derive(Default)]
struct Script {
    outcomes: Mutex<HashMap<String, Vec<ErrorClass>>>,
    runs: Mutex<Vec<(String, i64)>>,
    clock: Mutex<Option<Clock>>,
    hang: bool,
    /// With `hang`: an interrupted attempt ends, logging this.
    interrupted: tokio::sync::Notify,
    on_interrupt: Option<&'static str>,
}

impl Executor for Arc<Script> {
    fn execute(&self, event: &QueuedEvent) -> impl Future<Output = AttemptOutcome> + Send {
        let id = event.event.request_id.clone();
        let now = self.clock.lock().expect("lock").map_or(0, |c| c.now_ms());
        self.runs.lock().expect("lock").push((id.clone(), now));
        let class = {
            let mut outcomes = self.outcomes.lock().expect("lock");
            let script = outcomes.entry(id.clone()).or_default();
            if script.is_empty() {
                ErrorClass::Success
            } else {
                script.remove(0)
            }
        };
        let hang = self.hang;
        let mut record = record_for(&event.event, class);
        let script = Arc::clone(self);
        async move {
            if hang {
                match script.on_interrupt {
                    Some(log) => {
                        script.interrupted.notified().await;
                        record.log = log.into();
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            let error_message = if class == ErrorClass::Success {
                ""
            } else {
                "boom"
            };
            AttemptOutcome {
                record,
                class,
                error_message: error_message.into(),
            }
        }
    }

    fn interrupt(&self, _event: &QueuedEvent) {
        self.interrupted.notify_one();
    }
}

fn record_for(event: &AsyncEvent, class: ErrorClass) -> InvocationRecord {
    InvocationRecord {
        request_id: event.request_id.clone(),
        namespace: event.namespace.clone(),
        function_name: event.function_name.clone(),
        invoke_type: InvokeType::Event,
        status: InvocationStatus::Running,
        start_time: event.accepted_time,
        end_time: 0,
        ret_code: match class {
            ErrorClass::Success => 0,
            ErrorClass::RunError => 430,
            ErrorClass::Throttled => 432,
            ErrorClass::CallerError => 435,
        },
        ret_msg: String::new(),
        err_msg: String::new(),
        duration_us: 1,
        bill_duration_ms: 1,
        mem_usage: 1,
        log: String::new(),
        retry_num: 0,
    }
}

async fn start(
    script: &Arc<Script>,
    config: QueueConfig,
) -> (tempfile::TempDir, Queue<Arc<Script>>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Store::open(&dir.path().join("nimbus.db")).expect("open");
    let queue = Queue::start(store, Arc::clone(script), config)
        .await
        .expect("start");
    *script.clock.lock().expect("lock") = Some(queue.inner.clock);
    (dir, queue)
}

fn new_event(
    queue: &Queue<Arc<Script>>,
    id: &str,
    retry_num: u32,
) -> (AsyncEvent, InvocationRecord) {
    let now = queue.now_ms();
    let event = AsyncEvent {
        request_id: id.into(),
        namespace: "default".into(),
        function_name: "f".into(),
        event: "{}".into(),
        accepted_time: now,
        deadline: now + 24 * 3600 * 1000,
        retry_num,
    };
    let record = record_for(&event, ErrorClass::Success);
    (event, record)
}

/// Advances the paused clock in small steps until `done` holds or `limit` passes.
async fn run_until(limit: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + limit;
    while !done() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn status(queue: &Queue<Arc<Script>>, id: &str) -> InvocationStatus {
    let record = queue
        .inner
        .store
        .get_invocation(id)
        .await
        .expect("get")
        .expect("exists");
    record.status
}

#[tokio::test(start_paused = true)]
async fn retries_function_errors_after_one_and_two_minutes_then_dead_letters() {
    let script = Arc::new(Script::default());
    script.outcomes.lock().expect("lock").insert(
        "r1".into(),
        vec![
            ErrorClass::RunError,
            ErrorClass::RunError,
            ErrorClass::RunError,
        ],
    );
    let (_dir, queue) = start(&script, QueueConfig::default()).await;
    let (event, record) = new_event(&queue, "r1", 2);
    let accepted_at = event.accepted_time;
    queue.accept(event, record).await.expect("accept");

    run_until(Duration::from_secs(400), || {
        script.runs.lock().expect("lock").len() >= 3
    })
    .await;
    // Let the last attempt be recorded.
    run_until(Duration::from_secs(5), || false).await;

    let runs = script.runs.lock().expect("lock").clone();
    assert_eq!(runs.len(), 3, "{runs:?}");
    let offsets: Vec<i64> = runs.iter().map(|(_, at)| at - accepted_at).collect();
    assert!(offsets[0] < 2_000, "{offsets:?}");
    assert!(
        (60_000..63_000).contains(&(offsets[1] - offsets[0])),
        "{offsets:?}"
    );
    assert!(
        (120_000..123_000).contains(&(offsets[2] - offsets[1])),
        "{offsets:?}"
    );
    assert_eq!(status(&queue, "r1").await, InvocationStatus::Failed);
    let (total, letters) = queue
        .inner
        .store
        .list_dead_letters("default", "f", 0, 10)
        .await
        .expect("dl");
    assert_eq!(
        (total, letters[0].attempts, letters[0].error_code),
        (1, 3, 430)
    );
    assert_eq!(letters[0].error_message, "boom");
    assert_eq!(
        queue
            .inner
            .store
            .list_attempts("r1")
            .await
            .expect("attempts")
            .len(),
        3
    );
    queue.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn throttled_events_back_off_and_then_succeed() {
    let script = Arc::new(Script::default());
    script.outcomes.lock().expect("lock").insert(
        "r1".into(),
        vec![ErrorClass::Throttled, ErrorClass::Throttled],
    );
    let (_dir, queue) = start(&script, QueueConfig::default()).await;
    let (event, record) = new_event(&queue, "r1", 0);
    queue.accept(event, record).await.expect("accept");
    run_until(Duration::from_secs(30), || {
        script.runs.lock().expect("lock").len() >= 3
    })
    .await;
    run_until(Duration::from_secs(2), || false).await;

    let runs = script.runs.lock().expect("lock").clone();
    assert_eq!(runs.len(), 3);
    let gaps: Vec<i64> = runs.windows(2).map(|w| w[1].1 - w[0].1).collect();
    assert!(
        (1_000..1_500).contains(&gaps[0]) && (2_000..2_500).contains(&gaps[1]),
        "{gaps:?}"
    );
    assert_eq!(status(&queue, "r1").await, InvocationStatus::Finished);
    queue.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn caller_errors_go_straight_to_dead_letters() {
    let script = Arc::new(Script::default());
    script
        .outcomes
        .lock()
        .expect("lock")
        .insert("r1".into(), vec![ErrorClass::CallerError]);
    let (_dir, queue) = start(&script, QueueConfig::default()).await;
    let (event, record) = new_event(&queue, "r1", 2);
    queue.accept(event, record).await.expect("accept");
    run_until(Duration::from_secs(120), || false).await;
    assert_eq!(script.runs.lock().expect("lock").len(), 1);
    assert_eq!(status(&queue, "r1").await, InvocationStatus::Failed);
    queue.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn refuses_events_past_the_pending_limit_and_duplicates() {
    let script = Arc::new(Script {
        hang: true,
        ..Script::default()
    });
    let config = QueueConfig {
        max_pending_per_function: 2,
        ..QueueConfig::default()
    };
    let (_dir, queue) = start(&script, config).await;
    for id in ["a", "b"] {
        let (event, record) = new_event(&queue, id, 0);
        queue.accept(event, record).await.expect("accept");
    }
    let (event, record) = new_event(&queue, "c", 0);
    assert!(matches!(
        queue.accept(event, record).await,
        Err(QueueError::Full(_))
    ));
    let (event, record) = new_event(&queue, "a", 0);
    // A duplicate is refused by the store; the limit check comes first here.
    assert!(queue.accept(event, record).await.is_err());
    queue.shutdown().await;
}

/// A queue running the attempt of event `r1` with `script`, and that event's aborted record.
async fn running_attempt(
    script: &Arc<Script>,
) -> (tempfile::TempDir, Queue<Arc<Script>>, InvocationRecord) {
    let (dir, queue) = start(script, QueueConfig::default()).await;
    let (event, record) = new_event(&queue, "r1", 2);
    queue.accept(event.clone(), record).await.expect("accept");
    run_until(Duration::from_secs(5), || {
        !script.runs.lock().expect("lock").is_empty()
    })
    .await;
    let mut aborted = record_for(&event, ErrorClass::Success);
    aborted.status = InvocationStatus::Aborted;
    (dir, queue, aborted)
}

#[tokio::test(start_paused = true)]
async fn terminate_stops_a_running_attempt_and_records_it_aborted() {
    let script = Arc::new(Script {
        hang: true,
        ..Script::default()
    });
    let (_dir, queue, aborted) = running_attempt(&script).await;
    assert!(
        queue
            .terminate(aborted.clone(), false)
            .await
            .expect("terminate")
    );
    assert!(
        !queue
            .terminate(aborted, false)
            .await
            .expect("terminate twice")
    );
    run_until(Duration::from_secs(2), || false).await;
    assert_eq!(status(&queue, "r1").await, InvocationStatus::Aborted);
    assert_eq!(queue.inner.lock().running_total, 0);
    queue.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_graceful_termination_interrupts_the_attempt_and_keeps_its_log() {
    for (ends, gracefully) in [(true, true), (false, true), (true, false)] {
        let script = Arc::new(Script {
            hang: true,
            on_interrupt: ends.then_some("cleaning up\n"),
            ..Script::default()
        });
        let (_dir, queue, aborted) = running_attempt(&script).await;
        assert!(
            queue
                .terminate(aborted, gracefully)
                .await
                .expect("terminate")
        );
        // Past the termination grace: an attempt that did not end was dropped.
        run_until(Duration::from_secs(6), || false).await;
        assert_eq!(queue.inner.lock().running_total, 0);
        let record = queue
            .inner
            .store
            .get_invocation("r1")
            .await
            .expect("read")
            .expect("record");
        assert_eq!(record.status, InvocationStatus::Aborted);
        let kept = if ends && gracefully {
            "cleaning up\n"
        } else {
            ""
        };
        assert_eq!(record.log, kept, "ends {ends}, gracefully {gracefully}");
        queue.shutdown().await;
    }
}

#[tokio::test(start_paused = true)]
async fn never_runs_more_than_the_per_function_limit() {
    let script = Arc::new(Script {
        hang: true,
        ..Script::default()
    });
    let config = QueueConfig {
        per_function_running: 2,
        ..QueueConfig::default()
    };
    let (_dir, queue) = start(&script, config).await;
    for i in 0..5 {
        let (event, record) = new_event(&queue, &format!("r{i}"), 0);
        queue.accept(event, record).await.expect("accept");
    }
    run_until(Duration::from_secs(10), || false).await;
    assert_eq!(script.runs.lock().expect("lock").len(), 2);
    assert_eq!(queue.inner.lock().running_total, 2);
    queue.shutdown().await;
}
