//! Function rows: configuration plus the hash of the current code package.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};

use rusqlite::{OptionalExtension, Row, params};

use crate::{Store, StoreError};

/// One function as stored. `revision` grows on every change of code or configuration, so a
/// warm instance can tell whether it still runs what the store describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRecord {
    /// Namespace the function lives in (`default` unless given).
    pub namespace: String,
    /// Function name, unique within its namespace.
    pub function_name: String,
    /// Handler, `file.function`.
    pub handler: String,
    /// SCF runtime name as given, e.g. `Python3.9`.
    pub runtime: String,
    /// Free text.
    pub description: String,
    /// Memory size in MB.
    pub memory_size: u32,
    /// Execution timeout in seconds.
    pub timeout: u32,
    /// User environment variables, in the order given.
    pub environment: Vec<(String, String)>,
    /// SHA-256 (hex) of the code package.
    pub code_sha256: String,
    /// Size of the code package in bytes.
    pub code_size: u64,
    /// Grows by one on every update.
    pub revision: u64,
    /// Creation time, Unix milliseconds.
    pub add_time: i64,
    /// Last change, Unix milliseconds.
    pub mod_time: i64,
    /// How often a failed async invocation is retried (SCF's `RetryNum`, default 2).
    pub async_retry_num: u32,
    /// How long an accepted async event may wait to run, seconds (SCF's `MsgTTL`).
    pub async_msg_ttl: u32,
    /// Whether instances reach the host network (SCF's `PublicNetConfig`).
    pub public_net: bool,
    /// Longest start-up of an instance, seconds (SCF's `InitTimeout`).
    pub init_timeout: u32,
    /// SCF's `ReservedConcurrencyMem`, MB: the function's live instances are capped at it over
    /// `memory_size`; `None` leaves them to the node-wide default.
    pub reserved_concurrency_mb: Option<u32>,
}

/// What [`Store::insert_function`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertFunction {
    /// The function is stored.
    Inserted,
    /// A function of that name exists already; nothing changed.
    Exists,
    /// The namespace does not exist; nothing changed.
    NoNamespace,
}

/// Sort key of [`Store::list_functions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionOrder {
    /// Creation time.
    AddTime,
    /// Last modification time.
    ModTime,
    /// Name.
    FunctionName,
}

/// Parameters of [`Store::list_functions`].
#[derive(Debug, Clone)]
pub struct FunctionQuery {
    /// Only functions of this namespace.
    pub namespace: String,
    /// Substring that the name must contain.
    pub search_key: Option<String>,
    /// Sort key.
    pub order_by: FunctionOrder,
    /// Ascending when true.
    pub ascending: bool,
    /// Rows to skip.
    pub offset: u32,
    /// Rows to return at most.
    pub limit: u32,
}

const COLUMNS: &str = "namespace, function_name, handler, runtime, description, memory_size, \
     timeout, environment, code_sha256, code_size, revision, add_time, mod_time, \
     async_retry_num, async_msg_ttl, public_net, init_timeout, reserved_concurrency_mb";

fn from_row(row: &Row<'_>) -> rusqlite::Result<(FunctionRecord, String)> {
    let record = FunctionRecord {
        namespace: row.get(0)?,
        function_name: row.get(1)?,
        handler: row.get(2)?,
        runtime: row.get(3)?,
        description: row.get(4)?,
        memory_size: row.get(5)?,
        timeout: row.get(6)?,
        environment: Vec::new(),
        code_sha256: row.get(8)?,
        code_size: row.get(9)?,
        revision: row.get(10)?,
        add_time: row.get(11)?,
        mod_time: row.get(12)?,
        async_retry_num: row.get(13)?,
        async_msg_ttl: row.get(14)?,
        public_net: row.get(15)?,
        init_timeout: row.get(16)?,
        reserved_concurrency_mb: row.get(17)?,
    };
    Ok((record, row.get(7)?))
}

fn decode(pair: (FunctionRecord, String)) -> Result<FunctionRecord, StoreError> {
    let (mut record, environment) = pair;
    record.environment = serde_json::from_str(&environment).map_err(|e| {
        StoreError::Corrupt(format!("environment of {}: {e}", record.function_name))
    })?;
    Ok(record)
}

fn encode_environment(environment: &[(String, String)]) -> String {
    // A list of string pairs always serialises.
    serde_json::to_string(environment).unwrap_or_else(|_| "[]".to_owned())
}

