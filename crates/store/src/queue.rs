//! The durable side of async invocation: accepted events, their leases and retries, each
//! attempt's outcome, and dead letters.
//!
//! ```text
//!   accept (batch, synchronous=FULL) ─► async_events: queued ─lease─► leased ─► record_attempts
//!        + invocations: RUNNING                ▲                          │   (batch)
//!                                              └──── retry (queued, later) ┤
//!                                 finish: delete event, final invocation ◄─┤
//!                        dead letter: delete event, insert dead_letters ◄──┘
//! ```
//!
//! An event leaves `async_events` only in the transaction that writes its final record, so a
//! crash at any point leaves it either pending (it runs again: at-least-once) or finished (it
//! never runs again).

use rusqlite::{OptionalExtension, Row, params};

use crate::invocations::{InvocationRecord, upsert};
use crate::{Store, StoreError};

/// An async event as accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Request id handed to the caller.
    pub request_id: String,
    /// Namespace of the function.
    pub namespace: String,
    /// Function name.
    pub function_name: String,
    /// The event, JSON text.
    pub event: String,
    /// When it was accepted, Unix milliseconds.
    pub accepted_time: i64,
    /// After this time (Unix ms) it is not run or retried any more.
    pub deadline: i64,
    /// How many times a function error is retried.
    pub retry_num: u32,
}

/// A leased event with its history so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedEvent {
    /// The event.
    pub event: AsyncEvent,
    /// Attempts made so far.
    pub attempts: u32,
    /// Of those, how many failed in the function (these count against `retry_num`).
    pub run_errors: u32,
}

/// One attempt's outcome, kept for the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    /// 1 for the first attempt.
    pub attempt: u32,
    /// Start, Unix ms.
    pub start_time: i64,
    /// End, Unix ms.
    pub end_time: i64,
    /// 0 on success, else the SCF status code.
    pub ret_code: i32,
    /// Return value, JSON text.
    pub ret_msg: String,
    /// SCF error object, JSON text.
    pub err_msg: String,
    /// Duration, microseconds.
    pub duration_us: u64,
    /// Peak memory, bytes.
    pub mem_usage: u64,
    /// The attempt's log.
    pub log: String,
}

/// What happens to an event after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptFate {
    /// Run it again at this time (Unix ms); `run_error` says whether the attempt failed in
    /// the function (which counts against the retry number).
    Retry {
        /// When.
        next_run_at: i64,
        /// Whether the function itself failed.
        run_error: bool,
    },
    /// It is done (succeeded, or failed for good without a dead letter).
    Finish,
    /// It failed for good: keep it as a dead letter.
    DeadLetter {
        /// Status code of the last attempt.
        error_code: i32,
        /// Error message of the last attempt.
        error_message: String,
    },
}

/// An event that failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its request id.
    pub request_id: String,
    /// Namespace of the function.
    pub namespace: String,
    /// Function name.
    pub function_name: String,
    /// The event, JSON text.
    pub event: String,
    /// When it was accepted, Unix ms.
    pub accepted_time: i64,
    /// When it failed for good, Unix ms.
    pub failed_time: i64,
    /// Attempts made.
    pub attempts: u32,
    /// Status code of the last attempt.
    pub error_code: i32,
    /// Error message of the last attempt.
    pub error_message: String,
}

const EVENT_COLUMNS: &str = "request_id, namespace, function_name, event, accepted_time, \
     deadline, retry_num, attempts, run_errors";

fn queued_from_row(row: &Row<'_>) -> rusqlite::Result<QueuedEvent> {
    Ok(QueuedEvent {
        event: AsyncEvent {
            request_id: row.get(0)?,
            namespace: row.get(1)?,
            function_name: row.get(2)?,
            event: row.get(3)?,
            accepted_time: row.get(4)?,
            deadline: row.get(5)?,
            retry_num: row.get(6)?,
        },
        attempts: row.get(7)?,
        run_errors: row.get(8)?,
    })
}

