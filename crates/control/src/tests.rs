use std::io::{Cursor, Write as _};

use base64::Engine as _;

use super::*;

fn python_package() -> String {
    let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
    writer
        .start_file("index.py", zip::write::SimpleFileOptions::default())
        .expect("start");
    writer
        .write_all(b"def main_handler(event, context):\n    return event\n")
        .expect("write");
    let bytes = writer.finish().expect("finish").into_inner();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn control_with(functions: &[&str]) -> (tempfile::TempDir, Control) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = Store::open(&dir.path().join("nimbus.db")).expect("store");
    let code = CodeStore::open(dir.path().join("code")).expect("code store");
    let control = Control::new(store, code, &[RuntimeFamily::Python3]);
    for name in functions {
        let settings = FunctionSettings {
            handler: Some("index.main_handler".into()),
            runtime: Some("Python3.9".into()),
            code: Some(python_package()),
            ..FunctionSettings::default()
        };
        control
            .create_function("default", name, settings, &Limits::API3)
            .await
            .expect("created");
    }
    (dir, control)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_made_at_once_cannot_pass_the_budget_together() {
    let (_dir, control) = control_with(&["fa", "fb"]).await;
    // Each fits in the 300 MB budget alone; both together do not.
    for _ in 0..20 {
        let (a, b) = tokio::join!(
            control.set_reserved_concurrency("default", "fa", Some(200), 300),
            control.set_reserved_concurrency("default", "fb", Some(200), 300),
        );
        assert!(a.is_ok() != b.is_ok(), "exactly one fits: {a:?} {b:?}");
        let refused = if a.is_err() { a } else { b };
        assert!(matches!(
            refused,
            Err(ControlError::Invalid {
                code: "FailedOperation.ReservedExceedTotal",
                ..
            })
        ));
        for name in ["fa", "fb"] {
            control
                .set_reserved_concurrency("default", name, None, 300)
                .await
                .expect("removed");
        }
    }
}
