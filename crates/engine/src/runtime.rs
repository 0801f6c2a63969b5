//! Language runtimes: their shims, how an instance of each is launched, and the environment and
//! context a handler sees.
//!
//! A runtime is a shim program plus a launch plan ([`Launch`]): program, arguments, working
//! directory, a complete environment and the instance's `RLIMIT_DATA`. The sandbox starts
//! whatever plan it is given, so adding a runtime (custom `bootstrap`) means adding a shim file
//! and a `match` arm here.
//!
//! - Python 3: [`EngineConfig::python`] `-u -s runtimes/python/bootstrap.py`, code on
//!   `PYTHONPATH`;
//! - Node.js: [`EngineConfig::node`] `--max-old-space-size=<memory_mb>
//!   runtimes/nodejs/bootstrap.js`, code and its `node_modules` on `NODE_PATH`;
//! - custom runtime: the package's own `<code>/bootstrap`, no arguments, no shim; it speaks
//!   the HTTP runtime API of `runtime_api.rs`, whose address the engine adds to this plan's
//!   environment once the API's listener is open.
//!
//! Both shims speak the protocol of `protocol.rs` on fd 0 and load the handler before they say
//! they are ready, so loading is bounded by the init timeout and not billed to the first
//! invocation. Their headers say how each maps SCF's handler semantics.
//!
//! # Limitations
//!
//! The Python shim moves the control socket off fd 0; the Node.js shim cannot (Node has no
//! `dup2`) and only hides it behind an empty `process.stdin`, so Node.js user code reading fd 0
//! directly breaks its instance. Node.js handlers must be CommonJS modules.
//!
//! The environment is built from nothing (the engine's own is never inherited, so neither is a
//! variable such as `NODE_EXTRA_CA_CERTS`, which slows every Node.js start): a few base
//! variables the user may override, then the user's variables, then the platform's `SCF_*`,
//! `TENCENTCLOUD_*` and shim variables, which the user may not override.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use nimbus_sandbox::Isolation;

use crate::{EngineConfig, EngineError, FunctionSpec, Runtime, memory};

const PYTHON_BOOTSTRAP: &str = include_str!("../runtimes/python/bootstrap.py");
const PYTHON_BOOTSTRAP_FILE: &str = "bootstrap.py";
const NODE_BOOTSTRAP: &str = include_str!("../runtimes/nodejs/bootstrap.js");
const NODE_BOOTSTRAP_FILE: &str = "bootstrap.js";

/// Environment variable carrying the per-instance log marker token; the shim removes it.
const LOG_TOKEN_VAR: &str = "_NIMBUS_LOG_TOKEN";
/// Tells the Python shim it is a spare (see `spare.rs`).
const SPARE_VAR: &str = "_NIMBUS_SPARE";
/// The executable a custom runtime's code package must hold at its root.
const CUSTOM_BOOTSTRAP_FILE: &str = "bootstrap";

/// The shim files written into the runtime directory.
#[derive(Debug)]
pub(crate) struct Shims {
    dir: PathBuf,
    python_bootstrap: PathBuf,
    node_bootstrap: PathBuf,
}

impl Shims {
    /// Writes every shim into `runtime_dir` (creating it), replacing older copies atomically.
    pub(crate) fn install(runtime_dir: &Path) -> Result<Shims, EngineError> {
        std::fs::create_dir_all(runtime_dir).map_err(|source| EngineError::CreateRuntimeDir {
            path: runtime_dir.to_owned(),
            source,
        })?;
        let runtime_dir =
            std::path::absolute(runtime_dir).map_err(|source| EngineError::CreateRuntimeDir {
                path: runtime_dir.to_owned(),
                source,
            })?;
        // Functions run as uids of their own and read the shims from here.
        set_mode(&runtime_dir, 0o755).map_err(|source| EngineError::CreateRuntimeDir {
            path: runtime_dir.clone(),
            source,
        })?;
        let python_bootstrap = runtime_dir.join(PYTHON_BOOTSTRAP_FILE);
        write_atomically(&python_bootstrap, PYTHON_BOOTSTRAP)?;
        let node_bootstrap = runtime_dir.join(NODE_BOOTSTRAP_FILE);
        write_atomically(&node_bootstrap, NODE_BOOTSTRAP)?;
        Ok(Shims {
            dir: runtime_dir,
            python_bootstrap,
            node_bootstrap,
        })
    }

