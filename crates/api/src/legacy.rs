//! The legacy SCF API 2.0 dialect at `/v2/index.php`.
//!
//! Parameters come from the query string (GET) or a form body (POST), are authenticated with
//! signature v1, and select an action. Every answer, errors included, is HTTP 200 with
//! `Content-Type: application/json` and the envelope `{code, message, codeDesc, ...}`: the
//! legacy clients treat any other status as a transport failure.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, Method, Uri, header};
use axum::response::Response;
use nimbus_control::{FunctionSettings, Limits};
use nimbus_store::{
    FunctionOrder, FunctionQuery, FunctionRecord, InvocationOrder, InvocationQuery,
};
use serde_json::{Map, Value, json};
use tracing::Instrument as _;

use crate::auth::V1Request;
use crate::error::ApiError;
use crate::params::{Params, decode_form};
use crate::platform::Billing;
use crate::{ApiState, json_response, unix_now};

/// The fixed path of every legacy product.
pub const PATH: &str = "/v2/index.php";
/// Largest event (`param`) of a legacy invocation.
pub const MAX_EVENT_BYTES: usize = 1024 * 1024;
const NAMESPACE: &str = nimbus_control::rules::DEFAULT_NAMESPACE;

/// Serves one legacy request.
pub async fn handle(
    State(state): State<Arc<ApiState>>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match crate::request_body(body) {
        Ok(body) => body,
        Err(error) => return envelope(Err(error)),
    };
    let raw = if method == Method::POST {
        body.to_vec()
    } else {
        uri.query().unwrap_or("").as_bytes().to_vec()
    };
    let params = decode_form(&raw);
    let action = Params(&params).get("Action").unwrap_or("").to_owned();
    let span = tracing::info_span!(
        "request",
        dialect = "legacy",
        action = %action,
        secret_id = tracing::field::Empty,
    );
    async move {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let request = V1Request {
            http_method: method.as_str(),
            host,
            path: PATH,
            params: &params,
            skip_at_values: method == Method::POST,
        };
        let window = crate::Authenticator::LEGACY_WINDOW_SECS;
        let result = match state.auth.verify_v1(&request, unix_now(), window) {
            Ok(secret_id) => {
                tracing::Span::current().record("secret_id", secret_id.as_str());
                dispatch(&state, &action, Params(&params)).await
            }
            Err(error) => Err(error),
        };
        envelope(result)
    }
    .instrument(span)
    .await
}

fn envelope(result: Result<Map<String, Value>, ApiError>) -> Response {
    let body = match result {
        Ok(mut fields) => {
            let mut body = Map::new();
            body.insert("code".into(), json!(0));
            body.insert("message".into(), json!(""));
            body.insert("codeDesc".into(), json!("Success"));
            body.append(&mut fields);
            Value::Object(body)
        }
        Err(error) => {
            tracing::debug!(code = error.code(), "request refused");
            json!({
                "code": error.legacy_code(),
                "message": error.to_string(),
                "codeDesc": error.code(),
            })
        }
    };
    json_response(&body)
}

async fn dispatch(
    state: &ApiState,
    action: &str,
    params: Params<'_>,
) -> Result<Map<String, Value>, ApiError> {
    match action {
        "CreateFunction" => create_function(state, params).await,
        "UpdateFunction" => update_function(state, params).await,
        "GetFunction" => get_function(state, params).await,
        "ListFunctions" => list_functions(state, params).await,
        "DeleteFunction" => delete_function(state, params).await,
        "InvokeFunction" => invoke_function(state, params).await,
        "GetFunctionLogs" => get_function_logs(state, params).await,
        "" => Err(ApiError::MissingParameter("Action".into())),
        other => Err(ApiError::InvalidAction(other.to_owned())),
    }
}

fn data(value: Value) -> Map<String, Value> {
    let mut fields = Map::new();
    fields.insert("data".into(), value);
    fields
}

fn namespace<'a>(params: &Params<'a>) -> &'a str {
    params
        .get("namespace")
        .filter(|n| !n.is_empty())
        .unwrap_or(NAMESPACE)
}

