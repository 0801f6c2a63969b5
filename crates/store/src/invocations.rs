//! Invocation records (what `GetFunctionLogs` reads) and accepted async events.
//!
//! An async event is written to `async_events` before the API answers, and removed in the same
//! transaction that stores its final invocation record, so that a restart finds exactly the
//! events that were accepted and not finished.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::types::Value;
use rusqlite::{OptionalExtension, Row, params};

use crate::{Store, StoreError};

/// How an invocation was requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeType {
    /// Synchronous: the caller waits for the result.
    RequestResponse,
    /// Asynchronous: the caller gets a request id at once.
    Event,
}

impl InvokeType {
    /// The SCF name.
    pub fn as_str(self) -> &'static str {
        match self {
            InvokeType::RequestResponse => "RequestResponse",
            InvokeType::Event => "Event",
        }
    }

    fn parse(text: &str) -> Result<InvokeType, StoreError> {
        match text {
            "RequestResponse" => Ok(InvokeType::RequestResponse),
            "Event" => Ok(InvokeType::Event),
            other => Err(StoreError::Corrupt(format!("invoke type {other:?}"))),
        }
    }
}

/// Where an invocation stands (SCF's async event statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationStatus {
    /// Accepted or running.
    Running,
    /// Finished, whatever the function returned.
    Finished,
    /// Finished with an error.
    Failed,
    /// Stopped on request before it finished.
    Aborted,
}

impl InvocationStatus {
    /// The SCF name.
    pub fn as_str(self) -> &'static str {
        match self {
            InvocationStatus::Running => "RUNNING",
            InvocationStatus::Finished => "FINISHED",
            InvocationStatus::Failed => "FAILED",
            InvocationStatus::Aborted => "ABORTED",
        }
    }

    fn parse(text: &str) -> Result<InvocationStatus, StoreError> {
        match text {
            "RUNNING" => Ok(InvocationStatus::Running),
            "FINISHED" => Ok(InvocationStatus::Finished),
            "FAILED" => Ok(InvocationStatus::Failed),
            "ABORTED" => Ok(InvocationStatus::Aborted),
            other => Err(StoreError::Corrupt(format!("invocation status {other:?}"))),
        }
    }
}

/// One invocation's outcome as kept for `GetFunctionLogs`.
#[derive(Debug, Clone, PartialEq)]
pub struct InvocationRecord {
    /// Request id of the invocation.
    pub request_id: String,
    /// Namespace of the function.
    pub namespace: String,
    /// Function name.
    pub function_name: String,
    /// Sync or async.
    pub invoke_type: InvokeType,
    /// Running, finished or failed.
    pub status: InvocationStatus,
    /// When the invocation started, Unix milliseconds.
    pub start_time: i64,
    /// When it ended, Unix milliseconds (0 while running).
    pub end_time: i64,
    /// 0 on success, else the SCF status code (430, 433, ...).
    pub ret_code: i32,
    /// JSON text of the return value ("" on failure).
    pub ret_msg: String,
    /// SCF's JSON error object as text ("" on success).
    pub err_msg: String,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// Billed duration in milliseconds.
    pub bill_duration_ms: u64,
    /// Peak memory of the invocation, bytes.
    pub mem_usage: u64,
    /// The invocation's log.
    pub log: String,
    /// Retries made before the attempt this record shows (async invocations).
    pub retry_num: u32,
}

/// Sort key of [`Store::list_invocations`] (SCF's `orderby` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InvocationOrder {
    /// `start_time`
    #[default]
    StartTime,
    /// `end_time`
    EndTime,
    /// `function_name`
    FunctionName,
    /// `request_id`
    RequestId,
    /// `duration`
    Duration,
    /// `mem_usage`
    MemUsage,
}

/// Which return codes a listing keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetCodeFilter {
    /// All.
    #[default]
    Any,
    /// Only successes (`ret_code = 0`).
    Success,
    /// Only failures (`ret_code != 0`).
    Failure,
    /// Only this status code.
    Code(i32),
}