    /// The directory holding the shims (absolute).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

fn write_atomically(path: &Path, contents: &str) -> Result<(), EngineError> {
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&temporary, contents)
        .and_then(|()| set_mode(&temporary, 0o644))
        .and_then(|()| std::fs::rename(&temporary, path))
        .map_err(|source| EngineError::WriteShim {
            path: path.to_owned(),
            source,
        })
}

/// Everything needed to start one instance process.
#[derive(Debug, Clone)]
pub(crate) struct Launch {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    /// Where the function sees its code, and its working directory: `/var/user` in the sandbox
    /// (which changes into it), the code directory itself with `Isolation::None`.
    pub(crate) cwd: PathBuf,
    /// The complete environment.
    pub(crate) env: BTreeMap<String, String>,
    /// `RLIMIT_DATA` of the instance's processes, in bytes.
    pub(crate) data_limit_bytes: u64,
}

/// The launch plan of a spare of `runtime` (see `spare.rs`): the shim with the base
/// environment only, told to wait for a function, sized for `memory_mb` (Python: the data
/// segment, lowered when claimed; Node.js: the V8 heap too, which cannot be changed later).
///
/// # Errors
///
/// [`EngineError::RuntimeUnavailable`] for a runtime the engine has no interpreter for.
pub(crate) fn spare_launch(
    config: &EngineConfig,
    shims: &Shims,
    runtime: Runtime,
    memory_mb: u32,
    token: &str,
) -> Result<Launch, EngineError> {
    let code_root = PathBuf::from(nimbus_sandbox::CODE_ROOT);
    let root = code_root.to_string_lossy().into_owned();
    let mut env: BTreeMap<String, String> = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("LANG", "C.UTF-8"),
        ("LC_ALL", "C.UTF-8"),
        ("HOME", "/tmp"),
        ("USER_CODE_ROOT", root.as_str()),
        (SPARE_VAR, "1"),
        (LOG_TOKEN_VAR, token),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let (program, args) = match runtime {
        Runtime::Python3 => {
            env.insert("PYTHONDONTWRITEBYTECODE".into(), "x".into());
            env.insert("PYTHONPATH".into(), root.clone());
            (config.python.clone(), python_args(shims))
        }
        Runtime::Nodejs => {
            let node = config.node.clone().ok_or(EngineError::RuntimeUnavailable {
                runtime: runtime.scf_name(),
            })?;
            env.insert("NODE_PATH".into(), format!("{root}:{root}/node_modules"));
            (node, node_args(shims, memory_mb))
        }
        Runtime::Custom => {
            return Err(EngineError::RuntimeUnavailable {
                runtime: runtime.scf_name(),
            });
        }
    };
    Ok(Launch {
        program,
        args,
        env,
        cwd: code_root,
        data_limit_bytes: memory::data_limit_bytes(runtime, memory_mb),
    })
}

/// Node.js's arguments: V8 sizes its heap by the host's memory; sized by the function's
/// instead, it collects garbage before the watchdog would see the instance over its limit.
fn node_args(shims: &Shims, memory_mb: u32) -> Vec<OsString> {
    let heap = format!("--max-old-space-size={memory_mb}");
    vec![heap.into(), shims.node_bootstrap.clone().into()]
}

fn python_args(shims: &Shims) -> Vec<OsString> {
    vec![
        "-u".into(),
        "-S".into(),
        shims.python_bootstrap.clone().into(),
    ]
}