const DEAD_COLUMNS: &str = "request_id, namespace, function_name, event, accepted_time, \
     failed_time, attempts, error_code, error_message";

fn dead_from_row(row: &Row<'_>) -> rusqlite::Result<DeadLetter> {
    Ok(DeadLetter {
        request_id: row.get(0)?,
        namespace: row.get(1)?,
        function_name: row.get(2)?,
        event: row.get(3)?,
        accepted_time: row.get(4)?,
        failed_time: row.get(5)?,
        attempts: row.get(6)?,
        error_code: row.get(7)?,
        error_message: row.get(8)?,
    })
}

impl Store {
    /// Durably accepts a batch of async events in one transaction with a full flush: each
    /// event row and its `RUNNING` invocation record. Returns, per event, whether it was
    /// accepted (`false`: its request id exists already).
    ///
    /// # Errors
    /// [`StoreError::Sql`]; then nothing of the batch was accepted.
    pub async fn accept_async_events(
        &self,
        events: Vec<(AsyncEvent, InvocationRecord)>,
    ) -> Result<Vec<bool>, StoreError> {
        self.with(move |conn| {
            // Accepting is a promise to run: flush to disk, not only to the OS, before the
            // API answers. One flush covers the whole batch.
            conn.pragma_update(None, "synchronous", "FULL")?;
            let result = accept_batch(conn, &events);
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            result
        })
        .await
    }

