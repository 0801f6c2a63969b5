//! A minimal SCF client for the benchmark: signed requests of both dialects, one keep-alive
//! HTTP/1.1 connection per [`Connection`], and the rules that tell a success from a failure.
//!
//! ```text
//!   legacy:  POST /v2/index.php  form body, signature v1 (HmacSHA256), fresh Nonce + Timestamp
//!   API 3.0: POST /              JSON body, TC3-HMAC-SHA256 over content-type;host, fresh Timestamp
//! ```
//!
//! Signing goes through `nimbus-sign`, the code the server verifies with, so a request the
//! server refuses shows up as a failure of the run, never as a faster number.
//!
//! A response counts as a success only when the HTTP status is 200, the body is JSON, the
//! dialect reports no error (`code` 0, no `Response.Error`) and an invocation reports no function
//! error (`invokeResult` / `InvokeResult` 0).

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use rand::Rng as _;
use serde_json::{Value, json};

/// The legacy API's path.
pub const LEGACY_PATH: &str = "/v2/index.php";
/// API 3.0's version string.
pub const API3_VERSION: &str = "2018-04-16";
/// The region every request names.
const REGION: &str = "ap-guangzhou";

/// A request body as the load generator sends it.
pub type Body = Full<Bytes>;

/// A SecretId/SecretKey pair.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// Key id.
    pub secret_id: String,
    /// Signing key.
    pub secret_key: String,
}

impl Credentials {
    /// A random pair for one run.
    pub fn generate() -> Credentials {
        let mut rng = rand::thread_rng();
        let text = |rng: &mut rand::rngs::ThreadRng, len: usize| -> String {
            (0..len)
                .map(|_| char::from(rng.sample(rand::distributions::Alphanumeric)))
                .collect()
        };
        Credentials {
            secret_id: format!("AKIDbench{}", text(&mut rng, 24)),
            secret_key: text(&mut rng, 32),
        }
    }
}

/// Which API dialect a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// API 2.0 at `/v2/index.php`, signature v1.
    Legacy,
    /// API 3.0 at `/`, TC3-HMAC-SHA256.
    Api3,
}

impl Dialect {
    /// A short label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Dialect::Legacy => "legacy",
            Dialect::Api3 => "API 3.0",
        }
    }
}

/// How a response is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// A legacy envelope with `code` 0.
    Legacy,
    /// An API 3.0 envelope without `Response.Error`.
    Api3,
    /// Any HTTP 200 (peers, which speak no SCF dialect).
    Http200,
}

impl From<Dialect> for Expect {
    fn from(dialect: Dialect) -> Expect {
        match dialect {
            Dialect::Legacy => Expect::Legacy,
            Dialect::Api3 => Expect::Api3,
        }
    }
}

/// How an invocation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvocationType {
    /// Synchronous: the answer carries the function's result.
    RequestResponse,
    /// Asynchronous: the answer only acknowledges the accepted event.
    Event,
}

/// Where requests go and how they are signed.
#[derive(Debug, Clone)]
pub struct Target {
    /// The server's socket address.
    pub addr: SocketAddr,
    /// The `Host` header, also the host that signatures cover.
    pub host: String,
    /// Credentials to sign with.
    pub credentials: Credentials,
}

impl Target {
    /// A target on `addr`, whose `Host` is `addr` as text.
    pub fn new(addr: SocketAddr, credentials: Credentials) -> Target {
        Target {
            addr,
            host: addr.to_string(),
            credentials,
        }
    }

    /// A signed invocation of `function` with the event `{}`.
    pub fn invoke(&self, dialect: Dialect, function: &str, kind: InvocationType) -> Request<Body> {
        match dialect {
            Dialect::Legacy => {
                let invoke_type = match kind {
                    InvocationType::RequestResponse => "RequestResponse",
                    InvocationType::Event => "Event",
                };
                self.legacy(
                    "InvokeFunction",
                    &[
                        ("functionName", function),
                        ("invokeType", invoke_type),
                        ("param", "{}"),
                    ],
                )
            }
            Dialect::Api3 => {
                let invocation_type = match kind {
                    InvocationType::RequestResponse => "RequestResponse",
                    InvocationType::Event => "Event",
                };
                self.api3(
                    "Invoke",
                    &json!({
                        "FunctionName": function,
                        "InvocationType": invocation_type,
                        "ClientContext": "{}",
                    }),
                )
            }
        }
    }

