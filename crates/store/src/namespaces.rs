//! Namespaces: named groups that isolate function names. `default` always exists.

use rusqlite::{OptionalExtension, params};

use crate::{Store, StoreError};

/// One namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRecord {
    /// Name.
    pub namespace: String,
    /// Free text.
    pub description: String,
    /// Creation time, Unix milliseconds (0 for `default`).
    pub add_time: i64,
    /// Last change, Unix milliseconds.
    pub mod_time: i64,
}

/// Why a namespace could not be deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteNamespace {
    /// It is gone.
    Deleted,
    /// There was no such namespace.
    NotFound,
    /// Functions still live in it.
    NotEmpty,
}

impl Store {
    /// Creates a namespace; returns false when it exists already.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn insert_namespace(&self, record: NamespaceRecord) -> Result<bool, StoreError> {
        self.with(move |conn| {
            let inserted = conn.execute(
                "INSERT OR IGNORE INTO namespaces (namespace, description, add_time, mod_time) \
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    record.namespace,
                    record.description,
                    record.add_time,
                    record.mod_time
                ],
            )?;
            Ok(inserted == 1)
        })
        .await
    }

    /// Changes a namespace's description; returns false when it does not exist.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn update_namespace(
        &self,
        namespace: &str,
        description: &str,
        mod_time: i64,
    ) -> Result<bool, StoreError> {
        let (namespace, description) = (namespace.to_owned(), description.to_owned());
        self.with(move |conn| {
            let updated = conn.execute(
                "UPDATE namespaces SET description = ?2, mod_time = ?3 WHERE namespace = ?1",
                params![namespace, description, mod_time],
            )?;
            Ok(updated == 1)
        })
        .await
    }

    /// Reads one namespace.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn get_namespace(
        &self,
        namespace: &str,
    ) -> Result<Option<NamespaceRecord>, StoreError> {
        let namespace = namespace.to_owned();
        self.with(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT namespace, description, add_time, mod_time FROM namespaces \
                     WHERE namespace = ?1",
                    params![namespace],
                    |row| {
                        Ok(NamespaceRecord {
                            namespace: row.get(0)?,
                            description: row.get(1)?,
                            add_time: row.get(2)?,
                            mod_time: row.get(3)?,
                        })
                    },
                )
                .optional()?)
        })
        .await
    }

    /// Every namespace, by name, with its number of functions.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn list_namespaces(&self) -> Result<Vec<(NamespaceRecord, u64)>, StoreError> {
        self.with(|conn| {
            let mut statement = conn.prepare(
                "SELECT n.namespace, n.description, n.add_time, n.mod_time, \
                        (SELECT COUNT(*) FROM functions f WHERE f.namespace = n.namespace) \
                 FROM namespaces n ORDER BY n.namespace",
            )?;
            let rows = statement
                .query_map([], |row| {
                    let record = NamespaceRecord {
                        namespace: row.get(0)?,
                        description: row.get(1)?,
                        add_time: row.get(2)?,
                        mod_time: row.get(3)?,
                    };
                    Ok((record, row.get(4)?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    /// Deletes an empty namespace, checking emptiness in the same transaction.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub async fn delete_namespace(&self, namespace: &str) -> Result<DeleteNamespace, StoreError> {
        let namespace = namespace.to_owned();
        self.with(move |conn| {
            let tx = conn.transaction()?;
            let functions: u64 = tx.query_row(
                "SELECT COUNT(*) FROM functions WHERE namespace = ?1",
                params![namespace],
                |row| row.get(0),
            )?;
            if functions > 0 {
                return Ok(DeleteNamespace::NotEmpty);
            }
            let deleted = tx.execute(
                "DELETE FROM namespaces WHERE namespace = ?1",
                params![namespace],
            )?;
            tx.commit()?;
            Ok(if deleted == 1 {
                DeleteNamespace::Deleted
            } else {
                DeleteNamespace::NotFound
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("nimbus.db")).expect("open store");
        (dir, store)
    }

    fn namespace(name: &str) -> NamespaceRecord {
        NamespaceRecord {
            namespace: name.into(),
            description: "d".into(),
            add_time: 5,
            mod_time: 5,
        }
    }

    #[tokio::test]
    async fn default_namespace_exists_from_the_start() {
        let (_dir, store) = open();
        let default = store
            .get_namespace("default")
            .await
            .expect("get")
            .expect("exists");
        assert!(
            default.add_time > 1_600_000_000_000,
            "created now, not at the epoch"
        );
        assert!(
            !store
                .insert_namespace(namespace("default"))
                .await
                .expect("insert")
        );
    }

    #[tokio::test]
    async fn creates_updates_lists_and_deletes() {
        let (_dir, store) = open();
        assert!(
            store
                .insert_namespace(namespace("team-a"))
                .await
                .expect("insert")
        );
        assert!(
            store
                .update_namespace("team-a", "new", 9)
                .await
                .expect("update")
        );
        assert!(
            !store
                .update_namespace("nope", "new", 9)
                .await
                .expect("update")
        );
        let listed = store.list_namespaces().await.expect("list");
        let names: Vec<_> = listed.iter().map(|(n, _)| n.namespace.as_str()).collect();
        assert_eq!(names, ["default", "team-a"]);
        assert_eq!(listed[1].0.description, "new");
        assert_eq!(
            store.delete_namespace("team-a").await.expect("delete"),
            DeleteNamespace::Deleted
        );
        assert_eq!(
            store.delete_namespace("team-a").await.expect("delete"),
            DeleteNamespace::NotFound
        );
    }
}