/// Functions by (namespace, name), as last read from the database.
///
/// Coherent because every change to the table goes through this store, and both filling an
/// entry (on a miss) and dropping one (on an update or delete) happen while the connection's
/// lock is held: a read that raced an update cannot put the old row back after the update
/// dropped it. A hit takes no connection lock and runs no statement.
#[derive(Default)]
pub(crate) struct FunctionCache {
    entries: RwLock<HashMap<(String, String), FunctionRecord>>,
}

impl FunctionCache {
    fn get(&self, namespace: &str, name: &str) -> Option<FunctionRecord> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        // Keyed by owned strings; the lookup allocates the key once.
        entries
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    fn put(&self, record: &FunctionRecord) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.insert(
            (record.namespace.clone(), record.function_name.clone()),
            record.clone(),
        );
    }

    fn drop_entry(&self, namespace: &str, name: &str) {
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        entries.remove(&(namespace.to_owned(), name.to_owned()));
    }
}

impl Store {
    /// Inserts a new function, in one statement that also checks that its namespace exists
    /// (so a namespace deleted concurrently cannot gain a function).
    ///
    /// # Errors
    /// [`StoreError::Sql`] when the statement fails.
    pub async fn insert_function(
        &self,
        record: FunctionRecord,
    ) -> Result<InsertFunction, StoreError> {
        self.with(move |conn| {
            let inserted = conn.execute(
                &format!(
                    "INSERT OR IGNORE INTO functions ({COLUMNS}) \
                     SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18 \
                     WHERE EXISTS (SELECT 1 FROM namespaces WHERE namespace = ?1)"
                ),
                params![
                    record.namespace,
                    record.function_name,
                    record.handler,
                    record.runtime,
                    record.description,
                    record.memory_size,
                    record.timeout,
                    encode_environment(&record.environment),
                    record.code_sha256,
                    record.code_size,
                    record.revision,
                    record.add_time,
                    record.mod_time,
                    record.async_retry_num,
                    record.async_msg_ttl,
                    record.public_net,
                    record.init_timeout,
                    record.reserved_concurrency_mb,
                ],
            )?;
            if inserted == 1 {
                return Ok(InsertFunction::Inserted);
            }
            let namespace_exists: bool = conn.query_row(
                "SELECT EXISTS (SELECT 1 FROM namespaces WHERE namespace = ?1)",
                params![record.namespace],
                |row| row.get(0),
            )?;
            Ok(if namespace_exists {
                InsertFunction::Exists
            } else {
                InsertFunction::NoNamespace
            })
        })
        .await
    }

    /// Replaces a function's configuration when its stored revision is `expected_revision`
    /// (optimistic concurrency: two racing updates cannot both win). Returns whether it did.
    ///
    /// # Errors
    /// [`StoreError::Sql`] when the statement fails.
    pub async fn update_function(
        &self,
        record: FunctionRecord,
        expected_revision: u64,
    ) -> Result<bool, StoreError> {
        let cache = Arc::clone(&self.functions);
        self.with(move |conn| {
            let updated = conn.execute(
                "UPDATE functions SET handler = ?3, runtime = ?4, description = ?5, \
                 memory_size = ?6, timeout = ?7, environment = ?8, code_sha256 = ?9, \
                 code_size = ?10, revision = ?11, mod_time = ?12, async_retry_num = ?14, \
                 async_msg_ttl = ?15, public_net = ?16, init_timeout = ?17, \
                 reserved_concurrency_mb = ?18 WHERE namespace = ?1 AND function_name = ?2 AND revision = ?13",
                params![
                    record.namespace,
                    record.function_name,
                    record.handler,
                    record.runtime,
                    record.description,
                    record.memory_size,
                    record.timeout,
                    encode_environment(&record.environment),
                    record.code_sha256,
                    record.code_size,
                    record.revision,
                    record.mod_time,
                    expected_revision,
                    record.async_retry_num,
                    record.async_msg_ttl,
                    record.public_net,
                    record.init_timeout,
                    record.reserved_concurrency_mb,
                ],
            )?;
            cache.drop_entry(&record.namespace, &record.function_name);
            Ok(updated == 1)
        })
        .await
    }