    /// A signed API 3.0 request: `POST /` with a JSON body.
    pub fn api3(&self, action: &str, body: &Value) -> Request<Body> {
        let body = body.to_string();
        let timestamp = unix_now();
        let content_type = "application/json";
        let signed = [
            ("content-type".to_owned(), content_type.to_owned()),
            ("host".to_owned(), self.host.clone()),
        ];
        let canonical = nimbus_sign::Tc3Request {
            method: "POST",
            path: "/",
            raw_query: "",
            headers: &signed,
            payload: nimbus_sign::Tc3Payload::Bytes(body.as_bytes()),
        };
        let authorization = nimbus_sign::tc3_authorization(
            &self.credentials.secret_id,
            &self.credentials.secret_key,
            timestamp,
            "scf",
            &canonical,
        );
        let timestamp = timestamp.to_string();
        let extra = [
            ("x-tc-action", action),
            ("x-tc-version", API3_VERSION),
            ("x-tc-region", REGION),
            ("x-tc-timestamp", timestamp.as_str()),
            ("authorization", authorization.as_str()),
        ];
        request(Method::POST, "/", &self.host, content_type, body, &extra)
    }

    /// A signed legacy request: `POST /v2/index.php` with a form body.
    pub fn legacy(&self, action: &str, params: &[(&str, &str)]) -> Request<Body> {
        let mut signed: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let nonce: u64 = rand::thread_rng().gen_range(1..i64::MAX as u64);
        for (name, value) in [
            ("Action", action.to_owned()),
            ("Region", REGION.to_owned()),
            ("Timestamp", unix_now().to_string()),
            ("Nonce", nonce.to_string()),
            ("SecretId", self.credentials.secret_id.clone()),
            (
                "SignatureMethod",
                nimbus_sign::V1Method::HmacSha256.as_param().to_owned(),
            ),
        ] {
            signed.push((name.to_owned(), value));
        }
        let text = nimbus_sign::v1_string_to_sign("POST", &self.host, LEGACY_PATH, &signed, false);
        let signature = nimbus_sign::v1_signature(
            nimbus_sign::V1Method::HmacSha256,
            &self.credentials.secret_key,
            &text,
        );
        signed.push(("Signature".to_owned(), signature));
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&signed)
            .finish();
        request(
            Method::POST,
            LEGACY_PATH,
            &self.host,
            "application/x-www-form-urlencoded",
            body,
            &[],
        )
    }
}

/// Builds a request with `Host`, `Content-Type`, `Content-Length` and extra headers.
fn request(
    method: Method,
    path: &str,
    host: &str,
    content_type: &str,
    body: String,
    extra: &[(&str, &str)],
) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, body.len());
    for (name, value) in extra {
        builder = builder.header(*name, *value);
    }
    // Every part is either a constant or text this module produced (a host:port, decimal
    // numbers, hex and base64), all valid header values and URIs.
    builder
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Request::new(Full::new(Bytes::new())))
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Judges a response; `Err` carries a one-line description of the failure.
///
/// # Errors
/// A status other than 200, a body that is not JSON (except for [`Expect::Http200`]), an
/// error envelope, or an invocation whose function failed.
pub fn check(expect: Expect, status: StatusCode, body: &[u8]) -> Result<Value, String> {
    if status != StatusCode::OK {
        return Err(format!("HTTP {status}: {}", snippet(body)));
    }
    if expect == Expect::Http200 {
        return Ok(Value::Null);
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| format!("answer is not JSON: {}", snippet(body)))?;
    match expect {
        Expect::Legacy => {
            let code = value.get("code").and_then(Value::as_i64);
            if code != Some(0) {
                return Err(format!(
                    "code {} {}: {}",
                    value.get("code").unwrap_or(&Value::Null),
                    value["codeDesc"].as_str().unwrap_or(""),
                    value["message"].as_str().unwrap_or("")
                ));
            }
            let invoke_result = value["data"]["invokeResult"].as_i64().unwrap_or(0);
            if invoke_result != 0 {
                return Err(format!(
                    "function failed ({invoke_result}): {}",
                    value["data"]["errMsg"].as_str().unwrap_or("")
                ));
            }
        }
        Expect::Api3 => {
            let response = &value["Response"];
            if response.is_null() {
                return Err(format!("answer has no Response: {}", snippet(body)));
            }
            if let Some(error) = response.get("Error") {
                return Err(format!(
                    "{}: {}",
                    error["Code"].as_str().unwrap_or("?"),
                    error["Message"].as_str().unwrap_or("")
                ));
            }
            let invoke_result = response["Result"]["InvokeResult"].as_i64().unwrap_or(0);
            if invoke_result != 0 {
                return Err(format!(
                    "function failed ({invoke_result}): {}",
                    response["Result"]["ErrMsg"].as_str().unwrap_or("")
                ));
            }
        }
        Expect::Http200 => {}
    }
    Ok(value)
}

