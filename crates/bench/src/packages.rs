//! The functions the suite deploys: no-op handlers for each runtime, zipped in memory.
//!
//! | runtime | files | handler |
//! |---|---|---|
//! | `Python3.9` | `index.py` | `index.main_handler` returns `None` |
//! | `Nodejs18.15` | `index.js` | `exports.main_handler = async () => null` |
//! | `CustomRuntime` | `bootstrap` (bash, mode 755) | reports ready, then answers `null` to every event |
//!
//! The custom runtime's bootstrap uses only bash builtins (`/dev/tcp`), so it needs nothing
//! else inside a sandbox; it speaks the SCF runtime API of spec §4 with one short
//! `Connection: close` request per step.

use std::io::{Cursor, Write as _};

use anyhow::Context as _;
use base64::Engine as _;
use zip::write::SimpleFileOptions;

/// A runtime the suite exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// Python 3, served today.
    Python,
    /// Node.js.
    Node,
    /// A `bootstrap` executable speaking the runtime API.
    Custom,
}

impl Runtime {
    /// The SCF runtime name sent in `CreateFunction`.
    pub fn scf_name(self) -> &'static str {
        match self {
            Runtime::Python => "Python3.9",
            Runtime::Node => "Nodejs18.15",
            Runtime::Custom => "CustomRuntime",
        }
    }

    /// A label for tables.
    pub fn label(self) -> &'static str {
        match self {
            Runtime::Python => "Python",
            Runtime::Node => "Node.js",
            Runtime::Custom => "custom runtime",
        }
    }

    /// A short key for scenario ids.
    pub fn key(self) -> &'static str {
        match self {
            Runtime::Python => "python",
            Runtime::Node => "node",
            Runtime::Custom => "custom",
        }
    }

    /// The no-op function's files: `(path, mode, content)`.
    fn files(self) -> Vec<(&'static str, u32, &'static str)> {
        match self {
            Runtime::Python => vec![("index.py", 0o644, PYTHON_NOOP)],
            Runtime::Node => vec![("index.js", 0o644, NODE_NOOP)],
            Runtime::Custom => vec![("bootstrap", 0o755, CUSTOM_BOOTSTRAP)],
        }
    }

    /// The no-op function's code package, base64-encoded for `Code.ZipFile`.
    ///
    /// # Errors
    /// Only if zipping in memory fails.
    pub fn package_base64(self) -> anyhow::Result<String> {
        let zip = zip_files(&self.files()).context("cannot zip the function")?;
        Ok(base64::engine::general_purpose::STANDARD.encode(zip))
    }
}

const PYTHON_NOOP: &str = "def main_handler(event, context):\n    return None\n";

/// A Python function that answers with the uid it runs as: how the memory and cold-start
/// scenarios find an instance's processes (spares, started ahead, are no instance's).
const PYTHON_UID: &str = "import os\n\ndef main_handler(event, context):\n    return os.getuid()\n";

/// The uid-reporting Python function's package, base64-encoded for `Code.ZipFile`.
///
/// # Errors
/// Only if zipping in memory fails.
pub fn python_uid_package_base64() -> anyhow::Result<String> {
    let zip = zip_files(&[("index.py", 0o644, PYTHON_UID)]).context("cannot zip the function")?;
    Ok(base64::engine::general_purpose::STANDARD.encode(zip))
}

const NODE_NOOP: &str = "exports.main_handler = async (event, context) => null;\n";

const CUSTOM_BOOTSTRAP: &str = r#"#!/bin/bash
# A no-op SCF custom runtime: report readiness, then answer every event with null.
host="${SCF_RUNTIME_API:-127.0.0.1}"
port="${SCF_RUNTIME_API_PORT:-9001}"

# call METHOD PATH BODY: one request on its own connection; the answer is read to its end.
call() {
  exec 3<>"/dev/tcp/${host}/${port}" || exit 1
  printf '%s %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
    "$1" "$2" "$host" "$port" "${#3}" "$3" >&3
  while IFS= read -r -u 3 line || [ -n "$line" ]; do :; done
  exec 3<&-
}

call POST /runtime/init/ready ' '
while true; do
  call GET /runtime/invocation/next ''
  call POST /runtime/invocation/response 'null'
done
"#;

fn zip_files(files: &[(&str, u32, &str)]) -> zip::result::ZipResult<Vec<u8>> {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (path, mode, content) in files {
        let options = SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(*mode);
        writer.start_file(*path, options)?;
        writer.write_all(content.as_bytes())?;
    }
    Ok(writer.finish()?.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_hold_the_handler_file_with_its_mode() {
        for runtime in [Runtime::Python, Runtime::Node, Runtime::Custom] {
            let encoded = runtime.package_base64().expect("zips");
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .expect("base64");
            let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).expect("valid zip");
            let (path, mode, _) = runtime.files()[0];
            let file = archive.by_name(path).expect("handler file present");
            assert_eq!(file.unix_mode().map(|m| m & 0o777), Some(mode));
        }
    }
}
