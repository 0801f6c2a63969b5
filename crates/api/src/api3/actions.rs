//! API 3.0 actions: read the fields, call the platform, shape the answer.

use nimbus_control::{FunctionSettings, Limits};
use nimbus_store::{
    FunctionOrder, FunctionQuery, FunctionRecord, InvocationOrder, InvocationQuery,
    InvocationRecord, InvocationStatus, InvokeType, RetCodeFilter,
};
use serde_json::{Map, Value, json};

use super::Input;
use crate::error::ApiError;
use crate::platform::Billing;
use crate::{ApiState, check_event, format_time};

/// Largest event of a synchronous invocation.
pub const MAX_SYNC_EVENT_BYTES: usize = 6 * 1024 * 1024;
/// Largest event of an asynchronous invocation.
pub const MAX_ASYNC_EVENT_BYTES: usize = 128 * 1024;
const DEFAULT_NAMESPACE: &str = nimbus_control::rules::DEFAULT_NAMESPACE;

/// Fields accepted and not used: settings that have no meaning on a self-hosted node (log
/// shipping, VPCs, tags, tracing).
const IGNORED_FUNCTION_FIELDS: &[&str] = &[
    "Role",
    "ClsLogsetId",
    "ClsTopicId",
    "Tags",
    "VpcConfig",
    "InstallDependency",
    "TraceEnable",
    "DnsCache",
    "IntranetConfig",
    "AutoDeployClsTopicIndex",
    "AutoCreateClsTopic",
    "L5Enable",
    "IgnoreSysLog",
    "EipConfig",
];

/// Fields refused when set: features a user would rely on and that Nimbus does not have.
const UNSUPPORTED_FUNCTION_FIELDS: &[&str] = &[
    "Layers",
    "DeadLetterConfig",
    "CfsConfig",
    "ProtocolType",
    "ProtocolParams",
    "InstanceConcurrencyConfig",
    "ImageConfig",
];

type Answer = Result<Map<String, Value>, ApiError>;

/// Runs one action.
pub async fn dispatch(state: &ApiState, action: &str, input: Input) -> Answer {
    match action {
        "CreateFunction" => create_function(state, input).await,
        "UpdateFunctionCode" => update_function_code(state, input).await,
        "UpdateFunctionConfiguration" => update_function_configuration(state, input).await,
        "GetFunction" => get_function(state, input).await,
        "ListFunctions" => list_functions(state, input).await,
        "DeleteFunction" => delete_function(state, input).await,
        "Invoke" => invoke(state, input, "ClientContext", true).await,
        "InvokeFunction" => invoke(state, input, "Event", false).await,
        "GetFunctionLogs" => get_function_logs(state, input).await,
        "GetAsyncEventStatus" => get_async_event_status(state, input).await,
        "ListAsyncEvents" => list_async_events(state, input).await,
        "TerminateAsyncEvent" => terminate_async_event(state, input).await,
        "CreateNamespace" => create_namespace(state, input).await,
        "UpdateNamespace" => update_namespace(state, input).await,
        "DeleteNamespace" => delete_namespace(state, input).await,
        "ListNamespaces" => list_namespaces(state, input).await,
        "GetAccount" => get_account(state, input).await,
        "GetFunctionEventInvokeConfig" => get_event_invoke_config(state, input).await,
        "UpdateFunctionEventInvokeConfig" => update_event_invoke_config(state, input).await,
        "PutReservedConcurrencyConfig" => put_reserved_concurrency(state, input).await,
        "GetReservedConcurrencyConfig" => get_reserved_concurrency(state, input).await,
        "DeleteReservedConcurrencyConfig" => delete_reserved_concurrency(state, input).await,
        // Nimbus extensions: the dead-letter store and each attempt of an async event.
        "ListDeadLetterEvents" => list_dead_letter_events(state, input).await,
        "ReplayDeadLetterEvent" => replay_dead_letter_event(state, input).await,
        "ListAsyncEventAttempts" => list_async_event_attempts(state, input).await,
        other => Err(ApiError::InvalidAction(other.to_owned())),
    }
}

fn namespace(input: &mut Input) -> Result<String, ApiError> {
    Ok(input
        .string("Namespace")?
        .filter(|n| !n.is_empty())
        .unwrap_or(DEFAULT_NAMESPACE.into()))
}

/// Only `$LATEST` exists (and `$DEFAULT`, the default alias, points at it).
fn check_qualifier(input: &mut Input, name: &str) -> Result<(), ApiError> {
    match input.string(name)?.as_deref() {
        None | Some("" | "$LATEST" | "$DEFAULT") => Ok(()),
        Some(other) => Err(ApiError::QualifierNotFound(other.to_owned())),
    }
}

