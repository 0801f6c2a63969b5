//! The runtime API of SCF's custom runtime: the HTTP endpoints through which a function's own
//! `bootstrap` program says it is ready, fetches events and posts results.
//!
//! Each custom-runtime instance gets its own listener, bound before the instance is spawned:
//! sandboxed and without public network, on `127.0.0.1:9001` inside a network namespace made
//! for the instance ([`NetNamespace`]), which the instance then joins, so that nothing else can
//! reach it; otherwise on an ephemeral port of the host's loopback. The address reaches the program through its
//! environment: `SCF_RUNTIME_API` and `SCF_RUNTIME_API_PORT`, plus `AWS_LAMBDA_RUNTIME_API` and
//! the `AWS_LAMBDA_*` variables Lambda runtime clients read.
//!
//! ```text
//!  bootstrap                            RuntimeApi (server task)             Instance (engine)
//!  POST /runtime/init/ready ──────────> Starting → Ready ─── Answer::Ready ──> start() returns
//!                                       slot Idle → Open(event) <─ deliver() ─ run()
//!  GET  /runtime/invocation/next ─────> waits for Open, marks it fetched
//!       <── event, headers request_id, memory_limit_in_mb, time_limit_in_ms
//!  POST /runtime/invocation/response ─> Open and fetched → Idle ─ Answer::Response ─> 200 result
//!  POST /runtime/invocation/error ────> Open and fetched → Idle ─ Answer::Error ────> 430
//!  POST /runtime/init/error ──────────> Starting → Failed ─ Answer::InitError ──> 445
//! ```
//!
//! The Lambda paths are served on the same listener and map onto the same states:
//! `GET /2018-06-01/runtime/invocation/next` (which also counts as ready: Lambda has no ready
//! call), `POST /2018-06-01/runtime/invocation/{id}/response`, `.../{id}/error` and
//! `POST /2018-06-01/runtime/init/error`. Events carry both dialects' headers.
//!
//! Invariants:
//! - at most one invocation is open; the engine delivers the next one only after the previous
//!   one ended;
//! - the first answer wins: accepting one moves the slot back to `Idle` under the slot's lock,
//!   so any later answer finds no open invocation and gets `403`;
//! - only a fetched event can be answered, so a late duplicate answer can never be taken for
//!   the next invocation's;
//! - a `next` while an invocation is open returns that same event again;
//! - only the first `init/ready` counts; `init/error` counts only before it.
//!
//! `TCP_NODELAY` is set on every accepted connection: the calls are small request/response
//! pairs, which Nagle's algorithm and delayed acknowledgements would otherwise hold back by
//! tens of milliseconds.
//!
//! # Limitations
//!
//! - With public network (or `--isolation none`) the listener is on the host's loopback, and
//!   any process on the host that finds the port can call it (the protocol has no
//!   credentials). Without public network it is reachable from the instance alone.
//! - Answers larger than SCF's 6 MB response limit are cut off when the limit is reached and the
//!   invocation fails with status 407.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use nimbus_sandbox::NetNamespace;

use crate::runtime::Launch;
use crate::{EngineConfig, EngineError, FunctionSpec, Runtime, scf};

/// The loopback address the runtime API listens on, as the instance sees it.
const LISTEN_HOST: Ipv4Addr = Ipv4Addr::LOCALHOST;
/// The port inside an instance's own network namespace: the one SCF's runtimes default to.
const SCF_PORT: u16 = 9001;
/// Largest answer body kept: SCF's response limit. A larger one fails the invocation (407).
const MAX_ANSWER_BYTES: usize = scf::MAX_RESPONSE_BYTES;
/// Pause after a failed `accept` (out of descriptors), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the bootstrap told the runtime API, in the order it happened.
#[derive(Debug)]
pub(crate) enum Answer {
    /// The first `init/ready` (or, for Lambda clients, the first `next`).
    Ready,
    /// `init/error` before ready; the text the program posted.
    InitError(String),
    /// The first answer to the open invocation: its result, verbatim.
    Response(Bytes),
    /// The first answer to the open invocation: an error.
    Error {
        /// The posted error text (a Lambda error object's `errorMessage`).
        message: String,
        /// A Lambda error object's `stackTrace`, one frame per line.
        stack_trace: Option<String>,
    },
    /// The first answer to the open invocation was over [`MAX_ANSWER_BYTES`].
    TooLarge,
}

