//! Digests the migration crate's sources so the harness's template database is rebuilt whenever
//! a migration is added *or edited*; a template keyed on version names alone would go stale
//! silently while a migration is still being written.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migration/src");
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
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
