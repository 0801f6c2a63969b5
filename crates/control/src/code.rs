//! Code packages: checking an uploaded zip and keeping it on disk.
//!
//! A package is stored by the SHA-256 of its bytes, as `code/<sha>.zip` plus the unpacked tree
//! `code/<sha>/` that instances run from. Unpacking goes to a temporary folder first and is
//! renamed into place, so a half-unpacked tree is never visible.
//!
//! ```text
//!   base64 text ─decode─► zip bytes ─check─► code/<sha>.zip ─unpack─► code/.tmp-… ─rename─► code/<sha>/
//! ```

use std::io::{Cursor, Read};
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::ControlError;

/// Largest unpacked size of a package: a zip bomb is refused before it fills the disk.
pub const MAX_UNPACKED_BYTES: u64 = 500 * 1024 * 1024;
/// Largest number of entries in a package.
pub const MAX_ENTRIES: usize = 20_000;

fn invalid(code: &'static str, message: impl Into<String>) -> ControlError {
    ControlError::Invalid {
        code,
        message: message.into(),
    }
}

/// Decodes the `code` parameter: standard base64, optionally behind the legacy `@` prefix.
/// White space (line breaks some tools insert) is ignored.
///
/// # Errors
/// `InvalidParameterValue.ZipFileBase64BinasciiError` when the text is not base64, and
/// `InvalidParameterValue.Code` for a package over `max_bytes`.
pub fn decode_package(text: &str, max_bytes: usize) -> Result<Vec<u8>, ControlError> {
    let text = text.strip_prefix('@').unwrap_or(text);
    let compact: String = text.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    // Base64 is 4/3 of its data: refuse a huge text before decoding it.
    if compact.len() / 4 * 3 > max_bytes + 3 {
        return Err(too_large(max_bytes));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|e| {
            invalid(
                "InvalidParameterValue.ZipFileBase64BinasciiError",
                format!("code is not valid base64 ({e}); send the zip file base64-encoded"),
            )
        })?;
    if bytes.len() > max_bytes {
        return Err(too_large(max_bytes));
    }
    Ok(bytes)
}

fn too_large(max_bytes: usize) -> ControlError {
    invalid(
        "InvalidParameterValue.Code",
        format!(
            "code package is larger than {} MB",
            max_bytes / (1024 * 1024)
        ),
    )
}

/// Checks a zip package: it opens as a zip, every entry has a safe relative path, it is not a
/// zip bomb, and `required_file` is among its files.
///
/// # Errors
/// `InvalidParameterValue.ZipFile` for anything wrong with the archive and
/// `InvalidParameterValue.Handler` when the handler file is missing.
pub fn check_package(bytes: &[u8], required_file: &str) -> Result<(), ControlError> {
    let mut archive = open_archive(bytes)?;
    if archive.len() > MAX_ENTRIES {
        return Err(invalid(
            "InvalidParameterValue.ZipFile",
            format!("code package has more than {MAX_ENTRIES} entries"),
        ));
    }
    let mut unpacked: u64 = 0;
    let mut found = false;
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(bad_zip)?;
        let path = safe_path(entry.name())?;
        unpacked = unpacked.saturating_add(entry.size());
        found |= !entry.is_dir() && path == Path::new(required_file);
    }
    if unpacked > MAX_UNPACKED_BYTES {
        return Err(invalid(
            "InvalidParameterValue.ZipFile",
            format!(
                "code package unpacks to more than {} MB",
                MAX_UNPACKED_BYTES >> 20
            ),
        ));
    }
    if !found {
        return Err(invalid(
            "InvalidParameterValue.Handler",
            format!("the handler file {required_file} is not in the code package's root"),
        ));
    }
    Ok(())
}

/// Checks that a `CustomRuntime` package holds an executable `file` (its `bootstrap`) at its
/// root. The owner's execute bit is what counts: unpacking keeps it (see [`CodeStore::put`]).
///
/// # Errors
/// `InvalidParameterValue.ZipFile` for an unreadable archive, `InvalidParameterValue.Handler`
/// when the file is missing and `InvalidParameterValue.Code` when it is not executable.
pub fn check_executable(bytes: &[u8], file: &str) -> Result<(), ControlError> {
    let mut archive = open_archive(bytes)?;
    let mut found = None;
    for index in 0..archive.len() {
        let entry = archive.by_index_raw(index).map_err(bad_zip)?;
        if !entry.is_dir() && safe_path(entry.name())? == Path::new(file) {
            found = Some(entry.unix_mode());
        }
    }
    match found {
        None => Err(invalid(
            "InvalidParameterValue.Handler",
            format!(
                "a CustomRuntime code package must hold an executable file named {file} at its \
                 root; none was found"
            ),
        )),
        Some(mode) if mode.is_some_and(|m| m & 0o100 != 0) => Ok(()),
        Some(_) => Err(invalid(
            "InvalidParameterValue.Code",
            format!(
                "{file} in the code package is not executable: set its mode before zipping \
                 (chmod 755 {file}) with a zip tool that keeps Unix permissions"
            ),
        )),
    }
}

