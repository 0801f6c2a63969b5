//! The one error type of the API layer, and how each variant reads in either dialect.
//!
//! Every variant has a stable API 3.0 code string (`ResourceNotFound.Function`, …) and a
//! legacy numeric code (4000, 4100, …). The legacy envelope carries the string as `codeDesc`,
//! so both dialects name the same failure the same way.

use nimbus_control::ControlError;

/// Why a request was refused. Client errors are not logged; internal ones are logged once,
/// where they are turned into a response.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A required parameter is absent.
    #[error("missing parameter {0}")]
    MissingParameter(String),
    /// A parameter has a value that is not accepted.
    #[error("{message}")]
    InvalidParameter {
        /// SCF code, e.g. `InvalidParameterValue.MemorySize`.
        code: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The event (or another payload) is over its size limit.
    #[error("{0}")]
    RequestTooLarge(String),
    /// The action is not one this dialect knows.
    #[error("action {0:?} is not supported; see the API documentation for the action names")]
    InvalidAction(String),
    /// The signature does not match.
    #[error("signature does not match; check the SecretKey and how the string to sign is built")]
    SignatureFailure,
    /// The SecretId is not configured on this server.
    #[error("SecretId {0} does not exist")]
    SecretIdNotFound(String),
    /// The timestamp is outside the accepted window.
    #[error("request timestamp {timestamp} is more than {window_secs} s from server time {now}")]
    SignatureExpire {
        /// The request's timestamp.
        timestamp: i64,
        /// Server time.
        now: i64,
        /// Accepted distance.
        window_secs: i64,
    },
    /// The nonce was already used with this timestamp.
    #[error("nonce {0} was already used; send a fresh Nonce with every request")]
    NonceReplay(u64),
    /// No such function.
    #[error("function {0} does not exist")]
    FunctionNotFound(String),
    /// The function exists already.
    #[error("function {0} already exists")]
    FunctionExists(String),
    /// A parameter this action does not know.
    #[error("parameter {0} is not known for this action")]
    UnknownParameter(String),
    /// The API version is not one this server speaks.
    #[error("version {0:?} is not supported; use 2018-04-16")]
    NoSuchVersion(String),
    /// The `Authorization` header cannot be parsed.
    #[error("invalid Authorization header: {0}")]
    InvalidAuthorization(String),
    /// No such namespace.
    #[error("namespace {0} does not exist")]
    NamespaceNotFound(String),
    /// The namespace exists already.
    #[error("namespace {0} already exists")]
    NamespaceExists(String),
    /// The namespace cannot be deleted.
    #[error("namespace {namespace} cannot be deleted: {reason}")]
    NamespaceNotDeletable {
        /// The namespace.
        namespace: String,
        /// Why not.
        reason: &'static str,
    },
    /// No such version or alias.
    #[error("qualifier {0:?} does not exist; only $LATEST is served")]
    QualifierNotFound(String),
    /// No async event with that request id.
    #[error("async event {0} does not exist")]
    AsyncEventNotFound(String),
    /// The async event is not in a state that allows the operation.
    #[error("async event {0} has already finished")]
    AsyncEventFinished(String),
    /// The queue cannot take more events now.
    #[error("{0}")]
    QueueFull(String),
    /// A feature of SCF that this node does not offer.
    #[error("{0}")]
    Unsupported(String),
    /// The function was changed by another request at the same time.
    #[error("function {0} was changed by another request; retry")]
    FunctionBusy(String),
    /// Something on the server side failed; details are in the server log.
    #[error("internal error; the server log has the details (request id in this response)")]
    Internal,
}