    /// Reads one function.
    ///
    /// # Errors
    /// [`StoreError::Sql`] or [`StoreError::Corrupt`].
    pub async fn get_function(
        &self,
        namespace: &str,
        function_name: &str,
    ) -> Result<Option<FunctionRecord>, StoreError> {
        if let Some(record) = self.functions.get(namespace, function_name) {
            return Ok(Some(record));
        }
        let (namespace, function_name) = (namespace.to_owned(), function_name.to_owned());
        let cache = Arc::clone(&self.functions);
        self.with(move |conn| {
            let row = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM functions \
                     WHERE namespace = ?1 AND function_name = ?2"
                ))?
                .query_row(params![namespace, function_name], from_row)
                .optional()?;
            let record = row.map(decode).transpose()?;
            if let Some(record) = &record {
                cache.put(record);
            }
            Ok(record)
        })
        .await
    }

    /// Deletes a function. Returns whether it existed.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn delete_function(
        &self,
        namespace: &str,
        function_name: &str,
    ) -> Result<bool, StoreError> {
        let (namespace, function_name) = (namespace.to_owned(), function_name.to_owned());
        let cache = Arc::clone(&self.functions);
        self.with(move |conn| {
            let deleted = conn.execute(
                "DELETE FROM functions WHERE namespace = ?1 AND function_name = ?2",
                params![namespace, function_name],
            )?;
            cache.drop_entry(&namespace, &function_name);
            Ok(deleted == 1)
        })
        .await
    }

    /// Lists functions of a namespace: the requested page and the total count of matches.
    ///
    /// # Errors
    /// [`StoreError::Sql`] or [`StoreError::Corrupt`].
    pub async fn list_functions(
        &self,
        query: FunctionQuery,
    ) -> Result<(u64, Vec<FunctionRecord>), StoreError> {
        self.with(move |conn| {
            let pattern = format!(
                "%{}%",
                escape_like(query.search_key.as_deref().unwrap_or(""))
            );
            let filter = "WHERE namespace = ?1 AND function_name LIKE ?2 ESCAPE '\\'";
            let total: u64 = conn.query_row(
                &format!("SELECT COUNT(*) FROM functions {filter}"),
                params![query.namespace, pattern],
                |row| row.get(0),
            )?;
            let column = match query.order_by {
                FunctionOrder::AddTime => "add_time",
                FunctionOrder::ModTime => "mod_time",
                FunctionOrder::FunctionName => "function_name",
            };
            let direction = if query.ascending { "ASC" } else { "DESC" };
            let mut statement = conn.prepare(&format!(
                "SELECT {COLUMNS} FROM functions {filter} \
                 ORDER BY {column} {direction}, function_name {direction} LIMIT ?3 OFFSET ?4"
            ))?;
            let rows = statement
                .query_map(
                    params![query.namespace, pattern, query.limit, query.offset],
                    from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let records = rows.into_iter().map(decode).collect::<Result<_, _>>()?;
            Ok((total, records))
        })
        .await
    }

    /// Memory reserved by every function but `namespace`/`function_name`, MB.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn reserved_concurrency_mb(
        &self,
        namespace: &str,
        function_name: &str,
    ) -> Result<u64, StoreError> {
        let (namespace, function_name) = (namespace.to_owned(), function_name.to_owned());
        self.with(move |conn| {
            let total: i64 = conn.query_row(
                "SELECT COALESCE(SUM(reserved_concurrency_mb), 0) FROM functions \
                 WHERE NOT (namespace = ?1 AND function_name = ?2)",
                params![namespace, function_name],
                |row| row.get(0),
            )?;
            Ok(u64::try_from(total).unwrap_or(0))
        })
        .await
    }

    /// Every function in every namespace (used to find code packages still referenced).
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn code_hashes_in_use(&self) -> Result<Vec<String>, StoreError> {
        self.with(|conn| {
            let mut statement = conn.prepare("SELECT DISTINCT code_sha256 FROM functions")?;
            let hashes = statement
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()?;
            Ok(hashes)
        })
        .await
    }
}