/// Whether the package holds Python source files (`.py`): those are compiled to bytecode when
/// it is stored, whichever runtime's function stores it, since functions of any runtime may
/// share a package. An unreadable archive holds none (checking it is another step's job).
pub fn contains_python(bytes: &[u8]) -> bool {
    open_archive(bytes).is_ok_and(|archive| archive.file_names().any(|name| name.ends_with(".py")))
}

fn open_archive(bytes: &[u8]) -> Result<zip::ZipArchive<Cursor<&[u8]>>, ControlError> {
    zip::ZipArchive::new(Cursor::new(bytes)).map_err(bad_zip)
}

fn bad_zip(error: zip::result::ZipError) -> ControlError {
    invalid(
        "InvalidParameterValue.ZipFile",
        format!("code is not a readable zip file ({error})"),
    )
}

/// A zip entry name as a relative path that stays inside the package.
fn safe_path(name: &str) -> Result<PathBuf, ControlError> {
    let path = Path::new(name);
    let safe = !name.contains('\\')
        && !name.contains('\0')
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if safe && path.components().next().is_some() {
        Ok(path.components().collect())
    } else {
        Err(invalid(
            "InvalidParameterValue.ZipFile",
            format!("code package entry {name:?} has an unsafe path"),
        ))
    }
}

/// SHA-256 of a package, lowercase hex.
pub fn package_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The folder of stored packages.
#[derive(Debug, Clone)]
pub struct CodeStore {
    root: PathBuf,
}

impl CodeStore {
    /// Uses (creating if needed) `root` for packages.
    ///
    /// # Errors
    /// `ControlError::Io` when the folder cannot be created.
    pub fn open(root: PathBuf) -> Result<CodeStore, ControlError> {
        std::fs::create_dir_all(&root)?;
        Ok(CodeStore { root })
    }

    /// The unpacked tree of the package with this hash.
    pub fn code_dir(&self, sha256: &str) -> PathBuf {
        self.root.join(sha256)
    }

    /// Stores a checked package (idempotent: a package already stored is kept as it is).
    ///
    /// # Errors
    /// `ControlError::Io` when writing fails, `ControlError::Invalid` when an entry cannot be
    /// read.
    pub fn put(&self, sha256: &str, bytes: &[u8]) -> Result<(), ControlError> {
        if self.is_stored(sha256) {
            return Ok(());
        }
        self.stage(sha256, bytes)?.commit(bytes)
    }

    /// Whether the package with this hash is stored.
    pub fn is_stored(&self, sha256: &str) -> bool {
        self.code_dir(sha256).is_dir()
    }

    /// Unpacks a checked package into a private staging folder, to be completed (compiled,
    /// say) and then [committed](Staged::commit).
    ///
    /// # Errors
    /// As [`CodeStore::put`].
    pub fn stage(&self, sha256: &str, bytes: &[u8]) -> Result<Staged, ControlError> {
        let staging = tempfile_dir(&self.root)?;
        unpack(bytes, staging.path())?;
        Ok(Staged {
            staging,
            target: self.code_dir(sha256),
            zip: self.root.join(format!("{sha256}.zip")),
        })
    }

    /// Reads one file of a stored package as text; `None` if it is not UTF-8 (a compiled
    /// program, say), which has no text to show.
    ///
    /// # Errors
    /// `ControlError::Io` when the file cannot be read.
    pub fn read_text(&self, sha256: &str, relative: &str) -> Result<Option<String>, ControlError> {
        let path = safe_path(relative)?;
        let bytes = std::fs::read(self.code_dir(sha256).join(path))?;
        Ok(String::from_utf8(bytes).ok())
    }

    /// Removes a package that no function uses any more.
    ///
    /// # Errors
    /// `ControlError::Io` when removal fails (a package already gone is not an error).
    pub fn remove(&self, sha256: &str) -> Result<(), ControlError> {
        let zip = self.root.join(format!("{sha256}.zip"));
        for result in [
            std::fs::remove_dir_all(self.code_dir(sha256)),
            std::fs::remove_file(zip),
        ] {
            match result {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
                _ => {}
            }
        }
        Ok(())
    }
}

