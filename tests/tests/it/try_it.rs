//! The README's "Try it" block, run as written on the embedded default: each `cargo run -q -p
//! PACKAGE --` becomes the binary `cargo test --workspace` built beside this test, and the
//! script runs in a fresh directory with a free port.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The block between `<!-- try-it -->` and `<!-- /try-it -->`, without its fences.
fn try_it_block() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let start = readme
        .find("<!-- try-it -->")
        .expect("README has a try-it block");
    let end = readme
        .find("<!-- /try-it -->")
        .expect("the try-it block ends");
    let block = &readme[start..end];
    let body = block.split_once("```sh\n").unwrap().1;
    body.rsplit_once("```").unwrap().0.to_owned()
}

/// Where cargo put the workspace's binaries: next to this test's `deps/` directory.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: `cargo test --workspace` (or `cargo build --workspace`) builds it",
        path.display()
    );
    path
}

#[test]
fn the_readme_try_it_commands_run_as_written() {
    let mut script = try_it_block();
    for (package, bin) in [
        ("vega-migration", "vega-migrate"),
        ("vega-admin", "vega-admin"),
        ("vega-example-api", "vega-example-api"),
    ] {
        let path = binary(bin).display().to_string();
        script = script
            .replace(&format!("cargo run -q -p {package} --"), &path)
            .replace(&format!("cargo run -q -p {package}"), &path);
    }
    assert!(
        !script.contains("cargo run"),
        "every command was mapped:\n{script}"
    );
    let dir = std::env::temp_dir().join(format!("vega-try-it-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new("bash");
    command
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&dir)
        .env("VEGA_LISTEN", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "warn");
    for (var, _) in std::env::vars() {
        if var.starts_with("VEGA_") && var != "VEGA_LISTEN" || var == "DATABASE_URL" {
            command.env_remove(var);
        }
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the script failed:\n{stdout}\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    let list: serde_json::Value =
        serde_json::from_str(last).expect("the last line is the project list");
    let project = &list["items"][0];
    assert_eq!(project["slug"], "web", "{list}");
    assert_eq!(project["latest_scan"]["status"], "succeeded", "{list}");
    assert_eq!(project["latest_scan"]["counts"]["critical"], 1, "{list}");
    std::fs::remove_dir_all(&dir).unwrap();
}