/// Escapes `%`, `_` and the escape character itself for a `LIKE ... ESCAPE '\'` pattern.
pub(crate) fn escape_like(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, add_time: i64) -> FunctionRecord {
        FunctionRecord {
            namespace: "default".into(),
            function_name: name.into(),
            handler: "index.main_handler".into(),
            runtime: "Python3.9".into(),
            description: String::new(),
            memory_size: 128,
            timeout: 3,
            environment: vec![("K".into(), "V".into())],
            code_sha256: "00".into(),
            code_size: 10,
            revision: 1,
            add_time,
            mod_time: add_time,
            async_retry_num: 2,
            async_msg_ttl: 86400,
            public_net: false,
            init_timeout: 65,
            reserved_concurrency_mb: None,
        }
    }

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("nimbus.db")).expect("open store");
        (dir, store)
    }

    #[tokio::test]
    async fn refuses_duplicate_function_names() {
        let (_dir, store) = open();
        let insert = |r| store.insert_function(r);
        assert_eq!(
            insert(record("f1", 1)).await.expect("insert"),
            InsertFunction::Inserted
        );
        assert_eq!(
            insert(record("f1", 2)).await.expect("insert"),
            InsertFunction::Exists
        );
        let mut elsewhere = record("f2", 1);
        elsewhere.namespace = "missing".into();
        assert_eq!(
            insert(elsewhere).await.expect("insert"),
            InsertFunction::NoNamespace
        );
        let got = store.get_function("default", "f1").await.expect("get");
        assert_eq!(got.expect("exists").add_time, 1);
    }

    #[tokio::test]
    async fn update_requires_the_expected_revision() {
        let (_dir, store) = open();
        store
            .insert_function(record("f1", 1))
            .await
            .expect("insert");
        let mut next = record("f1", 1);
        next.revision = 2;
        next.timeout = 9;
        next.reserved_concurrency_mb = Some(256);
        assert!(
            !store
                .update_function(next.clone(), 5)
                .await
                .expect("update")
        );
        assert!(store.update_function(next, 1).await.expect("update"));
        let got = store
            .get_function("default", "f1")
            .await
            .expect("get")
            .expect("exists");
        assert_eq!((got.revision, got.timeout), (2, 9));
        assert_eq!(got.reserved_concurrency_mb, Some(256));
        assert_eq!(
            store
                .reserved_concurrency_mb("default", "f1")
                .await
                .expect("sum"),
            0,
            "the function's own reservation is left out"
        );
        assert_eq!(
            store
                .reserved_concurrency_mb("default", "f2")
                .await
                .expect("sum"),
            256
        );
        assert_eq!(got.environment, vec![("K".to_owned(), "V".to_owned())]);
    }

    #[tokio::test]
    async fn reads_after_updates_and_deletes_see_them() {
        let (_dir, store) = open();
        let get = || store.get_function("default", "f1");
        assert_eq!(get().await.expect("get"), None);
        store
            .insert_function(record("f1", 1))
            .await
            .expect("insert");
        // The first read fills the cache, the second is served from it.
        assert_eq!(get().await.expect("get"), Some(record("f1", 1)));
        assert_eq!(get().await.expect("get"), Some(record("f1", 1)));
        let mut next = record("f1", 1);
        next.revision = 2;
        next.timeout = 9;
        assert!(
            store
                .update_function(next.clone(), 1)
                .await
                .expect("update")
        );
        assert_eq!(get().await.expect("get"), Some(next));
        assert!(
            store
                .delete_function("default", "f1")
                .await
                .expect("delete")
        );
        assert_eq!(get().await.expect("get"), None);
    }

    #[tokio::test]
    async fn lists_with_search_order_and_paging() {
        let (_dir, store) = open();
        for (i, name) in ["alpha", "beta", "alphabet", "a_b"].iter().enumerate() {
            store
                .insert_function(record(name, i as i64))
                .await
                .expect("insert");
        }
        let query = FunctionQuery {
            namespace: "default".into(),
            search_key: Some("alpha".into()),
            order_by: FunctionOrder::FunctionName,
            ascending: false,
            offset: 0,
            limit: 10,
        };
        let (total, rows) = store.list_functions(query.clone()).await.expect("list");
        assert_eq!(total, 2);
        assert_eq!(rows[0].function_name, "alphabet");

        // `_` in a search key is a literal, not a LIKE wildcard.
        let literal = FunctionQuery {
            search_key: Some("a_".into()),
            ..query.clone()
        };
        let (total, _) = store.list_functions(literal).await.expect("list");
        assert_eq!(total, 1);

        let page = FunctionQuery {
            search_key: None,
            order_by: FunctionOrder::AddTime,
            ascending: true,
            offset: 1,
            limit: 2,
            ..query
        };
        let (total, rows) = store.list_functions(page).await.expect("list");
        assert_eq!(total, 4);
        let names: Vec<_> = rows.iter().map(|r| r.function_name.as_str()).collect();
        assert_eq!(names, ["beta", "alphabet"]);
    }

    #[tokio::test]
    async fn survives_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nimbus.db");
        let store = Store::open(&path).expect("open");
        store
            .insert_function(record("keep", 1))
            .await
            .expect("insert");
        drop(store);
        let store = Store::open(&path).expect("reopen");
        assert!(
            store
                .get_function("default", "keep")
                .await
                .expect("get")
                .is_some()
        );
    }
}