    /// Makes every leased event runnable again (at start-up of a single node: whoever held
    /// the leases is gone). Returns how many there were.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn requeue_leased_events(&self) -> Result<u64, StoreError> {
        self.with(|conn| {
            let n = conn.execute(
                "UPDATE async_events SET state = 'queued', lease_until = 0 WHERE state = 'leased'",
                [],
            )?;
            Ok(n as u64)
        })
        .await
    }

    /// Leases up to `limit` events that are due at `now` (queued and due, or leased with an
    /// expired lease), oldest due first, taking at most `room(namespace, name)` events of any
    /// one function (its remaining async concurrency).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn lease_due_events(
        &self,
        now: i64,
        lease_until: i64,
        limit: u32,
        room: impl Fn(&str, &str) -> u32 + Send + 'static,
    ) -> Result<Vec<QueuedEvent>, StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let mut picked: Vec<String> = Vec::new();
            {
                // Candidates: expired leases first (their events are the oldest), then queued
                // events in due order; a few times the limit, so that functions with no room
                // left do not hide the others. Each query walks `async_events_due` from its
                // start, so a lease costs the same with a backlog of millions as with none.
                let window = i64::from(limit) * 8 + 64;
                let mut candidates = Vec::new();
                for query in [
                    "SELECT request_id, namespace, function_name FROM async_events \
                     WHERE state = 'leased' AND lease_until < ?1 LIMIT ?2",
                    "SELECT request_id, namespace, function_name FROM async_events \
                     WHERE state = 'queued' AND next_run_at <= ?1 \
                     ORDER BY next_run_at, rowid LIMIT ?2",
                ] {
                    let mut statement = tx.prepare_cached(query)?;
                    let rows = statement.query_map(params![now, window], |row| {
                        Ok((
                            row.get::<_, String>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, String>(2)?,
                        ))
                    })?;
                    candidates.extend(rows.collect::<rusqlite::Result<Vec<_>>>()?);
                }
                let mut taken: std::collections::HashMap<(String, String), u32> =
                    Default::default();
                for (request_id, namespace, name) in candidates {
                    if picked.len() as u32 >= limit {
                        break;
                    }
                    let count = taken.entry((namespace.clone(), name.clone())).or_default();
                    if *count < room(&namespace, &name) {
                        *count += 1;
                        picked.push(request_id);
                    }
                }
            }
            let mut leased = Vec::with_capacity(picked.len());
            for request_id in &picked {
                let row = tx
                    .prepare_cached(&format!(
                        "UPDATE async_events SET state = 'leased', lease_until = ?2 \
                         WHERE request_id = ?1 RETURNING {EVENT_COLUMNS}"
                    ))?
                    .query_row(params![request_id, lease_until], queued_from_row)
                    .optional()?;
                leased.extend(row);
            }
            tx.commit()?;
            Ok(leased)
        })
        .await
    }

    /// When the next queued event becomes due (Unix ms), if any is queued.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn next_due_time(&self) -> Result<Option<i64>, StoreError> {
        self.with(|conn| {
            // Two index lookups rather than one scan of every pending event.
            let due: Option<i64> = conn
                .prepare_cached(
                    "SELECT MIN(due) FROM ( \
                       SELECT MIN(next_run_at) AS due FROM async_events WHERE state = 'queued' \
                       UNION ALL \
                       SELECT MIN(lease_until) FROM async_events WHERE state = 'leased')",
                )?
                .query_row([], |row| row.get(0))?;
            Ok(due)
        })
        .await
    }

    /// Number of pending (queued or leased) events per function.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn pending_event_counts(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        self.with(|conn| {
            let mut statement = conn.prepare(
                "SELECT namespace, function_name, COUNT(*) FROM async_events \
                 GROUP BY namespace, function_name",
            )?;
            let counts = statement
                .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(counts)
        })
        .await
    }

    /// Stores one attempt and the event's new state, in one transaction. Returns false (and
    /// stores nothing) when the event is no longer pending, e.g. it was terminated meanwhile.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn record_attempt(
        &self,
        attempt: AttemptRecord,
        invocation: InvocationRecord,
        fate: AttemptFate,
    ) -> Result<bool, StoreError> {
        let recorded = self
            .record_attempts(vec![(attempt, invocation, fate)])
            .await?;
        Ok(recorded.first().copied().unwrap_or(false))
    }

    /// Stores several attempts and their events' new states in one transaction (one write of
    /// the pages they share instead of one per attempt). Returns, per attempt, whether it was
    /// stored: false when its event is no longer pending, e.g. it was terminated meanwhile.
    ///
    /// # Errors
    /// [`StoreError::Sql`]; then none of the batch was stored.
    pub async fn record_attempts(
        &self,
        batch: Vec<(AttemptRecord, InvocationRecord, AttemptFate)>,
    ) -> Result<Vec<bool>, StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let mut recorded = Vec::with_capacity(batch.len());
            for (attempt, invocation, fate) in &batch {
                recorded.push(record_one_attempt(&tx, attempt, invocation, fate)?);
            }
            tx.commit()?;
            Ok(recorded)
        })
        .await
    }

    /// Removes a pending event and stores its final (aborted) record. Returns false when the
    /// event was no longer pending.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn abort_async_event(&self, record: InvocationRecord) -> Result<bool, StoreError> {
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let deleted = tx.execute(
                "DELETE FROM async_events WHERE request_id = ?1",
                params![record.request_id],
            )?;
            if deleted == 0 {
                return Ok(false);
            }
            upsert(&tx, &record)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// Puts `log`, what a gracefully terminated attempt wrote until it ended, into the
    /// event's `ABORTED` record. Returns false when there is no such record.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn add_aborted_log(&self, request_id: &str, log: String) -> Result<bool, StoreError> {
        let request_id = request_id.to_owned();
        self.with(move |conn| {
            let updated = conn.execute(
                "UPDATE invocations SET log = ?2 WHERE request_id = ?1 AND status = 'ABORTED'",
                params![request_id, log],
            )?;
            Ok(updated > 0)
        })
        .await
    }

    /// Whether an event is still pending (queued or leased).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn is_event_pending(&self, request_id: &str) -> Result<bool, StoreError> {
        let request_id = request_id.to_owned();
        self.with(move |conn| {
            let pending: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM async_events WHERE request_id = ?1)",
                params![request_id],
                |row| row.get(0),
            )?;
            Ok(pending)
        })
        .await
    }

    /// Every attempt of one event, first first.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn list_attempts(&self, request_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        let request_id = request_id.to_owned();
        self.with(move |conn| {
            let mut statement = conn.prepare(
                "SELECT attempt, start_time, end_time, ret_code, ret_msg, err_msg, duration_us, \
                 mem_usage, log FROM async_attempts WHERE request_id = ?1 ORDER BY attempt",
            )?;
            let attempts = statement
                .query_map(params![request_id], |row| {
                    Ok(AttemptRecord {
                        attempt: row.get(0)?,
                        start_time: row.get(1)?,
                        end_time: row.get(2)?,
                        ret_code: row.get(3)?,
                        ret_msg: row.get(4)?,
                        err_msg: row.get(5)?,
                        duration_us: row.get(6)?,
                        mem_usage: row.get(7)?,
                        log: row.get(8)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(attempts)
        })
        .await
    }

    /// A function's dead letters, newest first: the page and the total count.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn list_dead_letters(
        &self,
        namespace: &str,
        function_name: &str,
        offset: u32,
        limit: u32,
    ) -> Result<(u64, Vec<DeadLetter>), StoreError> {
        let (namespace, function_name) = (namespace.to_owned(), function_name.to_owned());
        self.with(move |conn| {
            let total: u64 = conn.query_row(
                "SELECT COUNT(*) FROM dead_letters WHERE namespace = ?1 AND function_name = ?2",
                params![namespace, function_name],
                |row| row.get(0),
            )?;
            let mut statement = conn.prepare(&format!(
                "SELECT {DEAD_COLUMNS} FROM dead_letters \
                 WHERE namespace = ?1 AND function_name = ?2 \
                 ORDER BY failed_time DESC, rowid DESC LIMIT ?3 OFFSET ?4"
            ))?;
            let letters = statement
                .query_map(
                    params![namespace, function_name, limit, offset],
                    dead_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((total, letters))
        })
        .await
    }

    /// Replays a dead letter: removes it and accepts its event again under a new request id,
    /// in one durable transaction. Returns the dead letter, or `None` if there is none with
    /// that id.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn replay_dead_letter(
        &self,
        request_id: &str,
        function: (&str, &str),
        replay: impl FnOnce(&DeadLetter) -> (AsyncEvent, InvocationRecord) + Send + 'static,
    ) -> Result<Option<DeadLetter>, StoreError> {
        let request_id = request_id.to_owned();
        let (namespace, function_name) = (function.0.to_owned(), function.1.to_owned());
        self.with(move |conn| {
            conn.pragma_update(None, "synchronous", "FULL")?;
            let result = (|| {
                let tx = conn.transaction()?;
                let letter = tx
                    .query_row(
                        &format!(
                            "SELECT {DEAD_COLUMNS} FROM dead_letters WHERE request_id = ?1 \
                             AND namespace = ?2 AND function_name = ?3"
                        ),
                        params![request_id, namespace, function_name],
                        dead_from_row,
                    )
                    .optional()?;
                let Some(letter) = letter else {
                    return Ok(None);
                };
                tx.execute(
                    "DELETE FROM dead_letters WHERE request_id = ?1",
                    params![request_id],
                )?;
                let (event, record) = replay(&letter);
                insert_event(&tx, &event)?;
                upsert(&tx, &record)?;
                tx.commit()?;
                Ok(Some(letter))
            })();
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            result
        })
        .await
    }
}

fn accept_batch(
    conn: &mut rusqlite::Connection,
    events: &[(AsyncEvent, InvocationRecord)],
) -> Result<Vec<bool>, StoreError> {
    let tx = conn.transaction()?;
    let mut accepted = Vec::with_capacity(events.len());
    for (event, record) in events {
        let inserted = insert_event(&tx, event)?;
        if inserted {
            upsert(&tx, record)?;
        }
        accepted.push(inserted);
    }
    tx.commit()?;
    Ok(accepted)
}

fn insert_event(tx: &rusqlite::Transaction<'_>, event: &AsyncEvent) -> rusqlite::Result<bool> {
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO async_events (request_id, namespace, function_name, event, \
             accepted_time, state, next_run_at, deadline, retry_num) \
             VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?5, ?6, ?7)",
        )?
        .execute(params![
            event.request_id,
            event.namespace,
            event.function_name,
            event.event,
            event.accepted_time,
            event.deadline,
            event.retry_num,
        ])?;
    Ok(inserted == 1)
}