/// The launch plan for an instance of `spec` whose log marker token is `token`.
///
/// # Errors
///
/// [`EngineError::RuntimeUnavailable`] if the engine has no interpreter for the runtime,
/// [`EngineError::BootstrapMissing`] if a custom runtime's package has no executable
/// `bootstrap`.
pub(crate) fn launch(
    config: &EngineConfig,
    shims: &Shims,
    spec: &FunctionSpec,
    token: &str,
) -> Result<Launch, EngineError> {
    let code_dir = std::path::absolute(&spec.code_dir).unwrap_or_else(|_| spec.code_dir.clone());
    let code_root = match config.sandbox.isolation {
        Isolation::Sandbox => PathBuf::from(nimbus_sandbox::CODE_ROOT),
        Isolation::None => code_dir.clone(),
    };
    let (program, args): (PathBuf, Vec<OsString>) = match spec.runtime {
        Runtime::Python3 => (config.python.clone(), python_args(shims)),
        Runtime::Nodejs => {
            let node = config.node.clone().ok_or(EngineError::RuntimeUnavailable {
                runtime: spec.runtime.scf_name(),
            })?;
            (node, node_args(shims, spec.memory_mb))
        }
        Runtime::Custom => {
            custom_bootstrap(&code_dir)?;
            (code_root.join(CUSTOM_BOOTSTRAP_FILE), Vec::new())
        }
    };
    Ok(Launch {
        program,
        args,
        env: environment(config, spec, &code_root, token),
        cwd: code_root,
        data_limit_bytes: memory::data_limit_bytes(spec.runtime, spec.memory_mb),
    })
}

/// The package's `bootstrap`, checked here so that a missing one fails the start with a clear
/// message rather than as a failed `exec`.
fn custom_bootstrap(code_dir: &Path) -> Result<PathBuf, EngineError> {
    use std::os::unix::fs::PermissionsExt;
    let path = code_dir.join(CUSTOM_BOOTSTRAP_FILE);
    match std::fs::metadata(&path) {
        Ok(meta) if meta.is_file() && meta.permissions().mode() & 0o111 != 0 => Ok(path),
        _ => Err(EngineError::BootstrapMissing { path }),
    }
}

fn environment(
    config: &EngineConfig,
    spec: &FunctionSpec,
    code_root: &Path,
    token: &str,
) -> BTreeMap<String, String> {
    let code_root = code_root.to_string_lossy().into_owned();
    let mut env = BTreeMap::new();
    let mut set = |key: &str, value: &str| env.insert(key.to_owned(), value.to_owned());

    // Base variables: the user may override these.
    set("PATH", "/usr/local/bin:/usr/bin:/bin");
    set("LANG", "C.UTF-8");
    set("LC_ALL", "C.UTF-8");
    set("HOME", "/tmp");
    match spec.runtime {
        Runtime::Python3 => {
            set("PYTHONDONTWRITEBYTECODE", "x");
            set("PYTHONPATH", &code_root);
        }
        Runtime::Nodejs => {
            set(
                "NODE_PATH",
                &format!("{code_root}:{code_root}/node_modules"),
            );
        }
        Runtime::Custom => {}
    }

    for (key, value) in user_environment(spec) {
        set(key, value);
    }

    // Platform variables: set last, so they win.
    set("USER_CODE_ROOT", &code_root);
    let runtime_name = if spec.runtime_name.is_empty() {
        spec.runtime.scf_name()
    } else {
        &spec.runtime_name
    };
    set("SCF_RUNTIME", runtime_name);
    set("SCF_FUNCTIONNAME", &spec.name);
    set("SCF_FUNCTIONVERSION", &spec.version);
    set("SCF_NAMESPACE", &spec.namespace);
    set("TENCENTCLOUD_REGION", &spec.region);
    set("TENCENTCLOUD_RUNENV", "SCF");
    set("TENCENTCLOUD_TZ", "UTC");
    set("TENCENTCLOUD_APPID", &config.app_id);
    set("TENCENTCLOUD_UIN", &config.uin);
    set("_HANDLER", &spec.handler);
    // A custom runtime has no shim to hide the token from user code, and writes no markers.
    if spec.runtime != Runtime::Custom {
        set(LOG_TOKEN_VAR, token);
    }
    env
}