impl ApiError {
    /// The API 3.0 code string (also the legacy `codeDesc`).
    pub fn code(&self) -> &'static str {
        match self {
            // SCF names the missing code package; other parameters have no sub-code.
            ApiError::MissingParameter(name) if name.eq_ignore_ascii_case("code") => {
                "MissingParameter.Code"
            }
            ApiError::MissingParameter(_) => "MissingParameter",
            ApiError::InvalidParameter { code, .. } => code,
            ApiError::RequestTooLarge(_) => "InvalidParameter.RequestTooLarge",
            ApiError::InvalidAction(_) => "InvalidAction",
            ApiError::SignatureFailure => "AuthFailure.SignatureFailure",
            ApiError::SecretIdNotFound(_) => "AuthFailure.SecretIdNotFound",
            ApiError::SignatureExpire { .. } => "AuthFailure.SignatureExpire",
            // SCF-API.md §6: a replayed nonce is reported like a request out of its window.
            ApiError::NonceReplay(_) => "AuthFailure.SignatureExpire",
            ApiError::FunctionNotFound(_) => "ResourceNotFound.Function",
            ApiError::FunctionExists(_) => "ResourceInUse.Function",
            ApiError::FunctionBusy(_) => "FailedOperation.FunctionStatusError",
            ApiError::UnknownParameter(_) => "UnknownParameter",
            ApiError::Unsupported(_) => "UnsupportedOperation",
            ApiError::NoSuchVersion(_) => "NoSuchVersion",
            ApiError::InvalidAuthorization(_) => "AuthFailure.InvalidAuthorization",
            ApiError::NamespaceNotFound(_) => "ResourceNotFound.Namespace",
            ApiError::NamespaceExists(_) => "ResourceInUse.Namespace",
            ApiError::NamespaceNotDeletable { .. } => "FailedOperation.DeleteNamespace",
            ApiError::QualifierNotFound(_) => "ResourceNotFound.Qualifier",
            ApiError::AsyncEventNotFound(_) => "ResourceNotFound.AsyncEvent",
            ApiError::AsyncEventFinished(_) => "FailedOperation.AsyncEventStatus",
            ApiError::QueueFull(_) => "LimitExceeded.AsyncEvent",
            ApiError::Internal => "InternalError",
        }
    }

    /// The legacy API 2.0 numeric code.
    pub fn legacy_code(&self) -> i64 {
        match self {
            ApiError::MissingParameter(_)
            | ApiError::InvalidParameter { .. }
            | ApiError::RequestTooLarge(_)
            | ApiError::InvalidAction(_)
            | ApiError::UnknownParameter(_)
            | ApiError::NoSuchVersion(_) => 4000,
            ApiError::InvalidAuthorization(_) => 4100,
            ApiError::Unsupported(_) => 6100,
            ApiError::QueueFull(_) => 4400,
            ApiError::NamespaceNotFound(_)
            | ApiError::QualifierNotFound(_)
            | ApiError::AsyncEventNotFound(_) => 5000,
            ApiError::NamespaceExists(_)
            | ApiError::NamespaceNotDeletable { .. }
            | ApiError::AsyncEventFinished(_) => 5100,
            ApiError::SignatureFailure => 4100,
            ApiError::SecretIdNotFound(_) => 4104,
            ApiError::SignatureExpire { .. } => 4200,
            ApiError::NonceReplay(_) => 4500,
            ApiError::FunctionNotFound(_) => 5000,
            ApiError::FunctionExists(_) | ApiError::FunctionBusy(_) => 5100,
            ApiError::Internal => 6000,
        }
    }

    /// Shorthand for an invalid value.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::InvalidParameter {
            code,
            message: message.into(),
        }
    }
}

impl From<ControlError> for ApiError {
    fn from(error: ControlError) -> ApiError {
        match error {
            ControlError::Missing(name) => ApiError::MissingParameter(name.to_owned()),
            ControlError::Invalid { code, message } => ApiError::InvalidParameter { code, message },
            ControlError::FunctionExists(name) => ApiError::FunctionExists(name),
            ControlError::FunctionNotFound(name) => ApiError::FunctionNotFound(name),
            ControlError::Conflict(name) => ApiError::FunctionBusy(name),
            ControlError::NamespaceNotFound(name) => ApiError::NamespaceNotFound(name),
            ControlError::NamespaceExists(name) => ApiError::NamespaceExists(name),
            ControlError::NamespaceNotDeletable { namespace, reason } => {
                ApiError::NamespaceNotDeletable { namespace, reason }
            }
            error @ (ControlError::Store(_) | ControlError::Io(_)) => internal(&error),
        }
    }
}

/// Logs a server-side failure once, with its cause chain, and hides it from the caller.
pub(crate) fn internal(error: &dyn std::error::Error) -> ApiError {
    let mut chain = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push_str(": ");
        chain.push_str(&cause.to_string());
        source = cause.source();
    }
    tracing::error!(error = %chain, "request failed on the server side");
    ApiError::Internal
}