/// One instance's runtime API: the listener's task and the engine's side of its state.
///
/// Dropping it stops the server and every connection it serves.
#[derive(Debug)]
pub(crate) struct RuntimeApi {
    address: SocketAddr,
    shared: Arc<Shared>,
    answers: mpsc::UnboundedReceiver<Answer>,
    server: JoinHandle<()>,
}

/// What the handlers share with the engine.
#[derive(Debug)]
struct Shared {
    memory_mb: u32,
    /// A resource name for Lambda clients' `Lambda-Runtime-Invoked-Function-Arn`.
    function_resource: String,
    slot: watch::Sender<Slot>,
    init: Mutex<Init>,
    answers: mpsc::UnboundedSender<Answer>,
}

/// The invocation the bootstrap may fetch and answer.
#[derive(Debug)]
enum Slot {
    /// No invocation open: `next` waits.
    Idle,
    /// An invocation was delivered and not answered yet.
    Open(Arc<Delivery>),
    /// The instance is going away: `next` returns at once.
    Closed,
}

#[derive(Debug)]
struct Delivery {
    request_id: String,
    event: Bytes,
    time_limit_ms: u64,
    deadline_epoch_ms: u128,
    fetched: AtomicBool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Init {
    Starting,
    Ready,
    Failed,
}

/// Which set of paths a call came in on; they differ in status codes and error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dialect {
    Scf,
    Lambda,
}

/// Why an answer was refused.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    /// Nothing is open: never delivered, or already answered.
    NoInvocation,
    /// The open event was not fetched with `next` yet.
    NotFetched,
    /// A Lambda path named another request id.
    OtherRequest,
}

/// For a custom-runtime function, opens its instance's runtime API and adds its address (and
/// the Lambda variables) to `launch`'s environment; `None` for every other runtime.
///
/// # Errors
///
/// [`EngineError::OpenRuntimeApi`] if no loopback port can be bound.
pub(crate) async fn open_for(
    config: &EngineConfig,
    spec: &FunctionSpec,
    launch: &mut Launch,
    network: Option<&NetNamespace>,
) -> Result<Option<RuntimeApi>, EngineError> {
    if spec.runtime != Runtime::Custom {
        return Ok(None);
    }
    let resource = format!(
        "qcs::scf:{}:uin/{}:namespace/{}/function/{}",
        spec.region, config.uin, spec.namespace, spec.name
    );
    let api = RuntimeApi::open(spec.memory_mb, resource, network)
        .await
        .map_err(EngineError::OpenRuntimeApi)?;
    launch.env.extend(
        api.environment(spec, &launch.cwd)
            .map(|(k, v)| (k.to_owned(), v)),
    );
    Ok(Some(api))
}