/// One attempt of [`Store::record_attempts`]: its row, its invocation record and its event's
/// new state; false (and nothing written) when the event is no longer pending.
fn record_one_attempt(
    tx: &rusqlite::Transaction<'_>,
    attempt: &AttemptRecord,
    invocation: &InvocationRecord,
    fate: &AttemptFate,
) -> rusqlite::Result<bool> {
    let request_id = &invocation.request_id;
    let event: Option<QueuedEvent> = tx
        .prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM async_events WHERE request_id = ?1"
        ))?
        .query_row(params![request_id], queued_from_row)
        .optional()?;
    let Some(event) = event else { return Ok(false) };
    insert_attempt(tx, request_id, attempt)?;
    upsert(tx, invocation)?;
    match fate {
        AttemptFate::Retry {
            next_run_at,
            run_error,
        } => {
            tx.prepare_cached(
                "UPDATE async_events SET state = 'queued', lease_until = 0, \
                 attempts = attempts + 1, run_errors = run_errors + ?2, \
                 next_run_at = ?3 WHERE request_id = ?1",
            )?
            .execute(params![request_id, i64::from(*run_error), next_run_at])?;
        }
        AttemptFate::Finish => {
            tx.prepare_cached("DELETE FROM async_events WHERE request_id = ?1")?
                .execute(params![request_id])?;
        }
        AttemptFate::DeadLetter {
            error_code,
            error_message,
        } => {
            tx.prepare_cached("DELETE FROM async_events WHERE request_id = ?1")?
                .execute(params![request_id])?;
            tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO dead_letters ({DEAD_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))?
            .execute(params![
                request_id,
                event.event.namespace,
                event.event.function_name,
                event.event.event,
                event.event.accepted_time,
                attempt.end_time,
                event.attempts + 1,
                error_code,
                error_message,
            ])?;
        }
    }
    Ok(true)
}

