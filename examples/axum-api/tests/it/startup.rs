//! The server as a process: a start-up error is a sentence with its fix, not a Debug dump.

use std::process::Command;

#[test]
fn an_unmigrated_database_stops_the_server_with_the_command_that_fixes_it() {
    let dir = std::env::temp_dir().join(format!("vega-startup-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vega-example-api"))
        .current_dir(&dir)
        .env_remove("VEGA_PERSISTENCE_BACKEND")
        .env_remove("VEGA_DATABASE_URL")
        .env_remove("DATABASE_URL")
        .env("VEGA_LISTEN", "127.0.0.1:0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: the database is ")
            && last.contains("migrations behind this build: run `vega-migrate up`"),
        "{stderr}"
    );
    assert!(!stderr.contains("SchemaOutdated {"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