impl RuntimeApi {
    /// Binds a loopback port and starts serving on it: SCF's usual port inside `network`
    /// when the instance will run there, any free port on the host's loopback otherwise.
    async fn open(
        memory_mb: u32,
        function_resource: String,
        network: Option<&NetNamespace>,
    ) -> io::Result<RuntimeApi> {
        let listener = match network {
            Some(namespace) => {
                let listener = namespace.bind_tcp(SocketAddr::from((LISTEN_HOST, SCF_PORT)))?;
                listener.set_nonblocking(true)?;
                TcpListener::from_std(listener)?
            }
            None => TcpListener::bind((LISTEN_HOST, 0)).await?,
        };
        let address = listener.local_addr()?;
        let (answers_tx, answers) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            memory_mb,
            function_resource,
            slot: watch::Sender::new(Slot::Idle),
            init: Mutex::new(Init::Starting),
            answers: answers_tx,
        });
        let server = tokio::spawn(serve(listener, router(Arc::clone(&shared))));
        Ok(RuntimeApi {
            address,
            shared,
            answers,
            server,
        })
    }

    /// The variables that tell a bootstrap (or a Lambda runtime client) where its API is.
    fn environment(
        &self,
        spec: &FunctionSpec,
        code_dir: &Path,
    ) -> impl Iterator<Item = (&'static str, String)> {
        [
            ("SCF_RUNTIME_API", self.address.ip().to_string()),
            ("SCF_RUNTIME_API_PORT", self.address.port().to_string()),
            ("AWS_LAMBDA_RUNTIME_API", self.address.to_string()),
            ("AWS_LAMBDA_FUNCTION_NAME", spec.name.clone()),
            ("AWS_LAMBDA_FUNCTION_VERSION", spec.version.clone()),
            (
                "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                spec.memory_mb.to_string(),
            ),
            (
                "AWS_LAMBDA_LOG_GROUP_NAME",
                format!("/scf/{}/{}", spec.namespace, spec.name),
            ),
            ("AWS_LAMBDA_LOG_STREAM_NAME", spec.version.clone()),
            ("LAMBDA_TASK_ROOT", code_dir.to_string_lossy().into_owned()),
        ]
        .into_iter()
    }

    /// Opens an invocation: the next (or a waiting) `next` call receives it.
    pub(crate) fn deliver(&self, request_id: &str, event: &str, timeout: Duration) {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let delivery = Delivery {
            request_id: request_id.to_owned(),
            event: Bytes::copy_from_slice(event.as_bytes()),
            time_limit_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            deadline_epoch_ms: now_ms + timeout.as_millis(),
            fetched: AtomicBool::new(false),
        };
        self.shared
            .slot
            .send_replace(Slot::Open(Arc::new(delivery)));
    }

    /// Ends the open invocation, if any, without an answer (it timed out or the instance
    /// died): later answers to it are refused.
    pub(crate) fn withdraw(&self) {
        self.shared.slot.send_if_modified(|slot| {
            let open = matches!(slot, Slot::Open(_));
            if open {
                *slot = Slot::Idle;
            }
            open
        });
    }

    /// The next thing the bootstrap said. Cancel-safe.
    pub(crate) async fn answer(&mut self) -> Answer {
        match self.answers.recv().await {
            Some(answer) => answer,
            // `shared` holds a sender as long as `self` lives, so this never happens.
            None => std::future::pending().await,
        }
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.shared.slot.send_replace(Slot::Closed);
        // Dropping the server task's connection set aborts every connection task with it.
        self.server.abort();
    }
}

impl Shared {
    fn init(&self) -> std::sync::MutexGuard<'_, Init> {
        self.init.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records readiness; only the first call counts. False once init has failed.
    fn mark_ready(&self) -> bool {
        let mut init = self.init();
        match *init {
            Init::Starting => {
                *init = Init::Ready;
                // The receiver lives as long as the instance; if it is gone nobody waits.
                let _ = self.answers.send(Answer::Ready);
                true
            }
            Init::Ready => true,
            Init::Failed => false,
        }
    }

    /// Records an initialisation failure; only before ready, and only once.
    fn fail_init(&self, message: String) -> bool {
        let mut init = self.init();
        if *init != Init::Starting {
            return false;
        }
        *init = Init::Failed;
        let _ = self.answers.send(Answer::InitError(message));
        true
    }