fn environment(input: &mut Input) -> Result<Option<Vec<(String, String)>>, ApiError> {
    let Some(mut environment) = input.object("Environment")? else {
        return Ok(None);
    };
    let mut variables = Vec::new();
    for mut variable in environment.objects("Variables")? {
        let key = variable.string("Key")?.unwrap_or_default();
        let value = variable.string("Value")?.unwrap_or_default();
        variable.finish()?;
        variables.push((key, value));
    }
    environment.finish()?;
    Ok(Some(variables))
}

/// `PublicNetConfig.PublicNetStatus`: `ENABLE` gives instances the host network.
fn public_net(input: &mut Input) -> Result<Option<bool>, ApiError> {
    let Some(mut config) = input.object("PublicNetConfig")? else {
        return Ok(None);
    };
    let status = match config.string("PublicNetStatus")?.as_deref() {
        None | Some("") => None,
        Some("ENABLE") => Some(true),
        Some("DISABLE") => Some(false),
        Some(other) => {
            return Err(ApiError::invalid(
                "InvalidParameterValue.PublicNetStatus",
                format!("PublicNetStatus {other:?} is invalid; use ENABLE or DISABLE"),
            ));
        }
    };
    if let Some(mut eip) = config.object("EipConfig")? {
        if eip.string("EipStatus")?.as_deref() == Some("ENABLE") {
            return Err(ApiError::Unsupported(
                "fixed egress IPs (EipConfig) are not supported".into(),
            ));
        }
        eip.finish()?;
    }
    config.finish()?;
    Ok(status)
}

/// `Code.ZipFile` (or a top-level `ZipFile`); other code sources are refused.
fn zip_file(input: &mut Input) -> Result<Option<String>, ApiError> {
    let mut zip = input.string("ZipFile")?;
    if let Some(mut code) = input.object("Code")? {
        code.unsupported(&[
            "CosBucketName",
            "CosObjectName",
            "DemoId",
            "TempCosObjectName",
        ])?;
        code.unsupported(&["ImageConfig", "GitUrl"])?;
        code.ignore(&["CosBucketRegion"]);
        if let Some(inner) = code.string("ZipFile")? {
            zip = Some(inner);
        }
        code.finish()?;
    }
    match input.string("CodeSource")?.as_deref() {
        None | Some("" | "ZipFile") => {}
        Some(other) => {
            return Err(ApiError::Unsupported(format!(
                "CodeSource {other} is not supported; send the code as ZipFile"
            )));
        }
    }
    input.unsupported(&["CosBucketName", "CosObjectName"])?;
    input.ignore(&["CosBucketRegion", "EnvId"]);
    Ok(zip)
}

fn refuse_publish(input: &mut Input) -> Result<(), ApiError> {
    if input.flag("Publish")? == Some(true) {
        return Err(ApiError::Unsupported(
            "publishing versions is not supported; $LATEST is the only version".into(),
        ));
    }
    Ok(())
}

fn function_type(input: &mut Input) -> Result<(), ApiError> {
    match input.string("Type")?.as_deref() {
        None | Some("" | "Event") => Ok(()),
        Some(other) => Err(ApiError::Unsupported(format!(
            "function Type {other} is not supported; only Event functions are"
        ))),
    }
}

async fn create_function(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    let settings = FunctionSettings {
        code: zip_file(&mut input)?,
        handler: input.string("Handler")?,
        runtime: input.string("Runtime")?.filter(|r| !r.is_empty()),
        description: input.string("Description")?,
        memory_size: input.u32("MemorySize")?,
        timeout: input.u32("Timeout")?,
        environment: environment(&mut input)?,
        public_net: public_net(&mut input)?,
        init_timeout: input.u32("InitTimeout")?,
    };
    function_type(&mut input)?;
    if input.flag("AsyncRunEnable")? == Some(true) {
        return Err(ApiError::Unsupported(
            "AsyncRunEnable is not supported".into(),
        ));
    }
    input.unsupported(UNSUPPORTED_FUNCTION_FIELDS)?;
    input.ignore(IGNORED_FUNCTION_FIELDS);
    input.finish()?;
    state
        .platform
        .create_function(&namespace, &name, settings, &Limits::API3)
        .await?;
    Ok(Map::new())
}

