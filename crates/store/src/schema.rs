//! The database schema and connection settings.

use rusqlite::Connection;

/// Current schema version, kept in `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 2;

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
    VALUES ('default', 'the default namespace', 0, 0);
INSERT OR IGNORE INTO namespaces (namespace, description, add_time, mod_time)
    SELECT DISTINCT namespace, '', 0, 0 FROM functions;
ALTER TABLE invocations ADD COLUMN end_time INTEGER NOT NULL DEFAULT 0;
";

/// Applies connection settings and creates or upgrades the schema.
pub(crate) fn prepare(conn: &Connection) -> rusqlite::Result<()> {
    // WAL lets readers proceed while a write commits; NORMAL sync in WAL mode loses nothing on
    // a process crash (the WAL is in the OS cache) and only risks the last commits on power loss.
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;

    let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version < 1 {
        conn.execute_batch(SCHEMA_V1)?;
        conn.pragma_update(None, "user_version", 1)?;
    }
    if version < 2 {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(SCHEMA_V2)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
    }
    Ok(())
}