    /// Takes `answer` as the open invocation's, if it is the first answer to a fetched event
    /// (and, for Lambda paths, names that event's request id).
    fn settle(&self, request_id: Option<&str>, answer: Answer) -> Result<(), Refusal> {
        let mut verdict = Err(Refusal::NoInvocation);
        self.slot.send_if_modified(|slot| {
            let Slot::Open(delivery) = slot else {
                return false;
            };
            verdict = if request_id.is_some_and(|id| id != delivery.request_id) {
                Err(Refusal::OtherRequest)
            } else if !delivery.fetched.load(Ordering::Acquire) {
                Err(Refusal::NotFetched)
            } else {
                Ok(())
            };
            if verdict.is_ok() {
                *slot = Slot::Idle;
            }
            verdict.is_ok()
        });
        if verdict.is_ok() {
            let _ = self.answers.send(answer);
        }
        verdict
    }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/runtime/init/ready", post(scf_ready))
        .route("/runtime/init/error", post(scf_init_error))
        .route("/runtime/invocation/next", get(scf_next))
        .route("/runtime/invocation/response", post(scf_response))
        .route("/runtime/invocation/error", post(scf_error))
        .route("/2018-06-01/runtime/init/error", post(lambda_init_error))
        .route("/2018-06-01/runtime/invocation/next", get(lambda_next))
        .route(
            "/2018-06-01/runtime/invocation/{request_id}/response",
            post(lambda_response),
        )
        .route(
            "/2018-06-01/runtime/invocation/{request_id}/error",
            post(lambda_error),
        )
        .fallback(unknown_path)
        .with_state(shared)
}

/// Accepts connections until aborted; the connection tasks live in a set owned by this task,
/// so aborting it ends them too.
async fn serve(listener: TcpListener, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, router.clone()));
                }
                Err(err) => {
                    tracing::debug!(%err, "runtime api cannot accept a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next() => {}
        }
    }
}

async fn serve_connection(stream: TcpStream, router: Router) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "cannot set TCP_NODELAY on a runtime api connection");
    }
    let served = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router))
        .await;
    if let Err(err) = served {
        tracing::debug!(%err, "runtime api connection failed");
    }
}

async fn scf_ready(State(shared): State<Arc<Shared>>) -> Response {
    if shared.mark_ready() {
        StatusCode::OK.into_response()
    } else {
        refused(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "initialization already failed",
        )
    }
}

async fn scf_init_error(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    init_error(&shared, Dialect::Scf, body).await
}

async fn lambda_init_error(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    init_error(&shared, Dialect::Lambda, body).await
}

async fn scf_next(State(shared): State<Arc<Shared>>) -> Response {
    next(&shared).await
}

async fn lambda_next(State(shared): State<Arc<Shared>>) -> Response {
    // Lambda has no ready call: asking for the first event says initialisation is done.
    if !shared.mark_ready() {
        return refused(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "initialization already failed",
        );
    }
    next(&shared).await
}

async fn scf_response(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    answer(&shared, Dialect::Scf, None, Outcome::Response, body).await
}

async fn scf_error(State(shared): State<Arc<Shared>>, body: Body) -> Response {
    answer(&shared, Dialect::Scf, None, Outcome::Error, body).await
}

async fn lambda_response(
    State(shared): State<Arc<Shared>>,
    UrlPath(request_id): UrlPath<String>,
    body: Body,
) -> Response {
    let id = Some(request_id.as_str());
    answer(&shared, Dialect::Lambda, id, Outcome::Response, body).await
}

async fn lambda_error(
    State(shared): State<Arc<Shared>>,
    UrlPath(request_id): UrlPath<String>,
    body: Body,
) -> Response {
    let id = Some(request_id.as_str());
    answer(&shared, Dialect::Lambda, id, Outcome::Error, body).await
}

async fn unknown_path() -> Response {
    refused(
        StatusCode::NOT_FOUND,
        "NotFound",
        "no such runtime API path",
    )
}

/// Long poll: waits until an invocation is open and returns its event.
async fn next(shared: &Shared) -> Response {
    let mut slot = shared.slot.subscribe();
    let delivery = {
        let Ok(current) = slot.wait_for(|slot| !matches!(slot, Slot::Idle)).await else {
            return stopping();
        };
        match &*current {
            Slot::Open(delivery) => Arc::clone(delivery),
            Slot::Idle | Slot::Closed => return stopping(),
        }
    };
    delivery.fetched.store(true, Ordering::Release);
    event_response(shared, &delivery)
}