async fn update_function_code(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    let code = zip_file(&mut input)?.ok_or_else(|| ApiError::MissingParameter("ZipFile".into()))?;
    let settings = FunctionSettings {
        code: Some(code),
        handler: input.string("Handler")?,
        ..FunctionSettings::default()
    };
    refuse_publish(&mut input)?;
    input.ignore(&["InstallDependency"]);
    input.finish()?;
    let limits = Limits::API3.with_code_limit(20 * 1024 * 1024);
    state
        .platform
        .update_function(&namespace, &name, settings, &limits)
        .await?;
    Ok(Map::new())
}

async fn update_function_configuration(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    if let Some(runtime) = input.string("Runtime")?.filter(|r| !r.is_empty()) {
        let current = state.platform.get_function(&namespace, &name).await?;
        if runtime != current.runtime {
            return Err(ApiError::invalid(
                "InvalidParameterValue.Runtime",
                format!("the runtime cannot be changed (it is {})", current.runtime),
            ));
        }
    }
    let settings = FunctionSettings {
        description: input.string("Description")?,
        memory_size: input.u32("MemorySize")?,
        timeout: input.u32("Timeout")?,
        environment: environment(&mut input)?,
        public_net: public_net(&mut input)?,
        init_timeout: input.u32("InitTimeout")?,
        ..FunctionSettings::default()
    };
    refuse_publish(&mut input)?;
    input.unsupported(UNSUPPORTED_FUNCTION_FIELDS)?;
    input.ignore(IGNORED_FUNCTION_FIELDS);
    input.finish()?;
    state
        .platform
        .update_function(&namespace, &name, settings, &Limits::API3)
        .await?;
    Ok(Map::new())
}

/// The fields a function shows in listings (and, with more, in `GetFunction`).
fn function_summary(record: &FunctionRecord) -> Map<String, Value> {
    let mut view = Map::new();
    for (key, value) in [
        ("FunctionName", json!(record.function_name)),
        ("Namespace", json!(record.namespace)),
        ("Runtime", json!(record.runtime)),
        ("Description", json!(record.description)),
        ("AddTime", json!(format_time(record.add_time))),
        ("ModTime", json!(format_time(record.mod_time))),
        ("Status", json!("Active")),
        ("StatusDesc", json!("")),
        ("Type", json!("Event")),
        ("Tags", json!([])),
        ("StatusReasons", json!([])),
        (
            "ReservedConcurrencyMem",
            json!(record.reserved_concurrency_mb.unwrap_or(0)),
        ),
    ] {
        view.insert(key.into(), value);
    }
    view
}

async fn get_function(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    check_qualifier(&mut input, "Qualifier")?;
    let show_code = input.flag("ShowCode")?.unwrap_or(false);
    input.finish()?;
    let record = state.platform.get_function(&namespace, &name).await?;
    let variables: Vec<Value> = record
        .environment
        .iter()
        .map(|(key, value)| json!({"Key": key, "Value": value}))
        .collect();
    let mut view = function_summary(&record);
    for (key, value) in [
        ("Handler", json!(record.handler)),
        ("MemorySize", json!(record.memory_size)),
        ("Timeout", json!(record.timeout)),
        ("CodeSize", json!(record.code_size)),
        ("FunctionVersion", json!("$LATEST")),
        ("Qualifier", json!("$LATEST")),
        ("Environment", json!({ "Variables": variables })),
        ("Triggers", json!([])),
        ("CodeResult", json!("success")),
        ("CodeError", json!("")),
        ("ErrNo", json!(0)),
        ("AvailableStatus", json!("Available")),
        ("AsyncRunEnable", json!("FALSE")),
        ("InitTimeout", json!(record.init_timeout)),
        (
            "PublicNetConfig",
            json!({
                "PublicNetStatus": if record.public_net { "ENABLE" } else { "DISABLE" },
                "EipConfig": { "EipStatus": "DISABLE", "EipAddress": [] },
            }),
        ),
    ] {
        view.insert(key.into(), value);
    }
    if show_code {
        view.insert(
            "CodeInfo".into(),
            json!(state.platform.handler_source(&record)?),
        );
    }
    Ok(view)
}

fn page(input: &mut Input, default_limit: u32, max_limit: u32) -> Result<(u32, u32), ApiError> {
    let offset = input.u32("Offset")?.unwrap_or(0);
    let limit = input.u32("Limit")?.unwrap_or(default_limit);
    if !(1..=max_limit).contains(&limit) {
        return Err(ApiError::invalid(
            "InvalidParameterValue.Limit",
            format!("Limit {limit} is invalid; use 1 to {max_limit}"),
        ));
    }
    Ok((offset, limit))
}

