//! An SCF custom-runtime function written in Rust: this program is the package's `bootstrap`.
//!
//! It speaks the runtime API with the standard library's `TcpStream` (one request per
//! connection, `Connection: close`) and parses events with `serde_json`:
//!
//! ```text
//! POST /runtime/init/ready                  once, after loading
//! loop:
//!   GET  /runtime/invocation/next           long poll: the event, header request_id, ...
//!   POST /runtime/invocation/response       the handler's result (JSON)
//!    or /runtime/invocation/error           the handler's error text
//! ```
//!
//! The API's address comes from `SCF_RUNTIME_API` and `SCF_RUNTIME_API_PORT` (default
//! `127.0.0.1:9001`, as third-party runtimes assume). Whatever the program prints on stdout or
//! stderr is the function's log.
//!
//! Build and package it:
//!
//! ```sh
//! cargo build --release -p nimbus-example-custom-rust
//! cp target/release/bootstrap pkg/ && (cd pkg && zip ../function.zip bootstrap)
//! ```
//!
//! and deploy `function.zip` with runtime `CustomRuntime` (any handler string; it is passed in
//! `_HANDLER`).
//!
//! # Limitations
//!
//! The HTTP client is deliberately minimal: it reads each answer to the end of its connection
//! and trusts `Content-Length`, which the runtime API always sends; it understands no chunked
//! encoding.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;

use serde_json::{Value, json};

fn main() -> ExitCode {
    let api = RuntimeApi::from_env();
    eprintln!("custom-rust: starting, runtime API at {}", api.address);
    match serve(&api) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("custom-rust: runtime API failed: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Says ready, then serves events until the runtime API goes away.
fn serve(api: &RuntimeApi) -> io::Result<()> {
    let handler = std::env::var("_HANDLER").unwrap_or_default();
    api.call("POST", "/runtime/init/ready", b" ")?;
    loop {
        let event = api.call("GET", "/runtime/invocation/next", b"")?;
        if event.status != 200 {
            // 410: the instance is being stopped.
            return Ok(());
        }
        let context = Context {
            request_id: event.header("request_id").unwrap_or_default().to_owned(),
            memory_limit_in_mb: event
                .header("memory_limit_in_mb")
                .unwrap_or_default()
                .to_owned(),
            time_limit_in_ms: event
                .header("time_limit_in_ms")
                .unwrap_or_default()
                .to_owned(),
            handler: handler.clone(),
        };
        let outcome = match serde_json::from_slice::<Value>(&event.body) {
            Ok(event) => handle(&event, &context),
            Err(err) => Err(format!("parse event error: {err}")),
        };
        match outcome {
            Ok(result) => {
                let body = result.to_string();
                api.call("POST", "/runtime/invocation/response", body.as_bytes())?;
            }
            Err(message) => {
                api.call("POST", "/runtime/invocation/error", message.as_bytes())?;
            }
        }
    }
}

/// What the runtime API says about one invocation, besides its event.
struct Context {
    request_id: String,
    memory_limit_in_mb: String,
    time_limit_in_ms: String,
    handler: String,
}

/// The function itself: greets `event.name`, or fails with `event.fail` when it is a string.
fn handle(event: &Value, context: &Context) -> Result<Value, String> {
    println!("custom-rust: handling {}", context.request_id);
    if let Some(reason) = event.get("fail").and_then(Value::as_str) {
        return Err(reason.to_owned());
    }
    let name = event.get("name").and_then(Value::as_str).unwrap_or("world");
    Ok(json!({
        "runtime": "custom-rust",
        "greeting": format!("hello {name}"),
        "request_id": context.request_id,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "time_limit_in_ms": context.time_limit_in_ms,
        "handler": context.handler,
    }))
}

/// Where the runtime API listens.
struct RuntimeApi {
    address: String,
}

/// One HTTP answer.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    /// A header's value; names compare case-insensitively.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

impl RuntimeApi {
    fn from_env() -> RuntimeApi {
        let host = std::env::var("SCF_RUNTIME_API").unwrap_or_else(|_| "127.0.0.1".to_owned());
        let port = std::env::var("SCF_RUNTIME_API_PORT").unwrap_or_else(|_| "9001".to_owned());
        RuntimeApi {
            address: format!("{host}:{port}"),
        }
    }

    /// Sends one request on a connection of its own and reads the answer to its end. No read
    /// timeout: `next` may rightly wait for as long as no event comes.
    fn call(&self, method: &str, path: &str, body: &[u8]) -> io::Result<Answer> {
        let mut stream = TcpStream::connect(&self.address)?;
        // Small request/answer pairs: do not let Nagle's algorithm hold them back.
        stream.set_nodelay(true)?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.address,
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        parse_answer(&raw)
    }
}

fn parse_answer(raw: &[u8]) -> io::Result<Answer> {
    let malformed = || io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP answer");
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(malformed)?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|_| malformed())?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(malformed)?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let length = headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.parse::<usize>().ok());
    if let Some(length) = length {
        body.truncate(length);
    }
    Ok(Answer {
        status,
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_headers_and_body() {
        let raw = b"HTTP/1.1 200 OK\r\nrequest_id: r-1\r\ncontent-length: 2\r\n\r\n{}";
        let answer = parse_answer(raw).expect("parses");
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("Request_Id"), Some("r-1"));
        assert_eq!(answer.body, b"{}");
        assert!(parse_answer(b"garbage").is_err());
    }

    #[test]
    fn handler_greets_or_fails() {
        let context = Context {
            request_id: "r".to_owned(),
            memory_limit_in_mb: "128".to_owned(),
            time_limit_in_ms: "3000".to_owned(),
            handler: "index.main".to_owned(),
        };
        let result = handle(&json!({"name": "nimbus"}), &context).expect("succeeds");
        assert_eq!(result["greeting"], "hello nimbus");
        assert_eq!(
            handle(&json!({"fail": "no"}), &context),
            Err("no".to_owned())
        );
    }
}