fn event_response(shared: &Shared, delivery: &Delivery) -> Response {
    let mut headers = HeaderMap::new();
    let mut add = |name: &'static str, value: String| {
        // A value that cannot be a header (control characters) is left out.
        if let Ok(value) = HeaderValue::try_from(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    add("request_id", delivery.request_id.clone());
    add("memory_limit_in_mb", shared.memory_mb.to_string());
    add("time_limit_in_ms", delivery.time_limit_ms.to_string());
    add("lambda-runtime-aws-request-id", delivery.request_id.clone());
    add(
        "lambda-runtime-deadline-ms",
        delivery.deadline_epoch_ms.to_string(),
    );
    add(
        "lambda-runtime-invoked-function-arn",
        shared.function_resource.clone(),
    );
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    (StatusCode::OK, headers, delivery.event.clone()).into_response()
}

/// What an answer path reports.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Response,
    Error,
}

async fn answer(
    shared: &Shared,
    dialect: Dialect,
    request_id: Option<&str>,
    outcome: Outcome,
    body: Body,
) -> Response {
    let answer = match (read_body(body).await, outcome) {
        (Ok(bytes), Outcome::Response) => Answer::Response(bytes),
        (Ok(bytes), Outcome::Error) => {
            let (message, stack_trace) = error_text(&bytes, dialect);
            Answer::Error {
                message,
                stack_trace,
            }
        }
        (Err(BodyError::TooLarge), _) => Answer::TooLarge,
        (Err(BodyError::Read), _) => {
            return refused(StatusCode::BAD_REQUEST, "InvalidRequest", "unreadable body");
        }
    };
    match shared.settle(request_id, answer) {
        Ok(()) => accepted(dialect),
        Err(Refusal::NoInvocation) => refused(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "no invocation is waiting for an answer: it was answered already or has ended",
        ),
        Err(Refusal::NotFetched) => refused(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "the invocation must be fetched with /runtime/invocation/next before it is answered",
        ),
        Err(Refusal::OtherRequest) => refused(
            StatusCode::BAD_REQUEST,
            "InvalidRequestID",
            "the request id is not the open invocation's",
        ),
    }
}

async fn init_error(shared: &Shared, dialect: Dialect, body: Body) -> Response {
    let message = match read_body(body).await {
        Ok(bytes) => error_text(&bytes, dialect).0,
        Err(BodyError::TooLarge) => "initialization error (its text was too large)".to_owned(),
        Err(BodyError::Read) => {
            return refused(StatusCode::BAD_REQUEST, "InvalidRequest", "unreadable body");
        }
    };
    if shared.fail_init(message) {
        accepted(dialect)
    } else {
        refused(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "initialization has already ended",
        )
    }
}

enum BodyError {
    TooLarge,
    Read,
}

async fn read_body(body: Body) -> Result<Bytes, BodyError> {
    match Limited::new(body, MAX_ANSWER_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Read),
    }
}

/// The message (and stack trace) of an error body: SCF's is plain text; Lambda's is an error
/// object `{errorMessage, errorType, stackTrace}`, or text if it is not one.
fn error_text(bytes: &[u8], dialect: Dialect) -> (String, Option<String>) {
    let text = || String::from_utf8_lossy(bytes).into_owned();
    if dialect == Dialect::Scf {
        return (text(), None);
    }
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(bytes) else {
        return (text(), None);
    };
    let field = |name: &str| object.get(name).and_then(serde_json::Value::as_str);
    let message = match (field("errorType"), field("errorMessage")) {
        (_, Some(message)) => message.to_owned(),
        (Some(kind), None) => kind.to_owned(),
        (None, None) => text(),
    };
    let stack_trace = object
        .get("stackTrace")
        .and_then(serde_json::Value::as_array)
        .map(|frames| {
            frames
                .iter()
                .map(|frame| {
                    frame
                        .as_str()
                        .map_or_else(|| frame.to_string(), str::to_owned)
                })
                .collect::<Vec<_>>()
                .join("\n")
        });
    (message, stack_trace)
}

