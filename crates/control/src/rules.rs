//! SCF's rules for function configuration: names, handlers, runtimes, memory, timeouts,
//! descriptions and environment variables. Pure checks; each failure names the SCF error code
//! and tells the caller what to fix.

use crate::ControlError;

/// Numeric limits that differ between the legacy API 2.0 and API 3.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Smallest memory size in MB (besides the 64 MB special case of API 3.0).
    pub min_memory_mb: u32,
    /// Largest memory size in MB.
    pub max_memory_mb: u32,
    /// Whether 64 MB is allowed as well.
    pub allow_64_mb: bool,
    /// Longest timeout in seconds.
    pub max_timeout_secs: u32,
    /// Largest code package (decoded zip bytes) at creation.
    pub max_code_bytes: usize,
}

impl Limits {
    /// The legacy API's limits: 128–1536 MB, timeout ≤ 300 s, code ≤ 5 MB.
    pub const LEGACY: Limits = Limits {
        min_memory_mb: 128,
        max_memory_mb: 1536,
        allow_64_mb: false,
        max_timeout_secs: 300,
        max_code_bytes: 5 * 1024 * 1024,
    };

    /// API 3.0's limits: 64 MB or 128–3072 MB, timeout ≤ 900 s, code ≤ 50 MB at creation.
    pub const API3: Limits = Limits {
        min_memory_mb: 128,
        max_memory_mb: 3072,
        allow_64_mb: true,
        max_timeout_secs: 900,
        max_code_bytes: 50 * 1024 * 1024,
    };

    /// The same limits with another code size cap (API 3.0 takes 20 MB in
    /// `UpdateFunctionCode`).
    pub const fn with_code_limit(self, max_code_bytes: usize) -> Limits {
        Limits {
            max_code_bytes,
            ..self
        }
    }
}

/// Default memory size in MB.
pub const DEFAULT_MEMORY_MB: u32 = 128;
/// Default timeout in seconds.
pub const DEFAULT_TIMEOUT_SECS: u32 = 3;
/// Runtime used when a legacy caller names none ("Python 3").
pub const DEFAULT_RUNTIME: &str = "Python3.9";
/// Namespace used when the caller names none.
pub const DEFAULT_NAMESPACE: &str = "default";
/// Total size of a function's environment (keys plus values), bytes.
pub const MAX_ENVIRONMENT_BYTES: usize = 4096;
/// Longest description.
pub const MAX_DESCRIPTION_CHARS: usize = 1000;

/// Init timeout unless configured otherwise, seconds (SCF: 65).
pub const DEFAULT_INIT_TIMEOUT_SECS: u32 = 65;
/// Longest init timeout, seconds.
pub const MAX_INIT_TIMEOUT_SECS: u32 = 300;

/// Checks an init timeout.
///
/// # Errors
/// `InvalidParameterValue.InitTimeout`.
pub fn check_init_timeout(init_timeout: u32) -> Result<(), ControlError> {
    if (1..=MAX_INIT_TIMEOUT_SECS).contains(&init_timeout) {
        Ok(())
    } else {
        Err(invalid(
            "InvalidParameterValue.InitTimeout",
            format!(
                "InitTimeout {init_timeout} is invalid: use 1 to {MAX_INIT_TIMEOUT_SECS} seconds"
            ),
        ))
    }
}

/// Namespaces a node holds at most (`default` included).
pub const MAX_NAMESPACES: usize = 100;

/// Retries of a failed async invocation unless configured otherwise (SCF: 2).
pub const DEFAULT_RETRY_NUM: u32 = 2;
/// Most retries a function may ask for.
pub const MAX_RETRY_NUM: u32 = 2;
/// Shortest time-to-live of an async event, seconds.
pub const MIN_MSG_TTL_SECS: u32 = 60;
/// Longest (and default) time-to-live of an async event, seconds: 24 hours.
pub const MAX_MSG_TTL_SECS: u32 = 86_400;

/// Checks an async retry number.
///
/// # Errors
/// `LimitExceeded.RetryNum`.
pub fn check_retry_num(retry_num: u32) -> Result<(), ControlError> {
    if retry_num <= MAX_RETRY_NUM {
        Ok(())
    } else {
        Err(invalid(
            "LimitExceeded.RetryNum",
            format!("RetryNum {retry_num} is invalid: use 0 to {MAX_RETRY_NUM}"),
        ))
    }
}

