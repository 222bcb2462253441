//! `vega-admin` as a process against Postgres and a filesystem blob store.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use vega_tests::TestDb;

#[tokio::test]
async fn gc_is_a_dry_run_unless_applied_and_audit_reports_by_exit_code() {
    let db = TestDb::postgres().await;
    let blobs = std::env::temp_dir().join(format!("vega-admin-{}", uuid::Uuid::new_v4()));
    let orphan = blobs.join("projects/p/scans/s/report.json");
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"{}").unwrap();
    let admin = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vega-admin"))
            .args(args)
            .env("VEGA_PERSISTENCE_BACKEND", "postgres")
            .env("VEGA_DATABASE_URL", db.url())
            .env("VEGA_BLOB_DIR", &blobs)
            .env_remove("VEGA_BLOB_BACKEND")
            .output()
            .unwrap()
    };

    let out = admin(&["gc", "--grace", "0s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("would remove"));
    assert!(orphan.exists());
    let out = admin(&["--json", "gc", "--grace", "0s", "--apply"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["orphans"], 1);
    assert!(!orphan.exists());

    assert_eq!(admin(&["audit"]).status.code(), Some(0));
    assert_eq!(admin(&["purge"]).status.code(), Some(0));
}
