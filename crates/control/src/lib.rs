//! Control: validation and bookkeeping of functions.
//!
//! Every create or update is checked in full against SCF's rules (see [`rules`]) and its code
//! package against [`code`] before anything is written, so a refused request changes nothing.
//! Accepted code is stored on disk first and the function row second: a crash between the two
//! leaves an unused package behind, never a function without code.
//!
//! ```text
//!   api ──FunctionSettings──► Control ──check──► CodeStore (files) ──► Store (row, revision+1)
//! ```
//!
//! Control knows nothing about instances; the caller retires warm instances after an update or
//! delete.
//!
//! Namespaces must exist before a function is created in them; `default` always exists and
//! cannot be deleted, and a namespace with functions cannot be deleted either.

mod bytecode;
pub mod code;
pub mod rules;

use std::path::PathBuf;
use std::sync::Arc;

use nimbus_store::{
    DeleteNamespace, FunctionQuery, FunctionRecord, InsertFunction, NamespaceRecord, Store,
    StoreError,
};

pub use code::CodeStore;
pub use rules::{Limits, RuntimeFamily};

/// Errors of function management. `Invalid` carries the SCF error code that names the field.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A required parameter is absent.
    #[error("missing parameter {0}")]
    Missing(&'static str),
    /// A parameter has a value SCF does not accept.
    #[error("{message}")]
    Invalid {
        /// SCF's error code, e.g. `InvalidParameterValue.MemorySize`.
        code: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// A function of that name already exists in the namespace.
    #[error("function {0} already exists")]
    FunctionExists(String),
    /// No function of that name exists in the namespace.
    #[error("function {0} does not exist")]
    FunctionNotFound(String),
    /// No namespace of that name exists.
    #[error("namespace {0} does not exist")]
    NamespaceNotFound(String),
    /// A namespace of that name exists already.
    #[error("namespace {0} already exists")]
    NamespaceExists(String),
    /// The namespace cannot be deleted (it is `default`, or functions live in it).
    #[error("namespace {namespace} cannot be deleted: {reason}")]
    NamespaceNotDeletable {
        /// The namespace.
        namespace: String,
        /// Why not.
        reason: &'static str,
    },
    /// The function changed while this update was being prepared.
    #[error("function {0} was changed concurrently; retry")]
    Conflict(String),
    /// The database failed.
    #[error("storing the function failed")]
    Store(#[from] StoreError),
    /// Reading or writing a code package failed.
    #[error("code package storage failed")]
    Io(#[from] std::io::Error),
}

/// The settable parts of a function. `None` means "not given": the default on create, the
/// current value on update.
#[derive(Debug, Clone, Default)]
pub struct FunctionSettings {
    /// `file.function`.
    pub handler: Option<String>,
    /// SCF runtime name.
    pub runtime: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// MB.
    pub memory_size: Option<u32>,
    /// Seconds.
    pub timeout: Option<u32>,
    /// User environment variables.
    pub environment: Option<Vec<(String, String)>>,
    /// The zip package, base64 (an `@` prefix is allowed).
    pub code: Option<String>,
    /// Whether instances reach the host network.
    pub public_net: Option<bool>,
    /// Longest instance start-up, seconds.
    pub init_timeout: Option<u32>,
}

/// Function management over a store and a code folder. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    store: Store,
    code: CodeStore,
    /// Serialises package writes and removals, so that removing an unused package cannot race
    /// with a new function starting to use it.
    code_lock: Arc<tokio::sync::Mutex<()>>,
    /// Serialises reserved-concurrency changes, so that two functions' reservations cannot
    /// both pass the budget check against the same sum.
    reservation_lock: Arc<tokio::sync::Mutex<()>>,
    /// Runtime families whose interpreter this node has.
    available: Arc<[RuntimeFamily]>,
    /// The interpreter Python instances run, which compiles Python packages when they are
    /// stored (see `bytecode.rs`); `None` leaves compiling to each instance.
    python: Option<Arc<std::path::Path>>,
    /// Where instances see their code, written into the bytecode as its source path.
    code_root: Option<Arc<str>>,
}

/// A checked package, staged (and compiled) unless the store had it.
struct PreparedPackage {
    sha256: String,
    bytes: Vec<u8>,
    staged: Option<code::Staged>,
    /// Holds Python sources, to be compiled when staged.
    python: bool,
}

impl Control {
    /// Creates the service; functions may use the runtime families in `available`.
    pub fn new(store: Store, code: CodeStore, available: &[RuntimeFamily]) -> Control {
        Control {
            store,
            code,
            code_lock: Arc::new(tokio::sync::Mutex::new(())),
            reservation_lock: Arc::new(tokio::sync::Mutex::new(())),
            available: available.into(),
            python: None,
            code_root: None,
        }
    }

    /// Compiles Python functions' packages with `python` when they are stored, so that
    /// instances import bytecode rather than compile every module at each cold start.
    /// `code_root` is where instances see their code (`None`: where it is stored); the
    /// bytecode names its source files there.
    #[must_use]
    pub fn with_python_compiler(mut self, python: PathBuf, code_root: Option<&str>) -> Control {
        self.python = Some(python.into());
        self.code_root = code_root.map(Into::into);
        self
    }

    /// The store behind this service.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where a function's unpacked code lives.
    pub fn code_dir(&self, record: &FunctionRecord) -> PathBuf {
        self.code.code_dir(&record.code_sha256)
    }

    /// Creates a function.
    ///
    /// # Errors
    /// `Missing` (handler, code), `Invalid`, `FunctionExists`, `Store` or `Io`.
    pub async fn create_function(
        &self,
        namespace: &str,
        function_name: &str,
        settings: FunctionSettings,
        limits: &Limits,
    ) -> Result<FunctionRecord, ControlError> {
        rules::check_namespace(namespace)?;
        rules::check_function_name(function_name)?;
        let handler = settings.handler.ok_or(ControlError::Missing("handler"))?;
        let code = settings.code.ok_or(ControlError::Missing("code"))?;
        let runtime = settings
            .runtime
            .unwrap_or_else(|| rules::DEFAULT_RUNTIME.to_owned());
        let family = rules::runtime_family_among(&runtime, &self.available)?;
        let handler_file = rules::handler_file(&handler, family)?;
        let description = settings.description.unwrap_or_default();
        rules::check_description(&description)?;
        let memory_size = settings.memory_size.unwrap_or(rules::DEFAULT_MEMORY_MB);
        rules::check_memory(memory_size, limits)?;
        let timeout = settings.timeout.unwrap_or(rules::DEFAULT_TIMEOUT_SECS);
        rules::check_timeout(timeout, limits)?;
        let environment = settings.environment.unwrap_or_default();
        rules::check_environment(&environment)?;
        let init_timeout = settings
            .init_timeout
            .unwrap_or(rules::DEFAULT_INIT_TIMEOUT_SECS);
        rules::check_init_timeout(init_timeout)?;
        if self.store.get_namespace(namespace).await?.is_none() {
            return Err(ControlError::NamespaceNotFound(namespace.to_owned()));
        }
        if self
            .store
            .get_function(namespace, function_name)
            .await?
            .is_some()
        {
            return Err(ControlError::FunctionExists(function_name.to_owned()));
        }

        let package = self
            .prepare_package(code, handler_file, family, limits.max_code_bytes)
            .await?;
        let _guard = self.code_lock.lock().await;
        let (code_sha256, code_size) = self.store_package(package).await?;
        let now = nimbus_store::now_ms();
        let record = FunctionRecord {
            namespace: namespace.to_owned(),
            function_name: function_name.to_owned(),
            handler,
            runtime,
            description,
            memory_size,
            timeout,
            environment,
            code_sha256,
            code_size,
            revision: 1,
            add_time: now,
            mod_time: now,
            async_retry_num: rules::DEFAULT_RETRY_NUM,
            async_msg_ttl: rules::MAX_MSG_TTL_SECS,
            public_net: settings.public_net.unwrap_or(false),
            init_timeout,
            reserved_concurrency_mb: None,
        };
        match self.store.insert_function(record.clone()).await? {
            InsertFunction::Inserted => {}
            refused => {
                self.remove_if_unused(&record.code_sha256).await?;
                return Err(match refused {
                    InsertFunction::NoNamespace => {
                        ControlError::NamespaceNotFound(namespace.to_owned())
                    }
                    _ => ControlError::FunctionExists(function_name.to_owned()),
                });
            }
        }
        Ok(record)
    }

    /// Updates a function's code and/or configuration. Returns the new record.
    ///
    /// # Errors
    /// `Invalid`, `FunctionNotFound`, `Conflict`, `Store` or `Io`.
    pub async fn update_function(
        &self,
        namespace: &str,
        function_name: &str,
        settings: FunctionSettings,
        limits: &Limits,
    ) -> Result<FunctionRecord, ControlError> {
        let current = self.get_function(namespace, function_name).await?;
        let mut next = current.clone();
        if let Some(runtime) = settings.runtime {
            next.runtime = runtime;
        }
        let family = rules::runtime_family_among(&next.runtime, &self.available)?;
        if let Some(handler) = settings.handler {
            next.handler = handler;
        }
        let handler_file = rules::handler_file(&next.handler, family)?;
        if let Some(description) = settings.description {
            rules::check_description(&description)?;
            next.description = description;
        }
        if let Some(memory_size) = settings.memory_size {
            rules::check_memory(memory_size, limits)?;
            next.memory_size = memory_size;
        }
        if let Some(timeout) = settings.timeout {
            rules::check_timeout(timeout, limits)?;
            next.timeout = timeout;
        }
        if let Some(environment) = settings.environment {
            rules::check_environment(&environment)?;
            next.environment = environment;
        }
        if let Some(public_net) = settings.public_net {
            next.public_net = public_net;
        }
        if let Some(init_timeout) = settings.init_timeout {
            rules::check_init_timeout(init_timeout)?;
            next.init_timeout = init_timeout;
        }

        let package = match settings.code {
            Some(code) => Some(
                self.prepare_package(code, handler_file.clone(), family, limits.max_code_bytes)
                    .await?,
            ),
            None => None,
        };
        let _guard = self.code_lock.lock().await;
        match package {
            Some(package) => {
                (next.code_sha256, next.code_size) = self.store_package(package).await?;
            }
            None => self.check_stored_handler(&current.code_sha256, &handler_file, family)?,
        }
        next.revision = current.revision + 1;
        next.mod_time = nimbus_store::now_ms();
        if !self
            .store
            .update_function(next.clone(), current.revision)
            .await?
        {
            self.remove_if_unused(&next.code_sha256).await?;
            return Err(ControlError::Conflict(function_name.to_owned()));
        }
        if next.code_sha256 != current.code_sha256 {
            self.remove_if_unused(&current.code_sha256).await?;
        }
        Ok(next)
    }

    /// Sets a function's async retry number (0–2, SCF's `RetryNum`) and event time-to-live
    /// (60–86400 s, SCF's `MsgTTL`).
    ///
    /// # Errors
    /// `Invalid`, `FunctionNotFound`, `Conflict` or `Store`.
    pub async fn update_async_config(
        &self,
        namespace: &str,
        function_name: &str,
        retry_num: Option<u32>,
        msg_ttl: Option<u32>,
    ) -> Result<FunctionRecord, ControlError> {
        let current = self.get_function(namespace, function_name).await?;
        let mut next = current.clone();
        if let Some(retry_num) = retry_num {
            rules::check_retry_num(retry_num)?;
            next.async_retry_num = retry_num;
        }
        if let Some(msg_ttl) = msg_ttl {
            rules::check_msg_ttl(msg_ttl)?;
            next.async_msg_ttl = msg_ttl;
        }
        self.replace_settings(&current, next).await
    }

    /// Sets (or, with `None`, removes) SCF's `ReservedConcurrencyMem` of a function, MB: its
    /// live instances are capped at that over its memory size. Reservations together may not
    /// pass `budget_mb`, the node's memory budget.
    ///
    /// # Errors
    /// `FunctionNotFound`, `Invalid` (`FailedOperation.ReservedExceedTotal`), `Conflict` when
    /// the function changed meanwhile, or `Store`.
    pub async fn set_reserved_concurrency(
        &self,
        namespace: &str,
        function_name: &str,
        reserved_mb: Option<u32>,
        budget_mb: u64,
    ) -> Result<FunctionRecord, ControlError> {
        // Held from the sum of the others' reservations to the write of this one.
        let _reserving = self.reservation_lock.lock().await;
        let current = self.get_function(namespace, function_name).await?;
        if let Some(reserved) = reserved_mb {
            let others = self
                .store
                .reserved_concurrency_mb(namespace, function_name)
                .await?;
            let room = budget_mb.saturating_sub(others);
            if u64::from(reserved) > room {
                return Err(ControlError::Invalid {
                    code: "FailedOperation.ReservedExceedTotal",
                    message: format!(
                        "ReservedConcurrencyMem {reserved} MB is more than the {room} MB of the \
                         node's memory budget ({budget_mb} MB) that other functions have not \
                         reserved"
                    ),
                });
            }
        }
        let mut next = current.clone();
        next.reserved_concurrency_mb = reserved_mb;
        self.replace_settings(&current, next).await
    }

    /// Stores `next`, settings of `current` changed (not its code), as the next revision;
    /// `Conflict` if the function changed meanwhile.
    async fn replace_settings(
        &self,
        current: &FunctionRecord,
        mut next: FunctionRecord,
    ) -> Result<FunctionRecord, ControlError> {
        next.revision = current.revision + 1;
        next.mod_time = nimbus_store::now_ms();
        if self
            .store
            .update_function(next.clone(), current.revision)
            .await?
        {
            Ok(next)
        } else {
            Err(ControlError::Conflict(current.function_name.clone()))
        }
    }

    /// Reads a function.
    ///
    /// # Errors
    /// `FunctionNotFound` or `Store`.
    pub async fn get_function(
        &self,
        namespace: &str,
        function_name: &str,
    ) -> Result<FunctionRecord, ControlError> {
        self.store
            .get_function(namespace, function_name)
            .await?
            .ok_or_else(|| ControlError::FunctionNotFound(function_name.to_owned()))
    }

    /// Deletes a function and, when no other function shares it, its code package.
    ///
    /// # Errors
    /// `FunctionNotFound`, `Store` or `Io`.
    pub async fn delete_function(
        &self,
        namespace: &str,
        function_name: &str,
    ) -> Result<FunctionRecord, ControlError> {
        let record = self.get_function(namespace, function_name).await?;
        let _guard = self.code_lock.lock().await;
        if !self.store.delete_function(namespace, function_name).await? {
            return Err(ControlError::FunctionNotFound(function_name.to_owned()));
        }
        self.remove_if_unused(&record.code_sha256).await?;
        Ok(record)
    }

    /// Lists functions.
    ///
    /// # Errors
    /// `Store`.
    pub async fn list_functions(
        &self,
        query: FunctionQuery,
    ) -> Result<(u64, Vec<FunctionRecord>), ControlError> {
        Ok(self.store.list_functions(query).await?)
    }

    /// Creates a namespace.
    ///
    /// # Errors
    /// `Invalid` for a bad name or description, `NamespaceExists`, `Store`.
    pub async fn create_namespace(
        &self,
        namespace: &str,
        description: &str,
    ) -> Result<NamespaceRecord, ControlError> {
        rules::check_namespace(namespace)?;
        rules::check_description(description)?;
        if self.store.list_namespaces().await?.len() >= rules::MAX_NAMESPACES {
            return Err(ControlError::Invalid {
                code: "LimitExceeded.Namespace",
                message: format!("a node holds at most {} namespaces", rules::MAX_NAMESPACES),
            });
        }
        let now = nimbus_store::now_ms();
        let record = NamespaceRecord {
            namespace: namespace.to_owned(),
            description: description.to_owned(),
            add_time: now,
            mod_time: now,
        };
        if !self.store.insert_namespace(record.clone()).await? {
            return Err(ControlError::NamespaceExists(namespace.to_owned()));
        }
        Ok(record)
    }

    /// Changes a namespace's description.
    ///
    /// # Errors
    /// `Invalid`, `NamespaceNotFound`, `Store`.
    pub async fn update_namespace(
        &self,
        namespace: &str,
        description: &str,
    ) -> Result<(), ControlError> {
        rules::check_description(description)?;
        let now = nimbus_store::now_ms();
        if !self
            .store
            .update_namespace(namespace, description, now)
            .await?
        {
            return Err(ControlError::NamespaceNotFound(namespace.to_owned()));
        }
        Ok(())
    }

    /// Deletes an empty namespace other than `default`.
    ///
    /// # Errors
    /// `NamespaceNotDeletable`, `NamespaceNotFound`, `Store`.
    pub async fn delete_namespace(&self, namespace: &str) -> Result<(), ControlError> {
        let refuse = |reason| ControlError::NamespaceNotDeletable {
            namespace: namespace.to_owned(),
            reason,
        };
        if namespace == rules::DEFAULT_NAMESPACE {
            return Err(refuse("the default namespace always exists"));
        }
        match self.store.delete_namespace(namespace).await? {
            DeleteNamespace::Deleted => Ok(()),
            DeleteNamespace::NotFound => Err(ControlError::NamespaceNotFound(namespace.to_owned())),
            DeleteNamespace::NotEmpty => Err(refuse("delete its functions first")),
        }
    }

    /// Every namespace with its number of functions.
    ///
    /// # Errors
    /// `Store`.
    pub async fn list_namespaces(&self) -> Result<Vec<(NamespaceRecord, u64)>, ControlError> {
        Ok(self.store.list_namespaces().await?)
    }

    /// The source text of a function's handler file.
    ///
    /// # Errors
    /// `Invalid` for a runtime no longer served, `Io` when the file cannot be read.
    pub fn handler_source(&self, record: &FunctionRecord) -> Result<String, ControlError> {
        let family = rules::runtime_family(&record.runtime)?;
        let file = rules::handler_file(&record.handler, family)?;
        // A compiled bootstrap has no source to show: empty, as for code the console
        // cannot display.
        Ok(self
            .code
            .read_text(&record.code_sha256, &file)?
            .unwrap_or_default())
    }

    /// Decodes and checks a package and, unless the store has it already, unpacks it into a
    /// staging folder and compiles it there when it is Python's (see `bytecode.rs`). Needs no
    /// lock: nothing but this request sees the staging folder. Runs on the blocking pool:
    /// decoding and unpacking a 50 MB zip takes a while.
    async fn prepare_package(
        &self,
        code: String,
        handler_file: String,
        family: RuntimeFamily,
        max_bytes: usize,
    ) -> Result<PreparedPackage, ControlError> {
        let store = self.code.clone();
        let package = tokio::task::spawn_blocking(move || {
            let bytes = code::decode_package(&code, max_bytes)?;
            if family == RuntimeFamily::Custom {
                code::check_executable(&bytes, &handler_file)?;
            }
            code::check_package(&bytes, &handler_file)?;
            let sha256 = code::package_hash(&bytes);
            let staged = if store.is_stored(&sha256) {
                None
            } else {
                Some(store.stage(&sha256, &bytes)?)
            };
            let python = staged.is_some() && code::contains_python(&bytes);
            Ok::<_, ControlError>(PreparedPackage {
                sha256,
                bytes,
                staged,
                python,
            })
        })
        .await
        .map_err(|_| ControlError::Io(std::io::Error::other("package task failed")))??;
        // Whatever the function's runtime: another runtime's function may use this package
        // later, and an already stored package keeps the bytecode it has.
        if let (Some(python), Some(staged), true) = (&self.python, &package.staged, package.python)
        {
            bytecode::compile_python_package(python, staged.path(), self.code_root.as_deref())
                .await;
        }
        Ok(package)
    }

    /// Puts a prepared package in its place; returns its hash and size. Called with the code
    /// lock held: whether the store has the package is only certain then.
    async fn store_package(&self, package: PreparedPackage) -> Result<(String, u64), ControlError> {
        let store = self.code.clone();
        tokio::task::spawn_blocking(move || {
            let PreparedPackage {
                sha256,
                bytes,
                staged,
                ..
            } = package;
            match staged {
                Some(staged) => staged.commit(&bytes)?,
                // Removed since it was found stored: store it again, uncompiled.
                None => store.put(&sha256, &bytes)?,
            }
            Ok((sha256, bytes.len() as u64))
        })
        .await
        .map_err(|_| ControlError::Io(std::io::Error::other("package task failed")))?
    }

    fn check_stored_handler(
        &self,
        sha256: &str,
        handler_file: &str,
        family: RuntimeFamily,
    ) -> Result<(), ControlError> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.code.code_dir(sha256).join(handler_file);
        let executable =
            || std::fs::metadata(&path).is_ok_and(|meta| meta.permissions().mode() & 0o100 != 0);
        if path.is_file() && (family != RuntimeFamily::Custom || executable()) {
            Ok(())
        } else {
            Err(ControlError::Invalid {
                code: "InvalidParameterValue.Handler",
                message: match family {
                    RuntimeFamily::Custom => {
                        format!("the code package holds no executable {handler_file} at its root")
                    }
                    _ => format!("the handler file {handler_file} is not in the code package"),
                },
            })
        }
    }

    async fn remove_if_unused(&self, sha256: &str) -> Result<(), ControlError> {
        let in_use = self.store.code_hashes_in_use().await?;
        if !in_use.iter().any(|h| h == sha256) {
            self.code.remove(sha256)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