/// Checks an async event time-to-live.
///
/// # Errors
/// `LimitExceeded.MsgTTL`.
pub fn check_msg_ttl(msg_ttl: u32) -> Result<(), ControlError> {
    if (MIN_MSG_TTL_SECS..=MAX_MSG_TTL_SECS).contains(&msg_ttl) {
        Ok(())
    } else {
        Err(invalid(
            "LimitExceeded.MsgTTL",
            format!(
                "MsgTTL {msg_ttl} is invalid: use {MIN_MSG_TTL_SECS} to {MAX_MSG_TTL_SECS} seconds"
            ),
        ))
    }
}

/// The language family of a runtime, which decides the handler file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeFamily {
    /// `Python3.x`
    Python3,
    /// `Nodejs<major>.<minor>`
    Nodejs,
    /// `CustomRuntime`: the package's own executable [`CUSTOM_BOOTSTRAP_FILE`], any language.
    Custom,
}

impl RuntimeFamily {
    /// Extension of the handler file, dot included; empty for [`RuntimeFamily::Custom`],
    /// whose entry point is always [`CUSTOM_BOOTSTRAP_FILE`].
    pub fn handler_extension(self) -> &'static str {
        match self {
            RuntimeFamily::Python3 => ".py",
            RuntimeFamily::Nodejs => ".js",
            RuntimeFamily::Custom => "",
        }
    }

    /// Whether the family runs on an interpreter the node may lack; a custom runtime brings
    /// its own program.
    pub fn needs_interpreter(self) -> bool {
        self != RuntimeFamily::Custom
    }
}

/// The executable a `CustomRuntime` package must hold at its root.
pub const CUSTOM_BOOTSTRAP_FILE: &str = "bootstrap";
/// Longest handler string of a custom runtime, in characters.
pub const MAX_CUSTOM_HANDLER_CHARS: usize = 60;

/// SCF runtime names Nimbus serves, and the family each maps to. Every Python 3 name runs on
/// the host's one Python 3 interpreter, every Node.js name on the host's `node`.
const SERVED_RUNTIMES: &[(&str, RuntimeFamily)] = &[
    ("Python3.6", RuntimeFamily::Python3),
    ("Python3.7", RuntimeFamily::Python3),
    ("Python3.9", RuntimeFamily::Python3),
    ("Python3.10", RuntimeFamily::Python3),
    ("Python3.11", RuntimeFamily::Python3),
    ("Python3.12", RuntimeFamily::Python3),
    ("Nodejs12.16", RuntimeFamily::Nodejs),
    ("Nodejs14.18", RuntimeFamily::Nodejs),
    ("Nodejs16.13", RuntimeFamily::Nodejs),
    ("Nodejs18.15", RuntimeFamily::Nodejs),
    ("Nodejs20.x", RuntimeFamily::Nodejs),
    ("CustomRuntime", RuntimeFamily::Custom),
];

/// SCF runtime names that exist in the cloud but that this node cannot serve (yet).
const KNOWN_UNSERVED: &[&str] = &[
    "Python2.7",
    "Nodejs6.10",
    "Nodejs8.9",
    "Nodejs10.15",
    "Php5.6",
    "Php7",
    "Php7.4",
    "Php8.0",
    "Go1",
    "Java8",
];

fn invalid(code: &'static str, message: impl Into<String>) -> ControlError {
    ControlError::Invalid {
        code,
        message: message.into(),
    }
}

/// Checks a function name: 2–60 characters, letters, digits, `-` and `_`, starting with a
/// letter and not ending with `-` or `_`.
///
/// # Errors
/// `InvalidParameterValue.FunctionName`.
pub fn check_function_name(name: &str) -> Result<(), ControlError> {
    let valid_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    let starts = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic());
    let ends = name.chars().last().is_some_and(|c| c != '-' && c != '_');
    if (2..=60).contains(&name.len()) && valid_chars && starts && ends {
        Ok(())
    } else {
        Err(invalid(
            "InvalidParameterValue.FunctionName",
            format!(
                "functionName {name:?} is invalid: use 2-60 letters, digits, '-' or '_', \
                 starting with a letter and not ending with '-' or '_'"
            ),
        ))
    }
}