/// `Order`: `ASC` or `DESC` (any case); `None` when absent.
fn ascending(input: &mut Input, name: &str) -> Result<Option<bool>, ApiError> {
    match input.string(name)? {
        None => Ok(None),
        Some(order) if order.is_empty() => Ok(None),
        Some(order) if order.eq_ignore_ascii_case("asc") => Ok(Some(true)),
        Some(order) if order.eq_ignore_ascii_case("desc") => Ok(Some(false)),
        Some(order) => Err(ApiError::invalid(
            "InvalidParameterValue.Order",
            format!("{name} {order:?} is invalid; use ASC or DESC"),
        )),
    }
}

async fn list_functions(state: &ApiState, mut input: Input) -> Answer {
    let namespace = namespace(&mut input)?;
    let order_by = match input.string("Orderby")?.as_deref() {
        None | Some("" | "AddTime") => FunctionOrder::AddTime,
        Some("ModTime") => FunctionOrder::ModTime,
        Some("FunctionName") => FunctionOrder::FunctionName,
        Some(other) => {
            return Err(ApiError::invalid(
                "InvalidParameterValue.Orderby",
                format!("Orderby {other:?} is invalid; use AddTime, ModTime or FunctionName"),
            ));
        }
    };
    let ascending = ascending(&mut input, "Order")?.unwrap_or(false);
    let (offset, limit) = page(&mut input, 20, 1000)?;
    let search_key = input.string("SearchKey")?.filter(|s| !s.is_empty());
    input.unsupported(&["Filters", "Description"])?;
    input.finish()?;
    let query = FunctionQuery {
        namespace,
        search_key,
        order_by,
        ascending,
        offset,
        limit,
    };
    let (total, records) = state.platform.list_functions(query).await?;
    let functions: Vec<Value> = records
        .iter()
        .map(|r| Value::Object(function_summary(r)))
        .collect();
    let mut answer = Map::new();
    answer.insert("Functions".into(), Value::Array(functions));
    answer.insert("TotalCount".into(), json!(total));
    Ok(answer)
}

async fn delete_function(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    check_qualifier(&mut input, "Qualifier")?;
    input.finish()?;
    state.platform.delete_function(&namespace, &name).await?;
    Ok(Map::new())
}

/// `Invoke` (event in `ClientContext`, sync or async) and `InvokeFunction` (event in `Event`,
/// sync only).
async fn invoke(
    state: &ApiState,
    mut input: Input,
    event_field: &str,
    may_be_async: bool,
) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    check_qualifier(&mut input, "Qualifier")?;
    let is_async = if may_be_async {
        match input.string("InvocationType")?.as_deref() {
            None | Some("" | "RequestResponse") => false,
            Some("Event") => true,
            Some(other) => {
                return Err(ApiError::invalid(
                    "InvalidParameterValue.InvocationType",
                    format!("InvocationType {other:?} is invalid; use RequestResponse or Event"),
                ));
            }
        }
    } else {
        false
    };
    let tail = match input.string("LogType")?.as_deref() {
        None | Some("" | "None") => false,
        Some("Tail") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "InvalidParameterValue.LogType",
                format!("LogType {other:?} is invalid; use None or Tail"),
            ));
        }
    };
    let event = input
        .string(event_field)?
        .filter(|e| !e.is_empty())
        .unwrap_or("{}".into());
    input.ignore(&["RoutingKey"]);
    input.finish()?;
    let max = if is_async {
        MAX_ASYNC_EVENT_BYTES
    } else {
        MAX_SYNC_EVENT_BYTES
    };
    check_event(
        &event,
        max,
        event_field,
        "InvalidParameterValue.ClientContext",
    )?;

    if is_async {
        let id = state
            .platform
            .invoke_async(&namespace, &name, event)
            .await?;
        let result = json!({
            "FunctionRequestId": id, "RetMsg": "", "ErrMsg": "", "Log": "",
            "MemUsage": 0, "Duration": 0, "BillDuration": 0, "InvokeResult": 0,
        });
        return Ok(result_answer(result));
    }
    let result = state
        .platform
        .invoke_sync(&namespace, &name, event, Billing::PerMs)
        .await?;
    Ok(result_answer(json!({
            "FunctionRequestId": result.request_id,
            "RetMsg": result.ret_msg,
            "ErrMsg": result.err_msg,
            "Log": result.log_view(tail),
            "MemUsage": result.mem_usage,
            "Duration": result.duration_ms,
            "BillDuration": result.bill_ms,
            "InvokeResult": result.invoke_result,
    })))
}

fn result_answer(result: Value) -> Map<String, Value> {
    let mut answer = Map::new();
    answer.insert("Result".into(), result);
    answer
}

