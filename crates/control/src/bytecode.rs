//! Compiling a Python package's modules once, when it is stored, instead of at every cold
//! start.
//!
//! Instances see their code read-only, so Python cannot write the `__pycache__` files it
//! would normally keep: without them every instance compiles every module it imports, again.
//! For a package that brings `requests`, that is about 100 ms of each cold start (170–220 ms
//! to import it without bytecode, 80–90 ms with). So when a package with Python sources is
//! stored, whichever runtime's function stores it (functions of other runtimes may share it),
//! the host's interpreter (the one instances run) compiles it into the package's own
//! `__pycache__` folders, where instances find it. It compiles in the package's staging
//! folder, before the package is moved into place, so no instance and no removal of the
//! package ever meets it half compiled.
//!
//! Compiling runs no code of the package: it only parses it. Still, the source is untrusted,
//! so the compiler runs with a cap on its address space and a time limit, and is killed past
//! it. Compiling is an optimisation: a module that does not compile (its error is reported by
//! the first invocation, as SCF does) or a compiler that fails leaves the package as it was,
//! and the function is created all the same.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Longest a package may take to compile: the create or update waits for it, and clients
/// time out after about a minute. Compiling runs at ~5 MB of source a second here (the
/// whole standard library with its site-packages, 128 MB, took 23 s), so most packages finish
/// well within it; what a stopped compiler already wrote is kept (each file is whole).
const COMPILE_TIMEOUT: Duration = Duration::from_secs(20);

/// The compiler's address-space cap: far above what compiling a 50 MB package takes.
const COMPILE_MEMORY_BYTES: u64 = 2 << 30;

/// Caps its own memory (`argv[2]` bytes), then compiles the folder in `argv[1]`, printing
/// nothing: a module with a syntax error is skipped. The bytecode names its sources under
/// `argv[3]` when given. `-I -S` (below) keep the environment and site-packages out.
const COMPILE_SCRIPT: &str = "\
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[2]), int(sys.argv[2])))
import compileall
compileall.compile_dir(sys.argv[1], ddir=sys.argv[3] or None, quiet=2, workers=1)
";

/// Compiles the Python modules under `dir` with `python`, the interpreter instances run;
/// `code_root` is where instances will see `dir`. Never fails: what could not be compiled is
/// logged and left to be compiled at import.
pub(crate) async fn compile_python_package(python: &Path, dir: &Path, code_root: Option<&str>) {
    let started = std::time::Instant::now();
    let mut command = tokio::process::Command::new(python);
    command
        .args(["-I", "-S", "-c", COMPILE_SCRIPT])
        .arg(dir)
        .arg(COMPILE_MEMORY_BYTES.to_string())
        .arg(code_root.unwrap_or(""))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let outcome = match command.spawn() {
        Ok(child) => tokio::time::timeout(COMPILE_TIMEOUT, child.wait_with_output()).await,
        Err(error) => {
            tracing::warn!(%error, python = %python.display(), "cannot start the bytecode compiler");
            return;
        }
    };
    match outcome {
        Ok(Ok(output)) if output.status.success() => tracing::debug!(
            dir = %dir.display(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "python package compiled"
        ),
        Ok(Ok(output)) => tracing::warn!(
            dir = %dir.display(),
            status = %output.status,
            stderr = %String::from_utf8_lossy(&output.stderr).trim(),
            "python package not compiled; its modules compile at import"
        ),
        Ok(Err(error)) => tracing::warn!(%error, "cannot wait for the bytecode compiler"),
        Err(_) => tracing::warn!(
            dir = %dir.display(),
            "python package took over {COMPILE_TIMEOUT:?} to compile; stopped, the modules it had not reached compile at import"
        ),
    }
}