fn settings(params: &Params<'_>) -> Result<FunctionSettings, ApiError> {
    Ok(FunctionSettings {
        handler: params.get("handler").map(str::to_owned),
        runtime: params
            .get("runtime")
            .filter(|r| !r.is_empty())
            .map(str::to_owned),
        description: params.get("description").map(str::to_owned),
        memory_size: params.u32("memorySize", "InvalidParameterValue.MemorySize")?,
        timeout: params.u32("timeout", "InvalidParameterValue.Timeout")?,
        environment: params.environment("environment")?,
        code: params.get("code").map(str::to_owned),
        // The legacy API has no network setting: functions keep the default (none).
        public_net: None,
        init_timeout: None,
    })
}

async fn create_function(
    state: &ApiState,
    params: Params<'_>,
) -> Result<Map<String, Value>, ApiError> {
    let name = params.required("functionName")?;
    let settings = settings(&params)?;
    state
        .platform
        .create_function(namespace(&params), name, settings, &Limits::LEGACY)
        .await?;
    Ok(Map::new())
}

async fn update_function(
    state: &ApiState,
    params: Params<'_>,
) -> Result<Map<String, Value>, ApiError> {
    let name = params.required("functionName")?;
    let settings = settings(&params)?;
    state
        .platform
        .update_function(namespace(&params), name, settings, &Limits::LEGACY)
        .await?;
    Ok(Map::new())
}

async fn get_function(
    state: &ApiState,
    params: Params<'_>,
) -> Result<Map<String, Value>, ApiError> {
    let name = params.required("functionName")?;
    let with_code = params.choice("code", &["0", "1"], "InvalidParameterValue.Code")? == Some(1);
    let record = state
        .platform
        .get_function(namespace(&params), name)
        .await?;
    let mut view = function_view(&record);
    let variables: Vec<Value> = record
        .environment
        .iter()
        .map(|(key, value)| json!({"key": key, "value": value}))
        .collect();
    view.insert("handler".into(), json!(record.handler));
    view.insert("memorySize".into(), json!(record.memory_size));
    view.insert("timeout".into(), json!(record.timeout));
    view.insert("codeSize".into(), json!(record.code_size));
    view.insert("version".into(), json!("LATEST"));
    view.insert("triggers".into(), json!([]));
    view.insert("environment".into(), json!({ "variables": variables }));
    view.insert("status".into(), json!("Active"));
    if with_code {
        view.insert(
            "code".into(),
            json!(state.platform.handler_source(&record)?),
        );
        view.insert("codeResult".into(), json!("success"));
        view.insert("codeError".into(), json!(""));
    }
    Ok(data(Value::Object(view)))
}

/// The fields a function shows in `ListFunctions` (and, with more, in `GetFunction`).
fn function_view(record: &FunctionRecord) -> Map<String, Value> {
    let mut view = Map::new();
    view.insert("functionName".into(), json!(record.function_name));
    view.insert("namespace".into(), json!(record.namespace));
    view.insert("runtime".into(), json!(record.runtime));
    view.insert("description".into(), json!(record.description));
    view.insert("addTime".into(), json!(crate::format_time(record.add_time)));
    view.insert("modTime".into(), json!(crate::format_time(record.mod_time)));
    view
}

/// `offset` and `limit` of a listing, with SCF's defaults and a cap on the page size.
fn page(params: &Params<'_>) -> Result<(u32, u32), ApiError> {
    let offset = params
        .u32("offset", "InvalidParameterValue.Offset")?
        .unwrap_or(0);
    let limit = params
        .u32("limit", "InvalidParameterValue.Limit")?
        .unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(
            "InvalidParameterValue.Limit",
            format!("limit {limit} is invalid; use 1 to 100"),
        ));
    }
    Ok((offset, limit))
}

/// `order`: ascending unless `desc` (the default is `default_ascending`).
fn ascending(params: &Params<'_>, default_ascending: bool) -> Result<bool, ApiError> {
    let order = params.choice("order", &["asc", "desc"], "InvalidParameterValue.Order")?;
    Ok(order.map_or(default_ascending, |i| i == 0))
}

async fn list_functions(
    state: &ApiState,
    params: Params<'_>,
) -> Result<Map<String, Value>, ApiError> {
    let orders = ["addtime", "modtime", "functionname"];
    let order_by = match params.choice("orderby", &orders, "InvalidParameterValue.Orderby")? {
        Some(1) => FunctionOrder::ModTime,
        Some(2) => FunctionOrder::FunctionName,
        _ => FunctionOrder::AddTime,
    };
    let (offset, limit) = page(&params)?;
    let query = FunctionQuery {
        namespace: namespace(&params).to_owned(),
        search_key: params
            .get("searchKey")
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        order_by,
        ascending: ascending(&params, false)?,
        offset,
        limit,
    };
    let (total, records) = state.platform.list_functions(query).await?;
    let functions: Vec<Value> = records
        .iter()
        .map(|r| Value::Object(function_view(r)))
        .collect();
    Ok(data(json!({ "functions": functions, "total": total })))
}