/// Parameters of [`Store::list_invocations`].
#[derive(Debug, Clone, Default)]
pub struct InvocationQuery {
    /// Namespace of the function.
    pub namespace: String,
    /// Function name.
    pub function_name: String,
    /// Only this request.
    pub request_id: Option<String>,
    /// Only these return codes.
    pub ret_code: RetCodeFilter,
    /// Only this invoke type.
    pub invoke_type: Option<InvokeType>,
    /// Only these statuses (all when empty).
    pub statuses: Vec<InvocationStatus>,
    /// Started at or after this time (Unix ms).
    pub start_from: Option<i64>,
    /// Started before this time (Unix ms).
    pub start_until: Option<i64>,
    /// Ended at or after this time (Unix ms).
    pub end_from: Option<i64>,
    /// Ended before this time (Unix ms).
    pub end_until: Option<i64>,
    /// Sort key.
    pub order_by: InvocationOrder,
    /// Ascending when true.
    pub ascending: bool,
    /// Rows to skip.
    pub offset: u32,
    /// Rows to return at most.
    pub limit: u32,
}

const COLUMNS: &str = "request_id, namespace, function_name, invoke_type, status, start_time, \
     ret_code, ret_msg, err_msg, duration_us, bill_duration, mem_usage, log, end_time, retry_num";

type RawRecord = (InvocationRecord, String, String);

fn from_row(row: &Row<'_>) -> rusqlite::Result<RawRecord> {
    let record = InvocationRecord {
        request_id: row.get(0)?,
        namespace: row.get(1)?,
        function_name: row.get(2)?,
        invoke_type: InvokeType::RequestResponse,
        status: InvocationStatus::Running,
        start_time: row.get(5)?,
        ret_code: row.get(6)?,
        ret_msg: row.get(7)?,
        err_msg: row.get(8)?,
        duration_us: row.get(9)?,
        bill_duration_ms: row.get(10)?,
        mem_usage: row.get(11)?,
        log: row.get(12)?,
        end_time: row.get(13)?,
        retry_num: row.get(14)?,
    };
    Ok((record, row.get(3)?, row.get(4)?))
}

fn decode((mut record, invoke_type, status): RawRecord) -> Result<InvocationRecord, StoreError> {
    record.invoke_type = InvokeType::parse(&invoke_type)?;
    record.status = InvocationStatus::parse(&status)?;
    Ok(record)
}

