//! The database schema and connection settings.

use rusqlite::Connection;

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS functions (
    namespace      TEXT    NOT NULL,
    function_name  TEXT    NOT NULL,
    handler        TEXT    NOT NULL,
    runtime        TEXT    NOT NULL,
    description    TEXT    NOT NULL,
    memory_size    INTEGER NOT NULL,
    timeout        INTEGER NOT NULL,
    environment    TEXT    NOT NULL,
    code_sha256    TEXT    NOT NULL,
    code_size      INTEGER NOT NULL,
    revision       INTEGER NOT NULL,
    add_time       INTEGER NOT NULL,
    mod_time       INTEGER NOT NULL,
    PRIMARY KEY (namespace, function_name)
);
CREATE TABLE IF NOT EXISTS invocations (
    request_id     TEXT    PRIMARY KEY,
    namespace      TEXT    NOT NULL,
    function_name  TEXT    NOT NULL,
    invoke_type    TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    start_time     INTEGER NOT NULL,
    ret_code       INTEGER NOT NULL,
    ret_msg        TEXT    NOT NULL,
    err_msg        TEXT    NOT NULL,
    duration_us    INTEGER NOT NULL,
    bill_duration  INTEGER NOT NULL,
    mem_usage      INTEGER NOT NULL,
    log            TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS invocations_by_function
    ON invocations (namespace, function_name, start_time);
CREATE TABLE IF NOT EXISTS async_events (
    request_id     TEXT    PRIMARY KEY,
    namespace      TEXT    NOT NULL,
    function_name  TEXT    NOT NULL,
    event          TEXT    NOT NULL,
    accepted_time  INTEGER NOT NULL
);
";

/// Version 2: registered namespaces (with `default` always present) and the end time of
/// each invocation.
const SCHEMA_V2: &str = "
CREATE TABLE IF NOT EXISTS namespaces (
    namespace      TEXT    PRIMARY KEY,
    description    TEXT    NOT NULL,
    add_time       INTEGER NOT NULL,
    mod_time       INTEGER NOT NULL
);
INSERT OR IGNORE INTO namespaces (namespace, description, add_time, mod_time)
    VALUES ('default', 'the default namespace',
            CAST(strftime('%s', 'now') AS INTEGER) * 1000,
            CAST(strftime('%s', 'now') AS INTEGER) * 1000);
INSERT OR IGNORE INTO namespaces (namespace, description, add_time, mod_time)
    SELECT namespace, '', MIN(add_time), MIN(add_time) FROM functions GROUP BY namespace;
ALTER TABLE invocations ADD COLUMN end_time INTEGER NOT NULL DEFAULT 0;
";

/// Version 3: the durable async queue (leases, retries, time-to-live), each attempt's
/// outcome, dead letters, and each function's retry policy.
const SCHEMA_V3: &str = "
ALTER TABLE async_events ADD COLUMN state TEXT NOT NULL DEFAULT 'queued';
ALTER TABLE async_events ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE async_events ADD COLUMN run_errors INTEGER NOT NULL DEFAULT 0;
ALTER TABLE async_events ADD COLUMN next_run_at INTEGER NOT NULL DEFAULT 0;
ALTER TABLE async_events ADD COLUMN lease_until INTEGER NOT NULL DEFAULT 0;
ALTER TABLE async_events ADD COLUMN deadline INTEGER NOT NULL DEFAULT 0;
ALTER TABLE async_events ADD COLUMN retry_num INTEGER NOT NULL DEFAULT 2;
UPDATE async_events SET next_run_at = accepted_time, deadline = accepted_time + 86400000;
CREATE INDEX IF NOT EXISTS async_events_due ON async_events (state, next_run_at);
CREATE TABLE IF NOT EXISTS async_attempts (
    request_id     TEXT    NOT NULL,
    attempt        INTEGER NOT NULL,
    start_time     INTEGER NOT NULL,
    end_time       INTEGER NOT NULL,
    ret_code       INTEGER NOT NULL,
    ret_msg        TEXT    NOT NULL,
    err_msg        TEXT    NOT NULL,
    duration_us    INTEGER NOT NULL,
    mem_usage      INTEGER NOT NULL,
    log            TEXT    NOT NULL,
    PRIMARY KEY (request_id, attempt)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    request_id     TEXT    PRIMARY KEY,
    namespace      TEXT    NOT NULL,
    function_name  TEXT    NOT NULL,
    event          TEXT    NOT NULL,
    accepted_time  INTEGER NOT NULL,
    failed_time    INTEGER NOT NULL,
    attempts       INTEGER NOT NULL,
    error_code     INTEGER NOT NULL,
    error_message  TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_by_function
    ON dead_letters (namespace, function_name, failed_time);
ALTER TABLE functions ADD COLUMN async_retry_num INTEGER NOT NULL DEFAULT 2;
ALTER TABLE functions ADD COLUMN async_msg_ttl INTEGER NOT NULL DEFAULT 86400;
ALTER TABLE invocations ADD COLUMN retry_num INTEGER NOT NULL DEFAULT 0;
";

/// Version 4: whether a function's instances reach the host network (SCF's
/// `PublicNetConfig`); off by default.
const SCHEMA_V4: &str = "
ALTER TABLE functions ADD COLUMN public_net INTEGER NOT NULL DEFAULT 0;
";

/// Version 5: each function's init timeout (SCF's `InitTimeout`, 65 s by default).
const SCHEMA_V5: &str = "
ALTER TABLE functions ADD COLUMN init_timeout INTEGER NOT NULL DEFAULT 65;
";
const SCHEMA_V6: &str = "
ALTER TABLE functions ADD COLUMN reserved_concurrency_mb INTEGER;
";

/// The schema's steps, in order: version `n` is the first `n` of them, and `PRAGMA
/// user_version` says how many a database has.
const MIGRATIONS: [&str; 6] = [
    SCHEMA_V1, SCHEMA_V2, SCHEMA_V3, SCHEMA_V4, SCHEMA_V5, SCHEMA_V6,
];

/// Applies connection settings and creates or upgrades the schema.
pub(crate) fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    // WAL lets readers proceed while a write commits; NORMAL sync in WAL mode loses nothing on
    // a process crash (the WAL is in the OS cache) and only risks the last commits on power loss.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Every invocation writes a record: checkpoint every 8,000 pages (32 MiB of WAL) rather
    // than SQLite's 1,000, so hot pages are copied back once per checkpoint, not eight times.
    conn.pragma_update(None, "wal_autocheckpoint", 8000)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // Room for every statement the store prepares on hot paths (rusqlite keeps 16).
    conn.set_prepared_statement_cache_capacity(64);

    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    // Each step and its version number commit together: a crash leaves a whole step or none.
    for (to, step) in (1..).zip(MIGRATIONS) {
        if version < to {
            let tx = conn.unchecked_transaction()?;
            tx.execute_batch(step)?;
            tx.pragma_update(None, "user_version", to)?;
            tx.commit()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_of_an_older_version_is_upgraded_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conn = Connection::open(dir.path().join("old.db")).expect("open");
        // A database as version 5 left it, with one function.
        for step in &MIGRATIONS[..5] {
            conn.execute_batch(step).expect("old step");
        }
        conn.pragma_update(None, "user_version", 5)
            .expect("version");
        conn.execute(
            "INSERT INTO functions (namespace, function_name, handler, runtime, description, \
             memory_size, timeout, environment, code_sha256, code_size, revision, add_time, \
             mod_time) VALUES ('default', 'f', 'index.main_handler', 'Python3.9', '', 128, 3, \
             '[]', 'abc', 1, 1, 0, 0)",
            [],
        )
        .expect("insert");

        prepare(&conn).expect("upgrade");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("version");
        assert_eq!(version, i64::try_from(MIGRATIONS.len()).expect("small"));
        let (init_timeout, reserved): (u32, Option<u32>) = conn
            .query_row(
                "SELECT init_timeout, reserved_concurrency_mb FROM functions",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .expect("the row is still there");
        assert_eq!((init_timeout, reserved), (65, None));
        // Preparing again changes nothing.
        prepare(&conn).expect("prepare again");
    }
}