/// The user's variables that may be passed on: platform names and names or values that cannot
/// be put into an environment are left out.
fn user_environment(spec: &FunctionSpec) -> impl Iterator<Item = (&str, &str)> {
    spec.environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .filter(|(key, value)| usable_name(key) && !value.contains('\0') && !reserved(key))
}

fn usable_name(key: &str) -> bool {
    !key.is_empty() && !key.contains(['=', '\0'])
}

fn reserved(key: &str) -> bool {
    const PREFIXES: [&str; 3] = ["SCF_", "TENCENTCLOUD_", "_NIMBUS_"];
    PREFIXES.iter().any(|p| key.starts_with(p)) || key == "_HANDLER" || key == "USER_CODE_ROOT"
}

/// The context object handed to the handler (SCF's keys; Python receives it as a dict).
pub(crate) fn context(
    config: &EngineConfig,
    spec: &FunctionSpec,
    request_id: &str,
) -> serde_json::Value {
    let mut visible: Vec<(&str, &str)> = vec![("SCF_NAMESPACE", spec.namespace.as_str())];
    visible.extend(user_environment(spec));
    let environment: serde_json::Map<String, serde_json::Value> = visible
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
        .collect();
    let environ = visible
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";");
    serde_json::json!({
        "memory_limit_in_mb": spec.memory_mb,
        "time_limit_in_ms": u64::try_from(spec.timeout.as_millis()).unwrap_or(u64::MAX),
        "request_id": request_id,
        "environment": serde_json::Value::Object(environment).to_string(),
        "environ": environ,
        "function_version": spec.version,
        "function_name": spec.name,
        "namespace": spec.namespace,
        "tencentcloud_region": spec.region,
        "tencentcloud_appid": config.app_id,
        "tencentcloud_uin": config.uin,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec(environment: Vec<(&str, &str)>) -> FunctionSpec {
        FunctionSpec {
            namespace: "default".into(),
            name: "hello".into(),
            version: "$LATEST".into(),
            revision: 1,
            runtime: Runtime::Python3,
            runtime_name: String::new(),
            handler: "index.main_handler".into(),
            code_dir: "/srv/code".into(),
            memory_mb: 128,
            timeout: Duration::from_secs(3),
            init_timeout: Duration::from_secs(65),
            environment: environment
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            region: "ap-guangzhou".into(),
            network: false,
            reserved_concurrency_mb: None,
        }
    }

    fn config() -> EngineConfig {
        EngineConfig::new("/usr/bin/python3", "/tmp/rt")
    }

    #[test]
    fn user_cannot_override_platform_variables() {
        let spec = spec(vec![
            ("SCF_FUNCTIONNAME", "evil"),
            ("TENCENTCLOUD_REGION", "mars"),
            ("_NIMBUS_LOG_TOKEN", "guess"),
            ("_HANDLER", "x.y"),
            ("PATH", "/opt/bin"),
            ("MY_VAR", "1"),
        ]);
        let env = environment(&config(), &spec, Path::new("/srv/code"), "tok");
        assert_eq!(env["SCF_FUNCTIONNAME"], "hello");
        assert_eq!(env["TENCENTCLOUD_REGION"], "ap-guangzhou");
        assert_eq!(env["_NIMBUS_LOG_TOKEN"], "tok");
        assert_eq!(env["_HANDLER"], "index.main_handler");
        assert_eq!(env["PATH"], "/opt/bin");
        assert_eq!(env["MY_VAR"], "1");
    }

    #[test]
    fn skips_unusable_variable_names() {
        let spec = spec(vec![("A=B", "1"), ("", "2"), ("NUL", "a\0b")]);
        let env = environment(&config(), &spec, Path::new("/srv/code"), "tok");
        assert!(!env.contains_key("A=B") && !env.contains_key("") && !env.contains_key("NUL"));
    }

    #[test]
    fn python_environment_points_at_code() {
        let env = environment(&config(), &spec(vec![]), Path::new("/srv/code"), "tok");
        assert_eq!(env["PYTHONPATH"], "/srv/code");
        assert_eq!(env["USER_CODE_ROOT"], "/srv/code");
        assert_eq!(env["TENCENTCLOUD_RUNENV"], "SCF");
        assert_eq!(env["LC_ALL"], "C.UTF-8");
    }

    #[test]
    fn node_environment_points_at_code_and_modules() {
        let mut spec = spec(vec![]);
        spec.runtime = Runtime::Nodejs;
        let env = environment(&config(), &spec, Path::new("/srv/code"), "tok");
        assert_eq!(env["NODE_PATH"], "/srv/code:/srv/code/node_modules");
        assert_eq!(env["SCF_RUNTIME"], "Nodejs");
        assert!(!env.contains_key("PYTHONPATH"));
        assert!(!env.contains_key("NODE_EXTRA_CA_CERTS"));
    }

    #[test]
    fn node_launch_needs_a_node_binary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shims = Shims::install(dir.path()).expect("shims");
        let mut spec = spec(vec![]);
        spec.runtime = Runtime::Nodejs;
        let err = launch(&config(), &shims, &spec, "tok");
        assert!(matches!(err, Err(EngineError::RuntimeUnavailable { .. })));

        let mut config = config();
        config.node = Some("/usr/bin/node".into());
        let plan = launch(&config, &shims, &spec, "tok").expect("launch plan");
        assert_eq!(plan.program, Path::new("/usr/bin/node"));
        assert_eq!(plan.args[0], "--max-old-space-size=128");
        assert_eq!(plan.data_limit_bytes, (128 + 128) * 1024 * 1024);
    }

    #[test]
    fn context_lists_user_environment() {
        let context = context(&config(), &spec(vec![("K", "V")]), "req-1");
        assert_eq!(context["environ"], "SCF_NAMESPACE=default;K=V");
        assert_eq!(
            context["environment"],
            r#"{"K":"V","SCF_NAMESPACE":"default"}"#
        );
        assert_eq!(context["time_limit_in_ms"], 3000);
        assert_eq!(context["request_id"], "req-1");
        assert_eq!(context["function_version"], "$LATEST");
    }

    #[test]
    fn custom_launch_runs_an_executable_bootstrap_without_token() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let shims = Shims::install(&dir.path().join("rt")).expect("shims");
        let code = dir.path().join("code");
        std::fs::create_dir(&code).expect("code dir");
        let mut spec = spec(vec![]);
        spec.runtime = Runtime::Custom;
        spec.code_dir = code.clone();
        let missing = launch(&config(), &shims, &spec, "tok");
        assert!(matches!(missing, Err(EngineError::BootstrapMissing { .. })));

        let bootstrap = code.join("bootstrap");
        std::fs::write(&bootstrap, "#!/bin/sh\n").expect("write");
        let not_executable = launch(&config(), &shims, &spec, "tok");
        assert!(matches!(
            not_executable,
            Err(EngineError::BootstrapMissing { .. })
        ));

        let mode = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(&bootstrap, mode).expect("chmod");
        let plan = launch(&config(), &shims, &spec, "tok").expect("launch plan");
        // Sandboxed, the code is at /var/user.
        assert_eq!(plan.program, Path::new("/var/user/bootstrap"));
        assert!(plan.args.is_empty());
        assert_eq!(plan.cwd, Path::new("/var/user"));
        assert_eq!(plan.env["SCF_RUNTIME"], "CustomRuntime");
        assert_eq!(plan.env["_HANDLER"], "index.main_handler");
        assert!(!plan.env.contains_key("_NIMBUS_LOG_TOKEN"));
    }
}