/// What the writer thread of synchronous invocation records is sent.
pub(crate) enum Pending {
    /// A record to commit.
    Record(InvocationRecord),
    /// Answered once every record sent before it is committed (or has failed).
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// Most records committed in one transaction.
const MAX_RECORD_BATCH: usize = 256;

/// How long the writer gathers records for one transaction after the first arrives.
const GATHER_WINDOW: std::time::Duration = std::time::Duration::from_millis(2);

/// Most records that may wait for the writer before a caller waits with them: this bounds the
/// memory they hold when the disk falls behind.
pub(crate) const MAX_WAITING_RECORDS: usize = 4096;

/// The way to the writer thread, and how many records wait for it.
#[derive(Clone)]
pub(crate) struct RecordQueue {
    sender: mpsc::Sender<Pending>,
    waiting: Arc<AtomicUsize>,
}

/// Starts the writer thread of synchronous invocation records. It ends when every sender
/// (every clone of the [`Store`]) is gone, after committing what it was sent.
pub(crate) fn start_record_writer(
    conn: Arc<Mutex<rusqlite::Connection>>,
) -> std::io::Result<RecordQueue> {
    let (sender, receiver) = mpsc::channel::<Pending>();
    let waiting = Arc::new(AtomicUsize::new(0));
    let written = Arc::clone(&waiting);
    std::thread::Builder::new()
        .name("nimbus-store-writer".into())
        .spawn(move || {
            while let Ok(first) = receiver.recv() {
                // No caller waits for its record, so the batch may gather for a moment: one
                // transaction for many records costs little more than for one. The writer
                // sleeps rather than listens meanwhile, so senders wake no one. A reader's
                // barrier that arrives first is answered at once; one that arrives during the
                // moment waits for it.
                if matches!(first, Pending::Record(_)) {
                    std::thread::sleep(GATHER_WINDOW);
                }
                let mut batch = vec![first];
                while batch.len() < MAX_RECORD_BATCH {
                    match receiver.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let mut records = Vec::with_capacity(batch.len());
                let mut barriers = Vec::new();
                for pending in batch {
                    match pending {
                        Pending::Record(record) => records.push(record),
                        Pending::Barrier(done) => barriers.push(done),
                    }
                }
                if !records.is_empty() {
                    let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    write_batch(&mut conn, &records);
                    written.fetch_sub(records.len(), Ordering::Relaxed);
                }
                // Every record sent before a barrier is in this batch or an earlier one, so
                // answering the barriers after the commit keeps their promise.
                for done in barriers {
                    let _ = done.send(());
                }
            }
        })?;
    Ok(RecordQueue { sender, waiting })
}

/// Commits `records` in one transaction; if that fails, each in a transaction of its own, so
/// that one bad record loses only itself. A record that cannot be stored is logged: its caller
/// has had its answer.
fn write_batch(conn: &mut rusqlite::Connection, records: &[InvocationRecord]) {
    let together = conn.transaction().and_then(|tx| {
        for record in records {
            upsert(&tx, record)?;
        }
        tx.commit()
    });
    if together.is_ok() {
        return;
    }
    for record in records {
        if let Err(error) = upsert(conn, record) {
            tracing::error!(
                request_id = %record.request_id,
                error = %error,
                "cannot store an invocation record"
            );
        }
    }
}

pub(crate) fn upsert(
    conn: &rusqlite::Connection,
    record: &InvocationRecord,
) -> rusqlite::Result<usize> {
    // Cached: every invocation stores its record (and parsing the statement cost as much as
    // running it).
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO invocations ({COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
    ))?
    .execute(params![
        record.request_id,
        record.namespace,
        record.function_name,
        record.invoke_type.as_str(),
        record.status.as_str(),
        record.start_time,
        record.ret_code,
        record.ret_msg,
        record.err_msg,
        record.duration_us,
        record.bill_duration_ms,
        record.mem_usage,
        record.log,
        record.end_time,
        record.retry_num,
    ])
}

impl Store {
    /// Stores a finished synchronous invocation, behind the caller's back.
    ///
    /// # Errors
    /// [`StoreError::Task`] when the writer thread is gone.
    ///
    /// The record is queued for the writer thread, which commits whatever has arrived together
    /// in one transaction (group commit), and the caller goes on without waiting: the function
    /// has already answered, and its caller should not wait for the log. Reads of invocation
    /// records first wait for every record queued before them ([`Store::flush_records`]),
    /// so a record is visible to any read that starts after this returns. Only when
    /// [`MAX_WAITING_RECORDS`] already wait does the caller wait for the writer too.
    pub async fn record_invocation(&self, record: InvocationRecord) -> Result<(), StoreError> {
        let waiting = self.records.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        self.records
            .sender
            .send(Pending::Record(record))
            .map_err(|_| StoreError::Task)?;
        if waiting > MAX_WAITING_RECORDS {
            self.flush_records().await?;
        }
        Ok(())
    }

    /// Waits until every record queued by [`Store::record_invocation`] before this call is
    /// committed (or has failed, which the writer logs).
    ///
    /// # Errors
    /// [`StoreError::Task`] when the writer thread is gone.
    pub async fn flush_records(&self) -> Result<(), StoreError> {
        let (done, flushed) = tokio::sync::oneshot::channel();
        self.records
            .sender
            .send(Pending::Barrier(done))
            .map_err(|_| StoreError::Task)?;
        flushed.await.map_err(|_| StoreError::Task)
    }

    /// Reads one invocation record by request id.
    ///
    /// # Errors
    /// [`StoreError::Sql`] or [`StoreError::Corrupt`].
    pub async fn get_invocation(
        &self,
        request_id: &str,
    ) -> Result<Option<InvocationRecord>, StoreError> {
        self.flush_records().await?;
        let request_id = request_id.to_owned();
        self.with(move |conn| {
            let row = conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM invocations WHERE request_id = ?1"),
                    params![request_id],
                    from_row,
                )
                .optional()?;
            row.map(decode).transpose()
        })
        .await
    }

    /// Lists a function's invocation records: the requested page and the total count.
    ///
    /// # Errors
    /// [`StoreError::Sql`] or [`StoreError::Corrupt`].
    pub async fn list_invocations(
        &self,
        query: InvocationQuery,
    ) -> Result<(u64, Vec<InvocationRecord>), StoreError> {
        self.flush_records().await?;
        self.with(move |conn| {
            let (filter, mut values) = filter_clause(&query);
            let total: u64 = conn.query_row(
                &format!("SELECT COUNT(*) FROM invocations {filter}"),
                rusqlite::params_from_iter(values.iter()),
                |row| row.get(0),
            )?;
            let column = match query.order_by {
                InvocationOrder::StartTime => "start_time",
                InvocationOrder::EndTime => "end_time",
                InvocationOrder::FunctionName => "function_name",
                InvocationOrder::RequestId => "request_id",
                InvocationOrder::Duration => "duration_us",
                InvocationOrder::MemUsage => "mem_usage",
            };
            let direction = if query.ascending { "ASC" } else { "DESC" };
            values.push(Value::Integer(i64::from(query.limit)));
            values.push(Value::Integer(i64::from(query.offset)));
            let n = values.len();
            let mut statement = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM invocations {filter} \
                 ORDER BY {column} {direction}, rowid {direction} LIMIT ?{} OFFSET ?{n}",
                n - 1
            ))?;
            let rows = statement
                .query_map(rusqlite::params_from_iter(values.iter()), from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let records = rows.into_iter().map(decode).collect::<Result<_, _>>()?;
            Ok((total, records))
        })
        .await
    }
}