/// Checks a namespace name: 1–30 letters, digits, `-` and `_`.
///
/// # Errors
/// `InvalidParameterValue.Namespace`.
pub fn check_namespace(namespace: &str) -> Result<(), ControlError> {
    let valid_chars = namespace
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if (1..=30).contains(&namespace.len()) && valid_chars {
        Ok(())
    } else {
        Err(invalid(
            "InvalidParameterValue.Namespace",
            format!("namespace {namespace:?} is invalid: use 1-30 letters, digits, '-' or '_'"),
        ))
    }
}

/// Maps an SCF runtime name to the family that serves it, whatever this node has installed.
///
/// # Errors
/// `InvalidParameterValue.Runtime`, saying whether the name is unknown or known but not served
/// by Nimbus.
pub fn runtime_family(runtime: &str) -> Result<RuntimeFamily, ControlError> {
    runtime_family_among(runtime, &[RuntimeFamily::Python3, RuntimeFamily::Nodejs])
}

/// Maps an SCF runtime name to its family, if that family is `available` on this node (a
/// family that needs no interpreter always is).
///
/// # Errors
/// `InvalidParameterValue.Runtime`, saying whether the name is unknown, known but not served
/// by Nimbus, or served but not installed here.
pub fn runtime_family_among(
    runtime: &str,
    available: &[RuntimeFamily],
) -> Result<RuntimeFamily, ControlError> {
    let usable = |family: &RuntimeFamily| !family.needs_interpreter() || available.contains(family);
    let served: Vec<&str> = SERVED_RUNTIMES
        .iter()
        .filter(|(_, family)| usable(family))
        .map(|(name, _)| *name)
        .collect();
    if let Some((_, family)) = SERVED_RUNTIMES.iter().find(|(name, _)| *name == runtime) {
        if usable(family) {
            return Ok(*family);
        }
        return Err(invalid(
            "InvalidParameterValue.Runtime",
            format!(
                "runtime {runtime} cannot be served here: its interpreter was not found on this \
                 node; served runtimes: {}",
                served.join(", ")
            ),
        ));
    }
    let message = if KNOWN_UNSERVED.contains(&runtime) {
        format!(
            "runtime {runtime} cannot be served by this node; served runtimes: {}",
            served.join(", ")
        )
    } else {
        format!(
            "runtime {runtime:?} is unknown; served runtimes: {}",
            served.join(", ")
        )
    };
    Err(invalid("InvalidParameterValue.Runtime", message))
}

/// Checks a handler `file.function` and returns the path of its file inside the code package
/// (`index.main_handler` with Python → `index.py`). A custom runtime's handler is free-form
/// (1-60 characters, passed to its program as `_HANDLER`) and its file is always
/// [`CUSTOM_BOOTSTRAP_FILE`].
///
/// # Errors
/// `InvalidParameterValue.Handler`.
pub fn handler_file(handler: &str, family: RuntimeFamily) -> Result<String, ControlError> {
    if family == RuntimeFamily::Custom {
        return custom_handler(handler);
    }
    let bad = || {
        invalid(
            "InvalidParameterValue.Handler",
            format!(
                "handler {handler:?} is invalid: use file.function, each part 2-60 characters \
                 (for example index.main_handler)"
            ),
        )
    };
    let (file, function) = handler.rsplit_once('.').ok_or_else(bad)?;
    let file_ok = file
        .split('/')
        .all(|part| !part.is_empty() && part != "." && part != "..")
        && file
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-/".contains(c));
    let function_ok = function
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && function
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    let lengths_ok = (2..=60).contains(&file.len()) && (2..=60).contains(&function.len());
    if file_ok && function_ok && lengths_ok {
        Ok(format!("{file}{}", family.handler_extension()))
    } else {
        Err(bad())
    }
}