/// Parses `YYYY-MM-DD HH:MM:SS` (UTC) into Unix milliseconds.
fn parse_time(name: &str, text: &str) -> Result<i64, ApiError> {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let bad = || {
        ApiError::invalid(
            "InvalidParameterValue",
            format!("{name} {text:?} is invalid; use YYYY-MM-DD HH:MM:SS (UTC)"),
        )
    };
    let parsed = time::PrimitiveDateTime::parse(text.trim(), &format).map_err(|_| bad())?;
    let nanos = parsed.assume_utc().unix_timestamp_nanos();
    i64::try_from(nanos / 1_000_000).map_err(|_| bad())
}

fn optional_time(input: &mut Input, name: &str) -> Result<Option<i64>, ApiError> {
    input
        .string(name)?
        .filter(|t| !t.is_empty())
        .map(|t| parse_time(name, &t))
        .transpose()
}

/// The `RetCode` of a log entry: 0 success, 2 running, 3 aborted, else the status code.
fn log_ret_code(record: &InvocationRecord) -> i32 {
    match record.status {
        InvocationStatus::Running => 2,
        InvocationStatus::Aborted => 3,
        InvocationStatus::Finished | InvocationStatus::Failed => record.ret_code,
    }
}

async fn get_function_logs(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    check_qualifier(&mut input, "Qualifier")?;
    let (offset, limit) = page(&mut input, 10, 1000)?;
    if u64::from(offset) + u64::from(limit) > 10_000 {
        return Err(ApiError::invalid(
            "InvalidParameterValue.Offset",
            "Offset + Limit may not exceed 10000",
        ));
    }
    let ascending = ascending(&mut input, "Order")?.unwrap_or(false);
    let order_by = match input.string("OrderBy")?.as_deref() {
        None | Some("" | "start_time") => InvocationOrder::StartTime,
        Some("function_name") => InvocationOrder::FunctionName,
        Some("duration") => InvocationOrder::Duration,
        Some("mem_usage") => InvocationOrder::MemUsage,
        Some(other) => {
            return Err(ApiError::invalid(
                "InvalidParameterValue.OrderBy",
                format!(
                    "OrderBy {other:?} is invalid; use start_time, function_name, duration or \
                     mem_usage"
                ),
            ));
        }
    };
    let mut ret_code = RetCodeFilter::Any;
    if let Some(mut filter) = input.object("Filter")? {
        ret_code = match filter.string("RetCode")?.as_deref() {
            None | Some("") => RetCodeFilter::Any,
            Some("is0") => RetCodeFilter::Success,
            Some("not0") => RetCodeFilter::Failure,
            Some("UserCodeException") => RetCodeFilter::Code(430),
            Some("TimeLimitExceeded") => RetCodeFilter::Code(433),
            Some("ResourceLimitExceeded") => RetCodeFilter::Code(434),
            Some(other) => {
                return Err(ApiError::invalid(
                    "InvalidParameterValue.Filters",
                    format!(
                        "Filter.RetCode {other:?} is invalid; use is0, not0, UserCodeException, \
                         TimeLimitExceeded or ResourceLimitExceeded"
                    ),
                ));
            }
        };
        filter.finish()?;
    }
    let query = InvocationQuery {
        namespace,
        function_name: name,
        request_id: input.string("FunctionRequestId")?.filter(|r| !r.is_empty()),
        ret_code,
        start_from: optional_time(&mut input, "StartTime")?,
        start_until: optional_time(&mut input, "EndTime")?,
        order_by,
        ascending,
        offset,
        limit,
        ..InvocationQuery::default()
    };
    input.ignore(&["SearchContext"]);
    input.finish()?;
    let (total, records) = state.platform.list_invocations(query).await?;
    let data: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "FunctionName": r.function_name,
                "RequestId": r.request_id,
                "RetMsg": if r.err_msg.is_empty() { &r.ret_msg } else { &r.err_msg },
                "RetCode": log_ret_code(r),
                "InvokeFinished": i32::from(r.status != InvocationStatus::Running),
                "StartTime": format_time(r.start_time),
                "Duration": r.duration_us as f64 / 1000.0,
                "BillDuration": r.bill_duration_ms,
                "MemUsage": r.mem_usage,
                "Log": r.log,
                "Level": if r.ret_code == 0 { "INFO" } else { "ERROR" },
                "Source": "",
                "RetryNum": 0,
            })
        })
        .collect();
    let mut answer = Map::new();
    answer.insert("TotalCount".into(), json!(total));
    answer.insert("Data".into(), Value::Array(data));
    Ok(answer)
}