/// The `WHERE` clause of a listing and its numbered parameters.
fn filter_clause(query: &InvocationQuery) -> (String, Vec<Value>) {
    let mut values = vec![
        Value::Text(query.namespace.clone()),
        Value::Text(query.function_name.clone()),
    ];
    let mut clause = "WHERE namespace = ?1 AND function_name = ?2".to_owned();
    let mut push = |condition: &str, value: Value| {
        values.push(value);
        clause.push_str(&format!(" AND {condition} ?{}", values.len()));
    };
    if let Some(request_id) = &query.request_id {
        push("request_id =", Value::Text(request_id.clone()));
    }
    if let Some(invoke_type) = query.invoke_type {
        push(
            "invoke_type =",
            Value::Text(invoke_type.as_str().to_owned()),
        );
    }
    for (bound, condition) in [
        (query.start_from, "start_time >="),
        (query.start_until, "start_time <"),
        (query.end_from, "end_time >="),
        (query.end_until, "end_time <"),
    ] {
        if let Some(ms) = bound {
            push(condition, Value::Integer(ms));
        }
    }
    match query.ret_code {
        RetCodeFilter::Any => {}
        RetCodeFilter::Success => clause.push_str(" AND ret_code = 0 AND status != 'RUNNING'"),
        RetCodeFilter::Failure => clause.push_str(" AND ret_code != 0"),
        RetCodeFilter::Code(code) => push("ret_code =", Value::Integer(i64::from(code))),
    }
    if !query.statuses.is_empty() {
        let names: Vec<String> = query
            .statuses
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        clause.push_str(&format!(" AND status IN ({})", names.join(", ")));
    }
    (clause, values)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("nimbus.db")).expect("open store");
        (dir, store)
    }

    fn record(id: &str, start_time: i64) -> InvocationRecord {
        InvocationRecord {
            request_id: id.into(),
            namespace: "default".into(),
            function_name: "f".into(),
            invoke_type: InvokeType::RequestResponse,
            status: InvocationStatus::Finished,
            start_time,
            end_time: start_time + 5,
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

    fn query() -> InvocationQuery {
        InvocationQuery {
            namespace: "default".into(),
            function_name: "f".into(),
            ascending: true,
            limit: 20,
            ..InvocationQuery::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_is_visible_to_every_read_that_starts_after_it_is_queued() {
        let (_dir, store) = open();
        let mut callers = tokio::task::JoinSet::new();
        for n in 0..200 {
            let store = store.clone();
            callers.spawn(async move {
                let id = format!("r{n}");
                store
                    .record_invocation(record(&id, n))
                    .await
                    .expect("record");
                // Queued, not yet committed: the read waits for it.
                let found = store.get_invocation(&id).await.expect("read");
                assert_eq!(found.map(|r| r.start_time), Some(n));
            });
        }
        while let Some(joined) = callers.join_next().await {
            joined.expect("caller");
        }
        let (total, _) = store.list_invocations(query()).await.expect("list");
        assert_eq!(total, 200);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_waits_for_the_writer_once_too_many_records_wait() {
        let (_dir, store) = open();
        // The writer cannot commit while another thread holds the connection.
        let (release, released) = mpsc::channel::<()>();
        let (locked, is_locked) = mpsc::channel::<()>();
        let holder = std::thread::spawn({
            let conn = Arc::clone(&store.conn);
            move || {
                let _held = conn.lock().expect("lock");
                locked.send(()).expect("test waits");
                let _ = released.recv();
            }
        });
        is_locked.recv().expect("holder locked");
        for n in 0..MAX_WAITING_RECORDS {
            let id = format!("r{n}");
            store
                .record_invocation(record(&id, 0))
                .await
                .expect("queued without waiting");
        }
        let over = tokio::spawn({
            let store = store.clone();
            async move { store.record_invocation(record("over", 0)).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!over.is_finished(), "the caller past the bound must wait");
        release.send(()).expect("holder waits");
        holder.join().expect("holder");
        over.await.expect("task").expect("recorded");
        let (total, _) = store.list_invocations(query()).await.expect("list");
        assert_eq!(total, MAX_WAITING_RECORDS as u64 + 1);
    }

    #[tokio::test]
    async fn filters_by_code_status_type_and_time() {
        let (_dir, store) = open();
        for (id, code, start, invoke_type) in [
            ("ok", 0, 100, InvokeType::RequestResponse),
            ("user", 430, 200, InvokeType::RequestResponse),
            ("timeout", 433, 300, InvokeType::Event),
        ] {
            let mut entry = record(id, start);
            entry.invoke_type = invoke_type;
            entry.ret_code = code;
            if code != 0 {
                entry.status = InvocationStatus::Failed;
            }
            store.record_invocation(entry).await.expect("record");
        }
        let ids = |rows: Vec<InvocationRecord>| {
            rows.into_iter().map(|r| r.request_id).collect::<Vec<_>>()
        };
        let cases = [
            (
                InvocationQuery {
                    ret_code: RetCodeFilter::Success,
                    ..query()
                },
                vec!["ok"],
            ),
            (
                InvocationQuery {
                    ret_code: RetCodeFilter::Failure,
                    ..query()
                },
                vec!["user", "timeout"],
            ),
            (
                InvocationQuery {
                    ret_code: RetCodeFilter::Code(433),
                    ..query()
                },
                vec!["timeout"],
            ),
            (
                InvocationQuery {
                    invoke_type: Some(InvokeType::Event),
                    ..query()
                },
                vec!["timeout"],
            ),
            (
                InvocationQuery {
                    start_from: Some(150),
                    start_until: Some(300),
                    ..query()
                },
                vec!["user"],
            ),
            (
                InvocationQuery {
                    end_from: Some(300),
                    ..query()
                },
                vec!["timeout"],
            ),
            (
                InvocationQuery {
                    statuses: vec![InvocationStatus::Finished],
                    ..query()
                },
                vec!["ok"],
            ),
        ];
        for (filter, expected) in cases {
            let (total, rows) = store.list_invocations(filter.clone()).await.expect("list");
            assert_eq!(ids(rows), expected, "{filter:?}");
            assert_eq!(total as usize, expected.len());
        }
        let got = store
            .get_invocation("user")
            .await
            .expect("get")
            .expect("exists");
        assert_eq!((got.ret_code, got.end_time), (430, 205));
        assert!(store.get_invocation("nope").await.expect("get").is_none());
    }

    #[tokio::test]
    async fn orders_invocations_by_duration() {
        let (_dir, store) = open();
        for (id, duration_us) in [("a", 30), ("b", 10), ("c", 20)] {
            let mut entry = record(id, 1);
            entry.duration_us = duration_us;
            store.record_invocation(entry).await.expect("record");
        }
        let by_duration = InvocationQuery {
            order_by: InvocationOrder::Duration,
            ascending: false,
            ..query()
        };
        let (_, rows) = store.list_invocations(by_duration).await.expect("list");
        let ids: Vec<_> = rows.iter().map(|r| r.request_id.as_str()).collect();
        assert_eq!(ids, ["a", "c", "b"]);
    }
}
