//! The API 3.0 dialect (version `2018-04-16`) at `/`.
//!
//! ```text
//!   POST / (JSON body) or GET /?query ─► TC3-HMAC-SHA256 (Authorization header)
//!                                        or signature v1 (SecretId/Signature parameters)
//!       ─► action from X-TC-Action or Action ─► Input (fields read one by one) ─► Platform
//!       ─► {"Response": {..., "RequestId"}} or {"Response": {"Error": {Code, Message}, ...}}
//! ```
//!
//! Every answer is HTTP 200 with `Content-Type: application/json`: the Python SDK only looks
//! for `Error` under exactly that content type.

mod actions;
mod input;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Response;
use serde_json::{Map, Value, json};
use tracing::Instrument as _;

use crate::auth::{Tc3Request, V1Request};
use crate::error::ApiError;
use crate::params::{Params, decode_form};
use crate::{ApiState, Authenticator, json_response, unix_now};
pub use input::Input;

/// The path of API 3.0.
pub const PATH: &str = "/";
/// The only version this dialect speaks.
pub const VERSION: &str = "2018-04-16";

/// Parameters every v1 request carries besides the action's own.
const COMMON_PARAMS: &[&str] = &[
    "Action",
    "Version",
    "Region",
    "Timestamp",
    "Nonce",
    "SecretId",
    "Signature",
    "SignatureMethod",
    "Token",
    "Language",
    "RequestClient",
];

/// Serves one API 3.0 request.
pub async fn handle(
    State(state): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let request_id = crate::platform::new_request_id();
    let body = match crate::request_body(body) {
        Ok(body) => body,
        Err(error) => return envelope(Err(error), &request_id),
    };
    let header_list: Vec<(String, String)> = headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let span = tracing::info_span!(
        "request",
        dialect = "api3",
        action = tracing::field::Empty,
        request_id = %request_id,
        secret_id = tracing::field::Empty,
    );
    let result = async {
        let request = authenticate(&state.auth, &method, &header_list, &uri, &body)?;
        let span = tracing::Span::current();
        span.record("action", request.action.as_str());
        span.record("secret_id", request.secret_id.as_str());
        if request.version.as_deref().is_some_and(|v| v != VERSION) {
            return Err(ApiError::NoSuchVersion(request.version.unwrap_or_default()));
        }
        actions::dispatch(&state, &request.action, Input::new(request.params)).await
    }
    .instrument(span)
    .await;
    envelope(result, &request_id)
}

fn envelope(result: Result<Map<String, Value>, ApiError>, request_id: &str) -> Response {
    let mut response = match result {
        Ok(fields) => fields,
        Err(error) => {
            tracing::debug!(code = error.code(), "request refused");
            let mut fields = Map::new();
            fields.insert(
                "Error".into(),
                json!({ "Code": error.code(), "Message": error.to_string() }),
            );
            fields
        }
    };
    response.insert("RequestId".into(), json!(request_id));
    json_response(&json!({ "Response": response }))
}

/// An authenticated request: who, which action, and its parameters.
struct Authenticated {
    secret_id: String,
    action: String,
    version: Option<String>,
    params: Map<String, Value>,
}

fn authenticate(
    auth: &Authenticator,
    method: &Method,
    headers: &[(String, String)],
    uri: &Uri,
    body: &[u8],
) -> Result<Authenticated, ApiError> {
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let query = uri.query().unwrap_or("");
    let is_post = method == Method::POST;
    let is_json = header("content-type").is_some_and(|v| v.starts_with("application/json"));

    if header("authorization").is_some() {
        let request = Tc3Request {
            http_method: method.as_str(),
            path: uri.path(),
            raw_query: if is_post { "" } else { query },
            headers,
            body: if is_post { body } else { b"" },
        };
        let secret_id = auth.verify_tc3(&request, unix_now())?;
        let action = header("x-tc-action")
            .filter(|a| !a.is_empty())
            .ok_or_else(|| ApiError::MissingParameter("X-TC-Action".to_owned()))?;
        let params = if is_post && is_json {
            json_body(body)?
        } else {
            let raw = if is_post { body } else { query.as_bytes() };
            input::unflatten(&decode_form(raw))?
        };
        return Ok(Authenticated {
            secret_id,
            action,
            version: header("x-tc-version"),
            params,
        });
    }

    // Signature v1: every parameter, the common ones included, in the query or form body.
    let pairs = decode_form(if is_post { body } else { query.as_bytes() });
    let host = header("host").unwrap_or_default();
    let request = V1Request {
        http_method: method.as_str(),
        host: &host,
        path: uri.path(),
        params: &pairs,
        skip_at_values: false,
    };
    let secret_id = auth.verify_v1(&request, unix_now(), Authenticator::API3_WINDOW_SECS)?;
    let common = Params(&pairs);
    let action = common.required("Action")?.to_owned();
    let version = common.get("Version").map(str::to_owned);
    let own: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| !COMMON_PARAMS.contains(&k.as_str()))
        .cloned()
        .collect();
    Ok(Authenticated {
        secret_id,
        action,
        version,
        params: input::unflatten(&own)?,
    })
}

fn json_body(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(fields)) => Ok(fields),
        Ok(_) => Err(ApiError::invalid(
            "InvalidParameter",
            "the request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::invalid(
            "InvalidParameter",
            format!("the request body is not valid JSON: {e}"),
        )),
    }
}
