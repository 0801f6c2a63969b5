//! The client subcommands: a small legacy-API client that signs with the same code the server
//! verifies with.
//!
//! Output goes to stdout line by line through `say!`: when the reader closes the pipe early
//! (`nimbus functions | head -1`), the command stops at its next line with [`StdoutClosed`],
//! which `main` ends quietly (exit status 0), instead of panicking as `println!` does.
//!
//! # Limitations
//! - Plain HTTP only: the endpoint is a local or trusted-network Nimbus, not the cloud.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use nimbus_sign::V1Method;
use rand::Rng as _;
use serde_json::Value;

/// Where and as whom to call.
pub struct Client {
    base_url: String,
    host: String,
    secret_id: String,
    secret_key: String,
}

/// What a call answered with an error.
#[derive(Debug, thiserror::Error)]
#[error("{code_desc}: {message}")]
pub struct CallError {
    /// Legacy numeric code (0 for API 3.0, which has none).
    pub code: i64,
    /// Code string.
    pub code_desc: String,
    /// Server's message.
    pub message: String,
}

/// Stdout was closed by its reader: whatever the command still had to print has no reader.
#[derive(Debug, thiserror::Error)]
#[error("standard output is closed")]
pub struct StdoutClosed;

/// Writes one line to stdout, like `println!`, but returns an error instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {
        write_line(format_args!($($arg)*))
    };
}

/// Writes `line` and a newline to stdout (line-buffered, so each line is written at once).
///
/// # Errors
/// [`StdoutClosed`] if the reader has gone, any other write failure with context.
fn write_line(line: std::fmt::Arguments<'_>) -> anyhow::Result<()> {
    match writeln!(std::io::stdout().lock(), "{line}") {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(error) => Err(anyhow::Error::new(error).context("cannot write to standard output")),
    }
}

impl Client {
    /// Builds a client. Credentials not given come from `<data_dir>/credentials`.
    ///
    /// # Errors
    /// A malformed endpoint, or no credentials anywhere.
    pub fn new(
        endpoint: &str,
        secret_id: Option<String>,
        secret_key: Option<String>,
        data_dir: &Path,
    ) -> anyhow::Result<Client> {
        let Some(host) = endpoint.trim_end_matches('/').strip_prefix("http://") else {
            bail!("endpoint {endpoint:?} must start with http:// (e.g. http://127.0.0.1:9000)");
        };
        if host.is_empty() || host.contains('/') {
            bail!("endpoint {endpoint:?} must be http://HOST:PORT without a path");
        }
        let (secret_id, secret_key) = match (secret_id, secret_key) {
            (Some(id), Some(key)) => (id, key),
            (None, None) => {
                let path = data_dir.join(crate::serve::CREDENTIALS_FILE);
                let file = crate::serve::read_credentials_file(&path).with_context(|| {
                    "no credentials: pass --secret-id and --secret-key, set NIMBUS_SECRET_ID and \
                     NIMBUS_SECRET_KEY, or run on the server's machine"
                        .to_owned()
                })?;
                (file.secret_id, file.secret_key)
            }
            _ => bail!("give both --secret-id and --secret-key, or neither"),
        };
        Ok(Client {
            base_url: format!("http://{host}"),
            host: host.to_owned(),
            secret_id,
            secret_key,
        })
    }

