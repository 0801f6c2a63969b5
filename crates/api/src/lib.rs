//! The HTTP API: one listener, one router, the SCF dialects on their paths.
//!
//! ```text
//!   GET  /healthz           ─► 200 once the server is serving
//!   GET|POST /v2/index.php  ─► legacy API 2.0 (signature v1) ─────────────┐
//!   GET|POST /              ─► API 3.0 (TC3-HMAC-SHA256 or signature v1) ─┴► Platform
//! ```
//!
//! This crate authenticates, decodes parameters, calls the [`Platform`] service and encodes
//! the answer in the caller's dialect. It knows nothing about processes.
//!
//! Both dialects are views of the same functions, namespaces and invocation records.
//!
//! Every answer on a dialect's path is HTTP 200 with that dialect's JSON envelope, even for a
//! body that could not be read (over [`MAX_BODY_BYTES`], say): the handlers take the body
//! extractor's rejection and answer it in their dialect, since the SDKs read any other status
//! as a transport failure.

pub mod api3;
pub mod auth;
pub mod error;
pub mod legacy;
pub mod params;
pub mod platform;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::BytesRejection;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub use auth::{Authenticator, Credential};
pub use error::ApiError;
pub use platform::{AccountLimits, AsyncRunner, Billing, Platform};

/// Largest request body. Code packages arrive base64-encoded inside the body; the size
/// limits of each parameter are checked (with a clear error) after decoding.
pub const MAX_BODY_BYTES: usize = 80 * 1024 * 1024;

/// What every request handler shares.
pub struct ApiState {
    /// Credentials and replay protection.
    pub auth: Authenticator,
    /// Functions, invocations, records.
    pub platform: Platform,
}

/// The router of the whole API.
pub fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route(legacy::PATH, get(legacy::handle).post(legacy::handle))
        .route(api3::PATH, get(api3::handle).post(api3::handle))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// The request body, or the error a dialect answers with when it could not be read: too
/// large (over [`MAX_BODY_BYTES`]), or cut off.
pub(crate) fn request_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::RequestTooLarge(format!(
                "the request body is over {MAX_BODY_BYTES} bytes, the most this server accepts"
            ))
        } else {
            ApiError::invalid(
                "InvalidParameter",
                format!("the request body could not be read: {rejection}"),
            )
        }
    })
}

async fn healthz() -> &'static str {
    "ok"
}

/// A JSON answer with status 200 and `Content-Type: application/json` exactly (the Python SDK
/// mistakes an error for success under any other content type).
pub(crate) fn json_response(body: &serde_json::Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Unix seconds, now.
pub(crate) fn unix_now() -> i64 {
    nimbus_store::now_ms() / 1000
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) of Unix milliseconds, as SCF prints times.
pub fn format_time(unix_ms: i64) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_default()
}

/// Milliseconds with microsecond precision, as a JSON number.
pub(crate) fn duration_ms(duration: Duration) -> f64 {
    duration.as_micros() as f64 / 1000.0
}

/// An event must be JSON and at most `max_bytes`; `name` is the parameter that carried it and
/// `code` the error code for text that is not JSON.
///
/// # Errors
/// `RequestTooLarge` or `InvalidParameter`.
pub(crate) fn check_event(
    event: &str,
    max_bytes: usize,
    name: &str,
    code: &'static str,
) -> Result<(), ApiError> {
    if event.len() > max_bytes {
        return Err(ApiError::RequestTooLarge(format!(
            "{name} is {} bytes; at most {max_bytes} are accepted",
            event.len()
        )));
    }
    serde_json::from_str::<serde::de::IgnoredAny>(event)
        .map_err(|e| ApiError::invalid(code, format!("{name} is not valid JSON: {e}")))?;
    Ok(())
}

/// The last `max_bytes` of `log`, starting on a character boundary.
pub fn tail(log: &str, max_bytes: usize) -> &str {
    if log.len() <= max_bytes {
        return log;
    }
    let mut start = log.len() - max_bytes;
    while !log.is_char_boundary(start) {
        start += 1;
    }
    &log[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_cuts_on_a_character_boundary() {
        assert_eq!(tail("short", 10), "short");
        assert_eq!(tail("abcdef", 3), "def");
        // "é" is two bytes: a cut through it moves forward to the next whole character.
        assert_eq!(tail("aéb", 2), "b");
        assert!(tail(&"日本語".repeat(2000), 4096).len() <= 4096);
    }

    #[test]
    fn formats_times_as_scf_does() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(1_495_111_118_999), "2017-05-18 12:38:38");
    }
}