/// A package unpacked where nothing runs it yet; dropped uncommitted, it is removed.
pub struct Staged {
    staging: StagingDir,
    target: PathBuf,
    /// Where the package as uploaded is kept, written on commit.
    zip: PathBuf,
}

impl Staged {
    /// The staging folder.
    pub fn path(&self) -> &Path {
        self.staging.path()
    }

    /// Keeps `bytes`, the package as uploaded, and moves the unpacked package to its place in
    /// the store, in one rename. Call it where removals of packages are locked out.
    ///
    /// # Errors
    /// `ControlError::Io` when writing or the rename fails.
    pub fn commit(self, bytes: &[u8]) -> Result<(), ControlError> {
        std::fs::write(&self.zip, bytes)?;
        match std::fs::rename(self.staging.path(), &self.target) {
            Ok(()) => Ok(()),
            // Someone stored the same package meanwhile: theirs is as good as ours.
            Err(_) if self.target.is_dir() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// A uniquely named staging folder under `root`, removed on drop unless renamed away.
struct StagingDir {
    path: PathBuf,
}

impl StagingDir {
    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        // After a successful rename the folder is gone and this fails harmlessly.
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn tempfile_dir(root: &Path) -> Result<StagingDir, ControlError> {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = root.join(format!(".staging-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&path)?;
    Ok(StagingDir { path })
}

fn unpack(bytes: &[u8], into: &Path) -> Result<(), ControlError> {
    let mut archive = open_archive(bytes)?;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index).map_err(bad_zip)?;
        let target = into.join(safe_path(entry.name())?);
        if entry.is_dir() {
            std::fs::create_dir_all(&target)?;
            continue;
        }
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Read at most the declared size plus one byte, so a lying header cannot unpack more.
        let declared = entry.size();
        let mut contents = Vec::new();
        entry
            .by_ref()
            .take(declared.saturating_add(1))
            .read_to_end(&mut contents)?;
        if contents.len() as u64 > declared {
            return Err(invalid(
                "InvalidParameterValue.ZipFile",
                format!(
                    "code package entry {} is larger than it declares",
                    entry.name()
                ),
            ));
        }
        std::fs::write(&target, &contents)?;
        set_mode(&target, entry.unix_mode())?;
    }
    Ok(())
}

/// Keeps the owner's execute bit from the archive (a `bootstrap` must stay executable); all
/// other permission bits are normalised to readable by everyone, writable by the owner.
fn set_mode(path: &Path, mode: Option<u32>) -> Result<(), ControlError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = mode.is_some_and(|m| m & 0o100 != 0);
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn zip_of(files: &[(&str, &str)]) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, body) in files {
            writer
                .start_file(*name, zip::write::SimpleFileOptions::default())
                .expect("start");
            writer.write_all(body.as_bytes()).expect("write");
        }
        writer.finish().expect("finish").into_inner()
    }

    fn code_of(error: ControlError) -> &'static str {
        match error {
            ControlError::Invalid { code, .. } => code,
            other => panic!("unexpected error {other:?}"),
        }
    }

    #[test]
    fn finds_python_sources_at_any_depth() {
        assert!(contains_python(&zip_of(&[
            ("index.js", "x"),
            ("lib/helper.py", "")
        ])));
        assert!(!contains_python(&zip_of(&[
            ("index.js", "x"),
            ("notes.pyc.txt", "")
        ])));
        assert!(!contains_python(b"not a zip"));
    }