/// `YYYY-MM-DD HH:MM:SS.ffffff`, as SCF prints async event times ("" for "not yet").
fn precise_time(unix_ms: i64) -> String {
    if unix_ms == 0 {
        return String::new();
    }
    format!(
        "{}.{:06}",
        format_time(unix_ms),
        unix_ms.rem_euclid(1000) * 1000
    )
}

/// The status code SCF reports for an async event.
fn event_status_code(record: &InvocationRecord) -> i32 {
    match record.status {
        InvocationStatus::Running => 0,
        InvocationStatus::Finished => 200,
        InvocationStatus::Failed | InvocationStatus::Aborted => record.ret_code,
    }
}

async fn get_async_event_status(state: &ApiState, mut input: Input) -> Answer {
    let request_id = input.required("InvokeRequestId")?;
    input.finish()?;
    let record = state.platform.async_event(&request_id).await?;
    Ok(result_answer(json!({
        "Status": record.status.as_str(),
        "StatusCode": event_status_code(&record),
        "InvokeRequestId": record.request_id,
    })))
}

fn time_interval(input: &mut Input, name: &str) -> Result<(Option<i64>, Option<i64>), ApiError> {
    let Some(mut interval) = input.object(name)? else {
        return Ok((None, None));
    };
    let start = optional_time(&mut interval, "Start")?;
    let end = optional_time(&mut interval, "End")?;
    interval.finish()?;
    Ok((start, end))
}

async fn list_async_events(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    check_qualifier(&mut input, "Qualifier")?;
    let invoke_types = input.strings("InvokeType")?;
    if invoke_types.iter().any(|t| t != InvokeType::Event.as_str()) {
        // Every async event of this node was invoked with InvocationType=Event.
        return Ok(event_list(0, &[]));
    }
    let mut statuses = Vec::new();
    for status in input.strings("Status")? {
        statuses.push(match status.as_str() {
            "RUNNING" => InvocationStatus::Running,
            "FINISHED" => InvocationStatus::Finished,
            "FAILED" => InvocationStatus::Failed,
            "ABORTED" => InvocationStatus::Aborted,
            other => {
                return Err(ApiError::invalid(
                    "InvalidParameterValue.Status",
                    format!(
                        "Status {other:?} is invalid; use RUNNING, FINISHED, FAILED or ABORTED"
                    ),
                ));
            }
        });
    }
    let (start_from, start_until) = time_interval(&mut input, "StartTimeInterval")?;
    let (end_from, end_until) = time_interval(&mut input, "EndTimeInterval")?;
    let ascending = ascending(&mut input, "Order")?.unwrap_or(false);
    let order_by = match input.string("Orderby")?.as_deref() {
        None | Some("" | "StartTime") => InvocationOrder::StartTime,
        Some("EndTime") => InvocationOrder::EndTime,
        Some(other) => {
            return Err(ApiError::invalid(
                "InvalidParameterValue.Orderby",
                format!("Orderby {other:?} is invalid; use StartTime or EndTime"),
            ));
        }
    };
    let (offset, limit) = page(&mut input, 20, 100)?;
    let query = InvocationQuery {
        namespace,
        function_name: name,
        request_id: input.string("InvokeRequestId")?.filter(|r| !r.is_empty()),
        invoke_type: Some(InvokeType::Event),
        statuses,
        start_from,
        start_until,
        end_from,
        end_until,
        order_by,
        ascending,
        offset,
        limit,
        ..InvocationQuery::default()
    };
    input.finish()?;
    let (total, records) = state.platform.list_invocations(query).await?;
    Ok(event_list(total, &records))
}

fn event_list(total: u64, records: &[InvocationRecord]) -> Map<String, Value> {
    let events: Vec<Value> = records
        .iter()
        .map(|r| {
            json!({
                "InvokeRequestId": r.request_id,
                "InvokeType": r.invoke_type.as_str(),
                "Qualifier": "$LATEST",
                "Status": r.status.as_str(),
                "StartTime": precise_time(r.start_time),
                "EndTime": precise_time(r.end_time),
            })
        })
        .collect();
    let mut answer = Map::new();
    answer.insert("TotalCount".into(), json!(total));
    answer.insert("EventList".into(), Value::Array(events));
    answer
}

async fn terminate_async_event(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let request_id = input.required("InvokeRequestId")?;
    let namespace = namespace(&mut input)?;
    // SCF: true sends the function SIGTERM and lets it end of its own accord.
    let gracefully = input.flag("GraceShutdown")?.unwrap_or(false);
    input.finish()?;
    state
        .platform
        .terminate_async_event(&namespace, &name, &request_id, gracefully)
        .await?;
    Ok(Map::new())
}

