//! Digests the migration crate's sources so the harness's template database is rebuilt whenever
//! a migration is added *or edited*; a template keyed on version names alone would go stale
//! silently while a migration is still being written.

// A build script reports a broken checkout by panicking: that is how the build fails.
#![allow(clippy::expect_used)]

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

fn main() {
    // The variable cargo sets when it runs the script, not `env!` (the path the script was
    // compiled at): clones sharing one target directory share the compiled script, and a
    // baked-in path would digest another clone's migrations, or none once it is deleted.
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest).join("../migration/src");
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("the migration sources are readable")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    files.sort();
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.file_name().hash(&mut hasher);
        std::fs::read(&file).unwrap_or_default().hash(&mut hasher);
    }
    println!(
        "cargo::rustc-env=VEGA_MIGRATIONS_DIGEST={:016x}",
        hasher.finish()
    );
}
