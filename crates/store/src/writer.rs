//! The group-commit writer: the writes that every invocation makes (a synchronous
//! invocation's record, an async attempt's outcome) go to one thread, which commits whatever
//! has arrived together in one transaction and then answers each caller.
//!
//! ```text
//!   record_invocation ─┐
//!   record_attempt ────┴─► channel ─► writer thread: batch ─► one transaction ─► answers
//! ```
//!
//! A transaction writes every page it touched to the WAL, so many small writes committed
//! together cost little more than one. A batch that fails is retried write by write, each in
//! a transaction of its own, so that one bad write fails only its own caller.

use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

use crate::StoreError;
use crate::invocations::{InvocationRecord, upsert};
use crate::queue::{AttemptFate, AttemptRecord, apply_attempt};

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 256;

/// A write waiting for the writer, and where to say it was committed.
pub(crate) enum Write {
    /// A synchronous invocation's record.
    Record {
        record: InvocationRecord,
        done: oneshot::Sender<Result<(), StoreError>>,
    },
    /// An async attempt and what becomes of its event; answers whether the event was still
    /// pending (if not, nothing was written).
    Attempt {
        attempt: AttemptRecord,
        invocation: InvocationRecord,
        fate: AttemptFate,
        done: oneshot::Sender<Result<bool, StoreError>>,
    },
}

impl Write {
    fn apply(&self, conn: &rusqlite::Connection) -> rusqlite::Result<bool> {
        match self {
            Write::Record { record, .. } => upsert(conn, record).map(|_| true),
            Write::Attempt {
                attempt,
                invocation,
                fate,
                ..
            } => apply_attempt(conn, attempt, invocation, fate),
        }
    }

    fn answer(self, result: Result<bool, StoreError>) {
        match self {
            Write::Record { done, .. } => drop(done.send(result.map(drop))),
            Write::Attempt { done, .. } => drop(done.send(result)),
        }
    }
}

/// Starts the writer thread. It ends when every sender (every clone of the
/// [`Store`](crate::Store)) is gone.
pub(crate) fn start(
    conn: Arc<Mutex<rusqlite::Connection>>,
) -> std::io::Result<mpsc::Sender<Write>> {
    let (sender, receiver) = mpsc::channel::<Write>();
    std::thread::Builder::new()
        .name("nimbus-store-writer".into())
        .spawn(move || {
            while let Ok(first) = receiver.recv() {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match receiver.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let mut conn = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                write_batch(&mut conn, batch);
            }
        })?;
    Ok(sender)
}

fn write_batch(conn: &mut rusqlite::Connection, batch: Vec<Write>) {
    let together = conn.transaction().and_then(|tx| {
        let results = batch
            .iter()
            .map(|write| write.apply(&tx))
            .collect::<rusqlite::Result<Vec<bool>>>()?;
        tx.commit()?;
        Ok(results)
    });
    if let Ok(results) = together {
        for (write, result) in batch.into_iter().zip(results) {
            write.answer(Ok(result));
        }
        return;
    }
    for write in batch {
        let alone = conn.transaction().and_then(|tx| {
            let result = write.apply(&tx)?;
            tx.commit()?;
            Ok(result)
        });
        write.answer(alone.map_err(StoreError::Sql));
    }
}