async fn create_namespace(state: &ApiState, mut input: Input) -> Answer {
    let namespace = input.required("Namespace")?;
    let description = input.string("Description")?.unwrap_or_default();
    input.ignore(&["ResourceEnv"]);
    input.finish()?;
    state
        .platform
        .create_namespace(&namespace, &description)
        .await?;
    Ok(Map::new())
}

async fn update_namespace(state: &ApiState, mut input: Input) -> Answer {
    let namespace = input.required("Namespace")?;
    let description = input.string("Description")?.unwrap_or_default();
    input.finish()?;
    state
        .platform
        .update_namespace(&namespace, &description)
        .await?;
    Ok(Map::new())
}

async fn delete_namespace(state: &ApiState, mut input: Input) -> Answer {
    let namespace = input.required("Namespace")?;
    input.finish()?;
    state.platform.delete_namespace(&namespace).await?;
    Ok(Map::new())
}

async fn list_namespaces(state: &ApiState, mut input: Input) -> Answer {
    let (offset, limit) = page(&mut input, 20, 1000)?;
    let ascending = ascending(&mut input, "Order")?.unwrap_or(true);
    let by_update = match input.string("Orderby")?.as_deref() {
        None | Some("" | "Name") => false,
        Some("Updatetime") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "InvalidParameterValue.Orderby",
                format!("Orderby {other:?} is invalid; use Name or Updatetime"),
            ));
        }
    };
    let mut searches = Vec::new();
    for mut search in input.objects("SearchKey")? {
        let key = search.string("Key")?.unwrap_or_default();
        let value = search.string("Value")?.unwrap_or_default();
        search.finish()?;
        if key != "Namespace" && key != "Description" {
            return Err(ApiError::invalid(
                "InvalidParameterValue.SearchKey",
                format!("SearchKey.Key {key:?} is invalid; use Namespace or Description"),
            ));
        }
        searches.push((key, value));
    }
    input.finish()?;

    let mut namespaces = state.platform.list_namespaces().await?;
    namespaces.retain(|(record, _)| {
        searches.iter().all(|(key, value)| {
            let field = if key == "Namespace" {
                &record.namespace
            } else {
                &record.description
            };
            field.contains(value.as_str())
        })
    });
    if by_update {
        namespaces.sort_by_key(|(record, _)| record.mod_time);
    }
    if !ascending {
        namespaces.reverse();
    }
    let total = namespaces.len();
    let page: Vec<Value> = namespaces
        .iter()
        .skip(offset as usize)
        .take(limit as usize)
        .map(|(record, _)| {
            json!({
                "Name": record.namespace,
                "Description": record.description,
                "AddTime": format_time(record.add_time),
                "ModTime": format_time(record.mod_time),
                "Type": "default",
            })
        })
        .collect();
    let mut answer = Map::new();
    answer.insert("Namespaces".into(), Value::Array(page));
    answer.insert("TotalCount".into(), json!(total));
    Ok(answer)
}

async fn get_account(state: &ApiState, input: Input) -> Answer {
    input.finish()?;
    let limits = state.platform.limits();
    let namespaces = state.platform.list_namespaces().await?;
    let mut usage = Vec::new();
    for (record, count) in &namespaces {
        let query = FunctionQuery {
            namespace: record.namespace.clone(),
            search_key: None,
            order_by: FunctionOrder::FunctionName,
            ascending: true,
            offset: 0,
            limit: u32::try_from(*count).unwrap_or(u32::MAX),
        };
        let (_, functions) = state.platform.list_functions(query).await?;
        let names: Vec<&str> = functions.iter().map(|f| f.function_name.as_str()).collect();
        usage.push(json!({
            "Namespace": record.namespace,
            "Functions": names,
            "FunctionsCount": count,
        }));
    }
    let namespace_limits: Vec<Value> = namespaces
        .iter()
        .map(|(record, _)| {
            json!({
                "Namespace": record.namespace,
                "ConcurrentExecutions": limits.concurrency,
                "TimeoutLimit": Limits::API3.max_timeout_secs,
            })
        })
        .collect();
    let mut answer = Map::new();
    answer.insert(
        "AccountUsage".into(),
        json!({
            "Namespace": usage,
            "NamespacesCount": namespaces.len(),
            "UserConcurrencyMemLimit": limits.memory_budget_mb,
        }),
    );
    answer.insert(
        "AccountLimit".into(),
        json!({
            "Namespace": namespace_limits,
            "NamespacesCount": nimbus_control::rules::MAX_NAMESPACES,
        }),
    );
    Ok(answer)
}