async fn delete_function(
    state: &ApiState,
    params: Params<'_>,
) -> Result<Map<String, Value>, ApiError> {
    let name = params.required("functionName")?;
    state
        .platform
        .delete_function(namespace(&params), name)
        .await?;
    Ok(Map::new())
}

async fn invoke_function(
    state: &ApiState,
    params: Params<'_>,
) -> Result<Map<String, Value>, ApiError> {
    let name = params.required("functionName")?;
    let types = ["RequestResponse", "Event"];
    let is_async =
        params.choice("invokeType", &types, "InvalidParameterValue.InvokeType")? == Some(1);
    let tail = params.choice(
        "logType",
        &["None", "Tail"],
        "InvalidParameterValue.LogType",
    )? == Some(1);
    if let Some(version) = params.get("version").or(params.get("qualifier"))
        && !matches!(version, "" | "$LATEST" | "LATEST")
    {
        return Err(ApiError::invalid(
            "InvalidParameterValue.Qualifier",
            format!("version {version:?} does not exist; only $LATEST is served"),
        ));
    }
    let event = params
        .get("param")
        .filter(|p| !p.is_empty())
        .unwrap_or("{}");
    crate::check_event(
        event,
        MAX_EVENT_BYTES,
        "param",
        "InvalidParameterValue.Param",
    )?;

    let namespace = namespace(&params);
    if is_async {
        let request_id = state
            .platform
            .invoke_async(namespace, name, event.to_owned())
            .await?;
        return Ok(data(json!({ "requestId": request_id })));
    }
    let result = state
        .platform
        .invoke_sync(namespace, name, event.to_owned(), Billing::Per100Ms)
        .await?;
    let log = result.log_view(tail);
    Ok(data(json!({
            "requestId": result.request_id,
            "retMsg": result.ret_msg,
            "errMsg": result.err_msg,
            "log": log,
            "logMsg": log,
            "duration": result.duration_ms,
            "memUsage": result.mem_usage,
            "billDuration": result.bill_ms,
            "invokeResult": result.invoke_result,
    })))
}

async fn get_function_logs(
    state: &ApiState,
    params: Params<'_>,
) -> Result<Map<String, Value>, ApiError> {
    let name = params.required("functionName")?;
    let orders = [
        "start_time",
        "function_name",
        "request_id",
        "duration",
        "mem_usage",
    ];
    let order_by = match params.choice("orderby", &orders, "InvalidParameterValue.Orderby")? {
        Some(1) => InvocationOrder::FunctionName,
        Some(2) => InvocationOrder::RequestId,
        Some(3) => InvocationOrder::Duration,
        Some(4) => InvocationOrder::MemUsage,
        _ => InvocationOrder::StartTime,
    };
    let (offset, limit) = page(&params)?;
    let query = InvocationQuery {
        namespace: namespace(&params).to_owned(),
        function_name: name.to_owned(),
        request_id: params
            .get("requestId")
            .filter(|r| !r.is_empty())
            .map(str::to_owned),
        order_by,
        ascending: ascending(&params, false)?,
        offset,
        limit,
        ..InvocationQuery::default()
    };
    let (total, records) = state.platform.list_invocations(query).await?;
    let entries: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "functionName": r.function_name,
                "requestId": r.request_id,
                "retMsg": r.ret_msg,
                "errMsg": r.err_msg,
                "retCode": r.ret_code,
                "status": r.status.as_str(),
                "invokeType": r.invoke_type.as_str(),
                "startTime": crate::format_time(r.start_time),
                "duration": r.duration_us as f64 / 1000.0,
                "billDuration": r.bill_duration_ms,
                "memUsage": r.mem_usage,
                "log": r.log,
            })
        })
        .collect();
    let mut fields = Map::new();
    fields.insert("total".into(), json!(total));
    fields.insert("data".into(), Value::Array(entries));
    Ok(fields)
}