    /// Calls a legacy action; returns the whole answer on code 0.
    ///
    /// # Errors
    /// Transport failures, and [`CallError`] for a non-zero code.
    pub fn call(&self, action: &str, params: &[(&str, String)]) -> anyhow::Result<Value> {
        let mut signed: Vec<(String, String)> = params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        let nonce: u64 = rand::thread_rng().gen_range(1..u64::from(u32::MAX));
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("clock is before 1970")?
            .as_secs();
        for (name, value) in [
            ("Action", action.to_owned()),
            ("Region", "ap-guangzhou".to_owned()),
            ("Timestamp", timestamp.to_string()),
            ("Nonce", nonce.to_string()),
            ("SecretId", self.secret_id.clone()),
            (
                "SignatureMethod",
                V1Method::HmacSha256.as_param().to_owned(),
            ),
            (
                "RequestClient",
                format!("nimbus-cli/{}", env!("CARGO_PKG_VERSION")),
            ),
        ] {
            signed.push((name.to_owned(), value));
        }
        let text = nimbus_sign::v1_string_to_sign(
            "POST",
            &self.host,
            nimbus_api::legacy::PATH,
            &signed,
            false,
        );
        let signature = nimbus_sign::v1_signature(V1Method::HmacSha256, &self.secret_key, &text);
        signed.push(("Signature".to_owned(), signature));

        let form: Vec<(&str, &str)> = signed
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let url = format!("{}{}", self.base_url, nimbus_api::legacy::PATH);
        let response = ureq::post(&url)
            .send_form(&form)
            .with_context(|| format!("cannot reach Nimbus at {}", self.base_url))?;
        let body: Value = serde_json::from_reader(response.into_reader())
            .context("the server's answer is not JSON")?;
        let code = body["code"].as_i64().unwrap_or(-1);
        if code != 0 {
            return Err(CallError {
                code,
                code_desc: body["codeDesc"].as_str().unwrap_or("").to_owned(),
                message: body["message"].as_str().unwrap_or("").to_owned(),
            }
            .into());
        }
        Ok(body)
    }
}

impl Client {
    /// Calls an API 3.0 action (TC3-HMAC-SHA256, JSON body); returns `Response` on success.
    ///
    /// # Errors
    /// Transport failures, and [`CallError`] (code 0 for API 3.0) for an `Error` answer.
    pub fn call3(&self, action: &str, params: &Value) -> anyhow::Result<Value> {
        let body = serde_json::to_vec(params).context("cannot encode the request")?;
        let timestamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .context("clock is before 1970")?
            .as_secs();
        let timestamp = i64::try_from(timestamp).context("clock out of range")?;
        let headers = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("host".to_owned(), self.host.clone()),
        ];
        let request = nimbus_sign::Tc3Request {
            method: "POST",
            path: "/",
            raw_query: "",
            headers: &headers,
            payload: nimbus_sign::Tc3Payload::Bytes(&body),
        };
        let authorization = nimbus_sign::tc3_authorization(
            &self.secret_id,
            &self.secret_key,
            timestamp,
            "scf",
            &request,
        );
        let url = format!("{}/", self.base_url);
        let response = ureq::post(&url)
            .set("Content-Type", "application/json")
            .set("Authorization", &authorization)
            .set("X-TC-Action", action)
            .set("X-TC-Version", nimbus_api::api3::VERSION)
            .set("X-TC-Timestamp", &timestamp.to_string())
            .set("X-TC-Region", "ap-guangzhou")
            .send_bytes(&body)
            .with_context(|| format!("cannot reach Nimbus at {}", self.base_url))?;
        let answer: Value = serde_json::from_reader(response.into_reader())
            .context("the server's answer is not JSON")?;
        let response = answer["Response"].clone();
        if let Some(error) = response.get("Error") {
            return Err(CallError {
                code: 0,
                code_desc: error["Code"].as_str().unwrap_or("").to_owned(),
                message: error["Message"].as_str().unwrap_or("").to_owned(),
            }
            .into());
        }
        Ok(response)
    }
}

/// Prints an async event's status and each of its attempts.
///
/// # Errors
/// API failures.
pub fn status(client: &Client, request_id: &str) -> anyhow::Result<()> {
    let id = serde_json::json!({ "InvokeRequestId": request_id });
    let status = client.call3("GetAsyncEventStatus", &id)?;
    say!(
        "{}  {}  statusCode={}",
        request_id,
        status["Result"]["Status"].as_str().unwrap_or(""),
        status["Result"]["StatusCode"]
    )?;
    let attempts = client.call3("ListAsyncEventAttempts", &id)?;
    for attempt in attempts["Attempts"].as_array().cloned().unwrap_or_default() {
        say!(
            "  attempt {}  {}  retCode={}  {:.3} ms",
            attempt["Attempt"],
            attempt["StartTime"].as_str().unwrap_or(""),
            attempt["RetCode"],
            attempt["Duration"].as_f64().unwrap_or(0.0),
        )?;
    }
    Ok(())
}