fn accepted(dialect: Dialect) -> Response {
    match dialect {
        Dialect::Scf => StatusCode::OK.into_response(),
        Dialect::Lambda => (
            StatusCode::ACCEPTED,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"status":"OK"}"#,
        )
            .into_response(),
    }
}

fn stopping() -> Response {
    refused(
        StatusCode::GONE,
        "InstanceStopping",
        "the instance is stopping",
    )
}

fn refused(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = serde_json::json!({ "errorType": kind, "errorMessage": message });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scf_error_body_is_the_message() {
        let (message, trace) = error_text(br#"{"errorMessage":"x"}"#, Dialect::Scf);
        assert_eq!(message, r#"{"errorMessage":"x"}"#);
        assert!(trace.is_none());
    }

    #[test]
    fn lambda_error_object_gives_message_and_trace() {
        let body = br#"{"errorMessage":"boom","errorType":"E","stackTrace":["a","b"]}"#;
        let (message, trace) = error_text(body, Dialect::Lambda);
        assert_eq!(message, "boom");
        assert_eq!(trace.as_deref(), Some("a\nb"));
        assert_eq!(error_text(b"plain", Dialect::Lambda).0, "plain");
    }

    fn delivered(api: &RuntimeApi) -> Arc<Delivery> {
        match &*api.shared.slot.borrow() {
            Slot::Open(delivery) => Arc::clone(delivery),
            other => panic!("expected an open invocation, found {other:?}"),
        }
    }

    #[tokio::test]
    async fn first_answer_wins_and_only_after_fetch() {
        let mut api = RuntimeApi::open(128, "f".to_owned(), None)
            .await
            .expect("open");
        let shared = Arc::clone(&api.shared);
        let answer = || Answer::Response(Bytes::from_static(b"1"));
        assert!(matches!(
            shared.settle(None, answer()),
            Err(Refusal::NoInvocation)
        ));

        api.deliver("r1", "{}", Duration::from_secs(3));
        assert!(matches!(
            shared.settle(None, answer()),
            Err(Refusal::NotFetched)
        ));
        delivered(&api).fetched.store(true, Ordering::Release);
        let other = shared.settle(Some("r2"), answer());
        assert!(matches!(other, Err(Refusal::OtherRequest)));
        assert!(shared.settle(Some("r1"), answer()).is_ok());
        assert!(matches!(
            shared.settle(None, answer()),
            Err(Refusal::NoInvocation)
        ));
        assert!(matches!(api.answer().await, Answer::Response(body) if body == "1"));
    }

    #[tokio::test]
    async fn ready_counts_once_and_init_error_only_before_it() {
        let mut api = RuntimeApi::open(128, "f".to_owned(), None)
            .await
            .expect("open");
        let shared = Arc::clone(&api.shared);
        assert!(shared.mark_ready());
        assert!(shared.mark_ready());
        assert!(!shared.fail_init("late".to_owned()));
        assert!(matches!(api.answer().await, Answer::Ready));
        assert!(
            api.answers.try_recv().is_err(),
            "a repeated ready is ignored"
        );
    }

    #[tokio::test]
    async fn withdrawn_invocation_cannot_be_answered() {
        let api = RuntimeApi::open(128, "f".to_owned(), None)
            .await
            .expect("open");
        api.deliver("r1", "{}", Duration::from_secs(3));
        delivered(&api).fetched.store(true, Ordering::Release);
        api.withdraw();
        let late = api.shared.settle(None, Answer::Response(Bytes::new()));
        assert!(matches!(late, Err(Refusal::NoInvocation)));
    }
}