fn custom_handler(handler: &str) -> Result<String, ControlError> {
    let length = handler.chars().count();
    if (1..=MAX_CUSTOM_HANDLER_CHARS).contains(&length) && !handler.chars().any(char::is_control) {
        Ok(CUSTOM_BOOTSTRAP_FILE.to_owned())
    } else {
        Err(invalid(
            "InvalidParameterValue.Handler",
            format!(
                "handler {handler:?} is invalid: a CustomRuntime handler is any text of 1-\
                 {MAX_CUSTOM_HANDLER_CHARS} characters without control characters"
            ),
        ))
    }
}

/// Checks a memory size against the dialect's limits.
///
/// # Errors
/// `InvalidParameterValue.MemorySize`.
pub fn check_memory(memory_mb: u32, limits: &Limits) -> Result<(), ControlError> {
    let in_steps = memory_mb.is_multiple_of(128)
        && (limits.min_memory_mb..=limits.max_memory_mb).contains(&memory_mb);
    if in_steps || (limits.allow_64_mb && memory_mb == 64) {
        Ok(())
    } else {
        Err(invalid(
            "InvalidParameterValue.MemorySize",
            format!(
                "memorySize {memory_mb} is invalid: use a multiple of 128 from {} to {} (MB)",
                limits.min_memory_mb, limits.max_memory_mb
            ),
        ))
    }
}

/// Checks a timeout against the dialect's limits.
///
/// # Errors
/// `InvalidParameterValue.Timeout`.
pub fn check_timeout(timeout_secs: u32, limits: &Limits) -> Result<(), ControlError> {
    if (1..=limits.max_timeout_secs).contains(&timeout_secs) {
        Ok(())
    } else {
        Err(invalid(
            "InvalidParameterValue.Timeout",
            format!(
                "timeout {timeout_secs} is invalid: use 1 to {} seconds",
                limits.max_timeout_secs
            ),
        ))
    }
}

/// Checks a description's length.
///
/// # Errors
/// `InvalidParameterValue.Description`.
pub fn check_description(description: &str) -> Result<(), ControlError> {
    if description.chars().count() <= MAX_DESCRIPTION_CHARS {
        Ok(())
    } else {
        Err(invalid(
            "InvalidParameterValue.Description",
            format!("description is longer than {MAX_DESCRIPTION_CHARS} characters"),
        ))
    }
}