fn insert_attempt(
    tx: &rusqlite::Transaction<'_>,
    request_id: &str,
    attempt: &AttemptRecord,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO async_attempts (request_id, attempt, start_time, end_time, \
         ret_code, ret_msg, err_msg, duration_us, mem_usage, log) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        request_id,
        attempt.attempt,
        attempt.start_time,
        attempt.end_time,
        attempt.ret_code,
        attempt.ret_msg,
        attempt.err_msg,
        attempt.duration_us,
        attempt.mem_usage,
        attempt.log,
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{InvocationStatus, InvokeType};

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("nimbus.db")).expect("open store");
        (dir, store)
    }

    fn event(id: &str, function: &str, at: i64) -> (AsyncEvent, InvocationRecord) {
        let event = AsyncEvent {
            request_id: id.into(),
            namespace: "default".into(),
            function_name: function.into(),
            event: "{}".into(),
            accepted_time: at,
            deadline: at + 1000,
            retry_num: 2,
        };
        let record = record(id, function, InvocationStatus::Running);
        (event, record)
    }

    fn record(id: &str, function: &str, status: InvocationStatus) -> InvocationRecord {
        InvocationRecord {
            request_id: id.into(),
            namespace: "default".into(),
            function_name: function.into(),
            invoke_type: InvokeType::Event,
            status,
            start_time: 1,
            end_time: 0,
            ret_code: 0,
            ret_msg: String::new(),
            err_msg: String::new(),
            duration_us: 0,
            bill_duration_ms: 0,
            mem_usage: 0,
            log: String::new(),
            retry_num: 0,
        }
    }

    fn any(_: &str, _: &str) -> u32 {
        u32::MAX
    }

    #[tokio::test]
    async fn leases_no_more_than_each_function_has_room_for() {
        let (_dir, store) = open();
        let events = (0..5)
            .map(|i| event(&format!("f{i}"), "f", i))
            .chain([event("g0", "g", 9)]);
        store
            .accept_async_events(events.collect())
            .await
            .expect("accept");
        let room = |_: &str, name: &str| if name == "f" { 2 } else { 1 };
        let leased = store
            .lease_due_events(100, 200, 10, room)
            .await
            .expect("lease");
        let ids: Vec<_> = leased.iter().map(|q| q.event.request_id.as_str()).collect();
        assert_eq!(ids, ["f0", "f1", "g0"]);
    }

    fn attempt(n: u32, code: i32) -> AttemptRecord {
        AttemptRecord {
            attempt: n,
            start_time: 10,
            end_time: 20,
            ret_code: code,
            ret_msg: String::new(),
            err_msg: String::new(),
            duration_us: 5,
            mem_usage: 1,
            log: format!("attempt {n}"),
        }
    }

    #[tokio::test]
    async fn accepts_batches_and_refuses_duplicates() {
        let (_dir, store) = open();
        let accepted = store
            .accept_async_events(vec![
                event("a", "f", 1),
                event("b", "f", 2),
                event("a", "f", 3),
            ])
            .await
            .expect("accept");
        assert_eq!(accepted, [true, true, false]);
        assert_eq!(
            store.pending_event_counts().await.expect("counts"),
            [("default".into(), "f".into(), 2)]
        );
    }

    #[tokio::test]
    async fn leases_due_events_once_and_expired_leases_again() {
        let (_dir, store) = open();
        store
            .accept_async_events(vec![event("a", "f", 1), event("b", "g", 2)])
            .await
            .expect("accept");
        let first = store
            .lease_due_events(10, 100, 10, any)
            .await
            .expect("lease");
        assert_eq!(first.len(), 2);
        assert!(
            store
                .lease_due_events(50, 150, 10, any)
                .await
                .expect("lease")
                .is_empty()
        );
        // Lease expired at 100: runnable again.
        let again = store
            .lease_due_events(101, 200, 10, any)
            .await
            .expect("lease");
        assert_eq!(again.len(), 2);
        assert_eq!(store.requeue_leased_events().await.expect("requeue"), 2);
        let excluded = |_: &str, name: &str| u32::from(name != "f");
        let only_g = store
            .lease_due_events(101, 200, 10, excluded)
            .await
            .expect("lease");
        assert_eq!(
            only_g
                .iter()
                .map(|q| q.event.request_id.as_str())
                .collect::<Vec<_>>(),
            ["b"]
        );
    }

    #[tokio::test]
    async fn retry_finish_and_dead_letter_move_the_event() {
        let (_dir, store) = open();
        store
            .accept_async_events(vec![
                event("a", "f", 1),
                event("b", "f", 1),
                event("c", "f", 1),
            ])
            .await
            .expect("accept");
        store
            .lease_due_events(5, 100, 10, any)
            .await
            .expect("lease");

        let retry = AttemptFate::Retry {
            next_run_at: 500,
            run_error: true,
        };
        let failed = record("a", "f", InvocationStatus::Running);
        assert!(
            store
                .record_attempt(attempt(1, 430), failed, retry)
                .await
                .expect("record")
        );
        assert_eq!(store.next_due_time().await.expect("due"), Some(100));
        let done = record("b", "f", InvocationStatus::Finished);
        assert!(
            store
                .record_attempt(attempt(1, 0), done, AttemptFate::Finish)
                .await
                .expect("record")
        );
        let dead = AttemptFate::DeadLetter {
            error_code: 433,
            error_message: "timed out".into(),
        };
        let gave_up = record("c", "f", InvocationStatus::Failed);
        assert!(
            store
                .record_attempt(attempt(1, 433), gave_up, dead)
                .await
                .expect("record")
        );

        let leased = store
            .lease_due_events(500, 600, 10, any)
            .await
            .expect("lease");
        assert_eq!(leased.len(), 1);
        assert_eq!((leased[0].attempts, leased[0].run_errors), (1, 1));
        assert!(!store.is_event_pending("b").await.expect("pending"));
        let (total, letters) = store
            .list_dead_letters("default", "f", 0, 10)
            .await
            .expect("list");
        assert_eq!(total, 1);
        assert_eq!((letters[0].error_code, letters[0].attempts), (433, 1));
        assert_eq!(
            store.list_attempts("a").await.expect("attempts")[0].log,
            "attempt 1"
        );

        // Another function cannot replay (or move) this function's dead letter.
        let foreign = store
            .replay_dead_letter("c", ("default", "g"), |_| {
                unreachable!("not this function's")
            })
            .await
            .expect("replay");
        assert!(foreign.is_none());
        assert_eq!(
            store
                .list_dead_letters("default", "f", 0, 10)
                .await
                .expect("list")
                .0,
            1
        );
        // Replay puts the event back under a new id.
        let replayed = store
            .replay_dead_letter("c", ("default", "f"), |letter| {
                let (mut again, record) = event("c2", &letter.function_name, 700);
                again.event = letter.event.clone();
                (again, record)
            })
            .await
            .expect("replay");
        assert!(replayed.is_some());
        assert!(store.is_event_pending("c2").await.expect("pending"));
        assert_eq!(
            store
                .list_dead_letters("default", "f", 0, 10)
                .await
                .expect("list")
                .0,
            0
        );
    }

    #[tokio::test]
    async fn an_aborted_event_ignores_a_late_attempt() {
        let (_dir, store) = open();
        store
            .accept_async_events(vec![event("a", "f", 1)])
            .await
            .expect("accept");
        let aborted = record("a", "f", InvocationStatus::Aborted);
        assert!(store.abort_async_event(aborted).await.expect("abort"));
        let late = record("a", "f", InvocationStatus::Finished);
        assert!(
            !store
                .record_attempt(attempt(1, 0), late, AttemptFate::Finish)
                .await
                .expect("record")
        );
        let got = store
            .get_invocation("a")
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(got.status, InvocationStatus::Aborted);
    }

    #[tokio::test]
    async fn a_batch_of_attempts_gives_each_event_its_own_fate() {
        let (_dir, store) = open();
        let events = ["a", "b", "c"].map(|id| event(id, "f", 1));
        store
            .accept_async_events(events.into())
            .await
            .expect("accept");
        let aborted = record("c", "f", InvocationStatus::Aborted);
        assert!(store.abort_async_event(aborted).await.expect("abort"));
        let retry = AttemptFate::Retry {
            next_run_at: 100,
            run_error: true,
        };
        let batch = vec![
            (
                attempt(1, 0),
                record("a", "f", InvocationStatus::Finished),
                AttemptFate::Finish,
            ),
            (
                attempt(1, 430),
                record("b", "f", InvocationStatus::Running),
                retry,
            ),
            (
                attempt(1, 0),
                record("c", "f", InvocationStatus::Finished),
                AttemptFate::Finish,
            ),
        ];
        let recorded = store.record_attempts(batch).await.expect("record");
        assert_eq!(recorded, [true, true, false], "c was aborted before");

        assert!(!store.is_event_pending("a").await.expect("pending"));
        assert_eq!(store.list_attempts("a").await.expect("attempts").len(), 1);
        let leased = store
            .lease_due_events(500, 600, 10, any)
            .await
            .expect("lease");
        let ids: Vec<_> = leased.iter().map(|q| q.event.request_id.as_str()).collect();
        assert_eq!(ids, ["b"], "only the retried event is still queued");
        assert!(store.list_attempts("c").await.expect("attempts").is_empty());
        let c = store
            .get_invocation("c")
            .await
            .expect("get")
            .expect("exists");
        assert_eq!(
            c.status,
            InvocationStatus::Aborted,
            "the late attempt is not stored"
        );
    }
}