    #[test]
    fn decodes_with_or_without_at_prefix() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(b"PK\x03\x04");
        assert_eq!(decode_package(&encoded, 100).expect("plain"), b"PK\x03\x04");
        assert_eq!(
            decode_package(&format!("@{encoded}"), 100).expect("at"),
            b"PK\x03\x04"
        );
        let error = decode_package("not base64!", 100).expect_err("bad");
        assert_eq!(
            code_of(error),
            "InvalidParameterValue.ZipFileBase64BinasciiError"
        );
        let error = decode_package(&encoded, 2).expect_err("large");
        assert_eq!(code_of(error), "InvalidParameterValue.Code");
    }

    #[test]
    fn refuses_bad_packages() {
        let error = check_package(b"not a zip", "index.py").expect_err("not zip");
        assert_eq!(code_of(error), "InvalidParameterValue.ZipFile");
        let no_handler = zip_of(&[("other.py", "")]);
        let error = check_package(&no_handler, "index.py").expect_err("no handler");
        assert_eq!(code_of(error), "InvalidParameterValue.Handler");
        for unsafe_name in ["../escape.py", "/abs.py", "a/../../b.py"] {
            let package = zip_of(&[("index.py", ""), (unsafe_name, "")]);
            let error = check_package(&package, "index.py").expect_err(unsafe_name);
            assert_eq!(code_of(error), "InvalidParameterValue.ZipFile");
        }
        let nested = zip_of(&[("sub/index.py", "")]);
        assert!(check_package(&nested, "index.py").is_err());
        assert!(check_package(&nested, "sub/index.py").is_ok());
    }

    fn zip_with_mode(name: &str, mode: Option<u32>) -> Vec<u8> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let mut options = zip::write::SimpleFileOptions::default();
        if let Some(mode) = mode {
            options = options.unix_permissions(mode);
        }
        writer.start_file(name, options).expect("start");
        writer.write_all(b"#!/bin/sh\n").expect("write");
        writer.finish().expect("finish").into_inner()
    }

    #[test]
    fn custom_runtime_needs_an_executable_bootstrap_that_stays_executable() {
        let good = zip_with_mode("bootstrap", Some(0o755));
        check_executable(&good, "bootstrap").expect("executable");
        let plain = zip_with_mode("bootstrap", Some(0o644));
        let error = check_executable(&plain, "bootstrap").expect_err("not executable");
        assert_eq!(code_of(error), "InvalidParameterValue.Code");
        let no_mode = zip_with_mode("bootstrap", None);
        assert!(check_executable(&no_mode, "bootstrap").is_err());
        let elsewhere = zip_with_mode("bin/bootstrap", Some(0o755));
        let error = check_executable(&elsewhere, "bootstrap").expect_err("not at root");
        assert_eq!(code_of(error), "InvalidParameterValue.Handler");

        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let store = CodeStore::open(dir.path().join("code")).expect("open");
        let sha = package_hash(&good);
        store.put(&sha, &good).expect("put");
        let meta = std::fs::metadata(store.code_dir(&sha).join("bootstrap")).expect("unpacked");
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    }

    #[test]
    fn a_staged_package_appears_whole_when_committed_and_not_at_all_when_dropped() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = CodeStore::open(dir.path().join("code")).expect("open");
        let package = zip_of(&[("index.py", "print('hi')")]);
        let sha = package_hash(&package);

        let staged = store.stage(&sha, &package).expect("stage");
        std::fs::write(staged.path().join("added.pyc"), b"bytecode").expect("write");
        assert!(!store.is_stored(&sha), "staged is not stored");
        let abandoned = staged.path().to_owned();
        drop(staged);
        assert!(!abandoned.exists(), "a dropped stage is removed");
        assert!(!store.is_stored(&sha));

        let staged = store.stage(&sha, &package).expect("stage");
        std::fs::write(staged.path().join("added.pyc"), b"bytecode").expect("write");
        // Someone else stores the same package meanwhile: theirs stays.
        store.put(&sha, &package).expect("put");
        staged
            .commit(&package)
            .expect("commit over a stored package");
        assert!(store.code_dir(&sha).join("index.py").is_file());
        assert!(!store.code_dir(&sha).join("added.pyc").exists());
        store.remove(&sha).expect("remove");

        let staged = store.stage(&sha, &package).expect("stage");
        std::fs::write(staged.path().join("added.pyc"), b"bytecode").expect("write");
        staged.commit(&package).expect("commit");
        assert!(store.code_dir(&sha).join("added.pyc").is_file());
        assert_eq!(
            std::fs::read_dir(dir.path().join("code"))
                .expect("list")
                .filter_map(Result::ok)
                .filter(|entry| entry.file_name().to_string_lossy().starts_with(".staging"))
                .count(),
            0,
            "no staging folder is left behind"
        );
    }

    #[test]
    fn stores_reads_and_removes_packages() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = CodeStore::open(dir.path().join("code")).expect("open");
        let package = zip_of(&[("index.py", "print('hi')"), ("lib/util.py", "X = 1")]);
        let sha = package_hash(&package);
        store.put(&sha, &package).expect("put");
        store.put(&sha, &package).expect("put again is a no-op");
        assert_eq!(
            store
                .read_text(&sha, "index.py")
                .expect("read")
                .expect("text"),
            "print('hi')"
        );
        assert!(store.code_dir(&sha).join("lib/util.py").is_file());
        // A file that is not UTF-8 has no text.
        std::fs::write(
            store.code_dir(&sha).join("program"),
            [0x7f, b'E', 0xff, 0xfe],
        )
        .expect("write");
        assert_eq!(store.read_text(&sha, "program").expect("read"), None);
        store.remove(&sha).expect("remove");
        assert!(!store.code_dir(&sha).exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("code"))
            .expect("ls")
            .collect();
        assert!(
            leftovers.is_empty(),
            "staging folders or zips left: {leftovers:?}"
        );
    }
}