fn async_trigger_config(record: &FunctionRecord) -> Map<String, Value> {
    let mut answer = Map::new();
    answer.insert(
        "AsyncTriggerConfig".into(),
        json!({
            "RetryConfig": [{ "RetryNum": record.async_retry_num }],
            "MsgTTL": record.async_msg_ttl,
        }),
    );
    answer
}

async fn get_event_invoke_config(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    check_qualifier(&mut input, "Qualifier")?;
    input.finish()?;
    let record = state.platform.get_function(&namespace, &name).await?;
    Ok(async_trigger_config(&record))
}

async fn update_event_invoke_config(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    let mut config = input
        .object("AsyncTriggerConfig")?
        .ok_or_else(|| ApiError::MissingParameter("AsyncTriggerConfig".into()))?;
    let mut retry_num = None;
    for mut retry in config.objects("RetryConfig")? {
        retry_num = retry.u32("RetryNum")?;
        retry.finish()?;
    }
    let msg_ttl = config.u32("MsgTTL")?;
    config.finish()?;
    input.finish()?;
    state
        .platform
        .update_async_config(&namespace, &name, retry_num, msg_ttl)
        .await?;
    Ok(Map::new())
}

async fn put_reserved_concurrency(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    let reserved = input
        .u32("ReservedConcurrencyMem")?
        .ok_or_else(|| ApiError::MissingParameter("ReservedConcurrencyMem".into()))?;
    input.finish()?;
    state
        .platform
        .set_reserved_concurrency(&namespace, &name, Some(reserved))
        .await?;
    Ok(Map::new())
}

async fn get_reserved_concurrency(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    input.finish()?;
    let record = state.platform.get_function(&namespace, &name).await?;
    let mut answer = Map::new();
    // SCF answers null for a function without a reservation.
    answer.insert("ReservedMem".into(), json!(record.reserved_concurrency_mb));
    Ok(answer)
}

async fn delete_reserved_concurrency(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    input.finish()?;
    state
        .platform
        .set_reserved_concurrency(&namespace, &name, None)
        .await?;
    Ok(Map::new())
}

async fn list_dead_letter_events(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    let (offset, limit) = page(&mut input, 20, 100)?;
    input.finish()?;
    let (total, letters) = state
        .platform
        .list_dead_letters(&namespace, &name, offset, limit)
        .await?;
    let letters: Vec<Value> = letters
        .iter()
        .map(|letter| {
            json!({
                "InvokeRequestId": letter.request_id,
                "Event": letter.event,
                "AcceptedTime": precise_time(letter.accepted_time),
                "FailedTime": precise_time(letter.failed_time),
                "Attempts": letter.attempts,
                "ErrorCode": letter.error_code,
                "ErrorMessage": letter.error_message,
            })
        })
        .collect();
    let mut answer = Map::new();
    answer.insert("TotalCount".into(), json!(total));
    answer.insert("DeadLetters".into(), Value::Array(letters));
    Ok(answer)
}

async fn replay_dead_letter_event(state: &ApiState, mut input: Input) -> Answer {
    let name = input.required("FunctionName")?;
    let namespace = namespace(&mut input)?;
    let request_id = input.required("InvokeRequestId")?;
    input.finish()?;
    let new_id = state
        .platform
        .replay_dead_letter(&namespace, &name, &request_id)
        .await?;
    let mut answer = Map::new();
    answer.insert("InvokeRequestId".into(), json!(new_id));
    Ok(answer)
}

async fn list_async_event_attempts(state: &ApiState, mut input: Input) -> Answer {
    let request_id = input.required("InvokeRequestId")?;
    input.finish()?;
    let attempts = state.platform.async_attempts(&request_id).await?;
    let attempts: Vec<Value> = attempts
        .iter()
        .map(|a| {
            json!({
                "Attempt": a.attempt,
                "StartTime": precise_time(a.start_time),
                "EndTime": precise_time(a.end_time),
                "RetCode": a.ret_code,
                "RetMsg": a.ret_msg,
                "ErrMsg": a.err_msg,
                "Duration": a.duration_us as f64 / 1000.0,
                "MemUsage": a.mem_usage,
                "Log": a.log,
            })
        })
        .collect();
    let mut answer = Map::new();
    answer.insert("TotalCount".into(), json!(attempts.len()));
    answer.insert("Attempts".into(), Value::Array(attempts));
    Ok(answer)
}