/// Prints a function's dead letters.
///
/// # Errors
/// API failures.
pub fn dead_letters(client: &Client, name: &str) -> anyhow::Result<()> {
    let letters = client.call3(
        "ListDeadLetterEvents",
        &serde_json::json!({ "FunctionName": name, "Limit": 100 }),
    )?;
    for letter in letters["DeadLetters"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        say!(
            "{}  {}  attempts={}  errorCode={}  {}",
            letter["FailedTime"].as_str().unwrap_or(""),
            letter["InvokeRequestId"].as_str().unwrap_or(""),
            letter["Attempts"],
            letter["ErrorCode"],
            letter["ErrorMessage"].as_str().unwrap_or(""),
        )?;
    }
    Ok(())
}

/// Queues a dead letter again and prints the new request id.
///
/// # Errors
/// API failures.
pub fn replay(client: &Client, name: &str, request_id: &str) -> anyhow::Result<()> {
    let replayed = client.call3(
        "ReplayDeadLetterEvent",
        &serde_json::json!({ "FunctionName": name, "InvokeRequestId": request_id }),
    )?;
    say!("{}", replayed["InvokeRequestId"].as_str().unwrap_or(""))?;
    Ok(())
}

/// Options of `nimbus deploy`.
pub struct DeployOptions {
    /// Folder to package.
    pub dir: PathBuf,
    /// Function name.
    pub name: String,
    /// SCF runtime name.
    pub runtime: Option<String>,
    /// Handler.
    pub handler: String,
    /// Memory, MB.
    pub memory: Option<u32>,
    /// Timeout, s.
    pub timeout: Option<u32>,
    /// `K=V` pairs.
    pub env: Vec<String>,
}

/// Packages a folder and creates or updates the function.
///
/// # Errors
/// Packaging or API failures.
pub fn deploy(client: &Client, options: DeployOptions) -> anyhow::Result<()> {
    let package = zip_dir(&options.dir)?;
    let mut params = vec![
        ("functionName", options.name.clone()),
        ("handler", options.handler.clone()),
        (
            "code",
            base64::engine::general_purpose::STANDARD.encode(&package),
        ),
    ];
    if let Some(runtime) = options.runtime {
        params.push(("runtime", runtime));
    }
    if let Some(memory) = options.memory {
        params.push(("memorySize", memory.to_string()));
    }
    if let Some(timeout) = options.timeout {
        params.push(("timeout", timeout.to_string()));
    }
    let env_params = environment_params(&options.env)?;
    params.extend(env_params.iter().map(|(k, v)| (k.as_str(), v.clone())));

    let exists = match client.call("GetFunction", &[("functionName", options.name.clone())]) {
        Ok(_) => true,
        Err(error) if is_not_found(&error) => false,
        Err(error) => return Err(error),
    };
    let action = if exists {
        "UpdateFunction"
    } else {
        "CreateFunction"
    };
    client.call(action, &params)?;
    let verb = if exists { "updated" } else { "created" };
    say!(
        "{verb} function {} ({} bytes of code)",
        options.name,
        package.len()
    )?;
    Ok(())
}

fn is_not_found(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<CallError>()
        .is_some_and(|e| e.code == 5000)
}

fn environment_params(pairs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut params = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--env {pair:?} must be KEY=VALUE");
        };
        params.push((format!("environment.variables.{i}.key"), key.to_owned()));
        params.push((format!("environment.variables.{i}.value"), value.to_owned()));
    }
    Ok(params)
}