/// The start of a body, for error messages.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        cut.push('…');
    }
    cut.replace('\n', " ")
}

/// An error from one exchange on a [`Connection`].
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The TCP connection or the HTTP handshake failed.
    #[error("cannot connect to {addr}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// HTTP on an established connection failed.
    #[error("http exchange failed")]
    Http(#[source] hyper::Error),
}

/// One keep-alive HTTP/1.1 connection (`TCP_NODELAY` set). Dropping it closes the connection.
pub struct Connection {
    sender: SendRequest<Body>,
    driver: tokio::task::JoinHandle<()>,
}

impl Connection {
    /// Connects to `addr`.
    ///
    /// # Errors
    /// [`ExchangeError::Connect`] or [`ExchangeError::Http`] for the handshake.
    pub async fn open(addr: SocketAddr) -> Result<Connection, ExchangeError> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|source| ExchangeError::Connect { addr, source })?;
        stream
            .set_nodelay(true)
            .map_err(|source| ExchangeError::Connect { addr, source })?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(ExchangeError::Http)?;
        let driver = tokio::spawn(async move {
            // A connection error also fails the pending request, which reports it.
            let _ = connection.await;
        });
        Ok(Connection { sender, driver })
    }

    /// Sends a request and reads the whole answer.
    ///
    /// # Errors
    /// [`ExchangeError::Http`] when the connection fails; the connection is unusable then.
    pub async fn send(
        &mut self,
        request: Request<Body>,
    ) -> Result<(StatusCode, Bytes), ExchangeError> {
        self.sender.ready().await.map_err(ExchangeError::Http)?;
        let response = self
            .sender
            .send_request(request)
            .await
            .map_err(ExchangeError::Http)?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(ExchangeError::Http)?
            .to_bytes();
        Ok((status, body))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// An API call that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The exchange itself failed.
    #[error("{action} could not be sent")]
    Exchange {
        /// The action.
        action: String,
        /// Why.
        #[source]
        source: ExchangeError,
    },
    /// The server answered with an error (or the function failed).
    #[error("{action} refused: {reason}")]
    Refused {
        /// The action.
        action: String,
        /// The server's error code and message.
        reason: String,
    },
}

impl CallError {
    /// The server's own words when it refused; the whole chain otherwise.
    pub fn reason(&self) -> String {
        match self {
            CallError::Refused { reason, .. } => reason.clone(),
            CallError::Exchange { .. } => error_chain(self),
        }
    }
}

/// An error and its causes on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(inner) = cause {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        cause = inner.source();
    }
    text
}

/// A control-plane client: API 3.0 calls on one reused connection.
pub struct Client {
    target: Target,
    connection: Option<Connection>,
}

impl Client {
    /// A client for `target`; it connects on first use.
    pub fn new(target: Target) -> Client {
        Client {
            target,
            connection: None,
        }
    }

    /// The target.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Sends a prepared request, reconnecting once if the kept connection was closed, and
    /// judges the answer.
    ///
    /// # Errors
    /// [`CallError::Exchange`] or [`CallError::Refused`].
    pub async fn send(
        &mut self,
        action: &str,
        expect: Expect,
        request: Request<Body>,
    ) -> Result<Value, CallError> {
        let exchange = |source| CallError::Exchange {
            action: action.to_owned(),
            source,
        };
        if self.connection.is_none() {
            self.connection = Some(Connection::open(self.target.addr).await.map_err(exchange)?);
        }
        let Some(connection) = self.connection.as_mut() else {
            return Err(exchange(ExchangeError::Connect {
                addr: self.target.addr,
                source: std::io::Error::other("no connection"),
            }));
        };
        let (status, body) = match connection.send(request).await {
            Ok(answer) => answer,
            Err(error) => {
                self.connection = None;
                return Err(exchange(error));
            }
        };
        check(expect, status, &body).map_err(|reason| CallError::Refused {
            action: action.to_owned(),
            reason,
        })
    }

    /// Calls an API 3.0 action.
    ///
    /// # Errors
    /// See [`Client::send`].
    pub async fn call(&mut self, action: &str, body: &Value) -> Result<Value, CallError> {
        let request = self.target.api3(action, body);
        self.send(action, Expect::Api3, request).await
    }
}