/// Checks environment variables: keys `[A-Za-z][A-Za-z0-9_]*`, unique, not using the reserved
/// prefixes, and at most 4 KB in all.
///
/// # Errors
/// `InvalidParameterValue.Environment`, `...EnvironmentSystemProtect` or
/// `...EnvironmentExceededLimit`.
pub fn check_environment(variables: &[(String, String)]) -> Result<(), ControlError> {
    let mut total = 0;
    for (i, (key, value)) in variables.iter().enumerate() {
        let key_ok = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !key_ok {
            return Err(invalid(
                "InvalidParameterValue.Environment",
                format!(
                    "environment variable name {key:?} is invalid: start with a letter, then \
                     letters, digits or '_'"
                ),
            ));
        }
        let upper = key.to_ascii_uppercase();
        if ["SCF_", "QCLOUD_", "TENCENTCLOUD_"]
            .iter()
            .any(|p| upper.starts_with(p))
        {
            return Err(invalid(
                "InvalidParameterValue.EnvironmentSystemProtect",
                format!(
                    "environment variable {key} uses a reserved prefix (SCF_, QCLOUD_, \
                     TENCENTCLOUD_)"
                ),
            ));
        }
        if variables[..i].iter().any(|(other, _)| other == key) {
            return Err(invalid(
                "InvalidParameterValue.Environment",
                format!("environment variable {key} is given twice"),
            ));
        }
        total += key.len() + value.len();
    }
    if total > MAX_ENVIRONMENT_BYTES {
        return Err(invalid(
            "InvalidParameterValue.EnvironmentExceededLimit",
            format!("environment variables take {total} bytes; at most {MAX_ENVIRONMENT_BYTES}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(error: ControlError) -> &'static str {
        match error {
            ControlError::Invalid { code, .. } => code,
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn accepts_and_rejects_function_names() {
        for good in ["ab", "hello-world", "Fn_2", &"a".repeat(60)] {
            assert!(check_function_name(good).is_ok(), "{good}");
        }
        for bad in ["a", "1abc", "abc-", "abc_", "a b", "héllo", &"a".repeat(61)] {
            let error = check_function_name(bad).expect_err(bad);
            assert_eq!(code_of(error), "InvalidParameterValue.FunctionName");
        }
    }

    #[test]
    fn maps_handlers_to_files() {
        let py = RuntimeFamily::Python3;
        assert_eq!(
            handler_file("index.main_handler", py).expect("valid"),
            "index.py"
        );
        assert_eq!(
            handler_file("src/app.handler", py).expect("valid"),
            "src/app.py"
        );
        for bad in [
            "index",
            "i.main",
            "index.m",
            "../x.main_handler",
            "/abs.main",
            "a b.main",
        ] {
            assert!(handler_file(bad, py).is_err(), "{bad}");
        }
    }

    #[test]
    fn custom_runtime_takes_free_form_handler_and_needs_no_interpreter() {
        let family = runtime_family_among("CustomRuntime", &[]).expect("always served");
        assert_eq!(family, RuntimeFamily::Custom);
        for good in [
            "index.main_handler",
            "x",
            "any handler at all",
            &"h".repeat(60),
        ] {
            assert_eq!(
                handler_file(good, family).expect(good),
                CUSTOM_BOOTSTRAP_FILE
            );
        }
        for bad in ["", "a\nb", &"h".repeat(61)] {
            let error = handler_file(bad, family).expect_err(bad);
            assert_eq!(code_of(error), "InvalidParameterValue.Handler");
        }
    }

    #[test]
    fn enforces_legacy_memory_and_timeout() {
        let limits = Limits::LEGACY;
        assert!(check_memory(128, &limits).is_ok());
        assert!(check_memory(1536, &limits).is_ok());
        for bad in [0, 64, 100, 1664, 2048] {
            assert!(check_memory(bad, &limits).is_err(), "{bad}");
        }
        assert!(check_timeout(1, &limits).is_ok());
        assert!(check_timeout(300, &limits).is_ok());
        assert!(check_timeout(0, &limits).is_err());
        assert!(check_timeout(301, &limits).is_err());
    }

    #[test]
    fn bounds_the_init_timeout() {
        assert!(check_init_timeout(1).is_ok());
        assert!(check_init_timeout(300).is_ok());
        assert!(check_init_timeout(0).is_err());
        assert!(check_init_timeout(301).is_err());
    }

    #[test]
    fn enforces_api3_memory_steps() {
        let limits = Limits::API3;
        for good in [64, 128, 256, 3072] {
            assert!(check_memory(good, &limits).is_ok(), "{good}");
        }
        for bad in [32, 100, 192, 3200] {
            assert!(check_memory(bad, &limits).is_err(), "{bad}");
        }
        assert!(check_timeout(900, &limits).is_ok());
        assert!(check_timeout(901, &limits).is_err());
    }

    #[test]
    fn says_when_a_runtime_is_known_but_not_served() {
        assert_eq!(
            runtime_family("Python3.9").expect("served"),
            RuntimeFamily::Python3
        );
        let unserved = runtime_family("Java8").expect_err("unserved");
        assert!(unserved.to_string().contains("cannot be served"));
        let unknown = runtime_family("Cobol").expect_err("unknown");
        assert!(unknown.to_string().contains("unknown"));
    }

    #[test]
    fn guards_environment_variables() {
        let pair = |k: &str, v: &str| (k.to_owned(), v.to_owned());
        assert!(check_environment(&[pair("A", "1"), pair("B_2", "x")]).is_ok());
        let cases = [
            (vec![pair("1A", "x")], "InvalidParameterValue.Environment"),
            (
                vec![pair("A", "1"), pair("A", "2")],
                "InvalidParameterValue.Environment",
            ),
            (
                vec![pair("SCF_X", "1")],
                "InvalidParameterValue.EnvironmentSystemProtect",
            ),
            (
                vec![pair("tencentcloud_x", "1")],
                "InvalidParameterValue.EnvironmentSystemProtect",
            ),
            (
                vec![pair("BIG", &"v".repeat(5000))],
                "InvalidParameterValue.EnvironmentExceededLimit",
            ),
        ];
        for (variables, expected) in cases {
            let error = check_environment(&variables).expect_err("must fail");
            assert_eq!(code_of(error), expected);
        }
    }
}