/// Zips a folder's files (recursively, keeping the execute bit) into memory.
fn zip_dir(dir: &Path) -> anyhow::Result<Vec<u8>> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let mut pending = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(folder) = pending.pop() {
        let entries = std::fs::read_dir(&folder)
            .with_context(|| format!("cannot read folder {}", folder.display()))?;
        for entry in entries {
            let path = entry.context("cannot list folder")?.path();
            let metadata = std::fs::metadata(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            if metadata.is_dir() {
                pending.push(path);
                continue;
            }
            let name = path.strip_prefix(dir).context("path outside the folder")?;
            let options = zip::write::SimpleFileOptions::default()
                .unix_permissions(metadata.permissions().mode() & 0o777);
            writer
                .start_file(name.to_string_lossy(), options)
                .context("cannot write zip")?;
            let bytes =
                std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            writer.write_all(&bytes).context("cannot write zip")?;
            files += 1;
        }
    }
    if files == 0 {
        bail!("folder {} has no files to deploy", dir.display());
    }
    Ok(writer.finish().context("cannot finish zip")?.into_inner())
}

/// Invokes a function and prints its result; returns whether the function succeeded.
///
/// # Errors
/// API failures.
pub fn invoke(
    client: &Client,
    name: &str,
    event: &str,
    is_async: bool,
    log: bool,
) -> anyhow::Result<bool> {
    let mut params = vec![
        ("functionName", name.to_owned()),
        ("param", event.to_owned()),
        (
            "invokeType",
            if is_async { "Event" } else { "RequestResponse" }.to_owned(),
        ),
    ];
    if log {
        params.push(("logType", "Tail".to_owned()));
    }
    let answer = client.call("InvokeFunction", &params)?;
    let data = &answer["data"];
    if is_async {
        say!("{}", data["requestId"].as_str().unwrap_or(""))?;
        return Ok(true);
    }
    if log {
        eprint!("{}", data["log"].as_str().unwrap_or(""));
    }
    let err_msg = data["errMsg"].as_str().unwrap_or("");
    if err_msg.is_empty() {
        say!("{}", data["retMsg"].as_str().unwrap_or(""))?;
        Ok(true)
    } else {
        say!("{err_msg}")?;
        Ok(false)
    }
}

/// Prints a function's latest invocation records.
///
/// # Errors
/// API failures.
pub fn logs(client: &Client, name: &str, limit: u32) -> anyhow::Result<()> {
    let answer = client.call(
        "GetFunctionLogs",
        &[
            ("functionName", name.to_owned()),
            ("limit", limit.to_string()),
        ],
    )?;
    let entries = answer["data"].as_array().cloned().unwrap_or_default();
    for entry in entries.iter().rev() {
        say!(
            "{}  {}  {}  retCode={}  {:.3} ms",
            entry["startTime"].as_str().unwrap_or(""),
            entry["requestId"].as_str().unwrap_or(""),
            entry["invokeType"].as_str().unwrap_or(""),
            entry["retCode"],
            entry["duration"].as_f64().unwrap_or(0.0),
        )?;
        for line in entry["log"].as_str().unwrap_or("").lines() {
            say!("    {line}")?;
        }
    }
    Ok(())
}

/// Prints every function, one per line.
///
/// # Errors
/// API failures.
pub fn functions(client: &Client) -> anyhow::Result<()> {
    let mut offset = 0;
    loop {
        let answer = client.call(
            "ListFunctions",
            &[
                ("offset", offset.to_string()),
                ("limit", "100".to_owned()),
                ("order", "asc".to_owned()),
            ],
        )?;
        let page = answer["data"]["functions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for function in &page {
            say!(
                "{}  {}  {}",
                function["functionName"].as_str().unwrap_or(""),
                function["runtime"].as_str().unwrap_or(""),
                function["modTime"].as_str().unwrap_or(""),
            )?;
        }
        offset += page.len();
        let total = answer["data"]["total"].as_u64().unwrap_or(0);
        if page.is_empty() || offset as u64 >= total {
            return Ok(());
        }
    }
}
